"""Route export: VIPs as kernel routes for the node's own BIRD or FRR to announce.

The Calico case: the gateway already peers with the node's BIRD, so lbd cannot
open a second BGP session to it (and must not listen on port 179). Instead lbd
writes each VIP as a route into a dedicated kernel routing table, marked with
its own rtnetlink protocol number, and the node's routing daemon learns that
table and announces it:

* BIRD 2: ``protocol kernel { ipv4 { import all; }; kernel table N; learn; }``
  (``learn`` imports routes that other programs put in the table; routes of
  protocol ``kernel`` would need ``learn all``, lbd's 252 does not).
* FRR: ``ip import-table N`` in zebra, then ``redistribute table N`` in bgpd.

Route type. Each VIP is a plain unicast route through ``interface`` (``lo`` by
default): ``VIP/32 dev lo table N proto 252``, the form kube-vip's routing-table
mode uses too. Why not a blackhole or ``local`` route:

* BIRD's kernel protocol learns unicast device routes; it skips ``local``
  routes, and a learnt blackhole is carried into BGP as a blackhole, which is
  misleading to read.
* FRR's ``ip import-table`` copies the route into zebra's main RIB; a blackhole
  there would be installed into the main table and drop traffic for a VIP that
  is bound on ``lo``, whereas a device route through ``lo`` is harmless (the
  ``local`` table, consulted first, already delivers it).
* The table is not referenced by any ``ip rule``, so none of this changes the
  node's own forwarding: the table is only a mailbox for the routing daemon.

The exporter is level-triggered: ``apply(desired)`` reads back what lbd owns in
the kernel (routes in the export tables with lbd's protocol number), installs
what is missing or different and deletes what is no longer desired. It never
deletes or replaces a route of another protocol: when a foreign route already
holds the same (table, destination, metric) slot the VIP is reported as a
conflict and left alone.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from lbd.kernel.metrics import ROUTE_CHANGES, ROUTE_ERRORS, ROUTES_INSTALLED
from lbd.kernel.netlink import Netlink
from lbd.config.schema import RouteExportConfig
from lbd.model import RT_TABLE_LOCAL, ExportRoute, IPNetwork

log = structlog.get_logger(__name__)

# The kernel stores an IPv6 route added without a metric with priority 1024
# (IP6_RT_PRIO_USER); IPv4 routes get 0. Normalising both sides lets the diff
# compare what we ask for with what a dump returns.
_DEFAULT_METRIC = {4: 0, 6: 1024}


# The kernel's tables are read again (dumped) at least this often (seconds), and after any
# failed change; in between, a route removed or added behind lbd's back is noticed late by
# at most this long (the daemon passes at least every RESYNC_INTERVAL, 10 s).
REREAD_INTERVAL = 5.0

RTN_UNICAST, RTN_LOCAL = 1, 2  # rtm_type values (include/uapi/linux/rtnetlink.h)
RT_SCOPE_HOST = 254
_KINDS = {"unicast": RTN_UNICAST, "local": RTN_LOCAL}


@dataclass(frozen=True)
class KernelRoute:
    """One route as the kernel identifies it, plus the attributes lbd sets.

    The kernel's identity of a route in a table is (destination, TOS, priority);
    lbd never sets a TOS, so (table, prefix, metric) is the key.
    """

    table: int
    prefix: IPNetwork
    metric: int
    protocol: int
    ifindex: int
    kind: int = RTN_UNICAST  # rtm_type: RTN_UNICAST, or RTN_LOCAL for accept = "local-route"

    @property
    def key(self) -> tuple[int, IPNetwork, int]:
        return (self.table, self.prefix, self.metric)


@dataclass(frozen=True)
class ExportDiff:
    install: tuple[KernelRoute, ...] = ()  # missing: add
    replace: tuple[KernelRoute, ...] = ()  # ours but with other attributes: replace in place
    remove: tuple[KernelRoute, ...] = ()  # ours and no longer desired: delete

    @property
    def empty(self) -> bool:
        return not (self.install or self.replace or self.remove)


def effective_metric(prefix: IPNetwork, metric: int | None) -> int:
    return _DEFAULT_METRIC[prefix.version] if metric is None else metric


def diff_routes(desired: Iterable[KernelRoute], current: Iterable[KernelRoute]) -> ExportDiff:
    """What to change so that lbd's routes in the kernel equal ``desired``.

    ``current`` must hold only routes lbd owns (its protocol number, its tables);
    the caller filters, so a foreign route can never land in ``remove``.
    Duplicates in ``desired`` collapse (last one wins, as a later service
    sharing a VIP would ask for the same route anyway).
    """
    want: dict[tuple[int, IPNetwork, int], KernelRoute] = {}
    for route in desired:
        want[route.key] = route
    have: dict[tuple[int, IPNetwork, int], KernelRoute] = {}
    for route in current:
        have[route.key] = route
    install = [r for k, r in want.items() if k not in have]
    replace = [r for k, r in want.items() if k in have and have[k] != r]
    remove = [r for k, r in have.items() if k not in want]
    order = _sort_key
    return ExportDiff(
        install=tuple(sorted(install, key=order)),
        replace=tuple(sorted(replace, key=order)),
        remove=tuple(sorted(remove, key=order)),
    )


def _sort_key(route: KernelRoute) -> tuple[int, int, int, int, int]:
    return (route.table, route.prefix.version, int(route.prefix.network_address), route.prefix.prefixlen, route.metric)


def scopes_of(configs: Iterable[RouteExportConfig]) -> set[tuple[int, int]]:
    """The (table, protocol) pairs lbd owns for the given ``[[route_export]]`` sections."""
    scopes = {(c.table, c.protocol) for c in configs}
    # accept = "local-route": lbd's local routes in the kernel's local table are its own too.
    scopes |= {(RT_TABLE_LOCAL, c.protocol) for c in configs if c.accept == "local-route"}
    return scopes


class RouteMessage(Protocol):
    """A kernel route message as pyroute2 decodes it (rtmsg): header fields and RTA_* by name."""

    def __getitem__(self, key: str) -> Any: ...  # an attribute's value: an int or an address string

    def get(self, key: str, default: Any = None) -> Any: ...


class RouteSocket(Protocol):
    """The slice of pyroute2's AsyncIPRoute the exporter uses (``_ThreadNetlink`` has it too)."""

    async def link_lookup(self, *, ifname: str) -> list[int]: ...

    # "dump" answers an async iterator of RouteMessage; "add", "replace" and "del"
    # answer the kernel's acknowledgement, which the exporter does not read.
    async def route(self, op: str, **kwargs: int | str) -> Any: ...

    def close(self) -> None: ...


@dataclass
class _Status:
    installed: dict[tuple[int, IPNetwork, int], KernelRoute] = field(default_factory=dict)
    conflicts: dict[str, str] = field(default_factory=dict)  # prefix -> why
    missing_interfaces: set[str] = field(default_factory=set)
    last_error: str | None = None
    last_apply: float | None = None
    applies: int = 0


class RouteExporter:
    """Keeps lbd's VIP routes in kernel export tables equal to the desired set.

    ``scopes`` are the (table, protocol) pairs lbd owns (from the configured
    ``[[route_export]]`` sections, see ``scopes_of``): routes there that are no
    longer desired are removed, also ones left by an earlier lbd process. Every
    (table, protocol) pair seen in a desired route is owned from then on, so a
    table dropped from the config is still emptied by the next ``apply``.
    ``netns`` runs the netlink socket in that network namespace (tests).
    """

    def __init__(self, scopes: Iterable[tuple[int, int]] = (), *, netns: str | None = None,
                 netlink: Netlink | None = None, reread_interval: float | None = None) -> None:
        self._scopes: set[tuple[int, int]] = set(scopes)
        # Between two reads of the kernel's tables (a dump each, both before and after a
        # change: tens of milliseconds per pass, before the BGP UPDATE of a churned VIP,
        # issue 9), apply trusts the last read and its own acknowledged changes.
        self.reread_interval = REREAD_INTERVAL if reread_interval is None else reread_interval
        self._read_at: float | None = None  # when the kernel was last read (monotonic); None: read next time
        self._read_scopes: frozenset[tuple[int, int]] = frozenset()  # the scopes that read covered
        self._ifindexes: dict[str, int | None] = {}  # interface indexes found by that read's apply
        self._netns = netns
        # The daemon's shared lbd.kernel.netlink.Netlink (a thread-held IPRoute): pyroute2's
        # AsyncIPRoute cannot open its socket under uvloop.
        self._ipr: RouteSocket | None = _ThreadNetlink(netlink) if netlink is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_obj: asyncio.Lock | None = None
        self._status = _Status()

    @classmethod
    def from_configs(cls, configs: Sequence[RouteExportConfig], *, netns: str | None = None,
                     netlink: Netlink | None = None) -> RouteExporter:
        return cls(scopes_of(configs), netns=netns, netlink=netlink)

    def own(self, scope: tuple[int, int]) -> None:
        """Own (table, protocol) from now on: lbd's routes there not desired are removed."""
        self._scopes.add(scope)

    # -- netlink -------------------------------------------------------------

    @property
    def _lock(self) -> asyncio.Lock:
        # An AsyncIPRoute socket and the lock belong to one event loop; a caller on
        # a new loop (tests calling asyncio.run twice) gets fresh ones, else the
        # old socket's replies would never be read and apply() would hang.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._ipr is not None and not isinstance(self._ipr, _ThreadNetlink):
                try:
                    self._ipr.close()
                except RuntimeError:
                    pass  # its loop is closed already; the socket goes with it
                self._ipr = None
            self._loop = loop
            self._lock_obj = asyncio.Lock()
        assert self._lock_obj is not None
        return self._lock_obj

    async def _socket(self) -> RouteSocket:
        if self._ipr is None:
            # Imported here: pyroute2 takes ~0.2 s to import, and only tests without the
            # daemon's shared Netlink open their own socket.
            from pyroute2 import AsyncIPRoute

            # groups=0: we only ask, we do not want a multicast firehose queued up.
            ipr = AsyncIPRoute(netns=self._netns, groups=0)
            await ipr.setup_endpoint()
            self._ipr = ipr
        return self._ipr

    async def _ifindex(self, ipr: RouteSocket, name: str, cache: dict[str, int | None]) -> int | None:
        if name not in cache:
            found = await ipr.link_lookup(ifname=name)
            cache[name] = found[0] if found else None
        return cache[name]

    async def _read_current(self, ipr: RouteSocket) -> list[KernelRoute]:
        """lbd's routes as the kernel has them: only owned (table, protocol) pairs."""
        current: list[KernelRoute] = []
        tables = {t for t, _ in self._scopes}
        for table in sorted(tables):
            protocols = {p for t, p in self._scopes if t == table}
            async for msg in await ipr.route("dump", table=table):
                route = _parse_route(msg)
                if route is not None and route.table == table and route.protocol in protocols:
                    current.append(route)
        return current

    # -- public API ----------------------------------------------------------

    async def apply(self, routes: Sequence[ExportRoute]) -> None:
        """Converge the kernel on ``routes`` (level-triggered, idempotent)."""
        async with self._lock:
            await self._apply(routes)

    async def _apply(self, routes: Sequence[ExportRoute]) -> None:
        ipr = await self._socket()
        now = time.monotonic()
        # Until this apply succeeds, the next one reads the kernel again (an exception, or
        # anything unexpected, must not leave a stale view trusted).
        read_at, self._read_at = self._read_at, None
        recent = read_at is not None and now - read_at < self.reread_interval
        cache: dict[str, int | None] = dict(self._ifindexes) if recent else {}
        desired: list[KernelRoute] = []
        missing: set[str] = set()
        for r in routes:
            self._scopes.add((r.table, r.protocol))
            ifindex = await self._ifindex(ipr, r.interface, cache)
            if ifindex is None:
                missing.add(r.interface)
                continue
            desired.append(
                KernelRoute(
                    table=r.table,
                    prefix=r.prefix,
                    metric=effective_metric(r.prefix, r.metric),
                    protocol=r.protocol,
                    ifindex=ifindex,
                    kind=_KINDS.get(r.kind, RTN_UNICAST),
                )
            )
        for name in sorted(missing - self._status.missing_interfaces):
            log.error("route_export_interface_missing", interface=name)
        self._status.missing_interfaces = missing

        if recent and not missing and self._read_scopes == frozenset(self._scopes):
            current = list(self._status.installed.values())  # the last read, and our changes since
        else:
            current = await self._read_current(ipr)
            read_at, self._read_scopes = now, frozenset(self._scopes)
        plan = diff_routes(desired, current)
        conflicts: dict[str, str] = {}
        errors: list[str] = []
        for route in plan.remove:
            await self._change(ipr, "del", route, errors)
        for route in plan.replace:
            await self._change(ipr, "replace", route, errors)
        for route in plan.install:
            why = await self._change(ipr, "add", route, errors)
            if why == "exists":
                # Same (table, destination, metric) held by a route of another
                # protocol: it is not ours to replace.
                conflicts[str(route.prefix)] = f"table {route.table} already has a route of another protocol"
        for prefix in sorted(set(conflicts) - set(self._status.conflicts)):
            log.warning("route_export_conflict", prefix=prefix, reason=conflicts[prefix])
        self._status.conflicts = conflicts
        self._status.last_error = errors[-1] if errors else None
        self._status.applies += 1
        self._status.last_apply = time.time()
        if plan.empty:
            installed = {r.key: r for r in current}
        elif errors or conflicts:
            # What the kernel holds now (read back: the truth, not our intent).
            installed = {r.key: r for r in await self._read_current(ipr)}
            read_at, self._read_scopes = time.monotonic(), frozenset(self._scopes)
        else:  # every change acknowledged: the kernel holds what was read, changed by them
            installed = {r.key: r for r in current}
            for route in plan.remove:
                installed.pop(route.key, None)
            for route in (*plan.replace, *plan.install):
                installed[route.key] = route
        after = list(installed.values())
        self._status.installed = installed
        for table in {t for t, _ in self._scopes}:
            ROUTES_INSTALLED.labels(table=str(table)).set(sum(1 for r in after if r.table == table))
        self._ifindexes = {name: index for name, index in cache.items() if index is not None}
        self._read_at = read_at
        if not plan.empty:
            log.info(
                "route_export_applied",
                installed=len(plan.install) - len(conflicts),
                replaced=len(plan.replace),
                removed=len(plan.remove),
                total=len(after),
            )

    async def _change(self, ipr: RouteSocket, op: str, route: KernelRoute, errors: list[str]) -> str | None:
        from pyroute2.netlink.exceptions import NetlinkError

        kwargs: dict[str, int | str] = {
            "dst": str(route.prefix),
            "table": route.table,
            "proto": route.protocol,
            "priority": route.metric,
        }
        # The type on delete too: pyroute2 would default it to unicast, which matches no local route.
        kwargs["type"] = route.kind
        if route.kind == RTN_LOCAL:
            kwargs["scope"] = RT_SCOPE_HOST  # the kernel refuses a local route of wider scope
        if op != "del":
            kwargs["oif"] = route.ifindex
        try:
            await ipr.route(op, **kwargs)
        except NetlinkError as exc:
            if op == "add" and exc.code == errno.EEXIST:
                ROUTE_ERRORS.labels(reason="conflict").inc()
                return "exists"
            if op == "del" and exc.code == errno.ESRCH:
                return None  # gone already: the goal is reached
            ROUTE_ERRORS.labels(reason="netlink").inc()
            message = f"{op} {route.prefix} table {route.table}: {exc}"
            errors.append(message)
            log.error("route_export_failed", op=op, prefix=str(route.prefix), table=route.table, error=str(exc))
            return "error"
        ROUTE_CHANGES.labels(op=op).inc()
        return None

    async def close(self, keep_tables: Iterable[int] = ()) -> None:
        """Remove every route lbd owns in its export tables, then close the socket.

        Routes in ``keep_tables`` stay (a stop for a restart keeps the local routes that
        accept the VIPs' traffic, as it keeps L2 addresses: the next lbd adopts them).
        """
        keep = set(keep_tables)
        async with self._lock:
            try:
                self._scopes = {(t, p) for t, p in self._scopes if t not in keep}
                self._read_at = None  # the last apply: from what the kernel holds now
                await self._apply(())
            finally:
                if self._ipr is not None:
                    self._ipr.close()
                    if not isinstance(self._ipr, _ThreadNetlink):
                        self._ipr = None

    def status(self) -> dict[str, object]:
        """For ``lbd-ctl status``: what is installed, conflicts and the last error."""
        s = self._status
        return {
            "scopes": [{"table": t, "protocol": p} for t, p in sorted(self._scopes)],
            "routes": [
                {"table": r.table, "prefix": str(r.prefix), "metric": r.metric, "protocol": r.protocol}
                for r in sorted(s.installed.values(), key=_sort_key)
            ],
            "conflicts": dict(sorted(s.conflicts.items())),
            "missing_interfaces": sorted(s.missing_interfaces),
            "last_error": s.last_error,
            "last_apply": s.last_apply,
            "applies": s.applies,
        }


class _ThreadNetlink:
    """The slice of AsyncIPRoute the exporter uses, over lbd.kernel.netlink.Netlink."""

    def __init__(self, netlink: Netlink) -> None:
        self._nl = netlink

    async def link_lookup(self, *, ifname: str) -> list[int]:
        return list(await self._nl.call("link_lookup", ifname=ifname))

    async def route(self, op: str, **kwargs: int | str) -> Any:
        result = await self._nl.call("route", op, **kwargs)
        if op == "dump":
            return _aiter(result)
        return result

    def close(self) -> None:
        """The daemon owns the shared netlink thread."""


async def _aiter(items: Iterable[RouteMessage]) -> AsyncIterator[RouteMessage]:
    for item in items:
        yield item


def _parse_route(msg: RouteMessage) -> KernelRoute | None:
    """A kernel route message as a KernelRoute, or None for forms lbd never makes."""
    family = msg["family"]
    dst = msg.get("dst")
    if dst is None:
        # A default route has no RTA_DST: lbd never exports one.
        dst = "0.0.0.0" if family == 2 else "::"
    try:
        prefix = ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)
    except ValueError:
        return None
    table = msg.get("table") or 0  # RTA_TABLE (tables > 255), else rtm_table
    metric = msg.get("priority")
    oif = msg.get("oif")
    return KernelRoute(
        table=int(table),
        prefix=prefix,
        metric=effective_metric(prefix, metric),
        protocol=int(msg["proto"]),
        ifindex=int(oif) if oif is not None else 0,
        kind=int(msg.get("type", RTN_UNICAST)),
    )
