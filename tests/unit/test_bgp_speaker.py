"""The asyncio speaker over loopback: two lbd announcers peering on 127.0.0.1
(non-179 ports), TCP MD5, withdrawals, graceful stop, hold timer against a
frozen in-test peer, the listener's address filter, and collisions."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import time
from typing import Callable

import pytest

from lbd.bgp import codec
from lbd.bgp.announcer import BgpAnnouncer, peer_ttl
from lbd.bgp.codec import MultiprotocolCap, Open
from lbd.bgp.events import Event, NotificationReceived, SessionDown, UpdateReceived
from lbd.metrics import REGISTRY
from lbd.config.schema import BgpPeerConfig
from lbd.model import BgpRoute

LO = ipaddress.IPv4Address("127.0.0.1")
pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Rib:
    """What one announcer hears from its peers (Adj-RIB-In), from the events."""

    def __init__(self) -> None:
        self.routes: dict[str, dict] = {}  # type: ignore[type-arg]
        self.events: list[tuple[str, Event]] = []

    def __call__(self, peer: str, event: Event) -> None:
        self.events.append((peer, event))
        if isinstance(event, SessionDown):
            self.routes.pop(peer, None)  # lbd keeps no stale routes
        if isinstance(event, UpdateReceived):
            table = self.routes.setdefault(peer, {})
            for p in event.update.withdrawn_all():
                table.pop(p, None)
            attrs = event.update.attributes
            for p in event.update.announced():
                nh = attrs.next_hop if p.version == 4 else attrs.mp_reach.next_hops[0]
                table[p] = (nh, attrs.communities, attrs.large_communities, attrs.local_pref)


def peer(name: str, my: int, other: int, port: int = 179, **kw: object) -> BgpPeerConfig:
    base: dict[str, object] = dict(name=name, my_asn=my, peer_address=LO, peer_asn=other, peer_port=port, hold_time=9, connect_time=2)
    base.update(kw)
    return BgpPeerConfig(**base)  # type: ignore[arg-type]


def state(ann: BgpAnnouncer, name: str) -> str:
    return next(s["state"] for s in ann.status() if s["name"] == name)  # type: ignore[return-value]


async def pair(password: str | None = None, gr: bool = False, ibgp: bool = False):  # type: ignore[no-untyped-def]
    port = free_port()
    rib_a, rib_b = Rib(), Rib()
    asn_b = 64512 if ibgp else 64513
    a = BgpAnnouncer("node-a", listen_port=port, listen_addresses=("127.0.0.1",), on_event=rib_a)
    b = BgpAnnouncer("node-b", on_event=rib_b)
    await a.set_peers([peer("to-b", 64512, asn_b, passive=True, password=password, graceful_restart=gr, router_id=ipaddress.IPv4Address("10.77.0.1"))])
    await b.set_peers([peer("to-a", asn_b, 64512, port=port, password=password, graceful_restart=gr, router_id=ipaddress.IPv4Address("10.77.0.2"))])
    return a, b, rib_a, rib_b


async def test_two_speakers_exchange_routes_with_md5() -> None:
    a, b, rib_a, _ = await pair(password="lbd-secret")
    try:
        routes = [
            BgpRoute(ipaddress.ip_network("10.88.0.1/32"), ("to-a",), communities=((65000, 7),), large_communities=((1, 2, 3),)),
            BgpRoute(ipaddress.ip_network("10.88.1.0/24"), ("to-a",)),
            BgpRoute(ipaddress.ip_network("fd77::10/128"), ("to-a",)),
            BgpRoute(ipaddress.ip_network("10.88.9.9/32"), ("someone-else",)),
        ]
        b.apply(routes)
        await until(lambda: state(a, "to-b") == "established" and state(b, "to-a") == "established", what="established")
        await until(lambda: len(rib_a.routes.get("to-b", {})) == 3, what="routes at a")
        got = rib_a.routes["to-b"]
        assert got[ipaddress.ip_network("10.88.0.1/32")] == (LO, ((65000, 7),), ((1, 2, 3),), None)
        assert got[ipaddress.ip_network("fd77::10/128")][0] == ipaddress.IPv6Address("::1")  # lo's IPv6 address
        assert ipaddress.ip_network("10.88.9.9/32") not in got

        status = next(s for s in b.status() if s["name"] == "to-a")
        assert status["prefixes_announced"] == 3 and status["hold_time"] == 9 and status["keepalive_time"] == 3
        assert "4-octet-as" in status["capabilities"] and status["uptime"] >= 0
        assert REGISTRY.get_sample_value("lbd_bgp_session_up", {"peer": "to-a"}) == 1
        assert REGISTRY.get_sample_value("lbd_bgp_announced_prefixes", {"peer": "to-a"}) == 3
        assert REGISTRY.get_sample_value("lbd_bgp_updates_received_total", {"peer": "to-b"}) >= 3
        assert b._listeners == []  # no passive peer: b listens nowhere

        # Withdraw one (level-triggered apply), change the attributes of another.
        b.apply([routes[0], BgpRoute(ipaddress.ip_network("10.88.1.0/24"), ("to-a",), communities=((1, 1),))])
        await until(lambda: len(rib_a.routes["to-b"]) == 2, what="withdrawal at a")
        await until(lambda: rib_a.routes["to-b"][ipaddress.ip_network("10.88.1.0/24")][1] == ((1, 1),), what="attribute change")

        # Removing the peer ends its session with a Cease.
        await b.set_peers([])
        await until(lambda: any(isinstance(e, NotificationReceived) and (e.code, e.subcode) == (6, 2) for _, e in rib_a.events), what="cease at a")
        assert REGISTRY.get_sample_value("lbd_bgp_session_up", {"peer": "to-a"}) is None
    finally:
        await b.close()
        await a.close()


async def test_md5_mismatch_never_establishes() -> None:
    port = free_port()
    a = BgpAnnouncer("node-a", listen_port=port, listen_addresses=("127.0.0.1",))
    b = BgpAnnouncer("node-b")
    try:
        await a.set_peers([peer("to-b", 64512, 64513, passive=True, password="one", router_id=ipaddress.IPv4Address("10.77.0.1"))])
        await b.set_peers([peer("to-a", 64513, 64512, port=port, password="two", connect_time=1, router_id=ipaddress.IPv4Address("10.77.0.2"))])
        await asyncio.sleep(2.5)
        assert state(a, "to-b") == "active" and state(b, "to-a") in ("connect", "active", "idle")
    finally:
        await b.close()
        await a.close()


async def test_graceful_close_sends_no_notification() -> None:
    a, b, rib_a, _ = await pair(gr=True, ibgp=True)
    try:
        b.apply([BgpRoute(ipaddress.ip_network("10.88.0.1/32"), ("to-a",), local_pref=250)])
        await until(lambda: len(rib_a.routes.get("to-b", {})) == 1, what="route")
        assert rib_a.routes["to-b"][ipaddress.ip_network("10.88.0.1/32")][3] == 250  # iBGP: LOCAL_PREF
        assert "graceful-restart" in next(s for s in b.status())["capabilities"]  # type: ignore[operator]
        await b.close(graceful_restart=True)
        await until(lambda: any(isinstance(e, SessionDown) for _, e in rib_a.events), what="session down at a")
        assert not any(isinstance(e, NotificationReceived) for _, e in rib_a.events)
    finally:
        await b.close()
        await a.close()


async def test_hold_timer_expires_against_frozen_peer() -> None:
    got: list[bytes] = []
    done = asyncio.Event()

    async def frozen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answer OPEN and the first KEEPALIVE, then fall silent (as a SIGSTOPped router would).
        hdr = await reader.readexactly(19)
        await reader.readexactly(struct.unpack("!H", hdr[16:18])[0] - 19)  # our OPEN
        caps = (MultiprotocolCap(1, 1),)
        writer.write(codec.encode_open(Open.for_asn(64513, 3, ipaddress.IPv4Address("10.77.0.9"), caps)) + codec.encode_keepalive())
        await writer.drain()
        try:
            while True:
                hdr = await asyncio.wait_for(reader.readexactly(19), 10)
                length, msg_type = struct.unpack("!HB", hdr[16:19])
                body = await reader.readexactly(length - 19)
                if msg_type == 3:
                    got.append(body)
                    break
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        done.set()
        writer.close()

    server = await asyncio.start_server(frozen, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ann = BgpAnnouncer("node")
    try:
        start = time.monotonic()
        await ann.set_peers([peer("frozen", 64512, 64513, port=port, hold_time=3, router_id=ipaddress.IPv4Address("10.77.0.1"))])
        await asyncio.wait_for(done.wait(), 15)
        assert got and got[0][:2] == b"\x04\x00"  # NOTIFICATION Hold Timer Expired
        assert 2.5 <= time.monotonic() - start < 10
        assert next(s for s in ann.status())["last_error"].startswith("sent hold timer expired")  # type: ignore[union-attr]
    finally:
        await ann.close()
        server.close()


async def test_listener_refuses_unconfigured_addresses() -> None:
    port = free_port()
    a = BgpAnnouncer("node-a", listen_port=port, listen_addresses=("127.0.0.1",))
    try:
        await a.set_peers([peer("p", 64512, 64513, passive=True, router_id=ipaddress.IPv4Address("10.77.0.1"))])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
        data = await asyncio.wait_for(reader.read(100), 5)
        assert data == b""  # closed without a word
        writer.close()
        # The configured address is accepted and gets an OPEN.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        hdr = await asyncio.wait_for(reader.readexactly(19), 5)
        assert hdr[18] == 1
        writer.close()
        # With no passive peer left, the listener goes away.
        await a.set_peers([peer("p", 64512, 64513, router_id=ipaddress.IPv4Address("10.77.0.1"), peer_port=free_port())])
        assert a._listeners == []
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        await a.close()


async def test_collision_leaves_one_session() -> None:
    """Both sides connect and listen: RFC 4271 §6.8 keeps exactly one connection."""
    pa, pb = free_port(), free_port()
    rib_a, rib_b = Rib(), Rib()
    a = BgpAnnouncer("a", listen_port=pa, listen_addresses=("127.0.0.1",), on_event=rib_a)
    b = BgpAnnouncer("b", listen_port=pb, listen_addresses=("127.0.0.1",), on_event=rib_b)
    # A passive dummy peer on each side makes the listener run; the real peers connect actively.
    dummy = dict(passive=True, peer_address=ipaddress.IPv4Address("127.0.0.9"))
    try:
        await asyncio.gather(
            a.set_peers([peer("to-b", 64512, 64513, port=pb, router_id=ipaddress.IPv4Address("10.77.0.1")), peer("dummy", 64512, 64999, **dummy)]),
            b.set_peers([peer("to-a", 64513, 64512, port=pa, router_id=ipaddress.IPv4Address("10.77.0.2")), peer("dummy", 64513, 64999, **dummy)]),
        )
        await until(lambda: state(a, "to-b") == "established" and state(b, "to-a") == "established", what="established")
        await asyncio.sleep(1.0)
        assert state(a, "to-b") == "established" and state(b, "to-a") == "established"
        sa = next(s for s in a.status() if s["name"] == "to-b")
        assert sa["established_transitions"] == 1
        assert a._speakers["to-b"].status_connections() == 1 and b._speakers["to-a"].status_connections() == 1
    finally:
        await asyncio.gather(a.close(), b.close())


async def _read_msg(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    hdr = await asyncio.wait_for(reader.readexactly(19), 5)
    length, msg_type = struct.unpack("!HB", hdr[16:19])
    return msg_type, await asyncio.wait_for(reader.readexactly(length - 19), 5)


async def test_collision_closes_the_connection_of_the_lower_identifier() -> None:
    """A scripted peer with a higher BGP identifier opens a second connection
    while lbd's own is in OpenSent: lbd closes its own with Cease 6/7 and
    continues on the peer's (RFC 4271 §6.8)."""
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    fake_port = server.sockets[0].getsockname()[1]
    listen_port = free_port()
    a = BgpAnnouncer("a", listen_port=listen_port, listen_addresses=("127.0.0.1",))
    dummy = peer("dummy", 64512, 64999, passive=True, peer_address=ipaddress.IPv4Address("127.0.0.9"))
    their_open = codec.encode_open(Open.for_asn(64513, 9, ipaddress.IPv4Address("10.77.0.9"), (MultiprotocolCap(1, 1),)))
    writers = []
    try:
        await a.set_peers([peer("fake", 64512, 64513, port=fake_port, router_id=ipaddress.IPv4Address("10.77.0.1")), dummy])
        r1, w1 = await asyncio.wait_for(accepted.get(), 5)  # lbd's outbound connection
        writers.append(w1)
        assert (await _read_msg(r1))[0] == 1
        r2, w2 = await asyncio.open_connection("127.0.0.1", listen_port)  # ours, inbound at lbd
        writers.append(w2)
        assert (await _read_msg(r2))[0] == 1
        w2.write(their_open)
        await w2.drain()
        msg_type, body = await _read_msg(r1)
        assert (msg_type, body[:2]) == (3, b"\x06\x07")  # Cease / Connection Collision Resolution on lbd's own
        assert (await _read_msg(r2))[0] == 4  # KEEPALIVE on the surviving one
        w2.write(codec.encode_keepalive())
        await w2.drain()
        await until(lambda: state(a, "fake") == "established", what="established on the inbound connection")
        assert a._speakers["fake"].session.outbound is False
    finally:
        for w in writers:
            w.close()
        await a.close()
        server.close()


async def test_runner_announces_rereads_on_sighup_and_ceases_on_sigterm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``python -m lbd.testing.bgp_speaker`` as the interop tests and the benchmark drive it."""
    import json
    import signal
    import sys

    port = free_port()
    rib = Rib()
    a = BgpAnnouncer("a", listen_port=port, listen_addresses=("127.0.0.1",), on_event=rib)
    await a.set_peers([peer("runner", 64512, 64513, passive=True, router_id=ipaddress.IPv4Address("10.77.0.1"))])
    pfile = tmp_path / "prefixes"
    pfile.write_text("10.88.0.1/32\n10.88.0.2/32\n# comment\nfd77::7/128\nnot-a-prefix\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lbd.testing.bgp_speaker", "--peer-address", "127.0.0.1", "--peer-port", str(port), "--peer-asn", "64512",
        "--my-asn", "64513", "--router-id", "10.77.0.2", "--hold-time", "9", "--prefixes-file", str(pfile),
        "--prefix", "10.88.1.0/24", "--community", "65000:1", "--large-community", "1:2:3",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    lines: list[dict] = []  # type: ignore[type-arg]

    async def read() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            lines.append(json.loads(line))

    reader = asyncio.create_task(read())
    try:
        await until(lambda: len(rib.routes.get("runner", {})) == 4, what="runner routes")
        got = rib.routes["runner"]
        assert got[ipaddress.ip_network("10.88.1.0/24")][1:3] == (((65000, 1),), ((1, 2, 3),))
        await until(lambda: any(e["event"] == "eor_sent" and e["afi"] == 1 and e["prefixes"] == 3 for e in lines), what="eor_sent line")
        assert any(e["event"] == "established" and e["hold_time"] == 9 for e in lines)
        assert any(e["event"] == "error" and "not-a-prefix" in e["error"] for e in lines)

        pfile.write_text("10.88.0.2/32\n")
        proc.send_signal(signal.SIGHUP)
        await until(lambda: set(rib.routes["runner"]) == {ipaddress.ip_network("10.88.0.2/32"), ipaddress.ip_network("10.88.1.0/24")}, what="withdrawal after SIGHUP")

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        await until(lambda: any(isinstance(e, NotificationReceived) and (e.code, e.subcode) == (6, 2) for _, e in rib.events), what="cease")
        await asyncio.wait_for(reader, 5)
        assert lines[-1]["event"] == "stopped"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()
        await a.close()


async def test_set_peers_restarts_changed_and_filters_by_node_selector() -> None:
    port = free_port()
    rib_a = Rib()
    a = BgpAnnouncer("node-a", listen_port=port, listen_addresses=("127.0.0.1",), on_event=rib_a)
    b = BgpAnnouncer("node-b", node_labels={"rack": "r1"})
    rid_b = ipaddress.IPv4Address("10.77.0.2")
    try:
        await a.set_peers([peer("to-b", 64512, 64513, passive=True, router_id=ipaddress.IPv4Address("10.77.0.1"))])
        b.apply([BgpRoute(ipaddress.ip_network("10.88.0.1/32"), ("to-a",))])  # before the peer exists: kept
        elsewhere = peer("elsewhere", 64513, 64512, port=free_port(), node_selector={"rack": "r2"}, router_id=rid_b)
        await b.set_peers([peer("to-a", 64513, 64512, port=port, node_selector={"rack": "r1"}, router_id=rid_b), elsewhere])
        assert [s["name"] for s in b.status()] == ["to-a"]
        await until(lambda: len(rib_a.routes.get("to-b", {})) == 1, what="route")
        # Same config again: nothing restarts.
        await b.set_peers([peer("to-a", 64513, 64512, port=port, node_selector={"rack": "r1"}, router_id=rid_b)])
        await asyncio.sleep(0.3)
        assert not any(isinstance(e, SessionDown) for _, e in rib_a.events)
        # A changed hold time restarts the session, which comes back with the routes.
        await b.set_peers([peer("to-a", 64513, 64512, port=port, node_selector={"rack": "r1"}, router_id=rid_b, hold_time=30)])
        await until(lambda: any(isinstance(e, SessionDown) for _, e in rib_a.events), what="restart")
        await until(lambda: state(b, "to-a") == "established", what="re-established")
        assert next(s for s in b.status())["hold_time"] == 9  # min(30, a's 9)
        await until(lambda: len(rib_a.routes.get("to-b", {})) == 1, what="route again")
    finally:
        await b.close()
        await a.close()


async def test_ipv6_session_carries_both_families() -> None:
    """A session over ::1: IPv6 routes with the session address as next hop,
    IPv4 routes with lo's IPv4 address (MP-BGP both ways)."""
    port = free_port()
    rib_a = Rib()
    lo6 = ipaddress.IPv6Address("::1")
    a = BgpAnnouncer("a", listen_port=port, listen_addresses=("::1",), on_event=rib_a)
    b = BgpAnnouncer("b")
    try:
        await a.set_peers([peer("to-b", 64512, 64513, passive=True, peer_address=lo6, password="v6", router_id=ipaddress.IPv4Address("10.77.0.1"))])
        await b.set_peers([peer("to-a", 64513, 64512, port=port, peer_address=lo6, password="v6", router_id=ipaddress.IPv4Address("10.77.0.2"))])
        b.apply([BgpRoute(ipaddress.ip_network("fd77::1/128"), ("to-a",)), BgpRoute(ipaddress.ip_network("10.88.0.1/32"), ("to-a",))])
        await until(lambda: len(rib_a.routes.get("to-b", {})) == 2, what="both families")
        got = rib_a.routes["to-b"]
        assert got[ipaddress.ip_network("fd77::1/128")][0] == lo6
        assert got[ipaddress.ip_network("10.88.0.1/32")][0] == LO
    finally:
        await b.close()
        await a.close()


@pytest.mark.parametrize("text", ["10.1.2.3/24", "10.1.2.3", "fd77::1/64", "0.0.0.0/0", "10.77.0.1/32"])
def test_runner_parse_prefix_matches_ip_network(text: str) -> None:
    from lbd.testing.bgp_speaker import parse_prefix

    assert parse_prefix(text) == ipaddress.ip_network(text, strict=False)


@pytest.mark.parametrize("text", ["10.1.2/24", "10.1.2.3/33", "x", "10.1.2.3/a", "01.2.3.4/8", "fd77::g/64"])
def test_runner_parse_prefix_rejects(text: str) -> None:
    from lbd.testing.bgp_speaker import parse_prefix

    with pytest.raises((ValueError, OSError)):
        parse_prefix(text)


def test_address_scan_and_next_hop_rules() -> None:
    from lbd.bgp import netutil

    addrs = netutil.scan_addresses()
    assert any(a == LO for _, a, _ in addrs)  # rtnetlink dump sees lo
    fake = [(1, LO, 254), (1, ipaddress.ip_address("::1"), 254), (2, ipaddress.ip_address("10.77.0.2"), 0),
            (2, ipaddress.ip_address("fe80::1"), 253), (2, ipaddress.ip_address("fd77::2"), 0), (3, ipaddress.ip_address("10.88.0.1"), 0)]
    assert netutil.other_family_next_hop(ipaddress.ip_address("10.77.0.2"), fake) == ipaddress.ip_address("fd77::2")
    assert netutil.other_family_next_hop(ipaddress.ip_address("fd77::2"), fake) == ipaddress.ip_address("10.77.0.2")
    assert netutil.other_family_next_hop(ipaddress.ip_address("10.88.0.1"), fake) is None  # no IPv6 there
    assert netutil.link_local_on_interface_of(ipaddress.ip_address("10.77.0.2"), fake) == ipaddress.ip_address("fe80::1")
    cfg = peer("p", 64512, 64513)
    assert netutil.choose_router_id(cfg.router_id, cfg.source_address, "n", fake) == ipaddress.ip_address("10.77.0.2")
    assert netutil.choose_router_id(cfg.router_id, cfg.source_address, "n", []) == ipaddress.IPv4Address(__import__("zlib").crc32(b"n"))
    assert peer_ttl(cfg) == 1 and peer_ttl(peer("p", 1, 1)) == 255
    assert peer_ttl(peer("p", 1, 2, ebgp_multihop=4)) == 4
    md5 = netutil.md5_struct(LO, b"key")
    assert len(md5) == 216 and md5[130:132] == struct.pack("=H", 3)


async def test_runner_graceful_stop_and_restart_bit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGUSR1 with graceful restart negotiated closes without a NOTIFICATION;
    a run with --restarting sets the Restart State bit, then sends End-of-RIB."""
    import json
    import signal
    import sys

    from lbd.bgp.codec import GracefulRestartCap

    port = free_port()
    rib = Rib()
    a = BgpAnnouncer("a", listen_port=port, listen_addresses=("127.0.0.1",), on_event=rib)
    await a.set_peers([peer("runner", 64512, 64513, passive=True, graceful_restart=True, router_id=ipaddress.IPv4Address("10.77.0.1"))])
    argv = [sys.executable, "-m", "lbd.testing.bgp_speaker", "--peer-address", "127.0.0.1", "--peer-port", str(port), "--peer-asn", "64512",
            "--my-asn", "64513", "--router-id", "10.77.0.2", "--hold-time", "9", "--prefix", "10.88.0.1/32", "--graceful-restart"]
    procs = []
    try:
        for restarting in (False, True):
            since = len(rib.events)
            proc = await asyncio.create_subprocess_exec(*argv, *(["--restarting"] if restarting else []),
                                                        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            procs.append(proc)
            await until(lambda: state(a, "runner") == "established", what="established")
            opened = a._speakers["runner"].session.peer_open
            gr = opened.capability(GracefulRestartCap) if opened else None
            assert isinstance(gr, GracefulRestartCap) and gr.restarting is restarting
            assert gr.families == ((1, 1, 0x80), (2, 1, 0x80))
            await until(lambda: any(isinstance(e, UpdateReceived) and e.update.end_of_rib() == (1, 1) for _, e in rib.events[since:]), what="End-of-RIB")
            proc.send_signal(signal.SIGUSR1)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            out = [json.loads(line) for line in (await proc.stdout.read()).splitlines()]  # type: ignore[union-attr]
            assert out[-1] == {**out[-1], "event": "stopped", "graceful": True}
            await until(lambda: any(isinstance(e, SessionDown) for _, e in rib.events[since:]), what="session down")
            assert not any(isinstance(e, NotificationReceived) for _, e in rib.events[since:])
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await a.close()


def test_runner_fast_ipv4_networks_are_real_networks() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from lbd.testing import bgp_speaker as runner

    assert runner._ipv4_network is runner._ipv4_network_fast  # CPython's ipaddress as tested here

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, 2**32 - 1), st.integers(0, 32))
    def check(value: int, plen: int) -> None:
        text = f"{ipaddress.IPv4Address(value)}/{plen}"
        fast, real = runner.parse_prefix(text), ipaddress.ip_network(text, strict=False)
        assert fast == real and hash(fast) == hash(real) and str(fast) == str(real)
        assert {real: 1}[fast] == 1 and fast.prefixlen == plen and fast.network_address.packed == real.network_address.packed
        assert runner._ipv4_network_slow(int(real.network_address), plen) == fast

    check()
