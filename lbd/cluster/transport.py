"""asyncio adapter around the SWIM core: UDP and TCP on one port.

Thin by design: it owns the sockets and the timer, feeds the core with the
loop's clock and carries out the core's actions (UDP sends, TCP stream
requests, events). memberlist listens for UDP and TCP on the same port number
and sends UDP from the bound socket, so the source port equals the node's port
(memberlist-wire.md section 3).
"""

from __future__ import annotations

import asyncio
import random
import socket
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Sequence

import structlog

from lbd import aio
from lbd.model import MemberState

from . import metrics as m
from . import wire
from .errors import GossipError
from .profiles import Profile, get_profile
from .events import Addr, EventKind, MemberEvent, MemberInfo, SendPacket, StreamRequest, UserMessage
from .swim import Swim

log = structlog.get_logger(__name__)

UDP_RECV_BUFFER = 65536
JOIN_BACKOFF_INITIAL = 0.5
JOIN_BACKOFF_MAX = 30.0


class JoinError(GossipError):
    """No seed could be joined."""


@dataclass(frozen=True)
class UserPayload:
    payload: bytes
    addr: Addr | None


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, owner: "Gossip") -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        self.owner._on_packet(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp_error", error=str(exc))


async def resolve(seed: str, default_port: int = 7946) -> Addr:
    """``host:port`` to a numeric address (the core only deals in IPs)."""
    host, port = wire.parse_host_port(seed, default_port)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise GossipError(f"cannot resolve {seed}")
    sockaddr = infos[0][4]
    return (str(sockaddr[0]), int(sockaddr[1]))


class Gossip:
    """One cluster member on the network."""

    def __init__(
        self,
        name: str,
        bind: str = "0.0.0.0:7946",
        advertise: str | None = None,
        *,
        profile: Profile | str = "default",
        keys: Sequence[bytes] = (),
        meta: bytes = b"",
        verify_incoming: bool = True,
        verify_outgoing: bool = True,
        compress: bool = False,
        vsn: bytes = wire.DEFAULT_VSN,
        local_state: Callable[[bool], bytes] | None = None,
        merge_remote_state: Callable[[bytes, bool], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.bind_host, self.bind_port = wire.parse_host_port(bind, allow_zero=True)
        self.advertise = advertise
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        self._opts = dict(
            keys=list(keys), meta=meta, verify_incoming=verify_incoming, verify_outgoing=verify_outgoing,
            compress=compress, vsn=vsn, local_state=local_state, merge_remote_state=merge_remote_state,
        )
        self._rng = rng
        self.core: Swim | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.base_events.Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0  # uvloop's timer handles have no when()
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: dict[int, asyncio.Future[bool]] = {}
        self._event_cbs: list[Callable[[MemberEvent], None]] = []
        self._user_cbs: list[Callable[[UserPayload], None]] = []
        self._queues: list[asyncio.Queue[MemberEvent | UserPayload]] = []
        self._leave_event = asyncio.Event()
        self._closed = False
        self.port = self.bind_port
        self.log = log.bind(node=name)

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        family = socket.AF_INET6 if ":" in self.bind_host else socket.AF_INET
        # UDP first so that port 0 picks a port, then TCP on the same number.
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _UDP(self), local_addr=(self.bind_host, self.bind_port), family=family)
        self._udp = udp  # type: ignore[assignment]
        sock = udp.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * 1024 * 1024)
        except OSError:
            pass
        self.port = sock.getsockname()[1]
        try:
            self._server = await asyncio.start_server(self._on_conn, self.bind_host, self.port,
                                                      family=family, reuse_address=True)
        except OSError:
            udp.close()
            raise
        adv_host = self.advertise or self.bind_host
        adv_port = self.port
        if self.advertise:
            adv_host, adv_port = wire.parse_host_port(self.advertise, self.port)
        if adv_host in ("0.0.0.0", "::"):
            adv_host = _guess_address(family)
        self.core = Swim(self.name, adv_host, adv_port, now=loop.time(), profile=self.profile,
                         rng=self._rng, **self._opts)  # type: ignore[arg-type]
        self.log = log.bind(node=self.name, addr=f"{adv_host}:{adv_port}")
        self.log.info("gossip_started", bind=f"{self.bind_host}:{self.port}", profile=self.profile.name,
                      encrypted=bool(self._opts["keys"]))
        self._pump()

    async def close(self) -> None:
        """Stop without a goodbye (call ``leave`` first for a graceful exit)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            try:
                await aio.wait_for(self._server.wait_closed(), 1.0)
            except (asyncio.TimeoutError, TimeoutError):
                pass
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result(False)

    async def join(self, seeds: Sequence[str]) -> int:
        """Push-pull with every seed once; the number that answered. Raises JoinError if none."""
        core = self._core()
        addrs: list[Addr] = []
        errors: list[str] = []
        for seed in seeds:
            try:
                addrs.append(await resolve(seed, self.port))
            except (OSError, GossipError) as exc:
                errors.append(f"{seed}: {exc}")
        ids = core.join(addrs, self._now())
        futs = [self._waiter(i) for i in ids]
        self._pump()
        results = await asyncio.gather(*futs) if futs else []
        ok = sum(1 for r in results if r)
        if not ok:
            raise JoinError("could not join any seed" + (f" ({'; '.join(errors)})" if errors else ""))
        self.log.info("joined", seeds=list(seeds), answered=ok)
        return ok

    async def join_with_retry(self, seeds: Sequence[str], max_attempts: int | None = None) -> int:
        """Retry ``join`` with exponential backoff until a seed answers (start order is free)."""
        delay = JOIN_BACKOFF_INITIAL
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.join(seeds)
            except JoinError as exc:
                if max_attempts is not None and attempt >= max_attempts:
                    raise
                self.log.info("join_retry", attempt=attempt, delay=round(delay, 2), error=str(exc))
            await asyncio.sleep(delay * (0.5 + self._core().rng.random()))
            delay = min(delay * 2, JOIN_BACKOFF_MAX)

    async def leave(self, timeout: float = 5.0) -> bool:
        """Broadcast our leave and wait until it went out (or ``timeout``)."""
        core = self._core()
        core.leave(self._now())
        self._pump()
        if core.leave_done:
            return True
        try:
            await aio.wait_for(self._leave_event.wait(), timeout)
            return True
        except (asyncio.TimeoutError, TimeoutError):
            self.log.warning("leave_timeout", timeout=timeout)
            return False

    # -- application API ----------------------------------------------------

    def members(self) -> list[MemberInfo]:
        return self._core().members()

    def local_member(self) -> MemberInfo:
        info = self._core().member(self.name)
        assert info is not None
        return info

    def set_meta(self, meta: bytes) -> None:
        self._core().set_meta(meta, self._now())
        self._pump()

    def broadcast_user(self, payload: bytes) -> None:
        self._core().broadcast_user(payload)
        self._pump()

    async def send_user(self, addr: str, payload: bytes) -> bool:
        """Send a user message to one node over TCP."""
        target = await resolve(addr, self.port)
        sid = self._core().send_user_stream(target, payload, self._now())
        fut = self._waiter(sid)
        self._pump()
        return await fut

    def on_event(self, callback: Callable[[MemberEvent], None]) -> None:
        self._event_cbs.append(callback)

    def on_user(self, callback: Callable[[UserPayload], None]) -> None:
        self._user_cbs.append(callback)

    async def events(self) -> AsyncIterator[MemberEvent | UserPayload]:
        """Member events and user messages, in order, until closed."""
        q: asyncio.Queue[MemberEvent | UserPayload] = asyncio.Queue()
        self._queues.append(q)
        try:
            while not self._closed:
                yield await q.get()
        finally:
            self._queues.remove(q)

    def stats(self) -> dict[str, object]:
        core = self._core()
        s = core.stats
        return {
            "name": self.name,
            "incarnation": core.incarnation,
            "awareness": core.awareness,
            "members": {k.value: v for k, v in core.counts().items()},
            "received": dict(s.received),
            "sent": dict(s.sent),
            "decrypt_failures": s.decrypt_failures,
            "malformed": s.malformed,
            "suspicions": s.suspicions,
            "refutes": s.refutes,
            "probes": s.probes,
            "probe_failures": s.probe_failures,
            "tcp_fallback_successes": s.tcp_fallback_successes,
            "bad_names": s.bad_names,
        }

    # -- driving the core ---------------------------------------------------

    def _core(self) -> Swim:
        if self.core is None:
            raise RuntimeError("Gossip.start() has not run")
        return self.core

    def now(self) -> float:
        """The clock the core runs on (the loop's monotonic time): ages ``state_change``."""
        return self._now()

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _waiter(self, sid: int) -> asyncio.Future[bool]:
        assert self._loop is not None
        fut = self._waiters.get(sid)
        if fut is None:
            fut = self._loop.create_future()
            self._waiters[sid] = fut
        return fut

    def _on_packet(self, data: bytes, addr: Addr) -> None:
        if self._closed or self.core is None:
            return
        try:
            self.core.handle_packet(data, addr, self._now())
        except GossipError as exc:
            self.log.debug("bad_packet", peer=f"{addr[0]}:{addr[1]}", error=str(exc))
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed or self.core is None:
            return
        self.core.tick(self._now())
        self._pump()

    def _pump(self) -> None:
        """Carry out the core's actions and re-arm the timer."""
        core = self.core
        if core is None or self._closed:
            return
        for action in core.poll():
            if isinstance(action, SendPacket):
                self._send(action)
            elif isinstance(action, StreamRequest):
                self._spawn(self._run_stream(action))
            elif isinstance(action, MemberEvent):
                self._deliver_event(action)
            elif isinstance(action, UserMessage):
                self._deliver_user(UserPayload(action.payload, action.addr))
        if core.leaving and core.leave_done:
            self._leave_event.set()
        for state, count in core.counts().items():
            m.MEMBERS.labels(state=state.value).set(count)
        deadline = core.next_deadline()
        assert self._loop is not None
        if self._timer is not None and self._timer_when <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _send(self, action: SendPacket) -> None:
        """One UDP send; a bad destination never drops the rest of the batch or the timer.

        Addresses come from peers (a ping's source, an indirect ping's target, an
        Alive): asyncio raises OSError for an address of the other family, uvloop
        ValueError, and a malformed one may give TypeError.
        """
        if self._udp is None:
            return
        try:
            self._udp.sendto(action.data, action.addr)
        except (OSError, ValueError, TypeError, OverflowError) as exc:
            m.SEND_FAILURES.inc()
            self.log.debug("udp_send_failed", peer=f"{action.addr[0]}:{action.addr[1]}", error=str(exc))

    def _deliver_event(self, ev: MemberEvent) -> None:
        level = "info" if ev.kind != EventKind.SUSPECT else "debug"
        getattr(self.log, level)("member_" + ev.kind.value, member=ev.member.name, addr=ev.member.addr,
                                 incarnation=ev.member.incarnation)
        for cb in self._event_cbs:
            try:
                cb(ev)
            except Exception:  # noqa: BLE001 - a callback must not break the gossip loop
                self.log.exception("event_callback_failed")
        for q in self._queues:
            q.put_nowait(ev)

    def _deliver_user(self, msg: UserPayload) -> None:
        for cb in self._user_cbs:
            try:
                cb(msg)
            except Exception:  # noqa: BLE001
                self.log.exception("user_callback_failed")
        for q in self._queues:
            q.put_nowait(msg)

    def _spawn(self, coro: object) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish_stream(self, sid: int, reply: wire.StreamMessage | None, error: str = "") -> None:
        if self._closed or self.core is None:
            return
        try:
            ok = self.core.stream_result(sid, reply, self._now(), error)
        except GossipError as exc:
            self.log.warning("stream_result_failed", error=str(exc))
            ok = False
        fut = self._waiters.pop(sid, None)
        if fut is not None and not fut.done():
            fut.set_result(ok)
        self._pump()

    async def _run_stream(self, req: StreamRequest) -> None:
        """Outbound TCP: connect, write the request, read one reply, bounded by the deadline."""
        core = self._core()
        timeout = max(0.001, req.deadline - self._now())
        writers: list[asyncio.StreamWriter] = []
        dec = core.stream_decoder()

        async def exchange() -> wire.StreamMessage | None:
            reader, writer = await asyncio.open_connection(req.addr[0], req.addr[1])
            writers.append(writer)
            writer.write(req.data)
            await writer.drain()
            if not req.expect_reply:
                return None
            return await _read_message(reader, dec)

        try:
            reply = await aio.wait_for(exchange(), timeout)
            self._finish_stream(req.id, reply)
        except GossipError as exc:
            if "crypt" in str(exc).lower():  # decryption failed, or plaintext against keys
                core.stats.decrypt_failures += 1
                m.DECRYPT_FAILURES.inc()
            self.log.info("stream_reply_bad", kind=req.kind, peer=f"{req.addr[0]}:{req.addr[1]}", error=str(exc),
                          peer_says=_plain_error(dec.raw()))
            self._finish_stream(req.id, None, str(exc))
        except (OSError, ValueError, TypeError, TimeoutError, asyncio.TimeoutError) as exc:
            # ValueError/TypeError: a peer-supplied address the loop cannot connect to
            # (uvloop, other family); the request must still finish, or its waiter hangs.
            self._finish_stream(req.id, None, f"{type(exc).__name__}: {exc}")
        finally:
            for w in writers:
                w.close()

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Inbound TCP: one request, at most one reply, then close (memberlist handleConn)."""
        core = self.core
        peer = writer.get_extra_info("peername") or ("?", 0)
        addr: Addr = (str(peer[0]), int(peer[1]))
        try:
            if core is None:
                return
            dec = core.stream_decoder()
            reply: bytes | None
            try:
                msg = await aio.wait_for(_read_message(reader, dec), self.profile.tcp_timeout)
                reply = core.handle_stream_message(msg, addr, self._now())
            except GossipError as exc:
                self.log.info("stream_request_bad", peer=f"{addr[0]}:{addr[1]}", error=str(exc))
                reply = core.stream_error(exc)
            self._pump()
            if reply:
                writer.write(reply)
                await aio.wait_for(writer.drain(), self.profile.tcp_timeout)
        except (OSError, TimeoutError, asyncio.TimeoutError) as exc:
            self.log.debug("stream_failed", peer=f"{addr[0]}:{addr[1]}", error=str(exc))
        finally:
            writer.close()


def _plain_error(raw: bytes) -> str | None:
    """A plaintext ``err`` reply we refused (keys set): still worth logging, unauthenticated."""
    try:
        msg = wire.decode_stream(raw, (), verify_incoming=False).message
    except GossipError:
        return None
    return msg.error if isinstance(msg, wire.Err) else None


async def _read_message(reader: asyncio.StreamReader, dec: wire.StreamDecoder) -> wire.StreamMessage:
    """Read until the decoder has one whole message (the peer keeps the stream open)."""
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return dec.eof()
        msg = dec.feed(chunk)
        if msg is not None:
            return msg


def _guess_address(family: int) -> str:
    """The address the kernel would use to reach the outside (no packet is sent)."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9) if family == socket.AF_INET else ("2001:db8::1", 9))
        return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1" if family == socket.AF_INET else "::1"
    finally:
        s.close()


def member_states(members: Sequence[MemberInfo]) -> dict[str, MemberState]:
    return {mi.name: mi.state for mi in members}
