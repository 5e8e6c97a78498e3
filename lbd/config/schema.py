"""The typed configuration: ``Config`` and its sections, as ``lbd.config.load``
builds them from ``/etc/lbd.toml``.

Plain frozen data, no I/O and no parsing: the pure pieces (ipam, planner, the
BGP speaker) read these without the TOML readers. ``ServiceSpec`` and what it
holds (ports, backends, health checks) are not here but in ``lbd.model``: every
source produces them at run time, the static ``[[service]]`` tables are one source.
This module must never import ``lbd.config.load`` (or the readers): it is the
leaf the rest of the package builds.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from lbd.model import Family, IPAddress, ServiceSpec
from lbd.selectors import LabelSelector, Selectors, normalize


@dataclass(frozen=True)
class AddressRange:
    """An inclusive range of addresses of one family.

    A CIDR in a pool is a range too: every address of ``192.168.1.48/28`` is
    usable, ``.48`` to ``.63`` (a pool is not a subnet).
    """

    first: IPAddress
    last: IPAddress
    text: str  # as written in the config, for messages

    @property
    def family(self) -> Family:
        return Family.of(self.first)

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return False
        return address.version == self.first.version and self.first <= address <= self.last


@dataclass(frozen=True)
class ServiceAllocationConfig:
    """A pool pinned to some services (MetalLB's ``serviceAllocation``).

    The pool serves only services that match: namespace listed or selected
    (when ``namespaces`` or ``namespace_selectors`` is set) AND labels
    selected (when ``service_selectors`` is set). Auto-assignment tries
    matching pinned pools first, lower ``priority`` first (0: last).
    """

    priority: int = 0
    namespaces: tuple[str, ...] = ()
    namespace_selectors: Selectors = ()
    service_selectors: Selectors = ()


class _Selected:
    """Normalises ``node_selector``/``pool_selectors`` given as a flat mapping
    (the shorthand older code and tests use) into ``Selectors``."""

    _SELECTOR_FIELDS: tuple[str, ...] = ("node_selector",)

    def __post_init__(self) -> None:
        for name in self._SELECTOR_FIELDS:
            value = getattr(self, name)
            if not (isinstance(value, tuple) and all(isinstance(v, LabelSelector) for v in value)):
                object.__setattr__(self, name, normalize(value))


@dataclass(frozen=True)
class PoolConfig:
    name: str
    addresses: tuple[AddressRange, ...]
    auto_assign: bool = True
    avoid_buggy_ips: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)  # matched by advertisements' pool_selectors
    service_allocation: ServiceAllocationConfig | None = None  # None: any service may use the pool


@dataclass(frozen=True)
class L2AdvertisementConfig(_Selected):
    name: str
    pools: tuple[str, ...] = ()  # empty: every pool
    interfaces: tuple[str, ...] = ()  # empty: the interface whose subnet holds the VIP
    node_selector: Selectors = ()  # any of them; empty: every node
    mode: str = "bind"  # "bind" (kernel answers) or "responder" (userspace ARP/NDP)
    announce_burst: int = 3  # gratuitous packets sent on takeover, 100 ms apart
    announce_interval: float = 10.0  # periodic refresh in seconds; 0 disables
    pool_selectors: Selectors = ()  # pools whose labels match any, besides ``pools``
    announce_rate: int = 1000  # gratuitous packets/s cap; the node's announcer uses the lowest (issue 9)
    # Cap on the first packet of each takeover, a budget of its own (lbd.l2.pacer); the lowest wins.
    takeover_rate: int = 10_000

    _SELECTOR_FIELDS = ("node_selector", "pool_selectors")


@dataclass(frozen=True)
class BgpPeerConfig(_Selected):
    name: str
    my_asn: int
    peer_address: IPAddress
    peer_asn: int | None = None
    dynamic_asn: str | None = None  # "internal" or "external"
    local_asn: int | None = None
    source_address: IPAddress | None = None
    peer_port: int = 179
    hold_time: float = 90.0
    keepalive_time: float | None = None  # default hold_time / 3
    connect_time: float = 10.0
    router_id: ipaddress.IPv4Address | None = None
    node_selector: Selectors = ()
    password: str | None = None
    password_file: Path | None = None
    bfd_profile: str | None = None
    graceful_restart: bool = False
    graceful_restart_time: int = 120
    ebgp_multihop: int | None = None  # TTL; None means directly connected (TTL 1 on eBGP)
    vrf: str | None = None
    passive: bool = False
    dual_stack_address_family: bool = False


@dataclass(frozen=True)
class BfdProfileConfig:
    """MetalLB's BFDProfile (intervals in milliseconds), plus authentication."""

    name: str
    receive_interval: int = 300
    transmit_interval: int = 300
    detect_multiplier: int = 3
    echo_interval: int = 50
    echo_mode: bool = False
    passive_mode: bool = False
    minimum_ttl: int = 254
    auth_type: str | None = None  # "keyed-sha1" or "meticulous-keyed-sha1"
    auth_key_id: int = 1
    auth_key_file: Path | None = None


@dataclass(frozen=True)
class BgpAdvertisementConfig(_Selected):
    name: str
    pools: tuple[str, ...] = ()
    aggregation_length: int = 32
    aggregation_length_v6: int = 128
    local_pref: int | None = None
    communities: tuple[str, ...] = ()  # resolved: "A:B" or "large:A:B:C"
    peers: tuple[str, ...] = ()  # empty: every peer
    node_selector: Selectors = ()
    pool_selectors: Selectors = ()  # pools whose labels match any, besides ``pools``
    # How the node accepts the VIPs' traffic: "local-route" installs one ``local``
    # route on ``lo`` per aggregated prefix of the announced VIPs (Linux AnyIP);
    # "address" binds every VIP on ``lo`` (one address each).
    accept: str = "local-route"

    _SELECTOR_FIELDS = ("node_selector", "pool_selectors")


@dataclass(frozen=True)
class RouteExportConfig(_Selected):
    """Install VIP routes into a kernel table for an existing BIRD/FRR to export."""

    name: str
    table: int
    pools: tuple[str, ...] = ()
    protocol: int = 252  # rtnetlink protocol number lbd marks its routes with
    metric: int | None = None
    interface: str = "lo"
    node_selector: Selectors = ()
    # How the node accepts the VIP's traffic: "address" binds it on ``interface``;
    # "local-route" installs a ``local`` route instead (no address), for FRR, whose
    # zebra would otherwise prefer the connected /32 over the exported table route.
    accept: str = "address"


@dataclass(frozen=True)
class SourceConfig:
    type: str
    name: str
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeConfig:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    state_dir: Path = Path("/var/lib/lbd")
    control_socket: Path = Path("/run/lbd/lbd.sock")
    drained: bool = False
    allow_readdress: bool = False  # a reload may re-address allocated services without --allow-readdress
    # Graceful stop in BGP mode: seconds the VIPs keep accepting after the routers acknowledged
    # the withdrawal, counted from that acknowledgement (leaving the cluster runs meanwhile).
    # A router acknowledges the UPDATE before its FIB stops sending us traffic (issue 11).
    stop_linger: float = 0.5


@dataclass(frozen=True)
class ClusterConfig:
    enabled: bool = False  # true once bind or join is set
    bind: str = "0.0.0.0:7946"
    advertise: str | None = None
    join: tuple[str, ...] = ()
    keys_file: Path | None = None
    profile: str = "default"  # "default", "fast" or "lan" (memberlist's)
    failback_delay: float | None = 30.0  # None: never fail back
    allow_plaintext: bool = False  # gossip without keys_file on a reachable port: only when said so


@dataclass(frozen=True)
class ForwardingConfig:
    """Cluster-wide forwarding settings: must be equal on every node (the flows' hash)."""

    seed: int = 0x6C626431  # jhash seed of the flow hash ("lbd1")
    table_size: int = 8191  # Maglev table entries per service port (a prime; >= 100 x backends for 1 % balance)


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"  # "auto" (console on a terminal, JSON otherwise), "console", "json"


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = None  # "127.0.0.1:9120"; None: off


@dataclass(frozen=True)
class HookConfig:
    """A command run on events (keepalived's notify scripts): ``[[hook]]``."""

    name: str
    on: tuple[str, ...]  # event names (lbd.hooks.EVENTS)
    exec: tuple[str, ...]  # argv; exec[0] is an absolute path; never run through a shell
    timeout: float = 10.0  # seconds; the process group is killed at this limit


@dataclass(frozen=True)
class Config:
    path: Path
    node: NodeConfig
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    pools: tuple[PoolConfig, ...] = ()
    l2_advertisements: tuple[L2AdvertisementConfig, ...] = ()
    bgp_peers: tuple[BgpPeerConfig, ...] = ()
    bgp_advertisements: tuple[BgpAdvertisementConfig, ...] = ()
    bfd_profiles: tuple[BfdProfileConfig, ...] = ()
    route_exports: tuple[RouteExportConfig, ...] = ()
    services: tuple[ServiceSpec, ...] = ()  # the built-in static source
    sources: tuple[SourceConfig, ...] = ()
    communities: Mapping[str, str] = field(default_factory=dict)  # alias -> value
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # [[namespace]]: name -> labels
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    hooks: tuple[HookConfig, ...] = ()
    forwarding: ForwardingConfig = field(default_factory=ForwardingConfig)

    def pool(self, name: str) -> PoolConfig | None:
        for pool in self.pools:
            if pool.name == name:
                return pool
        return None
