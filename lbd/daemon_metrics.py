"""The daemon's own metrics (pools, VIPs, reloads, reconcile errors)."""

from __future__ import annotations

import asyncio
import time
from typing import Mapping, Sequence

import structlog
from prometheus_client import Counter, Gauge, Histogram

from lbd.metrics import REGISTRY
from lbd.config.schema import PoolConfig
from lbd.model import Allocation, L2Mode, Plan

log = structlog.get_logger(__name__)

POOL_SIZE = Gauge("lbd_pool_addresses", "Usable addresses in a pool", ["pool", "family"], registry=REGISTRY)
POOL_USED = Gauge("lbd_pool_addresses_in_use", "Allocated addresses in a pool", ["pool", "family"], registry=REGISTRY)
SERVICES = Gauge("lbd_services", "Services by state", ["state"], registry=REGISTRY)
VIPS_ANNOUNCED = Gauge("lbd_vips_announced", "VIPs this node announces, by mode", ["mode"], registry=REGISTRY)
RECONCILE_ERRORS = Counter("lbd_reconcile_errors", "Reconcile passes that failed", registry=REGISTRY)
RECONCILES = Counter("lbd_reconciles", "Reconcile passes", registry=REGISTRY)
RELOADS = Counter("lbd_config_reloads", "Config reloads by result", ["result"], registry=REGISTRY)
ALLOCATION_CHANGES = Counter("lbd_allocation_changes", "Allocations released or moved (pool edits, conflicts)",
                             registry=REGISTRY)
OWNER_CHANGES = Counter("lbd_vip_owner_changes", "Layer-2 VIP owner changes: failover (old owner gone) or move",
                        ["kind"], registry=REGISTRY)
DRAINED = Gauge("lbd_node_drained", "1 when this node is drained", registry=REGISTRY)
LOOP_LAG = Histogram("lbd_event_loop_lag_seconds",
                     "How late the event loop woke a probe task: how long the loop was blocked (gossip acks, "
                     "BFD and signals wait that long)", registry=REGISTRY,
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))


class LoopLagProbe:
    """Measures event-loop stalls: a task asks to wake every ``interval`` seconds and records
    how late it wakes (the longest stall since :meth:`reset`, and the histogram above).

    A pass that holds the loop longer than a gossip probe timeout gets the node declared
    dead by its peers (issue 9); this is the figure that shows it."""

    def __init__(self, interval: float = 0.005, clock=time.perf_counter,  # type: ignore[no-untyped-def]
                 warn_after: float | None = None, warn_every: float = 10.0) -> None:
        self.interval = interval
        self._clock = clock
        self.max_lag = 0.0
        self.samples = 0
        self.lags: list[float] = []  # kept only when ``keep`` (benchmarks)
        self.keep = False
        # A stall of ``warn_after`` seconds or more is logged (``event_loop_stalled``), at most
        # one line per ``warn_every`` seconds with the number of stalls it stands for.
        self.warn_after = warn_after
        self.warn_every = warn_every
        self._last_warning = -warn_every
        self._unreported = 0
        self._unreported_max = 0.0

    def reset(self) -> None:
        self.max_lag = 0.0
        self.samples = 0
        self.lags = []

    async def run(self) -> None:
        while True:
            due = self._clock() + self.interval
            await asyncio.sleep(self.interval)
            lag = max(0.0, self._clock() - due)
            self.samples += 1
            self.max_lag = max(self.max_lag, lag)
            if self.keep:
                self.lags.append(lag)
            LOOP_LAG.observe(lag)
            if self.warn_after is not None and lag >= self.warn_after:
                self._stalled(lag)

    def _stalled(self, lag: float) -> None:
        self._unreported += 1
        self._unreported_max = max(self._unreported_max, lag)
        now = self._clock()
        if now - self._last_warning >= self.warn_every:
            log.warning("event_loop_stalled", seconds=round(self._unreported_max, 3), stalls=self._unreported,
                        detail="gossip probes, BFD and signals waited that long")
            self._last_warning = now
            self._unreported = 0
            self._unreported_max = 0.0


def update(*, pools: Sequence[PoolConfig], allocations: Mapping[str, Allocation], pending: Mapping[str, str],
           plan: Plan, drained: bool) -> None:
    """Set the gauges from one reconcile pass's outcome (the values, not the daemon)."""
    from lbd.ipam import pool_usage

    RECONCILES.inc()
    POOL_SIZE.clear()
    POOL_USED.clear()
    for usage in pool_usage(pools, allocations).values():
        for family, counts in (("ipv4", usage.ipv4), ("ipv6", usage.ipv6)):
            if counts.total:
                POOL_SIZE.labels(usage.pool, family).set(counts.total)
                POOL_USED.labels(usage.pool, family).set(counts.used)
    states = {"announced": 0, "pending": len(pending), "allocated": len(allocations)}
    # One pass over the decisions, not one per service: that was O(services x VIPs), minutes
    # with the event loop blocked at 20,000 services (issue 9).
    here = {name for d in plan.decisions if d.announced_here for name in d.services}
    states["announced"] = sum(1 for name in allocations if name in here)
    for state, count in states.items():
        SERVICES.labels(state).set(count)
    modes = {mode.value: 0 for mode in L2Mode}  # every mode's series exists, at 0 when unused
    for intent in plan.l2:
        modes[intent.mode.value] += 1
    for mode, count in modes.items():
        VIPS_ANNOUNCED.labels(mode).set(count)
    VIPS_ANNOUNCED.labels("bgp").set(len(plan.bgp))
    VIPS_ANNOUNCED.labels("export").set(len(plan.exports))
    DRAINED.set(1 if drained else 0)
