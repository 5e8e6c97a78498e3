"""Layer 2's planner: one owner per VIP, elected, and whether this node announces it.

Eligible for layer 2 means, besides ``inputs.refusal``: selected by an applicable
advertisement's node selector, with an interface whose connected subnet holds the
VIP (restricted to the advertisement's interfaces when it names some).

Make-before-break: a node that holds a VIP keeps announcing it after losing the
election until the new owner says (in gossip) that it holds it, so a drain, a
graceful stop or a failback never leaves a gap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from lbd.config.schema import L2AdvertisementConfig
from lbd.model import IPAddress, L2Intent, L2Mode, Member
from lbd.planner.election import describe_interfaces, elect, fitting_interfaces
from lbd.planner.inputs import NodeView, VipInput, refusal
from lbd.selectors import matches


@dataclass(frozen=True)
class L2Plan:
    """Layer 2's decision for one VIP: its owner in the cluster and this node's intent."""

    owner: str | None  # None: no member may announce it
    candidates: tuple[str, ...]  # eligible nodes in rank order
    reasons: tuple[str, ...]  # for lbd-ctl status, each prefixed "l2: "
    intent: L2Intent | None  # set when this node announces it (the owner, or handing over)
    timed: bool = False  # the election depends on the clock (``Election.timed``)


def plan_l2(view: NodeView, vip: VipInput) -> L2Plan | None:
    """Who owns ``vip`` at layer 2 and whether this node announces it; None when no
    ``l2_advertisement`` covers its pool."""
    ads = [ad for ad in view.config.l2_advertisements if view.covers(ad, vip.pool)]
    if not ads:
        return None
    eligible, refusals = _candidates(view, vip, ads)
    text = str(vip.vip)
    holders = [m.name for m in view.members.values() if text in m.holds]
    election = elect(vip.vip, eligible, holders, view.eligible_since, view.now, view.config.cluster.failback_delay)
    owner = election.owner
    if owner is None:
        reasons = ["l2: not announced: " + ("; ".join(refusals) or "no member")]
    else:
        reasons = [f"l2: {owner} {election.reason}"]
    intent: L2Intent | None = None
    if owner == view.node:
        intent = _intent(view.me, vip, ads)
    elif owner is not None and _hands_over(view, vip, owner, text):
        intent = _intent(view.me, vip, ads)
        if intent is not None:
            reasons.append(f"l2: handing over to {owner}")
    return L2Plan(owner, election.candidates, tuple(reasons), intent, election.timed)


def _candidates(view: NodeView, vip: VipInput, ads: Sequence[L2AdvertisementConfig]) -> tuple[list[str], list[str]]:
    """The members eligible to own ``vip`` and, for the others, why not."""
    eligible: list[str] = []
    refusals: list[str] = []
    for member in view.members.values():
        why = refusal(member, vip.specs)
        if why is None and _fit(vip.vip, member, ads) is None:
            why = (
                f"{member.name}: no interface has a subnet holding {vip.vip} "
                f"({describe_interfaces(member.interfaces)})"
            )
        if why is None:
            eligible.append(member.name)
        else:
            refusals.append(why)
    return eligible, refusals


def _hands_over(view: NodeView, vip: VipInput, owner: str, text: str) -> bool:
    """Whether this node, which lost ``vip`` to ``owner``, keeps announcing it until the
    owner holds it: it holds it now, could still serve it (a drain alone does not stop
    it) and the owner does not announce it yet."""
    if text not in view.me.holds:
        return False
    if refusal(replace(view.me, drained=False), vip.specs) is not None:
        return False
    new_owner = view.members.get(owner)
    return new_owner is not None and text not in new_owner.holds


def _intent(me: Member, vip: VipInput, ads: Sequence[L2AdvertisementConfig]) -> L2Intent | None:
    """The intent announcing ``vip`` from ``me`` on the first fitting interface, if any fits."""
    fit = _fit(vip.vip, me, ads)
    if fit is None:
        return None
    ad, ifname = fit
    return L2Intent(
        vip=vip.vip,
        interface=ifname,
        mode=L2Mode(ad.mode),
        services=vip.services,
        announce_burst=ad.announce_burst,
        announce_interval=ad.announce_interval,
    )


def _fit(
    vip: IPAddress, member: Member, ads: Sequence[L2AdvertisementConfig]
) -> tuple[L2AdvertisementConfig, str] | None:
    """The first advertisement selecting ``member`` with an interface that fits ``vip``."""
    for ad in ads:
        if ad.node_selector and not matches(ad.node_selector, member.labels):  # none: every node
            continue
        names = fitting_interfaces(vip, member.interfaces, ad.interfaces)
        if names:
            return ad, names[0]
    return None
