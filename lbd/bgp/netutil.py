"""Socket options and local address discovery for the BGP speaker.

TCP MD5 (RFC 2385) through Linux's ``TCP_MD5SIG``; TTL for eBGP single-hop and
multihop; the router ID and next-hop addresses from the node's interfaces.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import zlib

import structlog

from lbd.model import IPAddress

log = structlog.get_logger(__name__)

TCP_MD5SIG = getattr(socket, "TCP_MD5SIG", 14)
TCP_MD5SIG_MAXKEYLEN = 80


def md5_struct(address: IPAddress, key: bytes) -> bytes:
    """``struct tcp_md5sig``: sockaddr_storage (128), flags, prefixlen, keylen, ifindex, key[80]."""
    if len(key) > TCP_MD5SIG_MAXKEYLEN:
        raise ValueError(f"TCP MD5 key longer than {TCP_MD5SIG_MAXKEYLEN} octets")
    if address.version == 4:
        sa = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 0) + address.packed
    else:
        sa = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 0, 0) + address.packed + struct.pack("=I", 0)
    sa = sa.ljust(128, b"\x00")
    return sa + struct.pack("=BBHI", 0, 0, len(key), 0) + key.ljust(TCP_MD5SIG_MAXKEYLEN, b"\x00")


def set_md5(sock: socket.socket, address: IPAddress, key: bytes | None) -> None:
    """Install (or with ``None``/empty, remove) the RFC 2385 key for ``address``."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, md5_struct(address, key or b""))


def set_ttl(sock: socket.socket, version: int, ttl: int) -> None:
    if version == 4:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)


# ---------------------------------------------------------------------------
# Local addresses (pyroute2; every failure degrades to "unknown")
# ---------------------------------------------------------------------------


Addresses = list[tuple[int, IPAddress, int]]  # (ifindex, address, scope)


_RTM_NEWADDR = 20
_RTM_GETADDR = 22
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_IFA_ADDRESS = 1
_IFA_LOCAL = 2


def scan_addresses() -> Addresses:
    """Every address on the node: one rtnetlink RTM_GETADDR dump.

    Done with a plain netlink socket rather than pyroute2: it takes about a
    millisecond, needs no thread (pyroute2 cannot run inside a running loop and
    uvloop refuses its netlink transport) and no 0.2 s import on the startup
    path of the runner.
    """
    out: Addresses = []
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:  # NETLINK_ROUTE
            sock.settimeout(1.0)
            sock.bind((0, 0))
            # nlmsghdr (len, type, flags = REQUEST|DUMP, seq, pid) + ifaddrmsg (AF_UNSPEC: all families)
            sock.send(struct.pack("=IHHII", 24, _RTM_GETADDR, 0x301, 1, 0) + struct.pack("=BBBBI", 0, 0, 0, 0, 0))
            for _ in range(10_000):  # bounded: one dump, at most this many datagrams
                data = sock.recv(65536)
                off = 0
                while off + 16 <= len(data):
                    mlen, mtype = struct.unpack_from("=IH", data, off)
                    if mlen < 16 or mtype in (_NLMSG_DONE, _NLMSG_ERROR):
                        return out
                    if mtype == _RTM_NEWADDR and mlen >= 24:
                        family, _plen, _flags, scope, index = struct.unpack_from("=BBBBI", data, off + 16)
                        attrs: dict[int, bytes] = {}
                        a = off + 24
                        while a + 4 <= off + mlen:
                            rlen, rtype = struct.unpack_from("=HH", data, a)
                            if rlen < 4:
                                break
                            attrs[rtype] = data[a + 4 : a + rlen]
                            a += (rlen + 3) & ~3
                        raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
                        if raw is not None and (family, len(raw)) in ((socket.AF_INET, 4), (socket.AF_INET6, 16)):
                            out.append((index, ipaddress.ip_address(raw), scope))
                    off += (mlen + 3) & ~3
    except (OSError, struct.error) as exc:  # netlink unavailable: callers fall back
        log.warning("bgp_address_scan_failed", error=str(exc))
    return out


async def scan_addresses_async() -> Addresses:
    return scan_addresses()


def other_family_next_hop(local: IPAddress, addrs: Addresses) -> IPAddress | None:
    """An address of the other family on the interface that holds ``local``.

    Used as the next hop for routes of the family the session does not carry
    natively (IPv6 routes over an IPv4 session and vice versa): the global
    address is preferred, a host-scope one (``::1`` on ``lo``) accepted,
    link-local never.
    """
    index = next((i for i, a, _ in addrs if a == local), None)
    if index is None:
        return None
    want = 6 if local.version == 4 else 4
    cands = [(scope, a) for i, a, scope in addrs if i == index and a.version == want and not a.is_link_local]
    cands.sort(key=lambda c: c[0])  # scope 0 (universe) first
    return cands[0][1] if cands else None


def link_local_on_interface_of(local: IPAddress, addrs: Addresses) -> ipaddress.IPv6Address | None:
    index = next((i for i, a, _ in addrs if a == local), None)
    for i, a, _ in addrs:
        if i == index and a.version == 6 and a.is_link_local:
            return a  # type: ignore[return-value]
    return None


def choose_router_id(
    configured: ipaddress.IPv4Address | None, source_address: IPAddress | None, node_name: str, addrs: Addresses
) -> ipaddress.IPv4Address:
    """MetalLB's order: configured, the IPv4 source address, an IPv4 address of
    the node (global first), else CRC32 of the node name."""
    if configured is not None:
        return configured
    if isinstance(source_address, ipaddress.IPv4Address):
        return source_address
    v4 = sorted((scope, a) for _, a, scope in addrs if a.version == 4 and not a.is_loopback)
    if v4:
        return v4[0][1]  # type: ignore[return-value]
    value = zlib.crc32(node_name.encode()) or 1
    return ipaddress.IPv4Address(value)
