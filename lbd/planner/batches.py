"""The first pass's batches: the allocations split into growing groups of whole VIPs (issue 9).

At start-up with 100,000 services, planning every VIP takes seconds; the daemon plans and
announces them in batches instead, so the first UPDATEs leave within milliseconds of the
allocation. A batch is a prefix of the allocations: each one holds the previous one and
about ``growth`` times as many VIPs, the last one all of them.

A VIP is never split: every service allocated a VIP (shared IPs) is in the same batch as
that VIP's other services, and so are the other VIPs of those services (dual-stack).
Each VIP is then decided on exactly the inputs the full pass decides it on, so a batch
never announces a route the full plan would withdraw. VIPs go in address order, so the
``local`` routes accepting a batch (one per aggregated prefix) stay few.
"""

from __future__ import annotations

from typing import Mapping

from lbd.model import Allocation, IPAddress

FIRST_BATCH = 256  # VIPs in the first batch
GROWTH = 4  # each batch about this many times the previous one


def _groups(allocations: Mapping[str, Allocation]) -> list[tuple[tuple[int, int], list[str]]]:
    """The services that share VIPs, transitively, as groups keyed by their lowest VIP
    ``(version, int)``; a service with no address is a group of its own, keyed first."""
    names_of: dict[IPAddress, list[str]] = {}
    shared = False
    for name, allocation in allocations.items():
        for vip in allocation.addresses:
            names = names_of.get(vip)
            if names is None:
                names_of[vip] = [name]
            else:
                names.append(name)
                shared = True
    groups: list[tuple[tuple[int, int], list[str]]] = []
    if not shared:  # the common case: one service per VIP, each service its own group
        for name, allocation in allocations.items():
            key = min(((v.version, int(v)) for v in allocation.addresses), default=(0, -1))
            groups.append((key, [name]))
        return groups
    seen: set[str] = set()
    for name in allocations:
        if name in seen:
            continue
        seen.add(name)
        group, todo = [], [name]
        while todo:
            current = todo.pop()
            group.append(current)
            for vip in allocations[current].addresses:
                for other in names_of[vip]:
                    if other not in seen:
                        seen.add(other)
                        todo.append(other)
        key = min(((v.version, int(v)) for n in group for v in allocations[n].addresses), default=(0, -1))
        groups.append((key, group))
    return groups


def first_pass_batches(allocations: Mapping[str, Allocation], first: int = FIRST_BATCH,
                       growth: int = GROWTH) -> list[dict[str, Allocation]]:
    """Growing prefixes of ``allocations`` (the last one equal to it, in its order), each made
    of whole VIPs. The batches before the last list their services in VIP order (the planner
    sorts a VIP's services itself: the order of the mapping does not change a decision)."""
    if first < 1 or growth < 2:
        raise ValueError("first must be >= 1 and growth >= 2")
    if len(allocations) <= first:
        return [dict(allocations)]
    groups = _groups(allocations)
    groups.sort(key=lambda g: g[0])
    batches: list[dict[str, Allocation]] = []
    current: dict[str, Allocation] = {}
    size = first
    for count, (_, group) in enumerate(groups, 1):
        for name in group:
            current[name] = allocations[name]
        if count >= size and len(current) < len(allocations):
            batches.append(current)
            current = dict(current)
            size *= growth
    batches.append(dict(allocations))
    return batches
