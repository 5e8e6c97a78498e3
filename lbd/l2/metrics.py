"""Prometheus metrics of the layer-2 announcer (registered on lbd.metrics.REGISTRY)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from lbd.metrics import REGISTRY

GRATUITOUS_SENT = Counter(
    "lbd_l2_gratuitous_sent",
    "Gratuitous ARP / unsolicited NA packets sent",
    ["vip", "interface"],
    registry=REGISTRY,
)
REQUESTS_RECEIVED = Counter(
    "lbd_l2_requests_received",
    "ARP requests and Neighbor Solicitations seen by the userspace responder",
    ["interface"],
    registry=REGISTRY,
)
RESPONSES_SENT = Counter(
    "lbd_l2_responses_sent",
    "ARP replies and Neighbor Advertisements sent by the userspace responder",
    ["interface"],
    registry=REGISTRY,
)
ANNOUNCED_VIPS = Gauge(
    "lbd_l2_announced_vips",
    "VIPs this node currently announces at layer 2",
    registry=REGISTRY,
)
ERRORS = Counter(
    "lbd_l2_errors",
    "Errors binding, announcing or answering for VIPs",
    registry=REGISTRY,
)
