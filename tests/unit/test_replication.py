"""The replicated allocation table: convergence, partition merge, hostile input."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lbd.cluster.replication import AllocationTable, TableEntry, TableError
from lbd.model import Allocation, PortSpec, ServiceSpec

ip = ipaddress.ip_address


def alloc(name: str, *addresses: str, pool: str = "p") -> Allocation:
    return Allocation(name, pool, tuple(ip(a) for a in addresses))


def test_allocator_records_deltas_and_tombstones():
    table = AllocationTable("n1")
    changed = table.record({"a": alloc("a", "10.77.0.1"), "b": alloc("b", "10.77.0.2")}, {}, now_ms=1000)
    assert [e.service for e in changed] == ["a", "b"]
    assert table.record({"a": alloc("a", "10.77.0.1"), "b": alloc("b", "10.77.0.2")}, {}, now_ms=2000) == []
    changed = table.record({"a": alloc("a", "10.77.0.1")}, {}, now_ms=3000)
    assert [(e.service, e.addresses) for e in changed] == [("b", ())]
    assert table.live()[0] == {"a": alloc("a", "10.77.0.1")}


def test_replicas_converge_whatever_the_order():
    writer = AllocationTable("n1")
    deltas = []
    for step in range(20):
        allocations = {f"s{i}": alloc(f"s{i}", f"10.77.0.{i + step % 3}") for i in range(0, 10, 3)}
        deltas.extend(writer.record(allocations, {}, now_ms=step * 10))
    replicas = []
    for seed in range(5):
        replica = AllocationTable(f"r{seed}")
        shuffled = deltas[:]
        random.Random(seed).shuffle(shuffled)
        for entry in shuffled:
            replica.merge([entry])
            replica.merge([entry])  # duplicates are harmless
        replicas.append(replica)
    for replica in replicas:
        assert replica.entries == writer.entries
        assert replica.live() == writer.live()


def test_partition_heal_keeps_older_allocation_and_moves_one_side():
    base = AllocationTable("a")
    base.record({"old": alloc("old", "10.77.0.1")}, {}, now_ms=100)
    left, right = AllocationTable("a"), AllocationTable("b")
    left.merge(base.entries.values())
    right.merge(base.entries.values())
    # Each side's allocator hands the next free address to a different new service.
    left.record({"old": alloc("old", "10.77.0.1"), "x": alloc("x", "10.77.0.2")}, {}, now_ms=200)
    right.record({"old": alloc("old", "10.77.0.1"), "y": alloc("y", "10.77.0.2")}, {}, now_ms=300)
    left.merge(right.entries.values())
    right.merge(left.entries.values())
    assert left.entries == right.entries
    live, conflicts = left.live()
    assert live["old"].addresses == (ip("10.77.0.1"),) and live["x"].addresses == (ip("10.77.0.2"),)
    assert "y" not in live
    assert [str(c) for c in conflicts] == ["10.77.0.2: kept by x (older allocation), y will be re-allocated"]
    assert right.live() == (live, conflicts)


def test_sharing_is_not_a_conflict():
    table = AllocationTable("n1")
    services = {
        "a": ServiceSpec("a", share_key="k", ports=(PortSpec("tcp", 80),)),
        "b": ServiceSpec("b", share_key="k", ports=(PortSpec("tcp", 443),)),
    }
    table.record({"a": alloc("a", "10.77.0.1"), "b": alloc("b", "10.77.0.1")}, services, now_ms=1)
    live, conflicts = table.live()
    assert set(live) == {"a", "b"} and conflicts == []


def test_restart_from_persisted_state_keeps_everything():
    table = AllocationTable("n1")
    table.record({"a": alloc("a", "10.77.0.1", "fd77::1")}, {}, now_ms=5)
    again = AllocationTable.from_state("n1", table.to_state())
    assert again.entries == table.entries and again.clock == table.clock
    seeded = AllocationTable.from_state("n1", None, legacy={"a": alloc("a", "10.77.0.1")}, now_ms=9)
    assert seeded.live()[0] == {"a": alloc("a", "10.77.0.1")}


def test_tombstones_are_collected_after_a_day():
    table = AllocationTable("n1")
    table.record({"a": alloc("a", "10.77.0.1")}, {}, now_ms=0)
    table.record({}, {}, now_ms=1)
    assert table.collect_garbage(now_ms=10) == 0
    assert table.collect_garbage(now_ms=2 * 24 * 3600 * 1000) == 1 and table.entries == {}


@given(st.binary(max_size=400))
def test_decode_garbage_raises_table_error_only(data):
    try:
        AllocationTable.decode(data)
    except TableError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])  # a shared, loaded CI box
@given(st.dictionaries(st.sampled_from(list("spacuoktb") + ["x"]), json_values, max_size=10))
def test_entry_from_json_rejects_precisely(raw):
    try:
        TableEntry.from_json(raw)
    except TableError:
        pass


@pytest.mark.parametrize("raw, message", [
    ({"s": "a", "p": "p", "o": "n", "c": 1, "u": 1}, "lacks 'a'"),
    ({"s": "a", "p": "p", "o": "n", "c": 1, "u": 1, "a": ["10.0.0.300"]}, "entry address"),
    ({"s": "a", "p": "p", "o": "n", "c": -1, "u": 1, "a": []}, "created is not a timestamp"),
    ({"s": "a", "p": "p", "o": "n", "c": 1, "u": 1, "a": [], "t": ["tcp/0"]}, "PROTO/PORT"),
])
def test_entry_errors_are_precise(raw, message):
    with pytest.raises(TableError, match=message):
        TableEntry.from_json(raw)


def test_live_and_encode_are_kept_until_the_entries_change() -> None:
    """Both are derived once per change of the entries (every pass and every push-pull read
    them), and always equal what the entries say now, whichever way they changed."""
    import json as _json

    def reference(table: AllocationTable, extra: dict[str, str] | None) -> bytes:
        body: dict[str, object] = {"v": 1, "clock": table.clock, "e": [e.to_json() for e in table.entries.values()]}
        body.update(extra or {})
        return _json.dumps(body, separators=(",", ":")).encode()

    ip = ipaddress.ip_address
    t = AllocationTable("n1")
    t.record({f"s{i}": Allocation(f"s{i}", "p", (ip(f"10.77.0.{i + 1}"),)) for i in range(5)}, {}, 1000)
    steps = [
        lambda: None,
        lambda: t.entries.__setitem__("x", TableEntry("x", "p", (ip("10.77.0.99"),), 5, 5, "n2")),
        lambda: t.merge([TableEntry("s1", "p", (), 1, 2000, "n2")]),
        lambda: t.record({"s2": Allocation("s2", "p", (ip("10.77.0.50"),))}, {}, 3000),
        lambda: t.entries.pop("x"),
        lambda: setattr(t, "entries", {"y": TableEntry("y", "p", (ip("10.77.0.7"),), 1, 1, "n3")}),
        lambda: t.collect_garbage(10**12),
    ]
    for step in steps:
        step()
        for extra in (None, {"nf": "AAE="}):
            assert t.encode(extra=extra) == reference(t, extra)
            assert AllocationTable.decode_with_extra(t.encode(extra=extra))[1] == list(t.entries.values())
        fresh = AllocationTable("n1", entries=dict(t.entries), clock=t.clock)
        assert t.live() == fresh.live()
        mine, _ = t.live()
        mine.clear()  # the caller's own copy
        assert t.live() == fresh.live()


def test_an_entry_seen_before_is_not_a_pass_for_a_malformed_one() -> None:
    """Entries are remembered once checked (every push-pull carries the whole table); a
    malformed one equal to a good one under ``==`` (true == 1) is still refused."""
    good = {"s": "web", "p": "p", "a": ["10.77.0.5"], "c": 1, "u": 1, "o": "n1"}
    first = TableEntry.from_json(dict(good))
    assert TableEntry.from_json(dict(good)) is first
    for bad in ({**good, "c": True}, {**good, "u": 1.0}, {**good, "a": ["10.77.0.5", "x"]}, {**good, "a": [{"x": 1}]}):
        with pytest.raises(TableError):
            TableEntry.from_json(bad)


def test_digest_is_the_same_for_the_same_entries_in_any_order_and_follows_changes():
    """Push-pull compares replicas by digest (issue 9): insertion order differs between them."""
    import ipaddress as ipa

    from lbd.cluster.replication import AllocationTable as Table, TableEntry as Entry

    a = Entry("a", "p", (ipa.ip_address("10.77.0.100"),), 1000, 1000, "n1")
    b = Entry("b", "p", (ipa.ip_address("10.77.0.101"),), 1001, 1001, "n2")
    one, two = Table("n1"), Table("n2")
    one.merge([a, b])
    two.merge([b, a])
    assert one.digest() == two.digest()
    before = one.digest()
    one.merge([Entry("a", "p", (), 1000, 1002, "n1")])  # released
    assert one.digest() != before
    two.merge([Entry("a", "p", (), 1000, 1002, "n1")])
    assert one.digest() == two.digest()
    assert Table("n3").digest() != before
