"""The forwarding adapter: runs ``lbd.forward.ruleset``'s transactions through libnftables.

``apply(desired)`` is level-triggered: unchanged -> nothing (but lbd's tables
are checked to still exist, so an ``nft flush ruleset`` by someone else is
repaired on the next pass); changed -> one transaction with the difference;
a failed transaction -> the next pass rebuilds lbd's tables from scratch.
``close()`` deletes lbd's tables and nothing else.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import structlog

from lbd.forward import nlobj
from lbd.forward.metrics import APPLY_ERRORS, APPLY_SECONDS
from lbd.forward.nft import Nft, NftError
from lbd.forward.ruleset import DSR, NAT, TABLE, BackendView, Desired, Ruleset
from lbd.forward.transaction import plan_transaction, prepare_text

log = structlog.get_logger(__name__)


class Forwarder:
    def __init__(self, nft: Nft | None = None) -> None:
        self._nft = nft
        self.applied: Ruleset | None = None
        self.desired: Desired | None = None
        self.last_error: str | None = None
        self.last_apply: dict[str, Any] = {}
        self._counters: dict[tuple[str, str], tuple[int, int]] = {}  # (family, backend id) -> (packets, bytes)
        # Counts of map entries that moved to another backend (an entry's counter restarts when it is
        # rewritten): kept per backend, so each backend's total only grows.
        self._retired: dict[tuple[str, str], list[int]] = {}
        self._read_at: float | None = None  # monotonic time of the last counter read

    @property
    def nft(self) -> Nft:
        if self._nft is None:
            self._nft = Nft()
        return self._nft

    async def apply(self, desired: Desired) -> None:
        self.desired = desired
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._apply_sync, desired.ruleset)

    def _apply_sync(self, want: Ruleset) -> None:
        if self.applied is not None and self.applied == want and self._tables_ok(want):
            return
        if self.applied is not None and not self._tables_ok(self.applied):
            log.warning("forward_tables_missing", detail="lbd's nftables tables were removed; rebuilding")
            self.applied = None
        applied = self.applied
        if applied is not None and self._read_at is not None:
            self._retire(applied, want)  # only once someone looks at counters: it costs a map dump
        started = time.perf_counter()
        try:
            prepare = prepare_text(applied, want)
            if prepare:
                self.nft.text(prepare)
            ops = plan_transaction(applied, want)
            if ops:
                self.nft.run(ops)
        except NftError as exc:
            APPLY_ERRORS.inc()
            self.applied = None  # the next pass rebuilds from scratch
            self.last_error = str(exc)
            log.error("forward_apply_failed", error=str(exc), full=applied is None)
            raise
        took = time.perf_counter() - started
        APPLY_SECONDS.observe(took)
        self.applied = want
        self.last_error = None
        self.last_apply = {"at": time.time(), "seconds": took, "commands": len(ops), "full": applied is None}
        log.info("forward_applied", seconds=round(took, 4), commands=len(ops), full=applied is None,
                 ports=len(want.ports), backends=len(want.backends))

    def _tables_ok(self, ruleset: Ruleset) -> bool:
        wanted = ruleset.tables()
        if not wanted:
            return True
        try:
            have = nlobj.tables()
        except (OSError, ValueError):
            return False
        return all((family, TABLE) in have for family in wanted)

    def _entries(self, family: str, name: str) -> dict[int, tuple[int, int]]:
        try:
            return nlobj.element_counters(family, TABLE, name)
        except (OSError, ValueError) as exc:
            log.warning("forward_counters_unreadable", map=name, error=str(exc))
            return {}

    def _retire(self, applied: Ruleset, want: Ruleset) -> None:
        """Before a change: bank the counts of entries about to be rewritten or removed."""
        new = {p.name: dict(p.maps()) for p in want.ports}
        for p in applied.ports:
            after_maps = new.get(p.name, {})
            for m, ids in p.maps():
                after = after_maps.get(m)
                moved = [b for b in range(len(ids))
                         if ids[b] and (after is None or b >= len(after) or after[b] != ids[b])]
                if not moved:
                    continue
                values = self._entries(p.table_family, m)
                for b in moved:
                    packets, octets = values.get(b, (0, 0))
                    total = self._retired.setdefault((p.table_family, ids[b]), [0, 0])
                    total[0] += packets
                    total[1] += octets

    def read_counters(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(table family, backend id) -> (packets, bytes), read now from the kernel: the sum
        of the counters of the map entries pointing at the backend, plus what moved away."""
        if self.applied is None:
            return self._counters
        totals = {key: list(value) for key, value in self._retired.items()}
        for p in self.applied.ports:
            for m, ids in p.maps():
                for bucket, (packets, octets) in self._entries(p.table_family, m).items():
                    if bucket < len(ids) and ids[bucket]:
                        total = totals.setdefault((p.table_family, ids[bucket]), [0, 0])
                        total[0] += packets
                        total[1] += octets
        self._counters = {key: (value[0], value[1]) for key, value in totals.items()}
        self._read_at = time.monotonic()
        return self._counters

    async def refresh_counters(self, max_age: float = 0.0) -> None:
        """Read the counters unless the last read is younger than ``max_age`` seconds
        (a 8191-entry map costs about 0.1 s of CPU to dump and parse)."""
        if self._read_at is not None and time.monotonic() - self._read_at < max_age:
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.read_counters)

    def views(self) -> list[BackendView]:
        return list(self.desired.views) if self.desired is not None else []

    def last_counts(self, view: BackendView) -> tuple[int, int]:
        """(packets, bytes) sent to ``view``'s backend, as last read (0, 0 before a read or
        for a backend with no table entry): for status and the Prometheus collector."""
        return self._counters.get((view.table_family, view.counter or ""), (0, 0))

    def status(self) -> dict[str, Any]:
        services: dict[str, list[dict[str, Any]]] = {}
        for v in self.views():
            packets, octets = self.last_counts(v)
            services.setdefault(v.service, []).append({
                "port": v.port, "backend": v.endpoint, "weight": v.weight,
                "health": {True: "up", False: "down", None: "unchecked"}[v.healthy],
                "share": round(v.share, 4), "packets": packets, "bytes": octets, "note": v.note,
            })
        no_backend = self.desired.no_backend if self.desired is not None else {}
        return {
            "tables": sorted(f"{family} {TABLE}" for family in (self.applied.tables() if self.applied else ())),
            "ip_forward": ip_forward_enabled(),
            "last_apply": self.last_apply,
            "last_error": self.last_error,
            "services": services,
            "no_backend": dict(no_backend),
        }

    async def close(self) -> None:
        """Remove lbd's tables (only those: ``table inet lbd`` and ``table netdev lbd``)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._close_sync)

    def _close_sync(self) -> None:
        try:
            # "add" first makes "delete" succeed whether or not the table exists.
            self.nft.text("\n".join(f"add table {f} {TABLE}\ndelete table {f} {TABLE}" for f in (NAT, DSR)))
            log.info("forward_tables_removed")
        except NftError as exc:
            log.error("forward_remove_failed", error=str(exc))
        finally:
            self.applied = None
            if self._nft is not None:
                self._nft.close()
                self._nft = None


def ip_forward_enabled(family: int = 4) -> bool | None:
    path = Path("/proc/sys/net/ipv4/ip_forward" if family == 4 else "/proc/sys/net/ipv6/conf/all/forwarding")
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return None

