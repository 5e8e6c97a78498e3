"""asyncio adapter for one BGP peer: sockets, timers, collisions.

:class:`PeerSpeaker` drives a sans-IO :class:`~lbd.bgp.fsm.Session`: it opens
the TCP connection when the FSM asks (source address bound, TCP MD5 and TTL
set before connecting), feeds received bytes and the loop's monotonic time in,
writes what the FSM queues, and calls :meth:`Session.tick` at its deadline.
Connections the :class:`Listener` accepts for this peer come in through
:meth:`PeerSpeaker.accept`; a second connection while one is opening is a
collision, resolved by BGP identifier (RFC 4271 §6.8).
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import socket
import struct
import termios
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import structlog

from lbd import aio
from lbd.bgp import netutil
from lbd.bgp.events import CloseRequested, ConnectRequested, Event, OpenReceived, State
from lbd.bgp.fsm import Session, collision_loser
from lbd.bgp.packing import RouteAttrs
from lbd.bgp.settings import SessionSettings
from lbd.model import IPAddress, IPNetwork

log = structlog.get_logger(__name__)

EventCallback = Callable[["PeerSpeaker", Event], None]


def _no_password() -> bytes | None:
    return None


@dataclass(frozen=True)
class PeerEndpoint:
    """How to reach one peer: the transport half of its settings (the FSM's
    half is :class:`~lbd.bgp.settings.SessionSettings`). Plain values; the
    announcer makes them from the configuration."""

    name: str
    address: IPAddress
    port: int = 179
    source_address: IPAddress | None = None
    ttl: int = 1  # 255 on iBGP, ebgp_multihop or 1 on eBGP (set on both connected and accepted sockets)
    # The TCP MD5 key (RFC 2385), read at each connect so that a rotated secret is picked up;
    # may raise OSError (an unreadable password file fails that connect).
    password: Callable[[], bytes | None] = _no_password


class _Conn(asyncio.Protocol):
    """One TCP connection bound to one Session."""

    def __init__(self, speaker: "PeerSpeaker", session: Session, outbound: bool, addrs: netutil.Addresses) -> None:
        self.speaker = speaker
        self.addrs = addrs
        self.session = session
        self.outbound = outbound
        self.transport: Any = None  # asyncio.Transport, or uvloop's (not a subclass)
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.speaker._connected(self)

    def data_received(self, data: bytes) -> None:
        self.speaker._data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.speaker._lost(self, exc)


class PeerSpeaker:
    """Runs one peer's session over asyncio."""

    def __init__(
        self,
        endpoint: PeerEndpoint,
        *,
        settings: SessionSettings,
        restarting: bool = False,
        on_event: EventCallback | None = None,
        addresses: netutil.Addresses | None = None,
    ) -> None:
        """``endpoint`` says how to reach the peer, ``settings`` what the
        session FSM runs with."""
        self.endpoint = endpoint
        self.loop = asyncio.get_running_loop()
        self.router_id = settings.router_id
        self.session = Session(settings, name=endpoint.name, restarting=restarting)
        self._on_event = on_event
        self._conns: dict[int, _Conn] = {}  # id(session) -> connection
        self._inbound: Session | None = None  # a colliding connection's session
        self._connect_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self._withdrawn = False  # withdraw_all() was called: the table stays empty
        self._hold_close = False  # stop(drain=...): close only once the peer has acked what we sent
        # The node's address table (for next hops), reused for a few seconds:
        # the announcer's scan serves the first connection.
        self._addrs: netutil.Addresses | None = addresses
        self._addrs_at = self.loop.time() if addresses is not None else 0.0
        self.log = log.bind(peer=endpoint.name, address=str(endpoint.address))

    # ----------------------------------------------------------------- public

    def now(self) -> float:
        return self.loop.time()

    def start(self) -> None:
        self._run(self.session, self.session.start(self.now()))

    def set_routes(self, routes: dict[IPNetwork, RouteAttrs]) -> None:
        if not self._stopped and not self._withdrawn:
            self._run(self.session, self.session.set_routes(routes, self.now()))

    def update_routes(self, changes: Mapping[IPNetwork, RouteAttrs | None]) -> None:
        """A few routes changed (None: withdrawn) since the last ``set_routes``."""
        if not self._stopped and not self._withdrawn:
            self._run(self.session, self.session.update_routes(changes, self.now()))

    def withdraw_all(self) -> None:
        """Send an UPDATE withdrawing every route now (a graceful stop's first
        step); later ``set_routes`` calls are ignored."""
        if not self._stopped:
            self._run(self.session, self.session.set_routes({}, self.now()))
            self._withdrawn = True

    def bfd_down(self) -> None:
        """BFD says the path to the peer failed (RFC 5882): take the session down."""
        if not self._stopped:
            self._run(self.session, self.session.bfd_down(self.now()))

    async def stop(self, graceful: bool = False, timeout: float = 2.0, drain: float = 0.0) -> None:
        """Stop the session (Cease, or silently for graceful restart) and close,
        waiting (bounded) until the NOTIFICATION is flushed and the socket closed.

        ``drain`` > 0: before closing, wait (at most that long) until the peer's
        TCP has acknowledged everything sent (SIOCOUTQ = 0), so that the caller
        knows the router has the withdrawal before it removes the VIPs."""
        conns = list(self._conns.values())
        self._stopped = True
        self._cancel_connect()
        if self._inbound is not None:
            inbound, self._inbound = self._inbound, None
            self._run(inbound, inbound.stop(self.now()))
        self._hold_close = drain > 0
        try:
            self._run(self.session, self.session.stop(self.now(), graceful=graceful))
        finally:
            self._hold_close = False
        if drain > 0:
            await wait_acked(conns, drain)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for conn in {id(c): c for c in [*conns, *self._conns.values()]}.values():
            if conn.transport is not None:
                conn.transport.close()
        self._conns.clear()
        pending = [c.closed for c in conns if not c.closed.done()]
        if pending:
            done, _ = await asyncio.wait(pending, timeout=timeout)
            if len(done) != len(pending):
                for conn in conns:
                    if not conn.closed.done() and conn.transport is not None:
                        conn.transport.abort()

    def accept(self, sock: socket.socket) -> None:
        """Take a connection the listener accepted from this peer's address."""
        main = self.session
        if self._stopped:
            sock.close()
            return
        if main.state == State.ESTABLISHED or self._inbound is not None:
            # RFC 4271 §6.8: a collision with an Established session closes the new connection.
            self.log.info("bgp_inbound_rejected", state=main.state.value)
            sock.close()
            return
        if main.state in (State.IDLE, State.ACTIVE) and (self._connect_task is None or self._connect_task.done()):
            session = main  # nothing of ours in flight: the peer's connection is the one
        else:
            # Our own connection is being made or is opening: keep both until
            # the BGP identifiers decide (RFC 4271 §6.8, _resolve_collision).
            session = Session(main.settings, name=main.name, restarting=main.restarting)
            self._inbound = session
        self.loop.create_task(self._adopt(sock, session))

    def status_connections(self) -> int:
        return len(self._conns)

    # -------------------------------------------------------------- internals

    async def _adopt(self, sock: socket.socket, session: Session) -> None:
        try:
            addrs = await self._addresses()
            await self.loop.create_connection(lambda: _Conn(self, session, False, addrs), sock=sock)
        except OSError as exc:
            self.log.warning("bgp_inbound_failed", error=str(exc))
            sock.close()
            if session is self._inbound:
                self._inbound = None

    async def _addresses(self, max_age: float = 10.0) -> netutil.Addresses:
        if self._addrs is None or self.loop.time() - self._addrs_at > max_age:
            self._addrs = await netutil.scan_addresses_async()
            self._addrs_at = self.loop.time()
        return self._addrs

    def _cancel_connect(self) -> None:
        task, self._connect_task = self._connect_task, None
        if task is not None and not task.done():
            task.cancel()

    def _start_connect(self, session: Session) -> None:
        self._cancel_connect()
        self._connect_task = self.loop.create_task(self._connect(session))

    async def _connect(self, session: Session) -> None:
        peer = self.endpoint
        family = socket.AF_INET if peer.address.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            key = peer.password()
            if key:
                netutil.set_md5(sock, peer.address, key)
            netutil.set_ttl(sock, peer.address.version, peer.ttl)
            if peer.source_address is not None:
                sock.bind((str(peer.source_address), 0))
            # The address table for next hops is read first: once connected,
            # the peer's OPEN may arrive at any moment.
            addrs = await self._addresses()
            await aio.wait_for(self.loop.sock_connect(sock, (str(peer.address), peer.port)), self.session.settings.connect_time)
            await self.loop.create_connection(lambda: _Conn(self, session, True, addrs), sock=sock)
        except asyncio.CancelledError:
            sock.close()
            raise
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            sock.close()
            reason = f"connect: {exc or type(exc).__name__}"
            self.log.info("bgp_connect_failed", error=reason)
            if session.state == State.CONNECT:
                self._run(session, session.connection_failed(self.now(), reason))

    def _connected(self, conn: _Conn) -> None:
        session = conn.session
        transport = conn.transport
        assert transport is not None
        orphan = session is not self.session and session is not self._inbound
        if self._stopped or orphan or session.state in (State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED):
            transport.abort()  # e.g. our connect completed just as it was cancelled
            return
        sock = transport.get_extra_info("socket")
        local = remote = None
        other = ll = None
        try:
            local = ipaddress.ip_address(transport.get_extra_info("sockname")[0].split("%")[0])
            remote = ipaddress.ip_address(transport.get_extra_info("peername")[0].split("%")[0])
            other = netutil.other_family_next_hop(local, conn.addrs)
            if not conn.outbound and sock is not None:
                netutil.set_ttl(sock, local.version, self.endpoint.ttl)
        except (OSError, ValueError, TypeError) as exc:
            self.log.warning("bgp_address_lookup_failed", error=str(exc))
        self._conns[id(session)] = conn
        self.log.info("bgp_connected", local=str(local), remote=str(remote), outbound=conn.outbound)
        self._run(session, session.connection_made(self.now(), local, remote, outbound=conn.outbound, other_next_hop=other, next_hop_v6_link_local=ll))

    def _data(self, conn: _Conn, data: bytes) -> None:
        if self._conns.get(id(conn.session)) is conn:
            self._run(conn.session, conn.session.handle_bytes(data, self.now()))

    def _lost(self, conn: _Conn, exc: Exception | None) -> None:
        session = conn.session
        if self._conns.get(id(session)) is not conn:
            return  # an old connection the FSM already left
        del self._conns[id(session)]
        reason = f"connection lost: {exc}" if exc else "connection closed by peer"
        self._run(session, session.connection_lost(self.now(), reason))
        if session is self._inbound:
            self._inbound = None

    def _run(self, session: Session, events: list[Event]) -> None:
        """Write what the session queued, then carry out its actions."""
        # Collisions first: a losing connection must not send the KEEPALIVE
        # its FSM just queued in reply to the OPEN (RFC 4271 §6.8).
        for event in events:
            if isinstance(event, OpenReceived):
                self._resolve_collision(event)
        conn = self._conns.get(id(session))
        data = session.data_to_send()
        if data and conn is not None and conn.transport is not None:
            conn.transport.write(data)
        for event in events:
            if isinstance(event, ConnectRequested):
                if not self._stopped and session is self.session:
                    self._start_connect(session)
            elif isinstance(event, CloseRequested):
                if session is self.session:
                    self._cancel_connect()
                conn = self._conns.pop(id(session), None)
                if conn is not None and conn.transport is not None and not self._hold_close:
                    conn.transport.close()  # buffered data (a NOTIFICATION) is flushed first
                if session is self._inbound:
                    self._inbound = None
            if self._on_event is not None:
                try:
                    self._on_event(self, event)
                except Exception:  # a faulty observer must not break the session
                    self.log.exception("bgp_event_callback_failed")
        self._reschedule()

    def _resolve_collision(self, event: OpenReceived) -> None:
        inbound, main = self._inbound, self.session
        if inbound is None or inbound.state not in (State.OPENSENT, State.OPENCONFIRM):
            return
        now = self.now()
        if main.state == State.ESTABLISHED:
            # A collision with an Established session closes the new connection (§6.8).
            self._inbound = None
            self._run(inbound, inbound.close_collision(now))
            return
        if main.state not in (State.OPENSENT, State.OPENCONFIRM):
            # Our own attempt has not got anywhere (still connecting, or failed):
            # the peer's connection wins outright.
            self.log.info("bgp_inbound_preferred", main_state=main.state.value)
            self._cancel_connect()
            inbound.take_over(main)
            self.session, self._inbound = inbound, None
            self._run(main, main.stop(now))
            return
        outbound_s, inbound_s = (main, inbound) if main.outbound else (inbound, main)
        loser = collision_loser(self.router_id, event.router_id, outbound_s, inbound_s)
        winner = inbound_s if loser is outbound_s else outbound_s
        self.log.info("bgp_collision", keep="inbound" if winner is inbound_s else "outbound", remote_id=str(event.router_id))
        self._inbound = None
        if winner is not main:
            winner.take_over(main)
            self.session = winner
        self._run(loser, loser.close_collision(now))

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._stopped:
            return
        deadlines = [d for d in (self.session.next_deadline(), self._inbound.next_deadline() if self._inbound else None) if d is not None]
        if deadlines:
            self._timer = self.loop.call_at(min(deadlines), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.now()
        if self._inbound is not None:
            self._run(self._inbound, self._inbound.tick(now))
        self._run(self.session, self.session.tick(now))


def unacked_bytes(transport: Any) -> int:
    """Bytes not yet acknowledged by the peer: asyncio's buffer plus the
    kernel's send queue (SIOCOUTQ, alias TIOCOUTQ, on a TCP socket)."""
    pending = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is None:
        return pending
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return pending
    return pending + int(struct.unpack("=i", raw)[0])


async def wait_acked(conns: "list[_Conn]", timeout: float, step: float = 0.001) -> bool:
    """Wait until every connection's peer has acknowledged all we sent (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        busy = [c for c in conns if c.transport is not None and not c.closed.done()
                and unacked_bytes(c.transport) > 0]
        if not busy:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(step)


class Listener:
    """Accepts BGP connections from configured peers only (for ``passive`` peers).

    MD5 keys are installed on the listening socket per peer address, so the
    kernel drops unsigned segments before the handshake completes.
    """

    def __init__(self, address: str, port: int, dispatch: Callable[[IPAddress, socket.socket], bool]) -> None:
        self.address = address
        self.port = port
        self._dispatch = dispatch
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._keys: dict[IPAddress, bytes] = {}
        self.version = ipaddress.ip_address(address).version

    def start(self) -> None:
        family = socket.AF_INET if self.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((self.address, self.port))
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock
        for addr, key in self._keys.items():
            netutil.set_md5(sock, addr, key)
        self._task = asyncio.get_running_loop().create_task(self._accept_loop())
        log.info("bgp_listening", address=self.address, port=self.port)

    def set_keys(self, keys: dict[IPAddress, bytes]) -> None:
        """Level-triggered MD5 keys per peer address (removed keys are deleted)."""
        keys = {a: k for a, k in keys.items() if a.version == self.version}
        if self._sock is not None:
            for addr in set(self._keys) - set(keys):
                netutil.set_md5(self._sock, addr, None)
            for addr, key in keys.items():
                if self._keys.get(addr) != key:
                    netutil.set_md5(self._sock, addr, key)
        self._keys = keys

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                log.warning("bgp_accept_failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            remote = ipaddress.ip_address(addr[0].split("%")[0])
            conn.setblocking(False)
            if not self._dispatch(remote, conn):
                log.info("bgp_connection_refused", remote=str(remote))
                conn.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._sock is not None:
            self._sock.close()
            self._sock = None
