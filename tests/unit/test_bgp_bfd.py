"""BGP as a BFD client (RFC 5882) and the graceful stop order, where they are decided:
the FSM, the announcer (two announcers over loopback, each with its own BFD
engine on its own ports), and the daemon's stop/shutdown sequence."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest
from bgp_helpers import cfg, establish, messages, notifications
from test_bgp_speaker import Rib, free_port, peer, state, until

from lbd.bgp import codec
from lbd.bgp.announcer import BgpAnnouncer
from lbd.bgp.events import NotificationReceived, SessionDown, State, UpdateReceived
from lbd.bgp.fsm import Session
from lbd.config.schema import BfdProfileConfig
from lbd.model import BgpRoute

pytestmark = pytest.mark.timeout(60)
FAST = BfdProfileConfig(name="fast", receive_interval=50, transmit_interval=50, detect_multiplier=3)
VIP = ipaddress.ip_network("10.88.0.1/32")


def test_fsm_bfd_down_drops_established_session_with_cease_10() -> None:
    s = Session(cfg())
    establish(s)
    assert s.state == State.ESTABLISHED
    s.data_to_send()
    events = s.bfd_down(1.0)
    assert notifications(events) == [(6, 10)]  # Cease / BFD Down (RFC 9384)
    assert any(isinstance(e, SessionDown) for e in events)
    assert s.state == State.IDLE and s.next_deadline() is not None  # it will reconnect
    assert isinstance(messages(s.data_to_send())[-1], codec.Notification)
    assert "BFD" in (s.stats.last_error or "")


def test_fsm_bfd_down_ignored_without_connection() -> None:
    s = Session(cfg())
    s.start(0.0)
    assert s.bfd_down(0.5) == [] and s.state == State.CONNECT


def udp_ports(n: int) -> list[int]:
    out = []
    for _ in range(n):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            out.append(s.getsockname()[1])
    return out


async def bfd_pair() -> tuple[BgpAnnouncer, BgpAnnouncer, Rib, Rib]:
    port = free_port()
    p1, p2, q1, q2 = udp_ports(4)
    rib_a, rib_b = Rib(), Rib()
    a = BgpAnnouncer("node-a", listen_port=port, listen_addresses=("127.0.0.1",), on_event=rib_a)
    b = BgpAnnouncer("node-b", on_event=rib_b)
    a._bfd_options = dict(listen_ports=(p1, q1), peer_ports=(p2, q2), priority=False)
    b._bfd_options = dict(listen_ports=(p2, q2), peer_ports=(p1, q1), priority=False)
    await a.set_peers([peer("to-b", 64512, 64513, passive=True, bfd_profile="fast",
                            router_id=ipaddress.IPv4Address("10.77.0.1"))], [FAST])
    await b.set_peers([peer("to-a", 64513, 64512, port=port, bfd_profile="fast", connect_time=1,
                            router_id=ipaddress.IPv4Address("10.77.0.2"))], [FAST])
    return a, b, rib_a, rib_b


def bfd_state(ann: BgpAnnouncer, name: str) -> Any:
    return next((s["bfd"] for s in ann.status() if s["name"] == name), None)


async def test_bfd_comes_up_and_shows_in_status() -> None:
    a, b, rib_a, _ = await bfd_pair()
    try:
        b.apply([BgpRoute(VIP, ("to-a",))])
        await until(lambda: bfd_state(a, "to-b") == "Up" and bfd_state(b, "to-a") == "Up", what="bfd up")
        await until(lambda: VIP in rib_a.routes.get("to-b", {}), what="route")
        (row,) = b.bfd_status()
        assert row["peer"] == "to-a" and row["profile"] == "fast" and row["multihop"] is False
        assert row["remote_discriminator"] == a.bfd_status()[0]["local_discriminator"]
        await until(lambda: b.bfd_status()[0]["detection_time_ms"] == 150.0, what="negotiated")
        from lbd.metrics import REGISTRY

        def metric(name: str, **labels: str) -> float:
            return REGISTRY.get_sample_value(name, {"peer": "to-a", **labels}) or 0.0

        await until(lambda: metric("lbd_bfd_session_up") == 1 and metric("lbd_bfd_packets_sent_total") > 3
                    and metric("lbd_bfd_packets_received_total") > 3, what="metrics")
        assert metric("lbd_bfd_session_state") == 3 and metric("lbd_bfd_detection_time_seconds") == 0.15
        assert metric("lbd_bfd_transitions_total", to="Up") >= 1
    finally:
        await b.close()
        await a.close()


async def test_bfd_failure_takes_bgp_down_and_it_comes_back() -> None:
    a, b, rib_a, rib_b = await bfd_pair()
    try:
        b.apply([BgpRoute(VIP, ("to-a",))])
        await until(lambda: bfd_state(a, "to-b") == "Up" and state(a, "to-b") == "established", what="up")
        # b's BFD dies without a word (a crash of its forwarding path): a's detection time runs out.
        b._bfd.engine.kill()
        await until(lambda: any(isinstance(e, NotificationReceived) and (e.code, e.subcode) == (6, 10)
                                for _, e in rib_b.events), what="Cease/BFD Down at b")
        assert a.bfd_status()[0]["last_down_diag"] == "control-detection-time-expired"
        assert a.bfd_status()[0]["flaps"] == 1
        # The BGP session comes back through the normal FSM (BFD Down does not hold it),
        # and b's manager starts a new BFD process with the same session.
        await until(lambda: state(a, "to-b") == "established", timeout=15, what="re-established")
        await until(lambda: b._bfd.restarts == 1 and bfd_state(a, "to-b") == "Up", timeout=20,
                    what="BFD process restarted and Up again")
    finally:
        await b.close()
        await a.close()


async def test_graceful_stop_withdraws_then_admin_down_then_cease() -> None:
    a, b, rib_a, _ = await bfd_pair()
    try:
        b.apply([BgpRoute(VIP, ("to-a",))])
        await until(lambda: bfd_state(a, "to-b") == "Up" and VIP in rib_a.routes.get("to-b", {}), what="up")
        calls: list[str] = []
        speaker = b._speakers["to-a"]
        orig_stop, orig_admin = speaker.stop, b._bfd.admin_down

        async def stop(**kw: Any) -> None:
            calls.append(f"cease drain={kw.get('drain')}")
            await orig_stop(**kw)

        def admin_down() -> Any:
            calls.append("bfd admin-down")
            return orig_admin()

        speaker.stop = stop  # type: ignore[method-assign]
        b._bfd.admin_down = admin_down  # type: ignore[method-assign]
        b.withdraw_all()
        calls.insert(0, "withdraw" if speaker._withdrawn else "?")
        assert b.withdrawn_routes == 1  # what the daemon's stop linger is for (issue 11)
        b.apply([BgpRoute(VIP, ("to-a",))])  # a reconcile pass after SIGTERM announces nothing
        await b.close()
        assert calls == ["withdraw", "bfd admin-down", "cease drain=1.0"]
        # At a: the withdrawal came before the Cease, and BFD AdminDown was no failure.
        kinds = [type(e).__name__ for _, e in rib_a.events if isinstance(e, (UpdateReceived, NotificationReceived))]
        withdraw_at = max(i for i, (_, e) in enumerate(rib_a.events)
                          if isinstance(e, UpdateReceived) and VIP in e.update.withdrawn_all())
        cease_at = next(i for i, (_, e) in enumerate(rib_a.events) if isinstance(e, NotificationReceived))
        assert withdraw_at < cease_at, kinds
        rows = a.bfd_status()
        assert rows[0]["remote_state"] == "AdminDown" and rows[0]["flaps"] == 1
        assert rows[0]["last_down_diag"] == "neighbor-signaled-down"
    finally:
        await b.close()
        await a.close()


async def test_wait_acked_returns_once_the_peer_has_everything() -> None:
    from lbd.bgp.speaker import unacked_bytes

    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * 10000)
        await until(lambda: unacked_bytes(writer.transport) == 0, timeout=5, what="acked")
        writer.close()
    finally:
        server.close()


# --- the daemon's stop order -----------------------------------------------------


class Recorder:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def __getattr__(self, attr: str) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            self.log.append(f"{self.name}.{attr}" + ("(restart)" if kw.get("graceful_restart") else ""))

            async def done() -> None:
                return None

            return done()

        return call


def fake_daemon(log: list[str], linger: float = 0.0, withdrawn: int = 1) -> Any:
    from lbd.daemon import Daemon

    d = Daemon.__new__(Daemon)
    bgp = Recorder(log, "bgp")
    bgp.withdraw_all = lambda: log.append("bgp.withdraw_all")  # type: ignore[attr-defined]
    bgp.withdrawn_routes = withdrawn  # type: ignore[attr-defined]
    d.bgp = bgp
    d.config = SimpleNamespace(node=SimpleNamespace(stop_linger=linger))
    d.l2 = Recorder(log, "l2")
    d.exporter = d.health = d._metrics_server = None
    d.backend_checks = d.forwarder = None
    d.hooks = type("Hooks", (), {"withdraw_all": lambda self, now: log.append("hooks.withdraw_all")})()
    d.hook_runner = Recorder(log, "hook_runner")
    d.sources = Recorder(log, "sources")
    d.coordinator = Recorder(log, "membership")
    d.control = Recorder(log, "control")
    d.netlink = Recorder(log, "netlink")
    d.notifier = Recorder(log, "notifier")
    d.notifier.stopping = lambda: None  # type: ignore[attr-defined]
    d._tasks = []
    d._stop, d._wake = asyncio.Event(), asyncio.Event()
    d.extra_state = {}
    d.persist = lambda: None  # type: ignore[method-assign]
    d.plan = type("P", (), {"l2": []})()
    return d


async def test_daemon_stop_withdraws_in_the_signal_handler_and_before_leaving() -> None:
    log: list[str] = []
    d = fake_daemon(log)
    d.stop()
    assert log == ["bgp.withdraw_all"]  # synchronously, before anything else
    await d.shutdown()
    assert log.index("bgp.close") < log.index("membership.leave") < log.index("l2.close")


class Timed(Recorder):
    """A recorder that also notes when each call was made (monotonic)."""

    def __init__(self, log: list[str], name: str, at: dict[str, float], delay: float = 0.0) -> None:
        super().__init__(log, name)
        self.at, self.delay = at, delay

    def __getattr__(self, attr: str) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            self.log.append(f"{self.name}.{attr}")

            async def done() -> None:
                self.at.setdefault(f"{self.name}.{attr}", time.monotonic())
                await asyncio.sleep(self.delay)

            return done()

        return call


async def test_daemon_stop_keeps_the_vips_for_the_linger_after_the_withdrawal_is_acked() -> None:
    # Issue 11: the router's TCP ACK of the withdrawal comes before its FIB lets go of this node;
    # a VIP removed in between drops connections still hashed here. The VIPs stay stop_linger
    # past the acknowledgement; leaving the cluster runs inside that time.
    log: list[str] = []
    at: dict[str, float] = {}
    d = fake_daemon(log, linger=0.3)
    d.coordinator = Timed(log, "membership", at, delay=0.1)
    d.l2 = Timed(log, "l2", at)
    bgp_closed: list[float] = []
    d.bgp.close = lambda **kw: _stamp(bgp_closed)  # type: ignore[attr-defined]
    d.stop()
    await d.shutdown()
    assert bgp_closed and log.index("membership.leave") < log.index("l2.close")
    assert at["l2.close"] - bgp_closed[0] >= 0.3


async def test_daemon_stop_does_not_linger_when_nothing_was_withdrawn() -> None:
    log: list[str] = []
    at: dict[str, float] = {}
    d = fake_daemon(log, linger=30.0, withdrawn=0)  # no established session had routes
    d.l2 = Timed(log, "l2", at)
    d.stop()
    await asyncio.wait_for(d.shutdown(), 10.0)  # 30 s of linger would time this out
    assert "l2.close" in log


async def test_daemon_restart_does_not_linger() -> None:
    log: list[str] = []
    d = fake_daemon(log, linger=30.0)
    d.stop(restart=True)
    await asyncio.wait_for(d.shutdown(), 10.0)
    assert "bgp.close(restart)" in log


def test_stop_linger_left() -> None:
    from lbd.bgp.announcer import stop_linger_left

    assert stop_linger_left(0.5, 3, acked_at=100.0, now=100.0) == 0.5
    assert stop_linger_left(0.5, 3, acked_at=100.0, now=100.2) == pytest.approx(0.3)  # leaving the cluster counts
    assert stop_linger_left(0.5, 3, acked_at=100.0, now=101.0) == 0.0  # never negative
    assert stop_linger_left(0.5, 3, acked_at=100.0, now=99.0) == 0.5  # a clock oddity never waits longer
    assert stop_linger_left(0.5, 0, acked_at=100.0, now=100.0) == 0.0  # nothing withdrawn
    assert stop_linger_left(0.0, 3, acked_at=100.0, now=100.0) == 0.0  # turned off


async def _stamp(into: list[float]) -> None:
    into.append(time.monotonic())


async def test_daemon_restart_keeps_routes() -> None:
    log: list[str] = []
    d = fake_daemon(log)
    d.stop(restart=True)
    await d.shutdown()
    assert "bgp.withdraw_all" not in log and "bgp.close(restart)" in log
    assert log.index("membership.leave") < log.index("bgp.close(restart)")


def test_lbd_ctl_renders_bfd_and_bgp_column() -> None:
    from lbd.ctl import render_bfd, render_bgp

    row = {"peer": "tor", "address": "10.77.0.1", "multihop": False, "state": "Down", "remote_state": "Down",
           "local_discriminator": 7, "remote_discriminator": 0, "transmit_interval_ms": 1000.0,
           "detection_time_ms": 300.0, "flaps": 2, "last_down_diag": "control-detection-time-expired",
           "last_down_reason": "no BFD packet within the detection time"}
    text = render_bfd([row])
    assert text.splitlines()[0].split()[:4] == ["PEER", "ADDRESS", "HOP", "STATE"]
    assert "tor" in text and "single" in text and "control-detection-time-expired: no BFD packet" in text
    assert "no BFD sessions" in render_bfd([])
    assert "BFD" in render_bgp([{"name": "tor", "state": "established", "bfd": "Up"}]).splitlines()[0]
