"""BGP-4 message codec (RFC 4271 §4), sans-IO.

Messages: OPEN with capabilities (RFC 5492: multiprotocol RFC 4760, route
refresh RFC 2918, enhanced route refresh RFC 7313, graceful restart RFC 4724,
four-octet AS RFC 6793), UPDATE (attributes in :mod:`lbd.bgp.attributes`),
NOTIFICATION, KEEPALIVE and ROUTE-REFRESH (with the RFC 7313 BoRR/EoRR
subtypes). :class:`MessageReader` frames a byte stream. Every decoding fault
raises :class:`BgpError` carrying the NOTIFICATION to send.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Iterator, Union

from lbd.bgp.attributes import (
    AFI_IPV4,
    AFI_IPV6,  # re-exported: codec users name families from here
    AS_TRANS,
    SAFI_UNICAST,
    Action,
    PathAttributes,
    Problem,
    encode_attributes,
    encode_prefixes,
    strongest,
)
from lbd.bgp.attribute_decoding import decode_attributes, decode_prefixes
from lbd.bgp.errors import (
    BgpError,
    ErrorCode,
    HeaderSubcode,
    OpenSubcode,
    RouteRefreshSubcode,
    UpdateSubcode,
)
from lbd.model import IPNetwork

MARKER = b"\xff" * 16
HEADER_LEN = 19
MAX_MESSAGE_LEN = 4096  # RFC 4271 §4.1 (RFC 8654 extended messages not negotiated)
BGP_VERSION = 4


class MsgType(enum.IntEnum):
    OPEN = 1
    UPDATE = 2
    NOTIFICATION = 3
    KEEPALIVE = 4
    ROUTE_REFRESH = 5


class CapCode(enum.IntEnum):
    MULTIPROTOCOL = 1
    ROUTE_REFRESH = 2
    GRACEFUL_RESTART = 64
    FOUR_OCTET_AS = 65
    ENHANCED_ROUTE_REFRESH = 70


# Minimum (and for KEEPALIVE exact) lengths per type, RFC 4271 §6.1.
_MIN_LEN = {MsgType.OPEN: 29, MsgType.UPDATE: 23, MsgType.NOTIFICATION: 21, MsgType.KEEPALIVE: 19}

GR_RESTART_STATE = 0x8  # the R bit (RFC 4724 §3), top bit of the 4-bit flags
GR_NOTIFICATION = 0x4  # the N bit (RFC 8538), not used by lbd
GR_AFI_FORWARDING = 0x80  # per-AFI F bit

RR_NORMAL = 0
RR_BORR = 1  # RFC 7313 §4
RR_EORR = 2


# ---------------------------------------------------------------------------
# Capabilities
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiprotocolCap:
    afi: int
    safi: int


@dataclass(frozen=True)
class RouteRefreshCap:
    pass


@dataclass(frozen=True)
class EnhancedRouteRefreshCap:
    pass


@dataclass(frozen=True)
class FourOctetAsCap:
    asn: int


@dataclass(frozen=True)
class GracefulRestartCap:
    flags: int  # 4 bits: R (0x8), N (0x4)
    restart_time: int  # 12 bits, seconds
    families: tuple[tuple[int, int, int], ...] = ()  # (afi, safi, flags with F = 0x80)

    @property
    def restarting(self) -> bool:
        return bool(self.flags & GR_RESTART_STATE)


@dataclass(frozen=True)
class UnknownCap:
    code: int
    value: bytes


Capability = Union[MultiprotocolCap, RouteRefreshCap, EnhancedRouteRefreshCap, FourOctetAsCap, GracefulRestartCap, UnknownCap]


def encode_capability(cap: Capability) -> bytes:
    if isinstance(cap, MultiprotocolCap):
        code, value = CapCode.MULTIPROTOCOL, struct.pack("!HBB", cap.afi, 0, cap.safi)
    elif isinstance(cap, RouteRefreshCap):
        code, value = CapCode.ROUTE_REFRESH, b""
    elif isinstance(cap, EnhancedRouteRefreshCap):
        code, value = CapCode.ENHANCED_ROUTE_REFRESH, b""
    elif isinstance(cap, FourOctetAsCap):
        code, value = CapCode.FOUR_OCTET_AS, struct.pack("!I", cap.asn)
    elif isinstance(cap, GracefulRestartCap):
        head = ((cap.flags & 0xF) << 12) | (cap.restart_time & 0xFFF)
        value = struct.pack("!H", head) + b"".join(struct.pack("!HBB", a, s, f) for a, s, f in cap.families)
        code = CapCode.GRACEFUL_RESTART
    else:
        code, value = cap.code, cap.value
    return struct.pack("!BB", code, len(value)) + value


def _open_err(subcode: int, reason: str, data: bytes = b"") -> BgpError:
    return BgpError(ErrorCode.OPEN_MESSAGE, subcode, data, reason)


def decode_capability(code: int, value: bytes) -> Capability:
    try:
        if code == CapCode.MULTIPROTOCOL and len(value) == 4:
            afi, _reserved, safi = struct.unpack("!HBB", value)
            return MultiprotocolCap(afi, safi)
        if code == CapCode.ROUTE_REFRESH and not value:
            return RouteRefreshCap()
        if code == CapCode.ENHANCED_ROUTE_REFRESH and not value:
            return EnhancedRouteRefreshCap()
        if code == CapCode.FOUR_OCTET_AS and len(value) == 4:
            return FourOctetAsCap(struct.unpack("!I", value)[0])
        if code == CapCode.GRACEFUL_RESTART and len(value) >= 2 and (len(value) - 2) % 4 == 0:
            head = struct.unpack("!H", value[:2])[0]
            fams = tuple(struct.unpack("!HBB", value[k : k + 4]) for k in range(2, len(value), 4))
            return GracefulRestartCap(head >> 12, head & 0xFFF, fams)
    except struct.error as exc:  # pragma: no cover - lengths are checked above
        raise _open_err(OpenSubcode.UNSPECIFIC, f"capability {code}: {exc}") from None
    if code in (CapCode.MULTIPROTOCOL, CapCode.ROUTE_REFRESH, CapCode.ENHANCED_ROUTE_REFRESH, CapCode.FOUR_OCTET_AS, CapCode.GRACEFUL_RESTART):
        # A known capability with a wrong length. RFC 5492 defines no subcode;
        # 2/0 (OPEN message error, unspecific) is what FRR and BIRD send.
        raise _open_err(OpenSubcode.UNSPECIFIC, f"capability {code} has bad length {len(value)}")
    return UnknownCap(code, bytes(value))


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Open:
    my_as: int  # the 2-octet field (AS_TRANS when the true AS is above 65535)
    hold_time: int
    router_id: ipaddress.IPv4Address
    capabilities: tuple[Capability, ...] = ()
    version: int = BGP_VERSION

    @property
    def asn(self) -> int:
        """The speaker's true AS: the four-octet capability's if present (RFC 6793 §3)."""
        for cap in self.capabilities:
            if isinstance(cap, FourOctetAsCap):
                return cap.asn
        return self.my_as

    def capability(self, kind: type) -> Capability | None:
        for cap in self.capabilities:
            if isinstance(cap, kind):
                return cap
        return None

    def families(self) -> tuple[tuple[int, int], ...]:
        return tuple((c.afi, c.safi) for c in self.capabilities if isinstance(c, MultiprotocolCap))

    @staticmethod
    def for_asn(asn: int, hold_time: int, router_id: ipaddress.IPv4Address, capabilities: tuple[Capability, ...]) -> "Open":
        caps = tuple(c for c in capabilities if not isinstance(c, FourOctetAsCap)) + (FourOctetAsCap(asn),)
        return Open(asn if asn <= 0xFFFF else AS_TRANS, hold_time, router_id, caps)


@dataclass(frozen=True)
class Update:
    withdrawn: tuple[IPNetwork, ...] = ()
    attributes: PathAttributes = field(default_factory=PathAttributes)
    nlri: tuple[IPNetwork, ...] = ()
    problems: tuple[Problem, ...] = ()

    @property
    def treat_as_withdraw(self) -> bool:
        return strongest(self.problems) == Action.TREAT_AS_WITHDRAW

    def end_of_rib(self) -> tuple[int, int] | None:
        """The (AFI, SAFI) this UPDATE marks End-of-RIB for (RFC 4724 §2), else None."""
        if self.withdrawn or self.nlri or self.problems:
            return None
        if self.attributes.is_empty():
            return (AFI_IPV4, SAFI_UNICAST)
        un = self.attributes.mp_unreach
        if un is not None and not un.nlri and PathAttributes(mp_unreach=un) == self.attributes:
            return (un.afi, un.safi)
        return None

    def announced(self) -> tuple[IPNetwork, ...]:
        """Prefixes this UPDATE makes reachable (none when treat-as-withdraw)."""
        if self.treat_as_withdraw:
            return ()
        mp = self.attributes.mp_reach
        return self.nlri + (mp.nlri if mp else ())

    def withdrawn_all(self) -> tuple[IPNetwork, ...]:
        mp_un = self.attributes.mp_unreach
        out = self.withdrawn + (mp_un.nlri if mp_un else ())
        if self.treat_as_withdraw:
            mp = self.attributes.mp_reach
            out += self.nlri + (mp.nlri if mp else ())
        return out


@dataclass(frozen=True)
class Notification:
    code: int
    subcode: int
    data: bytes = b""


@dataclass(frozen=True)
class Keepalive:
    pass


@dataclass(frozen=True)
class RouteRefresh:
    afi: int
    safi: int
    subtype: int = RR_NORMAL  # RFC 7313: 0 normal, 1 BoRR, 2 EoRR


Message = Union[Open, Update, Notification, Keepalive, RouteRefresh]


def frame(msg_type: int, body: bytes) -> bytes:
    return MARKER + struct.pack("!HB", HEADER_LEN + len(body), msg_type) + body


KEEPALIVE_BYTES = frame(MsgType.KEEPALIVE, b"")


def encode_open(msg: Open) -> bytes:
    # One Capabilities optional parameter (type 2) per capability is the most
    # widely accepted form (RFC 5492 §4 permits both).
    encoded = [encode_capability(c) for c in msg.capabilities]
    params = b"".join(struct.pack("!BB", 2, len(c)) + c for c in encoded)
    if len(params) > 255:
        raise ValueError("optional parameters exceed 255 octets")
    body = struct.pack("!BHH4sB", msg.version, msg.my_as, msg.hold_time, msg.router_id.packed, len(params)) + params
    return frame(MsgType.OPEN, body)


def encode_notification(msg: Notification) -> bytes:
    return frame(MsgType.NOTIFICATION, struct.pack("!BB", msg.code, msg.subcode) + msg.data)


def encode_keepalive() -> bytes:
    return KEEPALIVE_BYTES


def encode_route_refresh(msg: RouteRefresh) -> bytes:
    return frame(MsgType.ROUTE_REFRESH, struct.pack("!HBB", msg.afi, msg.subtype, msg.safi))


def encode_update(msg: Update, four_octet: bool = True) -> bytes:
    """Encode one UPDATE as given (no splitting: see :mod:`lbd.bgp.packing` for that)."""
    withdrawn = encode_prefixes(msg.withdrawn)
    attrs = encode_attributes(msg.attributes, four_octet)
    body = struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + encode_prefixes(msg.nlri)
    if HEADER_LEN + len(body) > MAX_MESSAGE_LEN:
        raise ValueError("UPDATE exceeds 4096 octets")
    return frame(MsgType.UPDATE, body)


def end_of_rib(afi: int, safi: int = SAFI_UNICAST) -> bytes:
    """RFC 4724 §2: an empty UPDATE for IPv4 unicast, an empty MP_UNREACH otherwise."""
    if (afi, safi) == (AFI_IPV4, SAFI_UNICAST):
        return frame(MsgType.UPDATE, b"\x00\x00\x00\x00")
    attr = struct.pack("!BBBHB", 0x80, 15, 3, afi, safi)
    return frame(MsgType.UPDATE, b"\x00\x00" + struct.pack("!H", len(attr)) + attr)


def encode(msg: Message, four_octet: bool = True) -> bytes:
    if isinstance(msg, Open):
        return encode_open(msg)
    if isinstance(msg, Update):
        return encode_update(msg, four_octet)
    if isinstance(msg, Notification):
        return encode_notification(msg)
    if isinstance(msg, Keepalive):
        return KEEPALIVE_BYTES
    return encode_route_refresh(msg)


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def decode_open(body: bytes) -> Open:
    """Decode an OPEN body; syntactic faults raise with the RFC 4271 §6.2 code."""
    if len(body) < 10:
        raise BgpError(ErrorCode.MESSAGE_HEADER, HeaderSubcode.BAD_MESSAGE_LENGTH, struct.pack("!H", HEADER_LEN + len(body)))
    version, my_as, hold, rid, plen = struct.unpack("!BHH4sB", body[:10])
    if version != BGP_VERSION:
        # Data: the largest locally supported version (RFC 4271 §6.2).
        raise _open_err(OpenSubcode.UNSUPPORTED_VERSION, f"version {version}", struct.pack("!H", BGP_VERSION))
    params = body[10:]
    caps: list[Capability] = []
    ext = False
    if plen == 255 and params[:1] == b"\xff":
        # RFC 9072 extended optional parameters: 255, 255, 2-octet length, 2-octet param lengths.
        if len(params) < 3:
            raise _open_err(OpenSubcode.UNSPECIFIC, "truncated extended optional parameters")
        plen = struct.unpack("!H", params[1:3])[0]
        params = params[3:]
        ext = True
    if plen != len(params):
        raise _open_err(OpenSubcode.UNSPECIFIC, f"optional parameters length {plen} != {len(params)}")
    i = 0
    hdr = 3 if ext else 2
    while i < len(params):
        if i + hdr > len(params):
            raise _open_err(OpenSubcode.UNSPECIFIC, "truncated optional parameter")
        ptype = params[i]
        length = struct.unpack("!H", params[i + 1 : i + 3])[0] if ext else params[i + 1]
        value = params[i + hdr : i + hdr + length]
        if len(value) != length:
            raise _open_err(OpenSubcode.UNSPECIFIC, "optional parameter overruns")
        i += hdr + length
        if ptype != 2:
            raise _open_err(OpenSubcode.UNSUPPORTED_OPTIONAL_PARAMETER, f"optional parameter type {ptype}")
        j = 0
        while j < len(value):
            if j + 2 > len(value):
                raise _open_err(OpenSubcode.UNSPECIFIC, "truncated capability")
            code, clen = value[j], value[j + 1]
            cval = value[j + 2 : j + 2 + clen]
            if len(cval) != clen:
                raise _open_err(OpenSubcode.UNSPECIFIC, "capability overruns its parameter")
            caps.append(decode_capability(code, cval))
            j += 2 + clen
    return Open(my_as, hold, ipaddress.IPv4Address(rid), tuple(caps), version)


def decode_update(body: bytes, *, four_octet: bool = True, ibgp: bool = True, peer_as: int | None = None, strict: bool = False) -> Update:
    """Decode an UPDATE body with RFC 7606 error handling.

    Faults that still need a session reset raise ``BgpError``; the others come
    back in ``Update.problems``. With ``strict`` the first fault raises with its
    RFC 4271 §6.3 code instead (the classic behaviour, used by tests).
    """
    n = len(body)
    if n < 4:
        raise BgpError(ErrorCode.MESSAGE_HEADER, HeaderSubcode.BAD_MESSAGE_LENGTH, struct.pack("!H", HEADER_LEN + n))
    wlen = struct.unpack("!H", body[:2])[0]
    if 2 + wlen + 2 > n:
        # The lengths conflict with the message itself: nothing can be located,
        # so RFC 7606 §4 leaves this a session reset (RFC 4271 §6.3, 3/1).
        raise BgpError(ErrorCode.UPDATE_MESSAGE, UpdateSubcode.MALFORMED_ATTRIBUTE_LIST, reason="withdrawn routes length overruns")
    alen = struct.unpack("!H", body[2 + wlen : 4 + wlen])[0]
    if 4 + wlen + alen > n:
        raise BgpError(ErrorCode.UPDATE_MESSAGE, UpdateSubcode.MALFORMED_ATTRIBUTE_LIST, reason="total attribute length overruns")
    # RFC 7606 §5.3: a syntactically wrong NLRI or withdrawn field is a session reset.
    withdrawn = decode_prefixes(body[2 : 2 + wlen], AFI_IPV4)
    attrs, problems = decode_attributes(body[4 + wlen : 4 + wlen + alen], four_octet=four_octet, ibgp=ibgp, peer_as=peer_as)
    nlri = decode_prefixes(body[4 + wlen + alen :], AFI_IPV4)
    # RFC 4271 §6.3 / RFC 7606 §3 d: mandatory attributes when the UPDATE carries NLRI.
    if nlri or (attrs.mp_reach is not None and attrs.mp_reach.nlri):
        # An attribute that was present but malformed already has its problem.
        failed = {p.error.data[1] for p in problems if len(p.error.data) > 1}
        required = [1, 2] + ([3] if nlri else [])
        present = {1: attrs.origin is not None, 2: attrs.as_path is not None, 3: attrs.next_hop is not None}
        for code in required:
            if not present[code] and code not in failed:
                problems.append(
                    Problem(
                        Action.TREAT_AS_WITHDRAW,
                        BgpError(ErrorCode.UPDATE_MESSAGE, UpdateSubcode.MISSING_WELL_KNOWN_ATTRIBUTE, bytes((code,)), f"missing attribute {code}"),
                    )
                )
    if strict and problems:
        raise problems[0].error
    return Update(tuple(withdrawn), attrs, tuple(nlri), tuple(problems))


def decode_notification(body: bytes) -> Notification:
    if len(body) < 2:
        raise BgpError(ErrorCode.MESSAGE_HEADER, HeaderSubcode.BAD_MESSAGE_LENGTH, struct.pack("!H", HEADER_LEN + len(body)))
    return Notification(body[0], body[1], bytes(body[2:]))


def decode_route_refresh(body: bytes) -> RouteRefresh:
    if len(body) != 4:
        # RFC 7313 §5: Invalid Message Length, data = the complete message.
        raise BgpError(ErrorCode.ROUTE_REFRESH, RouteRefreshSubcode.INVALID_MESSAGE_LENGTH, frame(MsgType.ROUTE_REFRESH, body))
    afi, subtype, safi = struct.unpack("!HBB", body)
    return RouteRefresh(afi, safi, subtype)


def decode_body(msg_type: int, body: bytes, *, four_octet: bool = True, ibgp: bool = True, peer_as: int | None = None) -> Message:
    if msg_type == MsgType.OPEN:
        return decode_open(body)
    if msg_type == MsgType.UPDATE:
        return decode_update(body, four_octet=four_octet, ibgp=ibgp, peer_as=peer_as)
    if msg_type == MsgType.NOTIFICATION:
        return decode_notification(body)
    if msg_type == MsgType.KEEPALIVE:
        return Keepalive()
    if msg_type == MsgType.ROUTE_REFRESH:
        return decode_route_refresh(body)
    raise BgpError(ErrorCode.MESSAGE_HEADER, HeaderSubcode.BAD_MESSAGE_TYPE, bytes((msg_type & 0xFF,)))


def check_header(header: bytes) -> tuple[int, int]:
    """Validate a 19-octet header (RFC 4271 §6.1); return (length, type)."""
    if header[:16] != MARKER:
        raise BgpError(ErrorCode.MESSAGE_HEADER, HeaderSubcode.CONNECTION_NOT_SYNCHRONIZED)
    length, msg_type = struct.unpack("!HB", header[16:19])
    bad_len = BgpError(ErrorCode.MESSAGE_HEADER, HeaderSubcode.BAD_MESSAGE_LENGTH, header[16:18])
    if length < HEADER_LEN or length > MAX_MESSAGE_LEN:
        raise bad_len
    if msg_type not in (1, 2, 3, 4, 5):
        raise BgpError(ErrorCode.MESSAGE_HEADER, HeaderSubcode.BAD_MESSAGE_TYPE, bytes((msg_type,)))
    minimum = _MIN_LEN.get(MsgType(msg_type))
    if minimum is not None and length < minimum:
        raise bad_len
    if msg_type == MsgType.KEEPALIVE and length != HEADER_LEN:
        raise bad_len
    return length, msg_type


class MessageReader:
    """Frames a TCP byte stream into (type, body) pairs."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        return self

    def __next__(self) -> tuple[int, bytes]:
        buf = self._buf
        if len(buf) < HEADER_LEN:
            raise StopIteration
        length, msg_type = check_header(bytes(buf[:HEADER_LEN]))
        if len(buf) < length:
            raise StopIteration
        body = bytes(buf[HEADER_LEN:length])
        del buf[:length]
        return msg_type, body

    def pending(self) -> int:
        return len(self._buf)


def decode_message(data: bytes, *, four_octet: bool = True, ibgp: bool = True) -> Message:
    """Decode exactly one whole message (header included)."""
    if len(data) < HEADER_LEN:
        raise BgpError(ErrorCode.MESSAGE_HEADER, HeaderSubcode.BAD_MESSAGE_LENGTH, struct.pack("!H", len(data) & 0xFFFF))
    length, msg_type = check_header(data[:HEADER_LEN])
    if length != len(data):
        raise BgpError(ErrorCode.MESSAGE_HEADER, HeaderSubcode.BAD_MESSAGE_LENGTH, data[16:18])
    return decode_body(msg_type, data[HEADER_LEN:], four_octet=four_octet, ibgp=ibgp)


def iter_messages(data: bytes, **kwargs: bool) -> Iterator[Message]:
    reader = MessageReader()
    reader.feed(data)
    for msg_type, body in reader:
        yield decode_body(msg_type, body, **kwargs)  # type: ignore[arg-type]

