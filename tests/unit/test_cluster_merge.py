"""Allocation merge after a partition (replication + ipam): order does not matter, one owner per address.

A base table is replicated everywhere; a partition splits the nodes into two
sides whose allocators each allocate new services (often the same free
addresses). After the heal the entries are exchanged in any order, duplicated
or not, and the allocator of the merged cluster re-allocates. Properties:
every replica ends with the same table; no two services hold one address;
services allocated before the partition never move; of two services that got
one address, the older keeps it and only the younger moves.
"""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings, strategies as st

from lbd.cluster.replication import AllocationTable, TableEntry
from lbd.config import parse_config
from lbd.ipam import allocate
from lbd.model import ServiceSpec

CONFIG = parse_config("""
[node]
name = "n1"
[[pool]]
name = "p"
addresses = ["10.77.0.100-10.77.0.115"]
""", Path("/dev/null"))
POOLS = CONFIG.pools


def specs(names) -> list[ServiceSpec]:
    return [ServiceSpec(name=n) for n in sorted(names)]


def allocator_pass(table: AllocationTable, names, now_ms: int) -> list[TableEntry]:
    """What ClusterCoordinator.allocate does on the allocator: ipam over the live view, then record."""
    live, _ = table.live()
    result = allocate(POOLS, specs(names), live)
    by_name = {s.name: s for s in specs(names)}
    return table.record(result.allocations, by_name, now_ms)


def addresses_of(live) -> list[str]:
    return [str(a) for alloc in live.values() for a in alloc.addresses]


scenario = st.tuples(
    st.integers(0, 5),  # services before the partition
    st.lists(st.sampled_from([f"a{i}" for i in range(5)]), max_size=5, unique=True),  # added on side A
    st.lists(st.sampled_from([f"b{i}" for i in range(5)]), max_size=5, unique=True),  # added on side B
    st.integers(0, 2**32),  # shuffle seed
    st.booleans(),  # which side allocates first (older)
)


@settings(max_examples=150, deadline=None)
@given(scenario)
def test_partition_merge_converges_whatever_the_order(case):
    n_before, added_a, added_b, seed, a_first = case
    rng = random.Random(seed)
    before = [f"s{i}" for i in range(n_before)]
    base = AllocationTable("n1")
    allocator_pass(base, before, now_ms=1_000)
    original, _ = base.live()

    # Side A = {n1, n2} (allocator n1), side B = {n3} (its own allocator).
    side_a, side_b = AllocationTable("n1"), AllocationTable("n3")
    replica_a2 = AllocationTable("n2")
    for t in (side_a, side_b, replica_a2):
        t.merge(base.entries.values())
    times = (2_000, 3_000) if a_first else (3_000, 2_000)
    deltas_a = allocator_pass(side_a, before + added_a, now_ms=times[0])
    deltas_b = allocator_pass(side_b, before + added_b, now_ms=times[1])
    replica_a2.merge(deltas_a)

    # Heal: every replica receives the other side's entries (deltas and full tables,
    # duplicated, in any order).
    everything = list(side_a.entries.values()) + list(side_b.entries.values()) + deltas_a + deltas_b
    for t in (side_a, side_b, replica_a2):
        batch = everything[:]
        rng.shuffle(batch)
        for i in range(0, len(batch), 3):
            t.merge(batch[i:i + 3])
    assert side_a.entries == side_b.entries == replica_a2.entries
    live, merged_conflicts = side_a.live()
    assert (live, merged_conflicts) == side_b.live() == replica_a2.live()
    assert len(addresses_of(live)) == len(set(addresses_of(live))), "two services hold one address"
    for name, alloc in original.items():
        assert live[name] == alloc, "a service allocated before the partition moved"
    for conflict in merged_conflicts:
        # The younger allocation lost: it was written by the side that allocated later.
        loser = side_a.entries[conflict.loser]
        winner = side_a.entries[conflict.winner]
        assert (winner.created, winner.origin) < (loser.created, loser.origin)
        assert conflict.loser not in live

    # The merged cluster's allocator (n1) re-allocates the losers; replicas adopt its deltas.
    every = before + added_a + added_b
    deltas = allocator_pass(side_a, every, now_ms=4_000)
    side_b.merge(reversed(deltas))
    replica_a2.merge(deltas)
    final, left = side_a.live()
    assert left == [] and side_b.live() == replica_a2.live() == (final, [])
    assert sorted(final) == sorted(every)  # the pool (16) holds them all
    assert len(addresses_of(final)) == len(set(addresses_of(final)))
    for name, alloc in live.items():
        assert final[name] == alloc, "a service that kept its address after the merge moved"
    for conflict in merged_conflicts:  # the losers got another address
        assert final[conflict.loser].addresses != live[conflict.winner].addresses


def test_a_clash_moves_only_the_younger_service():
    base = AllocationTable("n1")
    allocator_pass(base, ["s0"], now_ms=1)
    a, b = AllocationTable("n1"), AllocationTable("n3")
    a.merge(base.entries.values())
    b.merge(base.entries.values())
    allocator_pass(a, ["s0", "a0"], now_ms=10)
    allocator_pass(b, ["s0", "b0"], now_ms=20)
    assert a.live()[0]["a0"].addresses == b.live()[0]["b0"].addresses  # the same free address
    a.merge(b.entries.values())
    live, conflicts = a.live()
    assert [(c.winner, c.loser) for c in conflicts] == [("a0", "b0")]
    allocator_pass(a, ["s0", "a0", "b0"], now_ms=30)
    final, _ = a.live()
    assert final["a0"] == live["a0"] and final["s0"] == live["s0"]
    assert final["b0"].addresses != final["a0"].addresses


def test_merge_is_commutative_and_idempotent_per_entry():
    writers = [AllocationTable(f"n{i}") for i in range(3)]
    entries = []
    for i, w in enumerate(writers):
        entries += allocator_pass(w, [f"x{j}" for j in range(i, i + 3)], now_ms=100 + i)
    orders = [entries, list(reversed(entries)), entries + entries]
    tables = []
    for order in orders:
        t = AllocationTable("r")
        t.merge(order)
        tables.append(t)
    assert tables[0].entries == tables[1].entries == tables[2].entries
