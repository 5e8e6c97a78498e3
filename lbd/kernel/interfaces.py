"""Which interfaces a node can announce on, and which one a VIP goes to.

``choose_interface`` is pure (unit-tested); ``list_interfaces`` reads the
kernel over netlink (pyroute2) and applies MetalLB's usability rules
(metallb.md §3): up, broadcast-capable, not loopback, not NOARP, not enslaved
to a bridge or bond (the master carries the addresses and answers ARP).
``InterfaceInventory`` keeps that list between passes and reads it again only
when a netlink notification says a link or a connected subnet changed.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import math
import socket
import struct
import time
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import structlog

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

log = structlog.get_logger(__name__)


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


# -- the inventory, kept by notifications ---------------------------------------
# rtnetlink multicast groups (linux/rtnetlink.h, the legacy RTMGRP_* bit masks for bind(2))
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
_NLMSGHDR = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
_IFA_PROTO = 11
_RCVBUF = 1 << 20  # a burst of our own binds' notifications fits; an overflow only costs one full read
INVENTORY_MAX_AGE = 30.0  # the safety net: a full read at least this often, notifications or not


def _address_changes_subnets(family: int, prefixlen: int, attrs: bytes) -> bool:
    """Whether an address notification may change a connected subnet: not for host
    addresses (/32, /128: how VIPs are bound) nor for lbd's own (IFA_PROTO), which
    :func:`connected_networks` never counts."""
    if (family == socket.AF_INET and prefixlen == 32) or (family == socket.AF_INET6 and prefixlen == 128):
        return False
    offset = 0
    while offset + _RTATTR.size <= len(attrs):
        length, kind = _RTATTR.unpack_from(attrs, offset)
        if length < _RTATTR.size:
            break
        if kind == _IFA_PROTO and length >= _RTATTR.size + 1 and attrs[offset + _RTATTR.size] == LBD_ADDR_PROTO:
            return False
        offset += (length + 3) & ~3
    return True


def inventory_changed(data: bytes) -> bool:
    """Whether a datagram of rtnetlink notifications may change what
    :func:`list_interfaces` returns: any link change, or an address change that
    may touch a connected subnet. Anything unparseable counts as a change."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            return True
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            return True
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            body = offset + _NLMSGHDR.size
            if length < _NLMSGHDR.size + _IFADDRMSG.size:
                return True
            family, prefixlen, _f, _scope, _index = _IFADDRMSG.unpack_from(data, body)
            if _address_changes_subnets(family, prefixlen, data[body + _IFADDRMSG.size:offset + length]):
                return True
        offset += (length + 3) & ~3
    return False


class InterfaceInventory:
    """The usable interfaces, read in full (:func:`list_interfaces`) only when needed.

    Every reconcile pass needs the interfaces, and at thousands of VIPs a full
    address dump decoded by pyroute2 costs more than the rest of the pass (issue 9:
    31% of the samples, and the L2 announcer read it a second time). The inventory
    listens on rtnetlink's link and address groups: a change to a link or to a
    connected subnet marks it stale (our own VIP binds and lifetime refreshes do
    not), and :meth:`get` then reads it again; otherwise it hands out the list it
    has. A lost notification (receive buffer overflow) marks it stale too, and it is
    read again at least every ``max_age`` seconds whatever happens. The daemon and the
    layer-2 announcer share one inventory.
    """

    def __init__(self, netlink: "Netlink | None" = None, *, on_change: Callable[[], None] | None = None,
                 max_age: float = INVENTORY_MAX_AGE, clock: Callable[[], float] = time.monotonic) -> None:
        self._nl = netlink
        self._on_change = on_change
        self.max_age = max_age
        self._clock = clock
        self._interfaces: list[LocalInterface] | None = None
        self._fetched = -math.inf
        self._stale = True
        self._sock: socket.socket | None = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._listening = False  # notifications arrive: the cache can be trusted between them
        self._closed = False
        self.reads = 0  # full reads done (for tests and figures)

    async def get(self) -> list[LocalInterface]:
        """The usable interfaces now: the kept list, or a fresh read when something changed."""
        self._listen()
        self._drain()  # whatever the kernel changed before this call is seen now
        if self._stale or not self._listening or self._clock() - self._fetched >= self.max_age:
            self._stale = False  # a change during the read below marks it stale again
            started = self._clock()
            interfaces = await list_interfaces(self._nl)
            self._interfaces, self._fetched = interfaces, started
            self.reads += 1
        assert self._interfaces is not None
        return list(self._interfaces)

    def invalidate(self) -> None:
        """Read in full at the next :meth:`get` (an error suggested the list is wrong)."""
        self._stale = True

    def close(self) -> None:
        self._closed = True
        self._listening = False
        if self._sock is not None:
            if self._reader_loop is not None and not self._reader_loop.is_closed():
                self._reader_loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _listen(self) -> None:
        if self._sock is not None or self._closed:
            return
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                 socket.NETLINK_ROUTE)
        except OSError as exc:
            log.warning("interface_notifications_unavailable", error=str(exc))
            self._closed = True  # read in full every time, as without an inventory
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        except OSError as exc:
            sock.close()
            log.warning("interface_notifications_unavailable", error=str(exc))
            self._closed = True
            return
        self._sock = sock
        self._listening = True
        self._stale = True  # changes before the subscription were not heard
        try:
            loop = asyncio.get_running_loop()
            loop.add_reader(sock.fileno(), self._readable)
            self._reader_loop = loop
        except (RuntimeError, NotImplementedError):
            pass  # no reader: get() still drains the socket itself

    def _readable(self) -> None:
        if self._drain() and self._on_change is not None:
            self._on_change()

    def _drain(self) -> bool:
        """Read every queued notification; whether one made the inventory stale."""
        if self._sock is None:
            return False
        changed = False
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # notifications were lost: trust nothing
                    changed = True
                    continue
                log.warning("interface_notifications_failed", error=str(exc))
                self.close()
                changed = True
                break
            if not data:
                break
            if inventory_changed(data):
                changed = True
        if changed:
            self._stale = True
        return changed
