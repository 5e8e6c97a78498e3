"""BFD metrics (label ``peer`` = the BGP peer's name)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from lbd.metrics import REGISTRY

STATE = Gauge("lbd_bfd_session_state", "BFD session state (RFC 5880 codes: 0 AdminDown, 1 Down, 2 Init, 3 Up)",
              ["peer"], registry=REGISTRY)
UP = Gauge("lbd_bfd_session_up", "1 while the BFD session is Up", ["peer"], registry=REGISTRY)
TRANSITIONS = Counter("lbd_bfd_transitions_total", "BFD state changes, by new state", ["peer", "to"],
                      registry=REGISTRY)
PACKETS_SENT = Counter("lbd_bfd_packets_sent_total", "BFD Control packets sent", ["peer"], registry=REGISTRY)
PACKETS_RECEIVED = Counter("lbd_bfd_packets_received_total", "BFD Control packets accepted", ["peer"],
                           registry=REGISTRY)
DISCARDED = Counter("lbd_bfd_packets_discarded_total",
                    "BFD Control packets of a session discarded (TTL, authentication, discriminator)",
                    ["reason"], registry=REGISTRY)
DETECTION_TIME = Gauge("lbd_bfd_detection_time_seconds", "Negotiated detection time (RFC 5880 §6.8.4)", ["peer"],
                       registry=REGISTRY)
PER_PEER = (STATE, UP, PACKETS_SENT, PACKETS_RECEIVED, DETECTION_TIME)
