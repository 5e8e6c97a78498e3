"""SWIM + Lifeguard membership as memberlist 0.2.2 runs it, sans-IO.

Bytes and the time go in (``handle_packet``, ``handle_stream_message``,
``stream_result``, ``tick``, ``join``, ``leave``); actions come out of
``poll()``: UDP packets to send, TCP stream requests for the adapter to make,
member events and user messages. Randomness is injected for deterministic
tests. This module is the core that drives the rest, memberlist's
``memberlist.go`` and ``net.go``: the timers, gossip, push-pull and the
stream side, sending and sealing. The member state rules (memberlist
``state.go`` aliveNode, suspectNode, deadNode, refute, mergeState) are
``members.MemberTable``; the probe round (probe, probeNode, the ping handlers)
is ``probing.Prober``; both as summarised in memberlist-wire.md sections 6 and
7. Lifeguard is Dadgar et al., "Lifeguard: Local Health Awareness for More
Accurate Failure Detection" (2018).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import structlog

from lbd.model import MemberState

from . import crypto, wire
from . import metrics as m
from .awareness import Awareness
from .broadcasts import BroadcastQueue
from .errors import GossipError
from .events import Action, Addr, MemberInfo, SendPacket, Stats, StreamRequest, UserMessage
from .members import MemberTable, Node, ip_bytes
from .probing import Prober
from .profiles import DEFAULT, Profile

log = structlog.get_logger(__name__)

_TYPE_NAMES = {int(t): t.name.lower() for t in wire.MsgType}


@dataclass
class _Stream:
    """A stream request in flight, until its result comes back."""

    kind: str
    addr: Addr
    seq: int = 0


def _check_settings(name: str, meta: bytes, vsn: bytes, keys: Sequence[bytes]) -> None:
    """Refuse a core that could not speak the wire (GossipError), before any state exists."""
    if not name:
        raise GossipError("node name must not be empty")
    if len(meta) > wire.META_MAX_SIZE:
        raise GossipError(f"meta is {len(meta)} bytes, at most {wire.META_MAX_SIZE}")
    if len(vsn) != wire.VSN_LEN:
        raise GossipError("vsn must be 6 bytes")
    for key in keys:
        if len(key) not in crypto.KEY_SIZES:
            raise GossipError("keys must be 16, 24 or 32 bytes")


class Swim:
    """The membership state machine of one node.

    The timers, gossip, push-pull and the wire live here. The member table and its
    rules (``members.MemberTable``), the probe round (``probing.Prober``), Lifeguard's
    suspicion timers (``suspicion.Suspicion``) and local health score
    (``awareness.Awareness``), and the transmit-limited broadcast queue
    (``broadcasts.BroadcastQueue``) are their own small classes, as in memberlist's
    state.go, suspicion.go, awareness.go and queue.go.
    """

    def __init__(
        self, name: str, addr: str, port: int, *, now: float, profile: Profile = DEFAULT,
        rng: random.Random | None = None, meta: bytes = b"", keys: Sequence[bytes] = (),
        verify_incoming: bool = True, verify_outgoing: bool = True, vsn: bytes = wire.DEFAULT_VSN,
        compress: bool = False, local_state: Callable[[bool], bytes] | None = None,
        merge_remote_state: Callable[[bytes, bool], None] | None = None,
    ) -> None:
        _check_settings(name, meta, vsn, keys)
        self.name = name
        self.profile = profile
        self.rng = rng or random.Random()
        self.keys = list(keys)
        self.verify_incoming = verify_incoming
        self.verify_outgoing = verify_outgoing
        self.vsn = bytes(vsn)
        self.compress = compress
        self.local_state = local_state
        self.merge_remote_state = merge_remote_state
        self.stats = Stats()
        self.log = log.bind(node=name)

        self._addr = ip_bytes(addr)
        self._port = port
        self._stream_seq = 0
        self._awareness = Awareness(profile.awareness_max_multiplier)
        self._streams: dict[int, _Stream] = {}
        self._queue = BroadcastQueue()
        self._out: list[Action] = []
        self._table = MemberTable(
            name, self._addr, port, self.vsn, profile=profile, rng=self.rng, awareness=self._awareness,
            stats=self.stats, log=self.log, broadcast=self._broadcast, pending=self._pending,
            notify=self._out.append)
        # The prober draws its first sequence number before the timers: a seeded rng replays a run exactly.
        self._prober = Prober(
            self._table, profile=profile, rng=self.rng, awareness=self._awareness, stats=self.stats, log=self.log,
            send=self._send, ping_stream=self._ping_stream, forget_stream=self._forget_stream)
        self._schedule_first_rounds(now)
        # Bootstrap our own entry (memberlist setAlive): memberlist starts at 1.
        self._table.set_local(1, meta, now)

    def _schedule_first_rounds(self, now: float) -> None:
        """Spread the first probe, gossip and push-pull at random, so nodes started together
        do not tick in step; the reconnect round has no reason to be spread."""
        profile = self.profile
        self._next_probe = now + self.rng.uniform(0, profile.probe_interval)
        self._next_gossip = now + self.rng.uniform(0, profile.gossip_interval)
        self._next_push_pull = now + profile.push_pull_interval * (1 + self.rng.random())
        self._next_reconnect = now + profile.reconnect_interval

    # -- public queries -----------------------------------------------------

    @property
    def me(self) -> Node:
        return self._table.me

    @property
    def incarnation(self) -> int:
        return self.me.incarnation

    @property
    def awareness(self) -> int:
        """Lifeguard's local health score (0: healthy); the probe interval is scaled by it + 1."""
        return self._awareness.score

    def members(self) -> list[MemberInfo]:
        return self._table.members()

    def member(self, name: str) -> MemberInfo | None:
        node = self._table.nodes.get(name)
        return node.info() if node else None

    def poll(self) -> list[Action]:
        # Cleared in place: the member table appends its events to this very list.
        out = list(self._out)
        self._out.clear()
        return out

    def num_nodes(self) -> int:
        return len(self._table.nodes)

    def counts(self) -> dict[MemberState, int]:
        return self._table.counts()

    @property
    def leaving(self) -> bool:
        return self._table.leaving

    @property
    def leave_done(self) -> bool:
        """The leave broadcast went out (or nobody is left to tell)."""
        if not self.leaving:
            return False
        if not self._table.any_alive():
            return True
        return self._table.leave_bid is None or not self._queue.pending(self._table.leave_bid)

    def next_deadline(self) -> float:
        times = [self._next_push_pull]
        probe_due = self._prober.next_deadline()
        times.append(self._next_probe if probe_due is None else probe_due)
        if len(self._queue):
            times.append(self._next_gossip)
        if self._table.failed:
            times.append(self._next_reconnect)
        times.extend(s.deadline for s in self._table.suspicions.values())
        times.extend(r.deadline for r in self._prober.relays.values())
        return min(times)

    # -- application inputs -------------------------------------------------

    def join(self, seeds: Sequence[Addr], now: float) -> list[int]:
        """Push-pull with ``Join`` set to each seed; returns the stream ids."""
        ids = []
        for addr in seeds:
            ids.append(self._push_pull(addr, now, join=True))
        return ids

    def leave(self, now: float) -> None:
        """Broadcast dead{self, From: self}; poll ``leave_done`` while ticking."""
        self._table.leave(now)

    def set_meta(self, meta: bytes, now: float) -> None:
        """New metadata: raise our incarnation and broadcast alive (memberlist UpdateNode)."""
        if len(meta) > wire.META_MAX_SIZE:
            raise GossipError(f"meta is {len(meta)} bytes, at most {wire.META_MAX_SIZE}")
        self._table.set_local(self.me.incarnation + 1, meta, now)

    def broadcast_user(self, payload: bytes) -> None:
        """Gossip a user message ([8][payload]) to the cluster, best effort."""
        msg = wire.encode(wire.User(payload))
        if len(msg) > wire.UDP_BUFFER_SIZE - wire.COMPOUND_HEADER_OVERHEAD - self._enc_overhead():
            raise GossipError("user broadcast too large for one packet; send it over a stream")
        self._queue.queue(None, msg)

    def send_user_stream(self, addr: Addr, payload: bytes, now: float) -> int:
        """Send a user message over TCP (memberlist SendReliable)."""
        data = self._frame(wire.encode_user_stream(payload))
        return self._request("user", addr, data, now, expect_reply=False)

    # -- packets ------------------------------------------------------------

    def handle_packet(self, data: bytes, addr: Addr, now: float) -> None:
        """One UDP datagram. Raises GossipError (after using any good parts) if bad."""
        if not data:
            self.stats.malformed += 1
            raise GossipError("empty packet")
        try:
            plain = wire.open_packet(data, self.keys, self.verify_incoming)
        except GossipError:
            self.stats.decrypt_failures += 1
            m.DECRYPT_FAILURES.inc()
            raise
        try:
            packet = wire.decode_packet(plain)
        except GossipError:
            self.stats.malformed += 1
            raise
        for t in packet.types:
            self._count(self.stats.received, m.RECEIVED, t)
        for msg in packet.messages:
            self._dispatch(msg, addr, now)
        if packet.errors:
            self.stats.malformed += 1
            raise GossipError("; ".join(packet.errors))

    def _dispatch(self, msg: wire.Message, addr: Addr, now: float) -> None:
        if isinstance(msg, wire.Ping):
            self._prober.on_ping(msg, addr)
        elif isinstance(msg, wire.IndirectPing):
            self._prober.on_indirect_ping(msg, addr, now)
        elif isinstance(msg, wire.Ack):
            self._prober.on_ack(msg.seq_no, now)
        elif isinstance(msg, wire.Nack):
            self._prober.on_nack(msg.seq_no)
        elif isinstance(msg, wire.Alive):
            if self._table.name_ok(msg.node, addr):
                self._table.alive(msg, now)
        elif isinstance(msg, wire.Suspect):
            self._table.suspect(msg, now)
        elif isinstance(msg, wire.Dead):
            self._table.dead(msg, now)
        elif isinstance(msg, wire.User):
            self._out.append(UserMessage(msg.payload, addr))
        else:
            raise GossipError(f"unexpected {type(msg).__name__} in a packet")

    # -- streams ------------------------------------------------------------

    def stream_decoder(self) -> wire.StreamDecoder:
        return wire.StreamDecoder(self.keys, self.verify_incoming)

    def handle_stream(self, request: bytes, addr: Addr, now: float) -> bytes | None:
        """A complete inbound stream request; returns the reply to write, if any."""
        try:
            sm = wire.decode_stream(request, self.keys, self.verify_incoming)
        except GossipError as exc:
            return self.stream_error(exc)
        return self.handle_stream_message(sm, addr, now)

    def stream_error(self, exc: GossipError) -> bytes:
        """Count a bad inbound stream and build the ``err`` reply memberlist sends."""
        text = str(exc)
        if _is_crypto_error(text):
            self.stats.decrypt_failures += 1
            m.DECRYPT_FAILURES.inc()
        else:
            self.stats.malformed += 1
        return self.error_reply(text)

    def error_reply(self, text: str) -> bytes:
        return self._frame(wire.encode(wire.Err(text)))

    def handle_stream_message(self, sm: wire.StreamMessage, addr: Addr, now: float) -> bytes | None:
        msg = sm.message
        if sm.compressed:
            self._count(self.stats.received, m.RECEIVED, wire.MsgType.COMPRESS)
        if isinstance(msg, wire.PushPull):
            self._count(self.stats.received, m.RECEIVED, wire.MsgType.PUSH_PULL)
            # memberlist replies with its full state before merging (net.go handleConn).
            reply = self._frame(self._local_state(msg.join))
            self._count(self.stats.sent, m.SENT, wire.MsgType.PUSH_PULL)
            try:
                self._merge(msg, now, addr)
            except GossipError as exc:
                self.log.warning("push_pull_merge_refused", peer=f"{addr[0]}:{addr[1]}", error=str(exc))
            return reply
        if isinstance(msg, wire.Ping):
            self._count(self.stats.received, m.RECEIVED, wire.MsgType.PING)
            if msg.node and msg.node != self.name:
                return None
            self._count(self.stats.sent, m.SENT, wire.MsgType.ACK)
            return self._frame(wire.encode(wire.Ack(msg.seq_no)))
        if isinstance(msg, wire.User):
            self._count(self.stats.received, m.RECEIVED, wire.MsgType.USER)
            self._out.append(UserMessage(msg.payload, addr))
            return None
        return self.error_reply(f"unexpected stream message {type(msg).__name__}")

    def stream_result(self, sid: int, reply: wire.StreamMessage | None, now: float, error: str = "") -> bool:
        """The outcome of a StreamRequest; True if it did what it was for."""
        st = self._streams.pop(sid, None)
        if st is None:
            return False
        if reply is None:
            if st.kind in ("join", "push_pull"):
                self.log.info("push_pull_failed", peer=f"{st.addr[0]}:{st.addr[1]}", error=error)
            return st.kind == "user" and not error
        msg = reply.message
        if isinstance(msg, wire.Err):
            self.log.warning("stream_error_reply", peer=f"{st.addr[0]}:{st.addr[1]}", error=msg.error)
            if _is_crypto_error(msg.error):
                # The peer could not read us (another key, or one side plaintext): the
                # application must know, so that it does not start a cluster of its own.
                self.stats.decrypt_failures += 1
                m.DECRYPT_FAILURES.inc()
            return False
        if st.kind in ("join", "push_pull") and isinstance(msg, wire.PushPull):
            self._count(self.stats.received, m.RECEIVED, wire.MsgType.PUSH_PULL)
            try:
                self._merge(msg, now, st.addr)
            except GossipError as exc:
                self.log.warning("push_pull_merge_refused", peer=f"{st.addr[0]}:{st.addr[1]}", error=str(exc))
                return False
            return True
        if st.kind == "ping" and isinstance(msg, wire.Ack):
            if msg.seq_no != st.seq:
                return False
            self._prober.tcp_acked(sid)
            return True
        return False

    def _request(
        self, kind: str, addr: Addr, data: bytes, now: float, expect_reply: bool = True, seq: int = 0,
        deadline: float | None = None,
    ) -> int:
        self._stream_seq += 1
        sid = self._stream_seq
        self._streams[sid] = _Stream(kind, addr, seq)
        deadline = now + self.profile.tcp_timeout if deadline is None else deadline
        self._out.append(StreamRequest(sid, kind, addr, data, deadline, expect_reply))
        return sid

    def _ping_stream(self, dest: Addr, ping: wire.Ping, now: float, deadline: float) -> int:
        return self._request("ping", dest, self._frame(wire.encode(ping)), now, seq=ping.seq_no, deadline=deadline)

    def _forget_stream(self, sid: int) -> None:
        self._streams.pop(sid, None)

    def _push_pull(self, addr: Addr, now: float, join: bool) -> int:
        data = self._frame(self._local_state(join))
        self._count(self.stats.sent, m.SENT, wire.MsgType.PUSH_PULL)
        return self._request("join" if join else "push_pull", addr, data, now)

    def _local_state(self, join: bool) -> bytes:
        nodes = self._table.push_nodes()
        user = b""
        if self.local_state is not None:
            try:
                user = self.local_state(join)
            except Exception:  # noqa: BLE001 - the application's bug must not stop gossip
                self.log.exception("local_state_failed")
        return wire.encode_push_pull(wire.PushPull(join, nodes, user))

    def _merge(self, pp: wire.PushPull, now: float, addr: Addr = ("?", 0)) -> None:
        self._table.merge(pp.nodes, now, addr)
        if pp.user_state and self.merge_remote_state is not None:
            try:
                self.merge_remote_state(pp.user_state, pp.join)
            except Exception:  # noqa: BLE001 - the application's bug must not stop gossip
                self.log.exception("merge_remote_state_failed")

    # -- timers -------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        self._prober.expire_relays(now)
        self._table.expire_suspicions(now)
        self._prober.tick(now)
        if self._prober.probe is None and now >= self._next_probe:
            # Lifeguard LHA-Probe: a node that doubts its own health probes slower.
            interval = self._awareness.scale(self.profile.probe_interval)
            self._next_probe = now + interval
            self._prober.start(now, interval)
        if now >= self._next_gossip:
            nxt = self._next_gossip + self.profile.gossip_interval
            self._next_gossip = nxt if nxt > now else now + self.profile.gossip_interval
            self._gossip(now)
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.profile.reconnect_interval
            self._reconnect(now)
        if now >= self._next_push_pull:
            self._next_push_pull = now + self.profile.push_pull_scale(len(self._table.nodes))
            peers = self._table.alive_peers()
            if peers:
                peer = self.rng.choice(peers)
                self._push_pull(peer.udp_addr, now, join=False)

    def _reconnect(self, now: float) -> None:
        """serf's reconnect: try one failed node with a join push-pull.

        After a partition both sides hold each other dead and nobody probes the
        dead. The exchange makes each side refute the other's verdict (a remote
        dead merges as a suspicion about ourselves), and the next exchange
        carries the higher incarnations that bring both back to alive.
        """
        addr = self._table.reconnect_target(now)
        if addr is not None:
            self._push_pull(addr, now, join=True)

    # -- gossip -------------------------------------------------------------

    def _gossip(self, now: float) -> None:
        if not len(self._queue):
            return
        candidates = self._table.gossip_targets(now)
        self.rng.shuffle(candidates)
        avail = wire.UDP_BUFFER_SIZE - wire.COMPOUND_HEADER_OVERHEAD - self._enc_overhead()
        for node in candidates[: self.profile.gossip_nodes]:
            msgs = self._queue.get(wire.COMPOUND_OVERHEAD, avail, self.profile.retransmit_limit(len(self._table.nodes)))
            if not msgs:
                return
            packet = msgs[0] if len(msgs) == 1 else wire.make_compound(msgs)
            self._emit(node.udp_addr, packet, node.pmax)

    def _broadcast(self, name: str, msg: wire.Message) -> int:
        return self._queue.queue(name, wire.encode(msg))

    def _pending(self, bid: int) -> bool:
        return self._queue.pending(bid)

    def _enc_overhead(self) -> int:
        return crypto.overhead(1) if self.keys and self.verify_outgoing else 0

    def _send(self, dest: Addr, msg: bytes, extra: Sequence[bytes] = ()) -> None:
        """memberlist sendMsg: piggyback queued broadcasts, then the raw send."""
        parts = [msg, *extra]
        avail = wire.UDP_BUFFER_SIZE - sum(len(p) + 2 for p in parts) - wire.COMPOUND_HEADER_OVERHEAD - self._enc_overhead()
        if len(self._queue) and avail > 0:
            parts += self._queue.get(wire.COMPOUND_OVERHEAD, avail, self.profile.retransmit_limit(len(self._table.nodes)))
        packet = parts[0] if len(parts) == 1 else wire.make_compound(parts)
        self._emit(dest, packet, self._table.pmax_of(dest))

    def _emit(self, dest: Addr, packet: bytes, pmax: int) -> None:
        for t in self._types_of(packet):
            self._count(self.stats.sent, m.SENT, t)
        if self.compress:
            c = wire.compress_message(packet)
            if len(c) < len(packet):
                packet = c
        if pmax >= 5:
            packet = wire.add_crc(packet)
        if self.keys and self.verify_outgoing:
            packet = wire.seal_packet(packet, self.keys)
        self._out.append(SendPacket(dest, packet))

    @staticmethod
    def _types_of(packet: bytes) -> list[int]:
        if packet[0] != wire.MsgType.COMPOUND:
            return [packet[0]]
        parts, _ = wire.split_compound(packet[1:])
        return [p[0] for p in parts]

    def _frame(self, message: bytes) -> bytes:
        keys = self.keys if self.verify_outgoing else ()
        return wire.frame_stream(message, keys, compress=self.compress)

    def _count(self, stats: dict[str, int], counter: object, mtype: int) -> None:
        name = _TYPE_NAMES.get(mtype, str(mtype))
        stats[name] = stats.get(name, 0) + 1
        counter.labels(type=name).inc()  # type: ignore[attr-defined]



def _is_crypto_error(text: str) -> bool:
    """An error about keys: a failed decryption, or plaintext where encryption was expected
    (or the reverse), in memberlist's wording or ours."""
    return "crypt" in text.lower()  # "decrypt", "encrypted", "not encrypted"
