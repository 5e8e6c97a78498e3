"""Interface choice for a VIP (pure)."""

from __future__ import annotations

import ipaddress

from lbd.kernel.interfaces import (
    IFF_BROADCAST,
    IFF_LOOPBACK,
    IFF_NOARP,
    IFF_UP,
    LBD_ADDR_PROTO,
    choose_interface,
    connected_networks,
    usable_link,
)
from lbd.model import LocalInterface

ip = ipaddress.ip_address
net = ipaddress.ip_interface

ETH0 = LocalInterface("eth0", 2, "02:00:00:00:00:01", (net("10.77.0.2/24"), net("fd77::2/64")))
ETH1 = LocalInterface("eth1", 3, "02:00:00:00:00:02", (net("10.88.0.2/16"), net("10.88.1.2/24")))
DOWN = LocalInterface("eth2", 4, "02:00:00:00:00:03", (net("10.77.5.2/24"),), up=False)
ALL = [ETH0, ETH1, DOWN]


def test_subnet_holding_the_vip() -> None:
    assert choose_interface(ip("10.77.0.5"), ALL) == ("eth0", "eth0 has 10.77.0.0/24 holding 10.77.0.5")
    assert choose_interface(ip("fd77::5"), ALL)[0] == "eth0"


def test_most_specific_subnet_wins() -> None:
    name, reason = choose_interface(ip("10.88.1.9"), ALL)
    assert name == "eth1" and "10.88.1.0/24" in reason


def test_vip_outside_every_subnet_says_why() -> None:
    name, reason = choose_interface(ip("10.99.0.5"), [ETH0])
    assert name is None
    assert reason == "no interface has a subnet holding 10.99.0.5 (eth0: 10.77.0.0/24)"
    name, reason = choose_interface(ip("fd99::1"), ALL)
    assert name is None and "eth0: fd77::/64" in reason and "eth1: no IPv6 subnet" in reason


def test_down_interface_is_never_chosen() -> None:
    assert choose_interface(ip("10.77.5.9"), ALL)[0] is None
    assert choose_interface(ip("10.77.5.9"), ALL, ("eth2",)) == (None, "no configured interface has a subnet holding 10.77.5.9 (eth2: down)")


def test_configured_interfaces_in_order_and_only_where_the_vip_fits() -> None:
    assert choose_interface(ip("10.77.0.5"), ALL, ("missing", "eth0"))[0] == "eth0"
    name, reason = choose_interface(ip("10.77.0.5"), ALL, ("eth1",))
    assert name is None
    assert reason == "no configured interface has a subnet holding 10.77.0.5 (eth1: 10.88.0.0/16, 10.88.1.0/24)"
    assert "missing: not present" in choose_interface(ip("10.77.0.5"), ALL, ("missing",))[1]


def test_connected_networks_ignore_vips_and_link_local() -> None:
    nets = connected_networks([
        ("10.77.0.2", 24, None),
        ("10.77.0.9", 32, LBD_ADDR_PROTO),
        ("10.77.1.1", 28, LBD_ADDR_PROTO),  # marked: ours, whatever the prefix
        ("10.77.0.50", 32, None),  # another manager's VIP: no connected subnet
        ("fe80::1", 64, 3),
        ("fd77::2", 64, None),
        ("fd77::9", 128, LBD_ADDR_PROTO),
    ])
    assert nets == (net("10.77.0.2/24"), net("fd77::2/64"))


def test_usable_link_rules() -> None:
    ok = IFF_UP | IFF_BROADCAST
    assert usable_link(ok, has_master=False)
    assert not usable_link(ok, has_master=True)  # bridge or bond port
    assert not usable_link(IFF_BROADCAST, has_master=False)  # down
    assert not usable_link(ok | IFF_NOARP, has_master=False)
    assert not usable_link(IFF_UP | IFF_LOOPBACK, has_master=False)
    assert not usable_link(IFF_UP, has_master=False)  # point-to-point, no broadcast
