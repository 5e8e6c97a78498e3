"""MetalLB selector parity: label selectors, pool pinning (service_allocation),
pool selectors and node selectors with matchExpressions.

Each behaviour test states what MetalLB would do (internal/allocator/allocator.go,
internal/config/config.go at 7938d3f) and checks lbd does the same.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import given, strategies as st

from lbd.config.read import Errors
from lbd.ipam import allocate, pool_refuses
from lbd.config.schema import (
    AddressRange,
    BgpAdvertisementConfig,
    BgpPeerConfig,
    Config,
    L2AdvertisementConfig,
    NodeConfig,
    PoolConfig,
    ServiceAllocationConfig,
)
from lbd.model import Allocation, Member, ServiceSpec
from lbd.planner import PlannerInput, plan
from lbd.selectors import LabelSelector, Requirement, matches, normalize, parse_selectors
from tests.unit.config_helpers import errors, ok

A = ipaddress.ip_address


def rng(text: str) -> AddressRange:
    net = ipaddress.ip_network(text)
    return AddressRange(net[0], net[-1], text)


def pool(name: str, cidr: str, *, auto: bool = True, labels: dict | None = None,
         sa: ServiceAllocationConfig | None = None) -> PoolConfig:
    return PoolConfig(name, (rng(cidr),), auto_assign=auto, labels=labels or {}, service_allocation=sa)


def svc(name: str, namespace: str | None = None, **kw: object) -> ServiceSpec:
    return ServiceSpec(name, namespace=namespace, **kw)  # type: ignore[arg-type]


def sel(**labels: str) -> LabelSelector:
    return LabelSelector(tuple(sorted(labels.items())))


def expr(key: str, op: str, *values: str) -> LabelSelector:
    return LabelSelector((), (Requirement(key, op, tuple(sorted(values))),))


def pool_of(result, name: str) -> str:
    return result.allocations[name].pool


# -- matching -----------------------------------------------------------------------------


def test_operators_follow_apimachinery() -> None:
    labels = {"zone": "a", "rack": "r1"}
    assert matches(expr("zone", "In", "a", "b"), labels)
    assert not matches(expr("zone", "In", "b"), labels)
    assert not matches(expr("missing", "In", "a"), labels)
    assert matches(expr("zone", "NotIn", "b"), labels)
    assert not matches(expr("zone", "NotIn", "a"), labels)
    assert matches(expr("missing", "NotIn", "a"), labels)  # absent label: NotIn holds
    assert matches(expr("rack", "Exists"), labels) and not matches(expr("x", "Exists"), labels)
    assert matches(expr("x", "DoesNotExist"), labels) and not matches(expr("rack", "DoesNotExist"), labels)


def test_a_list_is_any_of_and_empty_is_everything() -> None:
    labels = {"zone": "a"}
    assert matches((), labels) and matches({}, labels)
    assert matches((sel(zone="b"), sel(zone="a")), labels)
    assert not matches((sel(zone="b"), sel(zone="c")), labels)
    assert matches((LabelSelector(),), labels)  # an empty selector in a list matches everything
    both = LabelSelector((("zone", "a"),), (Requirement("rack", "Exists"),))
    assert not matches(both, labels)  # matchLabels AND matchExpressions
    assert matches(both, {"zone": "a", "rack": "r9"})
    assert matches({"zone": "a"}, labels) and not matches({"zone": "a", "rack": "r1"}, labels)


label_keys = st.sampled_from(["zone", "rack", "tier", "example.com/role"])
label_values = st.sampled_from(["a", "b", "c", ""])
label_sets = st.dictionaries(label_keys, label_values, max_size=4)
requirements = st.one_of(
    st.builds(lambda k, vs: Requirement(k, "In", tuple(sorted(set(vs)))), label_keys, st.lists(label_values, min_size=1, max_size=3)),
    st.builds(lambda k, vs: Requirement(k, "NotIn", tuple(sorted(set(vs)))), label_keys, st.lists(label_values, min_size=1, max_size=3)),
    st.builds(lambda k: Requirement(k, "Exists"), label_keys),
    st.builds(lambda k: Requirement(k, "DoesNotExist"), label_keys),
)
selectors = st.builds(lambda ml, rs: LabelSelector(tuple(sorted(ml.items())), tuple(rs)), label_sets,
                      st.lists(requirements, max_size=3))


@given(label_sets, label_sets)
def test_flat_table_is_match_labels(selector: dict, labels: dict) -> None:
    expected = all(labels.get(k) == v for k, v in selector.items())
    assert matches(selector, labels) == expected
    assert matches(normalize(selector), labels) == expected


@given(selectors, label_sets)
def test_requirement_and_its_negation(selector: LabelSelector, labels: dict) -> None:
    # In and NotIn with the same values, Exists and DoesNotExist: exactly one holds.
    for r in selector.match_expressions:
        opposite = {"In": "NotIn", "NotIn": "In", "Exists": "DoesNotExist", "DoesNotExist": "Exists"}[r.operator]
        assert r.matches(labels) != Requirement(r.key, opposite, r.values).matches(labels)
    assert selector.matches(labels) == all(
        [labels.get(k) == v for k, v in selector.match_labels] + [r.matches(labels) for r in selector.match_expressions])


@given(st.lists(selectors, max_size=4), label_sets)
def test_list_is_or_and_adding_labels_never_unmatches_match_labels(sels: list, labels: dict) -> None:
    assert matches(tuple(sels), labels) == (not sels or any(s.matches(labels) for s in sels))


@given(selectors, label_sets)
def test_toml_round_trip(selector: LabelSelector, labels: dict) -> None:
    """A selector written in MetalLB's form and read back matches the same labels."""
    table = {"matchLabels": dict(selector.match_labels),
             "matchExpressions": [{"key": r.key, "operator": r.operator, "values": list(r.values)}
                                  for r in dict.fromkeys(selector.match_expressions)]}
    errs = Errors("t")
    parsed = parse_selectors(errs, "node_selector", table)
    if errs.items:  # only label values the key syntax refuses ("" in matchLabels is fine)
        assert False, errs.items
    assert matches(parsed, labels) == selector.matches(labels)


@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.text(max_size=12), inner, max_size=3)),
                    max_leaves=12))
def test_parser_never_crashes(value: object) -> None:
    errs = Errors("t")
    out = parse_selectors(errs, "node_selector", value)
    assert isinstance(out, tuple)


# -- the config: forms and errors with key paths --------------------------------------------


def test_config_forms() -> None:
    cfg = ok("""
[[pool]]
name = "gold"
addresses = ["10.88.0.0/24"]
labels = { tier = "gold" }
service_allocation = { priority = 10, namespaces = ["prod"], namespace_selectors = [{ matchLabels = { team = "a" } }], service_selectors = [{ matchExpressions = [{ key = "app", operator = "In", values = ["web", "api"] }] }] }

[[namespace]]
name = "prod"
labels = { team = "a" }

[[l2_advertisement]]
name = "l2"
node_selector = [{ matchLabels = { zone = "a" } }, { matchExpressions = [{ key = "edge", operator = "Exists" }] }]
pool_selectors = [{ matchLabels = { tier = "gold" } }]

[[bgp_advertisement]]
name = "b"
node_selector = { rack = "r1" }
pool_selectors = { matchLabels = { tier = "gold" } }
""")
    gold = cfg.pool("gold")
    assert gold is not None and gold.labels == {"tier": "gold"}
    assert gold.service_allocation == ServiceAllocationConfig(
        priority=10, namespaces=("prod",), namespace_selectors=(sel(team="a"),),
        service_selectors=(expr("app", "In", "api", "web"),))
    assert cfg.namespaces == {"prod": {"team": "a"}}
    assert cfg.l2_advertisements[0].node_selector == (sel(zone="a"), expr("edge", "Exists"))
    assert cfg.l2_advertisements[0].pool_selectors == (sel(tier="gold"),)
    assert cfg.bgp_advertisements[0].node_selector == (sel(rack="r1"),)
    assert cfg.bgp_advertisements[0].pool_selectors == (sel(tier="gold"),)


def test_bad_selectors_are_reported_with_key_paths() -> None:
    found = errors("""
[[l2_advertisement]]
name = "l2"
node_selector = { matchExpressions = [{ key = "zone", operator = "in", values = ["a"] }, { key = "rack", operator = "Exists", values = ["x"] }, { key = "z", operator = "NotIn" }] }

[[bgp_peer]]
name = "gw"
my_asn = 64512
peer_asn = 64512
peer_address = "10.77.0.1"
node_selector = [{ matchLabels = { "bad key!" = "x" } }, 3]

[[pool]]
name = "p2"
addresses = ["10.88.1.0/24"]
service_allocation = { priority = -1, namespace_selectors = [{ matchLabel = { a = "b" } }], service_selectors = [{ matchLabels = { a = "b" } }, { matchLabels = { a = "b" } }] }
""")
    text = "\n".join(found)
    assert ('l2_advertisement "l2": node_selector: matchExpressions[0]: operator: "in" is not one of In, NotIn, '
            "Exists, DoesNotExist (did you mean 'In'?)") in text
    assert 'l2_advertisement "l2": node_selector: matchExpressions[1]: values: must be empty' in text
    assert 'l2_advertisement "l2": node_selector: matchExpressions[2]: operator NotIn needs a non-empty' in text
    assert 'bgp_peer "gw": node_selector[0]: matchLabels: bad key!: "bad key!" is not a valid label key' in text
    assert 'bgp_peer "gw": node_selector[1]: expected a selector table, got an integer' in text
    assert 'pool "p2": service_allocation: priority: -1 is out of range 0..2147483647' in text
    assert "pool \"p2\": service_allocation: namespace_selectors[0]: unknown key 'matchLabel' (did you mean 'matchLabels'?)" in text
    assert 'pool "p2": service_allocation: service_selectors[1]: repeats service_selectors[0]' in text


def test_check_refuses_a_static_service_naming_a_pool_that_excludes_it() -> None:
    found = errors("""
[[pool]]
name = "prod"
addresses = ["10.88.0.0/24"]
service_allocation = { namespaces = ["prod"] }

[[service]]
name = "web"
namespace = "dev"
pool = "prod"
""")
    assert any('service "web": pool: pool "prod" serves only some namespaces' in e for e in found), found


# -- allocation: a Service in namespace A gets the pool MetalLB would give it ------------------


def test_namespace_pinned_pool_wins_over_unpinned_and_serves_only_its_namespace() -> None:
    pools = [pool("general", "10.88.0.0/24"),
             pool("team-a", "10.88.1.0/24", sa=ServiceAllocationConfig(namespaces=("a",)))]
    r = allocate(pools, [svc("k8s/a/web", "a"), svc("k8s/b/web", "b"), svc("static/x")], {})
    assert pool_of(r, "k8s/a/web") == "team-a"  # pinned pools come before the rest
    assert pool_of(r, "k8s/b/web") == "general"  # a pinned pool never serves others
    assert pool_of(r, "static/x") == "general"


def test_priority_lower_number_first_and_zero_last() -> None:
    everyone = ("a",)
    pools = [pool("p0", "10.88.0.0/24", sa=ServiceAllocationConfig(namespaces=everyone)),
             pool("p20", "10.88.1.0/24", sa=ServiceAllocationConfig(priority=20, namespaces=everyone)),
             pool("p10", "10.88.2.0/24", sa=ServiceAllocationConfig(priority=10, namespaces=everyone))]
    r = allocate(pools, [svc("s", "a")], {})
    assert pool_of(r, "s") == "p10"
    # p10 full: next by priority, then the unset one
    pools[2] = pool("p10", "10.88.2.0/32", sa=ServiceAllocationConfig(priority=10, namespaces=everyone))
    r = allocate(pools, [svc("s1", "a"), svc("s2", "a"), svc("s3", "a")], {})
    assert [pool_of(r, n) for n in ("s1", "s2", "s3")] == ["p10", "p20", "p20"]


def test_exhausted_pinned_pools_fall_back_to_unpinned_pools() -> None:
    pools = [pool("pinned", "10.88.1.0/32", sa=ServiceAllocationConfig(namespaces=("a",))),
             pool("general", "10.88.0.0/24")]
    r = allocate(pools, [svc("s1", "a"), svc("s2", "a")], {})
    assert (pool_of(r, "s1"), pool_of(r, "s2")) == ("pinned", "general")


def test_namespace_selectors_use_namespace_labels() -> None:
    pools = [pool("general", "10.88.0.0/24"),
             pool("prod", "10.88.1.0/24", sa=ServiceAllocationConfig(
                 namespace_selectors=(expr("env", "In", "prod"),)))]
    namespaces = {"shop": {"env": "prod"}, "lab": {"env": "dev"}}
    r = allocate(pools, [svc("shop", "shop"), svc("lab", "lab"),
                         svc("own", "lab", namespace_labels={"env": "prod"})], {}, namespaces=namespaces)
    assert pool_of(r, "shop") == "prod"
    assert pool_of(r, "lab") == "general"
    assert pool_of(r, "own") == "prod"  # labels the source supplies win over [[namespace]]


def test_service_selectors_and_namespaces_must_both_match() -> None:
    sa = ServiceAllocationConfig(namespaces=("a",), service_selectors=(sel(tier="gold"),))
    pools = [pool("general", "10.88.0.0/24"), pool("gold", "10.88.1.0/24", sa=sa)]
    r = allocate(pools, [svc("a-gold", "a", labels={"tier": "gold"}), svc("a-plain", "a"),
                         svc("b-gold", "b", labels={"tier": "gold"})], {})
    assert pool_of(r, "a-gold") == "gold"
    assert pool_of(r, "a-plain") == "general"
    assert pool_of(r, "b-gold") == "general"


def test_empty_service_allocation_pins_to_everyone_by_priority() -> None:
    """MetalLB: serviceAllocation without namespaces or selectors matches every service."""
    pools = [pool("general", "10.88.0.0/24"), pool("first", "10.88.1.0/24", sa=ServiceAllocationConfig(priority=1))]
    r = allocate(pools, [svc("s", "x"), svc("t")], {})
    assert (pool_of(r, "s"), pool_of(r, "t")) == ("first", "first")


def test_pinned_pool_without_auto_assign_is_only_used_on_request() -> None:
    sa = ServiceAllocationConfig(namespaces=("a",))
    pools = [pool("general", "10.88.0.0/24"), pool("manual", "10.88.1.0/24", auto=False, sa=sa)]
    r = allocate(pools, [svc("auto", "a"), svc("named", "a", pool="manual")], {})
    assert (pool_of(r, "auto"), pool_of(r, "named")) == ("general", "manual")


def test_named_or_requested_pool_that_excludes_the_service_leaves_it_pending() -> None:
    pools = [pool("general", "10.88.0.0/24"), pool("a-only", "10.88.1.0/24", sa=ServiceAllocationConfig(namespaces=("a",)))]
    r = allocate(pools, [svc("named", "b", pool="a-only"), svc("asked", "b", addresses=(A("10.88.1.7"),))], {})
    assert "serves only some namespaces" in r.pending["named"]
    assert "serves only some namespaces" in r.pending["asked"]


def test_previous_allocation_in_a_pool_that_now_excludes_the_service_moves() -> None:
    pools = [pool("general", "10.88.0.0/24"), pool("a-only", "10.88.1.0/24", sa=ServiceAllocationConfig(namespaces=("a",)))]
    previous = {"s": Allocation("s", "a-only", (A("10.88.1.0"),))}
    r = allocate(pools, [svc("s", "b")], previous)
    assert pool_of(r, "s") == "general"
    assert r.changes and "serves only some namespaces" in r.changes[0].reason
    # a restored placeholder (namespace unknown until its source speaks) keeps its address
    ghost = ServiceSpec("s", pool="a-only", addresses=(A("10.88.1.0"),), placeholder=True, share_key="lbd-restored:x")
    r = allocate(pools, [ghost], previous)
    assert pool_of(r, "s") == "a-only" and not r.changes


def test_pool_refuses_explains() -> None:
    p = pool("p", "10.88.0.0/24", sa=ServiceAllocationConfig(namespaces=("a",)))
    assert pool_refuses(p, svc("s", "a")) is None
    assert pool_refuses(p, svc("s")) == 'pool "p" serves only some namespaces (service_allocation) and the service has no namespace'


# -- planning: pool selectors and matchExpressions node selectors ---------------------------


LAN = {"eth0": (ipaddress.ip_interface("10.88.0.11/16"),)}


def _plan(cfg: Config, labels: dict, pool_name: str, vip: str = "10.88.0.5"):
    me = Member(name="n1", labels=labels, interfaces=LAN)
    alloc = {"s": Allocation("s", pool_name, (A(vip),))}
    return plan(PlannerInput(config=cfg, node="n1", allocations=alloc, services={"s": ServiceSpec("s")}, members=[me]))


def test_l2_pool_selectors_and_expressions() -> None:
    gold = pool("gold", "10.88.0.0/24", labels={"tier": "gold"})
    plain = pool("plain", "10.88.1.0/24")
    ad = L2AdvertisementConfig(name="l2", pool_selectors=(sel(tier="gold"),),
                               node_selector=(expr("zone", "In", "a", "b"), sel(edge="yes")))
    cfg = Config(path=Path("/dev/null"), node=NodeConfig(name="n1"), pools=(gold, plain), l2_advertisements=(ad,))
    assert [i.interface for i in _plan(cfg, {"zone": "b"}, "gold").l2] == ["eth0"]
    assert [i.interface for i in _plan(cfg, {"edge": "yes"}, "gold").l2] == ["eth0"]  # second selector
    assert _plan(cfg, {"zone": "c"}, "gold").l2 == ()  # no selector matches the node
    assert _plan(cfg, {"zone": "a"}, "plain", "10.88.1.5").l2 == ()  # pool not selected


def test_bgp_pool_selectors_and_peer_not_in_expressions() -> None:
    gold = pool("gold", "10.88.0.0/24", labels={"tier": "gold"})
    peer = BgpPeerConfig(name="gw", my_asn=64512, peer_asn=64512, peer_address=A("10.88.0.1"),
                         node_selector=(expr("role", "NotIn", "storage"),))
    ad = BgpAdvertisementConfig(name="b", pool_selectors=(expr("tier", "Exists"),))
    cfg = Config(path=Path("/dev/null"), node=NodeConfig(name="n1"), pools=(gold,), bgp_peers=(peer,),
                 bgp_advertisements=(ad,))
    assert [r.peers for r in _plan(cfg, {"role": "web"}, "gold").bgp] == [("gw",)]
    assert _plan(cfg, {"role": "storage"}, "gold").bgp == ()


def test_route_export_node_selector_with_expressions() -> None:
    from lbd.config.schema import RouteExportConfig

    routed = pool("routed", "10.88.0.0/24")
    ex = RouteExportConfig(name="bird", table=100, node_selector=(expr("bird", "Exists"),))
    cfg = Config(path=Path("/dev/null"), node=NodeConfig(name="n1"), pools=(routed,), route_exports=(ex,))
    assert [e.table for e in _plan(cfg, {"bird": ""}, "routed").exports] == [100]
    assert _plan(cfg, {}, "routed").exports == ()


def test_kubernetes_services_carry_their_namespace_and_labels() -> None:
    from lbd.sources.kube_translate import service_to_spec

    svc_obj = {"metadata": {"namespace": "shop", "name": "web", "labels": {"app": "web", "tier": "gold"}},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}
    spec = service_to_spec(svc_obj, ready_nodes=frozenset(), all_nodes=frozenset(), excluded=frozenset())
    assert (spec.namespace, dict(spec.labels)) == ("shop", {"app": "web", "tier": "gold"})
    gold = pool("gold", "10.88.1.0/24", sa=ServiceAllocationConfig(namespaces=("shop",),
                                                                  service_selectors=(sel(tier="gold"),)))
    r = allocate([pool("general", "10.88.0.0/24"), gold], [spec], {})
    assert r.allocations[spec.name].pool == "gold"
