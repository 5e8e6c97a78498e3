"""lbd's BGP speaker against real routers: BIRD 2, FRR, GoBGP and OpenBGPD.

Every check reads the route back from the router's own CLI (see bgp_peers).
lbd runs as its standalone runner (``python -m lbd.testing.bgp_speaker``), one process per
session, in node namespaces; the router waits passively for it.

Topology (one bridge):  router 10.77.0.1 / fd77::1, AS 4200000002
                        nodeA  10.77.0.2 / fd77::2, AS 4200000001 (eBGP, MD5)
                        nodeB  10.77.0.3 / fd77::3, AS 4200000002 (iBGP)
"""

from __future__ import annotations

import signal
import time

import pytest
from interop.bgp_peers import PEERS, Neighbor, Peer, PeerSpec
from interop.bgp_speakers import LbdSpeaker, SessionSpec

from lbd.testing.netlab import require_binary, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.interop]

ROUTER_AS = 4200000002  # four-octet: AS_TRANS in the OPEN, the real AS in the capability (RFC 6793)
NODE_AS = 4200000001
PASSWORD = "lbd-md5-secret"

ROUTER4, ROUTER6 = "10.77.0.1", "fd77::1"
A4, A6 = "10.77.0.2", "fd77::2"
B4, B6 = "10.77.0.3", "fd77::3"

A_COMMS = ("65000:1", "65000:2")
A_LARGE = ("4200000001:1:2",)
B_COMMS = ("65000:3",)
B_LARGE = ("4200000002:7:8",)


def make_router(lab, kind: str, neighbors: list[Neighbor]) -> Peer:  # type: ignore[no-untyped-def]
    cls = PEERS[kind]
    require_binary(*[b for b in cls.binaries if not b.startswith("/")])
    router = lab.add_host("router", [f"{ROUTER4}/24", f"{ROUTER6}/64"])
    spec = PeerSpec(asn=ROUTER_AS, router_id=ROUTER4, address6=ROUTER6, neighbors=neighbors)
    return cls(router, spec).start()


def session(peer: str, local: str, my_asn: int, router_id: str, **kw: object) -> SessionSpec:
    return SessionSpec(peer_address=peer, peer_asn=ROUTER_AS, my_asn=my_asn, local_address=local,
                       router_id=router_id, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=sorted(PEERS))
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def test_sessions_prefixes_attributes_and_withdrawal(lab, kind):  # type: ignore[no-untyped-def]
    """iBGP and eBGP, four-octet ASNs, MD5 on eBGP; IPv4 and IPv6 with attributes; withdrawal."""
    router = make_router(lab, kind, [
        Neighbor(A4, NODE_AS, password=PASSWORD), Neighbor(A6, NODE_AS, password=PASSWORD),
        Neighbor(B4, ROUTER_AS), Neighbor(B6, ROUTER_AS),
    ])
    node_a = lab.add_host("nodeA", [f"{A4}/24", f"{A6}/64"])
    node_b = lab.add_host("nodeB", [f"{B4}/24", f"{B6}/64"])
    a4 = LbdSpeaker(node_a, session(ROUTER4, A4, NODE_AS, A4, password=PASSWORD),
                    ["10.77.100.1/32", "10.77.100.11/32"], A_COMMS, A_LARGE, local_pref=200).start()
    a6 = LbdSpeaker(node_a, session(ROUTER6, A6, NODE_AS, A4, password=PASSWORD),
                    ["fd77:100::1/128"], A_COMMS, A_LARGE).start()
    b4 = LbdSpeaker(node_b, session(ROUTER4, B4, ROUTER_AS, B4), ["10.77.100.2/32"], B_COMMS, B_LARGE,
                    local_pref=250).start()
    b6 = LbdSpeaker(node_b, session(ROUTER6, B6, ROUTER_AS, B4), ["fd77:100::2/128"], B_COMMS, B_LARGE,
                    local_pref=260).start()

    for speaker in (a4, a6, b4, b6):
        established = speaker.wait_event("established", timeout=30)
        assert established["peer_as"] == ROUTER_AS
        assert "4-octet-as" in established["capabilities"]  # type: ignore[operator]
    for neighbor in (A4, A6, B4, B6):
        router.wait_established(neighbor)

    want = {"10.77.100.1/32", "10.77.100.11/32", "fd77:100::1/128", "10.77.100.2/32", "fd77:100::2/128"}
    routes = router.wait_routes(lambda rs: want <= set(rs), what="all prefixes at the router")

    ebgp4, ebgp6 = routes["10.77.100.1/32"], routes["fd77:100::1/128"]
    assert ebgp4.next_hops == (A4,)
    assert ebgp6.next_hops == (A6,)
    for r in (ebgp4, ebgp6):
        assert sorted(r.communities) == sorted(A_COMMS)
        assert r.large_communities == A_LARGE
    ibgp4, ibgp6 = routes["10.77.100.2/32"], routes["fd77:100::2/128"]
    assert ibgp4.next_hops == (B4,)
    assert ibgp6.next_hops == (B6,)
    for r in (ibgp4, ibgp6):
        assert r.communities == B_COMMS
        assert r.large_communities == B_LARGE
    # LOCAL_PREF is an iBGP attribute (RFC 4271 5.1.5): the router keeps lbd's on iBGP.
    assert ibgp4.local_pref == 250
    assert ibgp6.local_pref == 260
    # On eBGP it is not sent, or ignored: the router applies its own default (or none).
    assert ebgp4.local_pref in (None, 100)

    # A removed prefix is withdrawn; the others stay.
    a4.set_prefixes(["10.77.100.1/32"])
    router.wait_routes(lambda rs: "10.77.100.11/32" not in rs and "10.77.100.1/32" in rs,
                       what="10.77.100.11/32 withdrawn")
    b6.set_prefixes([])
    routes = router.wait_routes(lambda rs: "fd77:100::2/128" not in rs, what="fd77:100::2/128 withdrawn")
    assert {"10.77.100.1/32", "fd77:100::1/128", "10.77.100.2/32"} <= set(routes)

    # SIGTERM: Cease, and the router drops that speaker's routes at once (no GR here).
    a6.stop(signal.SIGTERM)
    router.wait_routes(lambda rs: "fd77:100::1/128" not in rs, what="routes of a stopped speaker gone")
    # (The runner prints no notification_sent event for the Cease it sends on stop,
    # so the router's loss of the routes is the check.)
    assert a6.events[-1].get("event") == "stopped" and a6.events[-1].get("graceful") is False


def test_frozen_peer_is_detected_by_hold_timer(lab, kind):  # type: ignore[no-untyped-def]
    router = make_router(lab, kind, [Neighbor(A4, NODE_AS, hold_time=9, graceful_restart=False)])
    node = lab.add_host("nodeA", [f"{A4}/24"])
    # lbd offers 3 s; the session uses the smaller of the two offers (RFC 4271 4.2).
    spk = LbdSpeaker(node, session(ROUTER4, A4, NODE_AS, A4, hold_time=3), ["10.77.100.1/32"]).start()
    est = spk.wait_event("established", timeout=30)
    assert est["hold_time"] == 3
    router.wait_routes(lambda rs: "10.77.100.1/32" in rs)

    mark = len(spk.events)
    frozen_at = time.monotonic()
    router.freeze()
    try:
        down = spk.wait_event("session_down", timeout=15, since=mark)
        detected_after = time.monotonic() - frozen_at
    finally:
        router.thaw()
    assert "hold timer expired" in str(down["reason"])
    assert any(e.get("event") == "notification_sent" and e.get("code") == 4 for e in spk.events[mark:])
    # Not before the hold time ran out (keepalives had arrived up to the freeze).
    assert detected_after >= 1.0
    # And lbd reconnects once the router is back.
    spk.wait_event("established", timeout=30, since=mark)


def test_graceful_restart_keeps_routes_through_an_lbd_restart(lab, kind):  # type: ignore[no-untyped-def]
    router = make_router(lab, kind, [Neighbor(A4, NODE_AS, graceful_restart=True)])
    node = lab.add_host("nodeA", [f"{A4}/24"])
    sess = session(ROUTER4, A4, NODE_AS, A4, graceful_restart=True)
    keep, drop = "10.77.100.1/32", "10.77.100.2/32"
    first = LbdSpeaker(node, sess, [keep, drop], communities=("65000:1",)).start()
    first.wait_event("established", timeout=30)
    router.wait_routes(lambda rs: {keep, drop} <= set(rs))

    # SIGUSR1: a planned stop, no NOTIFICATION (RFC 4724 4.1); the router keeps the routes as stale.
    first.stop(signal.SIGUSR1)
    assert not any(e.get("event") == "notification_sent" for e in first.events)
    assert first.events[-1].get("event") == "stopped" and first.events[-1].get("graceful") is True

    wait_for(lambda: router.session_state(A4) != "established", timeout=15, what="router saw the session go")
    seen_missing: list[float] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.5:  # lbd "restarting": the routes must stay at the router
        if keep not in router.routes():
            seen_missing.append(time.monotonic() - t0)
        time.sleep(0.2)

    # Restarted with the Restart State bit, announcing one prefix with a new community:
    # the router refreshes the kept route and flushes the stale one at End-of-RIB.
    second = LbdSpeaker(node, sess, [keep], communities=("65000:2",), restarting=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if keep not in router.routes():
            seen_missing.append(time.monotonic() - t0)
        if any(e.get("event") == "eor_sent" for e in second.events):
            break
        time.sleep(0.2)
    second.wait_event("eor_sent", timeout=5)
    assert not seen_missing, f"{kind} dropped lbd's route during the restart (at {seen_missing} s)"
    routes = router.wait_routes(lambda rs: drop not in rs and keep in rs and rs[keep].communities == ("65000:2",),
                                timeout=20, what="route refreshed and the stale one flushed")
    assert routes[keep].next_hops == (A4,)


def test_md5_mismatch_keeps_the_session_down(lab, kind):  # type: ignore[no-untyped-def]
    """The MD5 check is real: with the wrong password no session comes up (RFC 2385)."""
    router = make_router(lab, kind, [Neighbor(A4, NODE_AS, password=PASSWORD, graceful_restart=False)])
    node = lab.add_host("nodeA", [f"{A4}/24"])
    wrong = LbdSpeaker(node, session(ROUTER4, A4, NODE_AS, A4, password="not-the-password"), ["10.77.100.1/32"]).start()
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:  # bounded: several connect retries at 1 s
        assert router.session_state(A4) != "established"
        time.sleep(0.25)
    assert not any(e.get("event") == "established" for e in wrong.events)
    wrong.stop()
    # The right password, same router: up (so the failure above was the password).
    right = LbdSpeaker(node, session(ROUTER4, A4, NODE_AS, A4, password=PASSWORD), ["10.77.100.1/32"]).start()
    right.wait_event("established", timeout=30)
    router.wait_routes(lambda rs: "10.77.100.1/32" in rs)
