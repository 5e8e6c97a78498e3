"""Node facts records (lbd.cluster.facts): codec, merge, chaining, repair, on a simulated clock."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbd.cluster import facts
from lbd.cluster.facts import (
    DELTA_BUDGET,
    MAX_DELTA_BROADCASTS,
    REPAIR_GRACE,
    REPAIR_INTERVAL,
    Broadcast,
    FactsDelta,
    FactsError,
    FactsReplica,
    FactsRequest,
    NodeFacts,
    Send,
)

NOW_MS = 1_780_000_000_000
BASE = ipaddress.ip_address("10.77.0.0")


def vips(n: int, step: int = 1, start: int = 0) -> list[ipaddress.IPv4Address]:
    return [BASE + start + i * step for i in range(n)]  # type: ignore[misc]


def deliver(replica: FactsReplica, outgoing: list[facts.Outgoing], now: float = 0.0) -> list[facts.Outgoing]:
    replies: list[facts.Outgoing] = []
    for item in outgoing:
        if isinstance(item, Send) and item.node != replica.node:
            continue
        replies += replica.receive(facts.decode(item.payload), NOW_MS, now, ["a", "b"])[1]
    return replies


# -- codec ------------------------------------------------------------------------


def test_records_round_trip_with_both_families() -> None:
    record = NodeFacts("n1", 42, frozenset({*vips(3), ipaddress.ip_address("fd77::1"), ipaddress.ip_address("fd77::9")}),
                       frozenset({"static/web", "static/dns"}))
    assert facts.decode(facts.encode_records([record, NodeFacts("n2", 1)])) == (record, NodeFacts("n2", 1))


def test_delta_and_request_round_trip() -> None:
    delta = FactsDelta("n1", 5, 9, frozenset(vips(2)), frozenset(vips(1, start=100)), frozenset({"a"}), frozenset({"b"}))
    assert facts.decode(facts.encode_delta(delta)) == delta
    request = FactsRequest("n2", ("n1", "n3"))
    assert facts.decode(facts.encode_request(request)) == request


def test_contiguous_vips_travel_as_ranges() -> None:
    # 10,000 contiguous VIPs in one range item; every other one as 5-byte singles.
    dense = facts.encode_records([NodeFacts("n1", 1, frozenset(vips(10_000)))])
    sparse = facts.encode_records([NodeFacts("n1", 1, frozenset(vips(10_000, step=2)))])
    assert len(dense) < 40
    assert 50_000 <= len(sparse) < 50_100
    assert len(facts.decode(dense)[0].holds) == 10_000  # type: ignore[index]


@pytest.mark.parametrize(("data", "match"), [
    (b"", "header cut short"),
    (b"\x02\x01\x00\x00\x00\x00", "format version 2"),
    (b"\x01\x09", "unknown facts message kind 9"),
    (b"\x01\x01\xff\xff\xff\xff", "do not fit"),
    (b"\x01\x01\x00\x00\x00\x00\x00", "1 bytes after the message"),
    (facts.encode_records([NodeFacts("n", 1, failing=frozenset({"abcdefghij"}))])[:-3], "failing cut short"),
    (b"\x01\x01\x00\x00\x00\x01\x00\x01n" + b"\xff" * 8 + b"\x00" * 8, r"past 2\^63-1"),
    (b"\x01\x01\x00\x00\x00\x01\x00\x01n" + b"\x00" * 7 + b"\x01" + b"\x00\x00\x00\x01\x05" + b"\x00" * 8,
     "unknown address tag 0x5"),
    (b"\x01\x01\x00\x00\x00\x01\x00\x01n" + b"\x00" * 7 + b"\x01" + b"\x00\x00\x00\x01\x14\xff\xff\xff\xfe"
     + b"\x00\x00\x00\x05" + b"\x00" * 4, "runs past the last address"),
    (b"\x01\x01\x00\x00\x00\x01\x00\x01n" + b"\x00" * 7 + b"\x01" + b"\x00\x00\x00\x01\x14\x0a\x00\x00\x00"
     + b"\xff\xff\xff\x00" + b"\x00" * 4, "more than 200000 addresses"),
    (b"\x01\x01\x00\x00\x00\x01\x00\x01\xff" + b"\x00" * 16, "not UTF-8"),
    (b"\x01\x02\x00\x01n" + b"\x00" * 7 + b"\x02" + b"\x00" * 7 + b"\x02" + b"\x00" * 16, "not later"),
])
def test_hostile_input_is_rejected_precisely(data: bytes, match: str) -> None:
    with pytest.raises(FactsError, match=match):
        facts.decode(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_garbage_raises_only_facts_error(data: bytes) -> None:
    for prefix in (b"", b"\x01\x01", b"\x01\x02", b"\x01\x03"):
        try:
            facts.decode(prefix + data)
        except FactsError:
            pass


addresses = st.one_of(
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
    st.integers(0, 300).map(lambda i: BASE + i),  # dense: ranges
)


@settings(max_examples=100, deadline=None)
@given(st.frozensets(addresses, max_size=60), st.frozensets(st.text(min_size=1, max_size=20), max_size=8),
       st.integers(0, 2**63 - 1))
def test_any_record_round_trips(holds, failing, version) -> None:
    record = NodeFacts("n1", version, holds, failing)
    assert facts.decode(facts.encode_records([record])) == (record,)


@settings(max_examples=100, deadline=None)
@given(st.frozensets(addresses, max_size=40), st.binary(min_size=1, max_size=8), st.integers(0, 400))
def test_mutated_messages_raise_only_facts_error(holds, junk, where) -> None:
    data = bytearray(facts.encode_records([NodeFacts("n1", 7, holds, frozenset({"s"}))]))
    data[where % len(data):where % len(data) + len(junk)] = junk
    try:
        facts.decode(bytes(data))
    except FactsError:
        pass


# -- the replica --------------------------------------------------------------


def test_a_small_change_travels_as_the_whole_record() -> None:
    a, b = FactsReplica("a"), FactsReplica("b")
    out = a.publish(vips(3), {"web"}, NOW_MS, ["b"])
    assert len(out) == 1 and isinstance(out[0], Broadcast) and len(out[0].payload) <= DELTA_BUDGET
    assert b.get("a") is None  # unknown until the record arrives
    deliver(b, out)
    got = b.get("a")
    assert got is not None and got.holds == frozenset(vips(3)) and got.failing == {"web"}
    assert a.publish(vips(3), {"web"}, NOW_MS, ["b"]) == []  # unchanged: nothing to send


def test_a_large_change_is_a_chain_of_deltas_in_any_order() -> None:
    a, b = FactsReplica("a"), FactsReplica("b")
    deliver(b, a.publish(vips(150, step=2), set(), NOW_MS, ["b"]))  # 150 singles: deltas already
    out = a.publish(vips(600, step=2), {f"s{i}" for i in range(20)}, NOW_MS + 5, ["b"])
    assert 1 < len(out) <= MAX_DELTA_BROADCASTS
    assert all(isinstance(o, Broadcast) and len(o.payload) <= DELTA_BUDGET for o in out)
    random.Random(3).shuffle(out)
    deliver(b, out)
    assert b.get("a") == a.local


def test_beyond_the_broadcast_budget_the_record_goes_to_each_peer_over_tcp() -> None:
    a, b = FactsReplica("a"), FactsReplica("b")
    out = a.publish(vips(10_000, step=2), {f"svc{i}" for i in range(1000)}, NOW_MS, ["b", "c"])
    assert [type(o) for o in out] == [Send, Send] and {o.node for o in out if isinstance(o, Send)} == {"b", "c"}
    deliver(b, out)
    got = b.get("a")
    assert got is not None and len(got.holds) == 10_000 and len(got.failing) == 1000


def test_a_lost_delta_is_asked_for_after_the_grace_and_answered() -> None:
    a, b = FactsReplica("a"), FactsReplica("b")
    deliver(b, a.publish(vips(2), set(), NOW_MS, ["b"]))
    out = a.publish(vips(600, step=2), set(), NOW_MS + 1, ["b"])
    assert len(out) > 2
    deliver(b, out[1:], now=10.0)  # the first link of the chain is lost
    assert b.get("a") is not None and b.get("a") != a.local  # type: ignore[union-attr]
    announced = {"a": a.local.version}
    assert b.repair(announced, 10.0 + REPAIR_GRACE / 2) == []  # it may still be on its way
    asks = b.repair(announced, 10.0 + REPAIR_GRACE)
    assert asks and isinstance(asks[0], Send) and asks[0].node == "a"
    assert b.repair(announced, 10.0 + REPAIR_GRACE + REPAIR_INTERVAL / 2) == []  # paced
    answer = deliver(a, asks, now=11.0)
    assert [o.node for o in answer if isinstance(o, Send)] == ["b"]
    assert deliver(a, asks, now=11.1) == []  # a second ask so soon: not answered again
    deliver(b, answer, now=11.0)
    assert b.get("a") == a.local
    assert b.repair(announced, 20.0) == []  # caught up


def test_a_version_announced_in_metadata_without_its_record_is_asked_for() -> None:
    b = FactsReplica("b")
    assert b.repair({"a": 7}, 1.0) == []
    assert [o.node for o in b.repair({"a": 7}, 1.0 + REPAIR_GRACE) if isinstance(o, Send)] == ["a"]
    assert b.repair({"a": 0}, 5.0) == []  # an older node that publishes no record: nothing to ask


def test_push_pull_state_teaches_a_new_replica_everything() -> None:
    a, b, c = FactsReplica("a"), FactsReplica("b"), FactsReplica("c")
    deliver(b, a.publish(vips(10_000), {"x"}, NOW_MS, ["b"]))
    b.publish(vips(5, start=20_000), set(), NOW_MS, ["a"])
    c.receive(facts.decode(b.state()), NOW_MS, 0.0, ["a", "b"])
    assert c.get("a") == a.local and c.get("b") == b.local


def test_a_dead_nodes_record_is_dropped_and_not_brought_back() -> None:
    a, b = FactsReplica("a"), FactsReplica("b")
    deliver(b, a.publish(vips(3), set(), NOW_MS, ["b"]))
    state = b.state()
    b.forget("a")
    assert b.get("a") is None
    changed, _ = b.receive(facts.decode(state), NOW_MS, 0.0, [], accept={"a": False, "b": True})
    assert changed == [] and b.get("a") is None
    b.receive(facts.decode(state), NOW_MS, 0.0, [], accept={"a": True})
    assert b.get("a") is not None
    b.prune(["b"])  # gossip reaped it
    assert b.get("a") is None


def test_a_record_about_us_from_a_previous_life_is_refuted() -> None:
    old_life = NodeFacts("a", NOW_MS + 50_000, frozenset(vips(9)), frozenset())
    a = FactsReplica("a")
    a.publish(vips(1), set(), NOW_MS, [])
    changed, out = a.receive((old_life,), NOW_MS, 0.0, ["b"])
    assert changed == [] and a.local.version > old_life.version and a.local.holds == frozenset(vips(1))
    b = FactsReplica("b")
    b.receive((old_life,), NOW_MS, 0.0, [])
    deliver(b, out)
    assert b.get("a") == a.local


def test_versions_only_grow_even_when_the_clock_steps_back() -> None:
    a = FactsReplica("a")
    a.publish(vips(1), set(), NOW_MS, [])
    first = a.local.version
    a.publish(vips(2), set(), NOW_MS - 10_000, [])
    assert a.local.version == first + 1


def test_an_older_record_never_replaces_a_newer_one() -> None:
    b = FactsReplica("b")
    new, old = NodeFacts("a", 10, frozenset(vips(2))), NodeFacts("a", 9, frozenset(vips(1)))
    b.receive((new,), NOW_MS, 0.0, [])
    assert b.receive((old,), NOW_MS, 0.0, [])[0] == []
    assert b.receive(FactsDelta("a", 8, 9), NOW_MS, 0.0, [])[0] == []
    assert b.get("a") == new


def test_our_own_record_echoed_back_is_no_news() -> None:
    a, b = FactsReplica("a"), FactsReplica("b")
    deliver(b, a.publish(vips(3), set(), NOW_MS, ["b"]))
    version = a.local.version
    assert a.receive(facts.decode(b.state()), NOW_MS, 0.0, ["b"]) == ([], [])
    assert a.local.version == version


def test_a_service_name_too_long_for_a_packet_goes_over_tcp() -> None:
    a, b = FactsReplica("a"), FactsReplica("b")
    deliver(b, a.publish(vips(300, step=2), set(), NOW_MS, ["b"]))
    out = a.publish(vips(300, step=2), {"x" * 2000}, NOW_MS, ["b"])
    assert [type(o) for o in out] == [Send]
    deliver(b, out)
    assert b.get("a") == a.local


def test_ten_thousand_contiguous_vips_at_once_are_one_broadcast() -> None:
    a, b = FactsReplica("a"), FactsReplica("b")
    out = a.publish(vips(10_000), set(), NOW_MS, ["b"])
    assert len(out) == 1 and isinstance(out[0], Broadcast) and len(out[0].payload) < 100
    deliver(b, out)
    assert b.get("a") == a.local


def test_push_pull_records_we_already_have_are_checked_but_not_built_again() -> None:
    a, b = FactsReplica("a"), FactsReplica("b")
    deliver(b, a.publish(vips(5_000, step=2), set(), NOW_MS, ["b"]))
    state = a.state()
    assert a.state() is not state and a.state() == state  # encoded once per version, the same bytes
    assert facts.decode(state, known=b.versions()) == ()
    assert facts.decode(state, known={"a": a.local.version - 1}) == (a.local,)
    with pytest.raises(FactsError):
        facts.decode(state[:-1], known=b.versions())  # still checked
