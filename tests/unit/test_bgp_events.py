"""The values a BGP session emits (lbd.bgp.events): state names as lbd-ctl and the
metrics show them, the negotiated capabilities' names, and events as plain values."""

from __future__ import annotations

import ipaddress

from lbd.bgp.events import Negotiated, SessionDown, State, StateChanged
from lbd.bgp.settings import IPV4_UNICAST, IPV6_UNICAST


def negotiated(**kw: object) -> Negotiated:
    base: dict[str, object] = dict(
        peer_as=64513,
        peer_router_id=ipaddress.IPv4Address("10.77.0.2"),
        hold_time=90,
        keepalive_time=30.0,
        four_octet=False,
        families=(IPV4_UNICAST,),
        route_refresh=False,
        enhanced_route_refresh=False,
        graceful_restart=False,
        peer_restarting=False,
        ibgp=False,
    )
    base.update(kw)
    return Negotiated(**base)  # type: ignore[arg-type]


def test_state_values_are_the_rfc_4271_names_in_lower_case() -> None:
    assert [s.value for s in State] == ["idle", "connect", "active", "opensent", "openconfirm", "established"]
    assert State("established") is State.ESTABLISHED and State.IDLE == "idle"


def test_capabilities_name_every_negotiated_feature_in_order() -> None:
    assert negotiated().capabilities() == ["ipv4-unicast"]
    full = negotiated(
        families=(IPV4_UNICAST, IPV6_UNICAST, (1, 128)),
        four_octet=True,
        route_refresh=True,
        enhanced_route_refresh=True,
        graceful_restart=True,
    )
    assert full.capabilities() == [
        "ipv4-unicast",
        "ipv6-unicast",
        "afi1-safi128",
        "4-octet-as",
        "route-refresh",
        "enhanced-route-refresh",
        "graceful-restart",
    ]


def test_events_are_values() -> None:
    assert StateChanged(State.IDLE, State.CONNECT) == StateChanged(State.IDLE, State.CONNECT)
    assert hash(SessionDown("x")) == hash(SessionDown("x"))
