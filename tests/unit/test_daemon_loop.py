"""Issue 9, the daemon's event loop at scale: owner changes summarised per pass, the state
file written off the loop, the interface inventory kept by notifications, and the loop
staying responsive during a big pass."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import time
from pathlib import Path

from structlog.testing import capture_logs

from lbd import metrics as m
from lbd.config import load_config
from lbd.daemon import Daemon
from lbd.owner_changes import OWNER_CHANGES_SHOWN, report_owner_changes
from lbd.looplag import LoopLagProbe
from lbd.kernel.interfaces import (LBD_ADDR_PROTO, RTM_DELADDR, RTM_NEWADDR, RTM_NEWLINK, RTM_DELLINK,
                                   InterfaceInventory, inventory_changed)
from lbd.model import Allocation, Member, MemberState, VipDecision
from lbd.state import PersistedState, StateStore, StateWriter
from lbd.testing.configs import bgp_services_config


def decision(i: int, owner: str | None) -> VipDecision:
    return VipDecision(vip=ipaddress.ip_address(f"10.77.{i // 250}.{i % 250 + 1}"), services=(f"s{i}",),
                       owner=owner, interface=None, reason="elected")


def test_owner_changes_are_one_info_summary_per_pass_and_debug_lines_per_vip() -> None:
    members = [Member(name="n1"), Member(name="n2"), Member(name="n3", state=MemberState.DEAD)]
    previous = {decision(i, "").vip: ("n3" if i < 3000 else "n1") for i in range(5000)}
    now = [decision(i, "n1" if i < 3000 else ("n2" if i < 3500 else "n1")) for i in range(5000)]
    now.append(decision(6000, "n1"))  # new: not a change
    before = {k: m.OWNER_CHANGES.labels(k)._value.get() for k in ("failover", "move")}
    with capture_logs() as logs:
        counts = report_owner_changes(previous, now, members)
    assert counts == {"failover": 3000, "move": 500}
    info = [e for e in logs if e["log_level"] == "info"]
    assert [e["event"] for e in info] == ["vip_owners_changed"]
    assert info[0]["failover"] == 3000 and info[0]["move"] == 500
    assert len(info[0]["first"]) == OWNER_CHANGES_SHOWN
    assert info[0]["first"][0] == {"vip": "10.77.0.1", "old": "n3", "new": "n1", "kind": "failover",
                                   "reason": "elected"}
    assert sum(1 for e in logs if e["event"] == "vip_owner_changed" and e["log_level"] == "debug") == 3500
    assert m.OWNER_CHANGES.labels("failover")._value.get() - before["failover"] == 3000
    assert m.OWNER_CHANGES.labels("move")._value.get() - before["move"] == 500


def test_no_owner_change_logs_nothing() -> None:
    d = decision(1, "n1")
    with capture_logs() as logs:
        assert report_owner_changes({d.vip: "n1"}, [d], [Member(name="n1")]) == {"failover": 0, "move": 0}
    assert logs == []


# -- the state file, written off the loop ---------------------------------------------

def state(n: int, drained: bool = False) -> PersistedState:
    return PersistedState(allocations={f"s{i}": Allocation(service=f"s{i}", pool="p",
                                                           addresses=(ipaddress.ip_address(f"10.77.0.{i + 1}"),))
                                       for i in range(n)}, drained=drained)


async def test_state_writes_are_coalesced_and_the_latest_wins(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    writer = StateWriter(store, min_interval=0.2)
    writer.submit(state(1))  # the first one at once
    for n in range(2, 30):
        writer.submit(state(n))  # a burst: one more write, of the latest
        await asyncio.sleep(0)
    assert writer.dirty
    await writer.flush()
    assert not writer.dirty
    assert writer.writes == 2
    assert store.load() == state(29)


async def test_state_flush_skips_the_coalescing_wait(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    writer = StateWriter(store, min_interval=30.0)
    writer.submit(state(1))
    await writer.flush()
    writer.submit(state(2, drained=True))  # would wait 30 s
    started = time.monotonic()
    await writer.flush()
    assert time.monotonic() - started < 5.0
    assert store.load() == state(2, drained=True) and writer.writes == 2


def test_state_submit_without_a_loop_writes_at_once(tmp_path: Path) -> None:
    writer = StateWriter(StateStore(tmp_path))
    writer.submit(state(3))
    assert writer.writes == 1 and not writer.dirty
    assert StateStore(tmp_path).load() == state(3)


async def test_a_failed_state_write_is_logged_and_stays_dirty(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    writer = StateWriter(StateStore(tmp_path / "file" / "sub"))  # cannot create the directory
    with capture_logs() as logs:
        writer.submit(state(1))
        await writer.flush()
    assert writer.writes == 0 and writer.dirty and writer.last_error
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["persist_failed"]


async def test_the_state_write_leaves_the_loop_free(tmp_path: Path) -> None:
    """Encoding and writing 100,000 allocations happens in a thread: the loop keeps running."""
    writer = StateWriter(StateStore(tmp_path))
    big = PersistedState(allocations={
        f"svc{i}": Allocation(service=f"svc{i}", pool="p", addresses=(ipaddress.ip_address(0x0A580000 + i),))
        for i in range(100_000)})
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    writer.submit(big)
    await writer.flush()
    task.cancel()
    assert writer.writes == 1
    assert ticks > 3  # the ticker ran while the file was encoded and written


async def test_stop_writes_the_state_only_when_something_changed(tmp_path: Path) -> None:
    path = tmp_path / "lbd.toml"
    path.write_text(f'[node]\nname = "n1"\nstate_dir = "{tmp_path}/state"\ncontrol_socket = "{tmp_path}/lbd.sock"\n'
                    '[[pool]]\nname = "p"\naddresses = ["10.77.9.0/24"]\n')
    d = Daemon(load_config(path))
    await d.shutdown()
    assert d.state_writer.writes == 0  # nothing changed: no write at stop
    d = Daemon(load_config(path))
    d.drained = True
    await d._cmd_undrain({})  # a change: written at once (flushed), not again at stop
    assert d.state_writer.writes == 1
    await d.shutdown()
    assert d.state_writer.writes == 1


# -- the interface inventory, kept by notifications ------------------------------------

def nlmsg(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def addr_msg(kind: int, family: int, prefixlen: int, proto: int | None = None) -> bytes:
    body = struct.pack("=BBBBI", family, prefixlen, 0, 0, 2)
    if proto is not None:
        body += struct.pack("=HHB", 5, 11, proto) + b"\0" * 3  # IFA_PROTO, padded
    return nlmsg(kind, body)


def test_only_link_and_subnet_changes_make_the_inventory_stale() -> None:
    vip_bind = addr_msg(RTM_NEWADDR, socket.AF_INET, 32)
    vip6_bind = addr_msg(RTM_DELADDR, socket.AF_INET6, 128)
    marked = addr_msg(RTM_NEWADDR, socket.AF_INET, 24, proto=LBD_ADDR_PROTO)
    subnet = addr_msg(RTM_NEWADDR, socket.AF_INET, 24, proto=2)
    assert not inventory_changed(vip_bind + vip6_bind + marked)
    assert inventory_changed(vip_bind + subnet)
    assert inventory_changed(addr_msg(RTM_DELADDR, socket.AF_INET6, 64))
    assert inventory_changed(nlmsg(RTM_NEWLINK, b"\0" * 16))
    assert inventory_changed(nlmsg(RTM_DELLINK, b"\0" * 16))
    assert inventory_changed(b"\xff" * 20)  # unparseable: a change, to be safe
    assert not inventory_changed(b"")


async def test_the_inventory_is_read_once_until_something_changes(monkeypatch) -> None:
    import lbd.kernel.interfaces as interfaces

    reads: list[int] = []

    async def fake_list(nl: object = None) -> list[object]:
        reads.append(1)
        return [f"if{len(reads)}"]  # type: ignore[list-item]

    monkeypatch.setattr(interfaces, "list_interfaces", fake_list)
    now = [0.0]
    changes: list[int] = []
    inv = InterfaceInventory(on_change=lambda: changes.append(1), max_age=30.0, clock=lambda: now[0])
    try:
        assert await inv.get() == ["if1"]
        for _ in range(50):
            assert await inv.get() == ["if1"]  # no dump per pass
        assert inv.reads == 1
        inv.invalidate()
        assert await inv.get() == ["if2"]
        now[0] = 31.0  # the safety net: a full read at least every max_age
        assert await inv.get() == ["if3"]
        assert inv.reads == 3
    finally:
        inv.close()
    # Closed (or no notifications): a full read every time, as without an inventory.
    await inv.get()
    await inv.get()
    assert inv.reads == 5


# -- the pass leaves the loop free; the first BGP table goes out in batches --------------

class BatchBgp:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.routes: list[object] = []

    async def set_peers(self, peers: object, profiles: object = ()) -> None:
        pass

    def apply(self, routes: object) -> None:
        self.routes = list(routes)  # type: ignore[call-overload]
        self.sizes.append(len(self.routes))

    def status(self) -> list[dict[str, object]]:
        return []


class NoL2:
    def set_rate(self, rate: float, takeover_rate: float | None = None) -> None:
        pass

    async def apply(self, intents: object) -> None:
        pass

    def reannounce(self, vips: object) -> None:
        pass

    def status(self) -> list[dict[str, object]]:
        return []


async def daemon_with(tmp: Path, services: int) -> Daemon:
    d = Daemon(load_config(bgp_services_config(tmp, services, pool="10.88.0.0/20")))
    d.l2 = NoL2()  # type: ignore[assignment]
    d.bgp = BatchBgp()  # type: ignore[assignment]
    await d.apply_config()
    deadline = time.monotonic() + 20
    while len(d.services_now()) < services and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return d


async def close(d: Daemon) -> None:
    await d.sources.close()
    await d.hook_runner.close()
    await d.state_writer.flush()
    d.interfaces.close()
    await d.netlink.aclose()


async def test_the_first_bgp_table_goes_out_in_growing_batches(tmp_path: Path) -> None:
    d = await daemon_with(tmp_path, 1500)
    try:
        await d.reconcile()
        assert d.bgp.sizes == [256, 1024, 1500]  # type: ignore[union-attr]
        await d.reconcile()  # later passes: the whole table at once (a prefix would withdraw routes)
        assert d.bgp.sizes[3:] == [1500]  # type: ignore[union-attr]
    finally:
        await close(d)


async def test_a_graceful_restart_sends_the_first_table_whole(tmp_path: Path) -> None:
    d = await daemon_with(tmp_path, 300)
    d.graceful_restart = True  # the first table ends with End-of-RIB: never a partial one
    try:
        await d.reconcile()
        assert d.bgp.sizes == [300]  # type: ignore[union-attr]
    finally:
        await close(d)


async def test_planning_and_allocation_run_off_the_loop(tmp_path: Path, monkeypatch) -> None:
    import threading

    threads: dict[str, str] = {}
    d = await daemon_with(tmp_path, 20)
    real_plan = d.planner.plan

    def recording_plan(inputs, **kwargs):  # type: ignore[no-untyped-def]
        threads["plan"] = threading.current_thread().name
        return real_plan(inputs, **kwargs)

    d.planner.plan = recording_plan  # type: ignore[method-assign]
    real_allocate = d.coordinator.allocate

    def recording_allocate(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads["allocate"] = threading.current_thread().name
        return real_allocate(*args, **kwargs)

    d.coordinator.allocate = recording_allocate  # type: ignore[method-assign]
    try:
        await d.reconcile()
        main = threading.main_thread().name
        assert threads["plan"] != main and threads["allocate"] != main
        assert len(d.bgp.routes) == 20  # type: ignore[union-attr]
        await d.state_writer.flush()
        assert len(StateStore(d.config.node.state_dir).load().allocations) == 20  # persisted via the loop
    finally:
        await close(d)


async def test_the_loop_lag_probe_sees_a_stall_and_logs_it_once() -> None:
    probe = LoopLagProbe(interval=0.005, warn_after=0.05, warn_every=60.0)
    task = asyncio.ensure_future(probe.run())
    with capture_logs() as logs:
        await asyncio.sleep(0.02)
        time.sleep(0.12)  # the loop blocked
        await asyncio.sleep(0.02)
        time.sleep(0.12)  # again: counted, not logged again within warn_every
        await asyncio.sleep(0.02)
    task.cancel()
    assert probe.max_lag >= 0.1
    stalls = [e for e in logs if e["event"] == "event_loop_stalled"]
    assert len(stalls) == 1 and stalls[0]["seconds"] >= 0.1


async def test_persist_from_a_worker_thread_snapshots_on_the_loop(tmp_path: Path) -> None:
    """_allocate runs in a worker thread on a single node: its persist() takes the snapshot on
    the loop, in order with the loop's own persist() calls (a drain), never in the thread."""
    import threading

    d = await daemon_with(tmp_path, 3)
    submitted: list[tuple[bool, bool]] = []  # (on the main thread, drained in the snapshot)
    real_submit = d.state_writer.submit

    def recording_submit(state: PersistedState) -> None:
        submitted.append((threading.current_thread() is threading.main_thread(), state.drained))
        real_submit(state)

    d.state_writer.submit = recording_submit  # type: ignore[method-assign]
    try:
        await asyncio.to_thread(d.persist)  # from the thread: deferred to the loop
        d.drained = True
        d.persist()  # on the loop, after
        await asyncio.sleep(0.01)
        await d.state_writer.flush()
        assert submitted == [(True, False), (True, True)]  # both on the loop, in order
        assert StateStore(d.config.node.state_dir).load().drained is True
    finally:
        await close(d)
