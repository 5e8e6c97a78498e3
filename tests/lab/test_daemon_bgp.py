"""The whole daemon announcing VIPs over BGP to a real BIRD 2 router.

From /etc/lbd.toml to a route at the router: the service gets an address from
the routed pool, the node binds it locally (so it accepts the traffic) and
announces it with itself as next hop, the configured communities and local
preference; `lbd-ctl bgp` shows the session; `lbd-ctl restart` (a stop for a
restart) keeps the route at the router through graceful restart; a removed
service and a plain stop withdraw it.
"""

from __future__ import annotations

import json
import signal

import pytest

from lbd.testing.netlab import require_binary
from interop.bgp_peers import BirdPeer, Neighbor, PeerSpec
from lbd.testing.netlab import LbdNode, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.interop]

CONFIG = """
[[pool]]
name = "routed"
addresses = ["10.88.0.0/24"]

[[bgp_peer]]
name = "gateway"
my_asn = 64512
peer_asn = 64512
peer_address = "10.77.0.1"
hold_time = 9
graceful_restart = true
graceful_restart_time = 60

[[bgp_advertisement]]
pools = ["routed"]
aggregation_length = 32
local_pref = 150
communities = ["64512:100", "large:64512:7:9"]
"""

class DirectBird(BirdPeer):
    """BIRD treats iBGP as multihop unless told the neighbour is directly connected."""

    def config(self) -> str:
        text = super().config()
        return text if " direct; hold time" in text else text.replace(" hold time", " direct; hold time")


SERVICES = '[[service]]\nname = "api"\npool = "routed"\nports = ["tcp/443"]\n'


def test_daemon_announces_over_bgp_and_survives_restart(lab, tmp_path):
    require_binary("bird", "birdc")
    router_host = lab.add_host("router", ["10.77.0.1/24"])
    node = lab.add_host("node", ["10.77.0.2/24"])
    router = DirectBird(router_host, PeerSpec(
        asn=64512, router_id="10.77.0.1",
        neighbors=[Neighbor(address="10.77.0.2", asn=64512, hold_time=9, graceful_restart=True)],
        restart_time=60,
    )).start()
    lbd = LbdNode(node, tmp_path, CONFIG + SERVICES, name="node1").start()
    try:
        routes = router.wait_routes(lambda r: "10.88.0.0/32" in r, timeout=30, what="the VIP at the router")
        route = routes["10.88.0.0/32"]
        assert route.next_hops == ("10.77.0.2",)
        assert route.local_pref == 150
        assert "64512:100" in route.communities and "64512:7:9" in route.large_communities
        # The node accepts traffic for the VIP through lbd's local route (accept = "local-route",
        # the default), not an address, and not on the LAN.
        assert "10.88.0.0" in node.run("ip route show table local type local dev lo proto 252").stdout
        assert "10.88.0.0" not in node.run("ip -br addr show dev lo").stdout
        assert "10.88.0.0" not in node.run("ip -br addr show dev eth0").stdout
        peers = json.loads(lbd.ctl("--json", "bgp").stdout)
        assert peers[0]["name"] == "gateway" and peers[0]["state"].lower() == "established"
        assert "established" in lbd.ctl("bgp").stdout.lower()
        row = lbd.service("static/api")
        assert row["state"] == "announced" and "bgp" in row["modes"]

        # A stop for a restart: the router keeps the route (RFC 4724) while lbd is away.
        assert lbd.ctl_ok("restart")
        wait_for(lambda: not lbd.running(), 20, what="lbd to exit for the restart")
        assert lbd.proc.returncode == 75
        assert "10.88.0.0/32" in router.routes(), "graceful restart must keep the route at the router"
        # ...and the node keeps accepting the traffic meanwhile: the local route stays.
        assert "10.88.0.0" in node.run("ip route show table local type local dev lo proto 252").stdout
        lbd.start()
        router.wait_established("10.77.0.2", timeout=30)
        assert "10.88.0.0/32" in router.routes()

        # Removing the service withdraws the route.
        lbd.write_config(CONFIG + '[[service]]\nname = "other"\npool = "routed"\naddresses = ["10.88.0.9"]\n')
        lbd.send_signal(signal.SIGHUP)
        router.wait_routes(lambda r: "10.88.0.0/32" not in r and "10.88.0.9/32" in r, timeout=30,
                           what="api withdrawn, other announced")
        # A plain stop withdraws everything (Cease), at once.
        lbd.stop()
        router.wait_routes(lambda r: not r, timeout=30, what="every route withdrawn")
    finally:
        lbd.stop()
        router.stop()


SERVER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(64)
srv.settimeout(60)
for _ in range(int(sys.argv[3])):
    conn, _ = srv.accept()
    conn.sendall(conn.getsockname()[0].encode() + b"\\n")
    conn.close()
"""

CLIENT = """
import socket, sys
for vip in sys.argv[2:]:
    with socket.create_connection((vip, int(sys.argv[1])), timeout=5) as c:
        print(c.recv(64).decode().strip())
"""


SCALE_VIPS = 20_480  # 80 /24s of one pool


def test_twenty_thousand_bgp_vips_accepted_by_local_routes(lab, tmp_path):
    """20,480 BGP VIPs (issue 9) at the router; the node answers TCP on a sample of them through
    two local routes (AnyIP: the fewest CIDRs covering what is allocated), with no address per
    VIP on lo; a stop removes the routes."""
    require_binary("bird", "birdc")
    import sys

    router_host = lab.add_host("router", ["10.77.0.1/24"])
    node = lab.add_host("node", ["10.77.0.2/24"])
    router = DirectBird(router_host, PeerSpec(
        asn=64512, router_id="10.77.0.1", neighbors=[Neighbor(address="10.77.0.2", asn=64512, hold_time=9)],
    )).start()
    config = CONFIG.replace('addresses = ["10.88.0.0/24"]', 'addresses = ["10.88.0.0/17"]')
    services = "".join(f'[[service]]\nname = "s{i}"\npool = "routed"\n' for i in range(SCALE_VIPS))
    lbd = LbdNode(node, tmp_path, config + services, name="node1").start()
    try:
        def count() -> int:
            import re
            m = re.search(r"(\d+) of \d+ routes", router.birdc("show", "route", "count"))
            return int(m.group(1)) if m else 0

        try:
            # The router's own connected route is counted too.
            wait_for(lambda: count() >= SCALE_VIPS + 1, 240, what=f"{SCALE_VIPS} routes at the router")
        except TimeoutError:
            raise AssertionError(router.birdc("show", "route", "count") + lbd.log()[-3000:]) from None
        assert sum(1 for prefix in router.routes() if prefix.startswith("10.88.")) == SCALE_VIPS
        local = node.run("ip route show table local type local dev lo proto 252").stdout
        # 10.88.0.0-10.88.79.255 allocated: a /18 and a /20 cover exactly that.
        assert [line.split()[:2] for line in local.strip().splitlines()] == [
            ["local", "10.88.0.0/18"], ["local", "10.88.64.0/20"]], local
        assert "10.88." not in node.run("ip -br addr show dev lo").stdout
        router_host.run("ip route add 10.88.0.0/17 via 10.77.0.2")
        sample = ["10.88.0.0", "10.88.3.77", "10.88.70.1", "10.88.79.255"]
        # A socket bound to the wildcard answers on every VIP...
        wild = node.popen([sys.executable, "-c", SERVER, "0.0.0.0", "8080", str(len(sample))])
        # ...and one bound to a single VIP binds without IP_FREEBIND (IPv4 AnyIP: the address
        # is local by the local table's route).
        one = node.popen([sys.executable, "-c", SERVER, "10.88.3.77", "8081", "1"])
        wait_for(lambda: ":8081" in node.run("ss -ltn").stdout and ":8080" in node.run("ss -ltn").stdout,
                 10, what="listeners")
        out = router_host.run([sys.executable, "-c", CLIENT, "8080", *sample], timeout=30).stdout.split()
        assert out == sample
        out = router_host.run([sys.executable, "-c", CLIENT, "8081", "10.88.3.77"], timeout=30).stdout.split()
        assert out == ["10.88.3.77"]
        wild.wait(10)
        one.wait(10)
        lbd.stop()
        assert "10.88." not in node.run("ip route show table local proto 252").stdout
    finally:
        lbd.stop()
        router.stop()
