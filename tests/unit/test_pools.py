"""Pool arithmetic: counting, membership, ordering, lowest-free search."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbd import pools
from lbd.config.schema import AddressRange, PoolConfig
from lbd.model import Family


def rng(text: str) -> AddressRange:
    """A range as the config parser builds it: a CIDR or ``first-last``."""
    if "-" in text:
        first, last = text.split("-")
        return AddressRange(ipaddress.ip_address(first), ipaddress.ip_address(last), text)
    net = ipaddress.ip_network(text)
    return AddressRange(net[0], net[-1], text)


def pool(*ranges: str, name: str = "p", avoid: bool = False, auto: bool = True) -> PoolConfig:
    return PoolConfig(name, tuple(rng(r) for r in ranges), auto_assign=auto, avoid_buggy_ips=avoid)


A = ipaddress.ip_address
V4, V6 = Family.IPV4, Family.IPV6


def test_slash28_is_16_usable_not_a_subnet() -> None:
    p = pool("192.168.1.48/28")
    assert pools.usable_count(p) == 16
    assert pools.usable_count(p, V4) == 16
    assert pools.usable_count(p, V6) == 0
    got = list(pools.iter_usable(p, V4))
    assert got[0] == A("192.168.1.48") and got[-1] == A("192.168.1.63") and len(got) == 16
    assert pools.usable(p, A("192.168.1.48"))  # "network" address is usable
    assert pools.usable(p, A("192.168.1.63"))  # "broadcast" address is usable
    assert not pools.usable(p, A("192.168.1.64"))
    assert not pools.usable(p, A("192.168.1.47"))


def test_first_last_range_and_single_address() -> None:
    p = pool("10.77.0.10-10.77.0.20", "10.77.1.5-10.77.1.5")
    assert pools.usable_count(p) == 12
    assert [str(a) for a in pools.iter_usable(p, V4)][-2:] == ["10.77.0.20", "10.77.1.5"]


def test_ipv6_sizes_exact_and_not_enumerated() -> None:
    p = pool("fd77::/64", "fd77:1::/48", "10.77.0.0/24")
    assert pools.usable_count(p, V6) == 2**64 + 2**80
    assert pools.usable_count(p, V4) == 256
    assert pools.usable_count(p) == 2**64 + 2**80 + 256
    assert pools.families(p) == {V4, V6}
    # lazily iterable from the start of a /64
    it = pools.iter_usable(p, V6)
    assert [next(it) for _ in range(2)] == [A("fd77::"), A("fd77::1")]
    # a whole /0 of IPv6 counts too
    assert pools.usable_count(pool("::/0"), V6) == 2**128


def test_ipv6_range() -> None:
    p = pool("fd77::10-fd77::1:0")
    assert pools.usable_count(p) == 0x1_0000 - 0x10 + 1
    assert pools.usable(p, A("fd77::ffff"))
    assert not pools.usable(p, A("fd77::f"))


def test_avoid_buggy_ips_skips_dot0_and_dot255_anywhere() -> None:
    p = pool("10.77.0.0/23", avoid=True)  # .0.0, .0.255, .1.0, .1.255 skipped
    assert pools.usable_count(p) == 512 - 4
    assert not pools.usable(p, A("10.77.0.255"))
    assert not pools.usable(p, A("10.77.1.0"))
    assert pools.usable(p, A("10.77.0.254")) and pools.usable(p, A("10.77.1.1"))
    got = list(pools.iter_usable(p, V4))
    assert len(got) == 508 and all(int(a) % 256 not in (0, 255) for a in got)
    assert got[0] == A("10.77.0.1")


def test_avoid_buggy_ips_range_spanning_255_and_0() -> None:
    p = pool("10.77.0.250-10.77.2.5", avoid=True)
    # 10.77.0.250 .. 10.77.2.5 is 6 + 256 + 6 = 268 addresses; minus .0.255, .1.0, .1.255, .2.0
    assert pools.usable_count(p) == 268 - 4
    got = [str(a) for a in pools.iter_usable(p, V4)]
    assert got[4:7] == ["10.77.0.254", "10.77.1.1", "10.77.1.2"]
    assert "10.77.1.255" not in got and "10.77.2.0" not in got
    assert got[-1] == "10.77.2.5"


def test_avoid_buggy_ips_single_bad_address_pool_is_empty() -> None:
    p = pool("10.77.0.255-10.77.1.0", avoid=True)
    assert pools.usable_count(p) == 0
    assert pools.families(p) == frozenset()
    assert pools.lowest_free(p, V4, set()) is None
    assert pools.pool_of([p], A("10.77.1.0")) is p  # contained, though not usable


def test_avoid_buggy_ips_does_not_touch_ipv6() -> None:
    p = pool("fd77::ff-fd77::100", avoid=True)
    assert pools.usable_count(p) == 2
    assert pools.usable(p, A("fd77::100"))


def test_without_avoid_dot0_and_dot255_are_usable() -> None:
    p = pool("10.77.0.255-10.77.1.0")
    assert pools.usable_count(p) == 2


def test_overlapping_and_unsorted_ranges_are_merged() -> None:
    p = pool("10.77.0.20-10.77.0.30", "10.77.0.0-10.77.0.25", "10.77.0.31")
    assert pools.usable_count(p) == 32
    assert next(pools.iter_usable(p, V4)) == A("10.77.0.0")


def test_pool_of_first_in_config_order_and_family_aware() -> None:
    a = pool("10.77.0.0/24", name="a")
    b = pool("10.77.1.0/24", "fd77::/120", name="b")
    assert pools.pool_of([a, b], A("10.77.1.7")) is b
    assert pools.pool_of([a, b], A("fd77::7")) is b
    assert pools.pool_of([a, b], A("10.77.2.0")) is None
    # ::a4d:7 has the integer value of 10.77.0.7 but is not in the IPv4 range
    assert pools.pool_of([a, b], ipaddress.IPv6Address(int(A("10.77.0.7")))) is None
    assert pools.pool_of([a, b], "10.77.0.1") is None  # type: ignore[arg-type]
    assert not pools.usable(a, "10.77.0.1")  # type: ignore[arg-type]


def test_lowest_free_skips_taken_and_respects_accept() -> None:
    p = pool("192.168.1.48/28")
    taken = {A("192.168.1.48"), A("192.168.1.49"), A("192.168.1.51"), A("fd77::1")}
    assert pools.lowest_free(p, V4, taken) == A("192.168.1.50")
    assert pools.lowest_free(p, V4, taken, accept=lambda a: a != A("192.168.1.50")) == A("192.168.1.52")
    full = set(pools.iter_usable(p, V4))
    assert pools.lowest_free(p, V4, full) is None
    assert pools.lowest_free(p, V6, set()) is None  # no IPv6 in this pool


def test_lowest_free_across_ranges_and_buggy_boundaries() -> None:
    p = pool("10.77.0.254-10.77.1.1", "10.77.5.0/30", avoid=True)
    taken = {A("10.77.0.254"), A("10.77.1.1")}
    assert pools.lowest_free(p, V4, taken) == A("10.77.5.1")


def test_lowest_free_large_taken_set_in_a_64() -> None:
    p = pool("fd77::/64")
    taken = {ipaddress.IPv6Address(int(A("fd77::")) + i) for i in range(100_000)}
    assert pools.lowest_free(p, V6, taken) == ipaddress.IPv6Address(int(A("fd77::")) + 100_000)


def test_free_scanner_follows_a_growing_set() -> None:
    p = pool("10.77.0.0/30", "10.77.0.8/31")
    taken: set[int] = set()
    scanner = pools.FreeScanner(p, V4, taken)
    got = []
    while (a := scanner.lowest_free()) is not None and len(got) < 10:
        got.append(str(a))
        taken.add(int(a))
    assert got == ["10.77.0.0", "10.77.0.1", "10.77.0.2", "10.77.0.3", "10.77.0.8", "10.77.0.9"]


def test_free_scanner_does_not_take_by_itself() -> None:
    p = pool("10.77.0.0/30")
    scanner = pools.FreeScanner(p, V4, set())
    assert scanner.lowest_free() == scanner.lowest_free() == A("10.77.0.0")


# -- properties: the integer arithmetic agrees with brute-force enumeration ---------------

small_v4_ranges = st.lists(
    st.tuples(st.integers(0, 1200), st.integers(0, 300)).map(
        lambda t: rng(f"{ipaddress.IPv4Address(0x0A4D0000 + t[0])}-{ipaddress.IPv4Address(0x0A4D0000 + t[0] + t[1])}")
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(small_v4_ranges, st.booleans(), st.sets(st.integers(0, 1600), max_size=300))
def test_counts_and_lowest_free_match_enumeration(ranges, avoid, taken_offsets) -> None:
    p = PoolConfig("p", tuple(ranges), avoid_buggy_ips=avoid)
    brute = sorted(
        {
            v
            for r in ranges
            for v in range(int(r.first), int(r.last) + 1)
            if not (avoid and v % 256 in (0, 255))
        }
    )
    assert pools.usable_count(p, V4) == len(brute)
    assert [int(a) for a in pools.iter_usable(p, V4)] == brute
    taken = {ipaddress.IPv4Address(0x0A4D0000 + o) for o in taken_offsets}
    free = [v for v in brute if ipaddress.IPv4Address(v) not in taken]
    expected = ipaddress.IPv4Address(free[0]) if free else None
    assert pools.lowest_free(p, V4, taken) == expected
    scanner = pools.FreeScanner(p, V4, {int(a) for a in taken})
    assert scanner.lowest_free() == expected
    for o in range(0, 1600, 97):
        address = ipaddress.IPv4Address(0x0A4D0000 + o)
        assert pools.usable(p, address) == (int(address) in set(brute))


@pytest.mark.parametrize(
    "first,last,expected",
    [
        (0, 0, 0),
        (255, 256, 0),
        (0, 2**32 - 1, 2**32 - 2 * 2**24),  # every /24 loses two
        (1, 254, 254),
        (250, 1000, 751 - 6),  # loses 255, 256, 511, 512, 767, 768
        (2**32 - 2, 2**32 - 1, 1),
    ],
)
def test_avoid_count_formula_edges(first: int, last: int, expected: int) -> None:
    p = PoolConfig("p", (AddressRange(ipaddress.IPv4Address(first), ipaddress.IPv4Address(last), "x"),), avoid_buggy_ips=True)
    assert pools.usable_count(p) == expected
