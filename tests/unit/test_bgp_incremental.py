"""The BGP announcer's per-change path (issue 9): after any sequence of plans, what it hands each
peer (``update_routes`` deltas on a first ``set_routes``) equals the full apply of the last plan,
and an Adj-RIB-Out diffing only the touched prefixes leaves the peer with the desired table."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

from bgp_helpers import messages
from hypothesis import given, settings
from hypothesis import strategies as st

from lbd.bgp.announcer import BgpAnnouncer, route_window
from lbd.bgp.codec import Update
from lbd.bgp.events import State
from lbd.bgp.packing import EncodeContext, RouteAttrs, UpdatePacker
from lbd.bgp.rib import AdjRibOut
from lbd.bgp.settings import IPV4_UNICAST, IPV6_UNICAST
from lbd.model import BgpRoute, IPNetwork
from lbd.planner.bgp import RouteKey, route_order

PREFIXES = [ipaddress.ip_network(p) for p in ("10.77.0.1/32", "10.77.0.2/32", "10.77.0.0/24", "10.77.1.1/32",
                                              "fd77::1/128", "fd77::/64")]
PEERS = ["r1", "r2", "r3"]
# A route: its prefix, attributes (two routes of one prefix may differ only there) and peers.
# Few prefixes: plans often hold two routes of one prefix (a peer's table keeps the last).
ROUTE = st.tuples(st.sampled_from(PREFIXES[1:4]), st.sampled_from([(), ((64512, 1),)]),
                  st.sets(st.sampled_from(PEERS), min_size=1))


def table(chosen: list[tuple], previous: dict[tuple, BgpRoute]) -> tuple[tuple[BgpRoute, ...], dict[tuple, BgpRoute]]:
    """The plan's table as the planner builds it: in route order, an unchanged route the same object."""
    routes: dict[tuple, BgpRoute] = {}
    for prefix, communities, peers in chosen:
        key = (prefix, communities)
        old = previous.get(key)
        new = BgpRoute(prefix=prefix, peers=tuple(sorted(peers)), communities=communities)
        routes[key] = old if old is not None and old == new else new
    ordered = sorted(routes.items(), key=lambda kv: route_order(RouteKey(kv[0][0], kv[0][1], (), None)))
    return tuple(r for _, r in ordered), routes


class FakeSpeaker:
    """What a peer's session would hold: set_routes replaces, update_routes changes."""

    def __init__(self) -> None:
        self.table: dict[IPNetwork, RouteAttrs] | None = None
        self.session = SimpleNamespace(state=State.IDLE, advertised={})

    def set_routes(self, routes: dict[IPNetwork, RouteAttrs]) -> None:
        self.table = dict(routes)

    def update_routes(self, changes: dict[IPNetwork, RouteAttrs | None]) -> None:
        assert self.table is not None, "a delta before the first table"
        assert changes, "an empty delta"
        for prefix, attrs in changes.items():
            if attrs is None:
                del self.table[prefix]
            else:
                self.table[prefix] = attrs


def full_tables(routes: tuple[BgpRoute, ...]) -> dict[str, dict[IPNetwork, RouteAttrs]]:
    tables: dict[str, dict[IPNetwork, RouteAttrs]] = {}
    for route in routes:
        for peer in route.peers:
            tables.setdefault(peer, {})[route.prefix] = RouteAttrs.of(route)
    return tables


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(ROUTE, max_size=8), min_size=1, max_size=10))
def test_announcer_deltas_equal_the_full_apply(plans: list[list[tuple]]) -> None:
    announcer = BgpAnnouncer("n1")
    speakers = {peer: FakeSpeaker() for peer in PEERS}
    announcer._speakers = speakers  # type: ignore[assignment]
    by_key: dict[tuple, BgpRoute] = {}
    for chosen in plans:
        routes, by_key = table(chosen, by_key)
        # Like the daemon's first pass, a growing prefix of the table first, now and then.
        if len(routes) > 2:
            announcer.apply(routes[:2])
        announcer.apply(routes)
        want = full_tables(routes)
        for peer, speaker in speakers.items():
            assert speaker.table == want.get(peer, {})
            assert announcer._tables.get(peer, {}) == want.get(peer, {})


def test_route_window_finds_the_differing_middle() -> None:
    a, b, c, d = object(), object(), object(), object()
    assert route_window([a, b, d], [a, c, d]) == (1, 2, 2)
    assert route_window([a, d], [a, b, d]) == (1, 1, 2)
    assert route_window([a, b], [a, b]) == (2, 2, 2)
    assert route_window([], [a]) == (0, 0, 1)


def peer_view(batch, view: dict[IPNetwork, object]) -> None:  # type: ignore[no-untyped-def]
    for m in (messages(b"".join(batch.messages)) if batch is not None else []):
        assert isinstance(m, Update)
        for p in m.withdrawn_all():
            view.pop(p, None)
        for p in m.announced():
            view[p] = m.attributes.communities


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(PREFIXES), st.sampled_from([(), ((64512, 1),)])),
       st.lists(st.dictionaries(st.sampled_from(PREFIXES), st.one_of(st.none(), st.sampled_from([(), ((64512, 2),)])),
                                max_size=4), max_size=8), st.lists(st.booleans(), max_size=8))
def test_rib_diffing_touched_prefixes_leaves_the_peer_with_the_desired_table(first, steps, established) -> None:  # type: ignore[no-untyped-def]
    rib = AdjRibOut()
    rib.set_desired({p: RouteAttrs(communities=c) for p, c in first.items()})
    ctx = EncodeContext(local_as=64512, ibgp=False, four_octet=True, next_hop_v4=ipaddress.IPv4Address("10.77.0.9"),
                        next_hop_v6=ipaddress.IPv6Address("fd77::9"))
    rib.open(UpdatePacker(ctx), (IPV4_UNICAST, IPV6_UNICAST))
    view: dict[IPNetwork, object] = {}
    peer_view(rib.initial()[0], view)
    for i, step in enumerate(steps):
        rib.update_desired({p: (None if c is None else RouteAttrs(communities=c)) for p, c in step.items()})
        if i < len(established) and not established[i]:
            rib.close()  # not Established: nothing packed, the touched prefixes wait
            rib.open(UpdatePacker(ctx), (IPV4_UNICAST, IPV6_UNICAST))
            view = {}
            peer_view(rib.initial()[0], view)
            continue
        peer_view(rib.diff(), view)
        assert view == {p: a.communities for p, a in rib.desired.items()}
        assert dict(rib.advertised) == dict(rib.desired)
