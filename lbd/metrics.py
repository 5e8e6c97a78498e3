"""Prometheus metrics: one registry for the whole daemon, and the top-level modules' metrics.

Metrics are declared only in modules named ``metrics.py`` (tests/unit/test_metrics_declared.py
holds every module to it): a package's own (``lbd.bgp.metrics``, ``lbd.bfd.metrics``,
``lbd.cluster.metrics``, ``lbd.forward.metrics``, ``lbd.kernel.metrics``, ``lbd.l2.metrics``,
``lbd.sources.metrics``), and this one for the modules directly under ``lbd/`` (the daemon's
pass, health checks, hooks). A package's metrics module is imported only with the package's
code, so an optional piece (BGP, forwarding, route export, the cluster) shows its metrics only
once the configuration loads it. The daemon serves ``REGISTRY`` on ``[metrics] listen``.

``update`` lives here too, not in a module of its own: it is the daemon's one per-pass write
of its gauges, and keeping it beside them leaves the daemon a single ``metrics`` import.
"""

from __future__ import annotations

from collections import Counter as Tally
from itertools import chain
from operator import attrgetter
from typing import TYPE_CHECKING, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from lbd.config.schema import PoolConfig
    from lbd.model import Allocation, Plan

REGISTRY = CollectorRegistry(auto_describe=True)

# -- the daemon (lbd.daemon): pools, services, VIPs, reloads, reconcile passes --------------

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

# -- service health checks (lbd.health) -------------------------------------------------------

HEALTH_UP = Gauge(
    "lbd_health_check_up",
    "1 while the service's health check passes on this node, 0 while it fails or is not yet known",
    ["service"],
    registry=REGISTRY,
)
HEALTH_FAILURES = Counter(
    "lbd_health_check_failures",
    "Health check executions that failed",
    ["service"],
    registry=REGISTRY,
)
HEALTH_DURATION = Histogram(
    "lbd_health_check_duration_seconds",
    "Time one health check execution took",
    ["type"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)

# -- notify hooks (lbd.hooks) -----------------------------------------------------------------

HOOK_RUNS = Counter("lbd_hook_runs", "Hook runs by result (ok, failed, timeout, error)", ["hook", "result"],
                    registry=REGISTRY)
HOOK_DROPPED = Counter("lbd_hook_dropped", "Hook runs dropped because the queue was full", ["hook"],
                       registry=REGISTRY)
HOOK_QUEUED = Gauge("lbd_hook_queued", "Hook runs waiting for a slot", registry=REGISTRY)


def update(*, pools: Sequence[PoolConfig], allocations: Mapping[str, Allocation], pending: Mapping[str, str],
           plan: Plan, drained: bool) -> None:
    """Set the gauges from one reconcile pass's outcome (the values, not the daemon)."""
    # Imported here: every metrics module imports this one, and it must stay a leaf that
    # pulls in neither the allocator nor the model.
    from lbd.ipam import pool_usage
    from lbd.model import L2Mode

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
    # with the event loop blocked at 20,000 services (issue 9); and at C speed (filter,
    # attrgetter, chain, set operations; no Python bytecode per VIP), a few milliseconds at
    # 100,000, after the pass's announcements.
    here = set(chain.from_iterable(map(attrgetter("services"), filter(attrgetter("announced_here"), plan.decisions))))
    states["announced"] = len(here & allocations.keys())
    for state, count in states.items():
        SERVICES.labels(state).set(count)
    counted = Tally(map(attrgetter("mode"), plan.l2))  # collections.Counter: counts at C speed
    for mode in L2Mode:  # every mode's series exists, at 0 when unused
        VIPS_ANNOUNCED.labels(mode.value).set(counted.get(mode, 0))
    VIPS_ANNOUNCED.labels("bgp").set(len(plan.bgp))
    VIPS_ANNOUNCED.labels("export").set(len(plan.exports))
    DRAINED.set(1 if drained else 0)
