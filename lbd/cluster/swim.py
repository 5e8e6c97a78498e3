"""SWIM + Lifeguard membership as memberlist 0.2.2 runs it, sans-IO.

Bytes and the time go in (``handle_packet``, ``handle_stream_message``,
``stream_result``, ``tick``, ``join``, ``leave``); actions come out of
``poll()``: UDP packets to send, TCP stream requests for the adapter to make,
member events and user messages. Randomness is injected for deterministic
tests. The state rules follow memberlist ``state.go`` (aliveNode, suspectNode,
deadNode, refute, mergeState, probeNode) and ``suspicion.go`` as summarised in
memberlist-wire.md sections 6 and 7; Lifeguard is Dadgar et al., "Lifeguard:
Local Health Awareness for More Accurate Failure Detection" (2018).
"""

from __future__ import annotations

import ipaddress
import random
import unicodedata
from dataclasses import dataclass
from typing import Callable, Sequence

import structlog

from lbd.model import MemberState

from . import crypto, wire
from . import metrics as m
from .awareness import Awareness
from .broadcasts import BroadcastQueue
from .errors import GossipError
from .events import Action, Addr, EventKind, MemberEvent, MemberInfo, SendPacket, Stats, StreamRequest, UserMessage
from .profiles import DEFAULT, Profile
from .suspicion import Suspicion

log = structlog.get_logger(__name__)

_STATE_CODE = {
    MemberState.ALIVE: wire.NodeStateCode.ALIVE,
    MemberState.SUSPECT: wire.NodeStateCode.SUSPECT,
    MemberState.DEAD: wire.NodeStateCode.DEAD,
    MemberState.LEFT: wire.NodeStateCode.LEFT,
}
_TYPE_NAMES = {int(t): t.name.lower() for t in wire.MsgType}

MAX_FAILED = 4096  # failed nodes remembered for reconnect attempts


# -- internal state -----------------------------------------------------------


@dataclass
class _Node:
    name: str
    addr: bytes
    port: int
    meta: bytes
    incarnation: int
    state: MemberState
    state_change: float
    vsn: bytes = b""

    @property
    def pmax(self) -> int:
        return self.vsn[1] if len(self.vsn) == 6 else 0

    @property
    def dead_or_left(self) -> bool:
        return self.state in (MemberState.DEAD, MemberState.LEFT)

    def info(self) -> MemberInfo:
        return MemberInfo(self.name, ip_text(self.addr), self.port, self.state, self.incarnation,
                          self.state_change, self.meta, self.vsn)


@dataclass
class _Probe:
    target: str
    seq: int
    sent: float
    timeout_at: float
    deadline: float
    indirect: bool = False
    acked: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    tcp_id: int | None = None
    tcp_ok: bool = False


@dataclass
class _Relay:
    """An indirect ping we relay: ack the requester, or nack on timeout."""

    requester: Addr
    requester_seq: int
    nack: bool
    deadline: float


@dataclass
class _Stream:
    kind: str
    addr: Addr
    seq: int = 0


def ip_text(addr: bytes) -> str:
    if len(addr) == 4:
        return str(ipaddress.IPv4Address(addr))
    if len(addr) == 16:
        ip6 = ipaddress.IPv6Address(addr)
        return str(ip6.ipv4_mapped) if ip6.ipv4_mapped else str(ip6)
    return ""


def valid_member_name(name: str) -> bool:
    """Not empty, no control character (Unicode Cc: NUL, ESC, DEL, C1 ...)."""
    return bool(name) and not any(unicodedata.category(c) == "Cc" for c in name)


def ip_bytes(text: str) -> bytes:
    """Packed address; IPv4 as 4 bytes (Go applies To4() to the advertise address)."""
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.packed


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

    Probing and member state live here; Lifeguard's suspicion timers
    (``suspicion.Suspicion``), its local health score (``awareness.Awareness``) and
    the transmit-limited broadcast queue (``broadcasts.BroadcastQueue``) are their own
    small classes, as in memberlist's suspicion.go, awareness.go and queue.go.
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
        self._bad_name_senders: set[str] = set()  # log a bad member name once per sender
        self.log = log.bind(node=name)

        self._addr = ip_bytes(addr)
        self._port = port
        self.nodes: dict[str, _Node] = {}
        self._order: list[str] = []  # probe order (memberlist m.nodes)
        self._probe_index = 0
        self._seq = self.rng.randrange(0, 1 << 16)  # drawn before the timers: a seeded rng replays a run exactly
        self._stream_seq = 0
        self._awareness = Awareness(profile.awareness_max_multiplier)
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, Suspicion] = {}
        self._streams: dict[int, _Stream] = {}
        self._queue = BroadcastQueue()
        self._out: list[Action] = []
        self.leaving = False
        self._leave_bid: int | None = None
        self._reassert_bid: int | None = None
        self._failed: dict[str, tuple[Addr, float]] = {}  # name -> (address, time of death)
        self._schedule_first_rounds(now)
        # Bootstrap our own entry (memberlist setAlive): memberlist starts at 1.
        self._alive(wire.Alive(1, name, self._addr, port, meta, self.vsn), now, bootstrap=True)

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
    def me(self) -> _Node:
        return self.nodes[self.name]

    @property
    def incarnation(self) -> int:
        return self.me.incarnation

    @property
    def awareness(self) -> int:
        """Lifeguard's local health score (0: healthy); the probe interval is scaled by it + 1."""
        return self._awareness.score

    def members(self) -> list[MemberInfo]:
        return [n.info() for n in sorted(self.nodes.values(), key=lambda n: n.name)]

    def member(self, name: str) -> MemberInfo | None:
        node = self.nodes.get(name)
        return node.info() if node else None

    def poll(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def num_nodes(self) -> int:
        return len(self.nodes)

    def counts(self) -> dict[MemberState, int]:
        counts = {s: 0 for s in MemberState}
        for n in self.nodes.values():
            counts[n.state] += 1
        return counts

    @property
    def leave_done(self) -> bool:
        """The leave broadcast went out (or nobody is left to tell)."""
        if not self.leaving:
            return False
        if not self._any_alive():
            return True
        return self._leave_bid is None or not self._queue.pending(self._leave_bid)

    def next_deadline(self) -> float:
        times = [self._next_push_pull]
        if self._probe is not None:
            times.append(self._probe.deadline if self._probe.indirect else self._probe.timeout_at)
        else:
            times.append(self._next_probe)
        if len(self._queue):
            times.append(self._next_gossip)
        if self._failed:
            times.append(self._next_reconnect)
        times.extend(s.deadline for s in self._suspicions.values())
        times.extend(r.deadline for r in self._relays.values())
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
        if self.leaving:
            return
        self.leaving = True
        me = self.me
        self._dead(wire.Dead(me.incarnation, self.name, self.name), now)

    def set_meta(self, meta: bytes, now: float) -> None:
        """New metadata: raise our incarnation and broadcast alive (memberlist UpdateNode)."""
        if len(meta) > wire.META_MAX_SIZE:
            raise GossipError(f"meta is {len(meta)} bytes, at most {wire.META_MAX_SIZE}")
        me = self.me
        inc = me.incarnation + 1
        self._alive(wire.Alive(inc, self.name, self._addr, self._port, meta, self.vsn), now, bootstrap=True)

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
            self._on_ping(msg, addr, now)
        elif isinstance(msg, wire.IndirectPing):
            self._on_indirect_ping(msg, addr, now)
        elif isinstance(msg, wire.Ack):
            self._on_ack(msg.seq_no, now)
        elif isinstance(msg, wire.Nack):
            if self._probe is not None and self._probe.seq == msg.seq_no:
                self._probe.nacks += 1
        elif isinstance(msg, wire.Alive):
            if self._name_ok(msg.node, addr):
                self._alive(msg, now)
        elif isinstance(msg, wire.Suspect):
            self._suspect(msg, now)
        elif isinstance(msg, wire.Dead):
            self._dead(msg, now)
        elif isinstance(msg, wire.User):
            self._out.append(UserMessage(msg.payload, addr))
        else:
            raise GossipError(f"unexpected {type(msg).__name__} in a packet")

    def _on_ping(self, ping: wire.Ping, addr: Addr, now: float) -> None:
        if ping.node and ping.node != self.name:
            self.log.debug("ping_for_other_node", target=ping.node)
            return
        dest = addr
        if ping.source_addr and ping.source_port:
            dest = (ip_text(ping.source_addr) or addr[0], ping.source_port)
        self._send(dest, wire.encode(wire.Ack(ping.seq_no)))

    def _on_indirect_ping(self, ind: wire.IndirectPing, addr: Addr, now: float) -> None:
        target = ip_text(ind.target)
        if not target or not ind.port:
            raise GossipError("indirectPing with a bad target address")
        requester = addr
        if ind.source_addr and ind.source_port:
            requester = (ip_text(ind.source_addr) or addr[0], ind.source_port)
        seq = self._next_seq()
        # Nack a little before the requester's probe interval ends so the nack still counts
        # toward its awareness (memberlist uses ProbeTimeout, which races the deadline).
        self._relays[seq] = _Relay(requester, ind.seq_no, ind.nack, now + 0.8 * self.profile.probe_timeout)
        self._send((target, ind.port), wire.encode(self._ping(seq, ind.node)))

    def _on_ack(self, seq: int, now: float) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send(relay.requester, wire.encode(wire.Ack(relay.requester_seq)))
            return
        probe = self._probe
        if probe is not None and probe.seq == seq and not probe.acked:
            probe.acked = True
            self._finish_probe(now, success=True)

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
            probe = self._probe
            if msg.seq_no != st.seq:
                return False
            if probe is not None and probe.tcp_id == sid:
                probe.tcp_ok = True
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

    def _push_pull(self, addr: Addr, now: float, join: bool) -> int:
        data = self._frame(self._local_state(join))
        self._count(self.stats.sent, m.SENT, wire.MsgType.PUSH_PULL)
        return self._request("join" if join else "push_pull", addr, data, now)

    def _local_state(self, join: bool) -> bytes:
        nodes = tuple(
            wire.PushNode(n.name, n.addr, n.port, n.meta, n.incarnation, int(_STATE_CODE[n.state]), n.vsn or self.vsn)
            for n in self.nodes.values()
        )
        user = b""
        if self.local_state is not None:
            try:
                user = self.local_state(join)
            except Exception:  # noqa: BLE001 - the application's bug must not stop gossip
                self.log.exception("local_state_failed")
        return wire.encode_push_pull(wire.PushPull(join, nodes, user))

    def _name_ok(self, name: str, addr: Addr) -> bool:
        """Refuse a member name that is empty or holds control characters (NUL, ESC, ...).

        Names travel to logs, lbd-ctl and the planner's hash; memberlist does not
        check them, so a plaintext intruder could add "" or terminal escapes.
        Counted, and logged once per sender address (bounded).
        """
        if valid_member_name(name):
            return True
        self.stats.bad_names += 1
        m.BAD_NAMES.inc()
        sender = addr[0]
        if sender not in self._bad_name_senders and len(self._bad_name_senders) < 1024:
            self._bad_name_senders.add(sender)
            self.log.warning("member_name_refused", peer=f"{addr[0]}:{addr[1]}", name=repr(name)[:80])
        return False

    def _merge(self, pp: wire.PushPull, now: float, addr: Addr = ("?", 0)) -> None:
        self._verify_protocol(pp.nodes)
        for r in pp.nodes:
            if not self._name_ok(r.name, addr):
                continue
            if r.state == wire.NodeStateCode.ALIVE:
                self._alive(wire.Alive(r.incarnation, r.name, r.addr, r.port, r.meta, r.vsn), now)
            elif r.state == wire.NodeStateCode.LEFT:
                self._dead(wire.Dead(r.incarnation, r.name, r.name), now)
            elif r.state in (wire.NodeStateCode.DEAD, wire.NodeStateCode.SUSPECT):
                # A remote "dead" is only a suspicion here (state.go mergeState).
                self._suspect(wire.Suspect(r.incarnation, r.name, self.name), now)
        if pp.user_state and self.merge_remote_state is not None:
            try:
                self.merge_remote_state(pp.user_state, pp.join)
            except Exception:  # noqa: BLE001 - the application's bug must not stop gossip
                self.log.exception("merge_remote_state_failed")

    def _verify_protocol(self, remote: Sequence[wire.PushNode]) -> None:
        """memberlist verifyProtocol: every node's current versions within everyone's ranges."""
        vsns = [r.vsn for r in remote if r.state == wire.NodeStateCode.ALIVE and len(r.vsn) == 6]
        vsns += [n.vsn for n in self.nodes.values() if n.state == MemberState.ALIVE and len(n.vsn) == 6]
        if not vsns:
            return
        pmin = max(v[0] for v in vsns)
        pmax = min(v[1] for v in vsns)
        dmin = max(v[3] for v in vsns)
        dmax = min(v[4] for v in vsns)
        for v in vsns:
            if not (pmin <= v[2] <= pmax) or not (dmin <= v[5] <= dmax):
                raise GossipError(f"incompatible protocol versions {list(v)}: protocol [{pmin}, {pmax}], delegate [{dmin}, {dmax}]")

    # -- timers -------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        for seq, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[seq]
                if relay.nack:
                    self._send(relay.requester, wire.encode(wire.Nack(relay.requester_seq)))
        for name, susp in list(self._suspicions.items()):
            if susp.expired(now):
                del self._suspicions[name]
                node = self.nodes.get(name)
                # A suspicion older than the node's last state change is stale: ignore it.
                if node is not None and node.state == MemberState.SUSPECT and node.state_change == susp.start:
                    self.log.info("suspect_timeout", member=name, confirmations=susp.confirmations)
                    self._dead(wire.Dead(node.incarnation, name, self.name), now)
        probe = self._probe
        if probe is not None:
            if not probe.indirect and now >= probe.timeout_at:
                self._indirect_probe(probe, now)
            if now >= probe.deadline:
                self._finish_probe(now, success=probe.tcp_ok)
        if self._probe is None and now >= self._next_probe:
            # Lifeguard LHA-Probe: a node that doubts its own health probes slower.
            interval = self._awareness.scale(self.profile.probe_interval)
            self._next_probe = now + interval
            self._start_probe(now, interval)
        if now >= self._next_gossip:
            nxt = self._next_gossip + self.profile.gossip_interval
            self._next_gossip = nxt if nxt > now else now + self.profile.gossip_interval
            self._gossip(now)
        if now >= self._next_reconnect:
            self._next_reconnect = now + self.profile.reconnect_interval
            self._reconnect(now)
        if now >= self._next_push_pull:
            self._next_push_pull = now + self.profile.push_pull_scale(len(self.nodes))
            peers = [n for n in self.nodes.values() if n.name != self.name and n.state == MemberState.ALIVE]
            if peers:
                peer = self.rng.choice(peers)
                self._push_pull((ip_text(peer.addr), peer.port), now, join=False)

    def _reconnect(self, now: float) -> None:
        """serf's reconnect: try one failed node with a join push-pull.

        After a partition both sides hold each other dead and nobody probes the
        dead. The exchange makes each side refute the other's verdict (a remote
        dead merges as a suspicion about ourselves), and the next exchange
        carries the higher incarnations that bring both back to alive.
        """
        for name, (_, since) in list(self._failed.items()):
            node = self.nodes.get(name)
            if now - since > self.profile.reconnect_timeout or (node is not None and not node.dead_or_left):
                del self._failed[name]
        if not self._failed or self.leaving:
            return
        name = self.rng.choice(sorted(self._failed))
        self._push_pull(self._failed[name][0], now, join=True)

    # -- probing ------------------------------------------------------------

    def _start_probe(self, now: float, interval: float) -> None:
        """memberlist probe(): next node round robin, skipping self, dead and left."""
        checked = 0
        while checked < len(self._order) + 1:
            if self._probe_index >= len(self._order):
                self._reset_nodes(now)
                self._probe_index = 0
                checked += 1
                continue
            node = self.nodes[self._order[self._probe_index]]
            self._probe_index += 1
            if node.name == self.name or node.dead_or_left:
                checked += 1
                continue
            self._probe_node(node, now, interval)
            return

    def _reset_nodes(self, now: float) -> None:
        """On each wrap: reap nodes dead/left for longer than GossipToTheDeadTime, reshuffle."""
        for name in list(self._order):
            node = self.nodes[name]
            if node.dead_or_left and name != self.name and now - node.state_change > self.profile.gossip_to_the_dead_time:
                self._order.remove(name)
                del self.nodes[name]
                self._suspicions.pop(name, None)
        self.rng.shuffle(self._order)

    def _probe_node(self, node: _Node, now: float, interval: float) -> None:
        seq = self._next_seq()
        self.stats.probes += 1
        self._probe = _Probe(node.name, seq, now, now + self.profile.probe_timeout, now + interval)
        ping = wire.encode(self._ping(seq, node.name))
        dest = (ip_text(node.addr), node.port)
        if node.state == MemberState.SUSPECT:
            # A suspect target also hears the accusation so it can refute at once.
            # memberlist sends [ping, suspect]; suspect first lets the target's
            # refutation ride on the very ack it sends back (parts are independent).
            sus = wire.encode(wire.Suspect(node.incarnation, node.name, self.name))
            self._send(dest, sus, extra=[ping])
        else:
            self._send(dest, ping)

    def _indirect_probe(self, probe: _Probe, now: float) -> None:
        probe.indirect = True
        node = self.nodes.get(probe.target)
        if node is None:
            return
        peers = [
            n for n in self.nodes.values()
            if n.name not in (self.name, probe.target) and n.state == MemberState.ALIVE
        ]
        self.rng.shuffle(peers)
        for peer in peers[: self.profile.indirect_checks]:
            nack = peer.pmax >= 4
            if nack:
                probe.expected_nacks += 1
            ind = wire.IndirectPing(probe.seq, node.addr, node.port, node.name, nack, self._addr, self._port, self.name)
            self._send((ip_text(peer.addr), peer.port), wire.encode(ind))
        if node.pmax >= 3:
            # TCP fallback (protocol >= 3): same SeqNo, deadline = end of the probe interval.
            data = self._frame(wire.encode(self._ping(probe.seq, node.name)))
            dest = (ip_text(node.addr), node.port)
            probe.tcp_id = self._request("ping", dest, data, now, seq=probe.seq, deadline=probe.deadline)

    def _finish_probe(self, now: float, success: bool) -> None:
        probe = self._probe
        self._probe = None
        if probe is None:
            return
        if probe.tcp_id is not None:
            self._streams.pop(probe.tcp_id, None)
        if success:
            if not probe.acked:
                self.stats.tcp_fallback_successes += 1
                self.log.warning("probe_tcp_only", member=probe.target,
                                 msg="was able to connect but other probes failed, network may be misconfigured")
            self._awareness.apply_delta(-1)
            return
        self.stats.probe_failures += 1
        # Lifeguard LHA: missing nacks mean our own links may be at fault.
        if probe.expected_nacks > 0:
            self._awareness.apply_delta(max(0, probe.expected_nacks - probe.nacks))
        else:
            self._awareness.apply_delta(1)
        node = self.nodes.get(probe.target)
        if node is None or node.dead_or_left:
            return
        self.log.info("probe_failed", member=node.name, nacks=probe.nacks, expected_nacks=probe.expected_nacks)
        self.stats.suspicions += 1
        m.SUSPICIONS.inc()
        self._suspect(wire.Suspect(node.incarnation, node.name, self.name), now)

    def _ping(self, seq: int, target: str) -> wire.Ping:
        return wire.Ping(seq, target, self._addr, self._port, self.name)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    # -- gossip -------------------------------------------------------------

    def _gossip(self, now: float) -> None:
        if not len(self._queue):
            return
        candidates = []
        for n in self.nodes.values():
            if n.name == self.name:
                continue
            if n.state in (MemberState.ALIVE, MemberState.SUSPECT):
                candidates.append(n)
            elif n.state == MemberState.DEAD and now - n.state_change <= self.profile.gossip_to_the_dead_time:
                candidates.append(n)
        self.rng.shuffle(candidates)
        avail = wire.UDP_BUFFER_SIZE - wire.COMPOUND_HEADER_OVERHEAD - self._enc_overhead()
        for node in candidates[: self.profile.gossip_nodes]:
            msgs = self._queue.get(wire.COMPOUND_OVERHEAD, avail, self.profile.retransmit_limit(len(self.nodes)))
            if not msgs:
                return
            packet = msgs[0] if len(msgs) == 1 else wire.make_compound(msgs)
            self._emit((ip_text(node.addr), node.port), packet, node.pmax)

    def _enc_overhead(self) -> int:
        return crypto.overhead(1) if self.keys and self.verify_outgoing else 0

    def _send(self, dest: Addr, msg: bytes, extra: Sequence[bytes] = ()) -> None:
        """memberlist sendMsg: piggyback queued broadcasts, then the raw send."""
        parts = [msg, *extra]
        avail = wire.UDP_BUFFER_SIZE - sum(len(p) + 2 for p in parts) - wire.COMPOUND_HEADER_OVERHEAD - self._enc_overhead()
        if len(self._queue) and avail > 0:
            parts += self._queue.get(wire.COMPOUND_OVERHEAD, avail, self.profile.retransmit_limit(len(self.nodes)))
        packet = parts[0] if len(parts) == 1 else wire.make_compound(parts)
        self._emit(dest, packet, self._pmax_of(dest))

    def _pmax_of(self, dest: Addr) -> int:
        for n in self.nodes.values():
            if n.port == dest[1] and ip_text(n.addr) == dest[0]:
                return n.pmax
        return 0

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

    # -- state rules (state.go) ----------------------------------------------

    def _broadcast(self, name: str, msg: wire.Message) -> int:
        return self._queue.queue(name, wire.encode(msg))

    def _event(self, kind: EventKind, node: _Node) -> None:
        self._out.append(MemberEvent(kind, node.info()))

    def _any_alive(self) -> bool:
        return any(n.name != self.name and not n.dead_or_left for n in self.nodes.values())

    def _alive(self, a: wire.Alive, now: float, bootstrap: bool = False) -> None:
        if self.leaving and a.node == self.name:
            return
        if len(a.vsn) == 6 and (a.vsn[1] < a.vsn[0] or not a.vsn[0] <= a.vsn[2] <= a.vsn[1]):
            return  # an impossible protocol vector
        if len(a.addr) not in (4, 16):
            return
        node = self.nodes.get(a.node)
        if len(a.vsn) != wire.VSN_LEN:
            # Go zero-fills a missing Vsn; we never send one that is not 6 bytes
            # (serf panics on short ones), so re-gossip it with the known vector.
            known = node.vsn if node is not None and len(node.vsn) == wire.VSN_LEN else self.vsn
            a = wire.Alive(a.incarnation, a.node, a.addr, a.port, a.meta, known)
        updates_addr = False
        if node is None:
            # New nodes start dead so that becoming alive counts as a join; they go
            # into the probe order at a random position.
            node = _Node(a.node, a.addr, a.port, a.meta, 0, MemberState.DEAD, now, a.vsn)
            self.nodes[a.node] = node
            self._order.append(a.node)
            j = self.rng.randrange(len(self._order))
            self._order[j], self._order[-1] = self._order[-1], self._order[j]
        elif (ip_text(node.addr), node.port) != (ip_text(a.addr), a.port):
            if node.state == MemberState.LEFT:
                updates_addr = True
            else:
                self.log.error("conflicting_address", member=a.node, mine=f"{ip_text(node.addr)}:{node.port}",
                               theirs=f"{ip_text(a.addr)}:{a.port}", old_state=node.state.value)
                return
        is_local = a.node == self.name
        if a.incarnation <= node.incarnation and not is_local and not updates_addr:
            return
        if a.incarnation < node.incarnation and is_local:
            return
        self._suspicions.pop(a.node, None)
        old_state, old_meta = node.state, node.meta
        if not bootstrap and is_local:
            if a.incarnation == node.incarnation and a.meta == node.meta and a.vsn == self.vsn:
                return
            self._refute(node, a.incarnation)
            self.log.warning("refuting_alive", incarnation=a.incarnation)
            return
        self._broadcast(a.node, a)
        if len(a.vsn) == 6:
            node.vsn = a.vsn
        node.incarnation = a.incarnation
        node.meta = a.meta
        node.addr = a.addr
        node.port = a.port
        if node.state != MemberState.ALIVE:
            node.state = MemberState.ALIVE
            node.state_change = now
        self._failed.pop(node.name, None)
        if old_state in (MemberState.DEAD, MemberState.LEFT):
            self._event(EventKind.JOIN, node)
        elif old_state == MemberState.SUSPECT:
            self._event(EventKind.ALIVE, node)
        elif old_meta != node.meta:
            self._event(EventKind.UPDATE, node)

    def _reassert(self, accused: int) -> None:
        """A stale accusation about us: its sender missed our refutation.

        memberlist ignores it; we re-gossip our current alive (same incarnation,
        so up-to-date nodes ignore it) unless one is already queued. Without this
        a lone node that lost every copy of the refutation declares us dead when
        its suspicion timer runs out. Wire-compatible: it is a plain alive.
        """
        if self.leaving:
            return
        me = self.me
        if self._reassert_bid is not None and self._queue.pending(self._reassert_bid):
            return
        self._reassert_bid = self._broadcast(
            self.name, wire.Alive(me.incarnation, self.name, self._addr, self._port, me.meta, self.vsn))

    def _suspect(self, s: wire.Suspect, now: float) -> None:
        node = self.nodes.get(s.node)
        if node is not None and node.name == self.name and s.incarnation < node.incarnation:
            self._reassert(s.incarnation)
            return
        if node is None or s.incarnation < node.incarnation:
            return
        susp = self._suspicions.get(s.node)
        if susp is not None:
            # Independent confirmations shorten the timer and are re-gossiped.
            if susp.confirm(s.from_):
                self._broadcast(s.node, s)
            return
        if node.state != MemberState.ALIVE:
            return
        if node.name == self.name:
            if not self.leaving:
                self._refute(node, s.incarnation)
                self.log.warning("refuting_suspect", accuser=s.from_)
            return
        self._broadcast(s.node, s)
        node.incarnation = s.incarnation
        node.state = MemberState.SUSPECT
        node.state_change = now
        k, tmin, tmax = self.profile.suspicion_timeouts(len(self.nodes))
        self._suspicions[s.node] = Suspicion(s.from_, k, tmin, tmax, now)
        self._event(EventKind.SUSPECT, node)

    def _dead(self, d: wire.Dead, now: float) -> None:
        node = self.nodes.get(d.node)
        if node is not None and node.name == self.name and d.incarnation < node.incarnation:
            self._reassert(d.incarnation)
            return
        if node is None or d.incarnation < node.incarnation:
            return
        self._suspicions.pop(d.node, None)
        if node.dead_or_left:
            return
        if node.name == self.name:
            if not self.leaving:
                self._refute(node, d.incarnation)
                self.log.warning("refuting_dead", accuser=d.from_)
                return
            self._leave_bid = self._broadcast(d.node, d)
        else:
            self._broadcast(d.node, d)
        node.incarnation = d.incarnation
        node.state = MemberState.LEFT if d.node == d.from_ else MemberState.DEAD
        node.state_change = now
        if node.state == MemberState.DEAD and len(self._failed) < MAX_FAILED:
            self._failed[node.name] = ((ip_text(node.addr), node.port), now)
        else:
            self._failed.pop(node.name, None)
        self._event(EventKind.LEFT if node.state == MemberState.LEFT else EventKind.DEAD, node)

    def _refute(self, me: _Node, accused: int) -> None:
        inc = max(me.incarnation + 1, accused + 1)
        if inc > 0xFFFFFFFF:
            raise GossipError("incarnation space exhausted")
        me.incarnation = inc
        self._awareness.apply_delta(1)
        self.stats.refutes += 1
        m.REFUTES.inc()
        self._broadcast(self.name, wire.Alive(inc, self.name, self._addr, self._port, me.meta, self.vsn))


def _is_crypto_error(text: str) -> bool:
    """An error about keys: a failed decryption, or plaintext where encryption was expected
    (or the reverse), in memberlist's wording or ours."""
    return "crypt" in text.lower()  # "decrypt", "encrypted", "not encrypted"
