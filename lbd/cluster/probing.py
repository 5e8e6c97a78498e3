"""The probe round, sans-IO (memberlist ``state.go`` probe, probeNode and the ping handlers).

Each probe interval one member, taken round robin from the member table's
shuffled order, is pinged. No ack within ProbeTimeout and up to
IndirectChecks alive peers are asked to ping it for us (SWIM section 3.1),
plus a TCP ping when the target speaks protocol 3 or later; no ack by the end
of the interval and the member is suspected. Lifeguard's hooks (Dadgar et al.,
2018) live here too: peers that speak protocol 4 nack an indirect ping they
could not complete, and the acks, nacks and silences move this node's own
health score (``awareness.Awareness``), which the core uses to stretch its
probe interval.

The prober sends through three callables the core hands over: ``send`` (a UDP
message, with broadcasts piggybacked), ``ping_stream`` (open the TCP fallback
ping, returns the stream id) and ``forget_stream`` (the probe is over; its
stream's reply no longer matters).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from structlog.typing import FilteringBoundLogger

from lbd.model import MemberState

from . import metrics as m
from . import wire
from .awareness import Awareness
from .errors import GossipError
from .events import Addr, Stats
from .members import MemberTable, Node, ip_text
from .profiles import Profile

INDIRECT_NACK_AT = 0.8  # of ProbeTimeout: when a relay nacks an indirect ping that got no ack

SendMessage = Callable[[Addr, bytes, Sequence[bytes]], None]
PingStream = Callable[[Addr, wire.Ping, float, float], int]  # (dest, ping, now, deadline) -> stream id


@dataclass
class Probe:
    """The probe in flight: at most one per node at a time."""

    target: str
    seq: int
    sent: float
    timeout_at: float  # no ack by then: go indirect
    deadline: float  # no ack by then: suspect (the end of the probe interval)
    indirect: bool = False
    acked: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    tcp_id: int | None = None
    tcp_ok: bool = False


@dataclass
class Relay:
    """An indirect ping we relay: ack the requester, or nack on timeout."""

    requester: Addr
    requester_seq: int
    nack: bool
    deadline: float


class Prober:
    """Probes members one at a time and answers the pings of others."""

    def __init__(
        self, table: MemberTable, *, profile: Profile, rng: random.Random, awareness: Awareness, stats: Stats,
        log: FilteringBoundLogger, send: SendMessage, ping_stream: PingStream,
        forget_stream: Callable[[int], None],
    ) -> None:
        self.table = table
        self.profile = profile
        self.rng = rng
        self.awareness = awareness
        self.stats = stats
        self.log = log
        self._send = send
        self._ping_stream = ping_stream
        self._forget_stream = forget_stream
        self.probe: Probe | None = None
        self.relays: dict[int, Relay] = {}
        self._probe_index = 0
        self._seq = rng.randrange(0, 1 << 16)

    def next_deadline(self) -> float | None:
        """When the probe in flight next needs a tick (None when idle)."""
        if self.probe is None:
            return None
        return self.probe.deadline if self.probe.indirect else self.probe.timeout_at

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _ping(self, seq: int, target: str) -> wire.Ping:
        t = self.table
        return wire.Ping(seq, target, t.addr, t.port, t.name)

    # -- the probe round --------------------------------------------------------

    def start(self, now: float, interval: float) -> None:
        """memberlist probe(): next node round robin, skipping self, dead and left."""
        checked = 0
        order = self.table.order
        while checked < len(order) + 1:
            if self._probe_index >= len(order):
                self.table.reset(now)
                self._probe_index = 0
                checked += 1
                continue
            node = self.table.nodes[order[self._probe_index]]
            self._probe_index += 1
            if node.name == self.table.name or node.dead_or_left:
                checked += 1
                continue
            self._probe_node(node, now, interval)
            return

    def _probe_node(self, node: Node, now: float, interval: float) -> None:
        seq = self._next_seq()
        self.stats.probes += 1
        self.probe = Probe(node.name, seq, now, now + self.profile.probe_timeout, now + interval)
        ping = wire.encode(self._ping(seq, node.name))
        if node.state == MemberState.SUSPECT:
            # A suspect target also hears the accusation so it can refute at once.
            # memberlist sends [ping, suspect]; suspect first lets the target's
            # refutation ride on the very ack it sends back (parts are independent).
            sus = wire.encode(wire.Suspect(node.incarnation, node.name, self.table.name))
            self._send(node.udp_addr, sus, [ping])
        else:
            self._send(node.udp_addr, ping, ())

    def tick(self, now: float) -> None:
        """The probe in flight: go indirect at ProbeTimeout, conclude at the interval's end."""
        probe = self.probe
        if probe is None:
            return
        if not probe.indirect and now >= probe.timeout_at:
            self._indirect_probe(probe, now)
        if now >= probe.deadline:
            self._finish(now, success=probe.tcp_ok)

    def _indirect_probe(self, probe: Probe, now: float) -> None:
        probe.indirect = True
        node = self.table.nodes.get(probe.target)
        if node is None:
            return
        t = self.table
        peers = t.alive_peers(besides=probe.target)
        self.rng.shuffle(peers)
        for peer in peers[: self.profile.indirect_checks]:
            nack = peer.pmax >= 4
            if nack:
                probe.expected_nacks += 1
            ind = wire.IndirectPing(probe.seq, node.addr, node.port, node.name, nack, t.addr, t.port, t.name)
            self._send(peer.udp_addr, wire.encode(ind), ())
        if node.pmax >= 3:
            # TCP fallback (protocol >= 3): same SeqNo, deadline = end of the probe interval.
            probe.tcp_id = self._ping_stream(node.udp_addr, self._ping(probe.seq, node.name), now, probe.deadline)

    def _finish(self, now: float, success: bool) -> None:
        probe = self.probe
        self.probe = None
        if probe is None:
            return
        if probe.tcp_id is not None:
            self._forget_stream(probe.tcp_id)
        if success:
            if not probe.acked:
                self.stats.tcp_fallback_successes += 1
                self.log.warning("probe_tcp_only", member=probe.target,
                                 msg="was able to connect but other probes failed, network may be misconfigured")
            self.awareness.apply_delta(-1)
            return
        self.stats.probe_failures += 1
        # Lifeguard LHA: missing nacks mean our own links may be at fault.
        if probe.expected_nacks > 0:
            self.awareness.apply_delta(max(0, probe.expected_nacks - probe.nacks))
        else:
            self.awareness.apply_delta(1)
        node = self.table.nodes.get(probe.target)
        if node is None or node.dead_or_left:
            return
        self.log.info("probe_failed", member=node.name, nacks=probe.nacks, expected_nacks=probe.expected_nacks)
        self.stats.suspicions += 1
        m.SUSPICIONS.inc()
        self.table.suspect(wire.Suspect(node.incarnation, node.name, self.table.name), now)

    def tcp_acked(self, sid: int) -> None:
        """The TCP fallback ping of stream ``sid`` was acked: the probe succeeds at its deadline."""
        if self.probe is not None and self.probe.tcp_id == sid:
            self.probe.tcp_ok = True

    # -- pings from others --------------------------------------------------------

    def on_ping(self, ping: wire.Ping, addr: Addr) -> None:
        if ping.node and ping.node != self.table.name:
            self.log.debug("ping_for_other_node", target=ping.node)
            return
        dest = addr
        if ping.source_addr and ping.source_port:
            dest = (ip_text(ping.source_addr) or addr[0], ping.source_port)
        self._send(dest, wire.encode(wire.Ack(ping.seq_no)), ())

    def on_indirect_ping(self, ind: wire.IndirectPing, addr: Addr, now: float) -> None:
        target = ip_text(ind.target)
        if not target or not ind.port:
            raise GossipError("indirectPing with a bad target address")
        requester = addr
        if ind.source_addr and ind.source_port:
            requester = (ip_text(ind.source_addr) or addr[0], ind.source_port)
        seq = self._next_seq()
        # Nack a little before the requester's probe interval ends so the nack still counts
        # toward its awareness (memberlist uses ProbeTimeout, which races the deadline).
        self.relays[seq] = Relay(requester, ind.seq_no, ind.nack, now + INDIRECT_NACK_AT * self.profile.probe_timeout)
        self._send((target, ind.port), wire.encode(self._ping(seq, ind.node)), ())

    def on_ack(self, seq: int, now: float) -> None:
        relay = self.relays.pop(seq, None)
        if relay is not None:
            self._send(relay.requester, wire.encode(wire.Ack(relay.requester_seq)), ())
            return
        probe = self.probe
        if probe is not None and probe.seq == seq and not probe.acked:
            probe.acked = True
            self._finish(now, success=True)

    def on_nack(self, seq: int) -> None:
        if self.probe is not None and self.probe.seq == seq:
            self.probe.nacks += 1

    def expire_relays(self, now: float) -> None:
        """Relayed pings that got no ack: nack the requester if it asked for one."""
        for seq, relay in list(self.relays.items()):
            if now >= relay.deadline:
                del self.relays[seq]
                if relay.nack:
                    self._send(relay.requester, wire.encode(wire.Nack(relay.requester_seq)), ())
