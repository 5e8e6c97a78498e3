"""``local_route_prefixes`` (runs of integers, summarized) equals ``ipaddress.collapse_addresses``
of every VIP as a host network: the fewest CIDRs covering exactly the VIPs."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from lbd.planner.export import local_route_prefixes

V4 = st.integers(int(ipaddress.ip_address("10.77.0.0")), int(ipaddress.ip_address("10.77.3.255"))).map(
    ipaddress.IPv4Address)
V6 = st.integers(int(ipaddress.ip_address("fd77::")), int(ipaddress.ip_address("fd77::3ff"))).map(
    ipaddress.IPv6Address)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(V4, V6), max_size=300))
def test_equals_collapse_addresses(vips: list) -> None:
    want = []
    for version in (4, 6):
        want += ipaddress.collapse_addresses([ipaddress.ip_network(v) for v in vips if v.version == version])
    assert local_route_prefixes(vips) == want


def test_a_full_aligned_block_is_one_prefix() -> None:
    vips = [ipaddress.IPv4Address(int(ipaddress.ip_address("10.77.1.0")) + i) for i in range(256)]
    assert local_route_prefixes(reversed(vips)) == [ipaddress.ip_network("10.77.1.0/24")]
