"""What one BGP session needs to know, as a plain value (no configuration types).

The speaker core (codec, attributes, packing, events, fsm, rib) never sees the
configuration file's types: the announcer turns a configured peer into a
:class:`SessionSettings` in one place (``lbd.bgp.announcer.session_settings``),
so the FSM can be driven, tested and reused without a config.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from lbd.bgp.attributes import AFI_IPV4, AFI_IPV6, SAFI_UNICAST

# An address family as (AFI, SAFI) (RFC 4760 §2).
Family = tuple[int, int]
IPV4_UNICAST: Family = (AFI_IPV4, SAFI_UNICAST)
IPV6_UNICAST: Family = (AFI_IPV6, SAFI_UNICAST)


@dataclass(frozen=True)
class SessionSettings:
    """What the FSM needs from a peer's configuration."""

    local_as: int
    router_id: ipaddress.IPv4Address
    peer_as: int | None = None
    dynamic_asn: str | None = None  # "internal" or "external" when peer_as is None
    hold_time: int = 90
    keepalive_time: float | None = None  # None: negotiated hold / 3
    connect_time: float = 10.0
    passive: bool = False
    graceful_restart: bool = False
    graceful_restart_time: int = 120
    families: tuple[Family, ...] = (IPV4_UNICAST, IPV6_UNICAST)
    connect_retry_initial: float = 1.0  # backoff 0, 1, 2, 4 ... s (as MetalLB)
    connect_retry_max: float = 120.0
    open_hold_time: float = 240.0  # RFC 4271 §8.2.2: the "large value" while in OpenSent
    next_hop_v4: ipaddress.IPv4Address | None = None  # None: the session's local address
    next_hop_v6: ipaddress.IPv6Address | None = None
    next_hop_v6_link_local: ipaddress.IPv6Address | None = None
