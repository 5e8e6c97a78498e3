"""What each service became (``ServiceResult``), kept up to date per change for the write-back.

``service_results`` computes every service's result from one pass's outcome: its addresses
and pool, or why it is pending, and the nodes announcing it (the owners of its VIPs'
decisions, in VIP order). The daemon hands these to the sources after every pass
(``SourceManager.report``: Kubernetes writes them to Service status).

``ResultBook`` keeps the same mapping across passes and recomputes only the services a pass
touched (issue 9: recomputing 10,000 results per one-service change was a tenth of the
daemon's CPU under churn): the services added, removed or changed, those whose allocation or
pending reason changed, and those listed by a VIP decision the planner re-decided. A property
test (``tests/unit/test_writeback.py``) checks it against ``service_results``; the daemon
passes ``touched=None`` (recompute everything) whenever its planner made a full pass.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

from lbd.delta import changed_keys
from lbd.model import Allocation, IPAddress, ServiceSpec, VipDecision
from lbd.sources.base import ServiceResult

__all__ = ["ResultBook", "service_results"]

NOT_ALLOCATED = "not allocated"


def service_results(services: Mapping[str, ServiceSpec], allocations: Mapping[str, Allocation],
                    pending: Mapping[str, str], decisions: Iterable[VipDecision]) -> dict[str, ServiceResult]:
    """Every service's result, from scratch (``decisions`` in VIP order, as a plan lists them)."""
    owners: dict[str, list[str]] = {}
    for decision in decisions:
        if not decision.owner:
            continue  # (BGP VIPs have none: no list per service for nothing, 100,000 at start-up)
        for service in decision.services:
            nodes = owners.setdefault(service, [])
            if decision.owner not in nodes:
                nodes.append(decision.owner)
    out: dict[str, ServiceResult] = {}
    for name in services:
        allocation = allocations.get(name)
        if allocation is not None:
            out[name] = ServiceResult(addresses=allocation.addresses, pool=allocation.pool,
                                      nodes=tuple(owners.get(name, ())))
        else:
            out[name] = ServiceResult(pending=pending.get(name, NOT_ALLOCATED))
    return out


def _vip_key(vip: IPAddress) -> tuple[int, int]:
    return (vip.version, int(vip))


class ResultBook:
    """``service_results`` across passes; ``results`` is the current mapping (do not mutate it)."""

    def __init__(self) -> None:
        self.results: dict[str, ServiceResult] = {}
        self._services: Mapping[str, ServiceSpec] = {}
        self._allocations: Mapping[str, Allocation] = {}
        self._pending: Mapping[str, str] = {}

    def update(self, services: Mapping[str, ServiceSpec], allocations: Mapping[str, Allocation],
               pending: Mapping[str, str], decisions: Iterable[VipDecision],
               decision: Callable[[IPAddress], VipDecision | None],
               touched: Iterable[str] | None, hint: Iterable[str] | None = None) -> set[str] | None:
        """Bring ``results`` up to date; return the names whose result changed (None: all were
        recomputed). ``decisions``: the plan's, in VIP order (read only when ``touched`` is
        None); ``decision(vip)``: the current decision of one VIP; ``touched``: the services
        listed by the decisions re-decided since the last call, before and after (None: any
        may have changed); ``hint``: the services whose spec or allocation may have changed
        since the last call (None: found by comparing every service, C speed but O(N)).
        The mappings are kept, not copied: the caller replaces them, never changes them in place."""
        if touched is None:
            names: set[str] | None = None
        else:
            names = set(touched)
            if hint is None:
                names |= changed_keys(self._services, services)
                names |= changed_keys(self._allocations, allocations)
            else:
                names.update(hint)
            names |= changed_keys(self._pending, pending)  # (the pending services: few)
        self._services, self._allocations, self._pending = services, allocations, pending
        if names is None:
            self.results = service_results(services, allocations, pending, decisions)
            return None
        changed: set[str] = set()
        results = self.results
        for name in names:
            before = results.get(name)
            after = self._result(name, decision) if name in services else None
            if after is None:
                if results.pop(name, None) is not None:
                    changed.add(name)
            elif after != before:
                results[name] = after
                changed.add(name)
        return changed

    def _result(self, name: str, decision: Callable[[IPAddress], VipDecision | None]) -> ServiceResult:
        allocation = self._allocations.get(name)
        if allocation is None:
            return ServiceResult(pending=self._pending.get(name, NOT_ALLOCATED))
        nodes: list[str] = []
        for vip in sorted(dict.fromkeys(allocation.addresses), key=_vip_key):
            found = decision(vip)
            if found is not None and found.owner and name in found.services and found.owner not in nodes:
                nodes.append(found.owner)
        return ServiceResult(addresses=allocation.addresses, pool=allocation.pool, nodes=tuple(nodes))
