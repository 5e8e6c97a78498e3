"""Prometheus metrics of the gossip layer, the cluster's allocation table and node facts (against lbd.metrics.REGISTRY)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from lbd.metrics import REGISTRY

MEMBERS = Gauge("lbd_cluster_members", "Cluster members known to this node, by state", ["state"], registry=REGISTRY)
RECEIVED = Counter(
    "lbd_gossip_messages_received_total", "Gossip messages received, by message type", ["type"], registry=REGISTRY
)
SENT = Counter("lbd_gossip_messages_sent_total", "Gossip messages sent, by message type", ["type"], registry=REGISTRY)
DECRYPT_FAILURES = Counter(
    "lbd_gossip_decrypt_failures_total", "Gossip packets or streams no installed key could decrypt", registry=REGISTRY
)
SUSPICIONS = Counter("lbd_gossip_suspicions_total", "Suspicions this node raised after failed probes", registry=REGISTRY)
REFUTES = Counter("lbd_gossip_refutes_total", "Accusations about this node it refuted", registry=REGISTRY)
SEND_FAILURES = Counter(
    "lbd_gossip_send_failures_total",
    "UDP sends the socket refused (unreachable, or an address of the other family)", registry=REGISTRY,
)
BAD_NAMES = Counter(
    "lbd_gossip_bad_member_names_total",
    "Member entries refused because the name is empty or holds control characters", registry=REGISTRY,
)

# The allocation table the cluster replicates, and the node facts records (lbd.cluster.coordination).
CONFLICTS = Counter("lbd_allocation_conflicts_resolved", "Allocations dropped because an older one held the address",
                    registry=REGISTRY)
TABLE_REJECTED = Counter("lbd_allocation_table_entries_refused",
                         "Allocation table entries from peers refused: stamped too far in the future",
                         registry=REGISTRY)
FACTS_REJECTED = Counter("lbd_node_facts_rejected", "Node facts messages from peers refused as malformed",
                         registry=REGISTRY)
FACTS_REQUESTS = Counter("lbd_node_facts_requests", "Requests sent for a peer's facts record after a missed version",
                         registry=REGISTRY)
TABLE_UPDATES = Counter("lbd_allocation_table_entries_received", "Allocation table entries adopted from peers",
                        registry=REGISTRY)
