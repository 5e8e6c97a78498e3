"""ClusterCoordinator without sockets: a fake gossip layer stands in for the transport."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

from lbd.cluster import nodemeta
from lbd.cluster.coordination import TABLE_MESSAGE, ClusterCoordinator
from lbd.cluster.events import MemberInfo
from lbd.cluster.transport import UserPayload
from lbd.config import parse_config
from lbd.coordination import Handover
from lbd.model import Member, MemberState, ServiceSpec

CONFIG_TEXT = """
[node]
name = "n1"
[cluster]
bind = "127.0.0.1:17946"
join = ["127.0.0.1:1"]
allow_plaintext = true
[[pool]]
name = "p"
addresses = ["10.77.0.100-10.77.0.103"]
[[l2_advertisement]]
pools = ["p"]
"""
CONFIG = parse_config(CONFIG_TEXT, Path("/dev/null"))
LAN = {"eth0": (ipaddress.ip_interface("10.77.0.11/24"),)}


class FakeGossip:
    def __init__(self) -> None:
        self.infos: dict[str, MemberInfo] = {}
        self.meta = b""
        self.broadcasts: list[bytes] = []
        self.sent: list[tuple[str, bytes]] = []
        self.decrypt_failures = 0

    def add(self, name: str, meta: bytes, state: MemberState = MemberState.ALIVE) -> None:
        self.infos[name] = MemberInfo(name, "10.77.0.1", 7946, state, 1, 0.0, meta, b"")

    def members(self) -> list[MemberInfo]:
        return list(self.infos.values())

    def set_meta(self, meta: bytes) -> None:
        self.meta = meta
        self.add("n1", meta)

    def broadcast_user(self, payload: bytes) -> None:
        self.broadcasts.append(payload)

    async def send_user(self, addr: str, payload: bytes) -> bool:
        self.sent.append((addr, payload))
        return True

    def stats(self) -> dict[str, object]:
        return {"decrypt_failures": self.decrypt_failures}

    def _now(self) -> float:
        return 0.0


def membership() -> tuple[ClusterCoordinator, FakeGossip]:
    cm = ClusterCoordinator(CONFIG)
    fake = FakeGossip()
    cm.gossip = fake  # type: ignore[assignment]
    cm._started = True  # noqa: SLF001 - start() would open sockets
    cm.update_local(Member(name="n1", interfaces=LAN))
    return cm, fake


def meta(drained: bool = False) -> bytes:
    return nodemeta.encode(nodemeta.NodeMeta(labels={}, interfaces=LAN, drained=drained))[0]


def test_undrain_restarts_the_failback_clock():
    cm, fake = membership()
    fake.add("n2", meta())
    cm._since["n2"] = 1.0  # noqa: SLF001 - joined long ago
    cm.members()
    fake.add("n2", meta(drained=True))
    assert next(m for m in cm.members() if m.name == "n2").drained
    assert cm.eligible_since()["n2"] == 1.0
    fake.add("n2", meta(drained=False))
    cm.members()
    assert cm.eligible_since()["n2"] >= time.monotonic() - 5  # recovered now: failback waits from here


def test_a_node_whose_key_is_refused_owns_and_allocates_nothing():
    cm, fake = membership()
    cm._refused = True  # noqa: SLF001 - as after a join answered by undecryptable traffic
    me = next(m for m in cm.members() if m.name == "n1")
    assert me.state == MemberState.DEAD
    result, _ = cm.allocate(CONFIG, [ServiceSpec(name="a")], {})
    assert result.allocations == {} and "cannot be decrypted" in result.pending["a"]
    # Table broadcasts only: the node's own facts record (it holds nothing) is no allocation.
    tables = [b for b in fake.broadcasts if b.startswith(TABLE_MESSAGE)]
    assert cm.table.entries == {} and tables == []
    cm._set_refused(False)  # noqa: SLF001
    assert next(m for m in cm.members() if m.name == "n1").state == MemberState.ALIVE
    result, _ = cm.allocate(CONFIG, [ServiceSpec(name="a")], {})
    assert str(result.allocations["a"].addresses[0]) == "10.77.0.100"
    tables = [b for b in fake.broadcasts if b.startswith(TABLE_MESSAGE)]
    assert tables and tables[0].startswith(TABLE_MESSAGE)


def test_at_start_own_nothing_until_joined_peers_publish_metadata():
    cm, fake = membership()
    fake.add("n2", b"")  # joined, but its first pass has not published metadata yet
    cm._hold_until = time.monotonic() + 60  # noqa: SLF001
    assert next(m for m in cm.members() if m.name == "n1").state == MemberState.DEAD
    assert [m.name for m in cm.members()] == ["n1"]  # n2 is not an lbd member yet
    fake.add("n2", meta())
    states = {m.name: m.state for m in cm.members()}
    assert states == {"n1": MemberState.ALIVE, "n2": MemberState.ALIVE}
    fake.add("n3", b"")  # a later joiner does not hold us again
    assert next(m for m in cm.members() if m.name == "n1").state == MemberState.ALIVE


def test_the_hold_is_bounded():
    cm, fake = membership()
    fake.add("n2", b"")  # say, a serf agent that never publishes lbd metadata
    cm._hold_until = time.monotonic() - 0.001  # noqa: SLF001
    assert next(m for m in cm.members() if m.name == "n1").state == MemberState.ALIVE


def test_only_the_allocator_writes_and_others_wait():
    cm, fake = membership()
    fake.add("a0", meta())  # a lower name: the allocator
    result, _ = cm.allocate(CONFIG, [ServiceSpec(name="s")], {})
    assert result.allocations == {} and "waiting for the allocator (a0)" in result.pending["s"]
    assert cm.table.entries == {}


def test_reconnect_tries_lost_members_and_absent_seeds(monkeypatch):
    import asyncio

    from lbd.cluster import coordination as mod
    from lbd.cluster.events import EventKind, MemberEvent

    cm, fake = membership()
    tried: list[list[str]] = []

    async def join(targets):
        tried.append(list(targets))
        if len(tried) == 1:
            raise OSError("nobody answered")
        return 1

    fake.join = join  # type: ignore[attr-defined]
    fake.profile = type("P", (), {"tcp_timeout": 0.1})()  # type: ignore[attr-defined]
    monkeypatch.setattr(mod, "RECONNECT_INTERVAL", 0.001)
    fake.add("n2", meta())
    cm._event(MemberEvent(EventKind.DEAD, MemberInfo("n2", "10.77.0.12", 7946, MemberState.DEAD, 3, 0.0, b"", b"")))
    fake.infos.pop("n2")  # reaped by gossip after gossip_to_the_dead_time
    fake.add("n3", meta())  # an alive member at the seed's address is not re-joined
    fake.infos["n3"] = MemberInfo("n3", "10.77.0.13", 7946, MemberState.ALIVE, 1, 0.0, meta(), b"")

    async def run() -> None:
        task = asyncio.ensure_future(cm._reconnect_loop(["10.77.0.13:7946", "10.77.0.14:7946"]))
        for _ in range(200):
            await asyncio.sleep(0.005)
            if len(tried) >= 2:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert tried[0] == ["10.77.0.12:7946", "10.77.0.14:7946"]
    cm._event(MemberEvent(EventKind.JOIN, MemberInfo("n2", "10.77.0.12", 7946, MemberState.ALIVE, 4, 0.0, b"", b"")))
    assert cm._lost == {}  # noqa: SLF001 - back: no more reconnects to it


def test_leave_stops_rejoining():
    import asyncio

    cm, fake = membership()
    left: list[bool] = []

    async def leave(timeout: float) -> bool:
        left.append(True)
        return True

    fake.leave = leave  # type: ignore[attr-defined]

    async def reconcile() -> None:
        raise AssertionError("nothing held: no pass to run")

    async def run() -> tuple[bool, bool]:
        cm._reconnect_task = asyncio.ensure_future(asyncio.sleep(60))  # noqa: SLF001
        await cm.leave(Handover(held=lambda: (), reconcile=reconcile))
        await asyncio.sleep(0)
        return cm._reconnect_task.cancelled(), bool(left)  # noqa: SLF001

    assert asyncio.run(run()) == (True, True)


def test_a_table_message_stamped_far_ahead_is_refused_and_counted():
    """Issue 10: one user message stamped 2**63-2 poisoned the hybrid clock."""
    from lbd.cluster.replication import MAX_CLOCK_SKEW_MS, AllocationTable, TableEntry
    from lbd.cluster.transport import UserPayload
    from lbd.metrics import REGISTRY

    m, _ = membership()
    before = REGISTRY.get_sample_value("lbd_allocation_table_entries_refused_total") or 0
    evil = AllocationTable("evil")
    evil.entries["web"] = TableEntry("web", "p", (ipaddress.ip_address("10.77.0.100"),), 2**63 - 2, 2**63 - 2, "evil")
    good = TableEntry("db", "p", (ipaddress.ip_address("10.77.0.101"),), 1000, 1000, "n0")
    evil.entries["db"] = good
    m._user(UserPayload(TABLE_MESSAGE + evil.encode(), ("10.77.0.66", 7946)))
    assert set(m.table.entries) == {"db"}, "the far-future entry is refused, the good one merged"
    assert m.table.clock <= time.time() * 1000 + MAX_CLOCK_SKEW_MS
    assert REGISTRY.get_sample_value("lbd_allocation_table_entries_refused_total") == before + 1
    AllocationTable.decode(m.table.encode())


async def test_key_mismatch_found_on_a_later_join_attempt(monkeypatch):
    """Peers not listening at the first attempt (connection refused) and refusing
    our keys on the next ones: the node must still stay out of the cluster."""
    import asyncio as aio_mod

    import lbd.cluster.coordination as mod

    m, fake = membership()
    attempts = []

    async def join(seeds):
        attempts.append(list(seeds))
        if len(attempts) > 1:
            fake.decrypt_failures += 1  # the peers answer, encrypted with another key
            raise ConnectionError("could not join any seed")
        raise ConnectionRefusedError("not listening yet")

    fake.join = join  # type: ignore[attr-defined]
    monkeypatch.setattr(mod, "JOIN_BACKOFF_INITIAL", 0.001)
    task = aio_mod.ensure_future(m._join(["10.77.0.12:7946"]))  # noqa: SLF001
    try:
        for _ in range(200):
            if m._refused:  # noqa: SLF001
                break
            await aio_mod.sleep(0.01)
        assert m._refused and len(attempts) >= 2  # noqa: SLF001
    finally:
        task.cancel()


def test_push_pull_state_is_still_a_table_for_older_nodes_and_carries_the_facts():
    import json as json_mod

    from lbd.cluster.coordination import FACTS_STATE_KEY

    cm, fake = membership()
    cm.allocate(CONFIG, [ServiceSpec(name="a")], {})
    cm.update_local(Member(name="n1", interfaces=LAN, holds=("10.77.0.100",), failing=frozenset({"static/b"})))
    state = cm._local_state(True)  # noqa: SLF001 - a join's push-pull carries the whole table
    assert state.startswith(TABLE_MESSAGE)
    # What a node before the facts records does with it: the table, the facts key ignored.
    from lbd.cluster.replication import AllocationTable

    _, entries = AllocationTable.decode(state[len(TABLE_MESSAGE):])
    assert [e.service for e in entries] == ["a"]
    assert FACTS_STATE_KEY in json_mod.loads(state[len(TABLE_MESSAGE):])
    # A newer node learns n1's facts from it.
    other = ClusterCoordinator(parse_config(CONFIG_TEXT.replace('name = "n1"', 'name = "n2"'), Path("/dev/null")))
    other_gossip = FakeGossip()
    other.gossip = other_gossip  # type: ignore[assignment]
    other._started = True  # noqa: SLF001
    other_gossip.add("n1", fake.meta)
    other._merge_remote_state(state, False)  # noqa: SLF001
    seen = next(m for m in other.members() if m.name == "n1")
    assert seen.holds == ("10.77.0.100",) and seen.failing == {"static/b"} and seen.holds_known


def peer(name: str) -> tuple[ClusterCoordinator, FakeGossip]:
    other = ClusterCoordinator(parse_config(CONFIG_TEXT.replace('name = "n1"', f'name = "{name}"'), Path("/dev/null")))
    gossip = FakeGossip()
    other.gossip = gossip  # type: ignore[assignment]
    other._started = True  # noqa: SLF001
    return other, gossip


def entries_of(state: bytes) -> list[str]:
    from lbd.cluster.replication import AllocationTable

    _, entries = AllocationTable.decode(state[len(TABLE_MESSAGE):])
    return [e.service for e in entries]


def test_push_pull_carries_a_digest_and_the_whole_table_only_now_and_then():
    """Issue 9: 0.9 MB of table in every push-pull at 10,000 services. A digest every time;
    the whole table at a join and every FULL_TABLE_EVERY-th push-pull."""
    import json as json_mod

    from lbd.cluster.coordination import FULL_TABLE_EVERY, TABLE_DIGEST_KEY, TABLE_SENDER_KEY

    cm, _ = membership()
    cm.allocate(CONFIG, [ServiceSpec(name="a")], {})
    states = [cm._local_state(False) for _ in range(2 * FULL_TABLE_EVERY)]  # noqa: SLF001
    whole = [i for i, state in enumerate(states) if entries_of(state) == ["a"]]
    assert whole == [FULL_TABLE_EVERY - 1, 2 * FULL_TABLE_EVERY - 1]  # the 6th and the 12th
    assert all(entries_of(state) == [] for i, state in enumerate(states) if i not in whole)
    for state in states:
        raw = json_mod.loads(state[len(TABLE_MESSAGE):])
        assert raw[TABLE_DIGEST_KEY] == cm.table.digest() and raw[TABLE_SENDER_KEY] == "n1"
    assert entries_of(cm._local_state(True)) == ["a"]  # noqa: SLF001


def test_a_push_pull_without_a_digest_makes_ours_whole_for_older_nodes():
    cm, _ = membership()
    cm.allocate(CONFIG, [ServiceSpec(name="a")], {})
    old, _ = peer("n2")
    old._merge_remote_state(TABLE_MESSAGE + cm.table.encode(), False)  # noqa: SLF001 - no digest: an older lbd
    assert set(old.table.entries) == {"a"}
    old.allocate(CONFIG, [ServiceSpec(name="a")], {})
    assert all(entries_of(old._local_state(False)) == ["a"] for _ in range(3))  # noqa: SLF001


async def test_replicas_with_different_tables_converge_through_digests():
    """A digest that differs after the merge sends our whole table to the sender (over
    TCP, once per TABLE_RESEND_INTERVAL); both ends do it, so both converge. Equal
    digests send nothing."""
    import asyncio

    from lbd.cluster.replication import TableEntry

    n1, g1 = membership()
    n2, g2 = peer("n2")
    g1.add("n2", meta())
    g2.add("n1", meta())
    n1.table.merge([TableEntry("a", "p", (ipaddress.ip_address("10.77.0.100"),), 1000, 1000, "n1")])
    n2.table.merge([TableEntry("b", "p", (ipaddress.ip_address("10.77.0.101"),), 1001, 1001, "n2")])
    # A push-pull: each sends its state (digest only), each merges the other's.
    s1, s2 = n1._local_state(False), n2._local_state(False)  # noqa: SLF001
    assert entries_of(s1) == entries_of(s2) == []
    n2._merge_remote_state(s1, False)  # noqa: SLF001
    n1._merge_remote_state(s2, False)  # noqa: SLF001
    n2._merge_remote_state(s1, False)  # noqa: SLF001 - again at once: not sent twice
    await asyncio.sleep(0)
    assert [addr for addr, _ in g1.sent] == ["10.77.0.1:7946"] and len(g2.sent) == 1
    n2._user(UserPayload(g1.sent[0][1], ("10.77.0.1", 7946)))  # noqa: SLF001
    n1._user(UserPayload(g2.sent[0][1], ("10.77.0.1", 7946)))  # noqa: SLF001
    assert set(n1.table.entries) == set(n2.table.entries) == {"a", "b"}
    assert n1.table.digest() == n2.table.digest()
    g1.sent.clear()
    g2.sent.clear()
    n1._merge_remote_state(n2._local_state(False), False)  # noqa: SLF001
    await asyncio.sleep(0)
    assert g1.sent == [] and g2.sent == []
    # Hostile: a digest that names no member, or ourselves, sends nothing.
    import json as json_mod

    raw = json_mod.loads(s2[len(TABLE_MESSAGE):])
    for name in ("nobody", "n1", "x" * 300):
        n1._merge_remote_state(TABLE_MESSAGE + json_mod.dumps({**raw, "td": "0", "tn": name}).encode(), False)  # noqa: SLF001
    await asyncio.sleep(0)
    assert g1.sent == []
