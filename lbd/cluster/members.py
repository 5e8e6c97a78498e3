"""The member table and its merge rules, sans-IO (memberlist ``state.go``).

Everything that decides a member's state lives here: aliveNode, suspectNode
and deadNode (incarnation comparison, refuting what is said about ourselves),
mergeState for a push-pull, verifyProtocol, and the dead/left bookkeeping
(reaping after GossipToTheDeadTime, the failed nodes serf's reconnect retries).
The rules are memberlist-wire.md section 6; SWIM is Das, Gupta and Motivala,
"SWIM: Scalable Weakly-consistent Infection-style Process Group Membership
Protocol" (2002), section 4.2 (suspicion and incarnation numbers); Lifeguard
is Dadgar et al. (2018).

The table reads no clock and sends nothing: the time comes in with each call,
and what the rules decide goes out through three callables the core hands
over: ``broadcast`` (queue a message for gossip, returns its id), ``pending``
(is that broadcast still queued) and ``notify`` (a member event).
"""

from __future__ import annotations

import ipaddress
import random
import unicodedata
from dataclasses import dataclass
from typing import Callable, Sequence

from structlog.typing import FilteringBoundLogger

from lbd.model import MemberState

from . import metrics as m
from . import wire
from .awareness import Awareness
from .errors import GossipError
from .events import Addr, EventKind, MemberEvent, MemberInfo, Stats
from .profiles import Profile
from .suspicion import Suspicion

MAX_FAILED = 4096  # failed nodes remembered for reconnect attempts
MAX_BAD_NAME_SENDERS = 1024  # senders of a bad member name logged once each

STATE_CODE = {
    MemberState.ALIVE: wire.NodeStateCode.ALIVE,
    MemberState.SUSPECT: wire.NodeStateCode.SUSPECT,
    MemberState.DEAD: wire.NodeStateCode.DEAD,
    MemberState.LEFT: wire.NodeStateCode.LEFT,
}


def ip_text(addr: bytes) -> str:
    if len(addr) == 4:
        return str(ipaddress.IPv4Address(addr))
    if len(addr) == 16:
        ip6 = ipaddress.IPv6Address(addr)
        return str(ip6.ipv4_mapped) if ip6.ipv4_mapped else str(ip6)
    return ""


def ip_bytes(text: str) -> bytes:
    """Packed address; IPv4 as 4 bytes (Go applies To4() to the advertise address)."""
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.packed


def valid_member_name(name: str) -> bool:
    """Not empty, no control character (Unicode Cc: NUL, ESC, DEL, C1 ...)."""
    return bool(name) and not any(unicodedata.category(c) == "Cc" for c in name)


@dataclass
class Node:
    """One member's entry in the table (memberlist nodeState)."""

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

    @property
    def udp_addr(self) -> Addr:
        return (ip_text(self.addr), self.port)

    def info(self) -> MemberInfo:
        return MemberInfo(self.name, ip_text(self.addr), self.port, self.state, self.incarnation,
                          self.state_change, self.meta, self.vsn)


class MemberTable:
    """Every member this node knows, ourselves included, and the rules that change them."""

    def __init__(
        self, name: str, addr: bytes, port: int, vsn: bytes, *, profile: Profile, rng: random.Random,
        awareness: Awareness, stats: Stats, log: FilteringBoundLogger,
        broadcast: Callable[[str, wire.Message], int], pending: Callable[[int], bool],
        notify: Callable[[MemberEvent], None],
    ) -> None:
        self.name = name
        self.addr = addr
        self.port = port
        self.vsn = vsn
        self.profile = profile
        self.rng = rng
        self.awareness = awareness
        self.stats = stats
        self.log = log
        self._broadcast = broadcast
        self._pending = pending
        self._notify = notify
        self.nodes: dict[str, Node] = {}
        self.order: list[str] = []  # probe order (memberlist m.nodes)
        self.suspicions: dict[str, Suspicion] = {}
        self.failed: dict[str, tuple[Addr, float]] = {}  # name -> (address, time of death)
        self.leaving = False
        self.leave_bid: int | None = None
        self._reassert_bid: int | None = None
        self._bad_name_senders: set[str] = set()  # log a bad member name once per sender

    # -- queries ------------------------------------------------------------

    @property
    def me(self) -> Node:
        return self.nodes[self.name]

    def members(self) -> list[MemberInfo]:
        return [n.info() for n in sorted(self.nodes.values(), key=lambda n: n.name)]

    def counts(self) -> dict[MemberState, int]:
        counts = {s: 0 for s in MemberState}
        for n in self.nodes.values():
            counts[n.state] += 1
        return counts

    def any_alive(self) -> bool:
        """Anyone but us not dead or left: someone to hear our broadcasts."""
        return any(n.name != self.name and not n.dead_or_left for n in self.nodes.values())

    def alive_peers(self, besides: str | None = None) -> list[Node]:
        """Alive members other than us (and ``besides``), in table order."""
        return [n for n in self.nodes.values()
                if n.name != self.name and n.name != besides and n.state == MemberState.ALIVE]

    def gossip_targets(self, now: float) -> list[Node]:
        """Whom gossip may go to: the live, and the dead for GossipToTheDeadTime (so they learn it)."""
        targets = []
        for n in self.nodes.values():
            if n.name == self.name:
                continue
            if n.state in (MemberState.ALIVE, MemberState.SUSPECT):
                targets.append(n)
            elif n.state == MemberState.DEAD and now - n.state_change <= self.profile.gossip_to_the_dead_time:
                targets.append(n)
        return targets

    def pmax_of(self, dest: Addr) -> int:
        """The highest protocol version the member at ``dest`` speaks (0 if unknown)."""
        for n in self.nodes.values():
            if n.port == dest[1] and ip_text(n.addr) == dest[0]:
                return n.pmax
        return 0

    def push_nodes(self) -> tuple[wire.PushNode, ...]:
        """The table as a push-pull carries it."""
        return tuple(
            wire.PushNode(n.name, n.addr, n.port, n.meta, n.incarnation, int(STATE_CODE[n.state]), n.vsn or self.vsn)
            for n in self.nodes.values()
        )

    # -- our own entry ------------------------------------------------------

    def set_local(self, incarnation: int, meta: bytes, now: float) -> None:
        """Our own alive (memberlist setAlive at start, UpdateNode for new meta)."""
        self.alive(wire.Alive(incarnation, self.name, self.addr, self.port, meta, self.vsn), now, bootstrap=True)

    def leave(self, now: float) -> None:
        """Broadcast dead{self, From: self}: the others mark us left."""
        if self.leaving:
            return
        self.leaving = True
        self.dead(wire.Dead(self.me.incarnation, self.name, self.name), now)

    # -- the rules (state.go) -------------------------------------------------

    def _event(self, kind: EventKind, node: Node) -> None:
        self._notify(MemberEvent(kind, node.info()))

    def alive(self, a: wire.Alive, now: float, bootstrap: bool = False) -> None:
        """memberlist aliveNode: a newer incarnation wins; an alive about us is refuted."""
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
        if node is None:
            node = self._add(a, now)
        elif node.udp_addr != (ip_text(a.addr), a.port) and node.state != MemberState.LEFT:
            self.log.error("conflicting_address", member=a.node, mine=f"{ip_text(node.addr)}:{node.port}",
                           theirs=f"{ip_text(a.addr)}:{a.port}", old_state=node.state.value)
            return
        updates_addr = node.udp_addr != (ip_text(a.addr), a.port)  # only a left member may move
        is_local = a.node == self.name
        if a.incarnation <= node.incarnation and not is_local and not updates_addr:
            return
        if a.incarnation < node.incarnation and is_local:
            return
        self.suspicions.pop(a.node, None)
        if not bootstrap and is_local:
            if a.incarnation == node.incarnation and a.meta == node.meta and a.vsn == self.vsn:
                return
            self._refute(node, a.incarnation)
            self.log.warning("refuting_alive", incarnation=a.incarnation)
            return
        self._broadcast(a.node, a)
        self._apply_alive(node, a, now)

    def _add(self, a: wire.Alive, now: float) -> Node:
        """A new node starts dead, so that becoming alive counts as a join; it goes
        into the probe order at a random position."""
        node = Node(a.node, a.addr, a.port, a.meta, 0, MemberState.DEAD, now, a.vsn)
        self.nodes[a.node] = node
        self.order.append(a.node)
        j = self.rng.randrange(len(self.order))
        self.order[j], self.order[-1] = self.order[-1], self.order[j]
        return node

    def _apply_alive(self, node: Node, a: wire.Alive, now: float) -> None:
        old_state, old_meta = node.state, node.meta
        if len(a.vsn) == 6:
            node.vsn = a.vsn
        node.incarnation = a.incarnation
        node.meta = a.meta
        node.addr = a.addr
        node.port = a.port
        if node.state != MemberState.ALIVE:
            node.state = MemberState.ALIVE
            node.state_change = now
        self.failed.pop(node.name, None)
        if old_state in (MemberState.DEAD, MemberState.LEFT):
            self._event(EventKind.JOIN, node)
        elif old_state == MemberState.SUSPECT:
            self._event(EventKind.ALIVE, node)
        elif old_meta != node.meta:
            self._event(EventKind.UPDATE, node)

    def _reassert(self) -> None:
        """A stale accusation about us: its sender missed our refutation.

        memberlist ignores it; we re-gossip our current alive (same incarnation,
        so up-to-date nodes ignore it) unless one is already queued. Without this
        a lone node that lost every copy of the refutation declares us dead when
        its suspicion timer runs out. Wire-compatible: it is a plain alive.
        """
        if self.leaving:
            return
        me = self.me
        if self._reassert_bid is not None and self._pending(self._reassert_bid):
            return
        self._reassert_bid = self._broadcast(
            self.name, wire.Alive(me.incarnation, self.name, self.addr, self.port, me.meta, self.vsn))

    def _accused(self, name: str, incarnation: int) -> Node | None:
        """The member a suspect or dead at ``incarnation`` is about; None if unknown, or if
        the accusation is older than what we know (one about us is answered by a reassert)."""
        node = self.nodes.get(name)
        if node is None:
            return None
        if incarnation < node.incarnation:
            if node.name == self.name:
                self._reassert()
            return None
        return node

    def suspect(self, s: wire.Suspect, now: float) -> None:
        """memberlist suspectNode: an alive member at this incarnation or older becomes suspect."""
        node = self._accused(s.node, s.incarnation)
        if node is None:
            return
        susp = self.suspicions.get(s.node)
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
        self.suspicions[s.node] = Suspicion(s.from_, k, tmin, tmax, now)
        self._event(EventKind.SUSPECT, node)

    def dead(self, d: wire.Dead, now: float) -> None:
        """memberlist deadNode: dead (or left, when it comes from the node itself) at this
        incarnation or newer; about us, refuted unless we are leaving."""
        node = self._accused(d.node, d.incarnation)
        if node is None:
            return
        self.suspicions.pop(d.node, None)
        if node.dead_or_left:
            return
        if node.name == self.name:
            if not self.leaving:
                self._refute(node, d.incarnation)
                self.log.warning("refuting_dead", accuser=d.from_)
                return
            self.leave_bid = self._broadcast(d.node, d)
        else:
            self._broadcast(d.node, d)
        node.incarnation = d.incarnation
        node.state = MemberState.LEFT if d.node == d.from_ else MemberState.DEAD
        node.state_change = now
        if node.state == MemberState.DEAD and len(self.failed) < MAX_FAILED:
            self.failed[node.name] = (node.udp_addr, now)
        else:
            self.failed.pop(node.name, None)
        self._event(EventKind.LEFT if node.state == MemberState.LEFT else EventKind.DEAD, node)

    def _refute(self, me: Node, accused: int) -> None:
        """memberlist refute: outbid the accusation; being accused is a sign of our own ill health."""
        inc = max(me.incarnation + 1, accused + 1)
        if inc > 0xFFFFFFFF:
            raise GossipError("incarnation space exhausted")
        me.incarnation = inc
        self.awareness.apply_delta(1)
        self.stats.refutes += 1
        m.REFUTES.inc()
        self._broadcast(self.name, wire.Alive(inc, self.name, self.addr, self.port, me.meta, self.vsn))

    # -- push-pull (mergeState) -----------------------------------------------

    def name_ok(self, name: str, addr: Addr) -> bool:
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
        if sender not in self._bad_name_senders and len(self._bad_name_senders) < MAX_BAD_NAME_SENDERS:
            self._bad_name_senders.add(sender)
            self.log.warning("member_name_refused", peer=f"{addr[0]}:{addr[1]}", name=repr(name)[:80])
        return False

    def merge(self, remote: Sequence[wire.PushNode], now: float, addr: Addr) -> None:
        """memberlist mergeState: each remote entry as the message its state stands for."""
        self.verify_protocol(remote)
        for r in remote:
            if not self.name_ok(r.name, addr):
                continue
            if r.state == wire.NodeStateCode.ALIVE:
                self.alive(wire.Alive(r.incarnation, r.name, r.addr, r.port, r.meta, r.vsn), now)
            elif r.state == wire.NodeStateCode.LEFT:
                self.dead(wire.Dead(r.incarnation, r.name, r.name), now)
            elif r.state in (wire.NodeStateCode.DEAD, wire.NodeStateCode.SUSPECT):
                # A remote "dead" is only a suspicion here (state.go mergeState).
                self.suspect(wire.Suspect(r.incarnation, r.name, self.name), now)

    def verify_protocol(self, remote: Sequence[wire.PushNode]) -> None:
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

    def expire_suspicions(self, now: float) -> None:
        """A suspect whose timer ran out is declared dead by us."""
        for name, susp in list(self.suspicions.items()):
            if susp.expired(now):
                del self.suspicions[name]
                node = self.nodes.get(name)
                # A suspicion older than the node's last state change is stale: ignore it.
                if node is not None and node.state == MemberState.SUSPECT and node.state_change == susp.start:
                    self.log.info("suspect_timeout", member=name, confirmations=susp.confirmations)
                    self.dead(wire.Dead(node.incarnation, name, self.name), now)

    def reset(self, now: float) -> None:
        """memberlist resetNodes, on each wrap of the probe order: reap nodes dead or left
        for longer than GossipToTheDeadTime, and reshuffle."""
        for name in list(self.order):
            node = self.nodes[name]
            if node.dead_or_left and name != self.name and now - node.state_change > self.profile.gossip_to_the_dead_time:
                self.order.remove(name)
                del self.nodes[name]
                self.suspicions.pop(name, None)
        self.rng.shuffle(self.order)

    def reconnect_target(self, now: float) -> Addr | None:
        """serf's reconnect: one failed node to try a join push-pull with, if any.

        Forgets the failed nodes that came back or stayed away past ReconnectTimeout.
        """
        for name, (_, since) in list(self.failed.items()):
            node = self.nodes.get(name)
            if now - since > self.profile.reconnect_timeout or (node is not None and not node.dead_or_left):
                del self.failed[name]
        if not self.failed or self.leaving:
            return None
        name = self.rng.choice(sorted(self.failed))
        return self.failed[name][0]
