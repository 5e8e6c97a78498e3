"""Prometheus metrics of the route exporter (lbd.kernel.routes), on lbd.metrics.REGISTRY."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from lbd.metrics import REGISTRY

ROUTES_INSTALLED = Gauge(
    "lbd_route_export_routes",
    "VIP routes lbd holds in a kernel export table",
    ["table"],
    registry=REGISTRY,
)
ROUTE_CHANGES = Counter(
    "lbd_route_export_changes_total",
    "Kernel route changes made by the route exporter",
    ["op"],
    registry=REGISTRY,
)
ROUTE_ERRORS = Counter(
    "lbd_route_export_errors_total",
    "Kernel route changes that failed (conflicts with foreign routes included)",
    ["reason"],
    registry=REGISTRY,
)
