"""What every protocol's planner reads: the planner's inputs, this node's view of them,
one allocated VIP, and whether a member may announce a VIP at all.

Eligibility common to every protocol: alive, not drained, allowed by every service on the
VIP (``eligible_nodes``) and passing their health checks on that node. Each protocol adds
its own conditions (node selectors, fitting interfaces, peers) in its own module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from lbd.config.schema import BgpPeerConfig, Config
from lbd.model import Allocation, IPAddress, Member, MemberState, ServiceSpec
from lbd.selectors import selects_pool


@dataclass
class PlannerInput:
    config: Config
    node: str  # this node's name
    allocations: Mapping[str, Allocation]
    services: Mapping[str, ServiceSpec]
    members: Sequence[Member]  # every known member, this node included
    now: float = 0.0
    eligible_since: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeView:
    """The inputs as this node sees them, indexed once for every VIP and protocol."""

    config: Config
    node: str  # this node's name
    members: Mapping[str, Member]  # by name, as gossip shows them
    me: Member  # this node's own entry (DEAD while not yet in its own view)
    peers: Mapping[str, BgpPeerConfig]  # by name
    pool_labels: Mapping[str, Mapping[str, str]]  # pool name -> its labels
    now: float
    eligible_since: Mapping[str, float]
    # What the planners derive once per view, not per VIP (a pool's advertisements, the peers
    # they select, reason texts shared by every VIP): at 100,000 VIPs, time and memory (issue 9).
    memo: dict[object, object] = field(default_factory=dict, compare=False, repr=False)

    def shared(self, value: object) -> Any:
        """One object for equal values (strings, tuples) across the VIPs of this view."""
        return self.memo.setdefault(("shared", value), value)

    @classmethod
    def of(cls, inp: PlannerInput) -> NodeView:
        members = {m.name: m for m in inp.members}
        me = members.get(inp.node)
        if me is None:  # not yet in our own view: announce nothing rather than guess
            me = Member(name=inp.node, state=MemberState.DEAD)
        return cls(
            config=inp.config,
            node=inp.node,
            members=members,
            me=me,
            peers={peer.name: peer for peer in inp.config.bgp_peers},
            pool_labels={p.name: p.labels for p in inp.config.pools},
            now=inp.now,
            eligible_since=inp.eligible_since,
        )

    def covers(self, item: object, pool: str) -> bool:
        """Whether an advertisement or route export covers ``pool``: by name, or
        (advertisements) by a ``pool_selectors`` match on the pool's labels."""
        return selects_pool(getattr(item, "pools", ()), getattr(item, "pool_selectors", ()), pool,
                            self.pool_labels.get(pool, {}))


@dataclass(frozen=True, slots=True)
class VipInput:
    """One allocated VIP as every protocol's planner sees it."""

    vip: IPAddress
    pool: str  # the pool of the first service (by name) holding it
    services: tuple[str, ...]  # the services sharing it, by name
    specs: tuple[ServiceSpec, ...]  # of those, the ones the sources know now


def refusal(member: Member, specs: Sequence[ServiceSpec]) -> str | None:
    """Why ``member`` may not announce a VIP carrying ``specs`` by any protocol, or None."""
    if member.state != MemberState.ALIVE:
        return f"{member.name} is {member.state.value}"
    if member.drained:
        return f"{member.name} is drained"
    return _service_refusal(member, specs)


def _service_refusal(member: Member, specs: Sequence[ServiceSpec]) -> str | None:
    """Why the services ``specs`` do not let ``member`` announce their VIP, or None."""
    for spec in specs:
        if spec.eligible_nodes is not None and member.name not in spec.eligible_nodes:
            return f"{spec.name} has no ready endpoint on {member.name}"
        if spec.name in member.failing:
            return f"health check of {spec.name} fails on {member.name}"
    return None
