"""The Adj-RIB-Out (RFC 4271 §3.2): :class:`~lbd.bgp.rib.AdjRibOut` on its own
(desired vs advertised, diffed into UPDATE batches), then what an Established
session sends from it: differences only, route refresh (RFC 7313), a reconnect
resending everything, End-of-RIB only after the first table (RFC 4724 §2)."""

from __future__ import annotations

import ipaddress

from bgp_helpers import LOCAL, REMOTE, announced_prefixes, cfg, establish, messages, peer_open, routes
from hypothesis import given, settings
from hypothesis import strategies as st

from lbd.bgp import codec
from lbd.bgp.codec import MultiprotocolCap, RouteRefresh, RouteRefreshCap, Update
from lbd.bgp.events import ConnectRequested, EndOfRibSent, State
from lbd.bgp.fsm import Session
from lbd.bgp.packing import EncodeContext, RouteAttrs, UpdatePacker
from lbd.bgp.rib import AdjRibOut, UpdateBatch
from lbd.bgp.settings import IPV4_UNICAST, IPV6_UNICAST
from lbd.model import IPNetwork

NH4 = ipaddress.IPv4Address("10.77.0.1")
NH6 = ipaddress.IPv6Address("fd77::1")
V6 = ipaddress.IPv6Network("fd77:5::1/128")
BOTH = (IPV4_UNICAST, IPV6_UNICAST)


def packer(next_hop_v6: ipaddress.IPv6Address | None = NH6) -> UpdatePacker:
    return UpdatePacker(EncodeContext(local_as=64512, ibgp=False, four_octet=True, next_hop_v4=NH4, next_hop_v6=next_hop_v6))


def opened(desired: dict[IPNetwork, RouteAttrs] | None = None, **packer_kw: object) -> AdjRibOut:
    rib = AdjRibOut()
    if desired is not None:
        rib.set_desired(desired)
    rib.open(packer(**packer_kw), BOTH)  # type: ignore[arg-type]
    return rib


def received(batch: UpdateBatch | None, table: dict[IPNetwork, RouteAttrs | None] | None = None) -> dict[IPNetwork, RouteAttrs | None]:
    """Apply the batch's UPDATEs to a peer's view of our routes (prefix -> communities)."""
    table = {} if table is None else table
    for m in (messages(b"".join(batch.messages)) if batch is not None else []):
        assert isinstance(m, Update)
        for p in m.withdrawn_all():
            table.pop(p, None)
        for p in m.announced():
            table[p] = RouteAttrs(communities=m.attributes.communities)
    return table


# --------------------------------------------------------- AdjRibOut directly


def test_nothing_is_packed_until_a_connection_is_established() -> None:
    rib = AdjRibOut()
    assert not rib.ready and not rib.is_open
    rib.set_desired(routes(3))
    assert rib.ready and rib.diff() is None and rib.refresh(IPV4_UNICAST) is None
    assert dict(rib.desired) == routes(3) and dict(rib.advertised) == {}


def test_initial_sends_the_whole_table_and_counts_per_family() -> None:
    table = routes(3)
    table[V6] = RouteAttrs()
    rib = opened(table)
    batch, counts = rib.initial()
    assert rib.initial_sent
    assert batch is not None and (batch.announced, batch.withdrawn) == (4, 0)
    assert set(received(batch)) == set(table)
    assert counts == {IPV4_UNICAST: 3, IPV6_UNICAST: 1}
    assert dict(rib.advertised) == table


def test_initial_over_an_empty_table_is_no_update_but_counts_zero() -> None:
    rib = opened({})
    assert rib.initial() == (None, {IPV4_UNICAST: 0, IPV6_UNICAST: 0})


def test_diff_withdraws_removed_and_announces_changed_only() -> None:
    rib = opened(routes(3))
    rib.initial()
    first, second, third = routes(3)
    rib.set_desired({first: RouteAttrs(), second: RouteAttrs(communities=((1, 1),))})
    batch = rib.diff()
    assert batch is not None and (batch.announced, batch.withdrawn) == (1, 1)
    peer_view = received(batch, {p: RouteAttrs() for p in (first, second, third)})
    assert peer_view == {first: RouteAttrs(), second: RouteAttrs(communities=((1, 1),))}
    # Equal (not identical) attributes are not a change; the same table twice sends nothing.
    rib.set_desired({first: RouteAttrs(), second: RouteAttrs(communities=((1, 1),))})
    assert rib.diff() is None


def test_a_family_without_next_hop_or_not_negotiated_is_held_back() -> None:
    table = {**routes(1), V6: RouteAttrs()}
    rib = opened(table, next_hop_v6=None)
    batch, counts = rib.initial()
    assert batch is not None and set(received(batch)) == set(routes(1))
    assert counts[IPV6_UNICAST] == 0 and V6 not in rib.advertised
    only_v4 = AdjRibOut()
    only_v4.set_desired(table)
    only_v4.open(packer(), (IPV4_UNICAST,))
    assert set(only_v4.advertised) == set() and set(received(only_v4.initial()[0])) == set(routes(1))


def test_refresh_repacks_one_family_of_what_was_advertised() -> None:
    table = {**routes(2), V6: RouteAttrs()}
    rib = opened(table)
    rib.initial()
    v4 = rib.refresh(IPV4_UNICAST)
    assert v4 is not None and (v4.announced, v4.withdrawn) == (2, 0) and set(received(v4)) == set(routes(2))
    v6 = rib.refresh(IPV6_UNICAST)
    assert v6 is not None and set(received(v6)) == {V6}


def test_reset_and_reopen_resend_everything_close_stops_packing() -> None:
    rib = opened(routes(2))
    rib.initial()
    rib.close()
    assert not rib.is_open and rib.diff() is None
    rib.reset()
    assert dict(rib.advertised) == {}
    rib.open(packer(), BOTH)
    assert not rib.initial_sent
    batch, _ = rib.initial()
    assert set(received(batch)) == set(routes(2))


def test_adopt_takes_a_copy_of_the_desired_table() -> None:
    loser = AdjRibOut()
    loser.set_desired(routes(2))
    winner = AdjRibOut()
    winner.adopt(loser)
    assert winner.ready and dict(winner.desired) == routes(2)
    loser.set_desired({})
    assert dict(winner.desired) == routes(2)
    # A loser that never had a table passes on "not ready": no End-of-RIB over nothing.
    fresh = AdjRibOut()
    fresh.adopt(AdjRibOut())
    assert not fresh.ready


_PREFIXES = [ipaddress.IPv4Network((0x0A4D0000 + i, 32)) for i in range(12)] + [
    ipaddress.IPv6Network((0xFD77 << 112 | i, 128)) for i in range(6)
]
_ATTRS = [RouteAttrs(), RouteAttrs(communities=((1, 1),)), RouteAttrs(communities=((2, 2),))]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(_PREFIXES), st.sampled_from(_ATTRS), max_size=12), min_size=1, max_size=6))
def test_the_peer_converges_to_the_desired_table(tables: list[dict[IPNetwork, RouteAttrs]]) -> None:
    """Whatever sequence of tables, the peer applying our UPDATEs holds exactly
    the desired routes, and advertised says so."""
    rib = opened({})
    peer_view = received(rib.initial()[0])
    for table in tables:
        rib.set_desired(table)
        peer_view = received(rib.diff(), peer_view)
        assert peer_view == table
        assert dict(rib.advertised) == table


def test_the_desired_table_is_the_owners_dict_changed_with_update_desired() -> None:
    """``set_desired`` keeps the owner's dict (the announcer's table: no second copy of
    100,000 routes, issue 9). The owner changes it in place and then tells the RIB which
    prefixes it changed: the diff still sends exactly those, and advertised stays apart."""
    table = routes(3)
    rib = opened(table)
    assert rib.desired is table
    peer_view = received(rib.initial()[0])
    first, second, _ = list(table)
    table[first] = RouteAttrs(communities=((7, 7),))  # the owner's own change, first
    del table[second]
    rib.update_desired({first: table[first], second: None})
    batch = rib.diff()
    assert batch is not None and (batch.announced, batch.withdrawn) == (1, 1)
    peer_view = received(batch, peer_view)
    assert peer_view == table and dict(rib.advertised) == table and rib.advertised is not table
    assert rib.diff() is None


# ------------------------------------------------- what an Established session sends


def test_changes_send_only_the_difference() -> None:
    s = Session(cfg())
    s.set_routes(routes(100), 0)
    establish(s)
    s.data_to_send()
    new = routes(99, start=1)  # drop .0, keep 1..99
    new[ipaddress.IPv4Network("10.88.0.1/32")] = RouteAttrs(communities=((9, 9),))
    s.set_routes(new, 1)
    out = [m for m in messages(s.data_to_send()) if isinstance(m, Update)]
    assert [p for u in out for p in u.withdrawn] == [ipaddress.IPv4Network("10.77.0.0/32")]
    assert [p for u in out for p in u.announced()] == [ipaddress.IPv4Network("10.88.0.1/32")]
    s.set_routes(new, 2)
    assert s.data_to_send() == b""  # level-triggered: nothing new, nothing sent


def test_attribute_change_reannounces() -> None:
    s = Session(cfg())
    s.set_routes(routes(2), 0)
    establish(s)
    s.data_to_send()
    changed = routes(2)
    first = next(iter(changed))
    changed[first] = RouteAttrs(communities=((1, 1),))
    s.set_routes(changed, 1)
    out = [m for m in messages(s.data_to_send()) if isinstance(m, Update)]
    assert [p for u in out for p in u.announced()] == [first]
    assert out[0].attributes.communities == ((1, 1),)


def test_route_refresh_resends_inside_borr_eorr() -> None:
    s = Session(cfg())
    s.set_routes(routes(5), 0)
    establish(s)
    s.data_to_send()
    s.handle_bytes(codec.encode_route_refresh(RouteRefresh(1, 1)), 1)
    out = messages(s.data_to_send())
    assert out[0] == RouteRefresh(1, 1, codec.RR_BORR) and out[-1] == RouteRefresh(1, 1, codec.RR_EORR)
    assert sorted(p for m in out if isinstance(m, Update) for p in m.announced()) == sorted(routes(5))
    # Without enhanced route refresh: just the routes.
    s2 = Session(cfg())
    s2.set_routes(routes(5), 0)
    establish(s2, caps=(MultiprotocolCap(1, 1), RouteRefreshCap()))
    s2.data_to_send()
    s2.handle_bytes(codec.encode_route_refresh(RouteRefresh(1, 1)), 1)
    out2 = messages(s2.data_to_send())
    assert all(isinstance(m, Update) for m in out2) and len(announced_prefixes(codec.encode_keepalive())) == 0
    assert sorted(p for m in out2 for p in m.announced()) == sorted(routes(5))
    # A family that was not negotiated is ignored.
    s2.handle_bytes(codec.encode_route_refresh(RouteRefresh(2, 1)), 2)
    assert s2.data_to_send() == b""


def test_reconnect_resends_whole_adj_rib_out() -> None:
    s = Session(cfg())
    s.set_routes(routes(50), 0)
    establish(s)
    assert len(announced_prefixes(s.data_to_send())) == 50
    s.connection_lost(10)
    s.set_routes(routes(60), 10)  # changes while down are kept
    t = s.next_deadline()
    assert any(isinstance(e, ConnectRequested) for e in s.tick(t))
    s.connection_made(t, LOCAL, REMOTE)
    s.handle_bytes(peer_open(), t)
    s.handle_bytes(codec.encode_keepalive(), t)
    out = messages(s.data_to_send())
    assert sorted(p for m in out if isinstance(m, Update) for p in m.announced()) == sorted(routes(60))
    assert [m.end_of_rib() for m in out if isinstance(m, Update)][-2:] == [(1, 1), (2, 1)]


def test_ten_thousand_prefixes_pack_into_few_updates() -> None:
    s = Session(cfg())
    many = routes(5000)
    many.update({ipaddress.IPv4Network((0x0A580000 + i, 32)): RouteAttrs(communities=((1, 2),)) for i in range(5000)})
    s.set_routes(many, 0)
    establish(s)
    data = s.data_to_send()
    reader = codec.MessageReader()
    reader.feed(data)
    sizes = []
    total = 0
    for t, b in reader:
        if t == 2:
            sizes.append(codec.HEADER_LEN + len(b))
            total += len(codec.decode_update(b, ibgp=False).announced())
    assert total == 10_000
    assert max(sizes) <= 4096
    assert len(sizes) <= 20  # 13 + 2 EoR in practice; one prefix per UPDATE would be 10,000


def test_ipv6_route_without_next_hop_is_held_back() -> None:
    s = Session(cfg())
    s.set_routes({ipaddress.IPv6Network("fd77:5::1/128"): RouteAttrs()}, 0)
    establish(s)
    assert announced_prefixes(s.data_to_send()) == []
    assert len(s.advertised) == 0


def test_no_end_of_rib_before_the_first_table() -> None:
    """A session that comes up before its owner set the routes waits: an
    End-of-RIB over an empty table would make a graceful-restart helper flush
    the routes it kept for us."""
    s = Session(cfg(graceful_restart=True), restarting=True)
    establish(s)
    assert s.state == State.ESTABLISHED
    assert [m for m in messages(s.data_to_send()) if isinstance(m, Update)] == []
    events = s.set_routes(routes(2), 5.0)
    out = [m for m in messages(s.data_to_send()) if isinstance(m, Update)]
    assert len([p for u in out for p in u.announced()]) == 2
    assert [u.end_of_rib() for u in out[-2:]] == [(1, 1), (2, 1)]
    assert [e.prefixes for e in events if isinstance(e, EndOfRibSent)] == [2, 0]
    # An empty first table is a table too: End-of-RIB at once.
    s2 = Session(cfg())
    s2.set_routes({}, 0)
    establish(s2)
    assert [m.end_of_rib() for m in messages(s2.data_to_send()) if isinstance(m, Update)] == [(1, 1), (2, 1)]
