"""The per-VIP owner election layer 2 uses: one owner per VIP, agreed without talking.

Election (MetalLB's order, architecture.md): rank the eligible alive members by
``sha256(node_name + "#" + vip)``, lowest first.

Failback: the best-ranked node does not take a VIP from a healthy current holder
until it has been eligible for ``failback_delay`` seconds (``None``: never), so
a flapping node does not flap the VIPs. Holders are known from gossip
(``Member.holds``), so the rule stays a function of shared state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from lbd.model import IPAddress, IPInterface


def rank(vip: IPAddress, nodes: Iterable[str]) -> list[str]:
    """Nodes in election order for ``vip``: lowest sha256(node#vip) first."""
    suffix = f"#{vip}".encode()  # the VIP's text once, not once per node (issue 9: 20 nodes)
    sha256 = hashlib.sha256
    return sorted(nodes, key=lambda node: (sha256(node.encode() + suffix).digest(), node))


# A member's interfaces, sorted by name with their networks, per mapping: the planner asks for
# every member and every VIP (20 members x 10,000 VIPs a re-decision), and a member's mapping
# is the same object from pass to pass. Keyed by id, the mapping kept so the id is not reused.
_SORTED: dict[int, tuple[Mapping[str, Sequence[IPInterface]], tuple[tuple[str, tuple[tuple[int, Any], ...]], ...]]] = {}
_SORTED_MAX = 4096


def _sorted_interfaces(
    interfaces: Mapping[str, Sequence[IPInterface]],
) -> tuple[tuple[str, tuple[tuple[int, Any], ...]], ...]:
    hit = _SORTED.get(id(interfaces))
    if hit is not None and hit[0] is interfaces:
        return hit[1]
    items = tuple((name, tuple((net.version, net.network) for net in networks))
                  for name, networks in sorted(interfaces.items()))
    if len(_SORTED) >= _SORTED_MAX:
        _SORTED.clear()
    _SORTED[id(interfaces)] = (interfaces, items)
    return items


def fitting_interfaces(
    vip: IPAddress,
    interfaces: Mapping[str, Sequence[IPInterface]],
    allowed: Sequence[str] = (),
) -> list[str]:
    """Interfaces whose connected subnet holds ``vip`` (only ``allowed`` ones if given), sorted."""
    version = vip.version
    return [name for name, networks in _sorted_interfaces(interfaces)
            if (not allowed or name in allowed) and any(v == version and vip in net for v, net in networks)]


def describe_interfaces(interfaces: Mapping[str, Sequence[IPInterface]]) -> str:
    if not interfaces:
        return "no usable interfaces"
    parts = []
    for name, networks in sorted(interfaces.items()):
        nets = ", ".join(str(net.network) for net in networks) or "no address"
        parts.append(f"{name}: {nets}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Election:
    owner: str | None
    reason: str
    candidates: tuple[str, ...]
    # The outcome (or its reason) depends on ``now`` and ``eligible_since``: a holder other
    # than the first-ranked node holds the VIP while failback may take it. The incremental
    # planner re-decides such VIPs on every pass.
    timed: bool = False


def elect(
    vip: IPAddress,
    candidates: Sequence[str],
    holders: Sequence[str],
    eligible_since: Mapping[str, float],
    now: float,
    failback_delay: float | None,
) -> Election:
    """Pick the owner of ``vip`` among eligible ``candidates``.

    ``holders`` are the nodes that announce the VIP right now (from gossip);
    ``eligible_since[node]`` is when the node last became eligible.
    """
    ranked = tuple(rank(vip, candidates))
    if not ranked:
        return Election(None, "no eligible node", ranked)
    ideal = ranked[0]
    current = next((node for node in ranked if node in holders), None)
    if current is None or current == ideal:
        return Election(ideal, f"ranked first of {len(ranked)} eligible", ranked)
    if failback_delay is None:
        return Election(current, f"kept by current holder (failback disabled; {ideal} ranks first)", ranked)
    waited = now - eligible_since.get(ideal, now)
    if waited >= failback_delay:
        return Election(ideal, f"ranked first of {len(ranked)} eligible (failback after {failback_delay:g}s)", ranked,
                        timed=True)
    return Election(
        current,
        f"kept by current holder until {ideal} has been eligible for {failback_delay:g}s "
        f"({failback_delay - waited:.1f}s left)",
        ranked,
        timed=True,
    )
