"""Ethernet + IPv6 + ICMPv6 Neighbor Solicitation / Advertisement (RFC 4861), sans-IO.

Only the two messages lbd needs (§4.3 NS, §4.4 NA) with the source/target
link-layer address options (§4.6.1), the ICMPv6 checksum over the IPv6
pseudo-header (RFC 8200 §8.1, RFC 4443 §2.3), and the receive-side validity
checks of §7.1.1 / §7.1.2 (hop limit 255 proves the sender is on-link).
Extension headers are not followed: no neighbor discovery stack sends NS/NA
with them, and the responder's BPF filter passes only next-header 58.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from lbd.l2.frame import ETH_P_IPV6, FrameError, mac_to_bytes

ICMPV6 = 58
TYPE_NS = 135
TYPE_NA = 136
OPT_SLLA = 1  # source link-layer address (§4.6.1)
OPT_TLLA = 2  # target link-layer address
HOP_LIMIT = 255  # §4.3/§4.4: NDP is sent with hop limit 255 and checked on receive

FLAG_ROUTER = 0x80000000
FLAG_SOLICITED = 0x40000000
FLAG_OVERRIDE = 0x20000000

ALL_NODES = ipaddress.IPv6Address("ff02::1")
UNSPECIFIED = ipaddress.IPv6Address("::")
_SOLICITED_NODE_PREFIX = ipaddress.IPv6Address("ff02::1:ff00:0").packed[:13]

_ETH = struct.Struct("!6s6sH")
_IP6 = struct.Struct("!IHBB16s16s")
_ICMP_HDR = struct.Struct("!BBHI16s")  # type, code, checksum, flags/reserved, target
_IP6_LEN = 40
_MIN_FRAME = 14 + _IP6_LEN + 24


@dataclass(frozen=True)
class NeighborSolicitation:
    eth_dst: bytes
    eth_src: bytes
    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    target: ipaddress.IPv6Address
    source_lladdr: bytes | None
    hop_limit: int = HOP_LIMIT


@dataclass(frozen=True)
class NeighborAdvertisement:
    eth_dst: bytes
    eth_src: bytes
    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    target: ipaddress.IPv6Address
    router: bool
    solicited: bool
    override: bool
    target_lladdr: bytes | None
    hop_limit: int = HOP_LIMIT


def solicited_node(address: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """ff02::1:ffXX:XXXX, the group an NS for ``address`` is sent to (RFC 4291 §2.7.1)."""
    return ipaddress.IPv6Address(_SOLICITED_NODE_PREFIX + address.packed[13:])


def multicast_mac(group: ipaddress.IPv6Address) -> bytes:
    """33:33 + the group's low 32 bits (RFC 2464 §7)."""
    return b"\x33\x33" + group.packed[12:]


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    """One's-complement checksum over the pseudo-header and the message (RFC 8200 §8.1)."""
    pseudo = src + dst + struct.pack("!IxxxB", len(message), ICMPV6)
    return (~_fold(_sum16(pseudo) + _sum16(message))) & 0xFFFF


def _options(payload: bytes) -> dict[int, bytes]:
    """The options after the fixed 24 bytes; §4.6: a zero length is invalid."""
    options: dict[int, bytes] = {}
    offset = 24
    while offset < len(payload):
        if offset + 2 > len(payload):
            raise FrameError("truncated NDP option header")
        kind, length = payload[offset], payload[offset + 1]
        if length == 0:
            raise FrameError("NDP option with length 0 (RFC 4861 §4.6)")
        end = offset + 8 * length
        if end > len(payload):
            raise FrameError(f"NDP option {kind} runs past the end of the message")
        # Only the first of each kind counts; link-layer options on Ethernet carry 6 bytes.
        if kind in (OPT_SLLA, OPT_TLLA) and kind not in options:
            options[kind] = payload[offset + 2 : offset + 8]
        offset = end
    return options


def parse_ndp(frame: bytes) -> NeighborSolicitation | NeighborAdvertisement:
    """Decode and validate (RFC 4861 §7.1.1, §7.1.2) an Ethernet frame carrying an NS or an NA."""
    if len(frame) < _MIN_FRAME:
        raise FrameError(f"NDP frame too short: {len(frame)} bytes, need {_MIN_FRAME}")
    eth_dst, eth_src, ethertype = _ETH.unpack_from(frame, 0)
    if ethertype != ETH_P_IPV6:
        raise FrameError(f"not IPv6: ethertype 0x{ethertype:04x}")
    vtf, payload_len, next_header, hop_limit, src_b, dst_b = _IP6.unpack_from(frame, 14)
    if vtf >> 28 != 6:
        raise FrameError(f"IP version {vtf >> 28}, expected 6")
    if next_header != ICMPV6:
        raise FrameError(f"next header {next_header} is not ICMPv6")
    start = 14 + _IP6_LEN
    if start + payload_len > len(frame):
        raise FrameError(f"IPv6 payload length {payload_len} exceeds the frame")
    payload = bytes(frame[start : start + payload_len])  # Ethernet padding excluded
    if len(payload) < 24:
        raise FrameError(f"ICMPv6 message of {len(payload)} bytes is too short for NS/NA (24)")
    kind, code, _checksum, flags, target_b = _ICMP_HDR.unpack_from(payload, 0)
    if kind not in (TYPE_NS, TYPE_NA):
        raise FrameError(f"ICMPv6 type {kind} is not NS/NA")
    if hop_limit != HOP_LIMIT:
        raise FrameError(f"hop limit {hop_limit}, RFC 4861 §7.1 requires 255")
    if code != 0:
        raise FrameError(f"ICMPv6 code {code}, must be 0")
    if icmpv6_checksum(src_b, dst_b, payload) != 0:
        raise FrameError("bad ICMPv6 checksum")
    src = ipaddress.IPv6Address(src_b)
    dst = ipaddress.IPv6Address(dst_b)
    target = ipaddress.IPv6Address(target_b)
    if target.is_multicast:
        raise FrameError(f"target {target} is multicast")
    options = _options(payload)
    if kind == TYPE_NS:
        slla = options.get(OPT_SLLA)
        if src == UNSPECIFIED:
            # §7.1.1: DAD probes go to the solicited-node group and carry no SLLA.
            if dst != solicited_node(target):
                raise FrameError("NS from :: not sent to the target's solicited-node group")
            if slla is not None:
                raise FrameError("NS from :: carries a source link-layer option")
        return NeighborSolicitation(eth_dst, eth_src, src, dst, target, slla, hop_limit)
    solicited = bool(flags & FLAG_SOLICITED)
    if dst.is_multicast and solicited:
        raise FrameError("NA to a multicast address with the Solicited flag set (§7.1.2)")
    return NeighborAdvertisement(
        eth_dst, eth_src, src, dst, target,
        router=bool(flags & FLAG_ROUTER), solicited=solicited, override=bool(flags & FLAG_OVERRIDE),
        target_lladdr=options.get(OPT_TLLA), hop_limit=hop_limit,
    )


def _frame(eth_src: bytes, eth_dst: bytes, src: bytes, dst: bytes, message: bytearray) -> bytes:
    struct.pack_into("!H", message, 2, icmpv6_checksum(src, dst, bytes(message)))
    return (
        _ETH.pack(eth_dst, eth_src, ETH_P_IPV6)
        + _IP6.pack(6 << 28, len(message), ICMPV6, HOP_LIMIT, src, dst)
        + bytes(message)
    )


def build_ns(
    src_mac: str | bytes,
    src: ipaddress.IPv6Address,
    target: ipaddress.IPv6Address,
    dst: ipaddress.IPv6Address | None = None,
) -> bytes:
    """An NS for ``target``, to its solicited-node group unless ``dst`` is given (unicast NUD)."""
    mac = mac_to_bytes(src_mac)
    dst = dst or solicited_node(target)
    eth_dst = multicast_mac(dst) if dst.is_multicast else b"\xff" * 6
    message = bytearray(_ICMP_HDR.pack(TYPE_NS, 0, 0, 0, target.packed))
    if src != UNSPECIFIED:
        message += bytes((OPT_SLLA, 1)) + mac
    return _frame(mac, eth_dst, src.packed, dst.packed, message)


def build_na(
    src_mac: str | bytes,
    src: ipaddress.IPv6Address,
    dst_mac: str | bytes,
    dst: ipaddress.IPv6Address,
    target: ipaddress.IPv6Address,
    *,
    solicited: bool,
    override: bool,
    router: bool = False,
) -> bytes:
    """An NA saying ``target`` is at ``src_mac`` (with the target link-layer option)."""
    mac = mac_to_bytes(src_mac)
    flags = (FLAG_ROUTER if router else 0) | (FLAG_SOLICITED if solicited else 0) | (FLAG_OVERRIDE if override else 0)
    message = bytearray(_ICMP_HDR.pack(TYPE_NA, 0, 0, flags, target.packed)) + bytes((OPT_TLLA, 1)) + mac
    return _frame(mac, mac_to_bytes(dst_mac), src.packed, dst.packed, message)


def build_unsolicited_na(mac: str | bytes, vip: ipaddress.IPv6Address, src: ipaddress.IPv6Address | None = None) -> bytes:
    """The takeover announcement (RFC 4861 §7.2.6): to ff02::1, S=0, O=1.

    O=1 because this node now owns the VIP and every neighbour must replace a
    cached link-layer address (the previous owner's MAC) at once.
    """
    return build_na(
        mac, src or vip, multicast_mac(ALL_NODES), ALL_NODES, vip, solicited=False, override=True
    )


class NdpReplier:
    """The responder's hot path for NS: a solicited NA from a per-VIP template.

    The NA sent has S=1 and O=1. RFC 4861 §7.2.4 says O SHOULD be 0 only for
    anycast targets and proxied addresses; a VIP is a unicast address this
    node owns (the traffic terminates here, it is not proxied for another
    host), and with O=0 a neighbour holding a REACHABLE entry for the previous
    owner would only mark it STALE and keep using the old MAC (§7.2.5),
    slowing failover. MetalLB sends O=0; lbd deliberately does not.

    The NA's source is the VIP itself: it is the address the neighbour asked
    about, and the responder has no other address it can vouch for.
    """

    def __init__(self, mac: str | bytes) -> None:
        self.mac = mac_to_bytes(mac)
        # target bytes -> (the NA's ICMPv6 body with checksum 0, partial checksum sum)
        self._templates: dict[bytes, tuple[bytes, int]] = {}

    def add(self, vip: ipaddress.IPv6Address) -> None:
        body = _ICMP_HDR.pack(TYPE_NA, 0, 0, FLAG_SOLICITED | FLAG_OVERRIDE, vip.packed) + bytes((OPT_TLLA, 1)) + self.mac
        # Everything in the pseudo-header but the destination is constant per VIP.
        partial = _sum16(vip.packed) + len(body) + ICMPV6 + _sum16(body)
        self._templates[vip.packed] = (body, partial)

    def remove(self, vip: ipaddress.IPv6Address) -> None:
        self._templates.pop(vip.packed, None)

    def __len__(self) -> int:
        return len(self._templates)

    def __contains__(self, vip: object) -> bool:
        return isinstance(vip, ipaddress.IPv6Address) and vip.packed in self._templates

    def reply(self, frame: bytes) -> bytes | None:
        """The solicited NA answering ``frame`` if it is a valid NS for an owned VIP."""
        if len(frame) < 78 or frame[12:14] != b"\x86\xdd" or frame[20] != ICMPV6 or frame[54] != TYPE_NS:
            return None
        if frame[62:78] not in self._templates:
            return None
        try:
            ns = parse_ndp(frame)  # the full §7.1.1 validation, checksum included
        except FrameError:
            return None
        if not isinstance(ns, NeighborSolicitation):
            return None
        body, partial = self._templates[frame[62:78]]
        if ns.src == UNSPECIFIED:
            # §7.2.4: a DAD probe is answered to all-nodes, with S=0. It means
            # someone else wants the VIP: telling them it is taken is right.
            return build_na(self.mac, ns.target, multicast_mac(ALL_NODES), ALL_NODES, ns.target, solicited=False, override=True)
        dst = frame[22:38]
        checksum = (~_fold(partial + _sum16(dst))) & 0xFFFF
        eth_dst = ns.source_lladdr or ns.eth_src
        return (
            eth_dst + self.mac + b"\x86\xdd"
            + _IP6.pack(6 << 28, len(body), ICMPV6, HOP_LIMIT, ns.target.packed, dst)
            + body[:2] + struct.pack("!H", checksum) + body[4:]
        )
