"""BFD over UDP (RFC 5881 single-hop, RFC 5883 multi-hop) on a dedicated thread.

Why a thread: the daemon's event loop runs reconcile passes, netlink dumps,
gossip and source watches; one long pass delays every callback behind it, and
a BFD packet 300 ms late is a false failure at 100 ms × 3. The engine owns its
sockets and its timers on a thread of its own that only sleeps in ``select``
until the next transmit or detection deadline. Python's GIL is released while
it sleeps and re-acquired within the interpreter's switch interval (5 ms) when
another thread computes, so a busy event loop delays a packet by at most a few
milliseconds. The thread also asks the kernel for a higher scheduling priority
(nice -10, as root) so that CPU-bound processes on the host do not delay it
either. docs/bfd.md records the measured worst transmit delay.

Every socket operation happens on that thread; the asyncio side talks to it
through :meth:`BfdEngine.call` (a queue and a wake-up socket) and receives
state changes through the ``on_event`` callback (called on the engine thread:
see :class:`lbd.bfd.manager.BfdManager` for the hop back to the loop).
"""

from __future__ import annotations

import concurrent.futures
import errno
import ipaddress
import os
import queue
import random
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import structlog

from lbd.bfd import metrics as m
from lbd.bfd.packet import BfdPacketError, SessionState, decode
from lbd.bfd.session import Event, PacketDiscarded, Session, SessionConfig, StateChanged, describe
from lbd.model import IPAddress

log = structlog.get_logger(__name__)

SINGLE_HOP_PORT = 3784  # RFC 5881 §4
MULTI_HOP_PORT = 4784  # RFC 5883 §5
SOURCE_PORT_MIN, SOURCE_PORT_MAX = 49152, 65535  # RFC 5881 §4
GTSM_TTL = 255  # RFC 5881 §5 / RFC 5082
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
RECV_BATCH = 64  # packets read per wake-up and socket, bounding one turn of the loop
THREAD_NICE = -10


@dataclass(frozen=True)
class Endpoint:
    """Where one session runs: the peer, our source (None: the kernel's
    choice for the route, the same one BGP's TCP connection gets), single or
    multi-hop, and for multi-hop the lowest TTL accepted (MetalLB's minimum_ttl)."""

    peer: IPAddress
    local: IPAddress | None = None
    multihop: bool = False
    minimum_ttl: int = 254


def ttl_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The received TTL / Hop Limit from IP_RECVTTL / IPV6_RECVHOPLIMIT data."""
    for level, kind, data in ancdata:
        if (level, kind) in ((socket.IPPROTO_IP, socket.IP_TTL), (socket.IPPROTO_IPV6, IPV6_HOPLIMIT)):
            if len(data) >= 4:
                return int(struct.unpack("=i", data[:4])[0])
            if len(data) >= 1:
                return data[0]
    return None


def ttl_problem(ttl: int | None, endpoint: Endpoint) -> str | None:
    """RFC 5881 §5: single-hop packets must arrive with TTL 255 (GTSM, RFC 5082),
    so that only a directly connected system can send them. RFC 5883 §5 leaves
    multi-hop to configuration: the profile's minimum_ttl."""
    if ttl is None:
        return "no TTL in the ancillary data"
    if not endpoint.multihop and ttl != GTSM_TTL:
        return f"TTL {ttl} is not 255 on a single-hop session"
    if endpoint.multihop and ttl < endpoint.minimum_ttl:
        return f"TTL {ttl} is below minimum_ttl {endpoint.minimum_ttl}"
    return None


def set_thread_priority(nice: int = THREAD_NICE) -> bool:
    """Lower the calling thread's nice value (Linux: per thread, by TID)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return True
    except (OSError, AttributeError):
        return False


def _unmapped(address: str) -> IPAddress:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass
class _Entry:
    key: str
    endpoint: Endpoint
    session: Session
    sock: socket.socket | None = None
    sent_seen: int = 0
    received_seen: int = 0
    discarded_seen: int = 0
    max_late: float = 0.0  # the worst delay of a periodic packet past its deadline, seconds
    max_late_at: float | None = None  # when that was (wall clock, time.time()): start-up or steady state
    send_errors: int = 0
    last_send_error: str | None = None


class BfdEngine:
    """All BFD sessions of the process, with their sockets, on one thread."""

    def __init__(
        self,
        on_event: Callable[[str, StateChanged], None],
        *,
        listen_ports: tuple[int, int] = (SINGLE_HOP_PORT, MULTI_HOP_PORT),
        peer_ports: tuple[int, int] = (SINGLE_HOP_PORT, MULTI_HOP_PORT),
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        priority: bool = True,
    ) -> None:
        self._on_event = on_event
        self.listen_ports = listen_ports
        self.peer_ports = peer_ports
        self.clock = clock
        self.rng = rng if rng is not None else random.SystemRandom()
        self._priority = priority
        self._entries: dict[str, _Entry] = {}
        self._by_discr: dict[int, _Entry] = {}
        self._rx: dict[tuple[int, bool], socket.socket] = {}  # (family, multihop) -> listening socket
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.prioritized = False
        self.scheduling = "normal"  # what the process/thread got: "SCHED_RR", "nice -10" or "normal"
        self.unmatched = 0  # packets no session claimed

    # --------------------------------------------------------------- control

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lbd-bfd", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], Any]) -> "concurrent.futures.Future[Any]":
        """Run ``fn`` on the engine thread; the future has its result."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._thread is None or not self._thread.is_alive():
            try:
                fut.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)
            return fut
        self._commands.put((fn, fut))
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # already awake
        return fut

    def configure(self, key: str, endpoint: Endpoint, config: SessionConfig) -> "concurrent.futures.Future[Any]":
        return self.call(lambda: self._configure(key, endpoint, config))

    def remove(self, key: str) -> "concurrent.futures.Future[Any]":
        """AdminDown to the peer (so it does not see a failure), then forget the session."""
        return self.call(lambda: self._remove(key))

    def admin_down(self, keys: list[str] | None = None) -> "concurrent.futures.Future[Any]":
        """Every (or the given) session to AdminDown, its packet sent when the future is done."""
        return self.call(lambda: self._admin_down(keys))

    def snapshot(self) -> "concurrent.futures.Future[dict[str, dict[str, object]]]":
        return self.call(self._snapshot)

    def close(self, timeout: float = 2.0) -> None:
        def stop() -> None:
            self._stopping = True

        if self._thread is not None and self._thread.is_alive():
            try:
                self.call(stop).result(timeout)
            except concurrent.futures.TimeoutError:
                pass
            self._thread.join(timeout)
        self._close_sockets()

    # ---------------------------------------------------------- engine thread

    def _run(self) -> None:
        if self._priority:
            self.prioritized = set_thread_priority()
            if self.prioritized and self.scheduling == "normal":
                self.scheduling = "nice -10"
        while not self._stopping:
            try:
                self._turn()
            except Exception:  # noqa: BLE001 - the failure detector must not die of one bad turn
                log.exception("bfd_engine_error")
                time.sleep(0.01)
        self._close_sockets()

    def _turn(self) -> None:
        deadlines = [d for e in self._entries.values() if (d := e.session.next_deadline()) is not None]
        timeout = None
        if deadlines:
            timeout = max(0.0, min(deadlines) - self.clock())
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                self._drain_commands()
            else:
                self._receive(key.fileobj, key.data)  # type: ignore[arg-type]
        now = self.clock()
        for entry in list(self._entries.values()):
            deadline = entry.session.next_deadline()
            if deadline is not None and deadline <= now:
                scheduled = entry.session.next_transmit
                was_up = entry.session.state == SessionState.UP
                events = entry.session.tick(now)
                if scheduled is not None and scheduled <= now and was_up and now - scheduled > entry.max_late:
                    entry.max_late, entry.max_late_at = now - scheduled, time.time()
                self._after(entry, events, now)

    def _drain_commands(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                fn, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

    def _configure(self, key: str, endpoint: Endpoint, config: SessionConfig) -> None:
        entry = self._entries.get(key)
        now = self.clock()
        if entry is not None and entry.endpoint == endpoint:
            if entry.session.config != config:
                self._after(entry, entry.session.set_params(config, now), now)
            return
        if entry is not None:
            self._remove(key)
        discr = self._new_discriminator()
        session = Session(config, discr, rng=self.rng, name=key)
        entry = _Entry(key, endpoint, session)
        try:
            self._listen(endpoint)
            entry.sock = self._tx_socket(endpoint)
        except OSError as exc:
            log.warning("bfd_socket_failed", peer=key, error=str(exc))
            entry.last_send_error = f"socket: {exc}"
        self._entries[key] = entry
        self._by_discr[discr] = entry
        m.STATE.labels(peer=key).set(int(session.state))
        m.UP.labels(peer=key).set(0)
        log.info("bfd_session_started", peer=key, address=str(endpoint.peer), multihop=endpoint.multihop,
                 discriminator=discr, tx_ms=config.desired_min_tx / 1000, rx_ms=config.required_min_rx / 1000,
                 multiplier=config.detect_mult, passive=config.passive)
        self._after(entry, session.start(now), now)

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        now = self.clock()
        self._after(entry, entry.session.admin_down(now), now)
        self._by_discr.pop(entry.session.local_discr, None)
        if entry.sock is not None:
            entry.sock.close()
        for metric in m.PER_PEER:
            try:
                metric.remove(key)
            except KeyError:
                pass
        log.info("bfd_session_removed", peer=key)

    def _admin_down(self, keys: list[str] | None) -> int:
        now = self.clock()
        count = 0
        for key in keys if keys is not None else list(self._entries):
            entry = self._entries.get(key)
            if entry is not None:
                self._after(entry, entry.session.admin_down(now), now)
                count += 1
        return count

    def _snapshot(self) -> dict[str, dict[str, object]]:
        # Also read from other threads for display: list() copies the dict atomically under the GIL.
        out = {}
        for key, e in list(self._entries.items()):
            row = describe(e.session)
            row.update(
                address=str(e.endpoint.peer), local_address=str(e.endpoint.local) if e.endpoint.local else None,
                multihop=e.endpoint.multihop, max_transmit_late_ms=round(e.max_late * 1000, 2),
                max_transmit_late_at=None if e.max_late_at is None else round(e.max_late_at, 3),
                send_errors=e.send_errors, last_send_error=e.last_send_error, scheduling=self.scheduling,
            )
            out[key] = row
        return out

    def _new_discriminator(self) -> int:
        while True:
            discr = self.rng.randrange(1, 1 << 32)
            if discr not in self._by_discr:
                return discr

    def _listen(self, endpoint: Endpoint) -> None:
        family = socket.AF_INET if endpoint.peer.version == 4 else socket.AF_INET6
        slot = (family, endpoint.multihop)
        if slot in self._rx:
            return
        port = self.listen_ports[1 if endpoint.multihop else 0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
                sock.bind(("0.0.0.0", port))
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
                sock.bind(("::", port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._rx[slot] = sock
        self._selector.register(sock, selectors.EVENT_READ, endpoint.multihop)
        log.info("bfd_listening", port=port, family="ipv4" if family == socket.AF_INET else "ipv6")

    def _tx_socket(self, endpoint: Endpoint) -> socket.socket:
        """A socket per session: one source port for all its packets, in
        49152-65535 (RFC 5881 §4), TTL 255 (§5), connected to the peer."""
        family = socket.AF_INET if endpoint.peer.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, GTSM_TTL)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, GTSM_TTL)
            local = str(endpoint.local) if endpoint.local is not None else ""
            for _ in range(64):
                port = self.rng.randint(SOURCE_PORT_MIN, SOURCE_PORT_MAX)
                try:
                    sock.bind((local, port))
                    break
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
            else:
                raise OSError(errno.EADDRINUSE, "no free source port in 49152-65535")
            sock.setblocking(False)
            sock.connect((str(endpoint.peer), self.peer_ports[1 if endpoint.multihop else 0]))
        except OSError:
            sock.close()
            raise
        return sock

    def _receive(self, sock: socket.socket, multihop: bool) -> None:
        for _ in range(RECV_BATCH):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(512, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("bfd_receive_failed", error=str(exc))
                return
            now = self.clock()
            try:
                source = _unmapped(addr[0])
            except ValueError:
                continue
            self._packet(data, ttl_from_ancillary(ancdata), source, multihop, now)

    def _packet(self, data: bytes, ttl: int | None, source: IPAddress, multihop: bool, now: float) -> None:
        try:
            pkt = decode(data)
        except BfdPacketError as exc:
            log.debug("bfd_packet_malformed", source=str(source), error=str(exc))
            return
        entry = None
        if pkt.your_discriminator:
            entry = self._by_discr.get(pkt.your_discriminator)
        else:
            for e in self._entries.values():
                if e.endpoint.peer == source and e.endpoint.multihop == multihop:
                    entry = e
                    break
        if entry is None or entry.endpoint.peer != source or entry.endpoint.multihop != multihop:
            self.unmatched += 1
            return
        problem = ttl_problem(ttl, entry.endpoint)
        if problem is not None:
            self._after(entry, [PacketDiscarded(problem)], now)
            entry.session.stats.packets_discarded += 1
            entry.session.stats.last_discard = problem
            return
        self._after(entry, entry.session.receive(pkt, data, now), now)

    def _after(self, entry: _Entry, events: list[Event], now: float) -> None:
        """Send what the session queued, account, report state changes."""
        for raw in entry.session.take_packets():
            if entry.sock is None:
                continue
            try:
                entry.sock.send(raw)
            except OSError as exc:  # ICMP errors of a connected UDP socket surface here
                entry.send_errors += 1
                entry.last_send_error = str(exc)
        st = entry.session.stats
        if st.packets_sent != entry.sent_seen:
            m.PACKETS_SENT.labels(peer=entry.key).inc(st.packets_sent - entry.sent_seen)
            entry.sent_seen = st.packets_sent
        if st.packets_received != entry.received_seen:
            m.PACKETS_RECEIVED.labels(peer=entry.key).inc(st.packets_received - entry.received_seen)
            entry.received_seen = st.packets_received
        for event in events:
            if isinstance(event, PacketDiscarded):
                log.debug("bfd_packet_discarded", peer=entry.key, reason=event.reason)
                continue
            m.STATE.labels(peer=entry.key).set(int(event.new))
            m.UP.labels(peer=entry.key).set(1 if event.new == SessionState.UP else 0)
            m.TRANSITIONS.labels(peer=entry.key, to=event.new.label).inc()
            m.DETECTION_TIME.labels(peer=entry.key).set(entry.session.detection_time())
            log.info("bfd_state_changed", peer=entry.key, old=event.old.label, new=event.new.label,
                     diag=event.diag.label, failure=event.failure,
                     remote_discriminator=entry.session.remote_discr)
            try:
                self._on_event(entry.key, event)
            except Exception:  # noqa: BLE001 - an observer must not break the engine
                log.exception("bfd_event_callback_failed")

    def _close_sockets(self) -> None:
        for entry in self._entries.values():
            if entry.sock is not None:
                entry.sock.close()
                entry.sock = None
        for sock in self._rx.values():
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        self._rx.clear()
