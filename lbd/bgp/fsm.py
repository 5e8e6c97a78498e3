"""The BGP session state machine (RFC 4271 §8), sans-IO.

One :class:`Session` per peer. The caller feeds it connection events, received
bytes and the current time; it returns events (some of which are actions for
the caller: :class:`ConnectRequested`, :class:`CloseRequested`) and queues the
bytes to write, fetched with :meth:`Session.data_to_send` (the h11 style).
Timers are deadlines: the caller calls :meth:`Session.tick` at
:meth:`Session.next_deadline`.

The session also holds the Adj-RIB-Out for the peer: the desired routes set
with :meth:`Session.set_routes`, and what the current connection has sent. On
Established everything is sent, followed by End-of-RIB (RFC 4724 §2); later
changes send only the difference; a ROUTE-REFRESH resends the family (inside
BoRR/EoRR with enhanced route refresh, RFC 7313); a new connection starts
from nothing, so a reconnect resends it all.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Collection, Mapping, Union

import structlog

from lbd.bgp import codec
from lbd.bgp.attributes import AFI_IPV4, AFI_IPV6, AS_TRANS, SAFI_UNICAST
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
    Update,
)
from lbd.bgp.errors import BgpError, CeaseSubcode, ErrorCode, FsmSubcode, OpenSubcode, describe
from lbd.backoff import capped_backoff
from lbd.bgp.packing import EncodeContext, RouteAttrs, UpdatePacker, family_of
from lbd.model import BgpPeerConfig, IPAddress, IPNetwork

log = structlog.get_logger(__name__)

Family = tuple[int, int]
IPV4_UNICAST: Family = (AFI_IPV4, SAFI_UNICAST)
IPV6_UNICAST: Family = (AFI_IPV6, SAFI_UNICAST)


class State(str, enum.Enum):
    IDLE = "idle"
    CONNECT = "connect"
    ACTIVE = "active"
    OPENSENT = "opensent"
    OPENCONFIRM = "openconfirm"
    ESTABLISHED = "established"


_CONNECTED = (State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED)


@dataclass(frozen=True)
class SessionConfig:
    """What the FSM needs from a peer's configuration."""

    local_as: int
    router_id: ipaddress.IPv4Address
    peer_as: int | None = None
    dynamic_asn: str | None = None  # "internal" or "external" when peer_as is None
    hold_time: int = 90
    keepalive_time: float | None = None  # None: negotiated hold / 3
    connect_time: float = 10.0
    passive: bool = False
    graceful_restart: bool = False
    graceful_restart_time: int = 120
    families: tuple[Family, ...] = (IPV4_UNICAST, IPV6_UNICAST)
    connect_retry_initial: float = 1.0  # backoff 0, 1, 2, 4 ... s (as MetalLB)
    connect_retry_max: float = 120.0
    open_hold_time: float = 240.0  # RFC 4271 §8.2.2: the "large value" while in OpenSent
    next_hop_v4: ipaddress.IPv4Address | None = None  # None: the session's local address
    next_hop_v6: ipaddress.IPv6Address | None = None
    next_hop_v6_link_local: ipaddress.IPv6Address | None = None

    @staticmethod
    def from_peer(peer: BgpPeerConfig, router_id: ipaddress.IPv4Address, **overrides: object) -> "SessionConfig":
        kwargs: dict[str, object] = dict(
            local_as=peer.local_asn if peer.local_asn is not None else peer.my_asn,
            router_id=peer.router_id or router_id,
            peer_as=peer.peer_asn,
            dynamic_asn=peer.dynamic_asn,
            hold_time=int(peer.hold_time),
            keepalive_time=peer.keepalive_time,
            connect_time=peer.connect_time,
            passive=peer.passive,
            graceful_restart=peer.graceful_restart,
            graceful_restart_time=peer.graceful_restart_time,
        )
        kwargs.update(overrides)
        return SessionConfig(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Negotiated:
    peer_as: int
    peer_router_id: ipaddress.IPv4Address
    hold_time: int
    keepalive_time: float
    four_octet: bool
    families: tuple[Family, ...]
    route_refresh: bool
    enhanced_route_refresh: bool
    graceful_restart: bool  # both sides advertised the capability
    peer_restarting: bool
    ibgp: bool

    def capabilities(self) -> list[str]:
        caps = [{IPV4_UNICAST: "ipv4-unicast", IPV6_UNICAST: "ipv6-unicast"}.get(f, f"afi{f[0]}-safi{f[1]}") for f in self.families]
        if self.four_octet:
            caps.append("4-octet-as")
        if self.route_refresh:
            caps.append("route-refresh")
        if self.enhanced_route_refresh:
            caps.append("enhanced-route-refresh")
        if self.graceful_restart:
            caps.append("graceful-restart")
        return caps


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


# ---------------------------------------------------------------------------
# Events (those marked "action" ask the caller to do something)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StateChanged:
    old: State
    new: State


@dataclass(frozen=True)
class ConnectRequested:
    """Action: open a TCP connection to the peer (within ``connect_time``)."""


@dataclass(frozen=True)
class CloseRequested:
    """Action: flush :meth:`Session.data_to_send`, then close the connection."""

    reason: str


@dataclass(frozen=True)
class OpenReceived:
    router_id: ipaddress.IPv4Address
    asn: int


@dataclass(frozen=True)
class SessionEstablished:
    negotiated: Negotiated


@dataclass(frozen=True)
class SessionDown:
    reason: str


@dataclass(frozen=True)
class NotificationSent:
    code: int
    subcode: int
    data: bytes = b""


@dataclass(frozen=True)
class NotificationReceived:
    code: int
    subcode: int
    data: bytes = b""


@dataclass(frozen=True)
class UpdateReceived:
    update: Update


@dataclass(frozen=True)
class RouteRefreshReceived:
    afi: int
    safi: int
    subtype: int


@dataclass(frozen=True)
class UpdatesSent:
    messages: int
    announced: int
    withdrawn: int


@dataclass(frozen=True)
class EndOfRibSent:
    afi: int
    safi: int
    prefixes: int


Event = Union[
    StateChanged,
    ConnectRequested,
    CloseRequested,
    OpenReceived,
    SessionEstablished,
    SessionDown,
    NotificationSent,
    NotificationReceived,
    UpdateReceived,
    RouteRefreshReceived,
    UpdatesSent,
    EndOfRibSent,
]


class Session:
    """One BGP peer's session FSM and Adj-RIB-Out."""

    def __init__(self, config: SessionConfig, *, name: str = "", restarting: bool = False) -> None:
        self.config = config
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
        self._desired: dict[IPNetwork, RouteAttrs] = {}
        self._advertised: dict[IPNetwork, RouteAttrs] = {}
        self._packer: UpdatePacker | None = None
        self._rib_ready = False  # set_routes was called at least once
        self._initial_sent = False  # this connection sent its table and End-of-RIB
        self._other_next_hop: IPAddress | None = None
        self._nh6_ll: ipaddress.IPv6Address | None = None

    # ----------------------------------------------------------------- public

    @property
    def restarting(self) -> bool:
        return self._restarting

    @property
    def advertised(self) -> Mapping[IPNetwork, RouteAttrs]:
        return self._advertised

    @property
    def desired(self) -> Mapping[IPNetwork, RouteAttrs]:
        return self._desired

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
        self._advertised = {}
        self._packer = None
        self.negotiated = None
        self.peer_open = None
        self._connect_deadline = None
        self._retry_at = None
        self._out += codec.encode_open(self._make_open())
        self._hold_at = now + self.config.open_hold_time
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
        self._desired = dict(routes)
        self._rib_ready = True
        if self.state == State.ESTABLISHED:
            if self._initial_sent:
                self._send_diff(now)
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
        self._desired = dict(other._desired)
        self._rib_ready = other._rib_ready
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
        return capped_backoff(self._failures, self.config.connect_retry_initial, self.config.connect_retry_max)

    def _schedule_retry(self, now: float) -> None:
        self._failures += 1
        self._retry_at = now + self._backoff()

    def _begin(self, now: float) -> None:
        if self.config.passive:
            self._set_state(State.ACTIVE)  # wait for the peer to connect
            return
        self._connect_deadline = now + self.config.connect_time
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
        self._packer = None
        self._set_state(State.IDLE)
        if was_established:
            self.log.info("bgp_session_down", reason=reason)
            self._emit(SessionDown(reason))
        if self._auto_restart:
            if self.config.passive:
                self._set_state(State.ACTIVE)
            self._schedule_retry(now)

    def _make_open(self) -> Open:
        caps: list[codec.Capability] = [MultiprotocolCap(afi, safi) for afi, safi in self.config.families]
        caps += [RouteRefreshCap(), EnhancedRouteRefreshCap()]
        if self.config.graceful_restart:
            flags = codec.GR_RESTART_STATE if self._restarting else 0
            # F bit: the VIP routes' forwarding (the kernel's) survives an lbd restart.
            fams = tuple((afi, safi, codec.GR_AFI_FORWARDING) for afi, safi in self.config.families)
            caps.append(GracefulRestartCap(flags, self.config.graceful_restart_time, fams))
        hold = int(self.config.hold_time)
        return Open.for_asn(self.config.local_as, hold, self.config.router_id, tuple(caps))

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
        cfg = self.config
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
        self.peer_open = msg
        self.negotiated = Negotiated(
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
        self._emit(OpenReceived(rid, asn))
        # RFC 4271 §8.2.2 OpenSent + BGPOpen: KEEPALIVE, set timers, OpenConfirm.
        self._out += codec.KEEPALIVE_BYTES
        self.stats.keepalives_sent += 1
        self._hold_at = now + hold if hold else None
        self._keepalive_at = now + keepalive if hold else None
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
        cfg = self.config
        hops = [self.local_address, self._other_next_hop]
        nh4 = cfg.next_hop_v4 or next((a for a in hops if isinstance(a, ipaddress.IPv4Address)), None)
        nh6 = cfg.next_hop_v6 or next((a for a in hops if isinstance(a, ipaddress.IPv6Address) and not a.is_link_local), None)
        self._packer = UpdatePacker(
            EncodeContext(
                local_as=cfg.local_as,
                ibgp=neg.ibgp,
                four_octet=neg.four_octet,
                next_hop_v4=nh4,
                next_hop_v6=nh6,
                next_hop_v6_link_local=cfg.next_hop_v6_link_local or self._nh6_ll,
            )
        )
        self._advertised = {}
        self._initial_sent = False
        if self._rib_ready:
            self._send_initial(now)

    def _send_initial(self, now: float) -> None:
        """The whole table, then End-of-RIB per family (RFC 4724 §2).

        Only once the owner has set the routes at least once: a restarted lbd
        that came up before its first plan must not send End-of-RIB over an
        empty table, or the peer would flush the routes it kept for us.
        """
        neg = self.negotiated
        assert neg is not None
        self._initial_sent = True
        self._send_diff(now)
        v6 = sum(1 for p in self._advertised if p.version == 6)
        counts = {IPV4_UNICAST: len(self._advertised) - v6, IPV6_UNICAST: v6}
        for fam in neg.families:
            self._out += codec.end_of_rib(*fam)
            self.stats.updates_sent += 1
            self._emit(EndOfRibSent(fam[0], fam[1], counts.get(fam, 0)))
        self._restarting = False
        self._touch_keepalive(now)

    def _sendable_versions(self) -> frozenset[int]:
        """IP versions we can announce: family negotiated and a next hop known."""
        neg, packer = self.negotiated, self._packer
        if neg is None or packer is None:
            return frozenset()
        ok = set()
        if IPV4_UNICAST in neg.families and packer.ctx.next_hop_v4 is not None:
            ok.add(4)
        if IPV6_UNICAST in neg.families and packer.ctx.next_hop_v6 is not None:
            ok.add(6)
        return frozenset(ok)

    def _send_diff(self, now: float) -> None:
        packer = self._packer
        if packer is None:
            return
        adv = self._advertised
        desired = self._desired
        ok = self._sendable_versions()
        if not adv:
            # Initial table: no diff to compute. Copying the dict reuses the
            # keys' stored hashes (IPv4Network hashes in Python, slowly).
            withdraw: list[IPNetwork] = []
            if all(v in ok for v in {p.version for p in desired}):
                announce: Collection[tuple[IPNetwork, RouteAttrs]] = desired.items()
                new_adv = dict(desired)
            else:
                announce = [(p, a) for p, a in desired.items() if p.version in ok]
                new_adv = dict(announce)
        else:
            changed = []
            for p, a in desired.items():
                old = adv.get(p)
                if old is not a and old != a and p.version in ok:
                    changed.append((p, a))
            announce = changed
            withdraw = [p for p in adv if p not in desired]
            new_adv = None
        if not announce and not withdraw:
            return
        msgs = packer.withdraw(withdraw) + packer.announce(announce)
        if new_adv is not None:
            self._advertised = new_adv
        else:
            for p in withdraw:
                del adv[p]
            adv.update(announce)
        self._write_updates(msgs, len(announce), len(withdraw), now)

    def _resend_family(self, fam: Family, now: float) -> None:
        packer = self._packer
        neg = self.negotiated
        if packer is None or neg is None:
            return
        routes = [(p, a) for p, a in self._advertised.items() if family_of(p) == fam]
        enhanced = neg.enhanced_route_refresh
        if enhanced:
            self._out += codec.encode_route_refresh(RouteRefresh(fam[0], fam[1], codec.RR_BORR))
        self._write_updates(packer.announce(routes), len(routes), 0, now)
        if enhanced:
            self._out += codec.encode_route_refresh(RouteRefresh(fam[0], fam[1], codec.RR_EORR))

    def _write_updates(self, msgs: list[bytes], announced: int, withdrawn: int, now: float) -> None:
        if not msgs:
            return
        self._out += b"".join(msgs)
        self.stats.updates_sent += len(msgs)
        self._emit(UpdatesSent(len(msgs), announced, withdrawn))
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


def collision_loser(local_id: ipaddress.IPv4Address, remote_id: ipaddress.IPv4Address, outbound: Session, inbound: Session) -> Session:
    """RFC 4271 §6.8: if our BGP Identifier is lower, close the connection we
    initiated; otherwise close the one the peer initiated. Identifiers compare
    as four-octet unsigned integers."""
    return outbound if int(local_id) < int(remote_id) else inbound
