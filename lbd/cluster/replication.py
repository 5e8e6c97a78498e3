"""One allocation table for the whole cluster (pure: no I/O, the caller passes time).

Every node keeps a replica of the table and persists it. Only the allocator
(the alive member with the lowest name, so the choice follows from membership)
writes new entries; the others adopt what it writes. Entries travel as deltas
in gossip broadcasts and as the whole table in push-pull anti-entropy.

Per service the table is a last-writer-wins register ordered by a hybrid
logical clock ``(updated, origin)``, so every replica that has seen the same
entries holds the same table, whatever the order they arrived in.

After a partition heals, two services may hold one address (each side had an
allocator). ``live()`` resolves that deterministically: the OLDER allocation
(``created``, then origin, then service name) keeps the address; the younger
one is dropped from the live view, so the allocator re-allocates it. Only one
side's service moves, and each such resolution is reported so the daemon can
log and count it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

from lbd.ipam import sharing_conflict
from lbd.model import Allocation, Family, IPAddress, PortSpec, ServiceSpec

TOMBSTONE_TTL_MS = 24 * 3600 * 1000  # forget deletions after a day
MAX_TABLE_ENTRIES = 1_000_000
# The largest stamp the decoder accepts; the clock never goes past it.
MAX_STAMP = 2**63 - 1
# How far ahead of our physical clock a peer's stamp may be and still be
# adopted (ms). NTP-synchronised nodes differ by milliseconds; a stamp further
# in the future is a broken clock or an attack (one such entry would win every
# last-writer-wins comparison and drag our clock along), so it is refused.
MAX_CLOCK_SKEW_MS = 60_000


class TableError(ValueError):
    """A table or delta from the wire or the disk is malformed."""


@dataclass(frozen=True)
class TableEntry:
    service: str
    pool: str
    addresses: tuple[IPAddress, ...]  # empty: released (a tombstone)
    created: int  # HLC ms when these addresses were first given to the service
    updated: int  # HLC ms of this version of the entry
    origin: str  # the node that wrote this version
    share_key: str | None = None  # what the sharing rule needs, so replicas can judge conflicts
    backend_key: str = ""
    ports: tuple[PortSpec, ...] = ()

    @property
    def version(self) -> tuple[int, str]:
        return (self.updated, self.origin)

    @property
    def live(self) -> bool:
        return bool(self.addresses)

    def allocation(self) -> Allocation:
        return Allocation(service=self.service, pool=self.pool, addresses=self.addresses)

    def spec(self) -> ServiceSpec:
        families = tuple(dict.fromkeys(Family.of(a) for a in self.addresses)) or (Family.IPV4,)
        return ServiceSpec(name=self.service, share_key=self.share_key, backend_key=self.backend_key,
                           ports=self.ports, ip_families=families)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "s": self.service, "p": self.pool, "a": [str(a) for a in self.addresses],
            "c": self.created, "u": self.updated, "o": self.origin,
        }
        if self.share_key is not None:
            out["k"] = self.share_key
        if self.backend_key:
            out["b"] = self.backend_key
        if self.ports:
            out["t"] = [str(p) for p in self.ports]
        return out

    @staticmethod
    def from_json(raw: object) -> "TableEntry":
        if not isinstance(raw, dict):
            raise TableError("entry is not an object")
        # The same entry arrives in every push-pull: one parsed and checked before is taken
        # as it was (issue 9: 10,000 entries re-parsed held the event loop for tenths of a
        # second). Only entries that passed every check below are remembered.
        try:
            # With each value's type: true == 1 == 1.0 as keys, and only 1 is a valid stamp.
            key = tuple((k, type(v), tuple(v) if type(v) is list else v) for k, v in raw.items())
            known = _ENTRIES.get(key)
        except TypeError:  # an unhashable value (a nested object): not a valid entry anyway
            key, known = None, None
        if known is not None:
            return known
        entry = TableEntry._from_json(raw)
        if key is not None:
            if len(_ENTRIES) >= _ENTRIES_MAX:
                _ENTRIES.clear()
            _ENTRIES[key] = entry
        return entry

    @staticmethod
    def _from_json(raw: dict[str, Any]) -> "TableEntry":
        try:
            service, pool, origin = raw["s"], raw["p"], raw["o"]
            created, updated = raw["c"], raw["u"]
            addresses = raw["a"]
        except KeyError as exc:
            raise TableError(f"entry lacks {exc.args[0]!r}") from None
        for name, value in (("service", service), ("pool", pool), ("origin", origin)):
            if not isinstance(value, str) or len(value) > 1024:
                raise TableError(f"entry {name} is not a string")
        for name, value in (("created", created), ("updated", updated)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
                raise TableError(f"entry {name} is not a timestamp")
        if not isinstance(addresses, list) or len(addresses) > 2:
            raise TableError("entry addresses must be a list of at most two addresses")
        try:
            parsed = tuple(_address(a) for a in addresses if isinstance(a, str))
        except ValueError as exc:
            raise TableError(f"entry address: {exc}") from None
        if len(parsed) != len(addresses):
            raise TableError("entry address is not a string")
        share_key = raw.get("k")
        backend_key = raw.get("b", "")
        if share_key is not None and not isinstance(share_key, str) or not isinstance(backend_key, str):
            raise TableError("entry share key is not a string")
        ports_raw = raw.get("t", [])
        if not isinstance(ports_raw, list) or len(ports_raw) > 1024:
            raise TableError("entry ports must be a list")
        ports = []
        for text in ports_raw:
            if not isinstance(text, str) or "/" not in text:
                raise TableError("entry port is not PROTO/PORT")
            proto, _, number = text.partition("/")
            if not number.isdigit() or not 0 < int(number) < 65536 or proto not in ("tcp", "udp", "sctp"):
                raise TableError(f"entry port {text!r} is not PROTO/PORT")
            ports.append(PortSpec(proto, int(number)))
        return TableEntry(service, pool, parsed, created, updated, origin, share_key, backend_key, tuple(ports))


@dataclass(frozen=True)
class Conflict:
    """Two live entries claimed one address; ``loser`` is dropped from the live view."""

    address: IPAddress
    winner: str
    loser: str

    def __str__(self) -> str:
        return f"{self.address}: kept by {self.winner} (older allocation), {self.loser} will be re-allocated"


# Entries parsed and checked, by their JSON object's items (see TableEntry.from_json).
_ENTRIES: dict[tuple[tuple[str, type, Any], ...], "TableEntry"] = {}
_ENTRIES_MAX = 1 << 18

# Parsed addresses by their text: every push-pull carries the whole table, and parsing 10,000
# addresses with ipaddress held the receiving node's event loop for tenths of a second
# (issue 9). Bounded: emptied when full (a hostile table of random addresses costs a re-parse).
_ADDRESSES: dict[str, IPAddress] = {}
_ADDRESSES_MAX = 1 << 18


def _address(text: str) -> IPAddress:
    address = _ADDRESSES.get(text)
    if address is None:
        address = ipaddress.ip_address(text)  # ValueError: not an address
        if len(_ADDRESSES) >= _ADDRESSES_MAX:
            _ADDRESSES.clear()
        _ADDRESSES[text] = address
    return address


def _age_key(entry: TableEntry) -> tuple[int, str, str]:
    return (entry.created, entry.origin, entry.service)


class _Entries(dict[str, TableEntry]):
    """The table's entries, counting their changes: what ``live`` and ``encode`` derive from
    them is kept until the next change (issue 9: at 10,000 services, re-deriving both on every
    pass and every push-pull held a node's event loop for tenths of a second, and a node
    reconnecting to a dead peer push-pulls every second)."""

    changes = 0

    def __setitem__(self, key: str, value: TableEntry) -> None:
        self.changes += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.changes += 1
        super().__delitem__(key)

    def pop(self, *args: object) -> object:  # type: ignore[override]
        self.changes += 1
        return super().pop(*args)  # type: ignore[arg-type]

    def popitem(self) -> tuple[str, TableEntry]:
        self.changes += 1
        return super().popitem()

    def clear(self) -> None:
        self.changes += 1
        super().clear()

    def update(self, *args: object, **kwargs: TableEntry) -> None:  # type: ignore[override]
        self.changes += 1
        super().update(*args, **kwargs)  # type: ignore[arg-type]

    def setdefault(self, key: str, default: TableEntry) -> TableEntry:  # type: ignore[override]
        self.changes += 1
        return super().setdefault(key, default)


@dataclass
class AllocationTable:
    node: str
    entries: dict[str, TableEntry] = field(default_factory=_Entries)
    clock: int = 0  # the hybrid logical clock's last value (ms)

    def __post_init__(self) -> None:
        if not isinstance(self.entries, _Entries):
            self.entries = _Entries(self.entries)
        self._live: tuple[object, dict[str, Allocation], list[Conflict]] | None = None
        self._encoded: tuple[object, bytes] | None = None
        self._digest: tuple[object, str] | None = None

    def _version(self) -> object:
        """Changes whenever ``entries`` does (also when it is replaced by another dict)."""
        entries = self.entries
        if not isinstance(entries, _Entries):
            entries = self.entries = _Entries(entries)
        return (id(entries), entries.changes)

    # -- clock --------------------------------------------------------------

    rejected: int = 0  # remote entries refused for a stamp too far in the future

    def tick(self, now_ms: int) -> int:
        """A timestamp later than every one this replica has written or seen.

        Capped at MAX_STAMP so the table always encodes to something the
        decoder accepts (with the skew bound the cap is never reached).
        """
        self.clock = min(max(self.clock + 1, now_ms), MAX_STAMP)
        return self.clock

    def _observe(self, stamp: int) -> None:
        self.clock = min(max(self.clock, stamp), MAX_STAMP)

    # -- reading ------------------------------------------------------------

    def live(self) -> tuple[dict[str, Allocation], list[Conflict]]:
        """The conflict-free allocations, and the conflicts resolved to get them (worked out
        again only after the entries changed; the caller gets its own dict and list)."""
        version = self._version()
        if self._live is None or self._live[0] != version:
            self._live = (version, *self._live_now())
        return dict(self._live[1]), list(self._live[2])

    def _live_now(self) -> tuple[dict[str, Allocation], list[Conflict]]:
        accepted: dict[str, TableEntry] = {}
        holders: dict[IPAddress, list[TableEntry]] = {}
        conflicts: list[Conflict] = []
        for entry in sorted((e for e in self.entries.values() if e.live), key=_age_key):
            clash = None
            for address in entry.addresses:
                for other in holders.get(address, ()):
                    if sharing_conflict(entry.spec(), other.spec()) is not None:
                        clash = Conflict(address, other.service, entry.service)
                        break
                if clash:
                    break
            if clash is not None:
                conflicts.append(clash)
                continue
            accepted[entry.service] = entry
            for address in entry.addresses:
                holders.setdefault(address, []).append(entry)
        return {name: e.allocation() for name, e in sorted(accepted.items())}, conflicts

    # -- writing (the allocator) -----------------------------------------------

    def record(self, allocations: Mapping[str, Allocation], services: Mapping[str, ServiceSpec],
               now_ms: int) -> list[TableEntry]:
        """Make the table say ``allocations`` (the allocator's result); return the new entries."""
        changed: list[TableEntry] = []
        current, _ = self.live()
        for name, allocation in sorted(allocations.items()):
            spec = services.get(name)
            old = self.entries.get(name)
            same_addresses = old is not None and old.live and old.addresses == allocation.addresses \
                and name in current
            share = (spec.share_key, spec.backend_key, tuple(spec.ports)) if spec else (None, "", ())
            if same_addresses and old is not None and old.pool == allocation.pool \
                    and (old.share_key, old.backend_key, old.ports) == share:
                continue
            stamp = self.tick(now_ms)
            created = old.created if same_addresses and old is not None else stamp
            entry = TableEntry(name, allocation.pool, allocation.addresses, created, stamp, self.node, *share)
            self.entries[name] = entry
            changed.append(entry)
        for name, old in sorted(self.entries.items()):
            if old.live and name not in allocations:
                stamp = self.tick(now_ms)
                entry = TableEntry(name, old.pool, (), old.created, stamp, self.node)
                self.entries[name] = entry
                changed.append(entry)
        return changed

    # -- merging (every replica) -------------------------------------------

    def merge(self, entries: Iterable[TableEntry], now_ms: int | None = None) -> list[TableEntry]:
        """Adopt every entry newer than ours; return the ones adopted.

        With ``now_ms`` (entries from the network) an entry stamped more than
        MAX_CLOCK_SKEW_MS ahead of it is refused and counted in ``rejected``:
        neither adopted nor observed by the clock. The other entries of the
        same table are still merged.
        """
        adopted = []
        limit = None if now_ms is None else now_ms + MAX_CLOCK_SKEW_MS
        for entry in entries:
            if limit is not None and (entry.updated > limit or entry.created > limit):
                self.rejected += 1
                continue
            self._observe(entry.updated)
            old = self.entries.get(entry.service)
            if old is None or entry.version > old.version:
                if len(self.entries) >= MAX_TABLE_ENTRIES and old is None:
                    continue
                self.entries[entry.service] = entry
                adopted.append(entry)
        return adopted

    def collect_garbage(self, now_ms: int) -> int:
        """Forget tombstones older than a day."""
        old = [n for n, e in self.entries.items() if not e.live and now_ms - e.updated > TOMBSTONE_TTL_MS]
        for name in old:
            del self.entries[name]
        return len(old)

    # -- wire and disk ------------------------------------------------------

    def encode(self, entries: Sequence[TableEntry] | None = None, extra: Mapping[str, str] | None = None) -> bytes:
        """The table (or ``entries`` of it) as JSON; ``extra`` adds top-level string fields.

        Readers ignore fields they do not know, so ``extra`` carries what newer
        nodes add to push-pull (the node facts, "nf") without hiding the table
        from older ones.
        """
        if entries is None:
            # The whole table: its entries' JSON is kept until they change.
            version = self._version()
            if self._encoded is None or self._encoded[0] != version:
                self._encoded = (version, json.dumps([e.to_json() for e in self.entries.values()],
                                                     separators=(",", ":")).encode())
            body = {"v": 1, "clock": self.clock, "e": None, **(extra or {})}
            head, _, tail = json.dumps(body, separators=(",", ":")).encode().partition(b'"e":null')
            return head + b'"e":' + self._encoded[1] + tail
        body_: dict[str, object] = {"v": 1, "clock": self.clock, "e": [e.to_json() for e in entries]}
        body_.update(extra or {})
        return json.dumps(body_, separators=(",", ":")).encode()

    def digest(self) -> str:
        """A digest of every entry, whatever their order (replicas insert in different orders):
        equal on two replicas that hold the same entries. Push-pull sends it instead of the
        whole table (``lbd.cluster.coordination``); worked out again only after a change."""
        version = self._version()
        if self._digest is None or self._digest[0] != version:
            lines = sorted(json.dumps(e.to_json(), separators=(",", ":")) for e in self.entries.values())
            self._digest = (version, hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32])
        return self._digest[1]

    @staticmethod
    def decode(data: bytes) -> tuple[int, list[TableEntry]]:
        """(clock, entries) from ``encode``'s bytes; TableError on anything malformed."""
        clock, entries, _ = AllocationTable.decode_with_extra(data)
        return clock, entries

    @staticmethod
    def decode_with_extra(data: bytes) -> tuple[int, list[TableEntry], dict[str, str]]:
        """(clock, entries, the extra string fields); TableError on anything malformed."""
        if len(data) > 64 * 1024 * 1024:
            raise TableError("table larger than 64 MiB")
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise TableError(f"table is not JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("v") != 1:
            raise TableError("table has no known version")
        clock, entries = raw.get("clock", 0), raw.get("e")
        if not isinstance(clock, int) or isinstance(clock, bool) or not 0 <= clock < 2**63:
            raise TableError("table clock is not a timestamp")
        if not isinstance(entries, list) or len(entries) > MAX_TABLE_ENTRIES:
            raise TableError("table entries must be a list")
        extra = {k: v for k, v in raw.items() if k not in ("v", "clock", "e") and isinstance(v, str)}
        return clock, [TableEntry.from_json(e) for e in entries], extra

    def to_state(self) -> dict[str, object]:
        return json.loads(self.encode())

    @classmethod
    def from_state(cls, node: str, raw: object, legacy: Mapping[str, Allocation] | None = None,
                   now_ms: int = 0) -> "AllocationTable":
        """The replica persisted in state.extra; ``legacy`` seeds it from plain allocations."""
        table = cls(node=node)
        if raw is not None:
            clock, entries = cls.decode(json.dumps(raw).encode())
            if now_ms > 0:
                # A table poisoned before the skew bound existed (or a clock that
                # was set back): bring future stamps to the present, keeping every
                # entry, so the allocator's next write wins again.
                limit = now_ms + MAX_CLOCK_SKEW_MS
                entries = [e if e.updated <= limit and e.created <= limit else
                           replace(e, created=min(e.created, now_ms), updated=now_ms) for e in entries]
                clock = min(clock, limit)
            table.clock = clock
            table.merge(entries)
        elif legacy:
            for name, allocation in legacy.items():
                stamp = table.tick(now_ms)
                table.entries[name] = TableEntry(name, allocation.pool, allocation.addresses, stamp, stamp, node)
        return table
