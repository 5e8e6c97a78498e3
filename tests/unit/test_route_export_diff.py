"""The route exporter's pure diff: what to add, replace and remove."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from lbd.kernel.routes import (
    KernelRoute,
    _parse_route,
    diff_routes,
    effective_metric,
    scopes_of,
)
from lbd.config.schema import RouteExportConfig

N = ipaddress.ip_network


def r(prefix: str, table: int = 100, metric: int | None = None, proto: int = 252, ifindex: int = 1) -> KernelRoute:
    p = N(prefix)
    return KernelRoute(table=table, prefix=p, metric=effective_metric(p, metric), protocol=proto, ifindex=ifindex)


def test_missing_routes_are_installed_and_stale_ones_removed():
    d = diff_routes([r("10.77.1.1/32"), r("10.77.1.2/32")], [r("10.77.1.2/32"), r("10.77.1.3/32")])
    assert d.install == (r("10.77.1.1/32"),)
    assert d.remove == (r("10.77.1.3/32"),)
    assert d.replace == ()


def test_equal_sets_change_nothing():
    routes = [r("10.77.1.1/32"), r("fd77::1/128")]
    assert diff_routes(routes, list(reversed(routes))).empty


def test_changed_interface_is_replaced_in_place():
    d = diff_routes([r("10.77.1.1/32", ifindex=3)], [r("10.77.1.1/32", ifindex=1)])
    assert d.replace == (r("10.77.1.1/32", ifindex=3),)
    assert d.install == () and d.remove == ()


def test_metric_is_part_of_the_kernel_key():
    # Another metric is another kernel route: add the new one, delete the old one.
    d = diff_routes([r("10.77.1.1/32", metric=10)], [r("10.77.1.1/32")])
    assert d.install == (r("10.77.1.1/32", metric=10),)
    assert d.remove == (r("10.77.1.1/32"),)


def test_same_prefix_in_two_tables_are_two_routes():
    d = diff_routes([r("10.77.1.1/32", table=100), r("10.77.1.1/32", table=101)], [r("10.77.1.1/32", table=100)])
    assert d.install == (r("10.77.1.1/32", table=101),)
    assert d.remove == ()


def test_ipv6_default_metric_matches_the_kernel():
    assert effective_metric(N("fd77::1/128"), None) == 1024
    assert effective_metric(N("10.77.0.1/32"), None) == 0
    assert effective_metric(N("10.77.0.1/32"), 7) == 7


def test_scopes_of_configs():
    cfgs = [RouteExportConfig(name="a", table=100), RouteExportConfig(name="b", table=101, protocol=200)]
    assert scopes_of(cfgs) == {(100, 252), (101, 200)}


def test_parse_route_message():
    msg = {"family": 10, "dst": "fd77::5", "dst_len": 128, "table": 1000, "proto": 252, "priority": 1024, "oif": 1}
    assert _parse_route(msg) == r("fd77::5/128", table=1000, ifindex=1)
    default = {"family": 2, "dst_len": 0, "table": 100, "proto": 252, "oif": 2}
    assert _parse_route(default) == r("0.0.0.0/0", ifindex=2)


prefixes = st.sampled_from([f"10.77.9.{i}/32" for i in range(8)] + [f"fd77::{i}/128" for i in range(8)])
routes = st.builds(r, prefixes, table=st.sampled_from([100, 101]), metric=st.sampled_from([None, 5]), ifindex=st.sampled_from([1, 2]))


@given(st.lists(routes, max_size=12), st.lists(routes, max_size=12))
def test_applying_the_diff_reaches_the_desired_set(desired, current):
    # Simulate the kernel: one route per key.
    kernel = {x.key: x for x in current}
    d = diff_routes(desired, current)
    for x in d.remove:
        del kernel[x.key]
    for x in d.replace:
        assert x.key in kernel
        kernel[x.key] = x
    for x in d.install:
        assert x.key not in kernel
        kernel[x.key] = x
    assert kernel == {x.key: x for x in desired}
    # And a second pass has nothing left to do.
    assert diff_routes(desired, list(kernel.values())).empty


class _FakeNetlink:
    """lbd.kernel.netlink.Netlink's call() over an in-memory route table."""

    def __init__(self) -> None:
        self.routes: dict[tuple[int, str], dict] = {}

    async def call(self, method: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if method == "link_lookup":
            return [1]
        op = args[0]
        if op == "dump":
            return [r for (table, _), r in self.routes.items() if table == kwargs["table"]]
        net = ipaddress.ip_network(kwargs["dst"])
        key = (kwargs["table"], str(net))
        if op == "del":
            self.routes.pop(key, None)
        else:
            self.routes[key] = {"family": 2 if net.version == 4 else 10, "dst": str(net.network_address),
                                "dst_len": net.prefixlen, "table": kwargs["table"], "proto": kwargs["proto"],
                                "priority": kwargs["priority"], "oif": kwargs["oif"], "type": kwargs["type"]}
        return None


def test_close_for_a_restart_keeps_the_local_routes_and_a_plain_close_removes_them():
    import asyncio

    from lbd.kernel.routes import RT_TABLE_LOCAL, RouteExporter
    from lbd.model import ExportRoute

    async def run(keep: tuple[int, ...]) -> set[tuple[int, str]]:
        nl = _FakeNetlink()
        exporter = RouteExporter([(RT_TABLE_LOCAL, 252), (100, 252)], netlink=nl)
        await exporter.apply([ExportRoute(ipaddress.ip_network("10.88.0.0/21"), RT_TABLE_LOCAL, 252, "lo", kind="local"),
                              ExportRoute(ipaddress.ip_network("10.88.0.1/32"), 100, 252, "lo")])
        await exporter.apply([ExportRoute(ipaddress.ip_network("10.88.0.0/21"), RT_TABLE_LOCAL, 252, "lo", kind="local"),
                              ExportRoute(ipaddress.ip_network("10.88.0.1/32"), 100, 252, "lo")])
        assert set(nl.routes) == {(255, "10.88.0.0/21"), (100, "10.88.0.1/32")}
        await exporter.close(keep_tables=keep)
        return set(nl.routes)

    assert asyncio.run(run((RT_TABLE_LOCAL,))) == {(255, "10.88.0.0/21")}
    assert asyncio.run(run(())) == set()
