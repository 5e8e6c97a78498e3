"""BFD Control packet codec: RFC 5880 §4.1 layout and every §6.8.6 packet rule."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbd.bfd.packet import (
    AuthSection,
    AuthType,
    BfdPacketError,
    ControlPacket,
    Diag,
    SessionState,
    decode,
    encode,
)

U32 = st.integers(min_value=0, max_value=0xFFFFFFFF)


def base(**kw: object) -> ControlPacket:
    values: dict = dict(state=SessionState.UP, my_discriminator=7, your_discriminator=9, detect_mult=3,
                        desired_min_tx=100_000, required_min_rx=100_000)
    values.update(kw)
    return ControlPacket(**values)


def test_layout_matches_rfc_5880_section_4_1() -> None:
    raw = encode(base(diag=Diag.NEIGHBOR_SIGNALED_DOWN, poll=True))
    assert len(raw) == 24
    assert raw[0] == (1 << 5) | 3  # version 1, diag 3
    assert raw[1] == (3 << 6) | (1 << 5)  # state Up, P bit
    assert raw[2] == 3 and raw[3] == 24
    assert struct.unpack("!IIIII", raw[4:]) == (7, 9, 100_000, 100_000, 0)


@st.composite
def packets(draw: st.DrawFn) -> ControlPacket:
    state = draw(st.sampled_from(list(SessionState)))
    your = draw(U32) if state in (SessionState.DOWN, SessionState.ADMIN_DOWN) else draw(st.integers(1, 0xFFFFFFFF))
    poll = draw(st.booleans())
    auth = None
    if draw(st.booleans()):
        auth = AuthSection(draw(st.sampled_from([AuthType.KEYED_SHA1, AuthType.METICULOUS_KEYED_SHA1])),
                           draw(st.integers(0, 255)), draw(U32), draw(st.binary(min_size=20, max_size=20)))
    return ControlPacket(
        state=state, my_discriminator=draw(st.integers(1, 0xFFFFFFFF)), your_discriminator=your,
        diag=draw(st.sampled_from(list(Diag))), detect_mult=draw(st.integers(1, 255)),
        desired_min_tx=draw(U32), required_min_rx=draw(U32), required_min_echo_rx=draw(U32),
        poll=poll, final=not poll and draw(st.booleans()), control_plane_independent=draw(st.booleans()),
        demand=draw(st.booleans()), auth=auth,
    )


@given(packets())
@settings(max_examples=300, deadline=None)
def test_round_trip(pkt: ControlPacket) -> None:
    assert decode(encode(pkt)) == pkt


@given(st.binary(max_size=80))
@settings(max_examples=2000, deadline=None)
def test_fuzz_only_bfd_packet_error(data: bytes) -> None:
    try:
        decode(data)
    except BfdPacketError:
        pass


@given(packets(), st.integers(0, 60), st.integers(0, 255))
@settings(max_examples=1000, deadline=None)
def test_fuzz_mutations(pkt: ControlPacket, position: int, value: int) -> None:
    raw = bytearray(encode(pkt))
    if position < len(raw):
        raw[position] = value
    try:
        decode(bytes(raw[: position + 1] if value % 7 == 0 else raw))
    except BfdPacketError:
        pass


# One test per §6.8.6 packet rule -------------------------------------------------


def test_version_other_than_1_is_discarded() -> None:
    with pytest.raises(BfdPacketError, match="version"):
        decode(encode(base(version=2)))


def test_shorter_than_header_is_discarded() -> None:
    with pytest.raises(BfdPacketError, match="shorter"):
        decode(encode(base())[:23])


def test_length_field_below_minimum_is_discarded() -> None:
    raw = bytearray(encode(base()))
    raw[3] = 20
    with pytest.raises(BfdPacketError, match="less than the minimum 24"):
        decode(bytes(raw))


def test_length_below_26_with_a_bit_is_discarded() -> None:
    raw = bytearray(encode(base()))
    raw[1] |= 0x04
    with pytest.raises(BfdPacketError, match="minimum 26"):
        decode(bytes(raw))


def test_length_greater_than_payload_is_discarded() -> None:
    raw = bytearray(encode(base()))
    raw[3] = 30
    with pytest.raises(BfdPacketError, match="greater than the payload"):
        decode(bytes(raw))


def test_detect_mult_zero_is_discarded() -> None:
    with pytest.raises(BfdPacketError, match="Detect Mult"):
        decode(encode(base(detect_mult=0)))


def test_multipoint_bit_is_discarded() -> None:
    with pytest.raises(BfdPacketError, match="Multipoint"):
        decode(encode(base(multipoint=True)))


def test_my_discriminator_zero_is_discarded() -> None:
    with pytest.raises(BfdPacketError, match="My Discriminator"):
        decode(encode(base(my_discriminator=0)))


@pytest.mark.parametrize("state", [SessionState.INIT, SessionState.UP])
def test_your_discriminator_zero_outside_down_is_discarded(state: SessionState) -> None:
    with pytest.raises(BfdPacketError, match="Your Discriminator is zero"):
        decode(encode(base(state=state, your_discriminator=0)))


@pytest.mark.parametrize("state", [SessionState.DOWN, SessionState.ADMIN_DOWN])
def test_your_discriminator_zero_in_down_is_accepted(state: SessionState) -> None:
    assert decode(encode(base(state=state, your_discriminator=0))).your_discriminator == 0


def test_trailing_octets_are_not_read_as_a_packet() -> None:
    # The Length field says 24: octets after it (an UDP payload longer than the packet) are ignored.
    assert decode(encode(base()) + b"\0\0\0").my_discriminator == 7


def test_auth_len_mismatch_is_discarded() -> None:
    raw = bytearray(encode(base(auth=AuthSection(AuthType.KEYED_SHA1, 1, 5, b"x" * 20))))
    raw[25] = 27
    with pytest.raises(BfdPacketError, match="Auth Len"):
        decode(bytes(raw))


def test_sha1_auth_len_must_be_28() -> None:
    pkt = base(auth=AuthSection(AuthType.KEYED_SHA1, 1, 5, b"x" * 16))
    with pytest.raises(BfdPacketError, match="keyed SHA1"):
        decode(encode(pkt))


def test_unknown_diag_is_kept_as_a_number() -> None:
    raw = bytearray(encode(base()))
    raw[0] = (1 << 5) | 20
    assert decode(bytes(raw)).diag == 20
