"""Route export's planner, and the kernel ``local`` routes that let the node accept VIPs.

Every eligible node selected by a covering ``route_export`` installs the VIP's /32
(/128) in the export's table; it accepts the VIP's traffic either by binding it on the
export's interface (``accept = "address"``) or by a ``local`` route (``"local-route"``).
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass
from typing import Iterable

from lbd.model import RT_TABLE_LOCAL, ExportRoute, IPAddress
from lbd.planner.inputs import NodeView, VipInput, refusal
from lbd.selectors import matches

# rtnetlink protocol lbd marks its BGP "accept" local routes with (the route exporter's
# default too): the exporter only ever reads back, replaces or deletes routes of its own protocols.
LOCAL_ROUTE_PROTO = 252


@dataclass(frozen=True, slots=True)
class ExportPlan:
    """Route export's decision for one VIP on this node."""

    routes: tuple[ExportRoute, ...]  # empty: not installed here
    bind_interface: str | None  # the first export accepting by address binds the VIP here
    reason: str  # for lbd-ctl status, prefixed "export: "

    @property
    def exported(self) -> bool:
        return bool(self.routes)


def plan_export(view: NodeView, vip: VipInput) -> ExportPlan | None:
    """The kernel routes this node installs for ``vip``; None when no ``route_export``
    covers its pool."""
    exports = [ex for ex in view.config.route_exports if view.covers(ex, vip.pool)]
    if not exports:
        return None
    why = refusal(view.me, vip.specs)
    prefix = ipaddress.ip_network(vip.vip)
    routes: list[ExportRoute] = []
    bind_interface: str | None = None
    for ex in exports if why is None else ():
        if not matches(ex.node_selector, view.me.labels):
            continue
        routes.append(ExportRoute(prefix, ex.table, ex.protocol, ex.interface, ex.metric))
        if ex.accept == "local-route":
            routes.append(ExportRoute(prefix, RT_TABLE_LOCAL, ex.protocol, ex.interface, kind="local"))
        elif bind_interface is None:
            bind_interface = ex.interface
    if routes:
        reason = f"export: installed in kernel table on {view.node}"
    else:
        reason = f"export: not installed on {view.node}: {why or 'no route_export selects this node'}"
    return ExportPlan(tuple(routes), bind_interface, reason)


def local_route_prefixes(vips: Iterable[IPAddress]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The fewest CIDRs covering exactly ``vips``: one ``local`` route each accepts them all.

    A pool range 10.0.0.0-10.0.0.255 fully announced becomes one /24; a range that is
    not a CIDR, or holes where VIPs are not announced here, give the minimal cover of
    what is announced, never an address that is not (the node must not swallow
    traffic for a VIP another node or nobody serves).
    """
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for version, address in ((4, ipaddress.IPv4Address), (6, ipaddress.IPv6Address)):
        # On integers: the maximal runs of consecutive addresses, each summarized into its fewest
        # CIDRs (what collapse_addresses gives, without building a network per VIP from its text:
        # tens of milliseconds per re-collapsed block of 256 on a loaded machine, issue 9).
        ints = sorted({int(v) for v in vips if v.version == version})
        start = 0
        for i in range(1, len(ints) + 1):
            if i == len(ints) or ints[i] != ints[i - 1] + 1:
                out.extend(ipaddress.summarize_address_range(address(ints[start]), address(ints[i - 1])))
                start = i
    return out


def local_accept_routes(vips: Iterable[IPAddress]) -> list[ExportRoute]:
    """``local`` routes on lo accepting ``vips`` (BGP's accept = "local-route"): one per
    aggregated prefix, not one per VIP."""
    return _local_routes(local_route_prefixes(vips))


# The cover below works per aligned block of 2**_BLOCK_BITS addresses: a change re-collapses
# one block, never the whole set.
_BLOCK_BITS = 8
_Block = tuple[int, int]  # (IP version, address >> _BLOCK_BITS)
_AnyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class LocalRouteCover:
    """``local_accept_routes`` of a VIP set that changes a few VIPs at a time.

    A VIP added or removed re-collapses only its aligned block of 256 addresses. The blocks
    compose exactly: a CIDR larger than a block contains whole blocks, so the minimal cover
    only merges across blocks that are full, and those are collapsed again (usually few).
    ``routes()`` equals ``local_accept_routes`` of the current set, in the same order.
    """

    def __init__(self) -> None:
        self._vips: dict[_Block, set[IPAddress]] = {}
        self._order: list[_Block] = []  # the blocks holding a VIP, sorted
        self._routes: dict[_Block, list[ExportRoute]] = {}  # each block's own cover
        self._full: set[_Block] = set()
        self._dirty: set[_Block] = set()
        self._composed: list[ExportRoute] = []
        self._runs: dict[tuple[_Block, _Block], list[ExportRoute]] = {}  # (first, last) full block -> cover

    def add(self, vip: IPAddress) -> None:
        block = (vip.version, int(vip) >> _BLOCK_BITS)
        vips = self._vips.get(block)
        if vips is None:
            vips = self._vips[block] = set()
            bisect.insort(self._order, block)
        if vip not in vips:
            vips.add(vip)
            self._dirty.add(block)

    def discard(self, vip: IPAddress) -> None:
        block = (vip.version, int(vip) >> _BLOCK_BITS)
        vips = self._vips.get(block)
        if vips is None or vip not in vips:
            return
        vips.discard(vip)
        self._dirty.add(block)
        if not vips:
            del self._vips[block]
            del self._order[bisect.bisect_left(self._order, block)]

    def routes(self) -> list[ExportRoute]:
        if not self._dirty:
            return self._composed
        for block in self._dirty:
            vips = self._vips.get(block)
            self._full.discard(block)
            if vips is None:
                self._routes.pop(block, None)
                continue
            self._routes[block] = local_accept_routes(vips)
            if len(vips) == 1 << _BLOCK_BITS:
                self._full.add(block)
        self._dirty.clear()
        self._composed = self._compose()
        return self._composed

    def _compose(self) -> list[ExportRoute]:
        out: list[ExportRoute] = []
        runs: dict[tuple[_Block, _Block], list[ExportRoute]] = {}
        first: _Block | None = None  # of the run of consecutive full blocks being walked
        last: _Block | None = None
        for block in self._order:
            if block in self._full:
                if first is not None and last is not None and (block[0] != last[0] or block[1] != last[1] + 1):
                    out.extend(self._run(first, last, runs))
                    first = None
                first = block if first is None else first
                last = block
                continue
            if first is not None and last is not None:
                out.extend(self._run(first, last, runs))
                first = None
            out.extend(self._routes[block])
        if first is not None and last is not None:
            out.extend(self._run(first, last, runs))
        self._runs = runs  # runs that ended or changed are forgotten
        return out

    def _run(self, first: _Block, last: _Block, runs: dict[tuple[_Block, _Block], list[ExportRoute]]) -> list[ExportRoute]:
        """The cover of the full blocks ``first`` to ``last``: merged once, then kept while the run lasts."""
        routes = self._runs.get((first, last))
        if routes is None:
            network = ipaddress.IPv4Network if first[0] == 4 else ipaddress.IPv6Network
            width = 32 if first[0] == 4 else 128
            routes = _local_routes(ipaddress.collapse_addresses(
                network((block << _BLOCK_BITS, width - _BLOCK_BITS)) for block in range(first[1], last[1] + 1)))
        runs[(first, last)] = routes
        return routes


def _local_routes(prefixes: Iterable[_AnyNetwork]) -> list[ExportRoute]:
    return [ExportRoute(prefix, RT_TABLE_LOCAL, LOCAL_ROUTE_PROTO, "lo", kind="local") for prefix in prefixes]
