"""A deterministic in-process network for SWIM cores (tests and benchmarks).

Nodes are :class:`~lbd.cluster.swim.Swim` cores driven by one simulated clock.
Packets are delayed, randomly dropped (per packet, like nftables ``numgen
random``), blocked between partitioned nodes, or lost when the receiver has
crashed. TCP streams are reliable but each lost segment costs a 200 ms
retransmission (Linux's minimum RTO), failing once past the request deadline.
``stall(name, until)`` freezes a node as a starved event loop would: its
packets wait in the socket buffer and are handled when it wakes.

Every node's sent bytes are counted (``sent``: UDP payloads and stream
requests and replies, without IP/UDP/TCP headers), so a benchmark can report
gossip bandwidth per node (bench/cluster_scale.py).
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Callable

from lbd.cluster import wire
from lbd.cluster.errors import GossipError
from lbd.cluster.events import Addr, MemberEvent, SendPacket, StreamRequest, UserMessage
from lbd.cluster.profiles import DEFAULT, Profile
from lbd.cluster.swim import Swim

TCP_RTO = 0.2


@dataclass
class Traffic:
    """What one node sent: UDP packets and stream (TCP) messages, payload bytes."""

    udp_packets: int = 0
    udp_bytes: int = 0
    streams: int = 0  # requests and replies
    stream_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.udp_bytes + self.stream_bytes


@dataclass
class SimNode:
    core: Swim
    addr: Addr
    up: bool = True
    stalled_until: float = 0.0
    events: list[tuple[float, MemberEvent]] = field(default_factory=list)
    user: list[tuple[float, bytes]] = field(default_factory=list)


class SimNetwork:
    def __init__(
        self,
        seed: int = 1,
        loss: float = 0.0,
        delay: tuple[float, float] = (0.0002, 0.001),
        start: float = 1000.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.delay = delay
        self.now = start
        self.nodes: dict[str, SimNode] = {}
        self.by_addr: dict[Addr, str] = {}
        self.blocked: set[frozenset[str]] = set()
        self.drop_filter: Callable[[str, str, bytes], bool] | None = None
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.packets = 0
        self.dropped = 0
        self.sent: dict[str, Traffic] = {}

    # -- building -----------------------------------------------------------

    def add(self, name: str, profile: Profile = DEFAULT, index: int | None = None, **kwargs: object) -> Swim:
        i = len(self.nodes) + 1 if index is None else index
        addr = (f"10.77.0.{i}", 7946)
        core = Swim(name, addr[0], addr[1], now=self.now, profile=profile,
                    rng=random.Random(self.rng.random()), **kwargs)  # type: ignore[arg-type]
        self.nodes[name] = SimNode(core, addr)
        self.by_addr[addr] = name
        self.sent.setdefault(name, Traffic())
        self._drain(name)
        return core

    def core(self, name: str) -> Swim:
        return self.nodes[name].core

    def join(self, name: str, seeds: list[str]) -> None:
        core = self.core(name)
        core.join([self.nodes[s].addr for s in seeds], self.now)
        self._drain(name)

    def crash(self, name: str) -> None:
        self.nodes[name].up = False

    def restart(self, name: str, profile: Profile = DEFAULT, **kwargs: object) -> Swim:
        node = self.nodes[name]
        core = Swim(name, node.addr[0], node.addr[1], now=self.now, profile=profile,
                    rng=random.Random(self.rng.random()), **kwargs)  # type: ignore[arg-type]
        node.core, node.up, node.events = core, True, []
        self._drain(name)
        return core

    def partition(self, a: str, b: str, blocked: bool = True) -> None:
        key = frozenset((a, b))
        if blocked:
            self.blocked.add(key)
        else:
            self.blocked.discard(key)

    def stall(self, name: str, until: float) -> None:
        self.nodes[name].stalled_until = until

    # -- running ------------------------------------------------------------

    def _at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn))

    def _reachable(self, a: str, b: str) -> bool:
        return self.nodes[b].up and frozenset((a, b)) not in self.blocked

    def _drain(self, name: str) -> None:
        node = self.nodes[name]
        for action in node.core.poll():
            if isinstance(action, SendPacket):
                self._send_packet(name, action)
            elif isinstance(action, StreamRequest):
                self._stream(name, action)
            elif isinstance(action, MemberEvent):
                node.events.append((self.now, action))
            elif isinstance(action, UserMessage):
                node.user.append((self.now, action.payload))

    def _send_packet(self, src: str, action: SendPacket) -> None:
        self.packets += 1
        traffic = self.sent[src]
        traffic.udp_packets += 1
        traffic.udp_bytes += len(action.data)
        dst = self.by_addr.get(action.addr)
        if dst is None or not self._reachable(src, dst):
            self.dropped += 1
            return
        if self.drop_filter is not None and self.drop_filter(src, dst, action.data):
            self.dropped += 1
            return
        if self.rng.random() < self.loss:
            self.dropped += 1
            return
        t = self.now + self.rng.uniform(*self.delay)
        self._at(t, lambda: self._deliver(dst, action.data, self.nodes[src].addr))

    def _deliver(self, dst: str, data: bytes, src_addr: Addr) -> None:
        node = self.nodes[dst]
        if not node.up:
            return
        if node.stalled_until > self.now:
            # Sits in the socket buffer until the loop runs again.
            self._at(node.stalled_until, lambda: self._deliver(dst, data, src_addr))
            return
        try:
            node.core.handle_packet(data, src_addr, self.now)
        except GossipError:
            pass
        self._drain(dst)

    def _segment_time(self) -> float:
        t = self.rng.uniform(*self.delay)
        while self.rng.random() < self.loss:
            t += TCP_RTO
        return t

    def _stream(self, src: str, req: StreamRequest) -> None:
        dst = self.by_addr.get(req.addr)
        src_addr = self.nodes[src].addr
        self.sent[src].streams += 1
        self.sent[src].stream_bytes += len(req.data)

        def fail() -> None:
            if self.nodes[src].up:
                self.nodes[src].core.stream_result(req.id, None, self.now, "timeout")
                self._drain(src)

        if dst is None or not self._reachable(src, dst):
            self._at(req.deadline, fail)
            return
        t_req = self.now + self._segment_time()

        def serve() -> None:
            node = self.nodes[dst]
            if not node.up or not self._reachable(src, dst):
                self._at(max(req.deadline, self.now), fail)
                return
            if node.stalled_until > self.now:
                self._at(node.stalled_until, serve)
                return
            reply = node.core.handle_stream(req.data, src_addr, self.now)
            self._drain(dst)
            if not req.expect_reply:
                return
            if reply is not None:
                self.sent[dst].streams += 1
                self.sent[dst].stream_bytes += len(reply)
            t_rep = self.now + self._segment_time()
            if reply is None or t_rep > req.deadline:
                self._at(max(req.deadline, self.now), fail)
                return

            def answer() -> None:
                srcnode = self.nodes[src]
                if not srcnode.up:
                    return
                try:
                    sm = wire.decode_stream(reply, srcnode.core.keys, srcnode.core.verify_incoming)
                except GossipError as exc:
                    srcnode.core.stream_result(req.id, None, self.now, str(exc))
                else:
                    srcnode.core.stream_result(req.id, sm, self.now)
                self._drain(src)

            self._at(t_rep, answer)

        if t_req > req.deadline:
            self._at(req.deadline, fail)
        else:
            self._at(t_req, serve)

    def run_until(self, t_end: float, max_steps: int = 10_000_000) -> None:
        for _ in range(max_steps):
            t_next = t_end
            who: str | None = None
            for name, node in self.nodes.items():
                if not node.up:
                    continue
                d = max(node.core.next_deadline(), node.stalled_until)
                if d < t_next:
                    t_next, who = d, name
            if self._heap and self._heap[0][0] <= t_next:
                t, _, fn = heapq.heappop(self._heap)
                self.now = max(self.now, t)
                fn()
                continue
            if who is None:
                self.now = max(self.now, t_end)
                return
            self.now = max(self.now, t_next)
            self.nodes[who].core.tick(self.now)
            self._drain(who)
        raise RuntimeError("simulation did not reach its end time")

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def state_of(self, observer: str, member: str) -> str | None:
        info = self.core(observer).member(member)
        return info.state.value if info else None
