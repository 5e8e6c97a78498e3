"""The cluster as the daemon sees it: gossip members, their metadata, one allocation table.

- Members come from the gossip layer (memberlist wire, SWIM + Lifeguard).
  Only members carrying lbd node metadata count (a serf agent in the same
  gossip pool is not an lbd node).
- Each node publishes what the planner needs about it: the small, slowly
  changing facts in its metadata (``nodemeta``: labels, interfaces and
  networks, drain, the version of its big facts), the big ones (held VIPs,
  failing services) as a record of its own (``facts``) that travels in user
  messages and push-pull, so they never outgrow memberlist's 512 bytes.
- The allocator is the alive lbd member with the lowest name: a choice every
  node makes alike from membership. It runs the allocator over its replica of
  the table and broadcasts what changed; every node merges and persists.
- A graceful stop hands over first: the node says it is drained, keeps its
  VIPs until the new owners say they hold them (make-before-break), then
  leaves the gossip pool.
- At start, the node owns nothing until the peers that joined with it have
  published their metadata (bounded), so the first node up does not take
  every VIP and keep it for the failback delay.
- Peers that answer with traffic we cannot decrypt mean our key is wrong: the
  node then owns and allocates nothing rather than duplicate the cluster's VIPs.
- Failed members and absent seeds are re-joined every few seconds (serf's
  reconnect), so the sides of a partition longer than memberlist's
  gossip_to_the_dead_time still merge when it heals.
- An undrained node counts as recovered: the failback delay runs from the undrain.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import random
import time
from dataclasses import replace
from typing import AbstractSet, Any, Callable, Mapping, Sequence

import structlog

from lbd import aio
from lbd.backoff import capped_backoff
from lbd.cluster import facts, nodemeta
from lbd.cluster.crypto import load_keyring
from lbd.cluster.events import EventKind, MemberEvent, MemberInfo
from lbd.cluster.metrics import CONFLICTS, FACTS_REJECTED, FACTS_REQUESTS, TABLE_REJECTED, TABLE_UPDATES
from lbd.cluster.replication import AllocationTable, TableEntry, TableError
from lbd.cluster.transport import JOIN_BACKOFF_INITIAL, JOIN_BACKOFF_MAX, Gossip, UserPayload
from lbd.coordination import Coordinator, Handover, HeldVips
from lbd.ipam import AllocationResult, IncrementalAllocator
from lbd.config.schema import Config
from lbd.model import Allocation, IPAddress, Member, MemberState, ServiceSpec

log = structlog.get_logger(__name__)

TABLE_MESSAGE = b"lbd1T"  # user message: table entries (a delta, or the whole table)
FACTS_MESSAGE = b"lbd1F"  # user message: node facts (records, a delta or a request; lbd.cluster.facts)
FACTS_STATE_KEY = "nf"  # the node facts in the push-pull table JSON (base64), which older nodes ignore
# Push-pull carries a digest of the allocation table, and the whole table only now and then
# (issue 9: 0.9 MB of JSON at 10,000 services, every push-pull, both ways). A peer whose
# digest differs from ours after the merge gets our whole table at once, over TCP
# (``send_user``), as it gets it after a large change; both ends do so, so both converge.
TABLE_DIGEST_KEY = "td"  # push-pull JSON: the sender's ``AllocationTable.digest`` (older nodes ignore it)
TABLE_SENDER_KEY = "tn"  # push-pull JSON: the sender's node name, to send it our table on a mismatch
FULL_TABLE_EVERY = 6  # every 6th push-pull (and every join) carries the whole table anyway: the safety net
TABLE_RESEND_INTERVAL = 5.0  # at most one whole table to one peer per this many seconds on mismatches
LEGACY_PEER_HOLD = 120.0  # after a push-pull without a digest (an older lbd), send whole tables this long
FACTS_REPAIR_INTERVAL = 0.25  # how often to look for facts records we are behind on
DELTA_BUDGET = 1000  # bytes of entries per UDP broadcast (memberlist packets are 1400 bytes)
MAX_DELTA_BROADCASTS = 8  # beyond this, send the whole table over TCP to each member
INITIAL_JOIN_WAIT = 3.0  # at start, wait this long to hear the cluster before announcing alone
PEER_META_WAIT = 2.0  # then wait at most this long for joined peers to publish their metadata
RECONNECT_INTERVAL = 2.0  # how often to try the seeds and dead members again (a healed partition)
RECONNECT_TIMEOUT = 24 * 3600.0  # stop trying a dead member after this long (serf's reconnect_timeout)
HANDOVER_TIMEOUT = 5.0


class ClusterCoordinator(Coordinator):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.node.name
        keys = load_keyring(config.cluster.keys_file) if config.cluster.keys_file else []
        self.gossip = Gossip(
            self.name,
            bind=config.cluster.bind,
            advertise=config.cluster.advertise,
            profile=config.cluster.profile,
            keys=keys,
            local_state=self._local_state,
            merge_remote_state=self._merge_remote_state,
        )
        self.table = AllocationTable(self.name)
        self.facts = facts.FactsReplica(self.name)
        self._facts_holds: tuple[str, ...] | None = None  # the holds last given to the facts replica
        self._holds_cache: dict[str, tuple[int, tuple[str, ...]]] = {}  # node -> (version, sorted holds)
        self._facts_task: asyncio.Task[None] | None = None
        self.monotonic: Callable[[], float] = time.monotonic  # the facts repair's clock (a test passes its own)
        self._allocator = IncrementalAllocator()  # allocate(), in work proportional to the change (issue 9)
        self._me = Member(name=self.name)
        self._meta_sent: bytes | None = None
        self._meta_cache: dict[bytes, nodemeta.NodeMeta | None] = {}
        self._since: dict[str, float] = {}
        self._on_change: Callable[[], None] = lambda: None
        self._join_task: asyncio.Task[None] | None = None
        self._started = False
        self._leaving = False
        self._state_dirty = False
        self._seen_conflicts: set[tuple[str, str]] = set()
        self._drained_seen: dict[str, bool] = {}
        self._refused = False  # peers answer but we cannot decrypt them: stay out of the cluster
        self._hold_until: float | None = None  # at start: wait for peers' metadata before owning
        self._closed = False
        self._reconnect_task: asyncio.Task[None] | None = None
        # Members that failed (not left): gossip forgets them after gossip_to_the_dead_time,
        # we keep trying them so that the two sides of a partition find each other again.
        self._lost: dict[str, tuple[str, float]] = {}
        self.gossip.on_event(self._event)
        self.gossip.on_user(self._user)

    # -- persisted table ------------------------------------------------------

    def restore(self, allocations: Mapping[str, Allocation], extra: Mapping[str, object]) -> None:
        try:
            self.table = AllocationTable.from_state(self.name, extra.get("cluster_table"), legacy=allocations,
                                                    now_ms=_now_ms())
        except TableError as exc:
            log.error("persisted_table_unreadable", error=str(exc), fallback="allocations")
            self.table = AllocationTable.from_state(self.name, None, legacy=allocations, now_ms=_now_ms())

    def persisted_extra(self) -> dict[str, object]:
        self._state_dirty = False
        return {"cluster_table": self.table.to_state()}

    def state_dirty(self) -> bool:
        return self._state_dirty

    # -- membership ---------------------------------------------------------

    def update_local(self, me: Member) -> None:
        if self._leaving:
            me = replace(me, drained=True)
        self._me = me
        if not self._started:
            return
        outgoing: list[facts.Outgoing] = []
        if me.holds != self._facts_holds or me.failing != self.facts.local.failing or not self.facts.local.version:
            outgoing = self.facts.publish(self._held_addresses(me.holds), me.failing, _now_ms(),
                                          self._alive_peer_names())
            self._facts_holds = me.holds
        # Holds live only in the facts record ("H": older nodes read them as unknown, as they did
        # past a hundred VIPs); failing is also kept here when it fits, for older nodes.
        meta = nodemeta.NodeMeta(labels=me.labels, interfaces=me.interfaces, drained=me.drained,
                                 failing=me.failing, holds_known=False, facts_version=self.facts.local.version)
        try:
            data, dropped = nodemeta.encode(meta)
        except ValueError as exc:
            log.error("node_metadata_too_large", error=str(exc))
            data, dropped = None, []  # keep what we published; the facts still go out
        if data is not None and data != self._meta_sent or outgoing:
            if dropped and data != self._meta_sent:
                log.info("node_metadata_trimmed", dropped=dropped, detail="carried by the node facts record")
            if data is not None:
                self._meta_sent = data
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._send_meta(data, outgoing)
                return
            # One loop turn later: the announcer's takeover task (created in this pass, so
            # queued before us) sends its first gratuitous ARP before peers hear that we hold
            # the VIP and the old owner releases it; clients never point at a released VIP.
            loop.call_soon(self._send_meta, data, outgoing)

    def _send_meta(self, data: bytes | None, outgoing: Sequence[facts.Outgoing] = ()) -> None:
        if self._closed:
            return
        # The facts first: a peer that sees the new version in our metadata has (most likely) the record.
        self._dispatch(outgoing)
        if data is not None and data == self._meta_sent:
            self.gossip.set_meta(data)

    # -- node facts (lbd.cluster.facts) ------------------------------------------

    def _held_addresses(self, holds: Sequence[str]) -> frozenset[IPAddress]:
        """``holds`` as addresses, parsing only what changed since the last publish (10,000 VIPs, one new)."""
        before = set(self._facts_holds or ())
        now = set(holds)
        removed = {ipaddress.ip_address(v) for v in before - now}
        return (self.facts.local.holds - removed) | {ipaddress.ip_address(v) for v in now - before}

    def _alive_peer_names(self) -> list[str]:
        return [i.name for i in self.gossip.members()
                if i.name != self.name and i.state in (MemberState.ALIVE, MemberState.SUSPECT)]

    def _dispatch(self, outgoing: Sequence[facts.Outgoing]) -> None:
        if not outgoing or not self._started or self._closed:
            return
        addresses = {i.name: i.addr for i in self.gossip.members()}
        for item in outgoing:
            if isinstance(item, facts.Broadcast):
                self.gossip.broadcast_user(FACTS_MESSAGE + item.payload)
            elif item.node in addresses:
                asyncio.ensure_future(self._send_facts(item.node, addresses[item.node], item.payload))

    async def _send_facts(self, node: str, address: str, payload: bytes) -> None:
        try:
            sent = await self.gossip.send_user(address, FACTS_MESSAGE + payload)
        except Exception as exc:  # noqa: BLE001 - the peer is gone or slow: it asks again, or push-pull repairs
            sent, error = False, str(exc)
        else:
            error = ""
        if sent is not True:
            log.info("facts_send_failed", node=node, error=error)

    def _receive_facts(self, payload: bytes, via: str) -> None:
        try:
            message = facts.decode(payload, known=self.facts.versions())
        except facts.FactsError as exc:
            FACTS_REJECTED.inc()
            log.warning("facts_message_rejected", via=via, error=str(exc))
            return
        infos = self.gossip.members()
        accept = {i.name: i.state in (MemberState.ALIVE, MemberState.SUSPECT) for i in infos}
        version = self.facts.local.version
        changed, outgoing = self.facts.receive(message, _now_ms(), self.monotonic(),
                                               [n for n, ok in accept.items() if ok and n != self.name], accept)
        self._dispatch(outgoing)
        if self.facts.local.version != version:
            # A record about us newer than ours (our previous life): we wrote above it; say so.
            self.update_local(self._me)
        if changed:
            self._on_change()

    async def _facts_repair_loop(self) -> None:
        """Ask for the records we are behind on (a lost delta; a version announced in metadata)."""
        while True:
            await asyncio.sleep(FACTS_REPAIR_INTERVAL)
            self.repair_facts(self.monotonic())

    def repair_facts(self, now: float) -> None:
        """One repair round: compare each peer's announced facts version with its record we have."""
        announced = {}
        for info in self.gossip.members():
            meta = self._decode(info.meta) if info.state in (MemberState.ALIVE, MemberState.SUSPECT) else None
            if meta is not None and info.name != self.name:
                announced[info.name] = meta.facts_version
        requests = self.facts.repair(announced, now)
        if requests:
            FACTS_REQUESTS.inc(len(requests))
            log.info("facts_record_requested", nodes=[r.node for r in requests if isinstance(r, facts.Send)])
        self._dispatch(requests)

    def _own_holds(self) -> tuple[str, ...]:
        """Our holds with a set lookup (the planner asks per VIP whether we hold it)."""
        if not isinstance(self._me.holds, facts.IndexedHolds):
            self._me = replace(self._me, holds=facts.IndexedHolds(self._me.holds))
        return self._me.holds

    def _member_facts(self, name: str, meta: nodemeta.NodeMeta) -> tuple[tuple[str, ...], frozenset[str], bool]:
        """(holds, failing, holds known) of a peer: from its record once it arrived, else its metadata."""
        record = self.facts.get(name)
        if record is None:
            # No record yet: a node that publishes one holds what we do not know yet; an older
            # node's metadata says what it says.
            return meta.holds, meta.failing, meta.holds_known and not meta.facts_version
        cached = self._holds_cache.get(name)
        if cached is None or cached[0] != record.version:
            # Sorted as text, as the node itself lists them (planner.held_vips).
            cached = (record.version, facts.IndexedHolds(sorted(str(a) for a in record.holds)))
            self._holds_cache[name] = cached
        return cached[1], record.failing, True

    def members(self) -> list[Member]:
        if not self._started:
            return [self._me]
        out = []
        infos = self.gossip.members()
        self.facts.prune(i.name for i in infos)
        for name in [n for n in self._holds_cache if n not in self.facts.records]:
            del self._holds_cache[name]
        holding = self._holding(infos)
        for info in infos:
            if info.name == self.name:
                me = replace(self._me, address=info.addr, incarnation=info.incarnation, holds=self._own_holds())
                if self._refused or holding:
                    # Our key does not open the cluster's traffic: announcing alone would
                    # duplicate every VIP the cluster serves. Own nothing until we join.
                    me = replace(me, state=MemberState.DEAD)
                self._note_drain(me)
                out.append(me)
                continue
            meta = self._decode(info.meta)
            if meta is None:
                continue  # not an lbd node (or one that has not published yet)
            state = info.state
            if state == MemberState.SUSPECT:
                # A suspect still owns its VIPs until declared dead (Lifeguard gives it time to refute).
                state = MemberState.ALIVE
            holds, failing, holds_known = self._member_facts(info.name, meta)
            member = Member(
                name=info.name, address=info.addr, state=state, incarnation=info.incarnation,
                labels=meta.labels, interfaces=meta.interfaces, drained=meta.drained, failing=failing,
                holds=holds, holds_known=holds_known,
            )
            self._note_drain(member)
            out.append(member)
        return out

    def _note_drain(self, member: Member) -> None:
        """An undrained node counts as recovered: failback waits from the undrain, not its join."""
        was = self._drained_seen.get(member.name)
        self._drained_seen[member.name] = member.drained
        if was and not member.drained and member.state == MemberState.ALIVE:
            self._since[member.name] = time.monotonic()

    def _decode(self, data: bytes) -> nodemeta.NodeMeta | None:
        if data not in self._meta_cache:
            try:
                self._meta_cache[data] = nodemeta.decode(data)
            except nodemeta.MetaError:
                self._meta_cache[data] = None
            if len(self._meta_cache) > 4096:
                self._meta_cache.clear()
        return self._meta_cache.get(data)

    def eligible_since(self) -> dict[str, float]:
        return dict(self._since)

    def allocator(self) -> str:
        alive = [m.name for m in self.members() if m.state == MemberState.ALIVE]
        return min(alive) if alive else self.name

    # -- allocation ---------------------------------------------------------

    def touched(self) -> set[str] | None:
        """Unknown: the gossiped table also changes with other nodes' allocations."""
        return None

    def allocate(self, config: Config, services: Sequence[ServiceSpec] | Mapping[str, ServiceSpec],
                 previous: Mapping[str, Allocation],
                 changed: AbstractSet[str] | None = None) -> tuple[AllocationResult, list[str]]:
        """The cluster's allocations; only the allocator writes the table (``changed`` unused)."""
        if isinstance(services, Mapping):  # (by name, as the daemon holds them)
            services = list(services.values())
        live, conflicts = self.table.live()
        notes = []
        for conflict in conflicts:
            key = (conflict.winner, conflict.loser)
            if key not in self._seen_conflicts:
                self._seen_conflicts.add(key)
                CONFLICTS.inc()
                notes.append(f"allocation conflict resolved: {conflict}")
        allocator = self.allocator()
        by_name = {s.name: s for s in services}
        if self._refused:
            result = AllocationResult(
                allocations={name: a for name, a in live.items() if name in by_name},
                pending={name: "not in the cluster: its gossip traffic cannot be decrypted with our keys"
                         for name in by_name if name not in live},
            )
            return result, notes
        if allocator == self.name:
            result = self._allocator.allocate(config.pools, list(services), live, namespaces=config.namespaces)
            changed = self.table.record(result.allocations, by_name, _now_ms())
            if changed:
                self._state_dirty = True
                self._publish(changed)
            return result, notes
        # Every allocation in the table, also of services this node's own sources do not (yet)
        # know: while configs differ during a rolling change, the elected owner still announces.
        result = AllocationResult(
            allocations=dict(live),
            pending={name: f"waiting for the allocator ({allocator}) to allocate it"
                     for name in by_name if name not in live},
        )
        return result, notes

    def _publish(self, entries: list[TableEntry]) -> None:
        if not self._started:
            return
        chunks: list[list[TableEntry]] = [[]]
        size = 0
        for entry in entries:
            encoded = len(self.table.encode([entry]))
            if chunks[-1] and size + encoded > DELTA_BUDGET:
                chunks.append([])
                size = 0
            chunks[-1].append(entry)
            size += encoded
        if len(chunks) > MAX_DELTA_BROADCASTS:
            asyncio.ensure_future(self._send_full_table())
            return
        for chunk in chunks:
            self.gossip.broadcast_user(TABLE_MESSAGE + self.table.encode(chunk))

    async def _send_full_table(self) -> None:
        payload = TABLE_MESSAGE + self.table.encode()
        targets = [m.address for m in self.members() if m.name != self.name and m.state == MemberState.ALIVE]
        results = await asyncio.gather(*(self.gossip.send_user(t, payload) for t in targets), return_exceptions=True)
        failed = [t for t, r in zip(targets, results) if r is not True]
        if failed:
            log.warning("table_send_failed", targets=failed)

    def _local_state(self, join: bool) -> bytes:
        # The node facts ride in the table's JSON under a key older nodes ignore, so they still
        # read the table from a newer node's push-pull (docs/cluster.md, "Node facts").
        extra = {FACTS_STATE_KEY: base64.b64encode(self.facts.state()).decode(),
                 TABLE_DIGEST_KEY: self.table.digest(), TABLE_SENDER_KEY: self.name}
        self._push_pulls = getattr(self, "_push_pulls", 0) + 1
        whole = (join or self._push_pulls % FULL_TABLE_EVERY == 0
                 or time.monotonic() < getattr(self, "_legacy_until", 0.0))
        return TABLE_MESSAGE + (self.table.encode(extra=extra) if whole else self.table.encode((), extra=extra))

    def _merge_remote_state(self, data: bytes, join: bool) -> None:
        extra = self._merge_payload(data, "push_pull")
        if extra is None:
            return
        digest = extra.get(TABLE_DIGEST_KEY)
        if digest is None:
            # An older lbd: it sends and reads whole tables in push-pull only.
            self._legacy_until = time.monotonic() + LEGACY_PEER_HOLD
        elif digest != self.table.digest():
            self._send_table_to(extra.get(TABLE_SENDER_KEY))

    def _send_table_to(self, name: object) -> None:
        """Our whole table to the member ``name`` (its push-pull's digest differs from ours),
        at most once per TABLE_RESEND_INTERVAL to each (``name`` is hostile input)."""
        if not isinstance(name, str) or name == self.name:
            return
        now = time.monotonic()
        sent: dict[str, float] = self.__dict__.setdefault("_table_sent_at", {})
        if now - sent.get(name, -TABLE_RESEND_INTERVAL) < TABLE_RESEND_INTERVAL:
            return
        target = next((i.addr for i in self.gossip.members()
                       if i.name == name and i.state in (MemberState.ALIVE, MemberState.SUSPECT)), None)
        if target is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a test driving the coordinator by hand): the next push-pull tries again
        sent[name] = now
        asyncio.ensure_future(self._send_table(target))

    async def _send_table(self, target: Any) -> None:
        if await self.gossip.send_user(target, TABLE_MESSAGE + self.table.encode()) is not True:
            log.warning("table_send_failed", targets=[target])

    def _user(self, message: UserPayload) -> None:
        if message.payload.startswith(FACTS_MESSAGE):
            self._receive_facts(message.payload[len(FACTS_MESSAGE):], "message")
            return
        self._merge_payload(message.payload, "message")

    def _merge_payload(self, data: bytes, via: str) -> dict[str, str] | None:
        """Merge a table message; return its extra fields (None: not a table, or malformed)."""
        if not data.startswith(TABLE_MESSAGE):
            return None  # someone else's user message (serf events, ...)
        try:
            _, entries, extra = AllocationTable.decode_with_extra(data[len(TABLE_MESSAGE):])
        except TableError as exc:
            log.warning("table_message_rejected", via=via, error=str(exc))
            return None
        if FACTS_STATE_KEY in extra:
            try:
                state = base64.b64decode(extra[FACTS_STATE_KEY], validate=True)
            except (binascii.Error, ValueError):
                FACTS_REJECTED.inc()
                log.warning("facts_message_rejected", via=via, error="node facts are not base64")
            else:
                self._receive_facts(state, via)
        before = self.table.rejected
        adopted = self.table.merge(entries, now_ms=_now_ms())
        refused = self.table.rejected - before
        if refused:
            # A clock far ahead (or a forged stamp): adopting it would win every
            # comparison and drag our clock along (replication.MAX_CLOCK_SKEW_MS).
            TABLE_REJECTED.inc(refused)
            log.warning("table_entries_refused", via=via, entries=refused, reason="stamped too far in the future")
        if adopted:
            TABLE_UPDATES.inc(len(adopted))
            self._state_dirty = True
            self._on_change()
        return extra

    # -- lifecycle ----------------------------------------------------------

    async def start(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        if self._started:
            return
        await self.gossip.start()
        self._started = True
        self._since[self.name] = time.monotonic()
        # No metadata until the daemon's first pass gives the real one: a placeholder (no
        # interfaces) would make peers plan without us and keep our VIPs until failback.
        seeds = [s for s in self.config.cluster.join if not _is_self(s, self.gossip)]
        if seeds:
            self._join_task = asyncio.ensure_future(self._join(seeds))
            # Hear the cluster before announcing anything alone; a node whose peers are all
            # down goes on by itself after the wait and serves its persisted allocations.
            # A peer that joined us counts as hearing the cluster too (our own join may be in
            # its retry backoff, having tried before the peer was up).
            deadline = time.monotonic() + INITIAL_JOIN_WAIT
            while not self._join_task.done() and not self._alive_peers() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if not self._join_task.done() and not self._alive_peers():
                log.warning("cluster_join_pending", seeds=seeds, detail="starting alone, still trying")
            # Peers that started with us publish their metadata in their first pass, as we
            # do in ours: until they have (bounded), plan without announcing anything, so
            # the first node up does not take every VIP and keep it until failback.
            self._hold_until = time.monotonic() + PEER_META_WAIT
            asyncio.get_running_loop().call_later(PEER_META_WAIT + 0.01, self._on_change_now)
            self._reconnect_task = asyncio.ensure_future(self._reconnect_loop(seeds))
        self._facts_task = asyncio.ensure_future(self._facts_repair_loop())
        on_change()

    def _on_change_now(self) -> None:
        self._on_change()

    def _holding(self, infos: Sequence[MemberInfo]) -> bool:
        """True while, just after start, an alive peer has not published its metadata yet."""
        if self._hold_until is None:
            return False
        waiting = any(i.name != self.name and i.state == MemberState.ALIVE and not i.meta for i in infos)
        if not waiting or time.monotonic() >= self._hold_until:
            self._hold_until = None
            return False
        return True

    async def _reconnect_loop(self, seeds: Sequence[str]) -> None:
        """Re-join seeds and dead members now and then, like serf's reconnect.

        memberlist stops gossiping to a dead member after gossip_to_the_dead_time and
        push-pulls only with alive ones, so without this, two sides of a partition longer
        than that would never merge again.
        """
        while True:
            await asyncio.sleep(RECONNECT_INTERVAL * (0.75 + 0.5 * random.random()))
            if self._join_task is not None and not self._join_task.done():
                continue  # the first join is still retrying
            infos = self.gossip.members()
            alive = {i.addr for i in infos if i.state in (MemberState.ALIVE, MemberState.SUSPECT)}
            now = time.monotonic()
            for name, (_, since) in list(self._lost.items()):
                if now - since > RECONNECT_TIMEOUT:
                    del self._lost[name]
            lost = [addr for addr, _ in self._lost.values() if addr not in alive]
            targets = list(dict.fromkeys([*lost, *(s for s in seeds if s not in alive)]))
            if not targets:
                continue
            failures = self._decrypt_failures()
            try:
                await aio.wait_for(self.gossip.join(targets), self.gossip.profile.tcp_timeout * 2 + 1)
            except Exception:  # noqa: BLE001 - nobody answered: try again later
                self._set_refused(self._decrypt_failures() > failures and not self._alive_peers())
                continue
            self._set_refused(False)
            log.info("cluster_reconnected", targets=targets)
            self._on_change()

    def _alive_peers(self) -> bool:
        return any(i.name != self.name and i.state == MemberState.ALIVE for i in self.gossip.members())

    def _decrypt_failures(self) -> int:
        value = self.gossip.stats().get("decrypt_failures", 0)
        return value if isinstance(value, int) else 0

    def _set_refused(self, refused: bool) -> None:
        if refused != self._refused:
            self._refused = refused
            if refused:
                log.error("cluster_key_mismatch", detail="peers answer but their gossip cannot be decrypted with "
                          "our keys (or they refuse ours): owning nothing until we can join")
            else:
                log.info("cluster_key_accepted")
            self._on_change()

    async def _join(self, seeds: Sequence[str]) -> None:
        # Every attempt checks for a key mismatch, not only the first: peers that
        # were not listening yet at the first try (start order is free) refuse our
        # keys only on a later one. Retries go on for ever at the backoff's cap.
        attempt = 0
        while True:
            failures = self._decrypt_failures()
            try:
                await self.gossip.join(seeds)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - nobody answered, or nobody we can understand
                self._set_refused(self._decrypt_failures() > failures)
                attempt += 1
                delay = capped_backoff(attempt, JOIN_BACKOFF_INITIAL, JOIN_BACKOFF_MAX, jitter=0.5)
                log.info("join_retry", attempt=attempt, delay=round(delay, 2), error=str(exc))
                await asyncio.sleep(delay)
        self._set_refused(False)
        self._on_change()

    def _event(self, event: MemberEvent) -> None:
        name = event.member.name
        if event.kind in (EventKind.JOIN, EventKind.ALIVE):
            self._since[name] = time.monotonic()
            self._lost.pop(name, None)
        elif event.kind in (EventKind.DEAD, EventKind.LEFT):
            self._since.pop(name, None)
            # The dead node holds nothing, and its record must not decide anything any more.
            self.facts.forget(name)
            self._holds_cache.pop(name, None)
            if event.kind == EventKind.DEAD and name != self.name:
                self._lost[name] = (event.member.addr, time.monotonic())
            else:
                self._lost.pop(name, None)
        if event.kind != EventKind.SUSPECT:
            self._on_change()

    async def configure(self, config: Config) -> None:
        if config.cluster != self.config.cluster:
            log.warning("cluster_config_changed", detail="[cluster] changes take effect on restart")
        self.config = config

    async def wait_handover(self, held: HeldVips) -> str:
        """Wait until this node announces no layer-2 VIP any more (others hold them)."""
        deadline = time.monotonic() + HANDOVER_TIMEOUT * 2
        while time.monotonic() < deadline:
            if not held():
                return "every VIP handed over"
            await asyncio.sleep(0.02)
        return f"{len(held())} VIPs still held: no other eligible node took them"

    async def leave(self, handover: Handover) -> None:
        """Hand the VIPs over (make-before-break), then leave the gossip pool."""
        if not self._started or self._leaving:
            return
        held = handover.held
        self._leaving = True
        # No more (re)joins: a reconnect after our leave would bring us back as alive, and
        # our later silence would read as a crash instead of a departure.
        for task in (self._join_task, self._reconnect_task):
            if task is not None:
                task.cancel()
        others = [m for m in self.members() if m.name != self.name and m.state == MemberState.ALIVE]
        if others and held():
            deadline = time.monotonic() + HANDOVER_TIMEOUT
            log.info("handing_over", vips=len(held()), restart=handover.restarting)
            while time.monotonic() < deadline and held():
                await handover.reconcile()
                await asyncio.sleep(0.01)
            if held():
                log.warning("handover_incomplete", vips=list(held()))
        await self.gossip.leave(timeout=2.0)

    async def close(self) -> None:
        self._closed = True
        for task in (self._join_task, self._reconnect_task, self._facts_task):
            if task is not None:
                task.cancel()
        await self.gossip.close()

    def status(self) -> list[dict[str, Any]]:
        rows = super().status()
        if not self._started:
            return rows
        info = {i.name: i for i in self.gossip.members()}
        now = self.gossip._now()  # noqa: SLF001 - the core's clock, to age state changes
        for row in rows:
            i = info.get(row["name"])
            if i is not None:
                row["state"] = i.state.value
                row["last_change"] = f"{now - i.state_change:.1f}s ago"
                row["allocator"] = row["name"] == self.allocator()
        # Non-lbd members of the gossip pool (serf agents) are shown too, for the operator.
        for name, i in sorted(info.items()):
            if not any(r["name"] == name for r in rows):
                rows.append({"name": name, "address": i.addr, "state": i.state.value, "incarnation": i.incarnation,
                             "last_change": f"{now - i.state_change:.1f}s ago", "lbd": False})
        return rows


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_self(seed: str, gossip: Gossip) -> bool:
    host, _, port = seed.rpartition(":")
    return False if not port.isdigit() else (host in (gossip.bind_host,) and int(port) == gossip.port)
