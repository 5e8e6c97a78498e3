"""A SIGTERM in the middle of a long first pass (issue 9): 20,000 BGP services from a config
file, the real daemon, a BIRD router. The stop is sent as soon as the router holds the first
routes, while the node is still binding VIPs one by one; the daemon must exit within seconds,
and afterwards the router holds no route and ``lo`` no VIP.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from interop.bgp_peers import BirdPeer, Neighbor, PeerSpec
from lbd.testing.netlab import LbdNode, require_binary, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.interop]

SERVICES = 20_000

CONFIG = """
[[pool]]
name = "routed"
addresses = ["10.88.0.0/16"]

[[bgp_peer]]
name = "gateway"
my_asn = 64512
peer_asn = 64512
peer_address = "10.77.0.1"
hold_time = 9

[[bgp_advertisement]]
pools = ["routed"]
"""


class DirectBird(BirdPeer):
    def config(self) -> str:
        text = super().config()
        return text if " direct; hold time" in text else text.replace(" hold time", " direct; hold time")


def learned(router: BirdPeer) -> int:
    """Routes BIRD learned from lbd's session (a cheap count; 20,000 routes in full are slow)."""
    out = router.birdc("show", "route", "protocol", router.protocol_name("10.77.0.2"), "count")
    m = re.search(r"(\d+) of (\d+) routes for (\d+) networks", out)
    return int(m.group(1)) if m else 0  # "<selected> of <all> routes for <all> networks"


def vips_on_lo(node) -> int:  # type: ignore[no-untyped-def]
    out = node.run("ip -4 -o addr show dev lo").stdout
    return sum(1 for line in out.splitlines() if " 10.88." in line)


def test_sigterm_during_the_first_pass_withdraws_everything(lab, tmp_path):
    require_binary("bird", "birdc")
    router_host = lab.add_host("router", ["10.77.0.1/24"])
    node = lab.add_host("node", ["10.77.0.2/24"])
    router = DirectBird(router_host, PeerSpec(
        asn=64512, router_id="10.77.0.1",
        neighbors=[Neighbor(address="10.77.0.2", asn=64512, hold_time=9)],
    )).start()
    services = "".join(f'[[service]]\nname = "s{i}"\npool = "routed"\n' for i in range(SERVICES))
    lbd = LbdNode(node, tmp_path, CONFIG + services + '[log]\nlevel = "info"\n', name="node1")
    try:
        started = time.monotonic()
        lbd.start(wait=False)
        wait_for(lambda: learned(router) > 0 or not lbd.running(), 60, interval=0.05,
                 what="the first routes at the router")
        assert lbd.running(), lbd.log()[-2000:]
        first = time.monotonic() - started
        bound_before = vips_on_lo(node)
        lbd.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        wait_for(lambda: not lbd.running(), 10, interval=0.05, what="lbd to exit after SIGTERM")
        took = time.monotonic() - sent
        assert lbd.proc.returncode == 0, lbd.log()[-2000:]
        assert took < 5.0, f"exit took {took:.1f} s"
        # The first pass was really cut short (else this test proves nothing).
        assert "reconcile_interrupted" in lbd.log(), f"bound before the stop: {bound_before}"
        wait_for(lambda: learned(router) == 0, 15, interval=0.1, what="every route withdrawn")
        router.wait_routes(lambda r: not any(p.startswith("10.88.") for p in r), timeout=15,
                           what="every route withdrawn")
        assert vips_on_lo(node) == 0
        print(f"\n{SERVICES} services: first routes at the router {first:.2f} s after start, "
              f"{bound_before} VIPs on lo then; SIGTERM -> exit {took:.2f} s")
    finally:
        lbd.stop()
        router.stop()
