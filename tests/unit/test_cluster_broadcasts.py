"""The transmit-limited broadcast queue (lbd.cluster.broadcasts): memberlist queue.go's order, limits and pruning."""

from __future__ import annotations

from lbd.cluster import wire
from lbd.cluster.broadcasts import MAX_QUEUE, BroadcastQueue


def test_a_newer_message_about_a_node_replaces_the_queued_one() -> None:
    q = BroadcastQueue()
    old = q.queue("a", b"alive-1")
    new = q.queue("a", b"alive-2")
    assert len(q) == 1 and not q.pending(old) and q.pending(new)
    assert q.get(2, 1000, transmit_limit=3) == [b"alive-2"]


def test_user_messages_are_never_replaced() -> None:
    q = BroadcastQueue()
    q.queue(None, b"u1")
    q.queue(None, b"u2")
    assert len(q) == 2


def test_order_is_fewest_transmits_then_largest_then_newest() -> None:
    q = BroadcastQueue()
    q.queue("a", b"aa")
    q.queue("b", b"bbbb")
    q.queue("c", b"cc")
    assert q.get(0, 1000, 5) == [b"bbbb", b"cc", b"aa"]  # equal size: the newer first
    q.queue("d", b"d")
    assert q.get(0, 1000, 5)[0] == b"d"  # never sent beats larger


def test_get_respects_the_byte_limit_with_per_message_overhead() -> None:
    q = BroadcastQueue()
    q.queue("a", b"x" * 10)
    q.queue("b", b"y" * 10)
    q.queue("c", b"z" * 3)
    # 10 + 2 fits, the second 10 + 2 would pass 20, the 3 + 2 still fits (skip, do not stop).
    assert q.get(2, 20, 5) == [b"y" * 10, b"z" * 3]
    assert q.get(2, 1, 5) == []


def test_messages_retire_after_the_transmit_limit() -> None:
    q = BroadcastQueue()
    bid = q.queue("a", b"m")
    for _ in range(3):
        assert q.get(0, 100, transmit_limit=3) == [b"m"]
    assert not q.pending(bid) and len(q) == 0
    assert q.get(0, 100, 3) == []


def test_one_packet_carries_at_most_a_compound_s_parts() -> None:
    q = BroadcastQueue()
    for i in range(wire.MAX_COMPOUND_PARTS + 10):
        q.queue(None, b"u%d" % i)
    assert len(q.get(0, 1 << 20, 5)) == wire.MAX_COMPOUND_PARTS - 1


def test_the_queue_is_bounded_dropping_the_oldest() -> None:
    q = BroadcastQueue()
    first = q.queue(None, b"first")
    for i in range(MAX_QUEUE):
        q.queue(None, b"u%d" % i)
    assert len(q) == MAX_QUEUE and not q.pending(first)


def test_prune_keeps_the_newest() -> None:
    q = BroadcastQueue()
    ids = [q.queue(None, b"u%d" % i) for i in range(5)]
    q.prune(2)
    assert [q.pending(i) for i in ids] == [False, False, False, True, True]
    q.prune(10)  # fewer than keep: nothing dropped
    assert len(q) == 2
