"""lbd's BFD against BIRD 2 (protocol bfd) and FRR (bfdd), with the real
daemon (``lbd run``): sessions come Up single-hop and multi-hop; a killed lbd
makes the router drop its route within the detection time, not the hold
time; a dead router BFD makes lbd take its BGP session down; a graceful stop
is AdminDown at the router, not a failure; authentication with matching and
wrong keys (BIRD; FRR 8.4's bfdd has no authentication).

    router 10.77.0.1 (lo 10.88.9.1 for multi-hop) ---- nodeA 10.77.0.2 (lbd)
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from interop.bfd_peers import BfdSpec, BirdBfd, FrrBfd, lbd_config
from interop.bgp_peers import Neighbor, PeerSpec

from lbd.testing.netlab import LbdNode, require_binary, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.interop]

ROUTER_AS, NODE_AS = 4200000002, 4200000001
VIP = "10.77.100.1"
ROUTER, NODE, ROUTER_LO = "10.77.0.1", "10.77.0.2", "10.88.9.1"
HOLD = 30  # without BFD a dead lbd would stay in the router's table this long


def build(lab: Any, tmp_path: Path, kind: str, bfd: BfdSpec, lbd_bfd: BfdSpec | None = None) -> tuple[Any, LbdNode]:
    router = lab.add_host("router", [f"{ROUTER}/24"])
    node = lab.add_host("nodeA", [f"{NODE}/24"])
    peer_address = ROUTER
    if bfd.multihop:
        router.run(f"ip addr add {ROUTER_LO}/32 dev lo")
        node.run(f"ip route add {ROUTER_LO}/32 via {ROUTER}")
        peer_address = ROUTER_LO
    spec = PeerSpec(asn=ROUTER_AS, router_id=ROUTER,
                    neighbors=[Neighbor(NODE, NODE_AS, graceful_restart=False, hold_time=HOLD)])
    rtr = (BirdBfd if kind == "bird" else FrrBfd)(router, spec, bfd).start()
    key_file = tmp_path / "bfd.key"
    mine = lbd_bfd or bfd
    key_file.write_text(mine.password + "\n")
    config = lbd_config(vip=VIP, my_asn=NODE_AS, peer_asn=ROUTER_AS, peer_address=peer_address, bfd=mine,
                        key_file=str(key_file), hold_time=HOLD)
    lbd = LbdNode(node, tmp_path, config).start()
    return rtr, lbd


def ctl_json(lbd: LbdNode, command: str) -> Any:
    return json.loads(lbd.ctl("--json", command).stdout)


def lbd_bfd(lbd: LbdNode) -> dict[str, Any]:
    rows = ctl_json(lbd, "bfd")
    return rows[0] if rows else {}


def bird_bfd_state(rtr: BirdBfd) -> str:
    for line in rtr.bfd_sessions().splitlines():
        if NODE in line:
            return line.split()[2]  # IP address, interface, state, since, interval, timeout
    return "none"


def router_bfd_up(rtr: Any) -> bool:
    if isinstance(rtr, BirdBfd):
        return bird_bfd_state(rtr) == "Up"
    return any(p.get("peer") == NODE and p.get("status") == "up" for p in rtr.bfd_peers())


def wait_up(rtr: Any, lbd: LbdNode) -> None:
    wait_for(lambda: lbd_bfd(lbd).get("state") == "Up", timeout=30, what=f"lbd BFD Up; {lbd_bfd(lbd)}")
    wait_for(lambda: router_bfd_up(rtr), timeout=15, what="router BFD Up")
    rtr.wait_routes(lambda rs: f"{VIP}/32" in rs, what="VIP at the router")
    (bgp,) = ctl_json(lbd, "bgp")
    assert bgp["state"] == "established" and bgp["bfd"] == "Up"


def crash_and_time_route_gone(rtr: Any, lbd: LbdNode) -> float:
    """SIGKILL and link down: seconds until the router has dropped lbd's route."""
    lbd.host.lab.set_link(lbd.host, False)
    lbd.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    wait_for(lambda: f"{VIP}/32" not in rtr.routes(), timeout=HOLD - 5, interval=0.02,
             what="route gone at the router")
    return time.monotonic() - t0


@pytest.mark.parametrize("multihop", [False, True], ids=["single-hop", "multi-hop"])
def test_bird(lab, tmp_path, multihop):  # type: ignore[no-untyped-def]
    require_binary("bird", "birdc")
    # BIRD sends multi-hop BFD with TTL 64: lbd's minimum_ttl (default 254, MetalLB's) must allow it.
    spec = BfdSpec(multihop=multihop, local=ROUTER_LO if multihop else None, minimum_ttl=64 if multihop else None)
    rtr, lbd = build(lab, tmp_path, "bird", spec)
    wait_up(rtr, lbd)
    # Up is first reached at the slow rate (RFC 5880 §6.8.3: 1 s until Up); the 100 ms x 3
    # timers follow through each side's Poll sequence, a moment later.
    wait_for(lambda: lbd_bfd(lbd).get("detection_time_ms") == 300.0, timeout=10,
             what=f"negotiated detection time; {lbd_bfd(lbd)}")
    row = lbd_bfd(lbd)
    assert row["multihop"] is multihop and row["detection_time_ms"] == 300.0

    # Graceful stop: the route is withdrawn, then BIRD's BFD receives AdminDown (not a timeout).
    lbd.stop(signal.SIGTERM)
    wait_for(lambda: f"{VIP}/32" not in rtr.routes(), timeout=5, what="route withdrawn")
    wait_for(lambda: bird_bfd_state(rtr) == "Down", timeout=5, what="BFD down at BIRD")
    log = rtr.log()
    assert f"CTL received from {NODE} [AdminDown]" in log, log[-2000:]
    # BIRD 2.0.12 then still records "BFD session down" on the BGP protocol: it
    # treats a remote AdminDown like a failure (RFC 5882 §3.2 says it must not;
    # see docs/bfd.md). The withdrawal had already removed the route.

    # Crash: the route leaves within the detection time (plus BIRD's own work), far below the hold time.
    lbd.start()
    wait_up(rtr, lbd)
    took = crash_and_time_route_gone(rtr, lbd)
    assert took < 2.0, took
    assert "BFD session down" in rtr.protocol_info(NODE)


def test_bird_bfd_dies_lbd_takes_bgp_down(lab, tmp_path):  # type: ignore[no-untyped-def]
    require_binary("bird", "birdc", "nft")
    rtr, lbd = build(lab, tmp_path, "bird", BfdSpec())
    wait_up(rtr, lbd)
    # The router's BFD goes silent (its packets dropped on the way out); BGP itself is untouched.
    rtr.host.run(["nft", "add table inet bfdtest; add chain inet bfdtest out { type filter hook output priority 0; }; "
                  "add rule inet bfdtest out udp dport 3784 drop"])
    wait_for(lambda: lbd_bfd(lbd).get("flaps", 0) >= 1, timeout=10, what="lbd BFD down")
    row = lbd_bfd(lbd)
    assert row["last_down_diag"] == "control-detection-time-expired"
    wait_for(lambda: "BFD" in (ctl_json(lbd, "bgp")[0].get("last_error") or ""), timeout=10,
             what="lbd took the BGP session down for BFD")
    assert '"bgp_bfd_down"' in lbd.log() or "bgp_bfd_down" in lbd.log()


@pytest.mark.parametrize("auth", ["meticulous-keyed-sha1", "keyed-sha1"])
def test_bird_authentication(lab, tmp_path, auth):  # type: ignore[no-untyped-def]
    require_binary("bird", "birdc")
    rtr, lbd = build(lab, tmp_path, "bird", BfdSpec(auth=auth))
    wait_up(rtr, lbd)
    assert lbd_bfd(lbd)["packets_discarded"] == 0


def test_bird_authentication_wrong_key(lab, tmp_path):  # type: ignore[no-untyped-def]
    require_binary("bird", "birdc")
    spec = BfdSpec(auth="meticulous-keyed-sha1")
    rtr, lbd = build(lab, tmp_path, "bird", spec, lbd_bfd=BfdSpec(auth="meticulous-keyed-sha1", password="wrong"))
    wait_for(lambda: lbd_bfd(lbd).get("packets_discarded", 0) >= 2, timeout=15, what="packets rejected")
    assert "digest mismatch" in lbd_bfd(lbd)["last_discard"]
    time.sleep(3)
    assert lbd_bfd(lbd)["state"] == "Down" and bird_bfd_state(rtr) != "Up"


@pytest.mark.parametrize("multihop", [False, True], ids=["single-hop", "multi-hop"])
def test_frr(lab, tmp_path, multihop):  # type: ignore[no-untyped-def]
    require_binary("/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "/usr/lib/frr/bfdd", "vtysh")
    rtr, lbd = build(lab, tmp_path, "frr", BfdSpec(multihop=multihop, local=ROUTER_LO if multihop else None))
    wait_up(rtr, lbd)

    # Graceful stop: the route is withdrawn and FRR's bfdd records the peer's AdminDown.
    lbd.stop(signal.SIGTERM)
    wait_for(lambda: f"{VIP}/32" not in rtr.routes(), timeout=5, what="route withdrawn")
    wait_for(lambda: any(p.get("peer") == NODE and p.get("status") != "up" for p in rtr.bfd_peers()),
             timeout=5, what="BFD down at FRR")
    peer = next(p for p in rtr.bfd_peers() if p.get("peer") == NODE)
    assert peer.get("remote-diagnostic") == "administratively down", peer
    # FRR 8.4's bgpd still resets the session for "BFD down received" when that
    # reaches it before the Cease: it does not apply RFC 5882 §3.2 (docs/bfd.md).

    lbd.start()
    wait_up(rtr, lbd)
    if not multihop:
        # FRR's bfdd killed: lbd's BFD times out and lbd takes its BGP session down.
        rtr.host.lab.stop(rtr.bfdd, sig=signal.SIGKILL)
        wait_for(lambda: "BFD" in (ctl_json(lbd, "bgp")[0].get("last_error") or ""), timeout=10,
                 what="lbd took the BGP session down for BFD")
        rtr.start_bfdd()
        wait_up(rtr, lbd)
    took = crash_and_time_route_gone(rtr, lbd)
    assert took < 2.0, took
