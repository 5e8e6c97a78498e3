"""BGP's planner: every eligible node announces, to the peers that select it.

Eligible for BGP means, besides ``inputs.refusal``: selected by an applicable
advertisement's node selector, with at least one of its peers (all of them when it
names none) selecting this node too. VIPs aggregate into the advertisement's prefix
length; routes with equal attributes merge across VIPs (``merge_routes``).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, NamedTuple

from lbd.config.schema import BgpAdvertisementConfig
from lbd.model import BgpRoute, IPAddress, IPNetwork
from lbd.planner.inputs import NodeView, VipInput, refusal
from lbd.selectors import matches


class RouteKey(NamedTuple):
    """A route's prefix and attributes: VIPs with an equal key share one route."""

    prefix: IPNetwork
    communities: tuple[tuple[int, int], ...]
    large_communities: tuple[tuple[int, int, int], ...]
    local_pref: int | None


@dataclass(frozen=True, slots=True)
class BgpPlan:
    """BGP's decision for one VIP on this node."""

    routes: tuple[tuple[RouteKey, tuple[str, ...]], ...]  # (route, peer names); empty: not announced here
    by_address: bool  # an advertisement says accept = "address": bind the VIP on lo, not a local route
    reason: str  # for lbd-ctl status, prefixed "bgp: "

    @property
    def announced(self) -> bool:
        return bool(self.routes)


def plan_bgp(view: NodeView, vip: VipInput) -> BgpPlan | None:
    """The routes this node announces for ``vip``; None when no ``bgp_advertisement``
    covers its pool."""
    ads = _pool_setup(view, vip.pool)
    if not ads:
        return None
    why = refusal(view.me, vip.specs)
    routes: list[tuple[RouteKey, tuple[str, ...]]] = []
    by_address = False
    for ad, targets, communities, large in ads if why is None else ():
        if targets:
            routes.append((RouteKey(_prefix(vip.vip, ad), communities, large, ad.local_pref), targets))
            by_address = by_address or ad.accept == "address"
    if routes:
        reason = f"bgp: announced from {view.node}"
    else:
        reason = f"bgp: not announced from {view.node}: {why or 'no advertisement or peer selects this node'}"
    return BgpPlan(tuple(routes), by_address, view.shared(reason))


_Setup = list[tuple[BgpAdvertisementConfig, tuple[str, ...], tuple[tuple[int, int], ...],
                    tuple[tuple[int, int, int], ...]]]


def _pool_setup(view: NodeView, pool: str) -> _Setup:
    """The advertisements covering ``pool``, each with the peers it announces to from this node
    (empty: its node selector or no peer selects this node) and its communities: the same for
    every VIP of the pool, derived once per view."""
    key = ("bgp", pool)
    setup = view.memo.get(key)
    if setup is None:
        setup = [(ad, view.shared(_selected_peers(view, ad)) if matches(ad.node_selector, view.me.labels) else (),
                  _communities(ad), _large(ad))
                 for ad in view.config.bgp_advertisements if view.covers(ad, pool)]
        view.memo[key] = setup
    return setup  # type: ignore[return-value]


def merge_routes(plans: Iterable[BgpPlan]) -> tuple[BgpRoute, ...]:
    """Every VIP's routes as one table: equal routes merged, their peers united, sorted."""
    peers_of: dict[RouteKey, set[str]] = defaultdict(set)
    for bgp in plans:
        for key, targets in bgp.routes:
            peers_of[key].update(targets)
    ordered = sorted(peers_of.items(), key=lambda kv: route_order(kv[0]))
    return tuple(_route(key, targets) for key, targets in ordered)


def route_order(key: RouteKey) -> tuple[int, int, int, str]:
    """The table's order: by family, then prefix (address, then length, as ``ip_network``
    sorts), then attributes."""
    return (key.prefix.version, int(key.prefix.network_address), key.prefix.prefixlen, str(key[1:]))


def _route(key: RouteKey, targets: Iterable[str]) -> BgpRoute:
    return BgpRoute(prefix=key.prefix, peers=tuple(sorted(targets)), communities=key.communities,
                    large_communities=key.large_communities, local_pref=key.local_pref)


class RouteMerge:
    """``merge_routes`` kept up to date as VIPs' plans come and go: a VIP's change touches
    only its own routes (peers counted per route, so a peer stays while any VIP names it)."""

    def __init__(self) -> None:
        # route -> ((peer, how many VIPs name it), ...), by peer: a tuple of shared pairs is
        # 48 bytes for the usual one peer, a dict 180 (issue 9: one per route at 100,000)
        self._peers: dict[RouteKey, tuple[tuple[str, int], ...]] = {}
        # Every route, in route_order. Searched with bisect's key (the order of the few routes
        # a search visits is computed then): a kept list of every route's order cost a tuple
        # and an int per route, about 12 MB at 100,000 (issue 9).
        self._routes: list[BgpRoute] = []
        self._dirty: set[RouteKey] = set()
        # Equal attribute texts, peer tuples and (peer, count) pairs shared by every route.
        self._shared: dict[object, object] = {}

    def _order_of(self, key: RouteKey) -> tuple[int, int, int, str]:
        """``route_order(key)``, its attribute text shared with the routes that have the same."""
        return self._order_parts(key.prefix, key[1:])

    def _route_order(self, route: BgpRoute) -> tuple[int, int, int, str]:
        """``route_order`` of the key ``route`` was made from (same prefix and attributes)."""
        return self._order_parts(route.prefix, (route.communities, route.large_communities, route.local_pref))

    def _order_parts(self, prefix: IPNetwork, attrs: tuple[object, ...]) -> tuple[int, int, int, str]:
        text = self._shared.get(attrs)
        if text is None:
            text = self._shared[attrs] = str(attrs)
        return (prefix.version, int(prefix.network_address), prefix.prefixlen, text)  # type: ignore[return-value]

    def _route_of(self, key: RouteKey, counts: tuple[tuple[str, int], ...]) -> BgpRoute:
        peers = tuple(peer for peer, _ in counts)  # sorted: counts are kept by peer
        return BgpRoute(prefix=key.prefix, peers=self._shared.setdefault(peers, peers),  # type: ignore[arg-type]
                        communities=key.communities, large_communities=key.large_communities,
                        local_pref=key.local_pref)

    def _count(self, key: RouteKey, targets: Iterable[str], step: int) -> None:
        counts = dict(self._peers.get(key, ()))
        for peer in targets:
            counts[peer] = counts.get(peer, 0) + step
            if not counts[peer]:
                del counts[peer]
        if counts:
            pairs = tuple(self._shared.setdefault(pair, pair) for pair in sorted(counts.items()))
            # The counts themselves shared too: the usual route's are (("router", 1),), alike
            # for every VIP (48 bytes a route at 100,000, issue 9).
            self._peers[key] = self._shared.setdefault(("counts", pairs), pairs)  # type: ignore[assignment]
        else:
            del self._peers[key]
        self._dirty.add(key)

    def add(self, plan: BgpPlan) -> None:
        for key, targets in plan.routes:
            self._count(key, targets, 1)

    def remove(self, plan: BgpPlan) -> None:
        for key, targets in plan.routes:
            self._count(key, targets, -1)

    def table(self) -> tuple[BgpRoute, ...]:
        routes = self._routes
        if len(self._dirty) * 8 > len(routes):  # many changed (a full pass): sort once
            keys = sorted(self._peers, key=self._order_of)
            self._routes = routes = [self._route_of(key, self._peers[key]) for key in keys]
            del keys
            self._dirty.clear()
        for key in self._dirty:
            counts = self._peers.get(key)
            order = self._order_of(key)
            i = bisect.bisect_left(routes, order, key=self._route_order)
            present = i < len(routes) and self._route_order(routes[i]) == order
            if counts is None:
                if present:
                    del routes[i]
            elif present:
                routes[i] = self._route_of(key, counts)
            else:
                routes.insert(i, self._route_of(key, counts))
        self._dirty.clear()
        return tuple(self._routes)


def _selected_peers(view: NodeView, ad: BgpAdvertisementConfig) -> tuple[str, ...]:
    """The peers ``ad`` announces to (all when it names none) that select this node."""
    return tuple(
        name
        for name in (ad.peers or tuple(view.peers))
        if name in view.peers and matches(view.peers[name].node_selector, view.me.labels)
    )


def _prefix(vip: IPAddress, ad: BgpAdvertisementConfig) -> IPNetwork:
    length = ad.aggregation_length if vip.version == 4 else ad.aggregation_length_v6
    if length == vip.max_prefixlen:
        return host_network(vip)
    network = ipaddress.IPv4Network if vip.version == 4 else ipaddress.IPv6Network
    return network((int(vip), length), strict=False)  # from the integer: no text to parse


def host_network(vip: IPAddress) -> IPNetwork:
    """``ip_network(vip)``, the /32 or /128 of one VIP, built around ``vip`` itself.

    The network classes' constructor parses its argument, makes a second address object
    and gives each /32 a ``hosts`` closure of its own: about 290 bytes and 4 µs a VIP, a
    route per VIP at 100,000 (issue 9). The result is equal, hashes and prints the same
    (tests/unit/test_planner_batches.py checks it against the constructor); its ``hosts()``
    is the class's (an empty iterator for a /32, where the constructor's closure lists the
    address), which lbd never calls on a route."""
    cls = ipaddress.IPv4Network if vip.version == 4 else ipaddress.IPv6Network
    try:
        net = cls.__new__(cls)
        net.network_address = vip
        net.netmask, net._prefixlen = cls._make_netmask(vip.max_prefixlen)  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - another Python's ipaddress internals
        return cls((int(vip), vip.max_prefixlen))
    return net


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
