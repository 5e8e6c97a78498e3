"""Allocation rules and the reasons given when a service stays pending."""

from __future__ import annotations

import ipaddress

from lbd.ipam import AllocationChange, allocate, pool_usage, sharing_conflict
from lbd.config.schema import AddressRange, PoolConfig
from lbd.model import Allocation, Family, PortSpec, ServiceSpec

A = ipaddress.ip_address
V4, V6 = Family.IPV4, Family.IPV6
DUAL = (V4, V6)


def rng(text: str) -> AddressRange:
    if "-" in text:
        first, last = text.split("-")
        return AddressRange(A(first), A(last), text)
    net = ipaddress.ip_network(text)
    return AddressRange(net[0], net[-1], text)


def pool(name: str, *ranges: str, auto: bool = True, avoid: bool = False) -> PoolConfig:
    return PoolConfig(name, tuple(rng(r) for r in ranges), auto_assign=auto, avoid_buggy_ips=avoid)


def svc(name: str, *ports: str, **kw: object) -> ServiceSpec:
    specs = tuple(PortSpec(p.split("/")[0], int(p.split("/")[1])) for p in ports)
    if "addresses" in kw:
        kw["addresses"] = tuple(A(a) for a in kw["addresses"])  # type: ignore[union-attr]
    return ServiceSpec(name, ports=specs, **kw)  # type: ignore[arg-type]


def addrs(result, name: str) -> list[str]:
    return [str(a) for a in result.allocations[name].addresses]


LAN = pool("lan", "192.168.1.48/28")


# -- pool choice and the lowest free address ------------------------------------------------


def test_lowest_free_in_name_order_whatever_the_input_order() -> None:
    r = allocate([LAN], [svc("static/b"), svc("static/a"), svc("static/c")], {})
    assert addrs(r, "static/a") == ["192.168.1.48"]
    assert addrs(r, "static/b") == ["192.168.1.49"]
    assert addrs(r, "static/c") == ["192.168.1.50"]
    assert r.allocations["static/a"] == Allocation("static/a", "lan", (A("192.168.1.48"),))
    assert r.pending == {} and r.changes == []


def test_exhausted_pool_leaves_pending_with_reason() -> None:
    services = [svc(f"static/s{i:02}") for i in range(17)]
    r = allocate([LAN], services, {})
    assert len(r.allocations) == 16
    assert r.pending == {"static/s16": 'pool "lan" is exhausted (16 of 16 addresses in use)'}


def test_auto_assign_pools_in_config_order_and_overflow() -> None:
    first = pool("first", "10.77.0.1-10.77.0.2")
    manual = pool("manual", "10.77.9.0/24", auto=False)
    second = pool("second", "10.77.1.0/24")
    r = allocate([first, manual, second], [svc(f"s/{i}") for i in range(4)], {})
    assert [r.allocations[f"s/{i}"].pool for i in range(4)] == ["first", "first", "second", "second"]
    assert addrs(r, "s/2") == ["10.77.1.0"]


def test_every_auto_assign_pool_exhausted_names_them_all() -> None:
    a = pool("a", "10.77.0.1")
    b = pool("b", "10.77.0.2")
    r = allocate([a, b], [svc("s/1"), svc("s/2"), svc("s/3")], {})
    assert r.pending["s/3"] == (
        'every auto-assign pool is exhausted: pool "a" is exhausted (1 of 1 addresses in use); '
        'pool "b" is exhausted (1 of 1 addresses in use)'
    )


def test_no_auto_assign_pool() -> None:
    r = allocate([pool("m", "10.77.0.0/24", auto=False)], [svc("s/1")], {})
    assert r.pending == {"s/1": "no pool has auto_assign enabled (name a pool or request an address)"}
    assert allocate([], [svc("s/1")], {}).pending["s/1"].startswith("no pool has auto_assign")


def test_named_pool_ignores_auto_assign() -> None:
    manual = pool("manual", "10.77.9.0/24", auto=False)
    r = allocate([LAN, manual], [svc("s/1", pool="manual")], {})
    assert r.allocations["s/1"] == Allocation("s/1", "manual", (A("10.77.9.0"),))


def test_named_pool_missing_or_without_family() -> None:
    r = allocate([LAN], [svc("s/1", pool="nope"), svc("s/2", pool="lan", ip_families=(V6,))], {})
    assert r.pending == {"s/1": 'pool "nope" does not exist', "s/2": 'pool "lan" has no IPv6 addresses'}


# -- requested addresses ----------------------------------------------------------------------


def test_requested_address_in_a_manual_pool() -> None:
    manual = pool("manual", "10.77.9.0/24", auto=False)
    r = allocate([LAN, manual], [svc("s/1", addresses=["10.77.9.77"])], {})
    assert r.allocations["s/1"] == Allocation("s/1", "manual", (A("10.77.9.77"),))


def test_requested_address_in_no_pool() -> None:
    r = allocate([LAN], [svc("s/1", addresses=["10.0.0.5"])], {})
    assert r.pending == {"s/1": "requested address 10.0.0.5 is in no pool"}


def test_requested_address_must_match_named_pool() -> None:
    other = pool("other", "10.77.0.0/24")
    r = allocate([LAN, other], [svc("s/1", addresses=["10.77.0.5"], pool="lan")], {})
    assert r.pending == {"s/1": 'requested address 10.77.0.5 is in pool "other", not in the requested pool "lan"'}
    r = allocate([LAN, other], [svc("s/1", addresses=["10.77.0.5"], pool="other")], {})
    assert addrs(r, "s/1") == ["10.77.0.5"]


def test_requested_address_held_without_sharing() -> None:
    services = [svc("static/db", addresses=["192.168.1.50"]), svc("static/web", addresses=["192.168.1.50"])]
    r = allocate([LAN], services, {})
    assert addrs(r, "static/db") == ["192.168.1.50"]
    assert r.pending == {
        "static/web": "requested address 192.168.1.50 is held by static/db and sharing is not allowed (no common share key)"
    }


def test_requested_address_skipped_by_avoid_buggy_ips() -> None:
    p = pool("p", "10.77.0.0/24", avoid=True)
    r = allocate([p], [svc("s/1", addresses=["10.77.0.255"])], {})
    assert r.pending == {"s/1": 'requested address 10.77.0.255 is skipped by pool "p" (avoid_buggy_ips)'}


def test_requested_address_of_wrong_family_or_two_of_one_family() -> None:
    p = pool("p", "10.77.0.0/24", "fd77::/120")
    r = allocate(
        [p],
        [svc("s/1", addresses=["fd77::5"]), svc("s/2", addresses=["10.77.0.1", "10.77.0.2"], ip_families=DUAL)],
        {},
    )
    assert r.pending == {
        "s/1": "requested address fd77::5 is IPv6 but the service's ip families are ipv4",
        "s/2": "more than one requested IPv4 address (10.77.0.1, 10.77.0.2)",
    }


def test_requested_addresses_in_different_pools() -> None:
    a = pool("a", "10.77.0.0/24")
    b = pool("b", "fd77::/120")
    r = allocate([a, b], [svc("s/1", addresses=["10.77.0.1", "fd77::1"], ip_families=DUAL)], {})
    assert r.pending["s/1"].startswith('requested addresses are in different pools ("a" and "b")')


def test_requested_address_never_taken_by_an_earlier_auto_allocation() -> None:
    # "a" sorts first and would get .48 by lowest-free; "z" asked for .48 explicitly.
    # Both are new: names decide. The rule that protects "z" is stickiness, once it holds .48.
    r = allocate([LAN], [svc("z", addresses=["192.168.1.48"])], {})
    r2 = allocate([LAN], [svc("a"), svc("z", addresses=["192.168.1.48"])], r.allocations)
    assert addrs(r2, "z") == ["192.168.1.48"] and addrs(r2, "a") == ["192.168.1.49"]


# -- dual stack -------------------------------------------------------------------------------


def test_dual_stack_from_the_same_pool() -> None:
    v4only = pool("v4only", "10.77.0.0/24")
    dual = pool("dual", "10.77.1.0/24", "fd77::/64")
    r = allocate([v4only, dual], [svc("s/1", ip_families=DUAL), svc("s/2")], {})
    assert r.allocations["s/1"] == Allocation("s/1", "dual", (A("10.77.1.0"), A("fd77::")))
    assert r.allocations["s/2"].pool == "v4only"


def test_dual_stack_primary_family_order() -> None:
    dual = pool("dual", "10.77.1.0/24", "fd77::/64")
    r = allocate([dual], [svc("s/1", ip_families=(V6, V4))], {})
    assert addrs(r, "s/1") == ["fd77::", "10.77.1.0"]


def test_dual_stack_pending_without_a_dual_pool() -> None:
    r = allocate([pool("a", "10.77.0.0/24"), pool("b", "fd77::/64")], [svc("s/1", ip_families=DUAL)], {})
    assert r.pending == {"s/1": "no auto-assign pool has IPv4 and IPv6 addresses"}


def test_dual_stack_pending_when_one_family_is_exhausted() -> None:
    dual = pool("dual", "10.77.1.1", "fd77::/64")
    r = allocate([dual], [svc("s/1"), svc("s/2", ip_families=DUAL)], {})
    assert r.pending == {"s/2": 'pool "dual" is exhausted (1 of 1 IPv4 addresses in use)'}


def test_dual_stack_with_one_requested_address_takes_the_other_from_its_pool() -> None:
    dual = pool("dual", "10.77.1.0/24", "fd77::/64")
    other = pool("other", "10.77.2.0/24", "fd77:1::/64")
    r = allocate([other, dual], [svc("s/1", addresses=["10.77.1.9"], ip_families=DUAL)], {})
    assert r.allocations["s/1"] == Allocation("s/1", "dual", (A("10.77.1.9"), A("fd77::")))


# -- sharing ----------------------------------------------------------------------------------


def test_sharing_same_key_disjoint_ports() -> None:
    services = [svc("s/dns-tcp", "tcp/53", share_key="dns"), svc("s/dns-udp", "udp/53", share_key="dns")]
    r = allocate([LAN], services, {})
    assert addrs(r, "s/dns-tcp") == addrs(r, "s/dns-udp") == ["192.168.1.48"]
    assert pool_usage([LAN], r.allocations)["lan"].used == 1


def test_sharing_refused_on_port_overlap_backend_or_key() -> None:
    base = svc("s/a", "tcp/80", "tcp/443", share_key="k", addresses=["192.168.1.50"])
    cases = {
        "s/overlap": (svc("s/overlap", "tcp/443", share_key="k", addresses=["192.168.1.50"]), "both use tcp/443"),
        "s/backend": (
            svc("s/backend", "tcp/81", share_key="k", backend_key="app=x", addresses=["192.168.1.50"]),
            "backend keys differ ('app=x' and '')",
        ),
        "s/key": (svc("s/key", "tcp/81", share_key="other", addresses=["192.168.1.50"]), "no common share key"),
        "s/nokey": (svc("s/nokey", "tcp/81", addresses=["192.168.1.50"]), "no common share key"),
    }
    for name, (spec, why) in cases.items():
        r = allocate([LAN], [base, spec], {})
        assert r.pending == {
            name: f"requested address 192.168.1.50 is held by s/a and sharing is not allowed ({why})"
        }, name


def test_empty_share_key_never_shares() -> None:
    services = [svc("s/a", "tcp/80", share_key=""), svc("s/b", "tcp/81", share_key="")]
    r = allocate([LAN], services, {})
    assert addrs(r, "s/a") != addrs(r, "s/b")


def test_sharing_joins_the_lowest_compatible_address() -> None:
    services = [
        svc("s/1", "tcp/80", share_key="k"),  # .48
        svc("s/2", "tcp/80", share_key="k"),  # port clash: .49
        svc("s/3", "tcp/81", share_key="k"),  # joins .48 (lowest compatible)
        svc("s/4", "tcp/80", "tcp/81", share_key="k"),  # clashes with both: .50
    ]
    r = allocate([LAN], services, {})
    assert [addrs(r, f"s/{i}")[0][-2:] for i in range(1, 5)] == ["48", "49", "48", "50"]


def test_sharing_conflict_helper() -> None:
    a = svc("a", "tcp/80", share_key="k")
    assert sharing_conflict(a, svc("b", "TCP/81", share_key="k")) is None
    assert sharing_conflict(a, svc("b", "tcp/80", share_key="k")) == "both use tcp/80"
    assert sharing_conflict(a, svc("b", "udp/80", share_key="k")) is None


def test_shared_address_holders_all_named() -> None:
    services = [
        svc("s/a", "tcp/80", share_key="k", addresses=["192.168.1.50"]),
        svc("s/b", "tcp/81", share_key="k", addresses=["192.168.1.50"]),
        svc("s/c", "tcp/82", addresses=["192.168.1.50"]),
    ]
    r = allocate([LAN], services, {})
    assert r.pending["s/c"] == (
        "requested address 192.168.1.50 is held by s/a, s/b and sharing is not allowed (no common share key)"
    )


# -- stickiness, releases and moves -------------------------------------------------------------


def test_restart_never_moves_and_new_services_fill_holes() -> None:
    services = [svc("s/b"), svc("s/c")]
    previous = {"s/c": Allocation("s/c", "lan", (A("192.168.1.60"),))}
    r = allocate([LAN], services + [svc("s/a")], previous)
    assert addrs(r, "s/c") == ["192.168.1.60"]  # kept although .48 is free
    assert addrs(r, "s/a") == ["192.168.1.48"] and addrs(r, "s/b") == ["192.168.1.49"]
    assert r.changes == []


def test_pending_service_never_steals() -> None:
    small = pool("small", "10.77.0.1-10.77.0.2")
    r1 = allocate([small], [svc("s/b"), svc("s/c")], {})
    # "s/a" sorts first but is new: it must not take an address from b or c
    r2 = allocate([small], [svc("s/a"), svc("s/b"), svc("s/c")], r1.allocations)
    assert r2.allocations == r1.allocations
    assert r2.pending == {"s/a": 'pool "small" is exhausted (2 of 2 addresses in use)'}
    # deleting b frees its address for the pending one
    r3 = allocate([small], [svc("s/a"), svc("s/c")], r2.allocations)
    assert addrs(r3, "s/a") == addrs(r1, "s/b") and addrs(r3, "s/c") == addrs(r1, "s/c")
    assert r3.changes == [AllocationChange("s/b", "released", (A("10.77.0.1"),), (), "the service was removed", old_pool="small")]


def test_pool_edit_that_drops_an_address_moves_the_service() -> None:
    r1 = allocate([LAN], [svc("static/web", addresses=["192.168.1.60"])], {})
    assert addrs(r1, "static/web") == ["192.168.1.60"]
    shrunk = pool("lan", "192.168.1.48/29")
    # the service no longer requests .60 (the config was edited with the pool)
    r2 = allocate([shrunk], [svc("static/web"), svc("static/db")], r1.allocations)
    assert addrs(r2, "static/web") == ["192.168.1.48"]
    assert r2.changes == [
        AllocationChange(
            "static/web",
            "moved",
            (A("192.168.1.60"),),
            (A("192.168.1.48"),),
            'address 192.168.1.60 left pool "lan"',
            old_pool="lan",
            new_pool="lan",
        )
    ]
    assert str(r2.changes[0]) == 'static/web: moved 192.168.1.60 -> 192.168.1.48: address 192.168.1.60 left pool "lan"'
    # the moved service was re-allocated before the new one
    assert addrs(r2, "static/db") == ["192.168.1.49"]


def test_pool_removed_releases_with_pending_reason() -> None:
    r1 = allocate([LAN], [svc("s/1")], {})
    r2 = allocate([], [svc("s/1")], r1.allocations)
    assert r2.allocations == {}
    assert r2.pending == {"s/1": "no pool has auto_assign enabled (name a pool or request an address)"}
    assert r2.changes == [
        AllocationChange("s/1", "released", (A("192.168.1.48"),), (), 'address 192.168.1.48 left pool "lan"', old_pool="lan")
    ]


def test_avoid_buggy_ips_turned_on_moves_a_dot0_address() -> None:
    p = pool("p", "10.77.0.0/24")
    r1 = allocate([p], [svc("s/1")], {})
    assert addrs(r1, "s/1") == ["10.77.0.0"]
    r2 = allocate([pool("p", "10.77.0.0/24", avoid=True)], [svc("s/1")], r1.allocations)
    assert addrs(r2, "s/1") == ["10.77.0.1"]
    assert r2.changes[0].reason == 'address 10.77.0.0 is now skipped by pool "p" (avoid_buggy_ips)'


def test_changed_request_reallocates() -> None:
    r1 = allocate([LAN], [svc("s/1")], {})
    r2 = allocate([LAN], [svc("s/1", addresses=["192.168.1.55"])], r1.allocations)
    assert addrs(r2, "s/1") == ["192.168.1.55"]
    assert r2.changes[0].kind == "moved"
    assert r2.changes[0].reason == "the service now requests 192.168.1.55 instead of 192.168.1.48"
    other = pool("other", "10.77.0.0/24")
    r3 = allocate([LAN, other], [svc("s/1", pool="other")], r2.allocations)
    assert addrs(r3, "s/1") == ["10.77.0.0"]
    assert r3.changes[0].reason == 'the service now asks for pool "other" and 192.168.1.55 is in pool "lan"'


def test_turning_dual_stack_keeps_the_ipv4_address() -> None:
    dual = pool("dual", "10.77.1.0/24", "fd77::/64")
    r1 = allocate([dual], [svc("s/0"), svc("s/1")], {})
    r2 = allocate([dual], [svc("s/1", ip_families=DUAL)], r1.allocations)
    assert addrs(r2, "s/1") == ["10.77.1.1", "fd77::"]
    assert r2.changes[1] == AllocationChange(
        "s/1",
        "moved",
        (A("10.77.1.1"),),
        (A("10.77.1.1"), A("fd77::")),
        "the service now also needs IPv6",
        old_pool="dual",
        new_pool="dual",
    )


def test_pool_rename_keeps_the_address() -> None:
    r1 = allocate([LAN], [svc("s/1"), svc("s/2")], {})
    renamed = pool("office", "192.168.1.48/28")
    r2 = allocate([renamed], [svc("s/2"), svc("s/1")], r1.allocations)
    assert {n: a.addresses for n, a in r2.allocations.items()} == {n: a.addresses for n, a in r1.allocations.items()}
    assert r2.allocations["s/1"].pool == "office" and r2.changes == []


def test_conflicting_previous_allocations_keep_the_first_by_name() -> None:
    # e.g. a hand-edited state file, or two cluster halves merged
    previous = {
        "s/a": Allocation("s/a", "lan", (A("192.168.1.50"),)),
        "s/b": Allocation("s/b", "lan", (A("192.168.1.50"),)),
    }
    r = allocate([LAN], [svc("s/b"), svc("s/a")], previous)
    assert addrs(r, "s/a") == ["192.168.1.50"] and addrs(r, "s/b") == ["192.168.1.48"]
    assert r.changes[0].reason == "address 192.168.1.50 is held by s/a and sharing is not allowed (no common share key)"


def test_kept_allocation_never_loses_to_a_reallocated_one() -> None:
    # s/a's previous address became invalid; it must not take s/b's still-valid one
    previous = {
        "s/a": Allocation("s/a", "lan", (A("10.0.0.1"),)),
        "s/b": Allocation("s/b", "lan", (A("192.168.1.48"),)),
    }
    r = allocate([LAN], [svc("s/a"), svc("s/b")], previous)
    assert addrs(r, "s/b") == ["192.168.1.48"] and addrs(r, "s/a") == ["192.168.1.49"]


# -- hostile or inconsistent input: pending reasons, never exceptions ---------------------------


def test_duplicate_service_names_are_pending() -> None:
    r = allocate([LAN], [svc("s/1", pool="lan"), svc("s/1")], {})
    assert r.pending == {"s/1": 'service "s/1" is defined more than once, differently'}
    same = allocate([LAN], [svc("s/1"), svc("s/1")], {})  # identical twice: one service
    assert addrs(same, "s/1") == ["192.168.1.48"]


def test_garbage_never_raises() -> None:
    weird_prev = {
        "s/1": "not an allocation",
        "s/2": Allocation("s/2", "lan", ("192.168.1.48",)),  # type: ignore[arg-type]
        "s/3": Allocation("s/3", "lan", ()),
        "s/4": Allocation("s/4", "lan", (A("192.168.1.49"), A("192.168.1.50"))),
        7: Allocation("7", "lan", (A("192.168.1.51"),)),
    }
    services = [
        svc("s/1"),
        svc("s/2"),
        svc("s/3"),
        svc("s/4"),
        ServiceSpec("s/5", ip_families=()),
        ServiceSpec("s/6", addresses=("10.0.0.1",)),  # type: ignore[arg-type]
        ServiceSpec("s/7", ports=("tcp/80",)),  # type: ignore[arg-type]
        ServiceSpec("s/8", pool=3),  # type: ignore[arg-type]
        "not a service",
    ]
    r = allocate([LAN, "not a pool"], services, weird_prev)  # type: ignore[list-item]
    assert addrs(r, "s/4") == ["192.168.1.49"]  # one IPv4 address kept, the second dropped
    assert r.changes[0].reason == "the previous allocation holds two IPv4 addresses"
    assert r.pending["s/5"] == "the service has no valid ip families"
    assert r.pending["s/6"] == "requested address '10.0.0.1' is not an IP address"
    assert r.pending["s/7"] == "invalid port 'tcp/80'"
    assert r.pending["s/8"] == "the pool name is not a string"
    assert set(r.allocations) == {"s/1", "s/2", "s/3", "s/4"}
    assert allocate(None, None, None).allocations == {}  # type: ignore[arg-type]


# -- usage ------------------------------------------------------------------------------------


def test_pool_usage_per_family_with_huge_ipv6_totals() -> None:
    dual = pool("dual", "10.77.1.0/24", "fd77::/64", avoid=True)
    r = allocate([LAN, dual], [svc("s/1"), svc("s/2", pool="dual", ip_families=DUAL)], {})
    usage = pool_usage([LAN, dual], r.allocations)
    assert list(usage) == ["lan", "dual"]
    assert (usage["lan"].ipv4.used, usage["lan"].ipv4.total) == (1, 16)
    assert (usage["lan"].ipv6.used, usage["lan"].ipv6.total) == (0, 0)
    assert (usage["dual"].ipv4.used, usage["dual"].ipv4.total) == (1, 254)
    assert (usage["dual"].ipv6.used, usage["dual"].ipv6.total) == (1, 2**64)
    assert usage["dual"].family(V6).total == 2**64
    assert usage["dual"].used == 2 and usage["dual"].total == 254 + 2**64


def test_sharing_finds_a_joinable_address_below_ones_already_skipped() -> None:
    # White-box: the share index skips clashing addresses with a cursor; an
    # address inserted below that cursor later must still be found.
    p = pool("p", "10.77.0.0/30")
    services = [
        svc("s/a", "tcp/80", share_key="k", addresses=["10.77.0.3"]),
        svc("s/b", "tcp/80", share_key="k"),  # skips .3 (clash), takes free .0
        svc("s/c", "udp/53", share_key="k", addresses=["10.77.0.2"]),  # lands below the cursor
        svc("s/d"),  # takes the last free address, .1
        svc("s/e", "tcp/80", share_key="k"),  # nothing free: must join .2
    ]
    r = allocate([p], services, {})
    assert {n: addrs(r, n)[0] for n in r.allocations} == {
        "s/a": "10.77.0.3",
        "s/b": "10.77.0.0",
        "s/c": "10.77.0.2",
        "s/d": "10.77.0.1",
        "s/e": "10.77.0.2",
    }


def test_precedence_decides_which_conflicting_allocation_stays() -> None:
    previous = {
        "s/a": Allocation("s/a", "lan", (A("192.168.1.50"),)),
        "s/b": Allocation("s/b", "lan", (A("192.168.1.50"),)),
    }
    r = allocate([LAN], [svc("s/a"), svc("s/b")], previous, precedence={"s/b": 1, "s/a": 2})
    assert addrs(r, "s/b") == ["192.168.1.50"] and addrs(r, "s/a") == ["192.168.1.48"]
    assert [c.service for c in r.changes] == ["s/a"]
    # services missing from precedence come after the ranked ones; junk ranks are ignored
    r = allocate([LAN], [svc("s/a"), svc("s/b")], previous, precedence={"s/b": 5, "s/a": "x"})  # type: ignore[dict-item]
    assert addrs(r, "s/b") == ["192.168.1.50"]


def test_malformed_pools_never_raise() -> None:
    bad = PoolConfig("bad", ("10.77.0.0/24", AddressRange("x", "y", "z"), AddressRange(A("10.77.0.1"), A("fd77::1"), "mixed")))  # type: ignore[arg-type]
    worse = PoolConfig("worse", None)  # type: ignore[arg-type]
    r = allocate([bad, worse, LAN], [svc("s/1"), svc("s/2", pool="bad")], {})
    assert addrs(r, "s/1") == ["192.168.1.48"]
    assert r.pending == {"s/2": 'pool "bad" has no IPv4 addresses'}
    assert pool_usage([bad, worse], r.allocations)["bad"].total == 0


def test_equal_port_sets_are_one_object_in_the_book() -> None:
    """100,000 services on tcp/443 hold one port set in the allocator, not one each (issue 9);
    the allocations are those of distinct sets."""
    from lbd.ipam import _Round, _request

    a, b = svc("s/a", "tcp/443"), svc("s/b", "TCP/443")
    ra, rb = _request(a), _request(b)
    assert not isinstance(ra, str) and not isinstance(rb, str)
    assert ra.ports == frozenset({("tcp", 443)}) and ra.ports is rb.ports
    run = _Round([pool("p", "10.0.0.0/30")], [a, b], {}, None, None)
    run.all_passes()
    uses = list(run.book.uses.values())
    assert len(uses) == 2 and all(u.ports is ra.ports for u in uses)
