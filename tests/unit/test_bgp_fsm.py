"""BGP session FSM with a simulated clock (RFC 4271 §8, RFC 4724): establishment,
timers, negotiation, errors, collisions, graceful restart. What the session
sends from its Adj-RIB-Out is in test_bgp_rib.py."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from bgp_helpers import A_ID, B_ID, LOCAL, REMOTE, cfg, establish, messages, notifications, peer_open, routes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbd.bgp import codec
from lbd.bgp.attributes import AS_SEQUENCE, AS_TRANS
from lbd.bgp.codec import (
    FourOctetAsCap,
    GracefulRestartCap,
    MultiprotocolCap,
    Notification,
    Open,
    Update,
)
from lbd.bgp.events import (
    CloseRequested,
    ConnectRequested,
    EndOfRibSent,
    NotificationReceived,
    SessionDown,
    SessionEstablished,
    State,
    UpdateReceived,
)
from lbd.bgp.errors import BgpError
from lbd.bgp.fsm import Session, collision_loser, negotiate
from lbd.bgp.packing import RouteAttrs

# ------------------------------------------------------------- establishment


def test_establish_sends_open_keepalive_routes_and_eor() -> None:
    s = Session(cfg())
    assert isinstance(s.start(0.0)[-1], ConnectRequested)
    assert s.state == State.CONNECT
    s.connection_made(0.0, LOCAL, REMOTE)
    sent = messages(s.data_to_send())
    assert isinstance(sent[0], Open) and sent[0].asn == 64512 and sent[0].hold_time == 90
    s.set_routes(routes(3), 0.0)
    s.handle_bytes(peer_open(), 0.0)
    assert s.state == State.OPENCONFIRM
    assert isinstance(messages(s.data_to_send())[0], codec.Keepalive)
    events = s.handle_bytes(codec.encode_keepalive(), 1.0)
    assert s.state == State.ESTABLISHED
    assert any(isinstance(e, SessionEstablished) for e in events)
    out = messages(s.data_to_send())
    ups = [m for m in out if isinstance(m, Update)]
    assert sorted(p for u in ups for p in u.announced()) == sorted(routes(3))
    assert [u.end_of_rib() for u in ups[-2:]] == [(1, 1), (2, 1)]
    eor = [e for e in events if isinstance(e, EndOfRibSent)]
    assert (eor[0].afi, eor[0].prefixes) == (1, 3)
    attrs = ups[0].attributes
    assert attrs.next_hop == LOCAL and attrs.as_path == ((AS_SEQUENCE, (64512,)),) and attrs.local_pref is None


def test_ibgp_sends_local_pref_and_empty_as_path() -> None:
    s = Session(cfg(peer_as=64512))
    s.set_routes(routes(1, attrs=RouteAttrs(local_pref=250, communities=((1, 2),), large_communities=((3, 4, 5),))), 0)
    establish(s, asn=64512)
    u = [m for m in messages(s.data_to_send()) if isinstance(m, Update)][0]
    assert u.attributes.local_pref == 250 and u.attributes.as_path == ()
    assert u.attributes.communities == ((1, 2),) and u.attributes.large_communities == ((3, 4, 5),)


def test_two_octet_peer_gets_as_trans_and_as4_path() -> None:
    s = Session(cfg(local_as=4200000001))
    s.set_routes(routes(1), 0)
    s.start(0)
    s.connection_made(0, LOCAL, REMOTE)
    assert messages(s.data_to_send())[0].my_as == AS_TRANS
    s.handle_bytes(codec.encode_open(Open(64513, 90, B_ID, ())), 0)  # no capabilities at all
    s.handle_bytes(codec.encode_keepalive(), 0)
    assert s.negotiated is not None and not s.negotiated.four_octet and s.negotiated.families == ((1, 1),)
    u = [m for m in messages(s.data_to_send(), four_octet=False) if isinstance(m, Update)][0]
    assert u.attributes.as_path == ((AS_SEQUENCE, (AS_TRANS,)),)
    assert u.attributes.as4_path == ((AS_SEQUENCE, (4200000001,)),)


def test_ipv6_routes_use_mp_reach_with_configured_next_hop() -> None:
    s = Session(cfg(next_hop_v6=ipaddress.IPv6Address("fd77::1")))
    s.set_routes({ipaddress.IPv6Network("fd77:5::1/128"): RouteAttrs()}, 0)
    establish(s)
    u = [m for m in messages(s.data_to_send()) if isinstance(m, Update) and m.attributes.mp_reach][0]
    assert u.attributes.mp_reach.next_hops == (ipaddress.IPv6Address("fd77::1"),)
    assert u.announced() == (ipaddress.IPv6Network("fd77:5::1/128"),)


# --------------------------------------------------------------------- timers


def test_keepalive_cadence_and_hold_timer_expiry() -> None:
    s = Session(cfg(hold_time=9))
    establish(s, hold=30)
    s.data_to_send()
    assert s.negotiated.hold_time == 9 and s.negotiated.keepalive_time == 3
    assert s.next_deadline() == 3
    sent_at = []
    t = 0.0
    while t < 8.5:
        t = s.next_deadline()
        if t >= 9:
            break
        s.tick(t)
        if s.data_to_send() == codec.encode_keepalive():
            sent_at.append(t)
    assert sent_at == [3, 6]
    # Nothing received for the negotiated hold time: NOTIFICATION 4/0 and Idle.
    events = s.tick(9.0)
    assert notifications(events) == [(4, 0)]
    assert any(isinstance(e, CloseRequested) for e in events)
    assert any(isinstance(e, SessionDown) for e in events)
    assert s.state == State.IDLE
    assert messages(s.data_to_send()) == [Notification(4, 0)]


def test_received_messages_restart_hold_timer() -> None:
    s = Session(cfg(hold_time=9))
    establish(s)
    for t in (5.0, 10.0, 15.0):
        s.handle_bytes(codec.encode_keepalive(), t)
        s.tick(t)
    assert s.state == State.ESTABLISHED
    s.tick(23.9)
    assert s.state == State.ESTABLISHED
    s.tick(24.0)
    assert s.state == State.IDLE


def test_keepalive_time_configured_is_used_below_hold_third() -> None:
    s = Session(cfg(hold_time=90, keepalive_time=10))
    establish(s)
    assert s.negotiated.keepalive_time == 10
    s2 = Session(cfg(hold_time=90, keepalive_time=60))
    establish(s2, hold=30)
    assert s2.negotiated.keepalive_time == 10  # never slower than hold / 3


def test_hold_zero_means_no_keepalives_and_no_hold_timer() -> None:
    s = Session(cfg(hold_time=0))
    establish(s)
    assert s.state == State.ESTABLISHED and s.negotiated.hold_time == 0
    assert s.next_deadline() is None
    s.data_to_send()
    s.tick(10_000.0)
    assert s.state == State.ESTABLISHED and s.data_to_send() == b""


def test_opensent_uses_large_hold_timer() -> None:
    s = Session(cfg())
    s.start(0)
    s.connection_made(0, LOCAL, REMOTE)
    assert s.next_deadline() == 240.0
    s.tick(239.0)
    assert s.state == State.OPENSENT
    assert notifications(s.tick(240.0)) == [(4, 0)]


def test_both_sides_enforce_hold_through_keepalives() -> None:
    a = Session(cfg(hold_time=6), name="a")
    b = Session(cfg(local_as=64513, peer_as=64512, router_id=B_ID, passive=True, hold_time=6), name="b")
    a.start(0)
    b.start(0)
    a.connection_made(0, LOCAL, REMOTE)
    b.connection_made(0, REMOTE, LOCAL, outbound=False)
    t = 0.0
    for _ in range(200):
        b.handle_bytes(a.data_to_send(), t)
        a.handle_bytes(b.data_to_send(), t)
        deadlines = [d for d in (a.next_deadline(), b.next_deadline()) if d is not None]
        t = min(deadlines)
        if t > 60:
            break
        a.tick(t)
        b.tick(t)
    assert a.state == b.state == State.ESTABLISHED
    # Now b stops hearing a (frozen peer): b expires hold at its next deadline.
    a.data_to_send()  # a's keepalives are lost from here on
    start = t
    while b.state == State.ESTABLISHED and t < start + 10:
        t = b.next_deadline()
        b.tick(t)
        b.data_to_send()
    assert b.state in (State.ACTIVE, State.IDLE) and 0 < t - start <= 6


# ------------------------------------------------------------ connect retry


def test_connect_retry_backoff_is_exponential_and_capped() -> None:
    s = Session(cfg(connect_retry_initial=1.0, connect_retry_max=8.0))
    s.start(0.0)
    t = 0.0
    gaps = []
    for _ in range(7):
        assert s.state == State.CONNECT
        s.connection_failed(t)
        assert s.state == State.ACTIVE
        nxt = s.next_deadline()
        gaps.append(nxt - t)
        t = nxt
        events = s.tick(t)
        assert any(isinstance(e, ConnectRequested) for e in events)
    assert gaps == [1, 2, 4, 8, 8, 8, 8]


def test_connect_timeout_aborts_attempt() -> None:
    s = Session(cfg(connect_time=5))
    s.start(0.0)
    assert s.next_deadline() == 5
    events = s.tick(5.0)
    assert any(isinstance(e, CloseRequested) for e in events) and s.state == State.ACTIVE
    assert s.next_deadline() == 6.0


def test_backoff_resets_after_established() -> None:
    s = Session(cfg())
    s.start(0)
    for t in range(3):
        s.connection_failed(float(t))
        s.tick(s.next_deadline())
    s.connection_made(20, LOCAL, REMOTE)
    s.handle_bytes(peer_open(), 20)
    s.handle_bytes(codec.encode_keepalive(), 20)
    s.connection_lost(30)
    assert s.state == State.IDLE and s.next_deadline() == 31


def test_passive_session_waits_in_active() -> None:
    s = Session(cfg(passive=True))
    events = s.start(0)
    assert s.state == State.ACTIVE and not any(isinstance(e, ConnectRequested) for e in events)
    s.connection_made(1, LOCAL, REMOTE, outbound=False)
    assert s.state == State.OPENSENT
    s.connection_lost(2)
    assert s.state == State.ACTIVE
    for t in range(3, 300, 7):
        assert not any(isinstance(e, ConnectRequested) for e in s.tick(float(t)))


def test_stop_sends_cease_and_stays_idle() -> None:
    s = Session(cfg())
    establish(s)
    s.data_to_send()
    events = s.stop(5.0)
    assert notifications(events) == [(6, 2)] and s.state == State.IDLE
    assert s.next_deadline() is None


# ----------------------------------------------------------- OPEN negotiation


@pytest.mark.parametrize(
    "kw,open_kw,pair",
    [
        ({}, {"asn": 65000}, (2, 2)),
        ({"peer_as": None, "dynamic_asn": "internal"}, {"asn": 65000}, (2, 2)),
        ({"peer_as": None, "dynamic_asn": "external"}, {"asn": 64512, "rid": B_ID}, (2, 2)),
        ({}, {"hold": 1}, (2, 6)),
        ({}, {"hold": 2}, (2, 6)),
        ({}, {"rid": ipaddress.IPv4Address("0.0.0.0")}, (2, 3)),
        ({"peer_as": 64512}, {"asn": 64512, "rid": A_ID}, (2, 3)),
        ({"families": ((2, 1),)}, {"caps": (MultiprotocolCap(1, 1),)}, (2, 7)),
        ({"peer_as": 70000}, {"wire": codec.encode_open(Open(AS_TRANS, 90, B_ID, ()))}, (2, 2)),  # AS_TRANS without the capability
    ],
)
def test_open_negotiation_failures(kw: dict, open_kw: dict, pair: tuple[int, int]) -> None:  # type: ignore[type-arg]
    s = Session(cfg(**kw))
    s.start(0)
    s.connection_made(0, LOCAL, REMOTE)
    s.data_to_send()
    open_kw = dict(open_kw)
    wire = open_kw.pop("wire", None) or peer_open(**open_kw)
    events = s.handle_bytes(wire, 0)
    assert notifications(events) == [pair]
    assert s.state == State.IDLE
    assert any(isinstance(e, CloseRequested) for e in events)
    assert [m for m in messages(s.data_to_send()) if isinstance(m, Notification)][0].code == pair[0]


def test_dynamic_asn_accepts_matching_peer() -> None:
    s = Session(cfg(peer_as=None, dynamic_asn="external"))
    establish(s, asn=65010)
    assert s.state == State.ESTABLISHED and s.negotiated.peer_as == 65010


def test_unsupported_version_from_peer() -> None:
    s = Session(cfg())
    s.start(0)
    s.connection_made(0, LOCAL, REMOTE)
    bad = bytearray(peer_open())
    bad[19] = 3
    assert notifications(s.handle_bytes(bytes(bad), 0)) == [(2, 1)]


def test_hold_time_is_the_minimum() -> None:
    s = Session(cfg(hold_time=90))
    establish(s, hold=30)
    assert s.negotiated.hold_time == 30 and s.negotiated.keepalive_time == 10


@pytest.mark.parametrize(
    "state_msgs,bad,pair",
    [
        ([], codec.encode_keepalive(), (5, 1)),
        ([peer_open()], codec.end_of_rib(1), (5, 2)),
        ([peer_open(), codec.encode_keepalive()], peer_open(), (5, 3)),
    ],
)
def test_unexpected_messages_are_fsm_errors(state_msgs: list[bytes], bad: bytes, pair: tuple[int, int]) -> None:
    s = Session(cfg())
    s.start(0)
    s.connection_made(0, LOCAL, REMOTE)
    for m in state_msgs:
        s.handle_bytes(m, 0)
    assert notifications(s.handle_bytes(bad, 0)) == [pair]


def test_header_error_is_answered_with_notification() -> None:
    s = Session(cfg())
    establish(s)
    assert notifications(s.handle_bytes(b"\x00" * 19, 1)) == [(1, 1)]


def test_notification_received_closes_without_reply() -> None:
    s = Session(cfg())
    establish(s)
    s.data_to_send()
    events = s.handle_bytes(codec.encode_notification(Notification(6, 4)), 1)
    assert any(isinstance(e, NotificationReceived) for e in events)
    assert not notifications(events) and s.data_to_send() == b""
    assert s.state == State.IDLE and s.stats.notifications_received == 1


def test_treat_as_withdraw_update_keeps_the_session() -> None:
    s = Session(cfg())
    establish(s)
    attrs = b"\x40\x01\x01\x07" + b"\x40\x02\x00" + b"\x40\x03\x04" + REMOTE.packed  # ORIGIN 7
    body = b"\x00\x00" + struct.pack("!H", len(attrs)) + attrs + b"\x18\x0a\x4d\x01"
    events = s.handle_bytes(codec.frame(2, body), 1)
    ups = [e for e in events if isinstance(e, UpdateReceived)]
    assert ups and ups[0].update.treat_as_withdraw and s.state == State.ESTABLISHED


# ----------------------------------------------------------------- collision


def test_collision_detection_by_bgp_identifier() -> None:
    low, high = ipaddress.IPv4Address("10.77.0.1"), ipaddress.IPv4Address("10.77.0.9")
    out_s, in_s = Session(cfg(), name="out"), Session(cfg(), name="in")
    assert collision_loser(low, high, out_s, in_s) is out_s
    assert collision_loser(high, low, out_s, in_s) is in_s
    # The loser closes with Cease / Connection Collision Resolution (RFC 4486 subcode 7).
    out_s.start(0)
    out_s.connection_made(0, LOCAL, REMOTE)
    out_s.handle_bytes(peer_open(rid=high), 0)
    in_s.connection_made(0, LOCAL, REMOTE, outbound=False)
    in_s.handle_bytes(peer_open(rid=high), 0)
    loser = collision_loser(A_ID, high, out_s, in_s)
    assert notifications(loser.close_collision(1)) == [(6, 7)]
    in_s.take_over(out_s)
    in_s.handle_bytes(codec.encode_keepalive(), 1)
    assert in_s.state == State.ESTABLISHED and out_s.state == State.IDLE
    assert out_s.next_deadline() is None  # the loser does not reconnect by itself


# ------------------------------------------------------------ graceful restart


def test_graceful_restart_capability_and_restart_bit() -> None:
    s = Session(cfg(graceful_restart=True, graceful_restart_time=90), restarting=True)
    s.set_routes(routes(3), 0)
    s.start(0)
    s.connection_made(0, LOCAL, REMOTE)
    gr = messages(s.data_to_send())[0].capability(GracefulRestartCap)
    assert gr is not None and gr.restarting and gr.restart_time == 90
    assert gr.families == ((1, 1, 0x80), (2, 1, 0x80))
    s.handle_bytes(peer_open(), 0)
    s.handle_bytes(codec.encode_keepalive(), 0)
    out = [m for m in messages(s.data_to_send()) if isinstance(m, Update)]
    assert len([p for u in out for p in u.announced()]) == 3
    assert out[-1].end_of_rib() == (2, 1) and out[-2].end_of_rib() == (1, 1)
    assert s.negotiated.graceful_restart
    # Planned stop: the TCP connection closes without a NOTIFICATION.
    events = s.stop(5, graceful=True)
    assert not notifications(events) and s.data_to_send() == b""
    assert any(isinstance(e, CloseRequested) for e in events)
    # The next OPEN of this process no longer claims a restart.
    s.start(6)
    s.connection_made(6, LOCAL, REMOTE)
    assert not messages(s.data_to_send())[0].capability(GracefulRestartCap).restarting


def test_graceful_stop_without_negotiated_gr_sends_cease() -> None:
    s = Session(cfg(graceful_restart=True))
    establish(s, caps=(MultiprotocolCap(1, 1),))
    s.data_to_send()
    assert notifications(s.stop(1, graceful=True)) == [(6, 2)]


def test_no_gr_capability_unless_configured() -> None:
    s = Session(cfg())
    s.start(0)
    s.connection_made(0, LOCAL, REMOTE)
    o = messages(s.data_to_send())[0]
    assert o.capability(GracefulRestartCap) is None
    assert o.capability(FourOctetAsCap) == FourOctetAsCap(64512)


# -------------------------------------------------------------------- fuzzing


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=80), max_size=6), st.sampled_from(["opensent", "openconfirm", "established"]))
def test_fuzz_handle_bytes_never_raises(chunks: list[bytes], where: str) -> None:
    s = Session(cfg())
    s.set_routes(routes(3), 0)
    s.start(0)
    s.connection_made(0, LOCAL, REMOTE)
    if where != "opensent":
        s.handle_bytes(peer_open(), 0)
    if where == "established":
        s.handle_bytes(codec.encode_keepalive(), 0)
    s.data_to_send()
    for i, c in enumerate(chunks):
        events = s.handle_bytes(codec.MARKER + c if i % 2 == 0 else c, float(i))
        if s.state == State.IDLE:
            sent = notifications(events)
            got = [e for e in events if isinstance(e, NotificationReceived)]
            assert sent or got  # every error becomes a NOTIFICATION (or was one)
            break


def test_negotiate_is_a_pure_function_of_settings_and_open() -> None:
    """OPEN negotiation (RFC 4271 §6.2) without a session: the keepalive is the
    lower of the configured one and a third of the agreed hold time."""
    msg = Open.for_asn(64513, 60, B_ID, (MultiprotocolCap(2, 1), GracefulRestartCap(0x8, 90, ())))
    neg = negotiate(cfg(hold_time=90, keepalive_time=5.0, graceful_restart=True), msg)
    assert (neg.peer_as, neg.hold_time, neg.keepalive_time, neg.families) == (64513, 60, 5.0, ((2, 1),))
    assert neg.four_octet and neg.graceful_restart and neg.peer_restarting and not neg.ibgp
    with pytest.raises(BgpError) as info:
        negotiate(cfg(families=((1, 1),)), msg)
    assert (info.value.code, info.value.subcode) == (2, 7)  # no common family: Unsupported Capability
