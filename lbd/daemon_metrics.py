"""The daemon's own metrics (pools, VIPs, reloads, reconcile errors)."""

from __future__ import annotations

from typing import Mapping, Sequence

from prometheus_client import Counter, Gauge

from lbd.metrics import REGISTRY
from lbd.config.schema import PoolConfig
from lbd.model import Allocation, L2Mode, Plan

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
