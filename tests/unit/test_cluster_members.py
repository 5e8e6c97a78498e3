"""The member table's merge rules (lbd.cluster.members) on a simulated clock.

The rules are memberlist state.go's aliveNode, suspectNode, deadNode and refute,
which carry SWIM's ordering (Das, Gupta and Motivala 2002, section 4.2): a message
about an older incarnation never overrides, Suspect overrides Alive at the same
incarnation, and Dead (SWIM's Confirm) overrides both.
"""

from __future__ import annotations

import random

import pytest
import structlog

from lbd.cluster import wire
from lbd.cluster.awareness import Awareness
from lbd.cluster.errors import GossipError
from lbd.cluster.events import EventKind, MemberEvent, Stats
from lbd.cluster.members import MemberTable, ip_bytes
from lbd.cluster.profiles import DEFAULT
from lbd.model import MemberState

T0 = 1000.0
ME = ip_bytes("10.77.0.1")
PEER = ("10.77.0.9", 7946)


def peer_addr(i: int) -> bytes:
    return ip_bytes(f"10.77.0.{i}")


class Recorder:
    """The core's side of the seam: a broadcast queue that keeps everything, and the events."""

    def __init__(self) -> None:
        self.broadcasts: list[tuple[str, wire.Message]] = []
        self.sent: set[int] = set()  # broadcast ids already transmitted to their limit
        self.events: list[MemberEvent] = []

    def broadcast(self, name: str, msg: wire.Message) -> int:
        self.broadcasts.append((name, msg))
        return len(self.broadcasts) - 1

    def pending(self, bid: int) -> bool:
        return bid not in self.sent

    def kinds(self) -> list[tuple[EventKind, str]]:
        return [(e.kind, e.member.name) for e in self.events]


def make(seed: int = 1) -> tuple[MemberTable, Recorder]:
    rec = Recorder()
    table = MemberTable(
        "me", ME, 7946, wire.DEFAULT_VSN, profile=DEFAULT, rng=random.Random(seed),
        awareness=Awareness(DEFAULT.awareness_max_multiplier), stats=Stats(), log=structlog.get_logger("test"),
        broadcast=rec.broadcast, pending=rec.pending, notify=rec.events.append)
    table.set_local(1, b"", T0)
    rec.broadcasts.clear()
    rec.events.clear()
    return table, rec


def alive(i: int, incarnation: int, meta: bytes = b"", addr: bytes | None = None) -> wire.Alive:
    return wire.Alive(incarnation, f"n{i}", peer_addr(i) if addr is None else addr, 7946, meta, wire.DEFAULT_VSN)


def with_peer(incarnation: int = 5) -> tuple[MemberTable, Recorder]:
    table, rec = make()
    table.alive(alive(2, incarnation), T0)
    rec.broadcasts.clear()
    rec.events.clear()
    return table, rec


# -- aliveNode ------------------------------------------------------------------


def test_a_new_alive_member_joins_and_is_gossiped_on() -> None:
    table, rec = make()
    table.alive(alive(2, 1), T0 + 1)
    node = table.nodes["n2"]
    assert node.state == MemberState.ALIVE and node.incarnation == 1 and node.state_change == T0 + 1
    assert rec.kinds() == [(EventKind.JOIN, "n2")]
    assert [name for name, _ in rec.broadcasts] == ["n2"]
    assert sorted(table.order) == ["me", "n2"]


def test_an_older_or_equal_incarnation_never_overrides() -> None:
    table, rec = with_peer(incarnation=5)
    table.alive(alive(2, 4, meta=b"older"), T0 + 1)
    table.alive(alive(2, 5, meta=b"same"), T0 + 1)
    assert table.nodes["n2"].meta == b"" and table.nodes["n2"].incarnation == 5
    table.suspect(wire.Suspect(4, "n2", "n3"), T0 + 1)
    table.dead(wire.Dead(4, "n2", "n3"), T0 + 1)
    assert table.nodes["n2"].state == MemberState.ALIVE
    assert rec.broadcasts == [] and rec.events == []


def test_a_newer_incarnation_with_new_meta_is_an_update() -> None:
    table, rec = with_peer(incarnation=5)
    table.alive(alive(2, 6, meta=b"tags"), T0 + 1)
    assert table.nodes["n2"].meta == b"tags"
    assert rec.kinds() == [(EventKind.UPDATE, "n2")]


def test_a_conflicting_address_is_refused_unless_the_member_left() -> None:
    table, rec = with_peer(incarnation=5)
    table.alive(alive(2, 9, addr=peer_addr(42)), T0 + 1)
    assert table.nodes["n2"].addr == peer_addr(2) and rec.events == []
    table.dead(wire.Dead(5, "n2", "n2"), T0 + 2)  # n2 leaves ...
    table.alive(alive(2, 5, addr=peer_addr(42)), T0 + 3)  # ... and comes back elsewhere, same incarnation
    assert table.nodes["n2"].addr == peer_addr(42) and table.nodes["n2"].state == MemberState.ALIVE
    assert rec.kinds() == [(EventKind.LEFT, "n2"), (EventKind.JOIN, "n2")]


def test_an_impossible_protocol_vector_is_ignored() -> None:
    table, rec = make()
    table.alive(wire.Alive(1, "n2", peer_addr(2), 7946, b"", bytes([2, 1, 2, 2, 5, 4])), T0)  # max < min
    assert "n2" not in table.nodes and rec.broadcasts == []


# -- suspectNode, deadNode --------------------------------------------------------


def test_suspect_overrides_alive_at_the_same_incarnation_and_starts_the_timer() -> None:
    table, rec = with_peer(incarnation=5)
    for i in range(3, 8):  # enough members for Lifeguard to wait for confirmations (k > 0)
        table.alive(alive(i, 1), T0)
    rec.broadcasts.clear()
    rec.events.clear()
    table.suspect(wire.Suspect(5, "n2", "n3"), T0 + 1)
    assert table.nodes["n2"].state == MemberState.SUSPECT
    assert rec.kinds() == [(EventKind.SUSPECT, "n2")]
    assert "n2" in table.suspicions
    table.suspect(wire.Suspect(5, "n2", "n3"), T0 + 2)  # the same accuser again: not news
    assert len(rec.broadcasts) == 1
    table.suspect(wire.Suspect(5, "n2", "n4"), T0 + 2)  # an independent confirmation is re-gossiped
    assert len(rec.broadcasts) == 2 and len(rec.events) == 1


def test_dead_beats_suspect_at_equal_incarnation() -> None:
    table, rec = with_peer(incarnation=5)
    table.suspect(wire.Suspect(5, "n2", "n3"), T0 + 1)
    table.dead(wire.Dead(5, "n2", "n3"), T0 + 2)
    node = table.nodes["n2"]
    assert node.state == MemberState.DEAD and node.state_change == T0 + 2
    assert "n2" not in table.suspicions
    assert table.failed["n2"] == (("10.77.0.2", 7946), T0 + 2)
    assert rec.kinds() == [(EventKind.SUSPECT, "n2"), (EventKind.DEAD, "n2")]
    table.suspect(wire.Suspect(5, "n2", "n4"), T0 + 3)  # a suspicion does not bring the dead back
    assert node.state == MemberState.DEAD and len(rec.events) == 2


def test_alive_at_a_higher_incarnation_clears_a_suspicion() -> None:
    table, rec = with_peer(incarnation=5)
    table.suspect(wire.Suspect(5, "n2", "n3"), T0 + 1)
    table.alive(alive(2, 6), T0 + 2)
    assert table.nodes["n2"].state == MemberState.ALIVE and table.suspicions == {}
    assert rec.kinds()[-1] == (EventKind.ALIVE, "n2")


def test_dead_from_the_member_itself_means_left_and_is_not_retried() -> None:
    table, rec = with_peer(incarnation=5)
    table.dead(wire.Dead(5, "n2", "n2"), T0 + 1)
    assert table.nodes["n2"].state == MemberState.LEFT and table.failed == {}
    assert rec.kinds() == [(EventKind.LEFT, "n2")]


# -- about ourselves -------------------------------------------------------------


def test_a_suspicion_about_us_is_refuted_with_a_higher_incarnation() -> None:
    table, rec = make()
    table.suspect(wire.Suspect(7, "me", "n2"), T0 + 1)  # accused at a higher incarnation than ours
    assert table.me.incarnation == 8 and table.me.state == MemberState.ALIVE
    (name, msg), = rec.broadcasts
    assert name == "me" and isinstance(msg, wire.Alive) and msg.incarnation == 8
    assert table.awareness.score == 1  # Lifeguard: being accused hints at our own ill health
    assert table.stats.refutes == 1 and rec.events == []


def test_dead_about_us_is_refuted_too() -> None:
    table, rec = make()
    table.dead(wire.Dead(1, "me", "n2"), T0 + 1)
    assert table.me.state == MemberState.ALIVE and table.me.incarnation == 2
    assert isinstance(rec.broadcasts[0][1], wire.Alive)


def test_a_stale_accusation_about_us_reasserts_our_alive_once_while_queued() -> None:
    table, rec = make()
    table.suspect(wire.Suspect(3, "me", "n2"), T0 + 1)  # refuted: now at 4
    rec.broadcasts.clear()
    table.suspect(wire.Suspect(3, "me", "n3"), T0 + 2)  # missed the refutation
    table.dead(wire.Dead(3, "me", "n3"), T0 + 2)
    assert [(type(msg), msg.incarnation) for _, msg in rec.broadcasts] == [(wire.Alive, 4)]
    rec.sent.add(len(rec.broadcasts) - 1)  # sent to its limit: the next stale one reasserts again
    table.suspect(wire.Suspect(3, "me", "n3"), T0 + 3)
    assert len(rec.broadcasts) == 2 and table.me.incarnation == 4


def test_leaving_broadcasts_our_dead_and_stops_refuting() -> None:
    table, rec = make()
    table.leave(T0 + 1)
    assert table.leaving and table.me.state == MemberState.LEFT
    (name, msg), = rec.broadcasts
    assert name == "me" and msg == wire.Dead(1, "me", "me") and table.leave_bid == 0
    table.alive(wire.Alive(9, "me", ME, 7946, b"", wire.DEFAULT_VSN), T0 + 2)
    assert table.me.state == MemberState.LEFT and len(rec.broadcasts) == 1


def test_an_exhausted_incarnation_space_is_an_error() -> None:
    table, _ = make()
    with pytest.raises(GossipError):
        table.suspect(wire.Suspect(0xFFFFFFFF, "me", "n2"), T0 + 1)


# -- mergeState, verifyProtocol ---------------------------------------------------


def push(i: int, incarnation: int, state: wire.NodeStateCode, vsn: bytes = wire.DEFAULT_VSN) -> wire.PushNode:
    return wire.PushNode(f"n{i}", peer_addr(i), 7946, b"", incarnation, int(state), vsn)


def test_a_remote_dead_merges_as_a_suspicion_and_left_as_left() -> None:
    table, rec = make()
    table.alive(alive(2, 1), T0)
    table.alive(alive(3, 1), T0)
    rec.events.clear()
    table.merge([push(2, 1, wire.NodeStateCode.DEAD), push(3, 1, wire.NodeStateCode.LEFT),
                 push(4, 1, wire.NodeStateCode.ALIVE)], T0 + 1, PEER)
    assert table.nodes["n2"].state == MemberState.SUSPECT
    assert table.nodes["n3"].state == MemberState.LEFT
    assert rec.kinds() == [(EventKind.SUSPECT, "n2"), (EventKind.LEFT, "n3"), (EventKind.JOIN, "n4")]


def test_merge_skips_bad_names_and_counts_them() -> None:
    table, _ = make()
    bad = wire.PushNode("evil\x1b", peer_addr(5), 7946, b"", 1, int(wire.NodeStateCode.ALIVE), wire.DEFAULT_VSN)
    table.merge([bad, push(2, 1, wire.NodeStateCode.ALIVE)], T0, PEER)
    assert sorted(table.nodes) == ["me", "n2"] and table.stats.bad_names == 1


def test_incompatible_protocol_versions_refuse_the_whole_merge() -> None:
    table, _ = make()
    far = bytes([6, 7, 7, 2, 5, 4])  # speaks only protocol 6-7; we run 2
    with pytest.raises(GossipError):
        table.merge([push(2, 1, wire.NodeStateCode.ALIVE, vsn=far)], T0, PEER)
    assert "n2" not in table.nodes


# -- timers ---------------------------------------------------------------------


def test_an_expired_suspicion_declares_the_member_dead() -> None:
    table, rec = with_peer(incarnation=5)
    table.suspect(wire.Suspect(5, "n2", "n3"), T0)
    deadline = table.suspicions["n2"].deadline
    table.expire_suspicions(deadline - 0.001)
    assert table.nodes["n2"].state == MemberState.SUSPECT
    table.expire_suspicions(deadline)
    assert table.nodes["n2"].state == MemberState.DEAD
    assert rec.broadcasts[-1] == ("n2", wire.Dead(5, "n2", "me"))


def test_dead_and_left_members_are_reaped_after_gossip_to_the_dead_time() -> None:
    table, _ = with_peer(incarnation=5)
    table.alive(alive(3, 1), T0)
    table.dead(wire.Dead(5, "n2", "n3"), T0 + 1)
    table.reset(T0 + 1 + DEFAULT.gossip_to_the_dead_time)
    assert "n2" in table.nodes  # not yet longer than the limit
    table.reset(T0 + 1.001 + DEFAULT.gossip_to_the_dead_time)
    assert sorted(table.nodes) == sorted(table.order) == ["me", "n3"]


def test_reconnect_tries_failed_members_until_they_return_or_time_out() -> None:
    table, _ = with_peer(incarnation=5)
    table.alive(alive(3, 1), T0)
    table.dead(wire.Dead(5, "n2", "n3"), T0 + 1)
    assert table.reconnect_target(T0 + 2) == ("10.77.0.2", 7946)
    table.dead(wire.Dead(1, "n3", "n2"), T0 + 3)
    table.alive(alive(2, 6), T0 + 4)  # n2 is back: only n3 is left to retry
    assert table.reconnect_target(T0 + 5) == ("10.77.0.3", 7946)
    assert table.reconnect_target(T0 + 3.001 + DEFAULT.reconnect_timeout) is None
    assert table.failed == {}
