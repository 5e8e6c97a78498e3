"""Prometheus metrics of the service sources (label ``source`` = the source's name), on lbd.metrics.REGISTRY."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from lbd.metrics import REGISTRY

SOURCE_SERVICES = Gauge("lbd_source_services", "Services in the source's current snapshot",
                        ["source"], registry=REGISTRY)
SOURCE_UP = Gauge("lbd_source_up", "1 when the source is healthy, 0 when degraded or starting",
                  ["source"], registry=REGISTRY)
SOURCE_ERRORS = Counter("lbd_source_errors", "Source failures: crashes, rejected snapshots, reported errors",
                        ["source"], registry=REGISTRY)
