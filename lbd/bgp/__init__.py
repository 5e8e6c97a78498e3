"""BGP: lbd's own speaker (sans-IO codec and FSM, asyncio adapter, announcer).

The kernel route export mode, which writes VIPs as kernel routes for the
node's own routing daemon and speaks no BGP, is ``lbd.kernel.routes``.

Entry points: :class:`lbd.bgp.announcer.BgpAnnouncer` for the daemon,
``python -m lbd.testing.bgp_speaker`` for a standalone speaker. See docs/bgp-speaker.md.
"""
