"""From allocations and membership to what this node must announce.

Pure and deterministic: every node runs the same function over the same inputs
(allocations, services, members as gossip shows them) and so agrees on the
owner of each layer-2 VIP without talking about it.

One planner per protocol over one election (as MetalLB's speaker has one
controller per protocol over a shared allocator):

- ``election``: ``rank`` and ``elect``, the per-VIP owner election (layer 2);
- ``l2.plan_l2``: the VIP's owner, and whether this node announces it at layer 2;
- ``bgp.plan_bgp``: the routes this node announces for the VIP;
- ``export.plan_export``: the kernel routes this node installs for the VIP;
- ``inputs``: what they all read, and the eligibility they share.

``plan`` runs the three for every VIP and composes this node's ``Plan``: the reference.
``incremental.IncrementalPlanner`` keeps that plan up to date across passes, re-deciding
only the VIPs whose inputs changed (what the daemon runs).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from lbd.model import (
    Allocation,
    ExportRoute,
    IPAddress,
    L2Intent,
    L2Mode,
    Plan,
    ServiceSpec,
    VipDecision,
)
from lbd.planner.bgp import BgpPlan, merge_routes, plan_bgp
from lbd.planner.export import (
    LOCAL_ROUTE_PROTO,
    ExportPlan,
    local_accept_routes,
    local_route_prefixes,
    plan_export,
)
from lbd.planner.inputs import NodeView, PlannerInput, VipInput
from lbd.planner.l2 import L2Plan, plan_l2

__all__ = [
    "LOCAL_ROUTE_PROTO",
    "PlannerInput",
    "held_vips",
    "local_route_prefixes",
    "plan",
]


def held_vips(intents: Iterable[L2Intent]) -> tuple[str, ...]:
    """The VIPs this node *holds* for the cluster: announced at layer 2 (sorted, unique).

    BGP/export VIPs bound on ``lo`` only (``L2Mode.LOCAL``) are not held: every eligible
    node carries those. The one definition that the node's gossip metadata, the partition
    check and the graceful handover all use.
    """
    return tuple(sorted({str(i.vip) for i in intents if i.mode.announced}))


@dataclass(frozen=True, slots=True)
class VipOutcome:
    """Every protocol's decision for one VIP on this node, combined."""

    decision: VipDecision
    announced: L2Intent | None  # layer 2 announces it from here
    bind_on: str | None  # bind it here without announcing (accept = "address"), on this interface
    local_route: bool  # accept it through a local route (BGP's accept = "local-route")
    bgp: BgpPlan | None
    exports: tuple[ExportRoute, ...]
    timed: bool = False  # layer 2's election depends on the clock (a failback window)


def plan(inp: PlannerInput) -> Plan:
    """This node's intents for every allocated VIP: each protocol's planner decides its part,
    then the VIPs announced only at layer 3 are accepted locally (a bind or a local route)."""
    view = NodeView.of(inp)
    by_vip = _allocations_by_vip(inp.allocations)
    outcomes = [decide_vip(view, vip_input(vip, by_vip[vip], inp.services)) for vip in sorted(by_vip, key=vip_order)]

    # VIPs announced at layer 3 must still be accepted locally: bind them (no ARP/NDP).
    announced = [o.announced for o in outcomes if o.announced is not None]
    l2_bound = {intent.vip for intent in announced}
    local_binds = [  # services in allocation order, as these intents have always listed them
        L2Intent(vip=o.decision.vip, interface=o.bind_on, mode=L2Mode.LOCAL,
                 services=tuple(a.service for a in by_vip[o.decision.vip]), announce_burst=0, announce_interval=0.0)
        for o in outcomes if o.bind_on is not None and o.decision.vip not in l2_bound
    ]
    # BGP VIPs accepted through local routes: one per aggregated prefix, not per VIP.
    # VIPs bound anyway (layer 2 or accept = "address") need none.
    bound = l2_bound | {o.decision.vip for o in outcomes if o.bind_on is not None}
    local_routed = {o.decision.vip for o in outcomes if o.local_route}
    exports = [route for o in outcomes for route in o.exports] + local_accept_routes(local_routed - bound)
    return Plan(
        l2=tuple(announced + local_binds),
        bgp=merge_routes(o.bgp for o in outcomes if o.bgp is not None),
        exports=tuple(exports),
        decisions=tuple(o.decision for o in outcomes),
    )


def vip_order(vip: IPAddress) -> tuple[int, int]:
    return (vip.version, int(vip))


def _allocations_by_vip(allocations: Mapping[str, Allocation]) -> dict[IPAddress, list[Allocation]]:
    by_vip: dict[IPAddress, list[Allocation]] = defaultdict(list)
    for allocation in allocations.values():
        for address in allocation.addresses:
            by_vip[address].append(allocation)
    return by_vip


def vip_input(vip: IPAddress, allocations: Sequence[Allocation], services: Mapping[str, ServiceSpec]) -> VipInput:
    allocs = sorted(allocations, key=lambda a: a.service)
    names = tuple(a.service for a in allocs)
    return VipInput(vip=vip, pool=allocs[0].pool, services=names,
                    specs=tuple(services[n] for n in names if n in services))


def decide_vip(view: NodeView, vip: VipInput) -> VipOutcome:
    """Run every protocol's planner on ``vip`` and say what this node does with it, and why."""
    l2, bgp, export = plan_l2(view, vip), plan_bgp(view, vip), plan_export(view, vip)
    intent = l2.intent if l2 is not None else None
    routed = bgp if bgp is not None and bgp.announced else None
    by_export = export is not None and export.exported
    # BGP's accept = "address" binds on lo first; otherwise the first address-accepting export's interface.
    bind_on = "lo" if routed is not None and routed.by_address else (
        export.bind_interface if export is not None else None)
    local_route = routed is not None and not routed.by_address
    here = intent is not None or routed is not None or by_export
    interface = (intent.interface if intent is not None else None) or bind_on or ("lo" if local_route else None)
    decision = VipDecision(
        vip=vip.vip,
        services=vip.services,
        owner=l2.owner if l2 is not None else None,
        interface=interface if here else None,
        reason=view.shared("; ".join(_reasons(vip, l2, bgp, export))),  # one text for the VIPs alike
        candidates=l2.candidates if l2 is not None else (),
        pool=vip.pool,
        modes=view.shared(tuple(mode for mode, part in (("l2", l2), ("bgp", bgp), ("export", export)) if part is not None)),
        announced_here=here,
    )
    return VipOutcome(decision, intent, bind_on, local_route, bgp, export.routes if export is not None else (),
                       timed=l2 is not None and l2.timed)


def _reasons(vip: VipInput, l2: L2Plan | None, bgp: BgpPlan | None, export: ExportPlan | None) -> list[str]:
    reasons = list(l2.reasons) if l2 is not None else []
    reasons += [part.reason for part in (bgp, export) if part is not None]
    if l2 is None and bgp is None and export is None:
        reasons.append("no l2_advertisement, bgp_advertisement or route_export covers pool " + repr(vip.pool))
    return reasons
