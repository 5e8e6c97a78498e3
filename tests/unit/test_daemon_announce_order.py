"""Issue 9, where the decisions are made in the daemon: BGP UPDATEs never wait on layer-2
work, and a stop interrupts a long pass yet still withdraws everything, in order.

The layer-2 announcer is replaced by a fake whose binds are slow (or never finish) and the
BGP announcer by a recorder, so the order of the calls is what is checked.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from lbd.config import load_config
from lbd.daemon import Daemon
from lbd.testing.configs import bgp_services_config

SERVICES = 50


def config_file(tmp: Path) -> Path:
    # Per-VIP binds on lo (accept = "address"): the slow layer-2 path the UPDATEs must not
    # wait for (the default, one local route per prefix, has no per-VIP work to wait on).
    return bgp_services_config(tmp, SERVICES, accept="address")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def add(self, what: str) -> None:
        self.calls.append((what, time.monotonic()))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class SlowL2:
    """Binds one VIP per ``delay`` seconds (or never, with ``block``), like a huge first pass."""

    def __init__(self, rec: Recorder, delay: float = 0.05, block: bool = False) -> None:
        self.rec, self.delay, self.block = rec, delay, block
        self.bound: set[object] = set()
        self.leftover = False  # a bind was cut short: the kernel may hold an unrecorded address

    def set_rate(self, rate: float, takeover_rate: float | None = None) -> None:  # the caps: nothing is sent here
        pass

    async def apply(self, intents: Any) -> None:
        self.rec.add("l2.apply.start")
        for intent in intents:
            self.leftover = True
            await asyncio.sleep(3600 if self.block else self.delay)
            self.bound.add(intent.vip)
            self.leftover = False
        self.rec.add("l2.apply.done")

    def reannounce(self, vips: Any) -> None:
        pass

    def status(self) -> list[dict[str, object]]:
        return []

    async def close(self) -> None:
        self.rec.add("l2.close")
        self.bound.clear()

    async def cleanup_stale(self) -> int:
        self.rec.add("l2.cleanup_stale")
        self.leftover = False
        return 0


class FakeBgp:
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.routes: list[object] = []
        self.closing = False
        self.withdrawn_routes = 0  # as BgpAnnouncer: what withdraw_all() took back (the stop's linger)

    async def set_peers(self, peers: Any, profiles: Any = ()) -> None:
        pass

    def apply(self, routes: Any) -> None:
        if not self.closing:
            self.routes = list(routes)
            self.rec.add("bgp.apply")

    def withdraw_all(self) -> None:
        self.closing = True
        self.withdrawn_routes = len(self.routes)
        self.routes = []
        self.rec.add("bgp.withdraw_all")

    async def close(self, graceful_restart: bool = False) -> None:
        self.rec.add("bgp.close")

    def status(self) -> list[dict[str, object]]:
        return []

    def bfd_status(self) -> list[dict[str, object]]:
        return []


async def test_bgp_routes_leave_before_the_slow_layer2_pass(tmp_path: Path) -> None:
    rec = Recorder()
    d = Daemon(load_config(config_file(tmp_path)))
    d.l2 = SlowL2(rec, delay=0.05)  # 50 local binds: 2.5 s
    d.bgp = FakeBgp(rec)
    try:
        await d.apply_config()
        task = asyncio.ensure_future(d.reconcile())
        deadline = time.monotonic() + 10
        while "bgp.apply" not in rec.names() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # The announcer has every route while the binder is still at its first VIPs.
        assert len(d.bgp.routes) == SERVICES
        assert "l2.apply.done" not in rec.names()
        assert len(d.l2.bound) < SERVICES // 2
        await asyncio.wait_for(task, 20)
        assert rec.names().index("bgp.apply") < rec.names().index("l2.apply.done")
    finally:
        await d.sources.close()
        await d.hook_runner.close()
        await d.netlink.aclose()


async def test_stop_interrupts_a_long_first_pass_and_withdraws_in_order(tmp_path: Path) -> None:
    rec = Recorder()
    d = Daemon(load_config(config_file(tmp_path)))
    d.l2 = SlowL2(rec, block=True)  # the first pass would never end
    d.bgp = FakeBgp(rec)
    run = asyncio.ensure_future(d.run())
    deadline = time.monotonic() + 10
    while "l2.apply.start" not in rec.names() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert "bgp.apply" in rec.names() and len(d.bgp.routes) == SERVICES
    stopped = time.monotonic()
    d.stop()  # what SIGTERM calls
    assert await asyncio.wait_for(run, 5) == 0
    assert time.monotonic() - stopped < 1.0
    names = rec.names()
    assert "l2.apply.done" not in names
    # Withdraw-all in the signal handler, then the BGP close, then the VIPs, then what an
    # interrupted bind may have left in the kernel.
    assert names.index("bgp.withdraw_all") < names.index("bgp.close") < names.index("l2.close") \
        < names.index("l2.cleanup_stale")
    assert d.bgp.routes == [] and not d.l2.bound and not d.l2.leftover


async def test_a_stop_between_passes_does_not_clean_up_twice(tmp_path: Path) -> None:
    rec = Recorder()
    d = Daemon(load_config(config_file(tmp_path)))
    d.l2 = SlowL2(rec, delay=0.0)
    d.bgp = FakeBgp(rec)
    run = asyncio.ensure_future(d.run())
    deadline = time.monotonic() + 10
    # run() calls cleanup_stale once after the first pass (crash leftovers): wait for it.
    while rec.names().count("l2.cleanup_stale") < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    while d._pass is not None and time.monotonic() < deadline:  # idle between passes
        await asyncio.sleep(0.001)
    assert d._pass is None
    d.stop()
    assert await asyncio.wait_for(run, 5) == 0
    names = rec.names()
    assert names.count("l2.cleanup_stale") == 1  # nothing was interrupted
    assert names.index("bgp.withdraw_all") < names.index("bgp.close") < names.index("l2.close")


class FakeExporter:
    """Records which local routes each apply() converges on."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.installed: set[object] = set()

    async def apply(self, routes: Any) -> None:
        wanted = {r.prefix for r in routes if r.kind == "local"}
        for prefix in sorted(wanted - self.installed, key=str):
            self.rec.add(f"exporter.add {prefix}")
        for prefix in sorted(self.installed - wanted, key=str):
            self.rec.add(f"exporter.remove {prefix}")
        self.installed = wanted


async def test_local_routes_go_in_before_the_update_and_out_after_the_withdrawal(tmp_path: Path) -> None:
    """Make before break: the node accepts a VIP (its local route) before BGP announces it,
    and keeps accepting until BGP has withdrawn it."""
    rec = Recorder()
    path = config_file(tmp_path)
    path.write_text(path.read_text().replace('accept = "address"\n', ""))  # the default: local routes
    d = Daemon(load_config(path))
    d.l2 = SlowL2(rec, delay=0.0)
    d.bgp = FakeBgp(rec)
    try:
        await d.apply_config()
        d.exporter = FakeExporter(rec)  # type: ignore[assignment]
        deadline = time.monotonic() + 10
        while len(d.services_now()) < SERVICES and time.monotonic() < deadline:  # the static source
            await asyncio.sleep(0.01)
        await d.reconcile()
        names = rec.names()
        added = [n for n in names if n.startswith("exporter.add")]
        assert added and names.index(added[-1]) < names.index("bgp.apply")
        assert len(d.bgp.routes) == SERVICES

        rec.calls.clear()
        d.services_now = lambda: {}  # type: ignore[method-assign]  # every service gone
        await d.reconcile()
        names = rec.names()
        removed = [n for n in names if n.startswith("exporter.remove")]
        assert d.bgp.routes == [] and removed
        assert names.index("bgp.apply") < names.index(removed[0])
    finally:
        await d.sources.close()
        await d.hook_runner.close()
        await d.netlink.aclose()


class BatchRecorder(FakeBgp):
    """Keeps every table the announcer is handed, and the local routes in place at that moment."""

    def __init__(self, rec: Recorder, exporter: FakeExporter) -> None:
        super().__init__(rec)
        self.exporter = exporter
        self.tables: list[tuple[list[Any], set[object]]] = []

    def apply(self, routes: Any) -> None:
        super().apply(routes)
        self.tables.append((list(routes), set(self.exporter.installed)))


async def test_the_first_pass_announces_in_batches_and_ends_as_one_pass(tmp_path: Path) -> None:
    """Issue 9: at start-up the BGP routes leave in growing batches (256 VIPs first), each
    accepted by its local routes before its UPDATEs, and the pass ends with the plan a single
    from-scratch pass computes."""
    from lbd.model import Member
    from lbd.planner import PlannerInput, plan

    services = 1500
    rec = Recorder()
    path = bgp_services_config(tmp_path, services, pool="10.88.0.0/20", accept=None)  # local routes
    d = Daemon(load_config(path))
    d.l2 = SlowL2(rec, delay=0.0)
    exporter = FakeExporter(rec)
    bgp = BatchRecorder(rec, exporter)
    d.bgp = bgp
    try:
        await d.apply_config()
        d.exporter = exporter  # type: ignore[assignment]
        deadline = time.monotonic() + 20
        while len(d.services_now()) < services and time.monotonic() < deadline:  # the static source
            await asyncio.sleep(0.01)
        await d.reconcile()
        sizes = [len(routes) for routes, _ in bgp.tables]
        assert sizes[0] == 256 and sizes[-1] == services and sizes == sorted(sizes) and len(sizes) >= 3
        final = {r.prefix for r in bgp.tables[-1][0]}
        for routes, accepting in bgp.tables:
            prefixes = {r.prefix for r in routes}
            assert prefixes <= final
            # Make before break: every announced VIP is inside a local route already installed.
            for prefix in prefixes:
                assert any(prefix.subnet_of(local) for local in accepting), prefix
        me = [m for m in d.coordinator.members() if m.name == d.config.node.name]
        expected = plan(PlannerInput(config=d.config, node=d.config.node.name, allocations=d.allocations,
                                     services=d.services, members=me or [Member(name="n1")]))
        assert d.plan.bgp == expected.bgp and d.plan.decisions == expected.decisions
        assert d.plan.exports == expected.exports
        assert list(bgp.routes) == list(expected.bgp)
    finally:
        await d.sources.close()
        await d.hook_runner.close()
        await d.netlink.aclose()
