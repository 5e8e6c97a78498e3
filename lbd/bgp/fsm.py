"""The BGP session state machine (RFC 4271 §8), sans-IO.

One :class:`Session` per peer. The caller feeds it connection events, received
bytes and the current time; it returns events (:mod:`lbd.bgp.events`; some are
actions for the caller: :class:`~lbd.bgp.events.ConnectRequested`,
:class:`~lbd.bgp.events.CloseRequested`) and queues the bytes to write, fetched
with :meth:`Session.data_to_send` (the h11 style). Timers are deadlines: the
caller calls :meth:`Session.tick` at :meth:`Session.next_deadline`. What the
session needs to know comes as a plain :class:`~lbd.bgp.settings.SessionSettings`.

The routes live in the session's :class:`~lbd.bgp.rib.AdjRibOut`; the FSM
decides when they go out: on Established everything, followed by End-of-RIB
(RFC 4724 §2); later changes only the difference; a ROUTE-REFRESH resends the
family (inside BoRR/EoRR with enhanced route refresh, RFC 7313); a new
connection starts from nothing, so a reconnect resends it all.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Mapping

import structlog

from lbd.backoff import capped_backoff
from lbd.bgp import codec
from lbd.bgp.attributes import AS_TRANS
from lbd.bgp.codec import (
    EnhancedRouteRefreshCap,
    GracefulRestartCap,
    MessageReader,
    MsgType,
    MultiprotocolCap,
    Notification,
    Open,
    RouteRefresh,
    RouteRefreshCap,
)
from lbd.bgp.errors import BgpError, CeaseSubcode, ErrorCode, FsmSubcode, OpenSubcode, describe
from lbd.bgp.events import (
    CloseRequested,
    ConnectRequested,
    EndOfRibSent,
    Event,
    Negotiated,
    NotificationReceived,
    NotificationSent,
    OpenReceived,
    RouteRefreshReceived,
    SessionDown,
    SessionEstablished,
    State,
    StateChanged,
    UpdateReceived,
    UpdatesSent,
)
from lbd.bgp.packing import EncodeContext, RouteAttrs, UpdatePacker
from lbd.bgp.rib import AdjRibOut, UpdateBatch
from lbd.bgp.settings import IPV4_UNICAST, Family, SessionSettings
from lbd.model import IPAddress, IPNetwork

log = structlog.get_logger(__name__)

_CONNECTED = (State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED)


@dataclass
class SessionStats:
    updates_sent: int = 0
    updates_received: int = 0
    notifications_sent: int = 0
    notifications_received: int = 0
    keepalives_sent: int = 0
    keepalives_received: int = 0
    route_refreshes_received: int = 0
    established_transitions: int = 0
    established_at: float | None = None
    last_error: str | None = None


class Session:
    """One BGP peer's session FSM; its routes are in :attr:`rib`."""

    def __init__(self, settings: SessionSettings, *, name: str = "", restarting: bool = False) -> None:
        self.settings = settings
        self.name = name
        self.state = State.IDLE
        self.stats = SessionStats()
        self.negotiated: Negotiated | None = None
        self.peer_open: Open | None = None
        self.local_address: IPAddress | None = None
        self.remote_address: IPAddress | None = None
        self.outbound = True
        self.last_error: str | None = None
        self.log = log.bind(peer=name)
        # RFC 4724 §4.1: the R bit tells the peer we restarted; cleared once a
        # session has come up again.
        self._restarting = restarting
        self._auto_restart = False
        self._failures = 0
        self._retry_at: float | None = None
        self._connect_deadline: float | None = None
        self._hold_at: float | None = None
        self._keepalive_at: float | None = None
        self._out = bytearray()
        self._reader = MessageReader()
        self._events: list[Event] = []
        self.rib = AdjRibOut()
        self._other_next_hop: IPAddress | None = None
        self._nh6_ll: ipaddress.IPv6Address | None = None

    # ----------------------------------------------------------------- public

    @property
    def restarting(self) -> bool:
        return self._restarting

    @property
    def advertised(self) -> Mapping[IPNetwork, RouteAttrs]:
        return self.rib.advertised

    @property
    def desired(self) -> Mapping[IPNetwork, RouteAttrs]:
        return self.rib.desired

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def start(self, now: float) -> list[Event]:
        """ManualStart with automatic restart after failures (RFC 4271 §8.1.2)."""
        self._auto_restart = True
        if self.state == State.IDLE:
            self._failures = 0
            self._begin(now)
        return self._flush()

    def stop(self, now: float, graceful: bool = False) -> list[Event]:
        """ManualStop. ``graceful``: when graceful restart was negotiated, close
        the connection without a NOTIFICATION so the peer keeps our routes as
        stale (RFC 4724 §4.2); otherwise send Cease / Administrative Shutdown."""
        self._auto_restart = False
        if self.state in _CONNECTED:
            neg = self.negotiated
            if graceful and neg is not None and neg.graceful_restart and self.state == State.ESTABLISHED:
                self._drop(now, "graceful stop (graceful restart)", None)
            else:
                self._drop(now, "administrative shutdown", BgpError(ErrorCode.CEASE, CeaseSubcode.ADMINISTRATIVE_SHUTDOWN))
        elif self.state == State.CONNECT:
            self._emit(CloseRequested("stopped"))
            self._set_state(State.IDLE)
        else:
            self._set_state(State.IDLE)
        self._retry_at = None
        return self._flush()

    def bfd_down(self, now: float) -> list[Event]:
        """RFC 5882 §3.2 / §10.2: BFD saw the forwarding path fail (Up to Down,
        not the peer's AdminDown): the session goes down at once, with Cease /
        BFD Down (RFC 9384), and comes back through the normal FSM (connect
        retry). Ignored while no connection is up."""
        if self.state in _CONNECTED:
            self._drop(now, "BFD session down", BgpError(ErrorCode.CEASE, CeaseSubcode.BFD_DOWN))
        return self._flush()

    def connection_made(
        self,
        now: float,
        local_address: IPAddress | None = None,
        remote_address: IPAddress | None = None,
        outbound: bool = True,
        other_next_hop: IPAddress | None = None,
        next_hop_v6_link_local: ipaddress.IPv6Address | None = None,
    ) -> list[Event]:
        """A TCP connection is up (ours, or one the peer opened): send OPEN.

        Next hops: the connection's ``local_address`` for its own family,
        ``other_next_hop`` for the other family (the caller finds it on the
        same interface), unless the configuration fixes them.
        """
        if self.state in _CONNECTED:
            raise RuntimeError(f"connection_made in state {self.state.value}")
        self._other_next_hop = other_next_hop
        self._nh6_ll = next_hop_v6_link_local
        self.local_address = local_address
        self.remote_address = remote_address
        self.outbound = outbound
        self._reader = MessageReader()
        self.rib.reset()
        self.negotiated = None
        self.peer_open = None
        self._connect_deadline = None
        self._retry_at = None
        self._out += codec.encode_open(self._make_open())
        self._hold_at = now + self.settings.open_hold_time
        self._keepalive_at = None
        self._set_state(State.OPENSENT)
        return self._flush()

    def connection_failed(self, now: float, reason: str = "connect failed") -> list[Event]:
        """The TCP connect attempt failed (RFC 4271 §8.2.2 Connect: TcpConnectionFails)."""
        if self.state == State.CONNECT:
            self._note_error(reason)
            self._connect_deadline = None
            self._set_state(State.ACTIVE)
            self._schedule_retry(now)
        return self._flush()

    def connection_lost(self, now: float, reason: str = "connection closed by peer") -> list[Event]:
        if self.state in _CONNECTED:
            self._drop(now, reason, None, close=False)
        elif self.state == State.CONNECT:
            return self.connection_failed(now, reason)
        return self._flush()

    def handle_bytes(self, data: bytes, now: float) -> list[Event]:
        if self.state not in _CONNECTED:
            return self._flush()
        self._reader.feed(data)
        try:
            for msg_type, body in self._reader:
                self._handle_message(msg_type, body, now)
                if self.state not in _CONNECTED:
                    break
        except BgpError as exc:
            self._drop(now, exc.reason, exc)
        return self._flush()

    def tick(self, now: float) -> list[Event]:
        st = self.state
        if st == State.CONNECT and self._connect_deadline is not None and now >= self._connect_deadline:
            # ConnectRetryTimer expired while connecting: give up this attempt.
            self._note_error("connect timed out")
            self._emit(CloseRequested("connect timed out"))
            self._connect_deadline = None
            self._set_state(State.ACTIVE)
            self._schedule_retry(now)
        elif st in (State.IDLE, State.ACTIVE):
            if self._auto_restart and self._retry_at is not None and now >= self._retry_at:
                self._retry_at = None
                self._begin(now)
        elif st in _CONNECTED:
            if self._hold_at is not None and now >= self._hold_at:
                self._drop(now, "hold timer expired", BgpError(ErrorCode.HOLD_TIMER_EXPIRED, 0))
            elif self._keepalive_at is not None and now >= self._keepalive_at:
                self._send_keepalive(now)
        return self._flush()

    def next_deadline(self) -> float | None:
        st = self.state
        if st == State.CONNECT:
            return self._connect_deadline
        if st in (State.IDLE, State.ACTIVE):
            return self._retry_at if self._auto_restart else None
        times = [t for t in (self._hold_at, self._keepalive_at) if t is not None]
        return min(times) if times else None

    def set_routes(self, routes: Mapping[IPNetwork, RouteAttrs], now: float) -> list[Event]:
        """Level-triggered desired Adj-RIB-Out; sends only the difference.

        The first call also marks the table complete: until then an
        Established session sends nothing, not even End-of-RIB.
        """
        self.rib.set_desired(routes)
        return self._send_desired(now)

    def update_routes(self, changes: Mapping[IPNetwork, RouteAttrs | None], now: float) -> list[Event]:
        """``set_routes`` for a few routes (None: withdraw): the diff looks at these alone.
        Only after a first ``set_routes`` (the table is complete)."""
        self.rib.update_desired(changes)
        return self._send_desired(now)

    def _send_desired(self, now: float) -> list[Event]:
        """What the desired Adj-RIB-Out now asks for: its difference, or the first table."""
        if self.state == State.ESTABLISHED:
            if self.rib.initial_sent:
                self._write_updates(self.rib.diff(), now)
            else:
                self._send_initial(now)
        return self._flush()

    def close_collision(self, now: float) -> list[Event]:
        """Close this connection as the loser of a collision (RFC 4271 §6.8)."""
        self._auto_restart = False
        self._out.clear()  # not yet written: e.g. the KEEPALIVE answering the OPEN
        if self.state in _CONNECTED:
            self._drop(now, "connection collision", BgpError(ErrorCode.CEASE, CeaseSubcode.CONNECTION_COLLISION_RESOLUTION))
        return self._flush()

    def take_over(self, other: "Session") -> None:
        """Become the peer's session in place of ``other`` (the collision loser)."""
        self.rib.adopt(other.rib)
        self._auto_restart = True
        self._restarting = other._restarting
        self.stats = other.stats

    def uptime(self, now: float) -> float:
        if self.state != State.ESTABLISHED or self.stats.established_at is None:
            return 0.0
        return now - self.stats.established_at

    # --------------------------------------------------------------- internals

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _flush(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _set_state(self, new: State) -> None:
        if new != self.state:
            old, self.state = self.state, new
            self.log.debug("bgp_state", old=old.value, new=new.value)
            self._emit(StateChanged(old, new))

    def _note_error(self, reason: str) -> None:
        self.last_error = reason
        self.stats.last_error = reason

    def _backoff(self) -> float:
        # Clamped before the power: a peer down for days keeps retrying at the cap.
        return capped_backoff(self._failures, self.settings.connect_retry_initial, self.settings.connect_retry_max)

    def _schedule_retry(self, now: float) -> None:
        self._failures += 1
        self._retry_at = now + self._backoff()

    def _begin(self, now: float) -> None:
        if self.settings.passive:
            self._set_state(State.ACTIVE)  # wait for the peer to connect
            return
        self._connect_deadline = now + self.settings.connect_time
        self._set_state(State.CONNECT)
        self._emit(ConnectRequested())

    def _drop(self, now: float, reason: str, error: BgpError | None, close: bool = True) -> None:
        """Leave the connection: optionally send NOTIFICATION, close, go Idle."""
        was_established = self.state == State.ESTABLISHED
        if error is not None:
            self._out += codec.encode_notification(Notification(error.code, error.subcode, error.data))
            self.stats.notifications_sent += 1
            self._emit(NotificationSent(error.code, error.subcode, error.data))
            name = describe(error.code, error.subcode)
            reason = f"sent {name}" if reason in name else f"sent {name}: {reason}"
            self.log.warning("bgp_notification_sent", code=error.code, subcode=error.subcode, reason=reason)
        self._note_error(reason)
        if close:
            self._emit(CloseRequested(reason))
        self._hold_at = self._keepalive_at = None
        self.rib.close()
        self._set_state(State.IDLE)
        if was_established:
            self.log.info("bgp_session_down", reason=reason)
            self._emit(SessionDown(reason))
        if self._auto_restart:
            if self.settings.passive:
                self._set_state(State.ACTIVE)
            self._schedule_retry(now)

    def _make_open(self) -> Open:
        caps: list[codec.Capability] = [MultiprotocolCap(afi, safi) for afi, safi in self.settings.families]
        caps += [RouteRefreshCap(), EnhancedRouteRefreshCap()]
        if self.settings.graceful_restart:
            flags = codec.GR_RESTART_STATE if self._restarting else 0
            # F bit: the VIP routes' forwarding (the kernel's) survives an lbd restart.
            fams = tuple((afi, safi, codec.GR_AFI_FORWARDING) for afi, safi in self.settings.families)
            caps.append(GracefulRestartCap(flags, self.settings.graceful_restart_time, fams))
        hold = int(self.settings.hold_time)
        return Open.for_asn(self.settings.local_as, hold, self.settings.router_id, tuple(caps))

    def _handle_message(self, msg_type: int, body: bytes, now: float) -> None:
        st = self.state
        if msg_type == MsgType.NOTIFICATION:
            note = codec.decode_notification(body)
            self.stats.notifications_received += 1
            self._emit(NotificationReceived(note.code, note.subcode, note.data))
            reason = f"received {describe(note.code, note.subcode)}"
            self.log.warning("bgp_notification_received", code=note.code, subcode=note.subcode, data=note.data.hex())
            self._drop(now, reason, None)  # never answer a NOTIFICATION (RFC 4271 §6.4)
            return
        if st == State.OPENSENT:
            if msg_type != MsgType.OPEN:
                raise BgpError(ErrorCode.FSM, FsmSubcode.UNEXPECTED_IN_OPENSENT, reason=f"message type {msg_type} in OpenSent")
            self._handle_open(codec.decode_open(body), now)
            return
        if msg_type == MsgType.OPEN:
            sub = FsmSubcode.UNEXPECTED_IN_OPENCONFIRM if st == State.OPENCONFIRM else FsmSubcode.UNEXPECTED_IN_ESTABLISHED
            raise BgpError(ErrorCode.FSM, sub, reason=f"OPEN in {st.value}")
        neg = self.negotiated
        assert neg is not None
        if neg.hold_time:
            self._hold_at = now + neg.hold_time
        if st == State.OPENCONFIRM:
            if msg_type != MsgType.KEEPALIVE:
                raise BgpError(ErrorCode.FSM, FsmSubcode.UNEXPECTED_IN_OPENCONFIRM, reason=f"message type {msg_type} in OpenConfirm")
            self.stats.keepalives_received += 1
            self._established(now)
            return
        # Established
        if msg_type == MsgType.KEEPALIVE:
            self.stats.keepalives_received += 1
        elif msg_type == MsgType.UPDATE:
            update = codec.decode_update(body, four_octet=neg.four_octet, ibgp=neg.ibgp, peer_as=neg.peer_as)
            self.stats.updates_received += 1
            if update.problems:
                self.log.info(
                    "bgp_update_error_handled",
                    action=max(p.action for p in update.problems).name.lower(),
                    errors=[p.error.reason for p in update.problems],
                )
            self._emit(UpdateReceived(update))
        elif msg_type == MsgType.ROUTE_REFRESH:
            rr = codec.decode_route_refresh(body)
            self.stats.route_refreshes_received += 1
            self._emit(RouteRefreshReceived(rr.afi, rr.safi, rr.subtype))
            # RFC 7313 §4: only subtype 0 asks us to resend; BoRR/EoRR from the
            # peer concern its own routes and unknown subtypes are ignored.
            if rr.subtype == codec.RR_NORMAL and (rr.afi, rr.safi) in neg.families:
                self._resend_family((rr.afi, rr.safi), now)

    def _handle_open(self, msg: Open, now: float) -> None:
        neg = negotiate(self.settings, msg)
        self.peer_open = msg
        self.negotiated = neg
        self._emit(OpenReceived(neg.peer_router_id, neg.peer_as))
        # RFC 4271 §8.2.2 OpenSent + BGPOpen: KEEPALIVE, set timers, OpenConfirm.
        self._out += codec.KEEPALIVE_BYTES
        self.stats.keepalives_sent += 1
        hold = neg.hold_time
        self._hold_at = now + hold if hold else None
        self._keepalive_at = now + neg.keepalive_time if hold else None
        self._set_state(State.OPENCONFIRM)

    def _established(self, now: float) -> None:
        neg = self.negotiated
        assert neg is not None
        self._failures = 0
        self.stats.established_at = now
        self.stats.established_transitions += 1
        self.last_error = None
        self._set_state(State.ESTABLISHED)
        self.log.info("bgp_session_up", peer_as=neg.peer_as, hold=neg.hold_time, capabilities=neg.capabilities())
        self._emit(SessionEstablished(neg))
        cfg = self.settings
        hops = [self.local_address, self._other_next_hop]
        nh4 = cfg.next_hop_v4 or next((a for a in hops if isinstance(a, ipaddress.IPv4Address)), None)
        nh6 = cfg.next_hop_v6 or next((a for a in hops if isinstance(a, ipaddress.IPv6Address) and not a.is_link_local), None)
        packer = UpdatePacker(
            EncodeContext(
                local_as=cfg.local_as,
                ibgp=neg.ibgp,
                four_octet=neg.four_octet,
                next_hop_v4=nh4,
                next_hop_v6=nh6,
                next_hop_v6_link_local=cfg.next_hop_v6_link_local or self._nh6_ll,
            )
        )
        self.rib.open(packer, neg.families)
        if self.rib.ready:
            self._send_initial(now)

    def _send_initial(self, now: float) -> None:
        """The whole table, then End-of-RIB per family (RFC 4724 §2).

        Only once the owner has set the routes at least once: a restarted lbd
        that came up before its first plan must not send End-of-RIB over an
        empty table, or the peer would flush the routes it kept for us.
        """
        neg = self.negotiated
        assert neg is not None
        batch, counts = self.rib.initial()
        self._write_updates(batch, now)
        for fam in neg.families:
            self._out += codec.end_of_rib(*fam)
            self.stats.updates_sent += 1
            self._emit(EndOfRibSent(fam[0], fam[1], counts.get(fam, 0)))
        self._restarting = False
        self._touch_keepalive(now)

    def _resend_family(self, fam: Family, now: float) -> None:
        neg = self.negotiated
        if neg is None or not self.rib.is_open:
            return
        enhanced = neg.enhanced_route_refresh
        if enhanced:
            self._out += codec.encode_route_refresh(RouteRefresh(fam[0], fam[1], codec.RR_BORR))
        self._write_updates(self.rib.refresh(fam), now)
        if enhanced:
            self._out += codec.encode_route_refresh(RouteRefresh(fam[0], fam[1], codec.RR_EORR))

    def _write_updates(self, batch: UpdateBatch | None, now: float) -> None:
        if batch is None or not batch.messages:
            return
        self._out += b"".join(batch.messages)
        self.stats.updates_sent += len(batch.messages)
        self._emit(UpdatesSent(len(batch.messages), batch.announced, batch.withdrawn))
        self._touch_keepalive(now)

    def _touch_keepalive(self, now: float) -> None:
        # RFC 4271 §10: an UPDATE restarts the KeepaliveTimer as a KEEPALIVE does.
        neg = self.negotiated
        if neg is not None and neg.hold_time:
            self._keepalive_at = now + neg.keepalive_time

    def _send_keepalive(self, now: float) -> None:
        self._out += codec.KEEPALIVE_BYTES
        self.stats.keepalives_sent += 1
        self._touch_keepalive(now)


def negotiate(cfg: SessionSettings, msg: Open) -> Negotiated:
    """Check the peer's OPEN against our settings (RFC 4271 §6.2) and settle the
    session's parameters; a refusal raises the BgpError its NOTIFICATION carries."""
    asn = msg.asn
    four_octet = msg.capability(codec.FourOctetAsCap) is not None
    if asn == 0 or (msg.my_as == AS_TRANS and not four_octet):
        raise BgpError(ErrorCode.OPEN_MESSAGE, OpenSubcode.BAD_PEER_AS, reason=f"peer AS {asn}")  # RFC 7607, RFC 6793
    if cfg.peer_as is not None:
        if asn != cfg.peer_as:
            raise BgpError(ErrorCode.OPEN_MESSAGE, OpenSubcode.BAD_PEER_AS, reason=f"peer AS {asn}, expected {cfg.peer_as}")
    elif cfg.dynamic_asn == "internal" and asn != cfg.local_as:
        raise BgpError(ErrorCode.OPEN_MESSAGE, OpenSubcode.BAD_PEER_AS, reason=f"peer AS {asn} is not internal")
    elif cfg.dynamic_asn == "external" and asn == cfg.local_as:
        raise BgpError(ErrorCode.OPEN_MESSAGE, OpenSubcode.BAD_PEER_AS, reason=f"peer AS {asn} is not external")
    if msg.hold_time in (1, 2):
        raise BgpError(ErrorCode.OPEN_MESSAGE, OpenSubcode.UNACCEPTABLE_HOLD_TIME, reason=f"hold time {msg.hold_time}")
    ibgp = asn == cfg.local_as
    rid = msg.router_id
    # RFC 6286 §2.2: any non-zero identifier, distinct from ours within an AS.
    if int(rid) == 0 or (ibgp and rid == cfg.router_id):
        raise BgpError(ErrorCode.OPEN_MESSAGE, OpenSubcode.BAD_BGP_IDENTIFIER, rid.packed, f"BGP identifier {rid}")
    peer_fams = msg.families() or (IPV4_UNICAST,)  # no MP capability: IPv4 unicast (RFC 4760 §8)
    families = tuple(f for f in cfg.families if f in peer_fams)
    if not families:
        # RFC 5492 §5: the peer lacks every family we need; data lists what we want.
        wanted = b"".join(codec.encode_capability(MultiprotocolCap(a, s)) for a, s in cfg.families)
        raise BgpError(ErrorCode.OPEN_MESSAGE, OpenSubcode.UNSUPPORTED_CAPABILITY, wanted, "no common address family")
    hold = min(int(cfg.hold_time), msg.hold_time)
    keepalive = 0.0
    if hold:
        keepalive = hold / 3
        if cfg.keepalive_time is not None and cfg.keepalive_time > 0:
            keepalive = min(cfg.keepalive_time, hold / 3)
    gr_cap = msg.capability(GracefulRestartCap)
    return Negotiated(
        peer_as=asn,
        peer_router_id=rid,
        hold_time=hold,
        keepalive_time=keepalive,
        four_octet=four_octet,
        families=families,
        route_refresh=msg.capability(RouteRefreshCap) is not None,
        enhanced_route_refresh=msg.capability(EnhancedRouteRefreshCap) is not None,
        graceful_restart=cfg.graceful_restart and gr_cap is not None,
        peer_restarting=isinstance(gr_cap, GracefulRestartCap) and gr_cap.restarting,
        ibgp=ibgp,
    )


def collision_loser(local_id: ipaddress.IPv4Address, remote_id: ipaddress.IPv4Address, outbound: Session, inbound: Session) -> Session:
    """RFC 4271 §6.8: if our BGP Identifier is lower, close the connection we
    initiated; otherwise close the one the peer initiated. Identifiers compare
    as four-octet unsigned integers."""
    return outbound if int(local_id) < int(remote_id) else inbound
