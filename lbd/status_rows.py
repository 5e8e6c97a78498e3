"""The pools and services tables of ``lbd-ctl status``: pure functions of the daemon's state
(pool usage, allocations, the plan's decisions, the forwarder's status)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from lbd.config.schema import PoolConfig
from lbd.ipam import pool_usage
from lbd.model import Allocation, ServiceSpec, VipDecision


def pool_rows(pools: Sequence[PoolConfig], allocations: Mapping[str, Allocation]) -> list[dict[str, Any]]:
    """Used and total addresses per pool and family."""
    return [
        {"name": u.pool,
         "ipv4": {"used": u.ipv4.used, "total": u.ipv4.total},
         "ipv6": {"used": u.ipv6.used, "total": u.ipv6.total}}
        for u in pool_usage(pools, allocations).values()
    ]


def service_rows(services: Mapping[str, ServiceSpec], allocations: Mapping[str, Allocation],
                 pending: Mapping[str, str], decisions: Sequence[VipDecision],
                 forwarding: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One row per service known, allocated or pending, by name. ``forwarding``: the
    forwarder's status (None: forwarding is off on this node)."""
    by_service: dict[str, list[VipDecision]] = {}
    for decision in decisions:
        for service in decision.services:
            by_service.setdefault(service, []).append(decision)
    rows = []
    for name in sorted(set(services) | set(allocations) | set(pending)):
        row = service_row(name, allocations.get(name), pending.get(name), by_service.get(name, []))
        if forwarding is not None and name in services and services[name].backends:
            forward_row(row, services[name], forwarding)
        rows.append(row)
    return rows


def service_row(name: str, allocation: Allocation | None, pending: str | None,
                mine: list[VipDecision]) -> dict[str, Any]:
    """A service's addresses, owners and state ("announced" here, "standby" elsewhere,
    "not-announced", or "pending"), with the reasons of its VIPs' decisions."""
    row: dict[str, Any] = {"name": name, "addresses": [], "pool": None, "state": "pending",
                           "owner": None, "interface": None, "reason": pending}
    if allocation is None:
        return row
    row["addresses"] = [str(a) for a in allocation.addresses]
    row["pool"] = allocation.pool
    here = [d for d in mine if d.announced_here]
    owners = sorted({d.owner for d in mine if d.owner})
    row["owner"] = ",".join(owners) or None
    row["interface"] = ",".join(sorted({d.interface for d in here if d.interface})) or None
    if here:
        row["state"] = "announced"
    elif owners:
        row["state"] = "standby"
    else:
        row["state"] = "not-announced"
    row["reason"] = "; ".join(dict.fromkeys(d.reason for d in mine)) or None
    row["modes"] = sorted({mode for d in mine for mode in d.modes})
    return row


def forward_row(row: dict[str, Any], spec: ServiceSpec, status: Mapping[str, Any]) -> None:
    """Add a forwarded service's backends, and why it forwards nothing, to its row."""
    row["forward"] = spec.forward + (" snat" if spec.snat else "")
    row["backends"] = status["services"].get(spec.name, [])
    reason = status["no_backend"].get(spec.name)
    if reason:
        action = ("VIP withdrawn from this node" if spec.on_no_backend == "withdraw"
                  else "VIP kept (on_no_backend = keep): no flow is forwarded")
        row["forward_reason"] = f"{reason}: {action}"
        row["reason"] = "; ".join(r for r in (row.get("reason"), row["forward_reason"]) if r)
    if spec.forward == "nat" and status.get("ip_forward") is False:
        row["reason"] = "; ".join(r for r in (row.get("reason"), "net.ipv4.ip_forward is 0: nat forwarding "
                                              "cannot work on this node") if r)
