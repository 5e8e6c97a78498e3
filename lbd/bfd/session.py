"""The BFD session state machine, asynchronous mode (RFC 5880 §6), sans-IO.

Time (seconds, float, monotonic) and received packets come in; packets to send
(bytes) and state changes go out. No sockets, no clock, no sleeping: the
caller asks :meth:`Session.next_deadline` and calls :meth:`Session.tick` then.
Demand mode and the Echo function are not implemented (never requested:
the D bit is never set, Required Min Echo RX Interval is always 0).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lbd.bfd import auth as bfd_auth
from lbd.bfd.auth import AuthConfig
from lbd.bfd.packet import ControlPacket, Diag, SessionState, encode

SLOW_TX = 1_000_000  # µs; §6.8.3: DesiredMinTxInterval while not Up is at least one second


@dataclass(frozen=True)
class SessionConfig:
    desired_min_tx: int = 300_000  # µs, MetalLB's default transmit_interval
    required_min_rx: int = 300_000  # µs, MetalLB's default receive_interval
    detect_mult: int = 3
    passive: bool = False  # §6.1: wait for the peer's first packet before sending
    auth: AuthConfig | None = None


@dataclass(frozen=True)
class StateChanged:
    old: SessionState
    new: SessionState
    diag: Diag
    remote_admin_down: bool = False  # the peer said AdminDown: not a failure (RFC 5882 §3.2)

    @property
    def failure(self) -> bool:
        """RFC 5882 §3: what a client must act on, a session leaving Up for Down
        for any reason other than the peer's administrative AdminDown."""
        return self.old == SessionState.UP and self.new == SessionState.DOWN and not self.remote_admin_down


@dataclass(frozen=True)
class PacketDiscarded:
    reason: str


Event = StateChanged | PacketDiscarded


@dataclass
class SessionStats:
    packets_sent: int = 0
    packets_received: int = 0
    packets_discarded: int = 0
    last_discard: str | None = None
    transitions: int = 0
    flaps: int = 0  # Up -> Down (or AdminDown)
    up_since: float | None = None
    last_down_at: float | None = None
    last_down_diag: Diag | None = None
    last_down_reason: str | None = None


class Session:
    """One BFD session (RFC 5880 §6.8.1 state variables as attributes)."""

    def __init__(self, config: SessionConfig, local_discr: int, *, rng: random.Random | None = None,
                 name: str = "") -> None:
        if not 0 < local_discr <= 0xFFFFFFFF:
            raise ValueError("the local discriminator must be a non-zero 32-bit value (§6.8.1)")
        self.name = name
        self.config = config
        self.rng = rng if rng is not None else random.SystemRandom()
        # §6.8.1 state variables
        self.state = SessionState.DOWN
        self.remote_state = SessionState.DOWN
        self.local_discr = local_discr
        self.remote_discr = 0
        self.local_diag = Diag.NONE
        self.desired_min_tx = max(config.desired_min_tx, SLOW_TX)
        self.required_min_rx = config.required_min_rx
        self.remote_min_rx = 1  # µs, §6.8.1 initial value
        self.remote_desired_min_tx = 0  # last received Desired Min TX Interval
        self.remote_detect_mult = 0
        self.detect_mult = config.detect_mult
        self.xmit_auth_seq = self.rng.randrange(1 << 32)  # §6.8.1: initialised to a random value
        self.rcv_auth_seq = 0
        self.auth_seq_known = False
        # the intervals actually in force while a Poll Sequence is pending (§6.8.3)
        self._tx_local = self.desired_min_tx
        self._rx_detect = self.required_min_rx
        self.polling = False
        self._final_pending = False
        self._started = False
        self._next_tx: float | None = None
        self._detect_at: float | None = None
        self._auth_known_until: float | None = None
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self.stats = SessionStats()

    # ----------------------------------------------------------------- public

    def start(self, now: float) -> list[Event]:
        self._started = True
        if self._may_transmit():
            self._next_tx = now
        return self.tick(now)

    def take_packets(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def detection_time(self) -> float:
        """Seconds (§6.8.4): the remote Detect Mult times the larger of our
        RequiredMinRxInterval and the remote's last Desired Min TX Interval."""
        mult = self.remote_detect_mult or self.detect_mult
        return mult * max(self._rx_detect, self.remote_desired_min_tx) / 1e6

    def transmit_interval(self) -> float:
        """Seconds before jitter (§6.8.7)."""
        return max(self._tx_local, self.remote_min_rx) / 1e6

    @property
    def next_transmit(self) -> float | None:
        return self._next_tx

    def next_deadline(self) -> float | None:
        times = [t for t in (self._next_tx, self._detect_at, self._auth_known_until) if t is not None]
        return min(times) if times else None

    def tick(self, now: float) -> list[Event]:
        if self._detect_at is not None and now >= self._detect_at:
            self._detect_at = None
            if self.state in (SessionState.INIT, SessionState.UP):
                # §6.8.4: no packet within the Detection Time.
                self.remote_discr = 0
                self.remote_state = SessionState.DOWN
                self._set_state(SessionState.DOWN, Diag.CONTROL_DETECTION_TIME_EXPIRED, now,
                                "no BFD packet within the detection time")
        if self._auth_known_until is not None and now >= self._auth_known_until:
            # §6.8.1: forget the sequence after twice the Detection Time of silence.
            self.auth_seq_known = False
            self._auth_known_until = None
        if self._next_tx is not None and now >= self._next_tx:
            self._transmit(now)
        return self._flush()

    def receive(self, pkt: ControlPacket, raw: bytes, now: float) -> list[Event]:
        """A packet that :func:`lbd.bfd.packet.decode` accepted, demultiplexed
        to this session: the rest of §6.8.6."""
        if pkt.your_discriminator not in (0, self.local_discr):
            return self._discard(f"Your Discriminator {pkt.your_discriminator} is not ours ({self.local_discr})")
        a = self.config.auth
        if pkt.auth is not None and a is None:
            return self._discard("A bit set and no authentication in use")
        if pkt.auth is None and a is not None:
            return self._discard("A bit clear and authentication in use")
        if a is not None:
            why = bfd_auth.verify(pkt, raw, a, self.rcv_auth_seq if self.auth_seq_known else None)
            if why is not None:
                return self._discard(f"authentication: {why}")
            assert pkt.auth is not None
            self.rcv_auth_seq = pkt.auth.sequence
            self.auth_seq_known = True
        self.stats.packets_received += 1
        first = self.remote_discr == 0
        self.remote_discr = pkt.my_discriminator
        self.remote_state = pkt.state
        self.remote_min_rx = pkt.required_min_rx
        self.remote_desired_min_tx = pkt.desired_min_tx
        self.remote_detect_mult = pkt.detect_mult
        if pkt.final and self.polling:
            self._end_poll()
        if first and self.config.passive and self._next_tx is None and self._may_transmit():
            self._next_tx = now  # §6.1: the passive side starts once it has heard the peer
        self._reschedule_tx(now)
        if self.state == SessionState.ADMIN_DOWN:
            return self._flush()  # §6.8.6: discarded (after the variables above)
        old = self.state
        if pkt.state == SessionState.ADMIN_DOWN:
            if self.state != SessionState.DOWN:
                self._set_state(SessionState.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN, now,
                                "the peer went AdminDown", remote_admin_down=True)
        elif self.state == SessionState.DOWN:
            if pkt.state == SessionState.DOWN:
                self._set_state(SessionState.INIT, Diag.NONE, now)
            elif pkt.state == SessionState.INIT:
                self._set_state(SessionState.UP, Diag.NONE, now)
        elif self.state == SessionState.INIT:
            if pkt.state in (SessionState.INIT, SessionState.UP):
                self._set_state(SessionState.UP, Diag.NONE, now)
        elif pkt.state == SessionState.DOWN:  # we are Up
            self._set_state(SessionState.DOWN, Diag.NEIGHBOR_SIGNALED_DOWN, now, "the peer signalled Down")
        # §6.8.6: a packet not discarded counts as received for detection.
        detect = self.detection_time()
        self._detect_at = now + detect if self.state in (SessionState.INIT, SessionState.UP) else None
        if a is not None:
            self._auth_known_until = now + 2 * detect
        if pkt.poll:
            # §6.8.7: the Final answer goes out at once, whatever the timer.
            self._final_pending = True
            self._transmit(now, periodic=False)
        elif self.state != old and self._may_transmit():
            self._reschedule_tx(now)
            self._transmit(now, periodic=False)  # tell the peer of the change without waiting
        return self._flush()

    def admin_down(self, now: float) -> list[Event]:
        """Administratively down (§6.8.16), e.g. a graceful stop: the peer's
        client must not treat it as a failure (RFC 5882 §3.2). One packet is
        sent at once; periodic transmission goes on while the session lives."""
        if self.state != SessionState.ADMIN_DOWN:
            self._set_state(SessionState.ADMIN_DOWN, Diag.ADMINISTRATIVELY_DOWN, now, "administratively down")
            if self.remote_min_rx != 0:
                self._transmit(now, periodic=False)
        return self._flush()

    def enable(self, now: float) -> list[Event]:
        """Leave AdminDown (§6.8.16: to Down, diag cleared)."""
        if self.state == SessionState.ADMIN_DOWN:
            self._set_state(SessionState.DOWN, Diag.NONE, now)
            self._reschedule_tx(now)
        return self._flush()

    def set_params(self, config: SessionConfig, now: float) -> list[Event]:
        """New intervals (and passive/auth flags): applied per §6.8.3, with a
        Poll Sequence when the session is Up."""
        self.config = config
        self.detect_mult = config.detect_mult
        if self.state == SessionState.UP:
            changed = (config.desired_min_tx, config.required_min_rx) != (self.desired_min_tx, self.required_min_rx)
            if config.desired_min_tx < self._tx_local:
                self._tx_local = config.desired_min_tx  # a decrease applies at once
            if config.required_min_rx > self._rx_detect:
                self._rx_detect = config.required_min_rx  # an increase applies at once
            self.desired_min_tx, self.required_min_rx = config.desired_min_tx, config.required_min_rx
            if changed:
                self.polling = True
        else:
            self.desired_min_tx = max(config.desired_min_tx, SLOW_TX)
            self.required_min_rx = config.required_min_rx
            self._tx_local, self._rx_detect = self.desired_min_tx, self.required_min_rx
        self._reschedule_tx(now)
        return self._flush()

    # -------------------------------------------------------------- internals

    def _may_transmit(self) -> bool:
        """§6.8.7: nothing periodic to a peer that wants none, nor from a
        passive side that has not heard its peer yet."""
        if not self._started or self.remote_min_rx == 0:
            return False
        return not (self.config.passive and self.remote_discr == 0)

    def _jittered(self) -> float:
        # §6.8.7: 0-25% less than the interval; with Detect Mult 1, 10-25% less.
        low, high = (0.75, 0.90) if self.detect_mult == 1 else (0.75, 1.0)
        return self.transmit_interval() * self.rng.uniform(low, high)

    def _reschedule_tx(self, now: float) -> None:
        if not self._may_transmit():
            self._next_tx = None
        elif self._next_tx is None:
            self._next_tx = now + self._jittered()
        else:
            # A shorter interval takes effect now; a longer one at the next packet.
            self._next_tx = min(self._next_tx, now + self._jittered())

    def _transmit(self, now: float, periodic: bool = True) -> None:
        final = self._final_pending
        pkt = ControlPacket(
            state=self.state, my_discriminator=self.local_discr, your_discriminator=self.remote_discr,
            diag=self.local_diag, detect_mult=self.detect_mult, desired_min_tx=self.desired_min_tx,
            required_min_rx=self.required_min_rx, required_min_echo_rx=0,
            poll=self.polling and not final, final=final,  # §6.5: never both
        )
        self._final_pending = False
        a = self.config.auth
        if a is not None:
            # §6.7.4: meticulous increments for every packet; keyed SHA1 may, and does too.
            self.xmit_auth_seq = (self.xmit_auth_seq + 1) & 0xFFFFFFFF
            raw = bfd_auth.sign(pkt, a, self.xmit_auth_seq)
        else:
            raw = encode(pkt)
        self._out.append(raw)
        self.stats.packets_sent += 1
        if periodic or self._next_tx is None:
            self._next_tx = now + self._jittered() if self._may_transmit() else None

    def _end_poll(self) -> None:
        self.polling = False
        self._tx_local = self.desired_min_tx
        self._rx_detect = self.required_min_rx

    def _set_state(self, new: SessionState, diag: Diag, now: float, reason: str = "",
                   remote_admin_down: bool = False) -> None:
        old = self.state
        if new == old:
            return
        self.state = new
        self.local_diag = diag
        st = self.stats
        st.transitions += 1
        if new == SessionState.UP:
            st.up_since = now
            # §6.8.3: leave the one-second pace for the configured one, by a Poll Sequence.
            target = self.config.desired_min_tx
            if target != self.desired_min_tx:
                self.desired_min_tx = target
                self._tx_local = min(self._tx_local, target)
                self.polling = True
        else:
            if old == SessionState.UP:
                st.flaps += 1
                st.up_since = None
                st.last_down_at = now
                st.last_down_diag = diag
                st.last_down_reason = reason or diag.label
            self.polling = False
            self.desired_min_tx = max(self.config.desired_min_tx, SLOW_TX)
            self._tx_local, self._rx_detect = self.desired_min_tx, self.required_min_rx
            if new != SessionState.INIT:
                self._detect_at = None
        self._events.append(StateChanged(old, new, diag, remote_admin_down))

    def _discard(self, reason: str) -> list[Event]:
        self.stats.packets_discarded += 1
        self.stats.last_discard = reason
        self._events.append(PacketDiscarded(reason))
        return self._flush()

    def _flush(self) -> list[Event]:
        out, self._events = self._events, []
        return out


def describe(session: Session) -> dict[str, object]:
    """Status of one session for lbd-ctl (intervals in milliseconds)."""
    st = session.stats
    return {
        "state": session.state.label,
        "remote_state": session.remote_state.label,
        "local_discriminator": session.local_discr,
        "remote_discriminator": session.remote_discr,
        "local_diag": session.local_diag.label,
        "transmit_interval_ms": round(session.transmit_interval() * 1000, 1),
        "detection_time_ms": round(session.detection_time() * 1000, 1),
        "desired_min_tx_ms": session.desired_min_tx / 1000,
        "required_min_rx_ms": session.required_min_rx / 1000,
        "remote_min_rx_ms": session.remote_min_rx / 1000,
        "remote_desired_min_tx_ms": session.remote_desired_min_tx / 1000,
        "remote_detect_mult": session.remote_detect_mult,
        "polling": session.polling,
        "packets_sent": st.packets_sent,
        "packets_received": st.packets_received,
        "packets_discarded": st.packets_discarded,
        "last_discard": st.last_discard,
        "transitions": st.transitions,
        "flaps": st.flaps,
        "last_down_diag": st.last_down_diag.label if st.last_down_diag is not None else None,
        "last_down_reason": st.last_down_reason,
    }

