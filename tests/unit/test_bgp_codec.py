"""BGP codec: round-trips of every message and attribute, and the NOTIFICATION
code/subcode of each malformed form (RFC 4271 §6, RFC 7606, RFC 7313)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbd.bgp import codec
from lbd.bgp.attributes import (
    AFI_IPV4,
    AFI_IPV6,
    AS_SEQUENCE,
    AS_SET,
    AS_TRANS,
    SAFI_UNICAST,
    Action,
    MpReach,
    MpUnreach,
    PathAttributes,
    RawAttribute,
    encode_as_path,
    encode_prefixes,
)
from lbd.bgp.attribute_decoding import decode_prefixes
from lbd.bgp.codec import (
    EnhancedRouteRefreshCap,
    FourOctetAsCap,
    GracefulRestartCap,
    Keepalive,
    MultiprotocolCap,
    Notification,
    Open,
    RouteRefresh,
    RouteRefreshCap,
    UnknownCap,
    Update,
)
from lbd.bgp.errors import BgpError

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network
RID = ipaddress.IPv4Address("10.77.0.1")


def body(msg: bytes) -> bytes:
    return msg[codec.HEADER_LEN :]


def raises(code: int, subcode: int):  # type: ignore[no-untyped-def]
    class _Ctx:
        def __enter__(self):  # type: ignore[no-untyped-def]
            self.cm = pytest.raises(BgpError)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            result = self.cm.__exit__(*exc)
            assert self.info.value.pair == (code, subcode), self.info.value
            return result

    return _Ctx()


# ----------------------------------------------------------------- round trips


def test_open_round_trip_with_every_capability() -> None:
    caps = (
        MultiprotocolCap(AFI_IPV4, SAFI_UNICAST),
        MultiprotocolCap(AFI_IPV6, SAFI_UNICAST),
        RouteRefreshCap(),
        EnhancedRouteRefreshCap(),
        GracefulRestartCap(codec.GR_RESTART_STATE, 120, ((1, 1, 0x80), (2, 1, 0x80))),
        UnknownCap(73, b"host"),
        FourOctetAsCap(4200000001),
    )
    msg = Open(AS_TRANS, 90, RID, caps)
    wire = codec.encode_open(msg)
    back = codec.decode_message(wire)
    assert back == msg
    assert back.asn == 4200000001
    assert back.families() == ((1, 1), (2, 1))
    gr = back.capability(GracefulRestartCap)
    assert isinstance(gr, GracefulRestartCap) and gr.restarting and gr.restart_time == 120


def test_open_for_asn_uses_as_trans_above_65535() -> None:
    assert Open.for_asn(65000, 90, RID, ()).my_as == 65000
    big = Open.for_asn(4200000000, 90, RID, ())
    assert big.my_as == AS_TRANS and big.asn == 4200000000


def test_open_rfc9072_extended_parameters_decode() -> None:
    cap = codec.encode_capability(RouteRefreshCap())
    params = struct.pack("!BH", 2, len(cap)) + cap
    b = struct.pack("!BHH4sB", 4, 65000, 90, RID.packed, 255) + b"\xff" + struct.pack("!H", len(params)) + params
    assert codec.decode_open(b).capabilities == (RouteRefreshCap(),)


def test_keepalive_notification_route_refresh_round_trip() -> None:
    assert codec.decode_message(codec.encode_keepalive()) == Keepalive()
    n = Notification(6, 2, b"bye")
    assert codec.decode_message(codec.encode_notification(n)) == n
    for sub in (codec.RR_NORMAL, codec.RR_BORR, codec.RR_EORR):
        rr = RouteRefresh(AFI_IPV6, SAFI_UNICAST, sub)
        assert codec.decode_message(codec.encode_route_refresh(rr)) == rr


def test_update_round_trip_with_every_attribute() -> None:
    attrs = PathAttributes(
        origin=2,
        as_path=((AS_SEQUENCE, (65001, 4200000001)), (AS_SET, (1, 2))),
        next_hop=ipaddress.IPv4Address("10.77.0.2"),
        med=7,
        local_pref=300,
        atomic_aggregate=True,
        aggregator=(65001, ipaddress.IPv4Address("10.77.0.9")),
        communities=((65000, 1), (0xFFFF, 0xFF01)),
        large_communities=((4200000001, 1, 2),),
        originator_id=ipaddress.IPv4Address("10.77.0.3"),
        cluster_list=(ipaddress.IPv4Address("10.77.0.4"),),
        unknown=(RawAttribute(0xC0, 99, b"xyz"),),
    )
    msg = Update((V4("10.88.0.0/16"),), attrs, (V4("10.77.1.0/24"), V4("10.77.2.1/32"), V4("0.0.0.0/0")))
    assert codec.decode_message(codec.encode_update(msg)) == msg


def test_update_two_octet_session_uses_as_trans_and_as4_path() -> None:
    agg = (4200000001, ipaddress.IPv4Address("10.77.0.9"))
    attrs = PathAttributes(origin=0, as_path=((AS_SEQUENCE, (4200000001,)),), next_hop=ipaddress.IPv4Address("10.77.0.2"), aggregator=agg)
    wire = codec.encode_update(Update((), attrs, (V4("10.77.0.0/24"),)), four_octet=False)
    back = codec.decode_message(wire, four_octet=False)
    assert back.attributes.as_path == ((AS_SEQUENCE, (AS_TRANS,)),)
    assert back.attributes.as4_path == ((AS_SEQUENCE, (4200000001,)),)
    assert back.attributes.aggregator == (AS_TRANS, agg[1])
    assert back.attributes.as4_aggregator == agg
    assert not back.problems
    # Small ASNs need no AS4_PATH.
    small = PathAttributes(origin=0, as_path=((AS_SEQUENCE, (65001,)),), next_hop=ipaddress.IPv4Address("10.77.0.2"))
    back = codec.decode_message(codec.encode_update(Update((), small, ()), four_octet=False), four_octet=False)
    assert back.attributes.as_path == ((AS_SEQUENCE, (65001,)),) and back.attributes.as4_path is None


def test_mp_reach_and_unreach_round_trip_with_link_local() -> None:
    reach = MpReach(AFI_IPV6, SAFI_UNICAST, (ipaddress.IPv6Address("fd77::1"), ipaddress.IPv6Address("fe80::1")), (V6("fd77:1::/64"), V6("fd77::5/128")))
    unreach = MpUnreach(AFI_IPV6, SAFI_UNICAST, (V6("fd77:2::/48"),))
    attrs = PathAttributes(origin=0, as_path=(), mp_reach=reach, mp_unreach=unreach)
    back = codec.decode_message(codec.encode_update(Update((), attrs, ())))
    assert back.attributes == attrs
    assert back.announced() == reach.nlri
    assert back.withdrawn_all() == unreach.nlri


def test_extended_length_attribute() -> None:
    comms = tuple((1, i) for i in range(100))  # 400 octets: needs the extended length flag
    attrs = PathAttributes(origin=0, as_path=(), next_hop=ipaddress.IPv4Address("10.77.0.2"), communities=comms)
    wire = codec.encode_update(Update((), attrs, (V4("10.77.0.0/24"),)))
    assert codec.decode_message(wire).attributes.communities == comms


def test_end_of_rib_markers() -> None:
    assert codec.decode_message(codec.end_of_rib(AFI_IPV4)).end_of_rib() == (1, 1)
    assert codec.decode_message(codec.end_of_rib(AFI_IPV6)).end_of_rib() == (2, 1)
    assert len(codec.end_of_rib(AFI_IPV4)) == 23
    not_eor = Update((V4("10.77.0.0/24"),))
    assert codec.decode_message(codec.encode_update(not_eor)).end_of_rib() is None


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=50))
def test_prefix_round_trip_v4(items: list[tuple[int, int]]) -> None:
    nets = [V4((a, p), strict=False) for a, p in items]
    assert decode_prefixes(encode_prefixes(nets), AFI_IPV4) == nets


@given(st.lists(st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)), max_size=30))
def test_prefix_round_trip_v6(items: list[tuple[int, int]]) -> None:
    nets = [V6((a, p), strict=False) for a, p in items]
    assert decode_prefixes(encode_prefixes(nets), AFI_IPV6) == nets


def test_message_reader_frames_split_stream() -> None:
    stream = codec.encode_keepalive() + codec.encode_notification(Notification(6, 4)) + codec.encode_keepalive()
    reader = codec.MessageReader()
    got = []
    for i in range(0, len(stream), 7):
        reader.feed(stream[i : i + 7])
        got += [t for t, _ in reader]
    assert got == [4, 3, 4]


# ------------------------------------------------------------- header errors


def test_header_not_synchronized() -> None:
    bad = b"\x00" + codec.encode_keepalive()[1:]
    with raises(1, 1):
        codec.decode_message(bad)


@pytest.mark.parametrize("length", [18, 4097, 20])
def test_header_bad_length(length: int) -> None:
    hdr = codec.MARKER + struct.pack("!HB", length, 4)
    with raises(1, 2) as info:
        codec.check_header(hdr)
    assert info.value.data == struct.pack("!H", length)


@pytest.mark.parametrize("msg_type,length", [(1, 28), (2, 22), (3, 20)])
def test_header_too_short_for_type(msg_type: int, length: int) -> None:
    with raises(1, 2):
        codec.check_header(codec.MARKER + struct.pack("!HB", length, msg_type))


def test_header_bad_type() -> None:
    with raises(1, 3) as info:
        codec.check_header(codec.MARKER + struct.pack("!HB", 19, 9))
    assert info.value.data == b"\x09"


# --------------------------------------------------------------- OPEN errors


def _open_body(version: int = 4, params: bytes = b"", plen: int | None = None) -> bytes:
    return struct.pack("!BHH4sB", version, 65000, 90, RID.packed, len(params) if plen is None else plen) + params


def test_open_unsupported_version() -> None:
    with raises(2, 1) as info:
        codec.decode_open(_open_body(version=3))
    assert info.value.data == b"\x00\x04"


def test_open_unsupported_optional_parameter() -> None:
    with raises(2, 4):
        codec.decode_open(_open_body(params=b"\x01\x02ab"))


def test_open_parameter_length_mismatch() -> None:
    with raises(2, 0):
        codec.decode_open(_open_body(params=b"\x02\x02\x02\x00", plen=3))


def test_open_capability_with_bad_length() -> None:
    with raises(2, 0):
        codec.decode_open(_open_body(params=b"\x02\x04\x41\x02\x00\x01"))  # 4-octet AS cap, 2 octets


def test_route_refresh_bad_length() -> None:
    wire = codec.frame(5, b"\x00\x01\x00\x01\x00")
    with raises(7, 1) as info:
        codec.decode_message(wire)
    assert info.value.data == wire


# ------------------------------------------------------------- UPDATE errors


NH = ipaddress.IPv4Address("10.77.0.2")


def _attr(flags: int, code: int, value: bytes) -> bytes:
    return bytes((flags, code, len(value))) + value


GOOD = _attr(0x40, 1, b"\x00") + _attr(0x40, 2, b"") + _attr(0x40, 3, NH.packed)
NLRI = b"\x18\x0a\x4d\x01"  # 10.77.1.0/24


def _update(attrs: bytes, nlri: bytes = NLRI, withdrawn: bytes = b"") -> bytes:
    return struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + nlri


def test_update_withdrawn_length_overrun_is_session_reset() -> None:
    with raises(3, 1):
        codec.decode_update(b"\x00\x10\x00\x00")


def test_update_total_attribute_length_overrun_is_session_reset() -> None:
    with raises(3, 1):
        codec.decode_update(b"\x00\x00\x00\x20" + GOOD)


def test_update_invalid_network_field() -> None:
    with raises(3, 10):
        codec.decode_update(_update(GOOD, nlri=b"\x21\x0a\x00\x00\x00\x00"))  # /33
    with raises(3, 10):
        codec.decode_update(_update(GOOD, nlri=b"\x18\x0a"))  # truncated
    with raises(3, 10):
        codec.decode_update(_update(b"", nlri=b"", withdrawn=b"\x40"))


def test_update_unrecognized_well_known_attribute() -> None:
    with raises(3, 2):
        codec.decode_update(_update(GOOD + _attr(0x40, 99, b"x")))


def test_update_duplicate_mp_reach_is_session_reset() -> None:
    mp = _attr(0x80, 15, b"\x00\x02\x01")
    with raises(3, 1):
        codec.decode_update(_update(mp + mp, nlri=b""))


def test_update_duplicate_attribute_is_discarded() -> None:
    upd = codec.decode_update(_update(GOOD + _attr(0x40, 1, b"\x02")))
    assert upd.attributes.origin == 0 and not upd.problems


CASES = [
    # (attributes, RFC 4271 code/subcode, RFC 7606 action)
    (_attr(0x40, 2, b"") + _attr(0x40, 3, NH.packed), (3, 3), Action.TREAT_AS_WITHDRAW),  # missing ORIGIN
    (_attr(0x40, 1, b"\x00") + _attr(0x40, 3, NH.packed), (3, 3), Action.TREAT_AS_WITHDRAW),  # missing AS_PATH
    (_attr(0x40, 1, b"\x00") + _attr(0x40, 2, b""), (3, 3), Action.TREAT_AS_WITHDRAW),  # missing NEXT_HOP
    (GOOD.replace(b"\x40\x01\x01", b"\xc0\x01\x01"), (3, 4), Action.TREAT_AS_WITHDRAW),  # ORIGIN flagged optional
    (_attr(0x40, 1, b"\x00\x00") + GOOD[4:], (3, 5), Action.TREAT_AS_WITHDRAW),  # ORIGIN length 2
    (_attr(0x40, 1, b"\x05") + GOOD[4:], (3, 6), Action.TREAT_AS_WITHDRAW),  # ORIGIN 5
    (GOOD[:7] + _attr(0x40, 3, b"\x00\x00\x00\x00"), (3, 8), Action.TREAT_AS_WITHDRAW),  # NEXT_HOP 0.0.0.0
    (GOOD[:7] + _attr(0x40, 3, b"\x0a\x00\x00"), (3, 5), Action.TREAT_AS_WITHDRAW),  # NEXT_HOP length 3
    (GOOD + _attr(0xC0, 8, b"\x00\x01\x00"), (3, 9), Action.TREAT_AS_WITHDRAW),  # COMMUNITIES length 3
    (GOOD + _attr(0xC0, 32, b"\x00" * 11), (3, 9), Action.TREAT_AS_WITHDRAW),  # LARGE_COMMUNITY length 11
    (GOOD[:4] + _attr(0x40, 2, b"\x02\x02\x00\x01") + GOOD[7:], (3, 11), Action.TREAT_AS_WITHDRAW),  # AS_PATH short
    (GOOD[:4] + _attr(0x40, 2, b"\x07\x01\x00\x00\x00\x01") + GOOD[7:], (3, 11), Action.TREAT_AS_WITHDRAW),  # seg type 7
    (GOOD + _attr(0x80, 4, b"\x00\x01"), (3, 5), Action.TREAT_AS_WITHDRAW),  # MED length 2
    (GOOD + _attr(0x40, 5, b"\x00"), (3, 5), Action.TREAT_AS_WITHDRAW),  # LOCAL_PREF length 1 (iBGP)
    (GOOD + _attr(0x40, 6, b"\x01"), (3, 5), Action.ATTRIBUTE_DISCARD),  # ATOMIC_AGGREGATE length 1
    (GOOD + _attr(0xC0, 7, b"\x00\x01"), (3, 5), Action.ATTRIBUTE_DISCARD),  # AGGREGATOR length 2
    (GOOD + _attr(0xC0, 17, b"\x02\x05"), (3, 11), Action.ATTRIBUTE_DISCARD),  # AS4_PATH malformed
    (GOOD + b"\x40\x05\x09\x00", (3, 5), Action.TREAT_AS_WITHDRAW),  # attribute overruns the field
    (GOOD + b"\x40", (3, 1), Action.TREAT_AS_WITHDRAW),  # truncated attribute header
]


@pytest.mark.parametrize("attrs,pair,action", CASES)
def test_update_attribute_errors(attrs: bytes, pair: tuple[int, int], action: Action) -> None:
    # The classic RFC 4271 §6.3 NOTIFICATION ...
    with raises(*pair):
        codec.decode_update(_update(attrs), strict=True)
    # ... and the RFC 7606 handling, which keeps the session.
    upd = codec.decode_update(_update(attrs))
    assert max(p.action for p in upd.problems) == action
    assert upd.problems[0].error.pair == pair
    if action == Action.TREAT_AS_WITHDRAW:
        assert upd.announced() == () and V4("10.77.1.0/24") in upd.withdrawn_all()
    else:
        assert upd.announced() == (V4("10.77.1.0/24"),)


def test_update_ebgp_leftmost_as_must_be_peer() -> None:
    attrs = _attr(0x40, 1, b"\x00") + _attr(0x40, 2, b"\x02\x01" + struct.pack("!I", 65009)) + _attr(0x40, 3, NH.packed)
    ok = codec.decode_update(_update(attrs), ibgp=False, peer_as=65009)
    assert not ok.problems
    bad = codec.decode_update(_update(attrs), ibgp=False, peer_as=65001)
    assert bad.treat_as_withdraw and bad.problems[0].error.pair == (3, 11)


def test_update_local_pref_from_ebgp_is_ignored() -> None:
    upd = codec.decode_update(_update(GOOD + _attr(0x40, 5, b"\x00")), ibgp=False)
    assert not upd.problems and upd.attributes.local_pref is None


def test_update_malformed_mp_reach_is_session_reset() -> None:
    mp = _attr(0x80, 14, b"\x00\x02\x01\x05" + b"\x00" * 5 + b"\x00")  # IPv6 next hop of 5 octets
    with raises(3, 9):
        codec.decode_update(_update(GOOD[:7] + mp, nlri=b""))
    mp_bad_nlri = _attr(0x80, 14, b"\x00\x02\x01\x10" + b"\x00" * 16 + b"\x00" + b"\x90")
    with raises(3, 9):
        codec.decode_update(_update(GOOD[:7] + mp_bad_nlri, nlri=b""))


def test_as_path_long_segment_is_split() -> None:
    path = ((AS_SEQUENCE, tuple(range(1, 301))),)
    enc = encode_as_path(path, True)
    assert enc[1] == 255 and enc[2 + 255 * 4 + 1] == 45


# ------------------------------------------------------------------- fuzzing


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 5), st.booleans(), st.booleans())
def test_fuzz_decode_body_raises_only_bgp_error(data: bytes, msg_type: int, four: bool, ibgp: bool) -> None:
    try:
        codec.decode_body(msg_type, data, four_octet=four, ibgp=ibgp, peer_as=65000)
    except BgpError:
        pass


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 40), st.binary(max_size=40)), max_size=8), st.binary(max_size=20))
def test_fuzz_update_attributes_raise_only_bgp_error(attrs: list[tuple[int, int, bytes]], nlri: bytes) -> None:
    wire = b"".join(bytes((f, c, len(v))) + v for f, c, v in attrs)
    try:
        upd = codec.decode_update(_update(wire, nlri=nlri))
    except BgpError:
        return
    upd.announced()
    upd.withdrawn_all()
    upd.end_of_rib()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_message_reader(data: bytes) -> None:
    reader = codec.MessageReader()
    reader.feed(codec.MARKER + data)
    try:
        for msg_type, b in reader:
            codec.decode_body(msg_type, b)
    except BgpError:
        pass


def test_every_recognised_attribute_has_exactly_one_decoder() -> None:
    """The dispatch table and the flags table name the same attributes: a type
    with expected flags but no decoder would be accepted and silently dropped."""
    from lbd.bgp import attribute_decoding, attributes

    assert set(attribute_decoding._DECODERS) == set(attribute_decoding._EXPECTED_FLAGS) == set(attributes.AttrType)
