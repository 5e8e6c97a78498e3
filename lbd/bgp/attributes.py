"""BGP path attributes and NLRI prefixes (RFC 4271 §4.3, §5; RFC 4760; RFC 1997;
RFC 8092; RFC 6793): their types and encoders, and the RFC 7606 actions a
decoding problem asks for. ``lbd.bgp.attribute_decoding`` decodes them.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from lbd.bgp.errors import BgpError
from lbd.model import IPNetwork

AS_TRANS = 23456  # RFC 6793 §9

AFI_IPV4 = 1
AFI_IPV6 = 2
SAFI_UNICAST = 1

# Attribute flags (RFC 4271 §4.3)
FLAG_OPTIONAL = 0x80
FLAG_TRANSITIVE = 0x40
FLAG_PARTIAL = 0x20
FLAG_EXTENDED = 0x10


class AttrType(enum.IntEnum):
    ORIGIN = 1
    AS_PATH = 2
    NEXT_HOP = 3
    MULTI_EXIT_DISC = 4
    LOCAL_PREF = 5
    ATOMIC_AGGREGATE = 6
    AGGREGATOR = 7
    COMMUNITIES = 8
    ORIGINATOR_ID = 9
    CLUSTER_LIST = 10
    MP_REACH_NLRI = 14
    MP_UNREACH_NLRI = 15
    AS4_PATH = 17
    AS4_AGGREGATOR = 18
    LARGE_COMMUNITY = 32


ORIGIN_IGP = 0
ORIGIN_EGP = 1
ORIGIN_INCOMPLETE = 2

AS_SET = 1
AS_SEQUENCE = 2
AS_CONFED_SEQUENCE = 3
AS_CONFED_SET = 4

AsPath = tuple[tuple[int, tuple[int, ...]], ...]  # ((segment type, (asn, ...)), ...)


class Action(enum.IntEnum):
    """RFC 7606 §2 approaches, ordered by strength (§3 f: the strongest wins)."""

    ATTRIBUTE_DISCARD = 1
    TREAT_AS_WITHDRAW = 2


@dataclass(frozen=True)
class Problem:
    action: Action
    error: BgpError


def strongest(problems: Sequence[Problem]) -> Action | None:
    return max((p.action for p in problems), default=None)


# ---------------------------------------------------------------------------
# Prefixes (RFC 4271 §4.3 NLRI encoding: length in bits, then the minimum octets)
# ---------------------------------------------------------------------------


def encode_prefix(prefix: IPNetwork) -> bytes:
    plen = prefix.prefixlen
    return bytes((plen,)) + prefix.network_address.packed[: (plen + 7) // 8]


def encode_prefixes(prefixes: Iterable[IPNetwork]) -> bytes:
    return b"".join(encode_prefix(p) for p in prefixes)


# ---------------------------------------------------------------------------
# Path attributes
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MpReach:
    afi: int
    safi: int
    next_hops: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]  # global[, link-local]
    nlri: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class MpUnreach:
    afi: int
    safi: int
    nlri: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class RawAttribute:
    flags: int
    type: int
    value: bytes


@dataclass(frozen=True)
class PathAttributes:
    origin: int | None = None
    as_path: AsPath | None = None  # true (4-octet) ASNs
    next_hop: ipaddress.IPv4Address | None = None
    med: int | None = None
    local_pref: int | None = None
    atomic_aggregate: bool = False
    aggregator: tuple[int, ipaddress.IPv4Address] | None = None
    communities: tuple[tuple[int, int], ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()
    originator_id: ipaddress.IPv4Address | None = None
    cluster_list: tuple[ipaddress.IPv4Address, ...] = ()
    as4_path: AsPath | None = None
    as4_aggregator: tuple[int, ipaddress.IPv4Address] | None = None
    mp_reach: MpReach | None = None
    mp_unreach: MpUnreach | None = None
    unknown: tuple[RawAttribute, ...] = field(default=())

    def is_empty(self) -> bool:
        return self == _EMPTY


_EMPTY = PathAttributes()


def attribute_header(flags: int, type_code: int, length: int) -> bytes:
    """Flags, type and a one- or two-octet length (extended length when > 255)."""
    if length > 255:
        return struct.pack("!BBH", (flags | FLAG_EXTENDED) & 0xF0, type_code, length)
    return struct.pack("!BBB", flags & ~FLAG_EXTENDED & 0xF0, type_code, length)


def encode_attribute(flags: int, type_code: int, value: bytes) -> bytes:
    return attribute_header(flags, type_code, len(value)) + value


def encode_as_path(path: AsPath, four_octet: bool) -> bytes:
    """Encode AS_PATH segments; with 2-octet ASNs, ASNs above 65535 become AS_TRANS."""
    out = []
    fmt = "!I" if four_octet else "!H"
    for seg_type, asns in path:
        # A segment holds at most 255 ASNs: split longer ones.
        for start in range(0, max(len(asns), 1), 255):
            chunk = asns[start : start + 255]
            out.append(struct.pack("!BB", seg_type, len(chunk)))
            for asn in chunk:
                out.append(struct.pack(fmt, asn if four_octet or asn <= 0xFFFF else AS_TRANS))
    return b"".join(out)


def needs_as4_path(path: AsPath) -> bool:
    return any(asn > 0xFFFF for _, asns in path for asn in asns)


def encode_mp_reach(reach: MpReach) -> bytes:
    nh = b"".join(a.packed for a in reach.next_hops)
    value = struct.pack("!HBB", reach.afi, reach.safi, len(nh)) + nh + b"\x00" + encode_prefixes(reach.nlri)
    return encode_attribute(FLAG_OPTIONAL, AttrType.MP_REACH_NLRI, value)


def encode_mp_unreach(unreach: MpUnreach) -> bytes:
    value = struct.pack("!HB", unreach.afi, unreach.safi) + encode_prefixes(unreach.nlri)
    return encode_attribute(FLAG_OPTIONAL, AttrType.MP_UNREACH_NLRI, value)


def encode_attributes(attrs: PathAttributes, four_octet: bool = True) -> bytes:
    """Encode every present attribute; MP_(UN)REACH first (RFC 7606 §5.1), then by type."""
    out: list[bytes] = []
    if attrs.mp_reach is not None:
        out.append(encode_mp_reach(attrs.mp_reach))
    if attrs.mp_unreach is not None:
        out.append(encode_mp_unreach(attrs.mp_unreach))
    if attrs.origin is not None:
        out.append(encode_attribute(FLAG_TRANSITIVE, AttrType.ORIGIN, bytes((attrs.origin,))))
    if attrs.as_path is not None:
        out.append(encode_attribute(FLAG_TRANSITIVE, AttrType.AS_PATH, encode_as_path(attrs.as_path, four_octet)))
    if attrs.next_hop is not None:
        out.append(encode_attribute(FLAG_TRANSITIVE, AttrType.NEXT_HOP, attrs.next_hop.packed))
    if attrs.med is not None:
        out.append(encode_attribute(FLAG_OPTIONAL, AttrType.MULTI_EXIT_DISC, struct.pack("!I", attrs.med)))
    if attrs.local_pref is not None:
        out.append(encode_attribute(FLAG_TRANSITIVE, AttrType.LOCAL_PREF, struct.pack("!I", attrs.local_pref)))
    if attrs.atomic_aggregate:
        out.append(encode_attribute(FLAG_TRANSITIVE, AttrType.ATOMIC_AGGREGATE, b""))
    if attrs.aggregator is not None:
        asn, ip = attrs.aggregator
        fmt = "!I" if four_octet else "!H"
        value = struct.pack(fmt, asn if four_octet or asn <= 0xFFFF else AS_TRANS) + ip.packed
        out.append(encode_attribute(FLAG_OPTIONAL | FLAG_TRANSITIVE, AttrType.AGGREGATOR, value))
    if attrs.communities:
        value = b"".join(struct.pack("!HH", a, b) for a, b in attrs.communities)
        out.append(encode_attribute(FLAG_OPTIONAL | FLAG_TRANSITIVE, AttrType.COMMUNITIES, value))
    if attrs.originator_id is not None:
        out.append(encode_attribute(FLAG_OPTIONAL, AttrType.ORIGINATOR_ID, attrs.originator_id.packed))
    if attrs.cluster_list:
        out.append(encode_attribute(FLAG_OPTIONAL, AttrType.CLUSTER_LIST, b"".join(a.packed for a in attrs.cluster_list)))
    as4_path = attrs.as4_path
    if as4_path is None and not four_octet and attrs.as_path is not None and needs_as4_path(attrs.as_path):
        as4_path = attrs.as_path  # RFC 6793 §4.2.2: carry the true path beside AS_TRANS
    if as4_path is not None:
        out.append(encode_attribute(FLAG_OPTIONAL | FLAG_TRANSITIVE, AttrType.AS4_PATH, encode_as_path(as4_path, True)))
    as4_aggregator = attrs.as4_aggregator
    if as4_aggregator is None and not four_octet and attrs.aggregator is not None and attrs.aggregator[0] > 0xFFFF:
        as4_aggregator = attrs.aggregator
    if as4_aggregator is not None:
        value = struct.pack("!I", as4_aggregator[0]) + as4_aggregator[1].packed
        out.append(encode_attribute(FLAG_OPTIONAL | FLAG_TRANSITIVE, AttrType.AS4_AGGREGATOR, value))
    if attrs.large_communities:
        value = b"".join(struct.pack("!III", *c) for c in attrs.large_communities)
        out.append(encode_attribute(FLAG_OPTIONAL | FLAG_TRANSITIVE, AttrType.LARGE_COMMUNITY, value))
    for raw in attrs.unknown:
        out.append(encode_attribute(raw.flags, raw.type, raw.value))
    return b"".join(out)
