"""From allocations and membership to what this node must announce.

Pure and deterministic: every node runs the same function over the same inputs
(allocations, services, members as gossip shows them) and so agrees on the
owner of each layer-2 VIP without talking about it.

Election (MetalLB's order, architecture.md): rank the eligible alive members by
``sha256(node_name + "#" + vip)``, lowest first. Eligible means: alive, not
drained, selected by an applicable advertisement's node selector, has an
interface whose connected subnet holds the VIP (restricted to the
advertisement's interfaces when it names some), allowed by every service on the
VIP (``eligible_nodes``) and passing their health checks on that node.

Failback: the best-ranked node does not take a VIP from a healthy current holder
until it has been eligible for ``failback_delay`` seconds (``None``: never), so
a flapping node does not flap the VIPs. Holders are known from gossip
(``Member.holds``), so the rule stays a function of shared state.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Sequence

from lbd.model import (
    L2Mode,
    Allocation,
    BgpAdvertisementConfig,
    BgpRoute,
    Config,
    ExportRoute,
    IPAddress,
    IPInterface,
    L2AdvertisementConfig,
    L2Intent,
    Member,
    MemberState,
    Plan,
    ServiceSpec,
    VipDecision,
)
from lbd.selectors import matches, selects_pool


RT_TABLE_LOCAL = 255  # the kernel's "local" table: routes that deliver to this host
# rtnetlink protocol lbd marks its BGP "accept" local routes with (the route exporter's
# default too): the exporter only ever reads back, replaces or deletes routes of its own protocols.
LOCAL_ROUTE_PROTO = 252


def local_route_prefixes(vips: Iterable[IPAddress]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The fewest CIDRs covering exactly ``vips``: one ``local`` route each accepts them all.

    A pool range 10.0.0.0-10.0.0.255 fully announced becomes one /24; a range that is
    not a CIDR, or holes where VIPs are not announced here, give the minimal cover of
    what is announced, never an address that is not (the node must not swallow
    traffic for a VIP another node or nobody serves).
    """
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for version in (4, 6):
        nets = [ipaddress.ip_network(v) for v in vips if v.version == version]
        out.extend(ipaddress.collapse_addresses(nets))
    return out


def held_vips(intents: Iterable[L2Intent]) -> tuple[str, ...]:
    """The VIPs this node *holds* for the cluster: announced at layer 2 (sorted, unique).

    BGP/export VIPs bound on ``lo`` only (``L2Mode.LOCAL``) are not held: every eligible
    node carries those. The one definition that the node's gossip metadata, the partition
    check and the graceful handover all use.
    """
    return tuple(sorted({str(i.vip) for i in intents if i.mode.announced}))


# Node selectors are lbd.selectors' (MetalLB's label selectors: any of a list,
# each matchLabels AND matchExpressions); the old name stays for callers.
selector_matches = matches


def rank(vip: IPAddress, nodes: Iterable[str]) -> list[str]:
    """Nodes in election order for ``vip``: lowest sha256(node#vip) first."""
    return sorted(nodes, key=lambda node: (hashlib.sha256(f"{node}#{vip}".encode()).digest(), node))


def fitting_interfaces(
    vip: IPAddress,
    interfaces: Mapping[str, Sequence[IPInterface]],
    allowed: Sequence[str] = (),
) -> list[str]:
    """Interfaces whose connected subnet holds ``vip`` (only ``allowed`` ones if given), sorted."""
    names = []
    for name, networks in sorted(interfaces.items()):
        if allowed and name not in allowed:
            continue
        if any(net.version == vip.version and vip in net.network for net in networks):
            names.append(name)
    return names


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
        return Election(ideal, f"ranked first of {len(ranked)} eligible (failback after {failback_delay:g}s)", ranked)
    return Election(
        current,
        f"kept by current holder until {ideal} has been eligible for {failback_delay:g}s "
        f"({failback_delay - waited:.1f}s left)",
        ranked,
    )


def _applies(item: object, pool: str, pool_labels: Mapping[str, Mapping[str, str]]) -> bool:
    """Whether an advertisement or route export covers ``pool``: by name, or
    (advertisements) by a ``pool_selectors`` match on the pool's labels."""
    return selects_pool(getattr(item, "pools", ()), getattr(item, "pool_selectors", ()), pool,
                        pool_labels.get(pool, {}))


@dataclass
class PlannerInput:
    config: Config
    node: str  # this node's name
    allocations: Mapping[str, Allocation]
    services: Mapping[str, ServiceSpec]
    members: Sequence[Member]  # every known member, this node included
    now: float = 0.0
    eligible_since: Mapping[str, float] = field(default_factory=dict)


def _service_allows(member: Member, services: Sequence[ServiceSpec]) -> str | None:
    """Why ``member`` may not announce a VIP carrying ``services``, or None."""
    for spec in services:
        if spec.eligible_nodes is not None and member.name not in spec.eligible_nodes:
            return f"{spec.name} has no ready endpoint on {member.name}"
        if spec.name in member.failing:
            return f"health check of {spec.name} fails on {member.name}"
    return None


def _member_eligible(member: Member, services: Sequence[ServiceSpec]) -> str | None:
    if member.state != MemberState.ALIVE:
        return f"{member.name} is {member.state.value}"
    if member.drained:
        return f"{member.name} is drained"
    return _service_allows(member, services)


def plan(inp: PlannerInput) -> Plan:
    config = inp.config
    members = {m.name: m for m in inp.members}
    me = members.get(inp.node)
    if me is None:  # not yet in our own view: announce nothing rather than guess
        me = Member(name=inp.node, state=MemberState.DEAD)

    by_vip: dict[IPAddress, list[Allocation]] = defaultdict(list)
    for allocation in inp.allocations.values():
        for address in allocation.addresses:
            by_vip[address].append(allocation)

    peers = {peer.name: peer for peer in config.bgp_peers}
    pool_labels = {p.name: p.labels for p in config.pools}
    l2_intents: list[L2Intent] = []
    local_binds: dict[IPAddress, str] = {}
    local_routed: set[IPAddress] = set()  # BGP VIPs accepted by a local route (accept = "local-route")
    bgp_routes: dict[tuple, set[str]] = defaultdict(set)
    exports: list[ExportRoute] = []
    decisions: list[VipDecision] = []

    for vip in sorted(by_vip, key=lambda a: (a.version, int(a))):
        allocs = sorted(by_vip[vip], key=lambda a: a.service)
        pool = allocs[0].pool
        names = tuple(a.service for a in allocs)
        specs = [inp.services[n] for n in names if n in inp.services]
        modes: list[str] = []
        reasons: list[str] = []
        owner: str | None = None
        candidates: tuple[str, ...] = ()
        interface: str | None = None
        here = False

        # -- layer 2: one owner per VIP --------------------------------------
        l2_ads = [ad for ad in config.l2_advertisements if _applies(ad, pool, pool_labels)]
        if l2_ads:
            modes.append("l2")
            eligible: list[str] = []
            refusals: list[str] = []
            for member in members.values():
                why = _member_eligible(member, specs)
                if why is None:
                    fit = _l2_fit(vip, member, l2_ads)
                    if fit is None:
                        why = (
                            f"{member.name}: no interface has a subnet holding {vip} "
                            f"({describe_interfaces(member.interfaces)})"
                        )
                if why is None:
                    eligible.append(member.name)
                else:
                    refusals.append(why)
            holders = [m.name for m in members.values() if str(vip) in m.holds]
            election = elect(vip, eligible, holders, inp.eligible_since, inp.now, config.cluster.failback_delay)
            owner, candidates = election.owner, election.candidates
            if owner is None:
                reasons.append("l2: not announced: " + ("; ".join(refusals) or "no member"))
            else:
                reasons.append(f"l2: {owner} {election.reason}")
            if owner == inp.node:
                ad, ifname = _l2_fit(vip, me, l2_ads) or (l2_ads[0], None)
                if ifname is not None:
                    interface = ifname
                    here = True
                    l2_intents.append(
                        L2Intent(
                            vip=vip,
                            interface=ifname,
                            mode=L2Mode(ad.mode),
                            services=names,
                            announce_burst=ad.announce_burst,
                            announce_interval=ad.announce_interval,
                        )
                    )
            elif owner is not None and str(vip) in me.holds and _member_eligible(
                replace(me, drained=False), specs
            ) is None:
                # Make-before-break: keep announcing until the new owner says it holds the VIP,
                # so a drain, a graceful stop or a failback never leaves a gap.
                new_owner = members.get(owner)
                if new_owner is not None and str(vip) not in new_owner.holds:
                    fit = _l2_fit(vip, me, l2_ads)
                    if fit is not None:
                        ad, ifname = fit
                        interface = ifname
                        here = True
                        reasons.append(f"l2: handing over to {owner}")
                        l2_intents.append(
                            L2Intent(vip, ifname, L2Mode(ad.mode), names, ad.announce_burst, ad.announce_interval)
                        )

        # -- BGP: every eligible node announces ------------------------------
        bgp_ads = [ad for ad in config.bgp_advertisements if _applies(ad, pool, pool_labels)]
        if bgp_ads:
            modes.append("bgp")
            why = _member_eligible(me, specs)
            announced = False
            by_address = False
            for ad in bgp_ads:
                if why is not None or not matches(ad.node_selector, me.labels):
                    continue
                targets = [
                    name
                    for name in (ad.peers or tuple(peers))
                    if name in peers and matches(peers[name].node_selector, me.labels)
                ]
                if not targets:
                    continue
                length = ad.aggregation_length if vip.version == 4 else ad.aggregation_length_v6
                prefix = ipaddress.ip_network(f"{vip}/{length}", strict=False)
                key = (prefix, _communities(ad), _large(ad), ad.local_pref)
                bgp_routes[key].update(targets)
                announced = True
                by_address = by_address or ad.accept == "address"
            if announced:
                here = True
                if by_address:
                    local_binds.setdefault(vip, "lo")
                else:
                    local_routed.add(vip)
                reasons.append(f"bgp: announced from {inp.node}")
            else:
                reasons.append(f"bgp: not announced from {inp.node}: {why or 'no advertisement or peer selects this node'}")

        # -- kernel route export ---------------------------------------------
        route_exports = [ex for ex in config.route_exports if _applies(ex, pool, pool_labels)]
        if route_exports:
            modes.append("export")
            why = _member_eligible(me, specs)
            exported = False
            for ex in route_exports:
                if why is not None or not matches(ex.node_selector, me.labels):
                    continue
                prefix = ipaddress.ip_network(vip)
                exports.append(ExportRoute(prefix, ex.table, ex.protocol, ex.interface, ex.metric))
                if ex.accept == "local-route":
                    exports.append(ExportRoute(prefix, RT_TABLE_LOCAL, ex.protocol, ex.interface, kind="local"))
                else:
                    local_binds.setdefault(vip, ex.interface)
                exported = True
            if exported:
                here = True
                reasons.append(f"export: installed in kernel table on {inp.node}")
            else:
                reasons.append(f"export: not installed on {inp.node}: {why or 'no route_export selects this node'}")

        if not modes:
            reasons.append("no l2_advertisement, bgp_advertisement or route_export covers pool " + repr(pool))
        decisions.append(
            VipDecision(
                vip=vip,
                services=names,
                owner=owner,
                interface=(interface or local_binds.get(vip) or ("lo" if vip in local_routed else None))
                if here else None,
                reason="; ".join(reasons),
                candidates=candidates,
                pool=pool,
                modes=tuple(modes),
                announced_here=here,
            )
        )

    # VIPs announced at layer 3 must still be accepted locally: bind them (no ARP/NDP).
    l2_bound = {intent.vip for intent in l2_intents}
    for vip, ifname in sorted(local_binds.items(), key=lambda kv: (kv[0].version, int(kv[0]))):
        if vip not in l2_bound:
            names = tuple(a.service for a in by_vip[vip])
            l2_intents.append(L2Intent(vip=vip, interface=ifname, mode=L2Mode.LOCAL, services=names,
                                       announce_burst=0, announce_interval=0.0))
    # BGP VIPs accepted through local routes: one per aggregated prefix, not per VIP.
    # VIPs bound anyway (layer 2 or accept = "address") need none.
    bound = l2_bound | set(local_binds)
    for prefix in local_route_prefixes(local_routed - bound):
        exports.append(ExportRoute(prefix, RT_TABLE_LOCAL, LOCAL_ROUTE_PROTO, "lo", kind="local"))

    routes = tuple(
        BgpRoute(prefix=key[0], peers=tuple(sorted(targets)), communities=key[1],
                 large_communities=key[2], local_pref=key[3])
        for key, targets in sorted(bgp_routes.items(), key=lambda kv: (kv[0][0].version, kv[0][0], str(kv[0][1:])))
    )
    return Plan(l2=tuple(l2_intents), bgp=routes, exports=tuple(exports), decisions=tuple(decisions))


def _l2_fit(
    vip: IPAddress, member: Member, ads: Sequence[L2AdvertisementConfig]
) -> tuple[L2AdvertisementConfig, str] | None:
    """The first advertisement selecting ``member`` with an interface that fits ``vip``."""
    for ad in ads:
        if not matches(ad.node_selector, member.labels):
            continue
        names = fitting_interfaces(vip, member.interfaces, ad.interfaces)
        if names:
            return ad, names[0]
    return None


def _communities(ad: BgpAdvertisementConfig) -> tuple[tuple[int, int], ...]:
    out = []
    for value in ad.communities:
        if value.startswith("large:"):
            continue
        high, low = value.split(":")
        out.append((int(high), int(low)))
    return tuple(sorted(set(out)))


def _large(ad: BgpAdvertisementConfig) -> tuple[tuple[int, int, int], ...]:
    out = []
    for value in ad.communities:
        if value.startswith("large:"):
            a, b, c = value[len("large:"):].split(":")
            out.append((int(a), int(b), int(c)))
    return tuple(sorted(set(out)))
