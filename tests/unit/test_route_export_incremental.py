"""The route exporter's per-change path (issue 9): after any sequence of desired route sets
(VIPs added and removed, kinds, tables, metrics and interfaces changing), applied one after
another over a fake kernel with injected failures, routes deleted behind lbd's back and
restarts, the kernel holds what a fresh exporter applying the last set to an empty kernel would
make; routes of other protocols, and lbd's protocol in tables it does not own, are never touched;
and a step's route changes grow with the change, not with the table.

The fake kernel keeps routes per table by the kernel's identity (table, destination, metric) and
answers ``add`` of a taken slot with EEXIST, ``del`` of an absent or other-protocol route with
ESRCH. The diff itself (``diff_routes``) has its own property test in test_route_export_diff.py."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import time
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroute2.netlink.exceptions import NetlinkError

from lbd.kernel import routes as routes_mod
from lbd.kernel.routes import REREAD_INTERVAL, RTN_LOCAL, RTN_UNICAST, RouteExporter, effective_metric
from lbd.model import RT_TABLE_LOCAL, ExportRoute

N = ipaddress.ip_network
LINKS = {"lo": 1, "eth0": 2}  # "eth9" is absent
PROTO = 252
SCOPES = [(100, PROTO), (101, PROTO), (RT_TABLE_LOCAL, PROTO)]
Key = tuple[int, str, int]  # table, destination, metric: the kernel's identity of a route (no TOS)


def _slot(table: int, prefix: str, metric: int | None = None) -> Key:
    return (table, prefix, effective_metric(N(prefix), metric))


# Routes of others. Two hold a slot lbd may want (a BGP route in table 100; the kernel's own
# local route for an address in the local table): lbd must report a conflict and leave them.
FOREIGN: dict[Key, dict[str, int]] = {
    _slot(100, "10.88.0.3/32"): {"proto": 186, "oif": 2, "type": RTN_UNICAST},
    _slot(100, "10.88.9.9/32"): {"proto": 4, "oif": 2, "type": RTN_UNICAST},
    _slot(101, "10.88.0.2/32", 7): {"proto": 3, "oif": 1, "type": RTN_UNICAST},
    _slot(RT_TABLE_LOCAL, "127.0.0.0/8"): {"proto": 2, "oif": 1, "type": RTN_LOCAL},
    _slot(RT_TABLE_LOCAL, "10.88.0.4/32"): {"proto": 2, "oif": 1, "type": RTN_LOCAL},
    _slot(200, "10.88.0.1/32"): {"proto": PROTO, "oif": 1, "type": RTN_UNICAST},  # lbd's number, a table not its own
}


class FakeKernel:
    """lbd.kernel.netlink.Netlink's ``call`` over routes kept per table; counts requests."""

    def __init__(self) -> None:
        self.routes: dict[Key, dict[str, int]] = {k: dict(v) for k, v in FOREIGN.items()}
        self.fail_next: dict[str, int] = {}  # prefix -> errno for its next add or replace (one shot)
        self.changes = 0  # add, replace, del
        self.dumps = 0

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "link_lookup":
            return [LINKS[kwargs["ifname"]]] if kwargs["ifname"] in LINKS else []
        assert method == "route", method
        op = args[0]
        if op == "dump":
            self.dumps += 1
            return [self._message(k, v) for k, v in self.routes.items() if k[0] == kwargs["table"]]
        self.changes += 1
        key = (int(kwargs["table"]), str(N(str(kwargs["dst"]))), int(kwargs["priority"]))
        if op == "del":
            held = self.routes.get(key)
            if held is None or held["proto"] != kwargs["proto"] or held["type"] != kwargs["type"]:
                raise NetlinkError(errno.ESRCH)
            del self.routes[key]
            return None
        code = self.fail_next.pop(key[1], 0)
        if code:
            raise NetlinkError(code)
        if op == "add" and key in self.routes:
            raise NetlinkError(errno.EEXIST)
        if kwargs["oif"] not in LINKS.values():
            raise NetlinkError(errno.ENODEV)
        self.routes[key] = {"proto": int(kwargs["proto"]), "oif": int(kwargs["oif"]), "type": int(kwargs["type"])}
        return None

    @staticmethod
    def _message(key: Key, attrs: dict[str, int]) -> dict[str, Any]:
        net = N(key[1])
        return {"family": 2 if net.version == 4 else 10, "dst": str(net.network_address), "dst_len": net.prefixlen,
                "table": key[0], "priority": key[2], "proto": attrs["proto"], "oif": attrs["oif"], "type": attrs["type"]}

    def ours(self) -> dict[Key, dict[str, int]]:
        return {k: v for k, v in self.routes.items() if k not in FOREIGN}


def make(kernel: FakeKernel) -> RouteExporter:
    return RouteExporter(SCOPES, netlink=kernel)  # type: ignore[arg-type]


def view(exporter: RouteExporter, kernel: FakeKernel) -> tuple[Any, ...]:
    status = exporter.status()
    return kernel.routes, status["routes"], status["conflicts"], status["missing_interfaces"]


async def fresh_view(desired: list[ExportRoute]) -> tuple[Any, ...]:
    kernel = FakeKernel()
    exporter = make(kernel)
    await exporter.apply(desired)
    return view(exporter, kernel)


def wanted(desired: list[ExportRoute]) -> dict[Key, tuple[int, int, str]]:
    """The slots the set asks for, with what lbd puts there (a later duplicate wins, as in the
    exporter); routes through an absent interface are not asked for."""
    out: dict[Key, tuple[int, int, str]] = {}
    for r in desired:
        if r.interface in LINKS:
            out[_slot(r.table, str(r.prefix), r.metric)] = (r.protocol, LINKS[r.interface], r.kind)
    return out


ROUTE = st.one_of(
    st.builds(lambda p, t, m, i: ExportRoute(N(p), t, PROTO, i, m),
              st.sampled_from(["10.88.0.1/32", "10.88.0.2/32", "10.88.0.3/32", "fd77:88::1/128"]),
              st.sampled_from([100, 101]), st.sampled_from([None, 5, 7]), st.sampled_from(["lo", "eth0", "eth9"])),
    st.builds(lambda p, i: ExportRoute(N(p), RT_TABLE_LOCAL, PROTO, i, kind="local"),
              st.sampled_from(["10.88.0.0/29", "10.88.0.4/32", "fd77:88::/126"]), st.sampled_from(["lo", "eth9"])),
)
DESIRED = st.lists(ROUTE, max_size=8)
PREFIXES = ["10.88.0.1/32", "10.88.0.2/32", "10.88.0.0/29", "fd77:88::1/128"]
STEP = st.one_of(
    st.tuples(st.just("apply"), DESIRED),
    st.tuples(st.just("fail"), DESIRED, st.sampled_from(PREFIXES), st.sampled_from([errno.ENODEV, errno.ENOBUFS])),
    st.tuples(st.just("vanish"), DESIRED, st.integers(0, 7)),
    st.tuples(st.just("restart"), DESIRED),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEP, min_size=1, max_size=8))
def test_incremental_applies_equal_a_fresh_apply_and_cost_the_change(steps: list[tuple]) -> None:
    # The exporter trusts its last read of the kernel and its own acknowledged changes for
    # REREAD_INTERVAL (issue 9's churn): a route deleted behind its back is restored by the
    # first pass after that. The clock is simulated; a "vanish" step lets the interval pass.
    clock = [1000.0]
    real = routes_mod.time
    routes_mod.time = SimpleNamespace(monotonic=lambda: clock[0], time=time.time)  # type: ignore[assignment]
    try:
        asyncio.run(_run_steps(steps, clock))
    finally:
        routes_mod.time = real  # type: ignore[assignment]


async def _run_steps(steps: list[tuple], clock: list[float]) -> None:
    kernel = FakeKernel()
    exporter = make(kernel)
    previous: dict[Key, tuple[int, int, str]] = {}
    for step in steps:
        kind, desired = step[0], step[1]
        if kind == "fail":
            kernel.fail_next[step[2]] = step[3]
        elif kind == "vanish" and kernel.ours():
            del kernel.routes[sorted(kernel.ours())[step[2] % len(kernel.ours())]]
            clock[0] += REREAD_INTERVAL + 0.5  # the next pass after the interval reads the kernel again
        elif kind == "restart":
            exporter = make(kernel)  # a new process: the kernel keeps its routes
        now = wanted(desired)
        before, dumps = kernel.changes, kernel.dumps
        await exporter.apply(desired)
        # A change per slot added, removed or altered; one per route deleted behind lbd's back
        # (re-added); and the adds that meet another's route again (conflicts stay reported).
        changed = {k for k in set(previous) | set(now) if previous.get(k) != now.get(k)}
        vanished = 1 if kind == "vanish" else 0
        conflicts = len(set(now) & set(FOREIGN))  # slots another's route holds: each add meets EEXIST
        if kind != "restart":
            assert kernel.changes - before <= len(changed) + vanished + conflicts, changed
        assert kernel.dumps - dumps <= 2 * len({t for t, _ in SCOPES} | {k[0] for k in now})
        expected = await fresh_view(desired)
        if kind == "fail":
            await exporter.apply(desired)  # the retry: the next pass
            kernel.fail_next.clear()  # one meant for a route not changed in this step is void
        assert view(exporter, kernel) == expected
        # Converged: the same set again changes nothing but re-meets the conflicts.
        before = kernel.changes
        await exporter.apply(desired)
        assert kernel.changes - before == conflicts
        assert {k: v for k, v in kernel.routes.items() if k in FOREIGN} == FOREIGN
        previous = now
    await exporter.close()
    assert kernel.routes == FOREIGN  # close() removed every route lbd made, and only those


async def test_a_step_on_a_large_table_costs_the_change_not_the_table() -> None:
    """10,000 exported VIPs: one added, one removed and one with a new metric cost 4 changes
    (the metric is part of the kernel's key: a new route, then the old one deleted)."""
    kernel = FakeKernel()
    exporter = make(kernel)
    base = int(ipaddress.ip_address("10.88.16.0"))
    desired = [ExportRoute(N(f"{ipaddress.ip_address(base + i)}/32"), 100, PROTO, "lo") for i in range(10_000)]
    await exporter.apply(desired)
    assert len(kernel.ours()) == 10_000
    before = kernel.changes
    step = desired[1:] + [ExportRoute(N("10.88.200.1/32"), 100, PROTO, "lo")]
    step[0] = ExportRoute(step[0].prefix, 100, PROTO, "lo", metric=9)
    await exporter.apply(step)
    assert kernel.changes - before == 4
    assert len(kernel.ours()) == 10_000
