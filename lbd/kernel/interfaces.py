"""Which interfaces a node can announce on, and which one a VIP goes to.

``choose_interface`` is pure (unit-tested); ``list_interfaces`` reads the
kernel over netlink (pyroute2) and applies MetalLB's usability rules
(metallb.md §3): up, broadcast-capable, not loopback, not NOARP, not enslaved
to a bridge or bond (the master carries the addresses and answers ARP).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING, Iterable, Sequence

from lbd.model import IPAddress, IPInterface, LocalInterface

if TYPE_CHECKING:
    from lbd.kernel.netlink import Netlink

# The IFA_PROTO value lbd marks its addresses with (kernel >= 5.18): 0-3 are
# the kernel's (unspec, kernel_lo, kernel_ra, kernel_ll); lbd uses 252, like
# the protocol number it marks its exported routes with.
LBD_ADDR_PROTO = 252

IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_LOOPBACK = 0x8
IFF_NOARP = 0x80


def holds(network: IPInterface, vip: IPAddress) -> bool:
    return network.version == vip.version and vip in network.network


def _describe(interface: LocalInterface, vip: IPAddress) -> str:
    nets = [str(n.network) for n in interface.networks if n.version == vip.version]
    return f"{interface.name}: {', '.join(nets) if nets else f'no IPv{vip.version} subnet'}"


def choose_interface(
    vip: IPAddress, interfaces: Sequence[LocalInterface], configured: tuple[str, ...] = ()
) -> tuple[str | None, str]:
    """The interface to announce ``vip`` on, and why (or why none).

    With ``configured`` names, the first one that exists, is up and has a
    connected subnet holding the VIP; otherwise the interface whose connected
    subnet holds it (the most specific subnet wins, then the name, so the
    choice is stable). Never an interface where the VIP does not fit: a
    neighbour outside that subnet would never ask for it there.
    """
    by_name = {i.name: i for i in interfaces}
    if configured:
        notes = []
        for name in configured:
            interface = by_name.get(name)
            if interface is None:
                notes.append(f"{name}: not present or not usable")
            elif not interface.up:
                notes.append(f"{name}: down")
            elif any(holds(n, vip) for n in interface.networks):
                subnet = max((n for n in interface.networks if holds(n, vip)), key=lambda n: n.network.prefixlen)
                return name, f"configured interface {name} has {subnet.network} holding {vip}"
            else:
                notes.append(_describe(interface, vip))
        return None, f"no configured interface has a subnet holding {vip} ({'; '.join(notes)})"
    candidates = [
        (n.network.prefixlen, i.name, n)
        for i in interfaces
        if i.up
        for n in i.networks
        if holds(n, vip)
    ]
    if candidates:
        _, name, subnet = sorted(candidates, key=lambda c: (-c[0], c[1]))[0]
        return name, f"{name} has {subnet.network} holding {vip}"
    described = "; ".join(_describe(i, vip) for i in interfaces if i.up) or "no usable interface"
    return None, f"no interface has a subnet holding {vip} ({described})"


def connected_networks(addresses: Iterable[tuple[str, int, int | None]], version_filter: int | None = None) -> tuple[IPInterface, ...]:
    """Connected subnets from (address, prefixlen, IFA_PROTO) triples.

    Addresses lbd added (marked with ``LBD_ADDR_PROTO``) and host routes
    (/32, /128: that is how VIPs are bound, by lbd or by another VIP manager)
    are not connected subnets; link-local IPv6 is never a place for a VIP.
    """
    nets: list[IPInterface] = []
    for address, prefixlen, proto in addresses:
        iface = ipaddress.ip_interface(f"{address}/{prefixlen}")
        if proto == LBD_ADDR_PROTO or prefixlen == iface.max_prefixlen:
            continue
        if iface.version == 6 and iface.ip.is_link_local:
            continue
        if version_filter and iface.version != version_filter:
            continue
        nets.append(iface)
    return tuple(nets)


def usable_link(flags: int, has_master: bool) -> bool:
    return bool(flags & IFF_UP and flags & IFF_BROADCAST) and not flags & (IFF_LOOPBACK | IFF_NOARP) and not has_master


async def list_interfaces(nl: "Netlink | None" = None) -> list[LocalInterface]:
    """The usable interfaces of this network namespace, with their connected subnets."""
    from lbd.kernel.netlink import Netlink

    conn = nl or Netlink()
    try:
        links = await conn.call("get_links")
        addrs = await conn.call("get_addr")
    finally:
        if nl is None:
            await conn.aclose()
    by_index: dict[int, list[tuple[str, int, int | None]]] = {}
    for a in addrs:
        if a["family"] not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = a.get("IFA_LOCAL") if a["family"] == socket.AF_INET else a.get("IFA_ADDRESS")
        if address is None:
            address = a.get("IFA_ADDRESS")
        if address is None:
            continue
        by_index.setdefault(a["index"], []).append((address, a["prefixlen"], a.get("IFA_PROTO")))
    result = []
    for link in links:
        flags = link["flags"]
        if not usable_link(flags, link.get("IFLA_MASTER") is not None):
            continue
        result.append(
            LocalInterface(
                name=link.get("IFLA_IFNAME"),
                index=link["index"],
                mac=link.get("IFLA_ADDRESS") or "",
                networks=connected_networks(by_index.get(link["index"], ())),
                up=bool(flags & IFF_UP),
            )
        )
    return sorted(result, key=lambda i: i.name)
