"""Route export's planner, and the kernel ``local`` routes that let the node accept VIPs.

Every eligible node selected by a covering ``route_export`` installs the VIP's /32
(/128) in the export's table; it accepts the VIP's traffic either by binding it on the
export's interface (``accept = "address"``) or by a ``local`` route (``"local-route"``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from lbd.model import RT_TABLE_LOCAL, ExportRoute, IPAddress
from lbd.planner.inputs import NodeView, VipInput, refusal
from lbd.selectors import matches

# rtnetlink protocol lbd marks its BGP "accept" local routes with (the route exporter's
# default too): the exporter only ever reads back, replaces or deletes routes of its own protocols.
LOCAL_ROUTE_PROTO = 252


@dataclass(frozen=True)
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
    for version in (4, 6):
        nets = [ipaddress.ip_network(v) for v in vips if v.version == version]
        out.extend(ipaddress.collapse_addresses(nets))
    return out


def local_accept_routes(vips: Iterable[IPAddress]) -> list[ExportRoute]:
    """``local`` routes on lo accepting ``vips`` (BGP's accept = "local-route"): one per
    aggregated prefix, not one per VIP."""
    return [ExportRoute(prefix, RT_TABLE_LOCAL, LOCAL_ROUTE_PROTO, "lo", kind="local")
            for prefix in local_route_prefixes(vips)]
