"""Hybrid-clock poisoning (issue 10 finding 2).

One UDP user message stamped 2**63-2 used to be adopted as is: the replica's
clock jumped there, its next writes went past what the decoder accepts, so
every table from that node was rejected and its own saved table no longer
loaded, while the poisoned entry won every last-writer-wins comparison.
"""

from __future__ import annotations

import ipaddress
import json

from hypothesis import given, settings, strategies as st

from lbd.cluster.replication import MAX_CLOCK_SKEW_MS, MAX_STAMP, AllocationTable, TableEntry
from lbd.model import Allocation

NOW = 1_780_000_000_000  # ms, late 2026
POISON = 2**63 - 2


def alloc(name: str, address: str) -> Allocation:
    return Allocation(name, "p", (ipaddress.ip_address(address),))


def poisoned(service: str = "web", address: str = "10.77.0.66", stamp: int = POISON) -> TableEntry:
    return TableEntry(service, "p", (ipaddress.ip_address(address),), stamp, stamp, "evil")


def test_poisoned_user_message_is_refused_and_the_saved_table_still_loads() -> None:
    allocator, replica = AllocationTable("a"), AllocationTable("b")
    deltas = allocator.record({"web": alloc("web", "10.77.0.10")}, {}, now_ms=NOW)
    replica.merge(deltas, now_ms=NOW)
    # The hostile message, as a peer's table delta: it reaches both nodes.
    wire = AllocationTable("evil")
    wire.entries["web"] = poisoned()
    wire.clock = POISON
    _, entries = AllocationTable.decode(wire.encode())
    assert allocator.merge(entries, now_ms=NOW + 1) == []
    assert replica.merge(entries, now_ms=NOW + 1) == []
    assert allocator.clock <= NOW + 1 + MAX_CLOCK_SKEW_MS
    # Both still agree on the address, and the allocator's next writes win.
    assert allocator.live()[0] == replica.live()[0] == {"web": alloc("web", "10.77.0.10")}
    more = allocator.record({"web": alloc("web", "10.77.0.11")}, {}, now_ms=NOW + 2)
    replica.merge(more, now_ms=NOW + 2)
    assert replica.live()[0] == {"web": alloc("web", "10.77.0.11")}
    # Every table from that node decodes, and each saved table loads.
    for table in (allocator, replica):
        AllocationTable.decode(table.encode())
        again = AllocationTable.from_state(table.node, json.loads(json.dumps(table.to_state())), now_ms=NOW + 3)
        assert again.entries == table.entries


def test_skew_bound_accepts_a_peer_slightly_ahead() -> None:
    t = AllocationTable("b")
    ahead = poisoned(stamp=NOW + MAX_CLOCK_SKEW_MS)
    assert t.merge([ahead], now_ms=NOW) == [ahead]
    assert t.merge([poisoned("api", stamp=NOW + MAX_CLOCK_SKEW_MS + 1)], now_ms=NOW) == []
    assert t.rejected == 1
    assert t.clock == NOW + MAX_CLOCK_SKEW_MS


def test_clock_never_reaches_what_the_decoder_refuses() -> None:
    t = AllocationTable("a", clock=MAX_STAMP - 1)
    for i in range(5):
        t.record({"web": alloc("web", f"10.77.0.{i + 1}")}, {}, now_ms=NOW)
        assert t.clock <= MAX_STAMP
        AllocationTable.decode(t.encode())


def test_a_table_poisoned_before_the_fix_recovers_on_load() -> None:
    # A saved table that an older lbd poisoned: it loads, the future stamps are
    # brought back to the present, and the local entries are all kept.
    t = AllocationTable("a")
    t.record({"db": alloc("db", "10.77.0.20")}, {}, now_ms=NOW - 5_000)
    t.entries["web"] = poisoned()
    t.clock = MAX_STAMP
    loaded = AllocationTable.from_state("a", t.to_state(), now_ms=NOW)
    assert set(loaded.entries) == {"db", "web"}
    assert loaded.clock <= NOW + MAX_CLOCK_SKEW_MS
    assert all(e.updated <= NOW for e in loaded.entries.values())
    assert loaded.live()[0]["web"] == alloc("web", "10.77.0.66")
    # The allocator's next version of the entry wins again.
    loaded.record({"web": alloc("web", "10.77.0.30"), "db": alloc("db", "10.77.0.20")}, {}, now_ms=NOW + 1)
    assert loaded.live()[0]["web"] == alloc("web", "10.77.0.30")


def test_one_bad_entry_in_a_peer_table_does_not_lose_the_good_ones() -> None:
    t = AllocationTable("b")
    t.record({"db": alloc("db", "10.77.0.20")}, {}, now_ms=NOW)
    good = TableEntry("api", "p", (ipaddress.ip_address("10.77.0.21"),), NOW, NOW, "a")
    assert t.merge([poisoned(), good], now_ms=NOW) == [good]
    assert set(t.live()[0]) == {"db", "api"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)), max_size=20),
       st.integers(0, 10**13))
def test_any_remote_stamps_keep_the_table_loadable(stamps: list[tuple[int, int]], now: int) -> None:
    t = AllocationTable("a")
    t.record({"s": alloc("s", "10.77.0.1")}, {}, now_ms=now)
    entries = [TableEntry(f"r{i}", "p", (), c, u, "x") for i, (c, u) in enumerate(stamps)]
    t.merge(entries, now_ms=now)
    assert t.clock <= max(now, 0) + MAX_CLOCK_SKEW_MS + len(stamps) + 1
    t.record({"s": alloc("s", "10.77.0.2")}, {}, now_ms=now)
    clock, decoded = AllocationTable.decode(t.encode())
    assert clock == t.clock and len(decoded) == len(t.entries)
