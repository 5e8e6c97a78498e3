"""Route export, the Calico case: lbd -> kernel table -> the node's BIRD (or FRR) -> BGP -> the router.

The gateway peers only with the node's routing daemon; lbd never speaks BGP
here. lbd writes each VIP into kernel table 1000 with protocol 252, the node's
daemon learns that table and announces it, and the router's own CLI must show
the VIP with the node as next hop, then lose it when lbd removes it.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from interop.bgp_peers import BirdPeer, FrrPeer, Neighbor, PeerSpec

from lbd.kernel.routes import RouteExporter
from lbd.config.schema import RouteExportConfig
from lbd.model import ExportRoute
from lbd.testing.netlab import require_binary, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.interop]

TABLE = 1000
NODE_AS, ROUTER_AS = 4200000001, 4200000002
VIP4, VIP6 = "10.77.100.10/32", "fd77:100::10/128"

# The snippet docs/route-export.md gives for BIRD 2 (plus the BGP session to the gateway).
NODE_BIRD = """
protocol kernel lbd4 {
  ipv4 { import all; export none; };
  kernel table %(table)d;
  learn;          # routes other programs (lbd, protocol 252) put in the table
  scan time 2;
}
protocol kernel lbd6 {
  ipv6 { import all; export none; };
  kernel table %(table)d;
  learn;
  scan time 2;
}
protocol bgp gw4 {
  local 10.77.0.2 as %(node_as)d; neighbor 10.77.0.1 as %(router_as)d;
  connect retry time 1; error wait time 1, 2;
  ipv4 { import none; export where proto = "lbd4"; next hop self; };
}
protocol bgp gw6 {
  local fd77::2 as %(node_as)d; neighbor fd77::1 as %(router_as)d;
  connect retry time 1; error wait time 1, 2;
  ipv6 { import none; export where proto = "lbd6"; next hop self; };
}
"""


def routes(*prefixes: str, table: int = TABLE) -> list[ExportRoute]:
    cfg = RouteExportConfig(name="calico", table=table)
    return [ExportRoute(ipaddress.ip_network(p), cfg.table, cfg.protocol, cfg.interface) for p in prefixes]


def build(lab):  # type: ignore[no-untyped-def]
    router = lab.add_host("router", ["10.77.0.1/24", "fd77::1/64"])
    node = lab.add_host("node", ["10.77.0.2/24", "fd77::2/64"])
    client = lab.add_host("client", ["10.77.0.3/24"])
    router.run("sysctl -qw net.ipv4.ip_forward=1")
    client.run("ip route add 10.77.100.0/24 via 10.77.0.1")
    # The node accepts traffic for the VIP (lbd binds it; here by hand).
    node.run(f"ip addr add {VIP4} dev lo")
    node.run(f"ip addr add {VIP6} dev lo")
    return router, node, client


def router_peer(router) -> BirdPeer:  # type: ignore[no-untyped-def]
    spec = PeerSpec(
        asn=ROUTER_AS, router_id="10.77.0.1", address6="fd77::1", install_kernel=True,
        neighbors=[Neighbor("10.77.0.2", NODE_AS, graceful_restart=False),
                   Neighbor("fd77::2", NODE_AS, graceful_restart=False)],
    )
    return BirdPeer(router, spec).start()


def check_path(router, router_bird, client, exporter: RouteExporter, node) -> None:  # type: ignore[no-untyped-def]
    # A route of another program in the same table: lbd must never touch it.
    node.run(f"ip route add 10.77.101.1/32 dev lo table {TABLE} proto static")

    asyncio.run(exporter.apply(routes(VIP4, VIP6)))
    got = router_bird.wait_routes(lambda rs: VIP4 in rs and VIP6 in rs, timeout=30, what="VIPs at the router")
    assert got[VIP4].next_hops == ("10.77.0.2",)
    assert got[VIP6].next_hops == ("fd77::2",)
    # The router's kernel forwards the VIP to the node, and a client gets through.
    wait_for(lambda: "via 10.77.0.2" in router.run(f"ip route show {VIP4}").stdout, timeout=10, what="router FIB")
    client.run("ping -c1 -W3 10.77.100.10")

    # Level-triggered: applying the same set again changes nothing.
    asyncio.run(exporter.apply(routes(VIP4, VIP6)))
    assert len(exporter.status()["routes"]) == 2  # type: ignore[arg-type]

    # The IPv4 VIP goes: withdrawn at the router, the IPv6 one stays.
    asyncio.run(exporter.apply(routes(VIP6)))
    router_bird.wait_routes(lambda rs: VIP4 not in rs and VIP6 in rs, timeout=30, what="IPv4 VIP withdrawn")

    # Closing removes everything lbd owns, and only that.
    asyncio.run(exporter.close())
    router_bird.wait_routes(lambda rs: VIP6 not in rs, timeout=30, what="IPv6 VIP withdrawn")
    table = node.run(f"ip route show table {TABLE}").stdout
    assert "10.77.101.1 dev lo proto static" in table
    assert "10.77.100.10" not in table


def test_route_export_through_node_bird(lab):
    require_binary("bird", "birdc")
    router, node, client = build(lab)
    router_bird = router_peer(router)
    node_bird = BirdPeer(
        node, PeerSpec(asn=NODE_AS, router_id="10.77.0.2"),
        extra_config=NODE_BIRD % {"table": TABLE, "node_as": NODE_AS, "router_as": ROUTER_AS},
    ).start()
    router_bird.wait_established("10.77.0.2")
    router_bird.wait_established("fd77::2")
    exporter = RouteExporter.from_configs([RouteExportConfig(name="calico", table=TABLE)], netns=node.netns)
    check_path(router, router_bird, client, exporter, node)
    node_bird.stop()


# FRR on the node: zebra imports the table into its RIB, bgpd redistributes it.
# zebra's ``ip import-table`` takes tables 1-252 only.
FRR_TABLE = 200
NODE_FRR_ZEBRA = f"ip import-table {FRR_TABLE}\n"
NODE_FRR_BGP = f"""router bgp {NODE_AS}
 address-family ipv4 unicast
  redistribute table {FRR_TABLE}
 exit-address-family
"""


def test_route_export_through_node_frr(lab):
    require_binary("bird", "birdc", "vtysh")
    router, node, client = build(lab)
    # FRR 8's zebra redistributes only the routes it selects, and a VIP bound as an
    # address on lo is a connected route (distance 0) that beats the imported table
    # route (distance 15). So with FRR the node accepts the VIP through a local
    # route (AnyIP) that lbd installs (accept = "local-route"), not an address.
    node.run(f"ip addr del {VIP4} dev lo")
    router_bird = router_peer(router)
    spec = PeerSpec(asn=NODE_AS, router_id="10.77.0.2", install_kernel=True,
                    neighbors=[Neighbor("10.77.0.1", ROUTER_AS, passive=False, graceful_restart=False)])
    FrrPeer(node, spec, extra_bgp=NODE_FRR_BGP, extra_zebra=NODE_FRR_ZEBRA).start()
    router_bird.wait_established("10.77.0.2")
    config = RouteExportConfig(name="calico", table=FRR_TABLE, accept="local-route")
    exporter = RouteExporter.from_configs([config], netns=node.netns)
    local = ExportRoute(ipaddress.ip_network(VIP4), 255, config.protocol, "lo", kind="local")

    asyncio.run(exporter.apply(routes(VIP4, table=FRR_TABLE) + [local]))
    assert f"local {VIP4.split('/')[0]} dev lo proto 252" in node.run("ip route show table local").stdout
    got = router_bird.wait_routes(lambda rs: VIP4 in rs, timeout=30, what="VIP at the router via FRR")
    assert got[VIP4].next_hops == ("10.77.0.2",)
    client.run("ping -c1 -W3 10.77.100.10")
    asyncio.run(exporter.close())
    router_bird.wait_routes(lambda rs: VIP4 not in rs, timeout=30, what="VIP withdrawn via FRR")
    assert "proto 252" not in node.run("ip route show table local").stdout
