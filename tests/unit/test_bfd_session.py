"""The BFD session state machine (RFC 5880 §6) on a simulated clock."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from lbd.bfd import auth as bfd_auth
from lbd.bfd.auth import AuthConfig, BfdAuthError, read_key, sequence_in_window
from lbd.bfd.packet import AuthType, ControlPacket, Diag, SessionState, decode, encode
from lbd.bfd.session import SLOW_TX, Session, SessionConfig, StateChanged

FAST = SessionConfig(desired_min_tx=100_000, required_min_rx=100_000, detect_mult=3)
S = SessionState


class Link:
    """Two sessions joined by a lossless, instant link, on a simulated clock."""

    def __init__(self, a: Session, b: Session, start: float = 0.0) -> None:
        self.a, self.b = a, b
        self.now = start
        self.cut = False
        self.events: dict[str, list] = {"a": [], "b": []}
        self.sent: dict[str, list[tuple[float, ControlPacket]]] = {"a": [], "b": []}
        self._collect("a", a.start(start))
        self._collect("b", b.start(start))
        self._deliver()

    def _collect(self, side: str, events: list) -> None:
        self.events[side].extend(events)

    def _deliver(self) -> None:
        for _ in range(100):
            moved = False
            for side, src, dst in (("a", self.a, self.b), ("b", self.b, self.a)):
                for raw in src.take_packets():
                    moved = True
                    self.sent[side].append((self.now, decode(raw)))
                    if not self.cut:
                        other = "b" if side == "a" else "a"
                        self._collect(other, dst.receive(decode(raw), raw, self.now))
            if not moved:
                return

    def run(self, until: float) -> None:
        while True:
            deadlines = [d for d in (self.a.next_deadline(), self.b.next_deadline()) if d is not None]
            nxt = min(deadlines) if deadlines else None
            if nxt is None or nxt > until:
                self.now = until
                return
            self.now = max(self.now, nxt)
            self._collect("a", self.a.tick(self.now))
            self._collect("b", self.b.tick(self.now))
            self._deliver()


def pair(ca: SessionConfig = FAST, cb: SessionConfig = FAST, seed: int = 1) -> Link:
    return Link(Session(ca, 11, rng=random.Random(seed)), Session(cb, 22, rng=random.Random(seed + 1)))


def pkt(state: SessionState, **kw: object) -> ControlPacket:
    values: dict = dict(my_discriminator=22, your_discriminator=11, detect_mult=3,
                        desired_min_tx=100_000, required_min_rx=100_000)
    values.update(kw)
    return ControlPacket(state=state, **values)


def feed(s: Session, p: ControlPacket, now: float = 0.0) -> list:
    raw = encode(p)
    return s.receive(decode(raw), raw, now)


def fresh(config: SessionConfig = FAST, state: SessionState = S.DOWN) -> Session:
    s = Session(config, 11, rng=random.Random(3))
    s.start(0.0)
    s.take_packets()
    if state == S.INIT:
        feed(s, pkt(S.DOWN, your_discriminator=0))
    elif state == S.UP:
        feed(s, pkt(S.INIT))
    elif state == S.ADMIN_DOWN:
        s.admin_down(0.0)
    assert s.state == state
    s.take_packets()
    return s


# --- the state table (§6.2, §6.8.6) -------------------------------------------

@pytest.mark.parametrize(
    "local,received,expected",
    [
        (S.DOWN, S.ADMIN_DOWN, S.DOWN),
        (S.DOWN, S.DOWN, S.INIT),
        (S.DOWN, S.INIT, S.UP),
        (S.DOWN, S.UP, S.DOWN),
        (S.INIT, S.ADMIN_DOWN, S.DOWN),
        (S.INIT, S.DOWN, S.INIT),
        (S.INIT, S.INIT, S.UP),
        (S.INIT, S.UP, S.UP),
        (S.UP, S.ADMIN_DOWN, S.DOWN),
        (S.UP, S.DOWN, S.DOWN),
        (S.UP, S.INIT, S.UP),
        (S.UP, S.UP, S.UP),
        (S.ADMIN_DOWN, S.DOWN, S.ADMIN_DOWN),
        (S.ADMIN_DOWN, S.INIT, S.ADMIN_DOWN),
        (S.ADMIN_DOWN, S.UP, S.ADMIN_DOWN),
        (S.ADMIN_DOWN, S.ADMIN_DOWN, S.ADMIN_DOWN),
    ],
)
def test_state_table(local: SessionState, received: SessionState, expected: SessionState) -> None:
    s = fresh(state=local)
    your = 0 if received in (S.DOWN, S.ADMIN_DOWN) and local == S.DOWN else 11
    feed(s, pkt(received, your_discriminator=your), 0.01)
    assert s.state == expected


def test_diagnostics_on_down() -> None:
    s = fresh(state=S.UP)
    events = feed(s, pkt(S.DOWN), 0.01)
    assert s.local_diag == Diag.NEIGHBOR_SIGNALED_DOWN
    assert events == [StateChanged(S.UP, S.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN)]
    assert events[0].failure


def test_peer_admin_down_is_not_a_failure_rfc5882() -> None:
    s = fresh(state=S.UP)
    (event,) = feed(s, pkt(S.ADMIN_DOWN), 0.01)
    assert event.new == S.DOWN and event.remote_admin_down and not event.failure


def test_two_sessions_come_up_and_negotiate() -> None:
    link = pair()
    link.run(3.0)
    assert link.a.state == S.UP and link.b.state == S.UP
    assert link.a.remote_discr == 22 and link.b.remote_discr == 11
    # After the poll sequence both send at the configured 100 ms.
    assert not link.a.polling and not link.b.polling
    assert link.a.transmit_interval() == pytest.approx(0.1)
    assert link.a.detection_time() == pytest.approx(0.3)


def test_slow_transmit_until_up_then_poll_sequence() -> None:
    s = fresh()
    # §6.8.3: not Up, Desired Min TX is at least one second.
    assert s.desired_min_tx == SLOW_TX
    feed(s, pkt(S.INIT), 0.0)
    assert s.state == S.UP and s.polling and s.desired_min_tx == 100_000
    sent = [decode(r) for r in s.take_packets()]
    assert sent[-1].poll and sent[-1].desired_min_tx == 100_000
    feed(s, pkt(S.UP, final=True), 0.01)
    assert not s.polling


def test_poll_is_answered_at_once_with_final() -> None:
    s = fresh(state=S.UP)
    feed(s, pkt(S.UP, poll=True), 0.02)
    (raw,) = s.take_packets()
    answer = decode(raw)
    assert answer.final and not answer.poll


def test_increase_waits_for_the_poll_to_finish() -> None:
    link = pair()
    link.run(3.0)
    a = link.a
    link.cut = True  # no Final can come back
    a.set_params(replace(FAST, desired_min_tx=500_000, required_min_rx=50_000), link.now)
    assert a.polling
    # §6.8.3: a larger DesiredMinTx is not used, a smaller RequiredMinRx not trusted, before the Final.
    assert a.transmit_interval() == pytest.approx(0.1)
    assert a.detection_time() == pytest.approx(0.3)
    link.cut = False
    link.run(link.now + 0.25)
    assert not a.polling
    assert a.transmit_interval() == pytest.approx(0.5)
    assert a.detection_time() == pytest.approx(0.3)  # remote tx 100 ms still dominates 50 ms


def test_transmit_interval_is_max_of_local_tx_and_remote_rx() -> None:
    link = pair(cb=replace(FAST, required_min_rx=300_000, desired_min_tx=200_000))
    link.run(5.0)
    assert link.a.transmit_interval() == pytest.approx(0.3)
    assert link.b.transmit_interval() == pytest.approx(0.2)
    # §6.8.4: remote mult × max(our RequiredMinRx, remote DesiredMinTx)
    assert link.a.detection_time() == pytest.approx(0.6)
    assert link.b.detection_time() == pytest.approx(0.9)


def test_detection_time_uses_remote_multiplier() -> None:
    link = pair(cb=replace(FAST, detect_mult=5))
    link.run(3.0)
    assert link.a.detection_time() == pytest.approx(0.5)
    assert link.b.detection_time() == pytest.approx(0.3)


def test_detection_time_expiry() -> None:
    link = pair()
    link.run(3.0)
    link.cut = True
    cut_at = link.now
    link.run(cut_at + 1.0)
    downs = [e for e in link.events["a"] if isinstance(e, StateChanged) and e.new == S.DOWN]
    assert downs and downs[0].diag == Diag.CONTROL_DETECTION_TIME_EXPIRED and downs[0].failure
    assert link.a.remote_discr == 0
    assert link.a.stats.last_down_at is not None
    # Down between 0.3 s (detection time) after the last packet, so at most 0.3 s after the cut.
    assert link.a.stats.last_down_at - cut_at <= 0.3 + 1e-9
    assert link.a.stats.flaps == 1


def test_recovers_after_the_link_heals() -> None:
    link = pair()
    link.run(3.0)
    link.cut = True
    link.run(4.0)
    link.cut = False
    link.run(8.0)
    assert link.a.state == S.UP and link.b.state == S.UP


def test_no_periodic_transmit_when_remote_min_rx_is_zero() -> None:
    s = fresh(state=S.UP)
    feed(s, pkt(S.UP, required_min_rx=0), 0.0)
    s.take_packets()
    s.tick(5.0)
    assert s.take_packets() == []


@pytest.mark.parametrize("mult,high", [(3, 1.0), (1, 0.9)])
def test_jitter_bounds(mult: int, high: float) -> None:
    link = pair(ca=replace(FAST, detect_mult=mult), cb=replace(FAST, detect_mult=mult), seed=42)
    link.run(3.0)
    link.sent["a"].clear()
    link.run(60.0)
    times = [t for t, p in link.sent["a"] if not p.final]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) > 400
    assert min(gaps) >= 0.075 - 1e-9
    assert max(gaps) <= 0.1 * high + 1e-9
    assert max(gaps) - min(gaps) > 0.01  # really jittered


def test_passive_waits_for_the_peer() -> None:
    s = Session(replace(FAST, passive=True), 11, rng=random.Random(1))
    s.start(0.0)
    s.tick(10.0)
    assert s.take_packets() == []
    feed(s, pkt(S.DOWN, your_discriminator=0), 10.0)
    assert s.state == S.INIT
    assert s.take_packets()  # it answers once it has heard the peer


def test_passive_and_active_come_up() -> None:
    link = pair(ca=replace(FAST, passive=True))
    link.run(4.0)
    assert link.a.state == link.b.state == S.UP


def test_admin_down_is_sent_and_seen_as_such() -> None:
    link = pair()
    link.run(3.0)
    link.events["b"].clear()
    link.a.admin_down(link.now)
    link._deliver()
    assert link.a.state == S.ADMIN_DOWN
    assert link.sent["a"][-1][1].state == S.ADMIN_DOWN and link.sent["a"][-1][1].diag == Diag.ADMINISTRATIVELY_DOWN
    (event,) = [e for e in link.events["b"] if isinstance(e, StateChanged)]
    assert event.new == S.DOWN and not event.failure
    link.run(link.now + 3.0)
    assert link.b.state == S.DOWN  # stays down while the other side is AdminDown


def test_your_discriminator_must_be_ours() -> None:
    s = fresh(state=S.UP)
    feed(s, pkt(S.DOWN, your_discriminator=99), 0.01)
    assert s.state == S.UP and s.stats.packets_discarded == 1


def test_rejects_invalid_local_discriminator() -> None:
    with pytest.raises(ValueError):
        Session(FAST, 0)


# --- authentication (§6.7.4) ------------------------------------------------------

KEY = AuthConfig(AuthType.METICULOUS_KEYED_SHA1, 3, b"s3cret")
KEYED = AuthConfig(AuthType.KEYED_SHA1, 3, b"s3cret")


@pytest.mark.parametrize("a", [KEY, KEYED])
def test_authenticated_sessions_come_up(a: AuthConfig) -> None:
    link = pair(replace(FAST, auth=a), replace(FAST, auth=a))
    link.run(3.0)
    assert link.a.state == S.UP and link.b.state == S.UP
    assert link.a.stats.packets_discarded == 0
    assert all(p.auth is not None and p.auth.auth_type == a.auth_type for _, p in link.sent["a"])


def test_wrong_key_stays_down() -> None:
    link = pair(replace(FAST, auth=KEY), replace(FAST, auth=replace(KEY, key=b"other")))
    link.run(5.0)
    assert link.a.state == S.DOWN and link.b.state == S.DOWN
    assert "digest mismatch" in (link.a.stats.last_discard or "")


def test_auth_type_and_key_id_must_match() -> None:
    link = pair(replace(FAST, auth=KEY), replace(FAST, auth=replace(KEY, key_id=4)))
    link.run(3.0)
    assert link.a.state == S.DOWN and "Key ID" in (link.a.stats.last_discard or "")
    link = pair(replace(FAST, auth=KEY), replace(FAST, auth=KEYED))
    link.run(3.0)
    assert link.a.state == S.DOWN and "Auth Type" in (link.a.stats.last_discard or "")


def test_a_bit_must_match_configuration() -> None:
    link = pair(replace(FAST, auth=KEY), FAST)
    link.run(3.0)
    assert "A bit clear" in (link.a.stats.last_discard or "")
    assert "A bit set" in (link.b.stats.last_discard or "")
    assert link.a.state == S.DOWN and link.b.state == S.DOWN


def signed(a: AuthConfig, seq: int, state: SessionState = S.UP, **kw: object) -> tuple[ControlPacket, bytes]:
    raw = bfd_auth.sign(pkt(state, **kw), a, seq)
    return decode(raw), raw


def test_meticulous_rejects_replay_and_accepts_next() -> None:
    s = fresh(replace(FAST, auth=KEY))
    p, raw = signed(KEY, 1000, S.INIT)
    s.receive(p, raw, 0.0)
    assert s.state == S.UP and s.rcv_auth_seq == 1000
    s.receive(p, raw, 0.01)  # the same sequence number again: replay
    assert s.stats.packets_discarded == 1
    p, raw = signed(KEY, 1001)
    s.receive(p, raw, 0.02)
    assert s.stats.packets_discarded == 1 and s.rcv_auth_seq == 1001
    p, raw = signed(KEY, 1001 + 3 * 3 + 1)  # beyond 3 × Detect Mult
    s.receive(p, raw, 0.03)
    assert s.stats.packets_discarded == 2


def test_keyed_accepts_the_same_sequence() -> None:
    s = fresh(replace(FAST, auth=KEYED))
    for t in (0.0, 0.01):
        p, raw = signed(KEYED, 5, S.INIT)
        s.receive(p, raw, t)
    assert s.stats.packets_discarded == 0


def test_sequence_window_wraps() -> None:
    assert sequence_in_window(3, 0xFFFFFFFE, 3, meticulous=True)
    assert not sequence_in_window(0xFFFFFFFE, 0xFFFFFFFE, 3, meticulous=True)
    assert sequence_in_window(0xFFFFFFFE, 0xFFFFFFFE, 3, meticulous=False)
    assert not sequence_in_window(0xFFFFFFFD, 0xFFFFFFFE, 3, meticulous=False)


def test_sequence_forgotten_after_twice_the_detection_time() -> None:
    s = fresh(replace(FAST, auth=KEY))
    p, raw = signed(KEY, 1000, S.INIT)
    s.receive(p, raw, 0.0)
    s.tick(0.5)  # Down after 0.3 s; still known
    assert s.auth_seq_known
    s.tick(0.61)
    assert not s.auth_seq_known
    p, raw = signed(KEY, 5, S.DOWN)  # a restarted peer with a new sequence is accepted
    s.receive(p, raw, 0.7)
    assert s.stats.packets_discarded == 0


def test_tampered_packet_is_rejected() -> None:
    s = fresh(replace(FAST, auth=KEY))
    _, raw = signed(KEY, 1, S.INIT)
    bad = bytearray(raw)
    bad[16] ^= 1  # Desired Min TX
    s.receive(decode(bytes(bad)), bytes(bad), 0.0)
    assert s.state == S.DOWN and "digest" in (s.stats.last_discard or "")


def test_read_key(tmp_path: Path) -> None:
    f = tmp_path / "k"
    f.write_bytes(b"abc\n")
    assert read_key(f) == b"abc"
    f.write_bytes(b"x" * 21)
    with pytest.raises(BfdAuthError):
        read_key(f)
    f.write_bytes(b"\n")
    with pytest.raises(BfdAuthError):
        read_key(f)
    assert "abc" not in repr(AuthConfig(AuthType.KEYED_SHA1, 1, b"abc"))
