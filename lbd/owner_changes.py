"""The owner changes of one pass, logged as one summary line and counted (issue 9)."""

from __future__ import annotations

from typing import Mapping, Sequence

import structlog

from lbd import metrics as m
from lbd.model import IPAddress, Member, MemberState, VipDecision

log = structlog.get_logger(__name__)

OWNER_CHANGES_SHOWN = 10  # the owner changes named in a pass's info summary; the rest are counted


def report_owner_changes(previous: Mapping[IPAddress, str | None], decisions: Sequence[VipDecision],
                         members: Sequence[Member]) -> dict[str, int]:
    """Count and log the VIPs whose owner changed in one pass (previous owner by VIP ->
    ``decisions``): one debug line per VIP, one info summary per pass (issue 9: a failover
    of thousands of VIPs must not JSON-encode thousands of info lines inside the pass).

    A change is a ``failover`` when the old owner is no longer alive, else a ``move``.
    Returns the counts by kind."""
    alive = {mb.name for mb in members if mb.state == MemberState.ALIVE}
    counts = {"failover": 0, "move": 0}
    shown: list[dict[str, object]] = []
    for decision in decisions:
        if decision.vip not in previous:
            continue
        before = previous[decision.vip]
        if before == decision.owner:
            continue
        kind = "failover" if before is not None and before not in alive else "move"
        counts[kind] += 1
        log.debug("vip_owner_changed", vip=str(decision.vip), old=before, new=decision.owner, kind=kind,
                  reason=decision.reason)
        if len(shown) < OWNER_CHANGES_SHOWN:
            shown.append({"vip": str(decision.vip), "old": before, "new": decision.owner, "kind": kind,
                          "reason": decision.reason})
    for kind, count in counts.items():
        if count:
            m.OWNER_CHANGES.labels(kind).inc(count)
    if shown:
        log.info("vip_owners_changed", failover=counts["failover"], move=counts["move"], first=shown)
    return counts
