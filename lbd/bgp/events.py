"""What a BGP session emits: its states, what it negotiated, and its events.

These are plain values shared by the session FSM (:mod:`lbd.bgp.fsm`), which
produces them, and the drivers that consume them (the asyncio speaker, the
announcer, the daemon): none of them needs the FSM itself to read an event.
Events marked "action" ask the caller to do something (as h11's events do).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Union

from lbd.bgp.codec import Update
from lbd.bgp.settings import IPV4_UNICAST, IPV6_UNICAST, Family


class State(str, enum.Enum):
    """The RFC 4271 §8.2.2 session states."""

    IDLE = "idle"
    CONNECT = "connect"
    ACTIVE = "active"
    OPENSENT = "opensent"
    OPENCONFIRM = "openconfirm"
    ESTABLISHED = "established"


@dataclass(frozen=True)
class Negotiated:
    """What the OPEN exchange settled (RFC 4271 §4.2, RFC 5492 capabilities)."""

    peer_as: int
    peer_router_id: ipaddress.IPv4Address
    hold_time: int
    keepalive_time: float
    four_octet: bool
    families: tuple[Family, ...]
    route_refresh: bool
    enhanced_route_refresh: bool
    graceful_restart: bool  # both sides advertised the capability
    peer_restarting: bool
    ibgp: bool

    def capabilities(self) -> list[str]:
        caps = [{IPV4_UNICAST: "ipv4-unicast", IPV6_UNICAST: "ipv6-unicast"}.get(f, f"afi{f[0]}-safi{f[1]}") for f in self.families]
        if self.four_octet:
            caps.append("4-octet-as")
        if self.route_refresh:
            caps.append("route-refresh")
        if self.enhanced_route_refresh:
            caps.append("enhanced-route-refresh")
        if self.graceful_restart:
            caps.append("graceful-restart")
        return caps


@dataclass(frozen=True)
class StateChanged:
    old: State
    new: State


@dataclass(frozen=True)
class ConnectRequested:
    """Action: open a TCP connection to the peer (within ``connect_time``)."""


@dataclass(frozen=True)
class CloseRequested:
    """Action: flush :meth:`lbd.bgp.fsm.Session.data_to_send`, then close the connection."""

    reason: str


@dataclass(frozen=True)
class OpenReceived:
    router_id: ipaddress.IPv4Address
    asn: int


@dataclass(frozen=True)
class SessionEstablished:
    negotiated: Negotiated


@dataclass(frozen=True)
class SessionDown:
    reason: str


@dataclass(frozen=True)
class NotificationSent:
    code: int
    subcode: int
    data: bytes = b""


@dataclass(frozen=True)
class NotificationReceived:
    code: int
    subcode: int
    data: bytes = b""


@dataclass(frozen=True)
class UpdateReceived:
    update: Update


@dataclass(frozen=True)
class RouteRefreshReceived:
    afi: int
    safi: int
    subtype: int


@dataclass(frozen=True)
class UpdatesSent:
    messages: int
    announced: int
    withdrawn: int


@dataclass(frozen=True)
class EndOfRibSent:
    afi: int
    safi: int
    prefixes: int


Event = Union[
    StateChanged,
    ConnectRequested,
    CloseRequested,
    OpenReceived,
    SessionEstablished,
    SessionDown,
    NotificationSent,
    NotificationReceived,
    UpdateReceived,
    RouteRefreshReceived,
    UpdatesSent,
    EndOfRibSent,
]
