"""``IncrementalAllocator`` equals ``allocate`` after every event (issue 9).

Random sequences of services added, changed and removed (sharing, requested addresses,
dual-stack, pools that run out) and pool edits drive the incremental allocator; after each
step its result (allocations, pending reasons, changes) must equal ``allocate`` of the same
inputs with the previous result as ``previous``, as the daemon calls it.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings, strategies as st

from lbd.ipam import IncrementalAllocator, allocate, changed_keys, pool_usage
from lbd.model import Family, PortSpec, ServiceSpec
from lbd.config.schema import AddressRange, PoolConfig

ip = ipaddress.ip_address
NAMES = tuple(f"s{i}" for i in range(10))


def rng(first: str, last: str) -> AddressRange:
    return AddressRange(ip(first), ip(last), f"{first}-{last}")


def pools(variant: int) -> tuple[PoolConfig, ...]:
    """Small pools, so that they run out, and an edit that shrinks one."""
    return (
        PoolConfig("a", (rng("10.88.0.0", "10.88.0.3" if variant == 0 else "10.88.0.1"), rng("fd77::", "fd77::3"))),
        PoolConfig("b", (rng("10.88.1.0", "10.88.1.2"),), auto_assign=variant != 2),
    )


specs = st.builds(
    lambda name, pool, share, port, dual, request: ServiceSpec(
        name=name, pool=pool, share_key=share, ports=(PortSpec("tcp", port),),
        ip_families=(Family.IPV4, Family.IPV6) if dual else (Family.IPV4,),
        addresses=(ip(request),) if request else ()),
    st.sampled_from(NAMES), st.sampled_from([None, "a", "b"]), st.sampled_from([None, "k", "j"]),
    st.sampled_from([80, 443]), st.booleans(), st.sampled_from([None, "10.88.0.1", "10.88.1.1"]))
events = st.one_of(
    st.tuples(st.just("set"), specs),
    st.tuples(st.just("rm"), st.sampled_from(NAMES)),
    st.tuples(st.just("pools"), st.integers(0, 2)),
)


def replay(sequence):
    """Each event with the pool variant and the services after it."""
    services: dict[str, ServiceSpec] = {}
    variant = 0
    for event in sequence:
        if event[0] == "set":
            services[event[1].name] = event[1]
        elif event[0] == "rm":
            services.pop(event[1], None)
        else:
            variant = event[1]
        yield event, variant, services


@settings(max_examples=400, deadline=None)
@given(st.lists(events, max_size=30), st.sampled_from(["list", "by name", "by name, hinted"]))
def test_incremental_allocation_equals_allocate_after_every_event(sequence, given_as):
    allocator = IncrementalAllocator()
    previous: dict = {}
    for event, variant, services in replay(sequence):
        expected = allocate(pools(variant), list(services.values()), previous)
        before = dict(previous)
        # The daemon hands its services over by name (a new dict each pass) with the names its
        # sources changed; others as a list.
        given_services = dict(services) if given_as != "list" else list(services.values())
        hint = {event[1].name if event[0] == "set" else event[1]} if given_as.endswith("hinted") and (
            event[0] != "pools") else None
        got = allocator.allocate(pools(variant), given_services, previous, changed=hint)
        if allocator.touched is not None:  # every service whose allocation changed is named
            assert {n for n in before.keys() | got.allocations.keys()
                    if before.get(n) != got.allocations.get(n)} <= allocator.touched
        assert got.allocations == expected.allocations, event
        if allocator.full:  # a full round's result is in name order; an increment's new ones come last
            assert list(got.allocations) == list(expected.allocations)
        # A result is never changed afterwards: the next call's is a new mapping (or the same
        # one, unchanged, when nothing changed).
        assert previous == before
        assert got.pending == expected.pending, event
        assert got.changes == expected.changes, event
        previous = got.allocations


def test_unchanged_allocations_are_kept_without_a_full_round():
    allocator = IncrementalAllocator()
    services = [ServiceSpec(name=f"s{i}", pool="a") for i in range(3)]
    first = allocator.allocate(pools(0), services, {})
    assert allocator.full
    second = allocator.allocate(pools(0), services[1:] + [ServiceSpec(name="s9", pool="a")], first.allocations)
    assert not allocator.full
    assert second.allocations["s1"] is first.allocations["s1"]
    assert second.allocations["s9"].addresses == first.allocations["s0"].addresses  # the freed one, lowest
    allocator.allocate(pools(1), services, second.allocations)  # a pool edit: the full round
    assert allocator.full


def test_a_shared_address_takes_the_port_its_leaver_freed():
    """s1 (443) leaves the address it shared with s0 (80), which s2 (443) could not join:
    s3 on 443 joins it now, as allocate says (the group's search starts over)."""
    def spec(name: str, port: int) -> ServiceSpec:
        return ServiceSpec(name=name, pool="a", share_key="k", ports=(PortSpec("tcp", port),))

    s0, s1, s2, s3 = spec("s0", 80), spec("s1", 443), spec("s2", 443), spec("s3", 443)
    allocator = IncrementalAllocator()
    previous: dict = {}
    for services in ([s0, s1], [s0, s1, s2], [s0, s2], [s0, s2, s3]):
        got = allocator.allocate(pools(0), services, previous)
        assert got.allocations == allocate(pools(0), services, previous).allocations
        previous = got.allocations
    assert not allocator.full
    assert previous["s2"].addresses == (ip("10.88.0.1"),)
    assert previous["s3"].addresses == (ip("10.88.0.0"),)  # joined s0's address on the freed port


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 3)),
       st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 3)), st.booleans())
def test_changed_keys_are_the_keys_whose_value_differs(old, new, share):
    """Whatever the order and the objects: the keys added, removed or holding an unequal value."""
    if share:  # the usual case: the same objects, a few keys changed
        new = {**old, **new}
    expected = {k for k in old.keys() | new.keys() if k not in old or k not in new or old[k] != new[k]}
    assert changed_keys(old, new) == expected


def usage_from_scratch(pools_, allocations):
    """pool_usage as it was before it kept counts: one pass over every allocation."""
    seen, used = set(), {}
    for alloc in allocations.values():
        for a in alloc.addresses:
            if a in seen:
                continue
            seen.add(a)
            pool = next((p for p in pools_ if any(r.family == Family.of(a) and r.first <= a <= r.last
                                                  for r in p.addresses)), None)
            if pool is not None:
                used[(pool.name, Family.of(a))] = used.get((pool.name, Family.of(a)), 0) + 1
    return {p.name: (used.get((p.name, Family.IPV4), 0), used.get((p.name, Family.IPV6), 0)) for p in pools_}


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=20))
def test_pool_usage_counts_follow_the_allocations(sequence):
    """pool_usage keeps its counts across calls: they equal a count from scratch after every event."""
    previous: dict = {}
    for _, variant, services in replay(sequence):
        previous = allocate(pools(variant), list(services.values()), previous).allocations
        usage = pool_usage(pools(variant), previous)
        assert {name: (u.ipv4.used, u.ipv6.used) for name, u in usage.items()} == usage_from_scratch(
            pools(variant), previous)
