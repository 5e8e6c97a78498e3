"""An address of the other family never breaks gossip sends (issue 10 finding 4).

A ping's source, an indirect ping's target and an Alive's address all come
from peers. On uvloop, sending to an IPv6 address from an IPv4 socket raises
ValueError (asyncio raises OSError); the transport caught only OSError, so one
such destination dropped the rest of the send batch and the timer re-arm.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from lbd.cluster import wire
from lbd.cluster.transport import Gossip
from lbd.model import MemberState

V6 = ipaddress.IPv6Address("fd77::66").packed


def _acks(sock: socket.socket, timeout: float) -> set[int]:
    sock.settimeout(timeout)
    seen: set[int] = set()
    try:
        while True:
            data, _ = sock.recvfrom(65536)
            for msg in wire.decode_packet(data).messages:
                if isinstance(msg, wire.Ack):
                    seen.add(msg.seq_no)
    except (socket.timeout, TimeoutError):
        return seen


async def _scenario() -> None:
    loop = asyncio.get_running_loop()
    g = Gossip("a", "127.0.0.1:0", profile="default")
    await g.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    dest = ("127.0.0.1", g.port)

    async def acks(timeout: float = 0.3) -> set[int]:
        return await loop.run_in_executor(None, _acks, sock, timeout)

    try:
        # 1. A ping whose source is IPv6, then a good ping: the good one is answered.
        sock.sendto(wire.make_compound([
            wire.encode(wire.Ping(1, "a", V6, 7946, "evil")),
            wire.encode(wire.Ping(2, "a")),
        ]), dest)
        assert 2 in await acks()
        # 2. An indirect ping to an IPv6 target, then a good ping.
        sock.sendto(wire.make_compound([
            wire.encode(wire.IndirectPing(3, V6, 7946, "x")),
            wire.encode(wire.Ping(4, "a")),
        ]), dest)
        assert 4 in await acks()
        # 3. An Alive at an IPv6 address: probing it happens on the timer, which
        #    must keep running (the member fails its probes and gets suspected).
        sock.sendto(wire.encode(wire.Alive(1, "evil6", V6, 7946)), dest)
        deadline = loop.time() + 10
        while loop.time() < deadline:
            st = {m.name: m.state for m in g.members()}
            if st.get("evil6") in (MemberState.SUSPECT, MemberState.DEAD):
                break
            await asyncio.sleep(0.05)
        assert {m.name: m.state for m in g.members()}["evil6"] in (MemberState.SUSPECT, MemberState.DEAD)
        assert g._timer is not None  # noqa: SLF001 - re-armed
        sock.sendto(wire.encode(wire.Ping(5, "a")), dest)
        assert 5 in await acks()
    finally:
        sock.close()
        await g.close()


def test_other_family_addresses_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(_scenario(), 30))


def test_other_family_addresses_on_asyncio() -> None:
    with asyncio.Runner() as runner:
        runner.run(asyncio.wait_for(_scenario(), 30))


async def test_a_raising_send_keeps_the_batch_and_the_timer() -> None:
    # Any exception type the socket layer may raise for one destination.
    g = Gossip("a", "127.0.0.1:0")
    await g.start()
    sent: list[tuple[str, int]] = []

    class Picky:
        def __init__(self, real: asyncio.DatagramTransport) -> None:
            self.real = real

        def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
            if ":" in addr[0]:
                raise ValueError("IPv6 address for an IPv4 socket")
            if addr[0] == "10.77.0.99":
                raise TypeError("bad address")
            sent.append(addr)

        def close(self) -> None:
            self.real.close()

    g._udp = Picky(g._udp)  # type: ignore[assignment,arg-type]  # noqa: SLF001
    try:
        packet = wire.make_compound([
            wire.encode(wire.Ping(1, "a", V6, 7946)),
            wire.encode(wire.Ping(2, "a", ipaddress.IPv4Address("10.77.0.99").packed, 7946)),
            wire.encode(wire.Ping(3, "a", ipaddress.IPv4Address("10.77.0.5").packed, 7946)),
        ])
        g._timer.cancel()  # noqa: SLF001
        g._timer = None  # noqa: SLF001
        g._on_packet(packet, ("10.77.0.5", 7946))  # noqa: SLF001
        assert ("10.77.0.5", 7946) in sent
        assert g._timer is not None  # noqa: SLF001
    finally:
        await g.close()
