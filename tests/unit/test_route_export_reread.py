"""The route exporter reads the kernel's tables at most every ``reread_interval`` and after a
failed change; in between it trusts its last read and its acknowledged changes (issue 9: two
dumps of the local table per apply, before the BGP UPDATE of every churned VIP). Checked
against a fake kernel: what it holds always equals the desired routes when nobody else
touches it, and again within one interval when somebody does."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import time
from types import SimpleNamespace
from typing import Any, AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.exceptions import NetlinkError

import lbd.kernel.routes as routes_mod
from lbd.kernel.routes import RT_TABLE_LOCAL, RouteExporter
from lbd.model import ExportRoute

PROTO = 252
PREFIXES = [ipaddress.ip_network(f"10.88.{i}.0/24") for i in range(5)]


class FakeKernel:
    """Routes by (table, prefix, metric), as the kernel keys them; counts the dumps."""

    def __init__(self) -> None:
        self.routes: dict[tuple[int, Any, int], dict[str, Any]] = {}
        self.dumps = 0
        self.fail_next = False

    async def link_lookup(self, *, ifname: str) -> list[int]:
        return [1] if ifname == "lo" else []

    async def route(self, op: str, **kw: Any) -> Any:
        if op == "dump":
            self.dumps += 1
            return self._iter(list(self.routes.values()))
        prefix = ipaddress.ip_network(kw["dst"])
        key = (kw["table"], prefix, kw["priority"])
        if self.fail_next:
            self.fail_next = False
            raise NetlinkError(errno.ENOBUFS)
        if op == "del":
            if key not in self.routes:
                raise NetlinkError(errno.ESRCH)
            del self.routes[key]
        elif op == "add" and key in self.routes:
            raise NetlinkError(errno.EEXIST)
        else:
            self.routes[key] = {"family": 2, "dst": str(prefix.network_address), "dst_len": prefix.prefixlen,
                                "table": kw["table"], "priority": kw["priority"], "proto": kw["proto"],
                                "oif": kw["oif"], "type": kw["type"]}
        return None

    async def _iter(self, items: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        for item in items:
            yield item

    def close(self) -> None:
        pass

    def ours(self) -> set[Any]:
        return {k[1] for k, m in self.routes.items() if m["proto"] == PROTO}


def route(prefix: Any) -> ExportRoute:
    return ExportRoute(prefix, RT_TABLE_LOCAL, PROTO, "lo", kind="local")


async def exporter_on(kernel: FakeKernel) -> RouteExporter:
    exporter = RouteExporter([(RT_TABLE_LOCAL, PROTO)], reread_interval=5.0)
    exporter._loop, exporter._lock_obj = asyncio.get_running_loop(), asyncio.Lock()
    exporter._ipr = kernel  # type: ignore[assignment]
    return exporter


ops = st.one_of(
    st.tuples(st.just("apply"), st.sets(st.sampled_from(PREFIXES))),
    st.tuples(st.just("tamper"), st.sampled_from(PREFIXES)),  # somebody removes or adds one of ours
    st.tuples(st.just("fail"), st.none()),  # the next change fails
    st.tuples(st.just("tick"), st.floats(0, 6)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(ops, max_size=25))
def test_the_kernel_follows_the_desired_routes(sequence: list[tuple[str, Any]]) -> None:
    clock = [1000.0]
    original = routes_mod.time
    routes_mod.time = SimpleNamespace(monotonic=lambda: clock[0], time=time.time)  # type: ignore[assignment]
    try:
        asyncio.run(_run(sequence, clock))
    finally:
        routes_mod.time = original  # type: ignore[assignment]


async def _run(sequence: list[tuple[str, Any]], clock: list[float]) -> None:
    kernel = FakeKernel()
    exporter = await exporter_on(kernel)
    desired: set[Any] = set()
    clean = True  # nobody else touched the kernel, no change failed
    for op, arg in sequence:
        if op == "apply":
            desired = arg
            await exporter.apply([route(p) for p in sorted(desired)])
            if clean:  # trusted or read, the kernel holds the desired routes, and lbd knows it
                assert kernel.ours() == desired
                assert set(exporter._status.installed) == {(RT_TABLE_LOCAL, p, 0) for p in desired}
        elif op == "tamper":
            key = (RT_TABLE_LOCAL, arg, 0)
            if key in kernel.routes:
                del kernel.routes[key]
            else:
                kernel.routes[key] = {"family": 2, "dst": str(arg.network_address), "dst_len": arg.prefixlen,
                                      "table": RT_TABLE_LOCAL, "priority": 0, "proto": PROTO, "oif": 1, "type": 2}
            clean = False
        elif op == "fail":
            kernel.fail_next = True
            clean = False
        else:
            clock[0] += arg
    # Whatever happened: once the interval is over, two applies converge (the first reads the
    # kernel; a change failed by the fake is retried by the second).
    clock[0] += 10.0
    await exporter.apply([route(p) for p in sorted(desired)])
    await exporter.apply([route(p) for p in sorted(desired)])
    assert kernel.ours() == desired


def test_a_change_within_the_interval_reads_the_kernel_once() -> None:
    async def go() -> None:
        kernel = FakeKernel()
        exporter = await exporter_on(kernel)
        await exporter.apply([route(PREFIXES[0])])
        assert kernel.dumps == 1  # the first apply reads; its change is acknowledged: no read-back
        for i in range(1, 5):
            await exporter.apply([route(p) for p in PREFIXES[:i + 1]])
        assert kernel.dumps == 1
        assert kernel.ours() == set(PREFIXES)
        assert {r["prefix"] for r in exporter.status()["routes"]} == {str(p) for p in PREFIXES}  # type: ignore[index]

    asyncio.run(go())


def test_a_failed_change_and_the_interval_read_the_kernel_again(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(routes_mod, "time", SimpleNamespace(monotonic=lambda: clock[0], time=time.time))

    async def go() -> None:
        kernel = FakeKernel()
        exporter = await exporter_on(kernel)
        await exporter.apply([route(PREFIXES[0])])
        del kernel.routes[(RT_TABLE_LOCAL, PREFIXES[0], 0)]  # behind lbd's back
        await exporter.apply([route(PREFIXES[0])])
        assert kernel.dumps == 1 and kernel.ours() == set()  # trusted: not noticed yet
        clock[0] += 5.0
        await exporter.apply([route(PREFIXES[0])])
        assert kernel.dumps == 2 and kernel.ours() == {PREFIXES[0]}  # the interval: read, restored
        kernel.fail_next = True
        await exporter.apply([route(PREFIXES[0]), route(PREFIXES[1])])
        assert exporter.status()["last_error"] is not None
        assert kernel.dumps == 3  # the failed change: read back
        await exporter.apply([route(PREFIXES[0]), route(PREFIXES[1])])
        assert kernel.ours() == {PREFIXES[0], PREFIXES[1]}

    asyncio.run(go())
