"""Decoding BGP path attributes and NLRI prefixes, with the revised error handling of RFC 7606
(the types and encoders are in ``lbd.bgp.attributes``).

Decoding never raises anything but :class:`BgpError`. Attribute faults that
RFC 7606 downgrades are not raised: they are returned as :class:`Problem`
records with the action to take ("treat-as-withdraw" or "attribute discard")
and the RFC 4271 NOTIFICATION that the base spec would have sent. Faults
that still require a session reset raise.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterator

from lbd.bgp.attributes import (
    AFI_IPV4,
    AFI_IPV6,
    AS_CONFED_SEQUENCE,
    AS_CONFED_SET,
    AS_SEQUENCE,
    AS_SET,
    AS_TRANS,
    FLAG_EXTENDED,
    FLAG_OPTIONAL,
    FLAG_TRANSITIVE,
    ORIGIN_INCOMPLETE,
    SAFI_UNICAST,
    Action,
    AsPath,
    AttrType,
    MpReach,
    MpUnreach,
    PathAttributes,
    Problem,
    RawAttribute,
)
from lbd.bgp.errors import BgpError, ErrorCode, UpdateSubcode
from lbd.model import IPNetwork


# Expected Optional/Transitive bits per recognised attribute (RFC 7606 §3 c).
_EXPECTED_FLAGS: dict[int, int] = {
    AttrType.ORIGIN: FLAG_TRANSITIVE,
    AttrType.AS_PATH: FLAG_TRANSITIVE,
    AttrType.NEXT_HOP: FLAG_TRANSITIVE,
    AttrType.MULTI_EXIT_DISC: FLAG_OPTIONAL,
    AttrType.LOCAL_PREF: FLAG_TRANSITIVE,
    AttrType.ATOMIC_AGGREGATE: FLAG_TRANSITIVE,
    AttrType.AGGREGATOR: FLAG_OPTIONAL | FLAG_TRANSITIVE,
    AttrType.COMMUNITIES: FLAG_OPTIONAL | FLAG_TRANSITIVE,
    AttrType.ORIGINATOR_ID: FLAG_OPTIONAL,
    AttrType.CLUSTER_LIST: FLAG_OPTIONAL,
    AttrType.MP_REACH_NLRI: FLAG_OPTIONAL,
    AttrType.MP_UNREACH_NLRI: FLAG_OPTIONAL,
    AttrType.AS4_PATH: FLAG_OPTIONAL | FLAG_TRANSITIVE,
    AttrType.AS4_AGGREGATOR: FLAG_OPTIONAL | FLAG_TRANSITIVE,
    AttrType.LARGE_COMMUNITY: FLAG_OPTIONAL | FLAG_TRANSITIVE,
}


# ---------------------------------------------------------------------------
# Prefixes (RFC 4271 §4.3 NLRI encoding: length in bits, then the minimum octets)
# ---------------------------------------------------------------------------


def decode_prefixes(data: bytes, afi: int, subcode: int = UpdateSubcode.INVALID_NETWORK_FIELD) -> list[IPNetwork]:
    """Decode a run of NLRI prefixes; syntactic faults raise ``BgpError(3, subcode)``."""
    out: list[IPNetwork] = []
    width = 4 if afi == AFI_IPV4 else 16
    maxlen = width * 8
    i = 0
    n = len(data)
    make = ipaddress.IPv4Network if width == 4 else ipaddress.IPv6Network
    while i < n:
        plen = data[i]
        if plen > maxlen:
            raise BgpError(ErrorCode.UPDATE_MESSAGE, subcode, reason=f"prefix length {plen} > {maxlen}")
        nbytes = (plen + 7) // 8
        if i + 1 + nbytes > n:
            raise BgpError(ErrorCode.UPDATE_MESSAGE, subcode, reason="prefix runs past the field")
        value = int.from_bytes(data[i + 1 : i + 1 + nbytes], "big") << (8 * (width - nbytes))
        # Trailing bits beyond the prefix length are irrelevant (RFC 4271 §4.3): mask them.
        value &= ((1 << maxlen) - 1) ^ ((1 << (maxlen - plen)) - 1)
        out.append(make((value, plen)))
        i += 1 + nbytes
    return out


# ---------------------------------------------------------------------------
# Decoding with RFC 7606
# ---------------------------------------------------------------------------


def _upd(subcode: int, data: bytes = b"", reason: str = "") -> BgpError:
    return BgpError(ErrorCode.UPDATE_MESSAGE, subcode, data, reason)


def _decode_as_path(value: bytes, four_octet: bool) -> AsPath:
    width = 4 if four_octet else 2
    fmt = "!I" if four_octet else "!H"
    segs: list[tuple[int, tuple[int, ...]]] = []
    i = 0
    while i < len(value):
        if i + 2 > len(value):
            raise _upd(UpdateSubcode.MALFORMED_AS_PATH, reason="truncated AS_PATH segment header")
        seg_type, count = value[i], value[i + 1]
        if seg_type not in (AS_SET, AS_SEQUENCE, AS_CONFED_SEQUENCE, AS_CONFED_SET):
            raise _upd(UpdateSubcode.MALFORMED_AS_PATH, reason=f"bad AS_PATH segment type {seg_type}")
        if count == 0:
            raise _upd(UpdateSubcode.MALFORMED_AS_PATH, reason="empty AS_PATH segment")  # RFC 7606 §7.2
        end = i + 2 + count * width
        if end > len(value):
            raise _upd(UpdateSubcode.MALFORMED_AS_PATH, reason="AS_PATH segment overruns attribute")
        asns = tuple(struct.unpack(fmt, value[j : j + width])[0] for j in range(i + 2, end, width))
        segs.append((seg_type, asns))
        i = end
    return tuple(segs)


def _decode_mp_reach(value: bytes) -> MpReach:
    # Malformed MP_REACH_NLRI cannot be treat-as-withdrawn (the NLRI are in it):
    # RFC 7606 §7.11 asks for session reset (or AFI/SAFI disable, which we lack).
    if len(value) < 5:
        raise _upd(UpdateSubcode.OPTIONAL_ATTRIBUTE_ERROR, reason="MP_REACH_NLRI too short")
    afi, safi, nhlen = struct.unpack("!HBB", value[:4])
    if 4 + nhlen + 1 > len(value):
        raise _upd(UpdateSubcode.OPTIONAL_ATTRIBUTE_ERROR, reason="MP_REACH_NLRI next hop overruns")
    nh = value[4 : 4 + nhlen]
    hops: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    if afi == AFI_IPV6 and nhlen in (16, 32):
        hops = tuple(ipaddress.IPv6Address(nh[k : k + 16]) for k in range(0, nhlen, 16))
    elif afi == AFI_IPV4 and nhlen == 4:
        hops = (ipaddress.IPv4Address(nh),)
    elif afi == AFI_IPV4 and nhlen in (16, 32):  # RFC 8950: IPv4 NLRI with an IPv6 next hop
        hops = tuple(ipaddress.IPv6Address(nh[k : k + 16]) for k in range(0, nhlen, 16))
    elif afi in (AFI_IPV4, AFI_IPV6):
        raise _upd(UpdateSubcode.OPTIONAL_ATTRIBUTE_ERROR, reason=f"bad MP next hop length {nhlen}")
    else:
        return MpReach(afi, safi, (), ())  # a family we do not speak: keep it opaque
    nlri_bytes = value[4 + nhlen + 1 :]
    if safi != SAFI_UNICAST:
        return MpReach(afi, safi, hops, ())
    return MpReach(afi, safi, hops, tuple(decode_prefixes(nlri_bytes, afi, UpdateSubcode.OPTIONAL_ATTRIBUTE_ERROR)))


def _decode_mp_unreach(value: bytes) -> MpUnreach:
    if len(value) < 3:
        raise _upd(UpdateSubcode.OPTIONAL_ATTRIBUTE_ERROR, reason="MP_UNREACH_NLRI too short")
    afi, safi = struct.unpack("!HB", value[:3])
    if afi not in (AFI_IPV4, AFI_IPV6) or safi != SAFI_UNICAST:
        return MpUnreach(afi, safi, ())
    return MpUnreach(afi, safi, tuple(decode_prefixes(value[3:], afi, UpdateSubcode.OPTIONAL_ATTRIBUTE_ERROR)))


@dataclass
class _Decoding:
    """One Path Attributes field being decoded: the session's options and what
    has been found so far (PathAttributes keyword values, unknown optional
    attributes, RFC 7606 problems)."""

    four_octet: bool
    ibgp: bool
    values: dict[str, object] = field(default_factory=dict)
    unknown: list[RawAttribute] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)

    def problem(self, action: Action, subcode: int, attr: bytes, reason: str) -> None:
        self.problems.append(Problem(action, _upd(subcode, attr, reason)))


# One decoder per recognised attribute: (value, the whole attribute for error
# data, the decoding). It stores the value, records a problem, or raises
# BgpError for a syntactic fault that decode_attributes classifies.
_Decoder = Callable[[bytes, bytes, _Decoding], None]

_TW = Action.TREAT_AS_WITHDRAW
_MP = (AttrType.MP_REACH_NLRI, AttrType.MP_UNREACH_NLRI)


def _origin(value: bytes, whole: bytes, d: _Decoding) -> None:
    if len(value) != 1:
        d.problem(_TW, UpdateSubcode.ATTRIBUTE_LENGTH_ERROR, whole, "ORIGIN length")
    elif value[0] > ORIGIN_INCOMPLETE:
        d.problem(_TW, UpdateSubcode.INVALID_ORIGIN, whole, f"ORIGIN value {value[0]}")
    else:
        d.values["origin"] = value[0]


def _as_path(value: bytes, whole: bytes, d: _Decoding) -> None:
    d.values["as_path"] = _decode_as_path(value, d.four_octet)


def _next_hop(value: bytes, whole: bytes, d: _Decoding) -> None:
    if len(value) != 4:
        d.problem(_TW, UpdateSubcode.ATTRIBUTE_LENGTH_ERROR, whole, "NEXT_HOP length")
        return
    nh = ipaddress.IPv4Address(value)
    # RFC 4271 §6.3: a semantically wrong NEXT_HOP is logged and the route
    # ignored, without a NOTIFICATION; RFC 7606 §7.3 keeps treat-as-withdraw.
    if nh.is_unspecified or nh.is_multicast or nh == ipaddress.IPv4Address("255.255.255.255"):
        d.problem(_TW, UpdateSubcode.INVALID_NEXT_HOP, whole, f"NEXT_HOP {nh}")
        return
    d.values["next_hop"] = nh


def _fixed(value: bytes, whole: bytes, d: _Decoding, size: int, name: str, key: str, parse: Callable[[bytes], object]) -> None:
    """An attribute of exactly ``size`` octets; another length is treat-as-withdraw."""
    if len(value) != size:
        d.problem(_TW, UpdateSubcode.ATTRIBUTE_LENGTH_ERROR, whole, f"{name} length")
    else:
        d.values[key] = parse(value)


def _records(value: bytes, whole: bytes, d: _Decoding, size: int, subcode: int, name: str, key: str,
             parse: Callable[[bytes], object]) -> None:
    """A list of ``size``-octet records; a length that is not a multiple is treat-as-withdraw."""
    if len(value) % size:
        d.problem(_TW, subcode, whole, f"{name} length")
    else:
        d.values[key] = tuple(parse(value[k : k + size]) for k in range(0, len(value), size))


def _u32(value: bytes) -> int:
    return int(struct.unpack("!I", value)[0])


def _med(value: bytes, whole: bytes, d: _Decoding) -> None:
    _fixed(value, whole, d, 4, "MED", "med", _u32)


def _local_pref(value: bytes, whole: bytes, d: _Decoding) -> None:
    if not d.ibgp:
        return  # RFC 4271 §5.1.5 / RFC 7606 §7.5: ignored (discarded) from an external peer
    _fixed(value, whole, d, 4, "LOCAL_PREF", "local_pref", _u32)


def _atomic_aggregate(value: bytes, whole: bytes, d: _Decoding) -> None:
    if len(value) != 0:
        d.problem(Action.ATTRIBUTE_DISCARD, UpdateSubcode.ATTRIBUTE_LENGTH_ERROR, whole, "ATOMIC_AGGREGATE length")
    else:
        d.values["atomic_aggregate"] = True


def _aggregator_value(value: bytes, whole: bytes, d: _Decoding, width: int, key: str) -> None:
    if len(value) != width + 4:
        d.problem(Action.ATTRIBUTE_DISCARD, UpdateSubcode.ATTRIBUTE_LENGTH_ERROR, whole, "AGGREGATOR length")  # RFC 7606 §7.7
        return
    d.values[key] = (int.from_bytes(value[:width], "big"), ipaddress.IPv4Address(value[width:]))


def _aggregator(value: bytes, whole: bytes, d: _Decoding) -> None:
    _aggregator_value(value, whole, d, 4 if d.four_octet else 2, "aggregator")


def _as4_aggregator(value: bytes, whole: bytes, d: _Decoding) -> None:
    _aggregator_value(value, whole, d, 4, "as4_aggregator")


def _communities(value: bytes, whole: bytes, d: _Decoding) -> None:
    # RFC 7606 §7.8
    _records(value, whole, d, 4, UpdateSubcode.OPTIONAL_ATTRIBUTE_ERROR, "COMMUNITIES", "communities", lambda r: struct.unpack("!HH", r))


def _originator_id(value: bytes, whole: bytes, d: _Decoding) -> None:
    _fixed(value, whole, d, 4, "ORIGINATOR_ID", "originator_id", ipaddress.IPv4Address)


def _cluster_list(value: bytes, whole: bytes, d: _Decoding) -> None:
    _records(value, whole, d, 4, UpdateSubcode.ATTRIBUTE_LENGTH_ERROR, "CLUSTER_LIST", "cluster_list", ipaddress.IPv4Address)


def _as4_path(value: bytes, whole: bytes, d: _Decoding) -> None:
    d.values["as4_path"] = _decode_as_path(value, True)


def _large_communities(value: bytes, whole: bytes, d: _Decoding) -> None:
    # RFC 8092 §6
    _records(value, whole, d, 12, UpdateSubcode.OPTIONAL_ATTRIBUTE_ERROR, "LARGE_COMMUNITY", "large_communities",
             lambda r: struct.unpack("!III", r))


def _mp_reach(value: bytes, whole: bytes, d: _Decoding) -> None:
    d.values["mp_reach"] = _decode_mp_reach(value)


def _mp_unreach(value: bytes, whole: bytes, d: _Decoding) -> None:
    d.values["mp_unreach"] = _decode_mp_unreach(value)


_DECODERS: dict[int, _Decoder] = {
    AttrType.ORIGIN: _origin,
    AttrType.AS_PATH: _as_path,
    AttrType.NEXT_HOP: _next_hop,
    AttrType.MULTI_EXIT_DISC: _med,
    AttrType.LOCAL_PREF: _local_pref,
    AttrType.ATOMIC_AGGREGATE: _atomic_aggregate,
    AttrType.AGGREGATOR: _aggregator,
    AttrType.COMMUNITIES: _communities,
    AttrType.ORIGINATOR_ID: _originator_id,
    AttrType.CLUSTER_LIST: _cluster_list,
    AttrType.MP_REACH_NLRI: _mp_reach,
    AttrType.MP_UNREACH_NLRI: _mp_unreach,
    AttrType.AS4_PATH: _as4_path,
    AttrType.AS4_AGGREGATOR: _as4_aggregator,
    AttrType.LARGE_COMMUNITY: _large_communities,
}


def decode_attributes(
    data: bytes, *, four_octet: bool, ibgp: bool = True, peer_as: int | None = None
) -> tuple[PathAttributes, list[Problem]]:
    """Decode the Path Attributes field of an UPDATE.

    Raises ``BgpError`` only for faults that RFC 7606 still answers with a
    session reset; returns the others as problems.
    """
    d = _Decoding(four_octet=four_octet, ibgp=ibgp)
    for flags, code, value, whole in _split_attributes(data, d):
        if _admit(flags, code, value, whole, d):
            _decode_known(code, value, whole, d)
    _check_leftmost_as(d, peer_as)
    if d.unknown:
        d.values["unknown"] = tuple(d.unknown)
    return PathAttributes(**d.values), d.problems  # type: ignore[arg-type]


def _split_attributes(data: bytes, d: _Decoding) -> Iterator[tuple[int, int, bytes, bytes]]:
    """Each attribute as (flags, type code, value, the whole attribute); a
    header or length that overruns the field ends it with a problem."""
    i = 0
    n = len(data)
    while i < n:
        if n - i < 3 or (data[i] & FLAG_EXTENDED and n - i < 4):
            # RFC 7606 §4: too few octets for an attribute header: treat-as-withdraw;
            # the Total Attribute Length still locates the NLRI.
            d.problem(_TW, UpdateSubcode.MALFORMED_ATTRIBUTE_LIST, b"", "truncated attribute header")
            return
        flags, code = data[i], data[i + 1]
        if flags & FLAG_EXTENDED:
            length = struct.unpack("!H", data[i + 2 : i + 4])[0]
            hdr = 4
        else:
            length = data[i + 2]
            hdr = 3
        if i + hdr + length > n:
            # RFC 7606 §4: the last attribute overruns the field: treat-as-withdraw.
            d.problem(_TW, UpdateSubcode.ATTRIBUTE_LENGTH_ERROR, data[i:], "attribute overruns the attribute field")
            return
        yield flags, code, data[i + hdr : i + hdr + length], data[i : i + hdr + length]
        i += hdr + length


def _admit(flags: int, code: int, value: bytes, whole: bytes, d: _Decoding) -> bool:
    """Whether a recognised attribute goes on to its decoder: repeats, unknown
    types, wrong flags and empty values are settled here (RFC 7606 §3)."""
    if code in d.seen:
        # RFC 7606 §3 g: a repeated MP_(UN)REACH is a session reset; any other
        # repeat is discarded.
        if code in _MP:
            raise _upd(UpdateSubcode.MALFORMED_ATTRIBUTE_LIST, reason=f"attribute {code} repeated")
        return False
    d.seen.add(code)
    expected = _EXPECTED_FLAGS.get(code)
    if expected is None:
        if not flags & FLAG_OPTIONAL:
            # RFC 4271 §6.3: an unrecognised well-known attribute; RFC 7606 keeps the reset.
            raise _upd(UpdateSubcode.UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE, whole, f"unrecognized well-known attribute {code}")
        d.unknown.append(RawAttribute(flags, code, bytes(value)))
        return False
    if flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) != expected:
        if code in _MP:
            raise _upd(UpdateSubcode.ATTRIBUTE_FLAGS_ERROR, whole, f"bad flags on attribute {code}")
        # RFC 7606 §3 c: treat-as-withdraw.
        d.problem(_TW, UpdateSubcode.ATTRIBUTE_FLAGS_ERROR, whole, f"bad flags 0x{flags:02x} on attribute {code}")
        return False
    if len(value) == 0 and code not in (AttrType.AS_PATH, AttrType.ATOMIC_AGGREGATE):
        # RFC 7606 §3 e (zero-length attributes that may not be empty).
        if code in _MP:
            raise _upd(UpdateSubcode.ATTRIBUTE_LENGTH_ERROR, whole, f"empty attribute {code}")
        discard = code in (AttrType.AGGREGATOR, AttrType.AS4_PATH, AttrType.AS4_AGGREGATOR)
        d.problem(Action.ATTRIBUTE_DISCARD if discard else _TW, UpdateSubcode.ATTRIBUTE_LENGTH_ERROR, whole, f"empty attribute {code}")
        return False
    return True


def _decode_known(code: int, value: bytes, whole: bytes, d: _Decoding) -> None:
    try:
        _DECODERS[code](value, whole, d)
    except BgpError as exc:
        if code in _MP:
            raise
        # A syntactic fault inside AS_PATH (RFC 7606 §7.2): treat-as-withdraw;
        # in AS4_PATH (RFC 6793 §6): discard the attribute.
        act = Action.ATTRIBUTE_DISCARD if code == AttrType.AS4_PATH else _TW
        d.problems.append(Problem(act, BgpError(exc.code, exc.subcode, whole, exc.reason)))


def _check_leftmost_as(d: _Decoding, peer_as: int | None) -> None:
    # eBGP: the leftmost AS must be the peer's (RFC 4271 §6.3, RFC 7606 §7.2 treat-as-withdraw).
    as_path = d.values.get("as_path")
    if not d.ibgp and peer_as is not None and isinstance(as_path, tuple) and as_path:
        first_type, first_asns = as_path[0]
        leftmost_ok = first_type == AS_SEQUENCE and (first_asns[0] == peer_as or (not d.four_octet and first_asns[0] == AS_TRANS))
        if not leftmost_ok:
            d.problem(_TW, UpdateSubcode.MALFORMED_AS_PATH, b"", "leftmost AS is not the peer's")
