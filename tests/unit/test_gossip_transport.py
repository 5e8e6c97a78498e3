"""The asyncio transport on loopback: real UDP and TCP sockets, real clock."""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

import pytest

from lbd.cluster import wire
from lbd.cluster.errors import GossipError
from lbd.cluster.events import EventKind, MemberEvent
from lbd.cluster.transport import Gossip, JoinError, UserPayload
from lbd.metrics import REGISTRY
from lbd.model import MemberState

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


async def until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def state(g: Gossip, name: str) -> MemberState | None:
    for mi in g.members():
        if mi.name == name:
            return mi.state
    return None


async def started(name: str, **kw) -> Gossip:  # type: ignore[no-untyped-def]
    g = Gossip(name, "127.0.0.1:0", **kw)
    await g.start()
    return g


async def closing(*gs: Gossip) -> None:
    for g in gs:
        await g.close()


async def test_join_failure_and_leave_over_loopback() -> None:
    a = await started("a")
    b = await started("b")
    c = await started("c")
    try:
        assert a.port and a.port != b.port
        assert await b.join([f"127.0.0.1:{a.port}"]) == 1
        assert await c.join([f"127.0.0.1:{b.port}"]) == 1
        for g in (a, b, c):
            await until(lambda g=g: all(state(g, n) == MemberState.ALIVE for n in "abc"), what=f"{g.name} sees all")
        # Crash c: the others declare it dead.
        await c.close()
        await until(lambda: state(a, "c") == MemberState.DEAD and state(b, "c") == MemberState.DEAD,
                    what="c dead")
        # Graceful leave of b.
        assert await b.leave(2.0)
        await until(lambda: state(a, "b") == MemberState.LEFT, what="b left")
        stats = a.stats()
        assert stats["received"]["ping"] > 0 and stats["sent"]["ack"] > 0  # type: ignore[index]
    finally:
        await closing(a, b, c)


async def test_events_user_messages_meta_and_state_hooks() -> None:
    merged: list[bytes] = []
    a = await started("a", local_state=lambda join: b"a-state")
    b = await started("b", merge_remote_state=lambda data, join: merged.append(data))
    got: list[MemberEvent | UserPayload] = []
    b.on_event(got.append)
    b.on_user(got.append)
    try:
        await b.join([f"127.0.0.1:{a.port}"])
        assert merged == [b"a-state"]
        a.set_meta(b"role=web")
        a.broadcast_user(b"hello")
        await until(lambda: any(isinstance(x, UserPayload) and x.payload == b"hello" for x in got), what="user msg")
        await until(lambda: any(isinstance(x, MemberEvent) and x.kind == EventKind.UPDATE for x in got),
                    what="update")
        assert await a.send_user(f"127.0.0.1:{b.port}", b"direct")
        await until(lambda: any(isinstance(x, UserPayload) and x.payload == b"direct" for x in got), what="tcp msg")
        assert [mi.meta for mi in b.members() if mi.name == "a"] == [b"role=web"]
    finally:
        await closing(a, b)


async def test_async_iterator_of_events() -> None:
    a = await started("a")
    b = await started("b")
    try:
        it = a.events()
        first = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0)
        await b.join([f"127.0.0.1:{a.port}"])
        ev = await asyncio.wait_for(first, 3)
        assert isinstance(ev, MemberEvent) and ev.kind == EventKind.JOIN and ev.member.name == "b"
    finally:
        await closing(a, b)


async def test_encryption_same_key_joins_wrong_key_refused() -> None:
    a = await started("a", keys=[KEY_A])
    b = await started("b", keys=[KEY_B, KEY_A])  # rotating: can read a, writes with KEY_B
    c = await started("c", keys=[KEY_A, KEY_B])
    p = await started("p")  # plaintext
    before = REGISTRY.get_sample_value("lbd_gossip_decrypt_failures_total") or 0.0
    try:
        assert await c.join([f"127.0.0.1:{a.port}"]) == 1
        await until(lambda: state(a, "c") == MemberState.ALIVE, what="c joins a")
        with pytest.raises(JoinError):
            await b.join([f"127.0.0.1:{a.port}"])  # a cannot read KEY_B
        with pytest.raises(JoinError):
            await p.join([f"127.0.0.1:{a.port}"])  # plaintext refused
        with pytest.raises(JoinError):
            await a.join([f"127.0.0.1:{p.port}"])  # p replies err: no keys
        assert state(a, "b") is None and state(a, "p") is None
        after = REGISTRY.get_sample_value("lbd_gossip_decrypt_failures_total") or 0.0
        assert after > before
    finally:
        await closing(a, b, c, p)


async def test_join_retry_waits_for_a_late_seed() -> None:
    # Reserve a port, start the seed on it only after the joiner began retrying.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    b = await started("b")
    late: list[Gossip] = []
    try:
        task = asyncio.ensure_future(b.join_with_retry([f"127.0.0.1:{port}"], max_attempts=6))
        await asyncio.sleep(0.8)
        assert not task.done()
        a = Gossip("a", f"127.0.0.1:{port}")
        await a.start()
        late.append(a)
        assert await asyncio.wait_for(task, 20) == 1
        await until(lambda: state(a, "b") == MemberState.ALIVE, what="late join")
    finally:
        await closing(b, *late)


async def test_join_unresolvable_or_closed_seed_raises() -> None:
    b = await started("b")
    try:
        with pytest.raises(JoinError):
            await b.join(["127.0.0.1:1"])
        with pytest.raises(JoinError):
            await b.join(["[::1"])
    finally:
        await b.close()


async def test_garbage_on_the_wire_is_survived() -> None:
    a = await started("a")
    b = await started("b")
    try:
        await b.join([f"127.0.0.1:{a.port}"])
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for junk in (b"", b"\x07\xff", b"\x09\x80", b"\x0c\x00\x00\x00\x00\x00", bytes(range(256))):
            u.sendto(junk, ("127.0.0.1", a.port))
        u.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
        writer.write(b"\x06\x83\xa5Nodes\x05")  # a truncated push-pull, then EOF
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), 3)
        writer.close()
        assert isinstance(wire.decode_stream(reply).message, wire.Err)
        await asyncio.sleep(0.3)
        assert state(a, "b") == MemberState.ALIVE and state(b, "a") == MemberState.ALIVE
        assert a.stats()["malformed"] > 0  # type: ignore[operator]
    finally:
        await closing(a, b)


def test_bad_profile_and_address() -> None:
    with pytest.raises(ValueError):
        Gossip("x", "127.0.0.1:0", profile="nope")
    with pytest.raises(GossipError):
        Gossip("x", "127.0.0.1:99999")


async def test_metrics_exported() -> None:
    a = await started("a")
    b = await started("b")
    try:
        await b.join([f"127.0.0.1:{a.port}"])
        await until(lambda: (REGISTRY.get_sample_value("lbd_gossip_messages_received_total", {"type": "ack"}) or 0) > 0,
                    what="ack counted")
        assert REGISTRY.get_sample_value("lbd_gossip_messages_sent_total", {"type": "push_pull"})
        assert REGISTRY.get_sample_value("lbd_cluster_members", {"state": "alive"}) is not None
        for name in ("lbd_gossip_suspicions_total", "lbd_gossip_refutes_total"):
            assert REGISTRY.get_sample_value(name) is not None
    finally:
        await closing(a, b)




def _has_ipv6_loopback() -> bool:
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_members() -> None:
    a = await started6("a")
    b = await started6("b")
    try:
        assert await b.join([f"[::1]:{a.port}"]) == 1
        await until(lambda: state(a, "b") == MemberState.ALIVE, what="v6 join")
        (info,) = [mi for mi in a.members() if mi.name == "b"]
        assert info.address == "::1" and info.addr == f"[::1]:{b.port}"
    finally:
        await closing(a, b)


async def started6(name: str) -> Gossip:
    g = Gossip(name, "[::1]:0")
    await g.start()
    return g
