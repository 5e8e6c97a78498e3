"""Plain data shared by every piece of lbd.

Nothing here does I/O or holds logic beyond trivial derived properties: these
are the nouns the pure pipeline passes along

    sources -> ServiceSpec -> ipam -> Allocation -> planner -> intents -> announcers

The typed configuration lives here too (``Config`` and its sections) so that
the pure pieces can depend on it without importing the TOML parser.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Union

from lbd.selectors import LabelSelector, Selectors, normalize

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]


class Family(str, enum.Enum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"

    @staticmethod
    def of(address: IPAddress | IPNetwork) -> "Family":
        return Family.IPV4 if address.version == 4 else Family.IPV6


# ---------------------------------------------------------------------------
# Configuration (produced by lbd.config from /etc/lbd.toml)
# ---------------------------------------------------------------------------


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
class HealthCheckConfig:
    type: str  # "tcp", "http" or "exec"
    port: int | None = None
    host: str = "127.0.0.1"
    path: str = "/"
    expected_status: int = 200
    command: tuple[str, ...] = ()
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 2


@dataclass(frozen=True)
class PortSpec:
    protocol: str  # "tcp", "udp" or "sctp"
    port: int

    def __str__(self) -> str:
        return f"{self.protocol}/{self.port}"


@dataclass(frozen=True)
class Backend:
    """One backend of a forwarded service port: lbd balances ``port`` of the VIP to it."""

    port: PortSpec  # the VIP's port it serves
    address: IPAddress
    target_port: int  # the backend's own port (DSR: always equal to port.port)
    weight: int = 1  # share of new flows; 0 drains (established flows stay)

    @property
    def endpoint(self) -> str:
        return f"[{self.address}]:{self.target_port}" if self.address.version == 6 else f"{self.address}:{self.target_port}"


@dataclass(frozen=True)
class ServiceSpec:
    """A service that needs addresses, from any source.

    ``name`` is namespaced by its source (``static/web``, ``k8s/default/web``)
    so two sources can never collide.
    """

    name: str
    pool: str | None = None
    addresses: tuple[IPAddress, ...] = ()  # requested; at most one per family
    ports: tuple[PortSpec, ...] = ()
    share_key: str | None = None
    ip_families: tuple[Family, ...] = (Family.IPV4,)  # both: dual-stack
    backend_key: str = ""  # services share only with an equal backend key (MetalLB's ETP rule)
    health_check: HealthCheckConfig | None = None
    eligible_nodes: frozenset[str] | None = None  # None: every node (e.g. ETP=Local narrows it)
    labels: Mapping[str, str] = field(default_factory=dict)  # matched by pools' service_selectors
    namespace: str | None = None  # matched by pools' service_allocation namespaces
    # The namespace's labels when the source knows them; None: the config's [[namespace]] table.
    namespace_labels: Mapping[str, str] | None = None
    # A stand-in for a restored allocation whose source has not spoken yet
    # (lbd.daemon.ghost_spec): its namespace and labels are unknown, so pool
    # restrictions are not checked against it.
    placeholder: bool = False
    # L4 forwarding (docs/forwarding.md): empty backends: lbd does not forward this service.
    backends: tuple[Backend, ...] = ()
    forward: str = "nat"  # "nat" (DNAT) or "dsr" (direct server return at layer 2)
    snat: bool = False  # nat only: masquerade to the node's address
    backend_check: HealthCheckConfig | None = None  # None: TCP connect to each backend, 2 s, rise/fall 2
    on_no_backend: str = "withdraw"  # "withdraw" the VIP from this node, or "keep" it


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


# ---------------------------------------------------------------------------
# Runtime state
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Allocation:
    """Addresses held by one service; sticky and persisted."""

    service: str
    pool: str
    addresses: tuple[IPAddress, ...]


class MemberState(str, enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True)
class LocalInterface:
    """What one node can announce on: an interface and its connected networks."""

    name: str
    index: int
    mac: str
    networks: tuple[IPInterface, ...]  # addresses with prefix, e.g. 10.77.0.2/24
    up: bool = True


@dataclass(frozen=True)
class Member:
    """A cluster member as the planner sees it (this node included)."""

    name: str
    address: str = ""
    state: MemberState = MemberState.ALIVE
    incarnation: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    # Announceable interfaces and their connected networks: name -> networks.
    interfaces: Mapping[str, tuple[IPInterface, ...]] = field(default_factory=dict)
    drained: bool = False
    failing: frozenset[str] = frozenset()  # services whose health check fails on this node
    holds: tuple[str, ...] = ()  # VIPs this member currently announces (for sticky failback)


class L2Mode(str, enum.Enum):
    """How this node makes a VIP reach it (a ``str`` so logs, JSON and the control socket
    show the plain word)."""

    BIND = "bind"            # bound on the interface: the kernel answers ARP/NDP
    RESPONDER = "responder"  # not bound: lbd's userspace responder answers ARP/NDP
    LOCAL = "local"          # bound on lo, never announced at layer 2 (BGP/export VIPs)

    @property
    def announced(self) -> bool:
        """Whether layer 2 announces the VIP (this node *holds* it for the cluster)."""
        return self is not L2Mode.LOCAL


@dataclass(frozen=True)
class L2Intent:
    """This node must announce ``vip`` on ``interface``."""

    vip: IPAddress
    interface: str
    mode: L2Mode
    services: tuple[str, ...]
    announce_burst: int = 3
    announce_interval: float = 10.0

    def __post_init__(self) -> None:
        # Callers (tests, the lab driver's JSON) may pass the plain word; an unknown one is a
        # ValueError here, at the boundary, not a silent fall-through in the announcer.
        if not isinstance(self.mode, L2Mode):
            try:
                object.__setattr__(self, "mode", L2Mode(self.mode))
            except ValueError:
                modes = ", ".join(m.value for m in L2Mode)
                raise ValueError(f"unknown mode {self.mode!r} (expected one of {modes})") from None


@dataclass(frozen=True)
class BgpRoute:
    """This node must announce ``prefix`` to ``peers`` (peer names)."""

    prefix: IPNetwork
    peers: tuple[str, ...]
    communities: tuple[tuple[int, int], ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()
    local_pref: int | None = None


@dataclass(frozen=True)
class ExportRoute:
    """This node must install ``prefix`` in kernel table ``table``."""

    prefix: IPNetwork
    table: int
    protocol: int
    interface: str
    metric: int | None = None
    kind: str = "unicast"  # "unicast" (the exported route) or "local" (the node accepts the VIP)


@dataclass(frozen=True)
class VipDecision:
    """Why a VIP is (not) announced, and by whom: shown by lbd-ctl status."""

    vip: IPAddress
    services: tuple[str, ...]
    owner: str | None  # L2 owner's node name, or None when nobody may announce it by L2
    interface: str | None  # on this node, when this node announces it
    reason: str  # human-readable: "elected among 3 eligible nodes", "no interface holds ..."
    candidates: tuple[str, ...] = ()  # eligible nodes in rank order
    pool: str = ""
    modes: tuple[str, ...] = ()  # "l2", "bgp", "export": how the VIP is announced
    announced_here: bool = False  # this node announces it (any mode)


@dataclass(frozen=True)
class Plan:
    """The desired state for one node, computed from the inputs."""

    l2: tuple[L2Intent, ...] = ()
    bgp: tuple[BgpRoute, ...] = ()
    exports: tuple[ExportRoute, ...] = ()
    decisions: tuple[VipDecision, ...] = ()
