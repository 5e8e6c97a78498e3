"""The planner: election order, eligibility, failback, and the intents it emits."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path

from hypothesis import given, strategies as st

from lbd.config.schema import (
    BgpAdvertisementConfig,
    BgpPeerConfig,
    Config,
    ClusterConfig,
    L2AdvertisementConfig,
    NodeConfig,
    RouteExportConfig,
)
from lbd.model import Allocation, Member, MemberState, ServiceSpec
from lbd.planner import PlannerInput, plan
from lbd.planner.election import elect, rank

ip = ipaddress.ip_address
LAN = {"eth0": (ipaddress.ip_interface("10.77.0.11/24"), ipaddress.ip_interface("fd77::11/64"))}


def config(**kw) -> Config:
    base = dict(
        path=Path("/dev/null"),
        node=NodeConfig(name="n1"),
        l2_advertisements=(L2AdvertisementConfig(name="l2"),),
    )
    base.update(kw)
    return Config(**base)


def member(name: str, **kw) -> Member:
    kw.setdefault("interfaces", LAN)
    return Member(name=name, **kw)


def alloc(service: str, *addresses: str, pool: str = "p") -> Allocation:
    return Allocation(service=service, pool=pool, addresses=tuple(ip(a) for a in addresses))


def run(node: str, members, allocations, cfg=None, services=None, **kw):
    allocs = {a.service: a for a in allocations}
    specs = services or {a.service: ServiceSpec(name=a.service) for a in allocations}
    return plan(PlannerInput(config=cfg or config(), node=node, allocations=allocs,
                             services=specs, members=members, **kw))


def test_rank_is_metallb_order():
    vip = ip("10.77.0.100")
    nodes = ["n1", "n2", "n3", "n4"]
    expected = sorted(nodes, key=lambda n: hashlib.sha256(f"{n}#10.77.0.100".encode()).digest())
    assert rank(vip, nodes) == expected
    assert rank(vip, reversed(nodes)) == expected


@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True, min_size=1),
       st.integers(min_value=0, max_value=2**32 - 1))
def test_every_node_agrees_on_the_owner(nodes, address):
    vip = ipaddress.IPv4Address(address)
    members = [Member(name=n, interfaces={"eth0": (ipaddress.ip_interface(f"{vip}/0"),)}) for n in nodes]
    allocs = [Allocation("s", "p", (vip,))]
    owners = {run(n, members, allocs).decisions[0].owner for n in nodes}
    assert owners == {rank(vip, nodes)[0]}
    holders = [n for n in nodes if run(n, members, allocs).l2]
    assert holders == [rank(vip, nodes)[0]]


def test_single_node_owns_and_binds_on_fitting_interface():
    result = run("n1", [member("n1")], [alloc("static/web", "10.77.0.100", "fd77::100")])
    assert [(str(i.vip), i.interface, i.mode) for i in result.l2] == [
        ("10.77.0.100", "eth0", "bind"), ("fd77::100", "eth0", "bind")]
    assert all(d.owner == "n1" and d.announced_here for d in result.decisions)


def test_vip_outside_every_subnet_is_not_announced_and_says_why():
    result = run("n1", [member("n1")], [alloc("static/web", "10.99.0.5")])
    assert result.l2 == ()
    (decision,) = result.decisions
    assert decision.owner is None
    assert "no interface has a subnet holding 10.99.0.5" in decision.reason
    assert "eth0: 10.77.0.0/24" in decision.reason


def test_configured_interfaces_restrict_the_choice():
    interfaces = {"eth0": LAN["eth0"], "eth1": (ipaddress.ip_interface("10.77.0.12/24"),)}
    cfg = config(l2_advertisements=(L2AdvertisementConfig(name="l2", interfaces=("eth1",), mode="responder"),))
    result = run("n1", [member("n1", interfaces=interfaces)], [alloc("s", "10.77.0.100")], cfg)
    assert [(i.interface, i.mode) for i in result.l2] == [("eth1", "responder")]


def test_dead_drained_failing_and_unselected_nodes_are_not_candidates():
    vip = "10.77.0.100"
    cfg = config(l2_advertisements=(L2AdvertisementConfig(name="l2", node_selector={"zone": "a"}),))
    members = [
        member("dead", state=MemberState.DEAD, labels={"zone": "a"}),
        member("drained", drained=True, labels={"zone": "a"}),
        member("failing", failing=frozenset({"s"}), labels={"zone": "a"}),
        member("other-zone", labels={"zone": "b"}),
        member("ok", labels={"zone": "a"}),
    ]
    result = run("ok", members, [alloc("s", vip)], cfg)
    (decision,) = result.decisions
    assert decision.owner == "ok" and decision.candidates == ("ok",)


def test_etp_local_eligible_nodes():
    members = [member("n1"), member("n2"), member("n3")]
    services = {"s": ServiceSpec(name="s", eligible_nodes=frozenset({"n3"}))}
    result = run("n3", members, [alloc("s", "10.77.0.100")], services=services)
    assert result.decisions[0].owner == "n3"
    nobody = run("n3", members, [alloc("s", "10.77.0.100")],
                 services={"s": ServiceSpec(name="s", eligible_nodes=frozenset())})
    assert nobody.decisions[0].owner is None and "no ready endpoint" in nobody.decisions[0].reason


def test_failback_waits_for_the_delay():
    vip = ip("10.77.0.100")
    ideal, other = rank(vip, ["n1", "n2"])
    kept = elect(vip, ["n1", "n2"], holders=[other], eligible_since={ideal: 100.0}, now=110.0, failback_delay=30)
    assert kept.owner == other and "20.0s left" in kept.reason
    back = elect(vip, ["n1", "n2"], holders=[other], eligible_since={ideal: 100.0}, now=131.0, failback_delay=30)
    assert back.owner == ideal
    never = elect(vip, ["n1", "n2"], holders=[other], eligible_since={ideal: 0.0}, now=1e9, failback_delay=None)
    assert never.owner == other
    immediate = elect(vip, ["n1", "n2"], holders=[other], eligible_since={ideal: 100.0}, now=100.0, failback_delay=0)
    assert immediate.owner == ideal


def test_make_before_break_handover():
    vip = "10.77.0.100"
    ideal, other = rank(ip(vip), ["n1", "n2"])
    cfg = config(cluster=ClusterConfig(failback_delay=0))
    # The old holder keeps announcing until the new owner says it holds the VIP...
    members = [member(ideal), member(other, holds=(vip,))]
    assert run(other, members, [alloc("s", vip)], cfg).l2
    assert run(ideal, members, [alloc("s", vip)], cfg).l2
    # ...then lets go.
    members = [member(ideal, holds=(vip,)), member(other, holds=(vip,))]
    assert not run(other, members, [alloc("s", vip)], cfg).l2


def test_shared_vip_is_one_decision():
    result = run("n1", [member("n1")], [alloc("static/a", "10.77.0.100"), alloc("static/b", "10.77.0.100")])
    assert len(result.l2) == 1 and result.l2[0].services == ("static/a", "static/b")


def test_bgp_routes_aggregate_and_bind_locally():
    peer = BgpPeerConfig(name="gw", my_asn=64512, peer_asn=64512, peer_address=ip("10.77.0.254"))
    cfg = config(
        l2_advertisements=(),
        bgp_peers=(peer,),
        bgp_advertisements=(BgpAdvertisementConfig(name="b", aggregation_length=24,
                                                   communities=("64512:100", "large:64512:1:2"), local_pref=200),),
    )
    result = run("n1", [member("n1")], [alloc("a", "10.42.0.1"), alloc("b", "10.42.0.2")], cfg)
    (route,) = result.bgp
    assert str(route.prefix) == "10.42.0.0/24" and route.peers == ("gw",)
    assert route.communities == ((64512, 100),) and route.large_communities == ((64512, 1, 2),)
    assert route.local_pref == 200
    # Default accept = "local-route": no address per VIP, one local route for both (10.42.0.1-2
    # is not a CIDR: the minimal cover is .1/32 and .2/32).
    assert result.l2 == ()
    assert {(str(e.prefix), e.table, e.kind, e.interface) for e in result.exports} == {
        ("10.42.0.1/32", 255, "local", "lo"), ("10.42.0.2/32", 255, "local", "lo")}


def test_bgp_accept_address_binds_each_vip_on_lo():
    peer = BgpPeerConfig(name="gw", my_asn=64512, peer_asn=64512, peer_address=ip("10.77.0.254"))
    cfg = config(l2_advertisements=(), bgp_peers=(peer,),
                 bgp_advertisements=(BgpAdvertisementConfig(name="b", accept="address"),))
    result = run("n1", [member("n1")], [alloc("a", "10.42.0.1"), alloc("b", "10.42.0.2")], cfg)
    assert {(str(i.vip), i.interface, i.mode) for i in result.l2} == {("10.42.0.1", "lo", "local"),
                                                                      ("10.42.0.2", "lo", "local")}
    assert result.exports == ()


def test_bgp_local_routes_grow_with_prefixes_not_vips():
    peer = BgpPeerConfig(name="gw", my_asn=64512, peer_asn=64512, peer_address=ip("10.77.0.254"))
    cfg = config(l2_advertisements=(), bgp_peers=(peer,),
                 bgp_advertisements=(BgpAdvertisementConfig(name="b"),))
    allocs = [alloc(f"s{i}", f"10.42.{i // 256}.{i % 256}") for i in range(2048)]
    allocs += [alloc("v6", "fd77::5"), alloc("odd", "10.43.0.3")]
    result = run("n1", [member("n1")], allocs, cfg)
    assert sum(1 for r in result.bgp if r.prefix.version == 4) == 2049 and result.l2 == ()
    assert sorted(str(e.prefix) for e in result.exports) == ["10.42.0.0/21", "10.43.0.3/32", "fd77::5/128"]
    assert {e.protocol for e in result.exports} == {252}
    decision = next(d for d in result.decisions if str(d.vip) == "10.42.3.7")
    assert decision.announced_here and decision.interface == "lo"


def test_local_route_prefixes_is_the_minimal_exact_cover():
    from lbd.planner import local_route_prefixes
    vips = [ip(f"10.88.0.{i}") for i in range(1, 255)]  # a pool range 10.88.0.1-10.88.0.254
    prefixes = local_route_prefixes(vips)
    assert sorted(str(p) for p in prefixes) == sorted([
        "10.88.0.1/32", "10.88.0.2/31", "10.88.0.4/30", "10.88.0.8/29", "10.88.0.16/28", "10.88.0.32/27",
        "10.88.0.64/26", "10.88.0.128/26", "10.88.0.192/27", "10.88.0.224/28", "10.88.0.240/29",
        "10.88.0.248/30", "10.88.0.252/31", "10.88.0.254/32"])
    covered = {a for p in prefixes for a in p}
    assert covered == set(vips)
    assert local_route_prefixes([]) == []


def test_bgp_withdrawn_on_failing_health_only_on_that_node():
    peer = BgpPeerConfig(name="gw", my_asn=64512, peer_asn=64512, peer_address=ip("10.77.0.254"))
    cfg = config(l2_advertisements=(), bgp_peers=(peer,), bgp_advertisements=(BgpAdvertisementConfig(name="b"),))
    members = [member("n1", failing=frozenset({"a"})), member("n2")]
    assert run("n1", members, [alloc("a", "10.42.0.1")], cfg).bgp == ()
    assert len(run("n2", members, [alloc("a", "10.42.0.1")], cfg).bgp) == 1


def test_route_export():
    cfg = config(l2_advertisements=(), route_exports=(RouteExportConfig(name="bird", table=100),))
    result = run("n1", [member("n1")], [alloc("a", "10.42.0.1")], cfg)
    (route,) = result.exports
    assert (str(route.prefix), route.table, route.protocol) == ("10.42.0.1/32", 100, 252)
    assert [i.mode for i in result.l2] == ["local"]


def test_no_advertisement_says_so():
    result = run("n1", [member("n1")], [alloc("a", "10.42.0.1")], config(l2_advertisements=()))
    assert result.l2 == () and "no l2_advertisement" in result.decisions[0].reason


def test_drained_node_hands_over_before_letting_go():
    vip = "10.77.0.100"
    cfg = config()
    # n_old holds the VIP and is drained; the other node is now the owner but does not hold it yet.
    members = [member("a", drained=True, holds=(vip,)), member("b")]
    assert run("a", members, [alloc("s", vip)], cfg).l2, "keep announcing until b holds it"
    assert run("b", members, [alloc("s", vip)], cfg).decisions[0].owner == "b"
    members = [member("a", drained=True, holds=(vip,)), member("b", holds=(vip,))]
    assert not run("a", members, [alloc("s", vip)], cfg).l2


@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True, min_size=2),
       st.data(), st.sampled_from([0.0, 30.0, None]), st.floats(min_value=0, max_value=100))
def test_after_a_heal_with_duplicate_holders_only_the_owner_keeps_the_vip(nodes, data, delay, waited):
    """A healed partition: several nodes hold the VIP. Every node elects the same owner, and
    once the owner holds it, it is the only one still announcing (the others let go)."""
    vip = "10.77.0.100"
    holders = data.draw(st.lists(st.sampled_from(nodes), unique=True, min_size=2, max_size=len(nodes)))
    members = [member(n, holds=(vip,) if n in holders else ()) for n in nodes]
    cfg = config(cluster=ClusterConfig(failback_delay=delay))
    since = {n: 1000.0 - waited for n in nodes}
    plans = {n: run(n, members, [alloc("s", vip)], cfg, now=1000.0, eligible_since=since) for n in nodes}
    owners = {p.decisions[0].owner for p in plans.values()}
    assert len(owners) == 1
    owner = owners.pop()
    ideal = rank(ip(vip), nodes)[0]
    best_holder = rank(ip(vip), holders)[0]
    if ideal in holders or (delay is not None and waited >= delay):
        assert owner == ideal
    else:
        assert owner == best_holder  # failback not due: the best-ranked holder keeps it
    announcing = {n for n, p in plans.items() if p.l2}
    if owner in holders:
        assert announcing == {owner}  # every other holder lets go
    else:
        assert announcing == set(holders) | {owner}  # make-before-break: holders wait for the owner


def test_after_a_heal_the_best_ranked_holder_wins_before_failback():
    vip = "10.77.0.100"
    order = rank(ip(vip), ["n1", "n2", "n3"])
    # The ideal node does not hold it; the two sides' holders are the 2nd and 3rd ranked.
    members = [member(order[0]), member(order[1], holds=(vip,)), member(order[2], holds=(vip,))]
    cfg = config(cluster=ClusterConfig(failback_delay=30))
    since = {order[0]: 995.0}
    owners = {run(n, members, [alloc("s", vip)], cfg, now=1000.0, eligible_since=since).decisions[0].owner
              for n in order}
    assert owners == {order[1]}
    assert not run(order[2], members, [alloc("s", vip)], cfg, now=1000.0, eligible_since=since).l2


def test_route_export_local_route_accepts_without_an_address():
    cfg = config(l2_advertisements=(), route_exports=(RouteExportConfig(name="frr", table=200, accept="local-route"),))
    result = run("n1", [member("n1")], [alloc("a", "10.42.0.1")], cfg)
    assert [(str(r.prefix), r.table, r.kind) for r in result.exports] == [("10.42.0.1/32", 200, "unicast"),
                                                                          ("10.42.0.1/32", 255, "local")]
    assert result.l2 == ()  # nothing bound: the local route delivers the traffic
