"""BFD Control packet codec (RFC 5880 §4.1, §4.4; validation of §6.8.6).

``decode`` applies every reception rule of §6.8.6 that the packet alone can
decide and raises :class:`BfdPacketError` (one ValueError subclass) for a
packet that must be discarded. The rules that need the session (demux by Your
Discriminator, authentication) are in :mod:`lbd.bfd.session`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

VERSION = 1
HEADER_LEN = 24
SHA1_AUTH_LEN = 28  # §4.4: type, len, key id, reserved, sequence, 20-octet hash
MAX_PACKET = 24 + 255  # the Auth Len octet bounds the section
_HEADER = struct.Struct("!BBBBIIIII")


class BfdPacketError(ValueError):
    """A received BFD Control packet that §6.8.6 says to discard."""


class SessionState(enum.IntEnum):
    """§4.1 State (Sta)."""

    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3

    @property
    def label(self) -> str:
        return {0: "AdminDown", 1: "Down", 2: "Init", 3: "Up"}[self.value]


class Diag(enum.IntEnum):
    """§4.1 Diagnostic codes."""

    NONE = 0
    CONTROL_DETECTION_TIME_EXPIRED = 1
    ECHO_FUNCTION_FAILED = 2
    NEIGHBOR_SIGNALED_DOWN = 3
    FORWARDING_PLANE_RESET = 4
    PATH_DOWN = 5
    CONCATENATED_PATH_DOWN = 6
    ADMINISTRATIVELY_DOWN = 7
    REVERSE_CONCATENATED_PATH_DOWN = 8

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


class AuthType(enum.IntEnum):
    """§4.1 Auth Type."""

    RESERVED = 0
    SIMPLE_PASSWORD = 1
    KEYED_MD5 = 2
    METICULOUS_KEYED_MD5 = 3
    KEYED_SHA1 = 4
    METICULOUS_KEYED_SHA1 = 5


@dataclass(frozen=True)
class AuthSection:
    """§4.2-4.4. For SHA1 types ``digest`` is the 20-octet hash and ``sequence``
    the sequence number; for others ``digest`` holds the raw remainder."""

    auth_type: int
    key_id: int
    sequence: int = 0
    digest: bytes = b""


@dataclass(frozen=True)
class ControlPacket:
    state: SessionState
    my_discriminator: int
    your_discriminator: int = 0
    diag: Diag | int = Diag.NONE
    detect_mult: int = 3
    desired_min_tx: int = 1_000_000  # microseconds, as on the wire
    required_min_rx: int = 1_000_000
    required_min_echo_rx: int = 0
    poll: bool = False
    final: bool = False
    control_plane_independent: bool = False
    demand: bool = False
    multipoint: bool = False
    auth: AuthSection | None = None
    version: int = VERSION


def encode(pkt: ControlPacket) -> bytes:
    """The packet on the wire; an auth section is written as given (see
    :func:`lbd.bfd.auth.sign` for computing the digest)."""
    auth = b""
    if pkt.auth is not None:
        a = pkt.auth
        if a.auth_type in (AuthType.KEYED_SHA1, AuthType.METICULOUS_KEYED_SHA1,
                           AuthType.KEYED_MD5, AuthType.METICULOUS_KEYED_MD5):
            body = struct.pack("!BxI", a.key_id, a.sequence) + a.digest
        else:
            body = struct.pack("!B", a.key_id) + a.digest
        auth = struct.pack("!BB", a.auth_type, 2 + len(body)) + body
    flags = (
        (pkt.state & 0x3) << 6
        | pkt.poll << 5
        | pkt.final << 4
        | pkt.control_plane_independent << 3
        | (pkt.auth is not None) << 2
        | pkt.demand << 1
        | pkt.multipoint
    )
    head = _HEADER.pack(
        (pkt.version & 0x7) << 5 | (int(pkt.diag) & 0x1F), flags, pkt.detect_mult, HEADER_LEN + len(auth),
        pkt.my_discriminator, pkt.your_discriminator, pkt.desired_min_tx, pkt.required_min_rx,
        pkt.required_min_echo_rx,
    )
    return head + auth


def decode(data: bytes) -> ControlPacket:
    """Parse and validate a received packet (RFC 5880 §6.8.6, packet rules)."""
    if len(data) < HEADER_LEN:
        raise BfdPacketError(f"packet of {len(data)} octets is shorter than the {HEADER_LEN}-octet header")
    vd, flags, mult, length, my, your, tx, rx, echo = _HEADER.unpack_from(data)
    version = vd >> 5
    if version != VERSION:
        raise BfdPacketError(f"version {version} is not 1")
    a_bit = bool(flags & 0x04)
    minimum = HEADER_LEN + 2 if a_bit else HEADER_LEN
    if length < minimum:
        raise BfdPacketError(f"Length {length} is less than the minimum {minimum}")
    if length > len(data):
        raise BfdPacketError(f"Length {length} is greater than the payload ({len(data)} octets)")
    if mult == 0:
        raise BfdPacketError("Detect Mult is zero")
    if flags & 0x01:
        raise BfdPacketError("Multipoint (M) bit is set")
    if my == 0:
        raise BfdPacketError("My Discriminator is zero")
    state = SessionState(flags >> 6)
    if your == 0 and state not in (SessionState.DOWN, SessionState.ADMIN_DOWN):
        raise BfdPacketError(f"Your Discriminator is zero in state {state.label}")
    auth = None
    if a_bit:
        auth = _decode_auth(data[HEADER_LEN:length])
    diag_code = vd & 0x1F
    diag: Diag | int = Diag(diag_code) if diag_code in Diag._value2member_map_ else diag_code
    return ControlPacket(
        state=state, my_discriminator=my, your_discriminator=your, diag=diag, detect_mult=mult,
        desired_min_tx=tx, required_min_rx=rx, required_min_echo_rx=echo,
        poll=bool(flags & 0x20), final=bool(flags & 0x10), control_plane_independent=bool(flags & 0x08),
        demand=bool(flags & 0x02), multipoint=False, auth=auth, version=version,
    )


def _decode_auth(section: bytes) -> AuthSection:
    auth_type, auth_len = section[0], section[1]
    if auth_len != len(section):
        raise BfdPacketError(f"Auth Len {auth_len} does not match the {len(section)} octets after the header")
    if auth_type in (AuthType.KEYED_SHA1, AuthType.METICULOUS_KEYED_SHA1):
        if auth_len != SHA1_AUTH_LEN:
            raise BfdPacketError(f"Auth Len {auth_len} for keyed SHA1 is not {SHA1_AUTH_LEN} (§4.4)")
        key_id, seq = struct.unpack_from("!BxI", section, 2)
        return AuthSection(auth_type, key_id, seq, bytes(section[8:28]))
    if auth_type in (AuthType.KEYED_MD5, AuthType.METICULOUS_KEYED_MD5):
        if auth_len != 24:
            raise BfdPacketError(f"Auth Len {auth_len} for keyed MD5 is not 24 (§4.3)")
        key_id, seq = struct.unpack_from("!BxI", section, 2)
        return AuthSection(auth_type, key_id, seq, bytes(section[8:24]))
    if auth_type == AuthType.SIMPLE_PASSWORD:
        if not 4 <= auth_len <= 19:
            raise BfdPacketError(f"Auth Len {auth_len} for a simple password is outside 4..19 (§4.2)")
        return AuthSection(auth_type, section[2], 0, bytes(section[3:]))
    if auth_len < 3:
        raise BfdPacketError(f"Auth Len {auth_len} is too short")
    return AuthSection(auth_type, section[2], 0, bytes(section[3:]))
