"""Plain data shared by every piece of lbd.

Nothing here does I/O or holds logic beyond trivial derived properties: these
are the nouns the pure pipeline passes along

    sources -> ServiceSpec -> ipam -> Allocation -> planner -> intents -> announcers

The typed configuration (``Config`` and its sections) is ``lbd.config.schema``;
``ServiceSpec`` stays here because every source makes them at run time (the
static ``[[service]]`` tables are only one source).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Mapping, Union

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
# Services, from any source (the static [[service]] tables are one of them)
# ---------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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
    # (lbd.restore.ghost_spec): its namespace and labels are unknown, so pool
    # restrictions are not checked against it.
    placeholder: bool = False
    # L4 forwarding (docs/forwarding.md): empty backends: lbd does not forward this service.
    backends: tuple[Backend, ...] = ()
    forward: str = "nat"  # "nat" (DNAT) or "dsr" (direct server return at layer 2)
    snat: bool = False  # nat only: masquerade to the node's address
    backend_check: HealthCheckConfig | None = None  # None: TCP connect to each backend, 2 s, rise/fall 2
    on_no_backend: str = "withdraw"  # "withdraw" the VIP from this node, or "keep" it


# ---------------------------------------------------------------------------
# Runtime state
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
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
    holds_known: bool = True  # False: its record of held VIPs has not reached us (holds reads as empty)


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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class BgpRoute:
    """This node must announce ``prefix`` to ``peers`` (peer names)."""

    prefix: IPNetwork
    peers: tuple[str, ...]
    communities: tuple[tuple[int, int], ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()
    local_pref: int | None = None


# The kernel's "local" routing table (RT_TABLE_LOCAL in include/uapi/linux/rtnetlink.h): routes
# there deliver to this host. Here, not in lbd.kernel, because the planner (which must not import
# the kernel adapters) writes it into ExportRoute.table and the route exporter reads it back.
RT_TABLE_LOCAL = 255


@dataclass(frozen=True, slots=True)
class ExportRoute:
    """This node must install ``prefix`` in kernel table ``table``."""

    prefix: IPNetwork
    table: int
    protocol: int
    interface: str
    metric: int | None = None
    kind: str = "unicast"  # "unicast" (the exported route) or "local" (the node accepts the VIP)


@dataclass(frozen=True, slots=True)
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
