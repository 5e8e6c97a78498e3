"""Prometheus metrics of the BGP announcer (label ``peer`` = the peer's name), on lbd.metrics.REGISTRY."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from lbd.metrics import REGISTRY

SESSION_UP = Gauge("lbd_bgp_session_up", "1 while the BGP session is Established", ["peer"], registry=REGISTRY)
UPDATES_SENT = Counter("lbd_bgp_updates_sent_total", "BGP UPDATE messages sent", ["peer"], registry=REGISTRY)
UPDATES_RECEIVED = Counter("lbd_bgp_updates_received_total", "BGP UPDATE messages received", ["peer"],
                           registry=REGISTRY)
NOTIFICATIONS_SENT = Counter("lbd_bgp_notifications_sent_total", "BGP NOTIFICATION messages sent", ["peer"],
                             registry=REGISTRY)
NOTIFICATIONS_RECEIVED = Counter("lbd_bgp_notifications_received_total", "BGP NOTIFICATION messages received",
                                 ["peer"], registry=REGISTRY)
ANNOUNCED = Gauge("lbd_bgp_announced_prefixes", "Prefixes currently announced to the peer", ["peer"],
                  registry=REGISTRY)
