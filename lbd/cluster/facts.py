"""Each node's big facts: the VIPs it holds and the services failing there (pure: no I/O).

memberlist's node metadata holds at most 512 bytes, about a hundred held VIPs.
So the facts that grow with the table travel beside it, the way the allocation
table does (``replication``): every node owns one last-writer-wins record about
itself, ``NodeFacts(node, version, holds, failing)``, and is the only writer of
it. The version is a hybrid logical clock in milliseconds, so a restarted node's
record still wins over its previous life's (and a record about ourselves that is
newer than ours, from a previous life or a forger, is refuted by writing above it).

How records travel (``FactsReplica``, sans-IO: it returns what to send):

- A change is broadcast as a delta from the previous version (what was added,
  what was removed), or as the whole record when that is small; a large delta
  is cut into a chain of deltas, each one UDP broadcast; beyond
  ``MAX_DELTA_BROADCASTS`` of them the whole record goes over TCP to every member.
- Push-pull anti-entropy carries every record the node knows, so a joining or
  healed node learns everything at once.
- A replica that sees it missed a version (a delta whose base it does not have,
  or a newer version announced in the node's metadata) asks the owner for its
  whole record over TCP, at most once a second per owner.
- Records of members that died or left are dropped: a dead node holds nothing.

Wire format (docs/cluster.md, "Node facts"): after the user-message prefix,
a format version byte, then a kind byte (records, delta or request); addresses
are packed bytes, contiguous runs as (first, count) ranges. Every decoder error
is a ``FactsError``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from lbd.model import IPAddress

FORMAT_VERSION = 1
KIND_RECORDS = 1
KIND_DELTA = 2
KIND_REQUEST = 3

MAX_VERSION = 2**63 - 1
MAX_NAME_BYTES = 65_535  # node and service names on the wire (a u16 length)
MAX_ADDRESSES = 200_000  # held VIPs per record (ranges expanded): a bound on a hostile range
MAX_FAILING = 100_000  # failing services per record
MAX_RECORDS = 65_536  # records per push-pull
MAX_PENDING = 64  # out-of-order deltas kept per node, waiting for their base

DELTA_BUDGET = 1000  # bytes per UDP broadcast (memberlist packets are 1400 bytes)
SMALL_RECORD_ITEMS = 200  # records of at most this many VIPs and services may go whole in one broadcast
MAX_DELTA_BROADCASTS = 8  # beyond this, the whole record over TCP to each member
REPAIR_GRACE = 0.5  # seconds behind before asking: the missing delta may still be on its way
REPAIR_INTERVAL = 1.0  # at most one request per owner (and one answer per asker) this often

_V4_SINGLE, _V6_SINGLE, _V4_RANGE, _V6_RANGE = 0x04, 0x06, 0x14, 0x16
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


class FactsError(ValueError):
    """Node facts from the wire are malformed."""


@dataclass(frozen=True)
class NodeFacts:
    """One node's record: what it holds at layer 2 and which services fail there."""

    node: str
    version: int
    holds: frozenset[IPAddress] = frozenset()
    failing: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FactsDelta:
    """What changed in ``node``'s record from version ``base`` to ``version``."""

    node: str
    base: int
    version: int
    holds_added: frozenset[IPAddress] = frozenset()
    holds_removed: frozenset[IPAddress] = frozenset()
    failing_added: frozenset[str] = frozenset()
    failing_removed: frozenset[str] = frozenset()

    def apply(self, record: NodeFacts) -> NodeFacts:
        return NodeFacts(self.node, self.version, (record.holds - self.holds_removed) | self.holds_added,
                         (record.failing - self.failing_removed) | self.failing_added)


@dataclass(frozen=True)
class FactsRequest:
    """``asker`` wants the whole records of ``nodes`` (it missed a version)."""

    asker: str
    nodes: tuple[str, ...]


Message = tuple[NodeFacts, ...] | FactsDelta | FactsRequest


class IndexedHolds(tuple[str, ...]):
    """The VIP texts a member holds, sorted as ``planner.held_vips`` lists them, with ``in`` a set lookup.

    ``Member.holds`` is a tuple, and the planner and the daemon ask ``str(vip) in
    member.holds`` once per VIP: over plain tuples of 10,000 VIPs that is 10^8
    comparisons a pass. Equal to (and hashed as) the plain tuple.
    """

    _index: frozenset[str]

    def __new__(cls, vips: Iterable[str]) -> "IndexedHolds":
        held = super().__new__(cls, vips)
        held._index = frozenset(held)
        return held

    def __contains__(self, vip: object) -> bool:
        return vip in self._index


# -- codec -------------------------------------------------------------------


def _name(text: str) -> bytes:
    data = text.encode()
    if not data or len(data) > MAX_NAME_BYTES:
        raise ValueError(f"name of {len(data)} bytes: 1 to {MAX_NAME_BYTES}")
    return _U16.pack(len(data)) + data


def _runs(addresses: Iterable[IPAddress]) -> list[tuple[int, int, int]]:
    """Contiguous runs (family, first address as an integer, how many), IPv4 first, each sorted."""
    runs: list[tuple[int, int, int]] = []
    v4: list[int] = []
    v6: list[int] = []
    for address in addresses:
        (v4 if isinstance(address, ipaddress.IPv4Address) else v6).append(int(address))
    for family, values in ((4, sorted(v4)), (6, sorted(v6))):
        start = prev = -2
        for value in values:
            if value == prev + 1 and value - start < 2**32:
                prev = value
                continue
            if start >= 0:
                runs.append((family, start, prev - start + 1))
            start = prev = value
        if start >= 0:
            runs.append((family, start, prev - start + 1))
    return runs


def _addresses(addresses: Iterable[IPAddress]) -> bytes:
    runs = _runs(addresses)
    out = [_U32.pack(len(runs))]
    for family, first, count in runs:
        packed = _U32.pack(first) if family == 4 else first.to_bytes(16, "big")
        if count == 1:
            out.append(bytes([_V4_SINGLE if family == 4 else _V6_SINGLE]) + packed)
        else:
            out.append(bytes([_V4_RANGE if family == 4 else _V6_RANGE]) + packed + _U32.pack(count - 1))
    return b"".join(out)


def _strings(values: Iterable[str]) -> bytes:
    items = sorted(values)
    return _U32.pack(len(items)) + b"".join(_name(v) for v in items)


def _record(record: NodeFacts) -> bytes:
    return _name(record.node) + _U64.pack(record.version) + _addresses(record.holds) + _strings(record.failing)


def encode_records(records: Sequence[NodeFacts]) -> bytes:
    """Whole records (a small change, an answer to a request, push-pull)."""
    return bytes([FORMAT_VERSION, KIND_RECORDS]) + _U32.pack(len(records)) + b"".join(_record(r) for r in records)


def encode_delta(delta: FactsDelta) -> bytes:
    return (bytes([FORMAT_VERSION, KIND_DELTA]) + _name(delta.node) + _U64.pack(delta.base) + _U64.pack(delta.version)
            + _addresses(delta.holds_added) + _addresses(delta.holds_removed)
            + _strings(delta.failing_added) + _strings(delta.failing_removed))


def encode_request(request: FactsRequest) -> bytes:
    return (bytes([FORMAT_VERSION, KIND_REQUEST]) + _name(request.asker) + _U32.pack(len(request.nodes))
            + b"".join(_name(n) for n in request.nodes))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise FactsError(f"{what} cut short at byte {self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return int(_U32.unpack(self.take(4, what))[0])

    def version(self, what: str) -> int:
        value = int(_U64.unpack(self.take(8, what))[0])
        if value > MAX_VERSION:
            raise FactsError(f"{what} {value} is past 2^63-1")
        return value

    def name(self, what: str) -> str:
        length = int(_U16.unpack(self.take(2, what))[0])
        if not 0 < length <= MAX_NAME_BYTES:
            raise FactsError(f"{what} of {length} bytes (1 to {MAX_NAME_BYTES})")
        try:
            return self.take(length, what).decode()
        except UnicodeDecodeError:
            raise FactsError(f"{what} is not UTF-8") from None

    def count(self, limit: int, least: int, what: str) -> int:
        n = self.u32(what)
        if n > limit or n * least > len(self.data) - self.pos:
            raise FactsError(f"{what}: {n} items do not fit (at most {limit}, {len(self.data) - self.pos} bytes left)")
        return n

    def addresses(self, what: str, build: bool = True) -> frozenset[IPAddress]:
        """An address set; with ``build`` false only checked (a record we already have)."""
        out: set[IPAddress] = set()
        total = 0
        for _ in range(self.count(MAX_ADDRESSES, 5, what)):
            tag = self.take(1, what)[0]
            if tag in (_V4_SINGLE, _V4_RANGE):
                make: type[IPAddress] = ipaddress.IPv4Address
                first = int(_U32.unpack(self.take(4, what))[0])
                top = 2**32
            elif tag in (_V6_SINGLE, _V6_RANGE):
                make, first, top = ipaddress.IPv6Address, int.from_bytes(self.take(16, what), "big"), 2**128
            else:
                raise FactsError(f"{what}: unknown address tag {tag:#x}")
            extra = 0 if tag in (_V4_SINGLE, _V6_SINGLE) else self.u32(what)
            if tag in (_V4_RANGE, _V6_RANGE) and extra == 0:
                raise FactsError(f"{what}: a range of one address")
            total += extra + 1
            if total > MAX_ADDRESSES:
                raise FactsError(f"{what}: more than {MAX_ADDRESSES} addresses")
            if first + extra >= top:
                raise FactsError(f"{what}: range from {make(first)} runs past the last address")
            if build:
                out.update(make(v) for v in range(first, first + extra + 1))
        if len(out) > MAX_ADDRESSES:
            raise FactsError(f"{what}: more than {MAX_ADDRESSES} addresses")
        return frozenset(out)

    def strings(self, what: str) -> frozenset[str]:
        return frozenset(self.name(what) for _ in range(self.count(MAX_FAILING, 3, what)))

    def end(self) -> None:
        if self.pos != len(self.data):
            raise FactsError(f"{len(self.data) - self.pos} bytes after the message")


def decode(data: bytes, known: Mapping[str, int] | None = None) -> Message:
    """A message from the wire: whole records, a delta or a request; FactsError on anything malformed.

    Records no newer than ``known`` (node -> the version we have) are checked but
    left out of the result: a push-pull repeats every record, mostly unchanged,
    and building 10,000 addresses again to throw them away costs more than reading.
    """
    reader = _Reader(data)
    head = reader.take(2, "header")
    if head[0] != FORMAT_VERSION:
        raise FactsError(f"facts format version {head[0]} (this node reads {FORMAT_VERSION})")
    kind = head[1]
    message: Message
    if kind == KIND_RECORDS:
        records = []
        for _ in range(reader.count(MAX_RECORDS, 19, "records")):
            node, version = reader.name("node name"), reader.version("version")
            new = known is None or version > known.get(node, -1)
            holds, failing = reader.addresses("holds", build=new), reader.strings("failing")
            if new:
                records.append(NodeFacts(node, version, holds, failing))
        message = tuple(records)
    elif kind == KIND_DELTA:
        node = reader.name("node name")
        base, version = reader.version("base version"), reader.version("version")
        if version <= base:
            raise FactsError(f"delta to version {version} from {base}: not later")
        message = FactsDelta(node, base, version, reader.addresses("holds added"), reader.addresses("holds removed"),
                             reader.strings("failing added"), reader.strings("failing removed"))
    elif kind == KIND_REQUEST:
        asker = reader.name("asker")
        message = FactsRequest(asker, tuple(reader.name("node") for _ in range(reader.count(MAX_RECORDS, 3, "nodes"))))
    else:
        raise FactsError(f"unknown facts message kind {kind}")
    reader.end()
    return message


# -- the replica ---------------------------------------------------------------


@dataclass(frozen=True)
class Broadcast:
    """Gossip ``payload`` to the cluster (UDP, best effort; repaired by requests and push-pull)."""

    payload: bytes


@dataclass(frozen=True)
class Send:
    """Send ``payload`` to member ``node`` over TCP (memberlist SendReliable)."""

    node: str
    payload: bytes


Outgoing = Broadcast | Send


@dataclass
class FactsReplica:
    """Every node's records as this node knows them, and its own (the only one it writes).

    ``now_ms`` (wall clock, for versions) and ``now`` (monotonic seconds, for
    repair pacing) are passed in. Payloads returned carry no user-message
    prefix: the caller adds its own.
    """

    node: str
    records: dict[str, NodeFacts] = field(default_factory=dict)
    clock: int = 0
    _pending: dict[str, dict[int, FactsDelta]] = field(default_factory=dict)
    _behind_since: dict[str, float] = field(default_factory=dict)
    _asked: dict[str, float] = field(default_factory=dict)
    _answered: dict[str, float] = field(default_factory=dict)
    _encoded: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # node -> (version, its record's bytes)

    def __post_init__(self) -> None:
        self.records.setdefault(self.node, NodeFacts(self.node, 0))

    @property
    def local(self) -> NodeFacts:
        return self.records[self.node]

    def _tick(self, now_ms: int) -> int:
        self.clock = min(max(self.clock + 1, now_ms), MAX_VERSION)
        return self.clock

    # -- writing our own record -------------------------------------------

    def publish(self, holds: Iterable[IPAddress], failing: Iterable[str], now_ms: int,
                peers: Sequence[str]) -> list[Outgoing]:
        """Make our record say ``holds``/``failing``; what to send so the others learn it."""
        old = self.local
        new_holds, new_failing = frozenset(holds), frozenset(failing)
        if (new_holds, new_failing) == (old.holds, old.failing) and old.version:
            return []
        added, removed = new_holds - old.holds, old.holds - new_holds
        f_added, f_removed = new_failing - old.failing, old.failing - new_failing
        record = NodeFacts(self.node, self._tick(now_ms), new_holds, new_failing)
        items = [*(("h+", a) for a in sorted(added, key=address_key)), *(("h-", a) for a in sorted(removed, key=address_key)),
                 *(("f+", v) for v in sorted(f_added)), *(("f-", v) for v in sorted(f_removed))]
        if len(new_holds) + len(new_failing) <= SMALL_RECORD_ITEMS or \
                sum(_item_cost(v) for _, v in items) > MAX_DELTA_BROADCASTS * (DELTA_BUDGET - self._delta_header()):
            # Small: the whole record (idempotent, a lost one leaves no gap). A change too big for
            # the delta broadcasts: the whole record too, in one broadcast when its ranges fit
            # (10,000 contiguous VIPs take 9 bytes), else over TCP to every member.
            self.records[self.node] = record
            whole = encode_records([record])
            return [Broadcast(whole)] if len(whole) <= DELTA_BUDGET else self._send_whole(peers, whole)
        deltas = self._chain(old.version, record.version, items, now_ms)
        self.records[self.node] = NodeFacts(self.node, deltas[-1].version, new_holds, new_failing)
        payloads = [encode_delta(d) for d in deltas]
        if len(deltas) > MAX_DELTA_BROADCASTS or any(len(p) > DELTA_BUDGET for p in payloads):
            return self._send_whole(peers)  # an item alone too big for a packet (a very long service name)
        return [Broadcast(p) for p in payloads]

    def _send_whole(self, peers: Sequence[str], payload: bytes | None = None) -> list[Outgoing]:
        payload = encode_records([self.local]) if payload is None else payload
        return [Send(p, payload) for p in peers if p != self.node]

    def _delta_header(self) -> int:
        return 2 + len(_name(self.node)) + 16 + 16  # format, kind, name, base, version, four counts

    def _chain(self, base: int, version: int, items: Sequence[tuple[str, IPAddress | str]],
               now_ms: int) -> list[FactsDelta]:
        """The change as deltas of at most DELTA_BUDGET bytes each, chained base -> version -> ..."""
        header = self._delta_header()
        chunks: list[list[tuple[str, IPAddress | str]]] = [[]]
        size = header
        for kind, value in items:
            cost = _item_cost(value)
            if chunks[-1] and size + cost > DELTA_BUDGET:
                chunks.append([])
                size = header
            chunks[-1].append((kind, value))
            size += cost
        deltas = []
        for i, chunk in enumerate(chunks):
            stamp = version if i == 0 else self._tick(now_ms)
            held: dict[str, set[IPAddress]] = {"h+": set(), "h-": set()}
            failing: dict[str, set[str]] = {"f+": set(), "f-": set()}
            for kind, value in chunk:
                if isinstance(value, str):
                    failing[kind].add(value)
                else:
                    held[kind].add(value)
            deltas.append(FactsDelta(self.node, base, stamp, frozenset(held["h+"]), frozenset(held["h-"]),
                                     frozenset(failing["f+"]), frozenset(failing["f-"])))
            base = stamp
        return deltas

    # -- reading others' ------------------------------------------------------

    def get(self, node: str) -> NodeFacts | None:
        """``node``'s record, or None when it has not arrived (its facts are unknown)."""
        record = self.records.get(node)
        if record is None or (node == self.node and not record.version):
            return None
        return record

    def forget(self, node: str) -> None:
        """``node`` died or left: it holds nothing, and its old record must not come back."""
        if node == self.node:
            return
        self.records.pop(node, None)
        self._pending.pop(node, None)
        self._behind_since.pop(node, None)
        self._asked.pop(node, None)
        self._answered.pop(node, None)

    def versions(self) -> dict[str, int]:
        """node -> the version of its record we have (``decode``'s ``known``)."""
        return {n: r.version for n, r in self.records.items() if n != self.node or r.version}

    def state(self) -> bytes:
        """Push-pull: every record we know (ours first); each record encoded once per version."""
        known = [self.local] if self.local.version else []
        known += [r for n, r in sorted(self.records.items()) if n != self.node]
        parts = []
        for record in known:
            cached = self._encoded.get(record.node)
            if cached is None or cached[0] != record.version:
                cached = (record.version, _record(record))
                self._encoded[record.node] = cached
            parts.append(cached[1])
        for node in [n for n in self._encoded if n not in self.records]:
            del self._encoded[node]
        return bytes([FORMAT_VERSION, KIND_RECORDS]) + _U32.pack(len(parts)) + b"".join(parts)

    def receive(self, message: Message, now_ms: int, now: float, peers: Sequence[str],
                accept: Mapping[str, bool] | None = None) -> tuple[list[str], list[Outgoing]]:
        """Merge a message; (nodes whose record changed, what to send in reply).

        ``accept`` names the members whose records may be adopted (alive or
        suspect): a dead or departed node's record, still carried by a lagging
        peer, is not brought back. None accepts every node.
        """
        changed: list[str] = []
        out: list[Outgoing] = []
        if isinstance(message, FactsRequest):
            if self.node in message.nodes and self.local.version:
                last = self._answered.get(message.asker)
                if last is None or now - last >= REPAIR_INTERVAL / 2:
                    self._answered[message.asker] = now
                    out.append(Send(message.asker, encode_records([self.local])))
            return changed, out
        if isinstance(message, FactsDelta):
            records: tuple[NodeFacts, ...] = ()
            deltas = [message]
        else:
            records, deltas = message, []
        for record in records:
            if record.node == self.node:
                if record != self.local:  # our own record echoed back is no news
                    out += self._refute(record.version, now_ms, peers)
            elif (accept is None or accept.get(record.node, False)) and self._adopt(record):
                changed.append(record.node)
        for delta in deltas:
            if delta.node == self.node:
                if delta.version > self.local.version:
                    out += self._refute(delta.version, now_ms, peers)
            elif (accept is None or accept.get(delta.node, False)) and self._apply(delta, now):
                changed.append(delta.node)
        return changed, out

    def _refute(self, version: int, now_ms: int, peers: Sequence[str]) -> list[Outgoing]:
        """A record about us at or past our version (our previous life, or a forger): write above it."""
        if version < self.local.version:
            return []
        self.clock = max(self.clock, min(version, MAX_VERSION - 1))
        self.records[self.node] = NodeFacts(self.node, self._tick(now_ms), self.local.holds, self.local.failing)
        whole = encode_records([self.local])
        return [Broadcast(whole)] if len(whole) <= DELTA_BUDGET else self._send_whole(peers)

    def _adopt(self, record: NodeFacts) -> bool:
        old = self.records.get(record.node)
        if old is not None and old.version >= record.version:
            return False
        self.records[record.node] = record
        pending = self._pending.get(record.node, {})
        for base in [b for b in pending if b < record.version]:
            del pending[base]
        self._follow(record.node)
        return True

    def _apply(self, delta: FactsDelta, now: float) -> bool:
        old = self.records.get(delta.node)
        if old is None and delta.base == 0:
            old = NodeFacts(delta.node, 0)  # the first delta of the node's life applies to nothing
        if old is not None and old.version >= delta.version:
            return False
        if old is None or old.version != delta.base:
            # A gap: keep it until its base arrives (chained chunks may come out of order).
            pending = self._pending.setdefault(delta.node, {})
            if len(pending) < MAX_PENDING:
                pending[delta.base] = delta
            self._behind_since.setdefault(delta.node, now)
            return False
        self.records[delta.node] = delta.apply(old)
        self._follow(delta.node)
        return True

    def _follow(self, node: str) -> None:
        """Apply the pending deltas that now chain on, and clear the gap once caught up."""
        pending = self._pending.get(node, {})
        while pending:
            record = self.records[node]
            delta = pending.pop(record.version, None)
            if delta is None:
                break
            self.records[node] = delta.apply(record)
        if not pending:
            self._pending.pop(node, None)
            self._behind_since.pop(node, None)

    def repair(self, announced: Mapping[str, int], now: float) -> list[Outgoing]:
        """Ask the owners of records we are behind on for them again.

        ``announced`` maps each alive member to the facts version its metadata
        says it has (0: it does not publish one). A gap seen in the deltas counts too.
        """
        out: list[Outgoing] = []
        for node, version in announced.items():
            if node == self.node:
                continue
            record = self.records.get(node)
            if version and (record is None or record.version < version):
                self._behind_since.setdefault(node, now)
            elif node not in self._pending:
                self._behind_since.pop(node, None)
        for node, since in sorted(self._behind_since.items()):
            if node not in announced or now - since < REPAIR_GRACE:
                continue
            last = self._asked.get(node)
            if last is not None and now - last < REPAIR_INTERVAL:
                continue
            self._asked[node] = now
            out.append(Send(node, encode_request(FactsRequest(self.node, (node,)))))
        return out

    def prune(self, members: Iterable[str]) -> None:
        """Forget the records of nodes gossip no longer knows (reaped after death)."""
        keep = set(members) | {self.node}
        for node in [n for n in self.records if n not in keep]:
            self.forget(node)


def _item_cost(value: IPAddress | str) -> int:
    """Bytes an item takes in a delta at worst (a single address; ranges only make it smaller)."""
    if isinstance(value, str):
        return 2 + len(value.encode())
    return 5 if value.version == 4 else 17


def address_key(address: IPAddress) -> tuple[int, int]:
    """Sort key: IPv4 before IPv6, then numerically."""
    return (address.version, int(address))
