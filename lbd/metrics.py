"""Prometheus metrics: one registry for the whole daemon.

Each piece declares its own metrics against ``REGISTRY`` in its own module
(``lbd.bgp.metrics``, ``lbd.cluster.metrics`` ...); the daemon serves the
registry on ``[metrics] listen``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

REGISTRY = CollectorRegistry(auto_describe=True)
