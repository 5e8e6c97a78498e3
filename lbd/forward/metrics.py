"""Prometheus metrics of forwarding: the nftables applier, backend checks, and the per-backend
packet and byte counters (a collector that reads the forwarder's last counter read at scrape time).

All on lbd.metrics.REGISTRY; imported only with the forwarding code, so a node that forwards
nothing shows none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from lbd.metrics import REGISTRY

if TYPE_CHECKING:
    from lbd.forward.forwarder import Forwarder

# -- the nftables applier (lbd.forward.forwarder) ---------------------------------------------

APPLY_SECONDS = Histogram(
    "lbd_forward_apply_seconds", "Time one forwarding transaction took (libnftables, kernel commit included)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=REGISTRY,
)
APPLY_ERRORS = Counter("lbd_forward_apply_errors", "Forwarding transactions the kernel refused", registry=REGISTRY)

# -- backend checks (lbd.forward.health) ------------------------------------------------------

BACKEND_UP = Gauge(
    "lbd_backend_up", "1 while the backend's check passes on this node, 0 while it fails or is not yet known",
    ["service", "backend"], registry=REGISTRY,
)
BACKEND_TRANSITIONS = Counter(
    "lbd_backend_transitions", "Backend health changes seen on this node, by the state entered",
    ["service", "backend", "state"], registry=REGISTRY,
)

# -- per-backend counters, read from nftables (the daemon sets COLLECTOR.forwarder) -----------


class CounterCollector:
    """Prometheus view of the nftables counters, as last read (every reconcile pass)."""

    def __init__(self) -> None:
        self.forwarder: Forwarder | None = None

    def collect(self) -> Iterable[CounterMetricFamily]:
        packets = CounterMetricFamily("lbd_backend_packets", "Packets lbd sent to the backend (nat: the first "
                                      "packet of each new flow; dsr: every packet from the client)",
                                      labels=["service", "port", "backend"])
        octets = CounterMetricFamily("lbd_backend_bytes", "Bytes counted with lbd_backend_packets",
                                     labels=["service", "port", "backend"])
        forwarder = self.forwarder
        if forwarder is not None:
            seen: set[tuple[str, str, str]] = set()
            for v in forwarder.views():
                key = (v.service, v.port, v.endpoint)
                if v.counter is None or key in seen:
                    continue
                seen.add(key)
                p, b = forwarder.last_counts(v)
                packets.add_metric(list(key), p)
                octets.add_metric(list(key), b)
        yield packets
        yield octets


COLLECTOR = CounterCollector()
REGISTRY.register(COLLECTOR)  # type: ignore[arg-type]
