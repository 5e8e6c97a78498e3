"""BGP: lbd's own speaker (sans-IO codec and FSM, asyncio adapter, announcer)
and the kernel route export mode.

Entry points: :class:`lbd.bgp.announcer.BgpAnnouncer` for the daemon,
``python -m lbd.bgp`` for a standalone speaker. See docs/bgp-speaker.md.
"""
