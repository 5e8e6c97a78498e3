"""Issue 9: the first pass plans and announces in batches of whole VIPs
(``lbd.planner.batches``), and still ends in the state of one pass.

The property test drives the incremental planner's world (random services, shared IPs,
dual stack, members, configs) and checks, for every batch, that what a batch announces
is what the full plan decides for those VIPs, and that the last batch leaves the plan
equal to ``plan`` of the whole input.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from lbd.model import Allocation
from lbd.planner import plan
from lbd.planner.batches import first_pass_batches
from lbd.planner.incremental import IncrementalPlanner
from test_planner_incremental import World, events  # the same world (tests/unit is on sys.path)

ip = ipaddress.ip_address


def alloc(name: str, *addresses: str) -> Allocation:
    return Allocation(name, "p", tuple(ip(a) for a in addresses))


def test_batches_grow_and_the_last_is_everything() -> None:
    allocations = {f"s{i:03}": alloc(f"s{i:03}", f"10.88.0.{i}") for i in range(100)}
    batches = first_pass_batches(allocations, first=5, growth=3)
    assert [len(b) for b in batches] == [5, 15, 45, 100]
    assert list(batches[-1].items()) == list(allocations.items())  # the last one in the given order
    for smaller, larger in zip(batches, batches[1:]):
        assert smaller.items() <= larger.items()
    # In address order: the first batch is the five lowest VIPs.
    assert sorted(batches[0]) == ["s000", "s001", "s002", "s003", "s004"]


def test_a_shared_vip_and_a_dual_stack_service_are_never_split() -> None:
    allocations = {
        "a": alloc("a", "10.88.0.1"),
        "b": alloc("b", "10.88.0.1"),  # shares a's VIP
        "c": alloc("c", "10.88.0.9", "fd77::9"),  # dual stack
        "d": alloc("d", "fd77::9"),  # shares c's IPv6 VIP: a, b alone; c, d together
        "e": alloc("e", "10.88.0.2"),
        "f": alloc("f"),  # no address (nothing to split)
    }
    for first in (1, 2, 3):
        for batch in first_pass_batches(allocations, first=first, growth=2):
            assert ("a" in batch) == ("b" in batch)
            assert ("c" in batch) == ("d" in batch)


def test_small_tables_are_one_batch_and_bad_sizes_are_refused() -> None:
    allocations = {"a": alloc("a", "10.88.0.1")}
    assert first_pass_batches(allocations) == [allocations]
    assert first_pass_batches({}) == [{}]
    with pytest.raises(ValueError):
        first_pass_batches(allocations, first=0)
    with pytest.raises(ValueError):
        first_pass_batches(allocations, growth=1)


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=30), st.integers(1, 4), st.integers(2, 3))
def test_a_batched_first_pass_ends_in_the_state_of_one_pass(sequence, first, growth):
    world = World()
    for event in [("svc", "s0", "l2", None, 80, False, None), ("member", "n2", "join"), *sequence]:
        world.apply(event)
    inp = world.inputs()
    expected = plan(inp)
    decided = {d.vip: d for d in expected.decisions}
    full_routes = {(r.prefix, r.communities, r.large_communities, r.local_pref): set(r.peers) for r in expected.bgp}
    planner = IncrementalPlanner()
    batches = first_pass_batches(inp.allocations, first=first, growth=growth)
    for batch in batches:
        got = planner.plan(replace(inp, allocations=batch))
        batch_vips = {a for allocation in batch.values() for a in allocation.addresses}
        # Whole VIPs: each VIP of the batch is decided as the full plan decides it...
        assert {d.vip for d in got.decisions} == batch_vips
        for decision in got.decisions:
            assert decision == decided[decision.vip]
        # ...so a batch announces no route (and to no peer) that the full plan does not.
        for route in got.bgp:
            key = (route.prefix, route.communities, route.large_communities, route.local_pref)
            assert key in full_routes and set(route.peers) <= full_routes[key]
    assert got.decisions == expected.decisions
    assert got.l2 == expected.l2
    assert got.bgp == expected.bgp
    assert got.exports == expected.exports


@pytest.mark.parametrize("text", ["10.88.0.1", "0.0.0.0", "255.255.255.255", "fd77::1", "::", "2001:db8::ffff"])
def test_a_host_route_built_around_its_address_equals_the_constructed_one(text: str) -> None:
    from lbd.planner.bgp import host_network

    vip = ip(text)
    built, constructed = host_network(vip), ipaddress.ip_network((int(vip), vip.max_prefixlen))
    assert type(built) is type(constructed)
    assert built == constructed and hash(built) == hash(constructed) and {built: 1}[constructed] == 1
    assert str(built) == str(constructed) and repr(built) == repr(constructed)
    assert built.prefixlen == constructed.prefixlen and built.netmask == constructed.netmask
    assert built.network_address == vip and built.broadcast_address == constructed.broadcast_address
    assert built.num_addresses == 1 and vip in built and built.subnet_of(constructed)
    assert sorted([constructed, built]) == [constructed, built] or built == constructed
    assert list(ipaddress.collapse_addresses([built])) == [constructed]
