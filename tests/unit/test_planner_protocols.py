"""Each protocol's planner on its own: which node announces a VIP, and what it says when
a node may not (``plan_l2``, ``plan_bgp``, ``plan_export``; ``plan`` composes them)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from lbd.config.schema import (
    BgpAdvertisementConfig,
    BgpPeerConfig,
    ClusterConfig,
    Config,
    L2AdvertisementConfig,
    NodeConfig,
    RouteExportConfig,
)
from lbd.model import L2Mode, Member, MemberState, ServiceSpec
from lbd.planner import PlannerInput
from lbd.planner.bgp import merge_routes, plan_bgp
from lbd.planner.election import rank
from lbd.planner.export import RT_TABLE_LOCAL, plan_export
from lbd.planner.inputs import NodeView, VipInput
from lbd.planner.l2 import plan_l2

ip = ipaddress.ip_address
VIP = ip("10.77.0.100")
LAN = {"eth0": (ipaddress.ip_interface("10.77.0.11/24"),)}
GW = BgpPeerConfig(name="gw", my_asn=64512, peer_asn=64512, peer_address=ip("10.77.0.254"))


def view(node: str, members: list[Member], **config: object) -> NodeView:
    cfg = Config(path=Path("/dev/null"), node=NodeConfig(name=node), **config)  # type: ignore[arg-type]
    return NodeView.of(PlannerInput(config=cfg, node=node, allocations={}, services={}, members=members))


def member(name: str, **kw: object) -> Member:
    kw.setdefault("interfaces", LAN)
    return Member(name=name, **kw)  # type: ignore[arg-type]


def vip_input(*specs: ServiceSpec, vip: ipaddress.IPv4Address = VIP) -> VipInput:
    specs = specs or (ServiceSpec(name="s"),)
    return VipInput(vip=vip, pool="p", services=tuple(s.name for s in specs), specs=specs)


# -- layer 2 -------------------------------------------------------------------

L2 = dict(l2_advertisements=(L2AdvertisementConfig(name="l2", mode="responder", announce_burst=2),))


def test_l2_only_the_ranked_first_node_announces() -> None:
    first, second = rank(VIP, ["n1", "n2"])
    members = [member("n1"), member("n2")]
    owner_plan = plan_l2(view(first, members, **L2), vip_input())
    other_plan = plan_l2(view(second, members, **L2), vip_input())
    assert owner_plan is not None and other_plan is not None
    assert owner_plan.owner == other_plan.owner == first
    assert owner_plan.candidates == (first, second)
    assert owner_plan.intent is not None and owner_plan.intent.interface == "eth0"
    assert owner_plan.intent.mode is L2Mode.RESPONDER and owner_plan.intent.announce_burst == 2
    assert other_plan.intent is None


def test_l2_ineligible_nodes_are_named_with_the_reason() -> None:
    members = [member("n1", drained=True), member("n2", state=MemberState.DEAD),
               member("n3", interfaces={}), member("n4", failing=frozenset({"s"}))]
    result = plan_l2(view("n1", members, **L2), vip_input())
    assert result is not None and result.owner is None and result.intent is None
    (reason,) = result.reasons
    assert reason.startswith("l2: not announced: ")
    assert "n1 is drained" in reason and "n2 is dead" in reason
    assert "n3: no interface has a subnet holding 10.77.0.100" in reason
    assert "health check of s fails on n4" in reason


def test_l2_old_holder_announces_until_the_new_owner_holds() -> None:
    result = plan_l2(view("a", [member("a", drained=True, holds=(str(VIP),)), member("b")], **L2), vip_input())
    assert result is not None and result.owner == "b"
    assert result.intent is not None and "l2: handing over to b" in result.reasons


def test_l2_not_covering_the_pool_is_no_plan() -> None:
    assert plan_l2(view("n1", [member("n1")]), vip_input()) is None
    other_pool = dict(l2_advertisements=(L2AdvertisementConfig(name="l2", pools=("q",)),))
    assert plan_l2(view("n1", [member("n1")], **other_pool), vip_input()) is None


# -- BGP -----------------------------------------------------------------------

def bgp_config(**ad: object) -> dict[str, object]:
    return dict(bgp_peers=(GW,), bgp_advertisements=(BgpAdvertisementConfig(name="b", **ad),))  # type: ignore[arg-type]


def test_bgp_every_eligible_node_announces_to_its_peers() -> None:
    members = [member("n1"), member("n2")]
    for node in ("n1", "n2"):
        result = plan_bgp(view(node, members, **bgp_config(aggregation_length=24)), vip_input())
        assert result is not None and result.announced and not result.by_address
        ((key, peers),) = result.routes
        assert str(key.prefix) == "10.77.0.0/24" and peers == ("gw",)
        assert result.reason == f"bgp: announced from {node}"


def test_bgp_not_announced_when_not_eligible_or_not_selected() -> None:
    failing = plan_bgp(view("n1", [member("n1", failing=frozenset({"s"}))], **bgp_config()), vip_input())
    assert failing is not None and not failing.announced
    assert failing.reason == "bgp: not announced from n1: health check of s fails on n1"
    etp_local = vip_input(ServiceSpec(name="s", eligible_nodes=frozenset({"n2"})))
    elsewhere = plan_bgp(view("n1", [member("n1")], **bgp_config()), etp_local)
    assert elsewhere is not None and elsewhere.reason == "bgp: not announced from n1: s has no ready endpoint on n1"
    unselected = plan_bgp(view("n1", [member("n1")], **bgp_config(node_selector={"zone": "b"})), vip_input())
    assert unselected is not None and not unselected.announced
    assert unselected.reason.endswith("no advertisement or peer selects this node")
    assert plan_bgp(view("n1", [member("n1")]), vip_input()) is None


def test_bgp_routes_merge_across_vips() -> None:
    v = view("n1", [member("n1")], **bgp_config(aggregation_length=24, accept="address"))
    plans = [plan_bgp(v, vip_input(vip=ip(f"10.77.0.{i}"))) for i in (1, 2)]
    assert all(p is not None and p.by_address for p in plans)
    (route,) = merge_routes(p for p in plans if p is not None)
    assert str(route.prefix) == "10.77.0.0/24" and route.peers == ("gw",)


# -- route export --------------------------------------------------------------

def test_export_installs_on_every_eligible_node() -> None:
    exports = dict(route_exports=(RouteExportConfig(name="bird", table=100, interface="eth0"),))
    result = plan_export(view("n1", [member("n1")], **exports), vip_input())
    assert result is not None and result.exported and result.bind_interface == "eth0"
    assert [(str(r.prefix), r.table, r.kind) for r in result.routes] == [("10.77.0.100/32", 100, "unicast")]
    assert result.reason == "export: installed in kernel table on n1"


def test_export_local_route_accepts_without_binding() -> None:
    exports = dict(route_exports=(RouteExportConfig(name="frr", table=100, accept="local-route"),))
    result = plan_export(view("n1", [member("n1")], **exports), vip_input())
    assert result is not None and result.bind_interface is None
    assert [(r.table, r.kind) for r in result.routes] == [(100, "unicast"), (RT_TABLE_LOCAL, "local")]


def test_export_not_installed_when_not_eligible_or_not_selected() -> None:
    exports = dict(route_exports=(RouteExportConfig(name="bird", table=100),))
    drained = plan_export(view("n1", [member("n1", drained=True)], **exports), vip_input())
    assert drained is not None and not drained.exported and drained.bind_interface is None
    assert drained.reason == "export: not installed on n1: n1 is drained"
    selective = dict(route_exports=(RouteExportConfig(name="bird", table=100, node_selector={"zone": "b"}),))
    unselected = plan_export(view("n1", [member("n1")], **selective), vip_input())
    assert unselected is not None and unselected.reason.endswith("no route_export selects this node")
    assert plan_export(view("n1", [member("n1")]), vip_input()) is None


def test_a_node_missing_from_its_own_view_announces_nothing() -> None:
    v = view("n1", [member("n2")], **L2, **bgp_config(), route_exports=(RouteExportConfig(name="x", table=100),))
    assert v.me.state is MemberState.DEAD
    l2, bgp, export = plan_l2(v, vip_input()), plan_bgp(v, vip_input()), plan_export(v, vip_input())
    assert l2 is not None and l2.owner == "n2" and l2.intent is None
    assert bgp is not None and not bgp.announced and export is not None and not export.exported


def test_cluster_config_failback_reaches_the_election() -> None:
    first, second = rank(VIP, ["n1", "n2"])
    members = [member(first), member(second, holds=(str(VIP),))]
    never = plan_l2(view(first, members, cluster=ClusterConfig(failback_delay=None), **L2), vip_input())
    assert never is not None and never.owner == second and never.intent is None
