"""The incremental path (issue 9) equals a from-scratch computation after every event.

Random sequences of events (services added, changed and removed, health flips, members
joining, dying, draining, their held VIPs, config edits, the clock) drive
``IncrementalPlanner``; after each step its plan (decisions, layer-2, BGP and export
intents) must equal ``plan`` of the same inputs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings, strategies as st

from lbd.hooks import Observation, observe, transitions
from lbd.ipam import allocate
from lbd.model import Allocation, Family, Member, MemberState, Plan, PortSpec, ServiceSpec
from lbd.config.schema import AddressRange, BgpAdvertisementConfig, BgpPeerConfig, ClusterConfig, Config, L2AdvertisementConfig, NodeConfig, PoolConfig, RouteExportConfig
from lbd.planner import PlannerInput, held_vips, plan
from lbd.planner.export import LocalRouteCover, local_accept_routes
from lbd.planner.incremental import IncrementalPlanner, _scope as config_scope
from lbd.selectors import LabelSelector

ip = ipaddress.ip_address
LAN = {"eth0": (ipaddress.ip_interface("10.77.0.11/24"), ipaddress.ip_interface("fd77::11/64"))}
NODES = ("n1", "n2", "n3", "n4")
SERVICES = tuple(f"s{i}" for i in range(8))


def rng(first: str, last: str) -> AddressRange:
    return AddressRange(ip(first), ip(last), f"{first}-{last}")


def pools(variant: int) -> tuple[PoolConfig, ...]:
    l2_last = "10.77.0.107" if variant % 2 == 0 else "10.77.0.103"  # an edit shrinks the pool
    return (
        PoolConfig("l2", (rng("10.77.0.100", l2_last), rng("fd77::100", "fd77::107"))),
        PoolConfig("bgp", (rng("10.88.0.0", "10.88.0.7"), rng("fd77:1::", "fd77:1::7")), labels={"kind": "bgp"}),
        PoolConfig("exp", (rng("10.88.1.0", "10.88.1.7"),)),
        PoolConfig("both", (rng("10.77.0.200", "10.77.0.203"),), labels={"kind": "bgp"}),
    )


def config(variant: int) -> Config:
    """A few configs to move between: every planner input the config holds varies."""
    rack_a = (LabelSelector(match_labels=(("rack", "a"),)),)
    return Config(
        path=Path("/dev/null"),
        node=NodeConfig(name="n1"),
        cluster=ClusterConfig(failback_delay=(30.0, None, 0.0, 5.0)[variant % 4]),
        pools=pools(variant),
        l2_advertisements=(L2AdvertisementConfig(
            name="l2", pools=("l2", "both"), mode=("bind", "responder")[variant % 2],
            node_selector=rack_a if variant == 3 else ()),),
        bgp_peers=(BgpPeerConfig(name="r1", my_asn=64512, peer_address=ip("10.77.0.1")),
                   BgpPeerConfig(name="r2", my_asn=64512, peer_address=ip("10.77.0.2"),
                                 node_selector=rack_a if variant != 2 else ())),
        bgp_advertisements=(BgpAdvertisementConfig(
            name="b", pool_selectors=(LabelSelector(match_labels=(("kind", "bgp"),)),),
            aggregation_length=(32, 30, 32, 29)[variant % 4], aggregation_length_v6=(128, 126)[variant % 2],
            communities=("64512:1",) if variant == 1 else (), peers=("r1",) if variant == 3 else (),
            accept=("local-route", "local-route", "address", "local-route")[variant % 4]),),
        route_exports=(RouteExportConfig(name="e", table=100, pools=("exp",),
                                         accept=("address", "local-route")[variant % 2]),),
    )


services_st = st.tuples(
    st.just("svc"), st.sampled_from(SERVICES), st.sampled_from([None, "l2", "bgp", "exp", "both"]),
    st.sampled_from([None, "k"]), st.sampled_from([80, 443]), st.booleans(),
    st.sampled_from([None, frozenset({"n1"}), frozenset({"n2", "n3"})]))
events = st.one_of(
    services_st,
    st.tuples(st.just("rm"), st.sampled_from(SERVICES)),
    st.tuples(st.just("fail"), st.sampled_from(NODES), st.sampled_from(SERVICES)),
    st.tuples(st.just("member"), st.sampled_from(NODES),
              st.sampled_from(["join", "die", "suspect", "drain", "undrain", "leave", "relabel", "no-interfaces"])),
    st.tuples(st.just("holds"), st.sampled_from(NODES), st.lists(st.integers(0, 40), max_size=6)),
    st.tuples(st.just("self-holds")),
    st.tuples(st.just("config"), st.integers(0, 3)),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 1.0, 10.0, 40.0])),
    st.tuples(st.just("since"), st.sampled_from(NODES), st.sampled_from([0.0, 20.0, 100.0])),
)


class World:
    """The inputs as the daemon holds them between passes."""

    def __init__(self) -> None:
        self.variant = 0
        self.specs: dict[str, ServiceSpec] = {}
        self.allocations: dict[str, Allocation] = {}
        self.members: dict[str, Member] = {"n1": Member(name="n1", interfaces=LAN, labels={"rack": "a"})}
        self.now = 100.0
        self.since: dict[str, float] = {}
        self.last_l2: tuple[Any, ...] = ()

    def apply(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "svc":
            _, name, pool, share, port, dual, eligible = event
            families = (Family.IPV4, Family.IPV6) if dual and pool in ("l2", "bgp") else (Family.IPV4,)
            self.specs[name] = ServiceSpec(name=name, pool=pool, share_key=share, ports=(PortSpec("tcp", port),),
                                           ip_families=families, eligible_nodes=eligible)
        elif kind == "rm":
            self.specs.pop(event[1], None)
        elif kind == "fail":
            _, node, service = event
            if node in self.members:
                m = self.members[node]
                self.members[node] = replace(m, failing=m.failing ^ {service})
        elif kind == "member":
            self._member(event[1], event[2])
        elif kind == "holds":
            _, node, picks = event
            vips = sorted({str(a) for alloc in self.allocations.values() for a in alloc.addresses})
            if node in self.members and vips:
                self.members[node] = replace(self.members[node],
                                             holds=tuple(sorted({vips[i % len(vips)] for i in picks})))
        elif kind == "self-holds":
            self.members["n1"] = replace(self.members["n1"], holds=held_vips(self.last_l2))
        elif kind == "config":
            self.variant = event[1]
        elif kind == "tick":
            self.now += event[1]
        elif kind == "since":
            self.since[event[1]] = self.now - event[2]

    def _member(self, node: str, action: str) -> None:
        m = self.members.get(node)
        if action == "join":
            self.members[node] = Member(name=node, interfaces=LAN, labels={"rack": "a" if node < "n3" else "b"})
        elif m is None:
            return
        elif action == "leave" and node != "n1":
            del self.members[node]
        elif action in ("die", "suspect"):
            self.members[node] = replace(m, state=MemberState.DEAD if action == "die" else MemberState.SUSPECT)
        elif action in ("drain", "undrain"):
            self.members[node] = replace(m, drained=action == "drain")
        elif action == "relabel":
            self.members[node] = replace(m, labels={"rack": "b" if m.labels.get("rack") == "a" else "a"})
        elif action == "no-interfaces":
            self.members[node] = replace(m, interfaces={} if m.interfaces else LAN)

    def inputs(self) -> PlannerInput:
        cfg = config(self.variant)
        result = allocate(cfg.pools, list(self.specs.values()), self.allocations)
        self.allocations = result.allocations
        return PlannerInput(config=cfg, node="n1", allocations=self.allocations, services=dict(self.specs),
                            members=list(self.members.values()), now=self.now, eligible_since=dict(self.since))


def as_maps(observation: Observation) -> Observation:
    """The same observation with its per-VIP maps built: ``transitions`` compares whole maps."""
    return Observation(vips_here=dict(observation.vips_here), owners=dict(observation.owners),
                       vip_services=dict(observation.vip_services), bgp=observation.bgp, members=observation.members)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=40))
@example([("member", "n3", "join"), *(("svc", f"s{i}", "l2", None, 80, True, None) for i in range(1, 8)),
          ("member", "n2", "die"), ("member", "n2", "join"), ("member", "n3", "leave")])  # takeovers, twice
@example([("member", "n3", "join"), *(("since", n, 100.0) for n in ("n1", "n2", "n3")),
          *(("svc", f"s{i}", "l2", None, 80, True, None) for i in range(1, 8)), ("tick", 0.0),
          ("holds", "n3", list(range(12))),  # failback due: n3 hands most of them over
          ("member", "n3", "die")])  # a holder that is not the owner in the last plan dies
def test_incremental_plan_equals_plan_after_every_event(sequence):
    """...and the hooks' events, found from the changed decisions only, equal the events of
    the whole observations."""
    world = World()
    planner = IncrementalPlanner()
    seen = None
    start = [("svc", "s0", "l2", None, 80, False, None), ("member", "n2", "join")]
    for event in [*start, *sequence]:
        world.apply(event)
        inp = world.inputs()
        expected = plan(inp)
        check_takeovers(planner, inp, expected)
        got = planner.plan(inp)
        assert got.decisions == expected.decisions, event
        assert got.l2 == expected.l2, event
        assert got.bgp == expected.bgp, event
        assert got.exports == expected.exports, event
        world.last_l2 = got.l2
        now = observe(got.decisions, [], inp.members)
        if seen is not None:
            assert transitions(seen, now) == transitions(as_maps(seen), as_maps(now)), event
        seen = now


def check_takeovers(planner: IncrementalPlanner, inp: PlannerInput, expected: Plan) -> None:
    """``takeovers`` gives exactly the layer-2 intents the full plan gives for the VIPs whose
    owner (in the last plan) is no longer alive, their services unchanged."""
    takeovers = planner.takeovers(inp)
    assert set(takeovers) <= set(expected.l2)
    if not planner._members or config_scope(inp) != planner._scope:
        assert takeovers == []
        return
    alive = {m.name for m in inp.members if m.state == MemberState.ALIVE}
    before = planner.plan_so_far()
    # Members alive in the last plan's view and no longer: the VIPs they owned then, and the
    # VIPs they hold (in that view or now: after a flap the last plan may name another owner).
    lost = {name for name, m in planner._members.items()
            if m.state == MemberState.ALIVE and name not in alive and name != "n1"}
    held = {ip(text) for m in [*planner._members.values(), *inp.members] if m.name in lost for text in m.holds}
    stable = {a for name, alloc in inp.allocations.items()
              if planner._allocations.get(name) == alloc and planner._services.get(name) == inp.services.get(name)
              for a in alloc.addresses}
    unstable = {a for name, alloc in planner._allocations.items() for a in alloc.addresses} - stable
    unstable |= {a for alloc in inp.allocations.values() for a in alloc.addresses} - stable
    want = {i for i in expected.l2 if i.mode.announced and i.vip not in unstable
            and any(d.vip == i.vip and (d.owner in lost or d.vip in held) for d in before.decisions)}
    assert set(takeovers) == want


def test_takeovers_are_the_dead_members_vips_that_fall_here_decided_alone():
    """Three nodes, many layer-2 VIPs; one dies: ``takeovers`` decides only its VIPs and gives
    this node's share of them, the same intents the full re-decision gives."""
    world = World()
    planner = IncrementalPlanner()
    world.apply(("member", "n2", "join"))
    world.apply(("member", "n3", "join"))
    for name in SERVICES:
        world.apply(("svc", name, "l2", None, 80, True, None))
    first = planner.plan(world.inputs())
    assert planner.takeovers(world.inputs()) == []  # nothing died
    owned_by_n2 = {d.vip for d in first.decisions if d.owner == "n2"}
    assert owned_by_n2
    world.apply(("member", "n2", "die"))
    inp = world.inputs()
    takeovers = planner.takeovers(inp)
    assert planner.plan_so_far() is first  # read-only
    full = planner.plan(inp)
    here = {i.vip for i in full.l2 if i.mode.announced}
    assert {i.vip for i in takeovers} == owned_by_n2 & here
    assert set(takeovers) <= set(full.l2)
    assert planner.takeovers(inp) == []  # planned: nothing left to take over


def test_takeovers_follow_the_holds_when_the_last_plan_is_stale():
    """After a flap or a stalled loop the gossip is ahead of the last plan: VIPs the last plan
    gave a live member were taken by the member that then died. ``takeovers`` decides the VIPs
    the dead member holds too, and gives this node's share, as the full plan does."""
    world = World()
    planner = IncrementalPlanner()
    world.apply(("config", 1))  # failback disabled: the current holder keeps a VIP
    world.apply(("member", "n2", "join"))
    world.apply(("member", "n3", "join"))
    for name in SERVICES:
        world.apply(("svc", name, "l2", None, 80, True, None))
    world.inputs()  # allocate
    world.apply(("holds", "n2", list(range(64))))  # n2 holds every VIP: it owns them all
    first = planner.plan(world.inputs())
    assert {d.owner for d in first.decisions} == {"n2"}
    # Gossip, no pass in between: n2 hands everything to n3, then n3 dies.
    world.members["n3"] = replace(world.members["n3"], holds=world.members["n2"].holds)
    world.members["n2"] = replace(world.members["n2"], holds=())
    world.apply(("member", "n3", "die"))
    inp = world.inputs()
    takeovers = planner.takeovers(inp)
    full = planner.plan(inp)
    here = {i for i in full.l2 if i.mode.announced}
    assert here  # n1 ranks first for some of them: they would have waited for the full plan
    assert set(takeovers) == here


def test_an_unrelated_change_redecides_only_its_vips():
    world = World()
    planner = IncrementalPlanner()
    for i, name in enumerate(SERVICES):
        world.apply(("svc", name, ("l2", "bgp", "exp")[i % 3], None, 80, False, None))
    planner.plan(world.inputs())
    assert planner.full
    world.apply(("rm", "s4"))
    removed = world.allocations["s4"].addresses
    planner.plan(world.inputs())
    assert not planner.full and planner.changed == frozenset(removed)
    world.apply(("fail", "n1", "s1"))
    planner.plan(world.inputs())
    assert planner.changed == frozenset(world.allocations["s1"].addresses)
    world.apply(("member", "n2", "join"))  # every layer-2 decision lists the candidates
    planner.plan(world.inputs())
    l2 = {a for name in world.allocations for a in world.allocations[name].addresses
          if world.allocations[name].pool == "l2"}
    assert not planner.full and planner.changed == frozenset(l2)
    world.apply(("member", "n1", "drain"))  # this node itself: BGP and export too
    planner.plan(world.inputs())
    assert planner.full


def test_a_failback_window_is_redecided_as_the_clock_moves():
    """A VIP kept by a holder other than the first-ranked node: its reason counts down."""
    world = World()
    planner = IncrementalPlanner()
    world.apply(("config", 3))  # failback after 5 s
    world.apply(("member", "n2", "join"))
    world.apply(("svc", "s0", "l2", None, 80, False, None))
    inp = world.inputs()
    vip = str(inp.allocations["s0"].addresses[0])
    ideal = plan(inp).decisions[0].owner
    other = "n2" if ideal == "n1" else "n1"
    world.members[other] = replace(world.members[other], holds=(vip,))
    world.apply(("since", ideal, 0.0))  # eligible from now on
    planner.plan(world.inputs())
    for tick in (0.0, 1.0, 2.0, 10.0):
        world.apply(("tick", tick))
        inp = world.inputs()
        assert planner.plan(inp) == plan(inp)
    assert planner.plan(inp).decisions[0].owner == ideal  # failed back after 13 s


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1023), st.integers(0, 300), st.booleans()), max_size=25))
def test_local_route_cover_equals_the_minimal_cover(ops):
    """Whole blocks of 256 filled and emptied, across block boundaries, in both families."""
    cover = LocalRouteCover()
    present: set[Any] = set()
    for add, start, length, v6 in ops:
        base = int(ip("fd77::")) if v6 else int(ip("10.88.0.0"))
        vips = {ipaddress.ip_address(base + i) for i in range(start, min(start + length, 1024))}
        for vip in vips:
            (cover.add if add else cover.discard)(vip)
        present = present | vips if add else present - vips
        assert cover.routes() == local_accept_routes(present)


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=40), st.lists(st.sampled_from(["s0", "s1", "s2", "x"]), max_size=3))
def test_incremental_plan_with_a_hint_equals_plan(sequence, extra):
    """The daemon's hint (the services whose allocation or spec changed, from its sources'
    deltas and the allocator; a superset is allowed) gives the same plan as comparing."""
    world = World()
    planner = IncrementalPlanner()
    last = None
    start = [("svc", "s0", "l2", None, 80, False, None), ("member", "n2", "join")]
    for event in [*start, *sequence]:
        world.apply(event)
        inp = world.inputs()
        hint = None
        if last is not None:
            hint = {n for n in last.allocations.keys() | inp.allocations.keys()
                    if last.allocations.get(n) != inp.allocations.get(n)}
            hint |= {n for n in last.services.keys() | inp.services.keys() if last.services.get(n) != inp.services.get(n)}
            hint |= set(extra)
        got = planner.plan(inp, hint=hint)
        expected = plan(inp)
        assert got.decisions == expected.decisions, event
        assert (got.l2, got.bgp, got.exports) == (expected.l2, expected.bgp, expected.exports), event
        # A hinted plan updates the planner's own mappings in place, for the hinted names
        # alone (no copies of 100,000 entries): they must still equal the inputs, and be its own.
        assert planner._allocations == dict(inp.allocations) and planner._services == dict(inp.services), event
        assert planner._allocations is not inp.allocations and planner._services is not inp.services
        world.last_l2 = got.l2
        last = inp
