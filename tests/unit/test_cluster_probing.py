"""The probe round (lbd.cluster.probing) on a simulated clock, against a real member table.

SWIM (Das, Gupta and Motivala 2002, section 3.1): ping one member per protocol
period, ask k others to ping it when no ack comes within the timeout, suspect
it when none comes by the period's end. Lifeguard (Dadgar et al. 2018, section
4): relays nack what they could not reach, and this node's health score rises
with every ack or nack it missed and falls with every probe answered.
"""

from __future__ import annotations

import random

import pytest
import structlog

from lbd.cluster import wire
from lbd.cluster.awareness import Awareness
from lbd.cluster.errors import GossipError
from lbd.cluster.events import Addr, Stats
from lbd.cluster.members import MemberTable, ip_bytes
from lbd.cluster.probing import Prober
from lbd.cluster.profiles import DEFAULT
from lbd.model import MemberState

T0 = 1000.0
INTERVAL = DEFAULT.probe_interval
OLD_VSN = bytes([1, 2, 2, 2, 5, 4])  # protocol 2: neither nacks nor the TCP fallback


class Wire:
    """What the prober sends, decoded."""

    def __init__(self) -> None:
        self.sent: list[tuple[Addr, list[wire.Message]]] = []
        self.streams: list[tuple[Addr, wire.Ping, float]] = []
        self.forgotten: list[int] = []

    def send(self, dest: Addr, msg: bytes, extra: object) -> None:
        parts = [msg, *extra]  # type: ignore[misc]
        self.sent.append((dest, [wire.decode_packet(p).messages[0] for p in parts]))

    def ping_stream(self, dest: Addr, ping: wire.Ping, now: float, deadline: float) -> int:
        self.streams.append((dest, ping, deadline))
        return 100 + len(self.streams)

    def forget_stream(self, sid: int) -> None:
        self.forgotten.append(sid)

    def take(self) -> list[tuple[Addr, list[wire.Message]]]:
        sent, self.sent = self.sent, []
        return sent


def make(peers: int = 4, vsn: bytes = wire.DEFAULT_VSN) -> tuple[Prober, MemberTable, Wire]:
    """Us (n1) and ``peers`` alive members n2, n3, ..."""
    rng = random.Random(7)
    awareness = Awareness(DEFAULT.awareness_max_multiplier)
    stats = Stats()
    log = structlog.get_logger("test")
    table = MemberTable("n1", ip_bytes("10.77.0.1"), 7946, wire.DEFAULT_VSN, profile=DEFAULT, rng=rng,
                        awareness=awareness, stats=stats, log=log, broadcast=lambda name, msg: 0,
                        pending=lambda bid: False, notify=lambda event: None)
    table.set_local(1, b"", T0)
    for i in range(2, peers + 2):
        table.alive(wire.Alive(1, f"n{i}", ip_bytes(f"10.77.0.{i}"), 7946, b"", vsn), T0)
    net = Wire()
    prober = Prober(table, profile=DEFAULT, rng=rng, awareness=awareness, stats=stats, log=log,
                    send=net.send, ping_stream=net.ping_stream, forget_stream=net.forget_stream)
    return prober, table, net


def started(peers: int = 4, vsn: bytes = wire.DEFAULT_VSN) -> tuple[Prober, MemberTable, Wire, wire.Ping]:
    prober, table, net = make(peers, vsn)
    prober.start(T0, INTERVAL)
    ((_, (ping,)),) = net.take()
    assert isinstance(ping, wire.Ping)
    return prober, table, net, ping


def test_each_round_pings_the_next_member_and_never_ourselves_or_the_dead() -> None:
    prober, table, net = make(peers=3)
    table.dead(wire.Dead(1, "n3", "n2"), T0)
    targets = []
    for r in range(6):
        prober.start(T0 + r * INTERVAL, INTERVAL)
        ((dest, (ping,)),) = net.take()
        assert isinstance(ping, wire.Ping) and dest == (f"10.77.0.{ping.node[1:]}", 7946)
        targets.append(ping.node)
        prober.on_ack(ping.seq_no, T0 + r * INTERVAL + 0.001)
    # Each pass through the (reshuffled) order pings every live member once.
    assert [set(targets[i:i + 2]) for i in (0, 2, 4)] == [{"n2", "n4"}] * 3
    assert table.stats.probes == 6


def test_a_suspect_target_hears_the_accusation_with_the_ping() -> None:
    prober, table, net = make(peers=1)
    table.suspect(wire.Suspect(1, "n2", "n9"), T0)
    prober.start(T0, INTERVAL)
    ((_, (suspect, ping)),) = net.take()
    assert suspect == wire.Suspect(1, "n2", "n1") and isinstance(ping, wire.Ping)


def test_an_ack_ends_the_probe_and_lowers_the_health_score() -> None:
    prober, table, net, ping = started()
    table.awareness.apply_delta(2)
    prober.on_ack(ping.seq_no + 1, T0 + 0.01)  # not ours
    assert prober.probe is not None
    prober.on_ack(ping.seq_no, T0 + 0.01)
    assert prober.probe is None and prober.next_deadline() is None
    assert table.awareness.score == 1


def test_no_ack_goes_indirect_then_suspects_and_missed_nacks_count_against_us() -> None:
    prober, table, net, ping = started(peers=5)
    target = ping.node
    prober.tick(T0 + DEFAULT.probe_timeout - 0.001)
    assert net.sent == [] and prober.next_deadline() == T0 + DEFAULT.probe_timeout
    prober.tick(T0 + DEFAULT.probe_timeout)
    indirect = [msg for _, (msg,) in net.take()]
    assert len(indirect) == DEFAULT.indirect_checks
    assert all(isinstance(m, wire.IndirectPing) and m.node == target and m.nack and m.seq_no == ping.seq_no
               for m in indirect)
    assert [(p.node, d) for _, p, d in net.streams] == [(target, T0 + INTERVAL)]  # TCP fallback, protocol >= 3
    prober.on_nack(ping.seq_no)  # one relay could not reach it either; two stayed silent
    prober.tick(T0 + INTERVAL)
    assert table.nodes[target].state == MemberState.SUSPECT
    assert table.stats.probe_failures == 1 and table.stats.suspicions == 1
    assert table.awareness.score == 2  # three nacks expected, one came
    assert net.forgotten == [101]


def test_a_silent_target_with_every_nack_back_is_not_our_fault() -> None:
    prober, table, net, ping = started(peers=4)
    prober.tick(T0 + DEFAULT.probe_timeout)
    for _ in range(DEFAULT.indirect_checks):
        prober.on_nack(ping.seq_no)
    prober.tick(T0 + INTERVAL)
    assert table.nodes[ping.node].state == MemberState.SUSPECT and table.awareness.score == 0


def test_old_peers_get_no_nack_request_and_no_tcp_ping() -> None:
    prober, table, net, ping = started(peers=2, vsn=OLD_VSN)
    prober.tick(T0 + DEFAULT.probe_timeout)
    ((_, (ind,)),) = net.take()
    assert isinstance(ind, wire.IndirectPing) and not ind.nack and net.streams == []
    prober.tick(T0 + INTERVAL)
    assert table.awareness.score == 1  # no nacks to wait for: a plain miss


def test_an_ack_over_tcp_alone_still_succeeds_at_the_deadline() -> None:
    prober, table, net, ping = started()
    prober.tick(T0 + DEFAULT.probe_timeout)
    prober.tcp_acked(101)
    prober.tick(T0 + INTERVAL)
    assert table.nodes[ping.node].state == MemberState.ALIVE
    assert table.stats.tcp_fallback_successes == 1 and table.stats.probe_failures == 0


def test_we_relay_an_indirect_ping_and_its_ack() -> None:
    prober, _, net = make(peers=2)
    requester = ("10.77.0.2", 7946)
    ind = wire.IndirectPing(77, ip_bytes("10.77.0.3"), 7946, "n3", True, ip_bytes("10.77.0.2"), 7946, "n2")
    prober.on_indirect_ping(ind, ("10.77.0.99", 1234), T0)
    ((dest, (ping,)),) = net.take()
    assert dest == ("10.77.0.3", 7946) and isinstance(ping, wire.Ping) and ping.node == "n3"
    prober.on_ack(ping.seq_no, T0 + 0.01)
    assert net.take() == [(requester, [wire.Ack(77)])] and prober.relays == {}


def test_a_relay_that_hears_nothing_nacks_before_the_requesters_interval_ends() -> None:
    prober, _, net = make(peers=2)
    ind = wire.IndirectPing(77, ip_bytes("10.77.0.3"), 7946, "n3", True, ip_bytes("10.77.0.2"), 7946, "n2")
    prober.on_indirect_ping(ind, ("10.77.0.2", 7946), T0)
    net.take()
    nack_at = T0 + 0.8 * DEFAULT.probe_timeout
    prober.expire_relays(nack_at - 0.001)
    assert net.sent == []
    prober.expire_relays(nack_at)
    assert net.take() == [(("10.77.0.2", 7946), [wire.Nack(77)])]


def test_pings_are_acked_to_their_source_and_not_for_another_node() -> None:
    prober, _, net = make(peers=1)
    prober.on_ping(wire.Ping(5, "n1", ip_bytes("10.77.0.2"), 8000, "n2"), ("10.77.0.99", 1))
    prober.on_ping(wire.Ping(6, "someone-else", b"", 0, "n2"), ("10.77.0.99", 1))
    assert net.take() == [(("10.77.0.2", 8000), [wire.Ack(5)])]


def test_an_indirect_ping_to_nowhere_is_an_error() -> None:
    prober, _, _ = make(peers=1)
    with pytest.raises(GossipError):
        prober.on_indirect_ping(wire.IndirectPing(1, b"", 0, "n3", False, b"", 0, "n2"), ("10.77.0.2", 7946), T0)
