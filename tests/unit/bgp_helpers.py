"""Shared helpers for the BGP session tests (test_bgp_fsm, test_bgp_rib, test_bgp_bfd):
settings, a peer's OPEN, decoding what a session sent, and bringing one up."""

from __future__ import annotations

import ipaddress

from lbd.bgp import codec
from lbd.bgp.attributes import AFI_IPV4, AFI_IPV6, SAFI_UNICAST
from lbd.bgp.codec import (
    EnhancedRouteRefreshCap,
    GracefulRestartCap,
    MultiprotocolCap,
    Open,
    RouteRefreshCap,
    Update,
)
from lbd.bgp.events import NotificationSent
from lbd.bgp.fsm import Session
from lbd.bgp.packing import RouteAttrs
from lbd.bgp.settings import SessionSettings

A_ID = ipaddress.IPv4Address("10.77.0.1")
B_ID = ipaddress.IPv4Address("10.77.0.2")
LOCAL = ipaddress.IPv4Address("10.77.0.1")
REMOTE = ipaddress.IPv4Address("10.77.0.2")


def cfg(**kw: object) -> SessionSettings:
    base: dict[str, object] = dict(local_as=64512, router_id=A_ID, peer_as=64513)
    base.update(kw)
    return SessionSettings(**base)  # type: ignore[arg-type]


def peer_open(asn: int = 64513, hold: int = 90, rid: ipaddress.IPv4Address = B_ID, caps: tuple | None = None) -> bytes:  # type: ignore[type-arg]
    if caps is None:
        caps = (
            MultiprotocolCap(AFI_IPV4, SAFI_UNICAST),
            MultiprotocolCap(AFI_IPV6, SAFI_UNICAST),
            RouteRefreshCap(),
            EnhancedRouteRefreshCap(),
            GracefulRestartCap(0, 120, ((1, 1, 0), (2, 1, 0))),
        )
    return codec.encode_open(Open.for_asn(asn, hold, rid, caps))


def messages(data: bytes, four_octet: bool = True) -> list[codec.Message]:
    return list(codec.iter_messages(data, four_octet=four_octet, ibgp=True))


def notifications(events: list) -> list[tuple[int, int]]:  # type: ignore[type-arg]
    return [(e.code, e.subcode) for e in events if isinstance(e, NotificationSent)]


def establish(s: Session, now: float = 0.0, **open_kw: object) -> list:  # type: ignore[type-arg]
    s.start(now)
    s.connection_made(now, LOCAL, REMOTE)
    s.data_to_send()
    events = s.handle_bytes(peer_open(**open_kw), now)  # type: ignore[arg-type]
    events += s.handle_bytes(codec.encode_keepalive(), now)
    return events


def routes(n: int, start: int = 0, attrs: RouteAttrs = RouteAttrs()) -> dict:  # type: ignore[type-arg]
    return {ipaddress.IPv4Network((0x0A4D0000 + i, 32)): attrs for i in range(start, start + n)}


def announced_prefixes(data: bytes) -> list:  # type: ignore[type-arg]
    out = []
    for m in messages(data):
        if isinstance(m, Update):
            out += m.announced()
    return out
