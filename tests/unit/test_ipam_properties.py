"""Hypothesis properties of the allocator: uniqueness, sharing, usability, stickiness, determinism.

The address space is kept tiny (a few hundred IPv4 addresses straddling
.255/.0 boundaries, a few dozen IPv6) so that exhaustion, sharing and
conflicts happen often.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from lbd import pools as poolmath
from lbd.ipam import AllocationResult, allocate, sharing_conflict
from lbd.config.schema import AddressRange, PoolConfig
from lbd.model import Allocation, Family, PortSpec, ServiceSpec

V4, V6 = Family.IPV4, Family.IPV6
V4_BASE = int(ipaddress.IPv4Address("10.77.0.250"))
V6_BASE = int(ipaddress.IPv6Address("fd77::"))
POOL_NAMES = ("p0", "p1", "p2")

v4_addr = st.integers(0, 40).map(lambda o: ipaddress.IPv4Address(V4_BASE + o))
v6_addr = st.integers(0, 30).map(lambda o: ipaddress.IPv6Address(V6_BASE + o))
any_addr = st.one_of(v4_addr, v6_addr)


@st.composite
def address_range(draw: st.DrawFn) -> AddressRange:
    v6 = draw(st.booleans())
    start = draw(st.integers(0, 36 if not v6 else 26))
    length = draw(st.integers(0, 6))
    base, cls = (V6_BASE, ipaddress.IPv6Address) if v6 else (V4_BASE, ipaddress.IPv4Address)
    first, last = cls(base + start), cls(base + start + length)
    return AddressRange(first, last, f"{first}-{last}")


@st.composite
def pool_list(draw: st.DrawFn) -> list[PoolConfig]:
    names = draw(st.lists(st.sampled_from(POOL_NAMES), unique=True, min_size=1, max_size=3))
    return [
        PoolConfig(
            name,
            tuple(draw(st.lists(address_range(), min_size=1, max_size=3))),
            auto_assign=draw(st.booleans()),
            avoid_buggy_ips=draw(st.booleans()),
        )
        for name in names
    ]


PORTS = (PortSpec("tcp", 80), PortSpec("tcp", 443), PortSpec("udp", 53), PortSpec("udp", 80))
FAMILIES = ((V4,), (V6,), (V4, V6), (V6, V4))


@st.composite
def service(draw: st.DrawFn, name: str) -> ServiceSpec:
    families = draw(st.sampled_from(FAMILIES))
    requested: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    if draw(st.integers(0, 4)) == 0:
        requested = tuple(draw(v4_addr if f is V4 else v6_addr) for f in families if draw(st.booleans()))
    return ServiceSpec(
        name=name,
        pool=draw(st.sampled_from((None, None, None, "p0", "p1", "p2", "missing"))),
        addresses=requested,
        ports=tuple(draw(st.lists(st.sampled_from(PORTS), unique=True, max_size=3))),
        share_key=draw(st.sampled_from((None, "", "k1", "k1", "k2"))),
        ip_families=families,
        backend_key=draw(st.sampled_from(("", "", "b"))),
    )


@st.composite
def service_list(draw: st.DrawFn, prefix: str = "s/", max_size: int = 14) -> list[ServiceSpec]:
    n = draw(st.integers(0, max_size))
    return [draw(service(f"{prefix}{i:02}")) for i in range(n)]


@st.composite
def previous_map(draw: st.DrawFn) -> dict[str, Allocation]:
    """Arbitrary (possibly stale, conflicting or nonsensical) previous allocations."""
    names = draw(st.lists(st.sampled_from([f"s/{i:02}" for i in range(16)] + ["gone/1"]), unique=True, max_size=8))
    return {
        n: Allocation(n, draw(st.sampled_from(POOL_NAMES)), tuple(draw(st.lists(any_addr, min_size=1, max_size=2))))
        for n in names
    }


def check_invariants(pools: list[PoolConfig], services: list[ServiceSpec], r: AllocationResult) -> None:
    by_name = {s.name: s for s in services}
    pool_by_name = {p.name: p for p in pools}
    assert set(r.allocations).isdisjoint(r.pending)
    assert set(r.allocations) | set(r.pending) == set(by_name)
    assert all(isinstance(reason, str) and reason for reason in r.pending.values())
    holders: dict[object, list[ServiceSpec]] = defaultdict(list)
    for name, alloc in r.allocations.items():
        spec = by_name[name]
        assert alloc.service == name
        # (d) every address is usable in the pool the allocation names
        pool = pool_by_name[alloc.pool]
        assert all(poolmath.usable(pool, a) for a in alloc.addresses)
        # one address per family, in the service's family order, from one pool
        assert tuple(Family.of(a) for a in alloc.addresses) == spec.ip_families
        if spec.pool:
            assert alloc.pool == spec.pool
        for a in spec.addresses:
            assert a in alloc.addresses
        for a in alloc.addresses:
            holders[a].append(spec)
    # (a) uniqueness and (c) sharing rules
    for address, specs in holders.items():
        for i, x in enumerate(specs):
            for y in specs[i + 1 :]:
                assert sharing_conflict(x, y) is None, (address, x, y)
                assert x.share_key and x.share_key == y.share_key and x.backend_key == y.backend_key
                assert not {(p.protocol, p.port) for p in x.ports} & {(p.protocol, p.port) for p in y.ports}


def addresses_of(r: AllocationResult) -> dict[str, tuple[object, ...]]:
    return {n: a.addresses for n, a in r.allocations.items()}


@settings(max_examples=150, deadline=None)
@given(pool_list(), service_list(), st.one_of(st.just({}), previous_map()), st.randoms(use_true_random=False))
def test_invariants_and_determinism(pools, services, previous, rnd) -> None:
    r = allocate(pools, services, previous)
    check_invariants(pools, services, r)
    # (e) deterministic, whatever the order of the services
    shuffled = list(services)
    rnd.shuffle(shuffled)
    again = allocate(pools, shuffled, dict(reversed(list(previous.items()))))
    assert again.allocations == r.allocations
    assert again.pending == r.pending
    assert again.changes == r.changes


@settings(max_examples=150, deadline=None)
@given(
    pool_list(),
    service_list(),
    st.one_of(st.just({}), previous_map()),
    service_list(prefix="new/", max_size=5),
    st.randoms(use_true_random=False),
)
def test_stickiness_under_rerun_permutation_and_additions(pools, services, previous, added, rnd) -> None:
    r1 = allocate(pools, services, previous)
    # (b) its own result as previous, shuffled, with new services: nothing existing moves
    more = list(services) + list(added)
    rnd.shuffle(more)
    r2 = allocate(pools, more, r1.allocations)
    check_invariants(pools, more, r2)
    for name, alloc in r1.allocations.items():
        assert r2.allocations[name].addresses == alloc.addresses
    assert r2.changes == []
    # a service left pending by r1 did not get an address that r1 handed out
    given_out = {a for alloc in r1.allocations.values() for a in alloc.addresses}
    for name in r1.pending:
        if name in r2.allocations:
            spec = next(s for s in services if s.name == name)
            for a in r2.allocations[name].addresses:
                assert a not in given_out or spec.share_key


@settings(max_examples=100, deadline=None)
@given(pool_list(), service_list(), st.data())
def test_removals_release_and_never_move_the_rest(pools, services, data) -> None:
    r1 = allocate(pools, services, {})
    kept = [s for s in services if data.draw(st.booleans())]
    r2 = allocate(pools, kept, r1.allocations)
    check_invariants(pools, kept, r2)
    kept_names = {s.name for s in kept}
    for name, alloc in r1.allocations.items():
        if name in kept_names:
            assert r2.allocations[name].addresses == alloc.addresses
    released = sorted(c.service for c in r2.changes)
    assert all(c.kind == "released" and c.reason == "the service was removed" for c in r2.changes)
    assert released == sorted(set(r1.allocations) - kept_names)


@settings(max_examples=100, deadline=None)
@given(pool_list(), service_list(), st.data())
def test_pool_edits_move_only_services_whose_address_left(pools, services, data) -> None:
    r1 = allocate(pools, services, {})
    # drop some ranges, flip flags
    edited = []
    for p in pools:
        ranges = tuple(r for r in p.addresses if data.draw(st.booleans()))
        edited.append(PoolConfig(p.name, ranges, p.auto_assign, data.draw(st.booleans())))
    r2 = allocate(edited, services, r1.allocations)
    check_invariants(edited, services, r2)
    edited_by_name = {p.name: p for p in edited}
    moved = {c.service for c in r2.changes}
    for name, alloc in r1.allocations.items():
        still_valid = all(poolmath.usable(edited_by_name[alloc.pool], a) for a in alloc.addresses)
        if still_valid:
            assert r2.allocations[name] == alloc
            assert name not in moved
        elif name not in moved:
            # with overlapping pools (a config error) the address may now be
            # usable in another pool: it stays, re-labelled, and is no move
            now = r2.allocations[name]
            assert now.addresses == alloc.addresses and now.pool != alloc.pool
    for change in r2.changes:
        assert change.kind in ("moved", "released") and change.reason
        if change.kind == "moved":
            assert r2.allocations[change.service].addresses == change.new
        else:
            assert change.service in r2.pending and change.new == ()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.one_of(pool_list().map(tuple), st.none(), st.integers()), max_size=1).map(
        lambda x: list(x[0]) if x and isinstance(x[0], tuple) else x
    ),
    st.lists(st.one_of(service("s/x"), st.builds(ServiceSpec, st.text(max_size=3)), st.none(), st.text()), max_size=6),
    st.dictionaries(
        st.one_of(st.text(max_size=4), st.integers()),
        st.one_of(
            st.builds(Allocation, st.text(max_size=3), st.text(max_size=3), st.lists(any_addr, max_size=3).map(tuple)),
            st.none(),
            st.text(max_size=3),
        ),
        max_size=5,
    ),
)
def test_never_raises(pools, services, previous) -> None:
    r = allocate(pools, services, previous)
    assert isinstance(r, AllocationResult)


def reference_allocate(pool: PoolConfig, services: list[ServiceSpec]) -> dict[str, object]:
    """A brute-force model for one single-family pool and no history: name order,
    requested address if usable and joinable, else the lowest address that is
    free or joinable."""
    holders: dict[object, list[ServiceSpec]] = defaultdict(list)
    out: dict[str, object] = {}
    candidates = list(poolmath.iter_usable(pool, V4))
    for spec in sorted(services, key=lambda s: s.name):

        def joinable(a: object) -> bool:
            return all(sharing_conflict(spec, other) is None for other in holders[a])

        if spec.addresses:
            a = spec.addresses[0]
            choice = a if poolmath.usable(pool, a) and joinable(a) else None
        else:
            choice = next((a for a in candidates if joinable(a)), None)
        if choice is not None:
            holders[choice].append(spec)
            out[spec.name] = choice
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(address_range().filter(lambda r: r.first.version == 4), min_size=1, max_size=2), st.booleans(), st.data())
def test_lowest_free_or_joinable_matches_a_brute_force_model(ranges, avoid, data) -> None:
    pool = PoolConfig("p0", tuple(ranges), avoid_buggy_ips=avoid)
    # requests mostly inside the pool, so that a request lands below addresses
    # that were handed out earlier
    requestable = st.one_of(st.sampled_from(list(poolmath.iter_usable(pool, V4)) or [None]), v4_addr)
    services = []
    for i in range(data.draw(st.integers(0, 20))):
        requested = data.draw(requestable) if data.draw(st.integers(0, 2)) == 0 else None
        services.append(
            ServiceSpec(
                name=f"s/{i:02}",
                addresses=(requested,) if requested is not None else (),
                ports=tuple(data.draw(st.lists(st.sampled_from(PORTS), unique=True, max_size=2))),
                share_key=data.draw(st.sampled_from((None, "k1", "k1", "k1", "k2"))),
                backend_key=data.draw(st.sampled_from(("", "", "", "b"))),
            )
        )
    r = allocate([pool], services, {})
    assert {n: a.addresses[0] for n, a in r.allocations.items()} == reference_allocate(pool, services)


@settings(max_examples=100, deadline=None)
@given(
    pool_list(),
    service_list(max_size=6),
    service_list(prefix="x/", max_size=6),  # older side: sorts after the younger by name
    service_list(prefix="m/", max_size=6),
)
def test_partition_merge_moves_only_the_younger_side(pools, base, side_a, side_b) -> None:
    """Two halves of a cluster allocate on their own from one table, then merge.

    With the older side (x) given precedence, nothing of the base or of side x
    moves, and a service of side m moves only if its address clashes with side x
    (name order alone would favour m).
    """
    r0 = allocate(pools, base, {})
    ra = allocate(pools, base + side_a, r0.allocations)
    rb = allocate(pools, base + side_b, r0.allocations)
    merged = {**rb.allocations, **ra.allocations}
    precedence = {s.name: 0 for s in side_a} | {s.name: 1 for s in side_b}
    everything = base + side_a + side_b
    r = allocate(pools, everything, merged, precedence=precedence)
    check_invariants(pools, everything, r)
    for name, alloc in ra.allocations.items():
        assert r.allocations[name].addresses == alloc.addresses
    a_held = {a for alloc in ra.allocations.values() for a in alloc.addresses}
    for change in r.changes:
        # only side m moves, and only where side x holds one of its addresses
        assert change.service.startswith("m/")
        assert any(a in a_held for a in change.old)
