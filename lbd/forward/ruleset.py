"""The desired nftables state for forwarding.

Pure: ``desired()`` turns (services, allocations, backend health, the
cluster-wide ``[forwarding]`` settings, this node's interfaces) into a
``Ruleset``; ``lbd.forward.transaction`` turns (applied, desired) into the
commands of ONE libnftables transaction, and the adapter
(``lbd.forward.forwarder``) only runs them. Level-triggered: the same inputs
give the same commands, and an unchanged ruleset gives none.

Layout (docs/forwarding.md has the picture). lbd owns the tables named
``lbd`` and never touches any other:

- ``table inet lbd`` (nat mode):
  - base chain ``prerouting`` (nat, priority dstnat): per VIP port
    ``ip daddr VIP tcp dport P jump p<id>``;
  - chain ``p<id>``: ``meta l4proto tcp dnat ip to jhash ip saddr . tcp sport mod M seed S map @m<id>``;
  - map ``m<id>`` (with a counter on every entry): Maglev bucket -> backend ``address . port``;
  - base chain ``postrouting`` (nat, priority srcnat):
    ``ct status dnat ip daddr . meta l4proto . th dport @snat4 masquerade`` (and ip6),
    the sets holding the backends of services with ``snat = true``.
- ``table netdev lbd`` (dsr mode): one base chain ``in-<ifname>`` per interface
  (hook ingress), the same dispatch, and the port chain
  ``fwd ip to jhash ... map @m<id> device D`` with map entries bucket ->
  backend address: the kernel resolves the address's MAC by neighbour
  discovery and sends the unchanged IP packet to it (the destination MAC is
  rewritten, nothing else). The ``fwd`` statement exists only in the netdev
  family, hence a second table.

No kernel object exists per backend: a change rewrites map entries only, and
libnftables, which loads its cache of chains, rules and objects before every
batch, has little to load (10,000 per-backend chains cost 0.1-0.3 s per
batch). Per-backend packet counts are the sums of the entries' counters.

The flow hash is the kernel's ``jhash`` of the client's address and port with
the configured seed: the same on every node, so with the same Maglev table a
flow reaches the same backend whichever node holds the VIP.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import itertools
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Sequence

from lbd.forward import maglev
from lbd.forward.tablecache import sized_lru
from lbd.config.schema import ForwardingConfig
from lbd.model import Allocation, Backend, IPInterface, PortSpec, ServiceSpec

TABLE = "lbd"
NAT = "inet"
DSR = "netdev"


@functools.lru_cache(maxsize=65536)
def _id(prefix: str, *parts: object) -> str:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]
    return prefix + digest


@dataclass(frozen=True)
class BackendTarget:
    """One backend as a map entry's value."""

    name: str  # "b" + hash: a stable id (status, counters)
    service: str
    endpoint: str  # "10.88.1.10:8080"
    family: int  # 4 or 6
    protocol: str
    address: str
    port: int
    mode: str  # "nat" or "dsr"
    device: str | None = None  # dsr: the interface towards the backend

    @property
    def table_family(self) -> str:
        return DSR if self.mode == "dsr" else NAT

    def value(self) -> Any:
        """The map entry's data: ``address . port`` (nat) or the address (dsr)."""
        return self.address if self.mode == "dsr" else {"concat": [self.address, self.port]}


@dataclass(frozen=True)
class PortForward:
    """One VIP port balanced over a Maglev table."""

    name: str  # "p" + hash: chain name; the map is "m" + the same hash
    service: str
    vip: str
    family: int
    protocol: str
    port: int
    mode: str
    size: int
    seed: int
    device: str | None = None  # dsr: the interface towards the backends
    buckets: tuple[str, ...] = ()  # backend id per bucket; () when no backend takes new flows
    # dsr + tcp only: the table for packets of established flows (not a bare SYN), built from
    # the backends taking new flows plus the drained ones (weight 0, still healthy) at their
    # previous weight, so a drained backend keeps its established connections. () otherwise.
    established: tuple[str, ...] = ()

    @property
    def map(self) -> str:
        return "m" + self.name[1:]

    @property
    def emap(self) -> str:
        return "e" + self.name[1:]

    @property
    def dset(self) -> str:
        return "d" + self.name[1:]

    @property
    def nset(self) -> str:
        return "n" + self.name[1:]

    @property
    def split(self) -> bool:
        """dsr + tcp: new flows and established flows are told apart (see ``_port_rules``)."""
        return self.mode == "dsr" and self.protocol == "tcp"

    @functools.cached_property
    def held(self) -> tuple[str, ...]:
        """The established-flow map's entries: only the buckets where it differs from the
        new-flow map ("" where it does not: no element)."""
        if not self.split:
            return ()
        n = len(self.buckets)
        held = tuple(e if i >= n or e != self.buckets[i] else "" for i, e in enumerate(self.established))
        return held if any(held) else ()

    def maps(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(map name, backend id per bucket, "" for no element) of every map of the port."""
        if self.split:
            return ((self.map, self.buckets), (self.emap, self.held))
        return ((self.map, self.buckets),)

    @property
    def table_family(self) -> str:
        return DSR if self.mode == "dsr" else NAT

    def key(self) -> tuple:
        """Everything but the buckets: what the chain and base-chain rule depend on."""
        return (self.name, self.service, self.vip, self.family, self.protocol, self.port, self.mode,
                self.size, self.seed, self.device)


@dataclass(frozen=True)
class Ruleset:
    ports: tuple[PortForward, ...] = ()
    backends: tuple[BackendTarget, ...] = ()
    snat: tuple[tuple[int, str, str, int], ...] = ()  # (family, address, protocol, port)
    devices: tuple[str, ...] = ()  # netdev ingress hooks (dsr)

    def tables(self) -> set[str]:
        return {p.table_family for p in self.ports}


@dataclass
class BackendView:
    """What status and metrics show for one backend of one service port."""

    service: str
    port: str  # "tcp/80"
    endpoint: str
    weight: int
    healthy: bool | None
    share: float  # of the port's new flows
    counter: str | None  # backend id when it can be in the table
    table_family: str = NAT
    note: str = ""


@dataclass
class Desired:
    ruleset: Ruleset
    # (service, group, health per member, table) per VIP port: the views are built from these on
    # demand (status, metrics), not on the path of a change.
    view_source: list[tuple[str, "_Group", tuple[bool | None, ...], maglev.MaglevTable]] = field(default_factory=list)
    no_backend: dict[str, str] = field(default_factory=dict)  # service -> reason (no healthy backend)
    # (service, endpoint) -> the last positive weight seen: a drained (weight 0) dsr backend keeps
    # it in the established-flow table (pass this Desired as ``previous`` to the next ``desired``).
    weights: dict[tuple[str, str], int] = field(default_factory=dict)

    @functools.cached_property
    def views(self) -> list[BackendView]:
        out: list[BackendView] = []
        for name, group, oks, table in self.view_source:
            shares = _shares(table)
            for m, ok in zip(group.members, oks):
                b = m.backend
                out.append(BackendView(
                    service=name, port=group.port_text, endpoint=m.endpoint, weight=b.weight, healthy=ok,
                    share=shares.get(m.endpoint, 0.0), counter=None if m.note else m.target.name,
                    table_family=m.target.table_family,
                    note=m.note or ("draining (weight 0)" if b.weight == 0 else ""),
                ))
        return out


@sized_lru(len)
def _bucket_ids(table: maglev.MaglevTable, ids: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(map(ids.__getitem__, table.entries))


@sized_lru(lambda table: table.size)
def _table(weights: tuple[tuple[str, int], ...], size: int) -> maglev.MaglevTable:
    return maglev.build(dict(weights), size)


def _device_for(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                interfaces: Mapping[str, Sequence[IPInterface]]) -> str | None:
    best: tuple[int, str] | None = None
    for name, networks in sorted(interfaces.items()):
        for net in networks:
            if net.version == address.version and address in net.network:
                if best is None or net.network.prefixlen > best[0]:
                    best = (net.network.prefixlen, name)
    return best[1] if best else None


def desired(
    services: Mapping[str, ServiceSpec],
    allocations: Mapping[str, Allocation],
    healthy: Callable[[str, Backend], bool | None],
    forwarding: ForwardingConfig,
    interfaces: Mapping[str, Sequence[IPInterface]],
    previous: Desired | None = None,
    versions: Callable[[str], object] | None = None,
) -> Desired:
    """The forwarding ruleset for this node (the same on every node given the same health).

    ``previous`` (the last result) supplies the weight a backend had before it was
    drained; without it a drained backend counts with weight 1 in the
    established-flow table of a dsr port (exact for the default weight).

    ``versions`` (service -> a value that changes whenever the health of one of its
    backends may have changed, ``BackendChecker.version``) lets a pass skip asking
    the health of every backend of a service whose version did not change.
    """
    last_weights = previous.weights if previous is not None else {}
    out = _Collected()
    for name in sorted(services):
        spec = services[name]
        allocation = allocations.get(name)
        if not spec.backends or allocation is None:
            continue
        total_up = 0
        version = versions(name) if versions is not None else None
        for group in _groups(name, spec, allocation, forwarding, interfaces):
            oks = _group_health(name, group, healthy, version)
            drained = tuple([last_weights.get((name, m.endpoint), 1) for m in group.drained])
            pf, up, table = _group_port(group, oks, drained, forwarding.table_size)
            out.add(name, group, oks, drained, pf, table)
            total_up += up
            out.uses_dsr = out.uses_dsr or spec.forward == "dsr"
        if total_up == 0:
            out.no_backend[name] = f"no healthy backend (0 of {len(spec.backends)} up on this node)"
    for gone in set(_STATIC) - set(services):
        del _STATIC[gone]
    return out.desired(interfaces)


PREFETCH_PER_PORT = 4  # tables built ahead per VIP port and call: bounded when many backends waver at once


def prefetch(current: Desired, services: Collection[str],
             ahead: Callable[[str, Backend], bool | None]) -> dict[str, int]:
    """Build, before it is needed, the table of each VIP port of ``services`` as it will be
    when one backend flips (``ahead(service, backend)``: the health it is one check result
    away from, or None); returns how many were built (or found built) per service, for the
    services where a backend is near a flip.

    ``desired`` finds them in its table caches when the flip comes (the table is the same
    function of the backend set whenever it is computed: nothing here depends on history).
    A backend's check needs ``fall`` failures in a row to take it out (2 by default, an
    ``interval`` apart), so this runs an interval before the change and the change itself
    does not wait for a whole Maglev table. Meant for a worker thread: it reads ``current``
    and the groups and only fills the caches (``_port`` does not touch ``group.last``).
    """
    built: dict[str, int] = {}
    for name, group, oks, _table in list(current.view_source):
        if name not in services:
            continue
        flips = [(k, health) for k, m in enumerate(group.members)
                 if oks[k] is not None and (health := ahead(name, m.backend)) is not None and health != oks[k]]
        drained = tuple([current.weights.get((name, m.endpoint), 1) for m in group.drained])
        for k, health in flips[:PREFETCH_PER_PORT]:
            _port(group, oks[:k] + (health,) + oks[k + 1:], drained, group.base.size)
            built[name] = built.get(name, 0) + 1
    return built


def _group_health(name: str, group: "_Group", healthy: Callable[[str, Backend], bool | None],
                  version: object) -> tuple[bool | None, ...]:
    """The health of each member of one VIP port: the last answer again while the service's
    health ``version`` (None: unknown, ask) is the one it was asked at."""
    if version is not None and group.seen is not None and group.seen[0] == version:
        return group.seen[1]
    oks = tuple([healthy(name, m.backend) for m in group.members])
    if version is not None:
        group.seen = (version, oks)
    return oks


def _group_port(group: "_Group", oks: tuple[bool | None, ...], drained: tuple[int, ...],
                size: int) -> tuple[PortForward, int, maglev.MaglevTable]:
    """``_port`` for this health and these drained weights, or its last answer when neither
    changed (no table, no bucket work)."""
    key = (oks, drained)
    hit = group.last
    if hit is not None and hit[0] == key:
        _, pf, up, table = hit
        return pf, up, table
    pf, up, table = _port(group, oks, drained, size)
    group.last = (key, pf, up, table)
    return pf, up, table


@dataclass
class _Collected:
    """What ``desired`` gathers over the VIP ports of every service, then turns into a ``Desired``."""

    ports: list[PortForward] = field(default_factory=list)
    backends: dict[str, BackendTarget] = field(default_factory=dict)
    snat: set[tuple[int, str, str, int]] = field(default_factory=set)
    view_source: list[tuple[str, "_Group", tuple[bool | None, ...], maglev.MaglevTable]] = field(default_factory=list)
    no_backend: dict[str, str] = field(default_factory=dict)
    kept_weights: dict[tuple[str, str], int] = field(default_factory=dict)
    uses_dsr: bool = False

    def add(self, name: str, group: "_Group", oks: tuple[bool | None, ...], drained: tuple[int, ...],
            pf: PortForward, table: maglev.MaglevTable) -> None:
        """One VIP port: its port, backends, snat entries and the weights to remember."""
        self.snat.update(group.snat)
        self.backends.update(group.targets)
        self.kept_weights.update(group.weights)
        for m, kept in zip(group.drained, drained):
            self.kept_weights[(name, m.endpoint)] = kept
        self.view_source.append((name, group, oks, table))
        self.ports.append(pf)

    def desired(self, interfaces: Mapping[str, Sequence[IPInterface]]) -> Desired:
        devices = tuple(sorted(interfaces)) if self.uses_dsr else ()
        ruleset = Ruleset(
            ports=tuple(sorted(self.ports, key=lambda p: p.name)),
            backends=_sorted_targets(self.backends),
            snat=tuple(sorted(self.snat)),
            devices=devices,
        )
        return Desired(ruleset=ruleset, view_source=self.view_source, no_backend=self.no_backend,
                       weights=self.kept_weights)


def _port(group: "_Group", oks: tuple[bool | None, ...], drained: tuple[int, ...],
          size: int) -> tuple[PortForward, int, maglev.MaglevTable]:
    """One VIP port's tables for this health: (the port, backends up, the new-flow table)."""
    weights: dict[str, int] = {}
    held: dict[str, int] = {}  # dsr tcp: the established-flow table's weights
    kept_of = dict(zip((m.endpoint for m in group.drained), drained))
    up = 0
    for m, ok in zip(group.members, oks):
        b, endpoint = m.backend, m.endpoint
        usable = ok is True and not m.note
        weights[endpoint] = b.weight if usable and b.weight > 0 else 0
        # A failed backend leaves both tables; a drained one only the new-flow table, and keeps
        # its previous weight in the established-flow table.
        held[endpoint] = (b.weight if b.weight > 0 else kept_of[endpoint]) if usable else 0
        up += usable
    table, ids = _port_table(group, weights, size)
    pf = dataclasses.replace(group.base, buckets=_bucket_ids(table, ids))
    if pf.split:
        etable, eids = _port_table(group, held, size)
        pf = dataclasses.replace(pf, established=_bucket_ids(etable, eids))
    return pf, up, table


def _port_table(group: "_Group", weights: dict[str, int], size: int) -> tuple[maglev.MaglevTable, tuple[str, ...]]:
    """The Maglev table of one VIP port for these weights (endpoint -> weight), and the
    backend id of each of its backends. The group keeps its endpoints sorted once, so a
    pass neither sorts nor re-hashes 10,000 names (``maglev.build_sorted``)."""
    names = group.names
    if len(names) == len(weights):  # one weight per distinct endpoint: the usual case
        w = tuple(map(weights.__getitem__, names))
        table = _table_sorted(names, w, size)
        return table, tuple(itertools.compress(group.ids, w)) if 0 in w else group.ids
    table = _table(tuple(sorted(weights.items())), size)
    chain_of = group.chain_of
    return table, tuple(chain_of.get(n, "") for n in table.backends)


@sized_lru(lambda table: table.size)
def _table_sorted(names: tuple[str, ...], weights: tuple[int, ...], size: int) -> maglev.MaglevTable:
    return maglev.build_sorted(names, weights, size)


@dataclass(frozen=True)
class _Member:
    """What does not depend on health: one backend as the port's tables see it."""

    backend: Backend
    endpoint: str
    target: BackendTarget
    note: str  # why it cannot take flows here (dsr without layer 2), or ""
    snat: tuple[int, str, str, int] | None
    port: PortSpec
    port_device: str | None


@dataclass(eq=False)
class _Group:
    """One VIP port of a service, everything but health: computed once per service spec."""

    base: PortForward  # without buckets
    port_text: str
    members: tuple[_Member, ...]
    chain_of: dict[str, str]  # endpoint -> backend id, for the backends that can be in the table
    targets: dict[str, BackendTarget]  # backend id -> target, the same backends
    drained: tuple[_Member, ...]  # weight 0: their previous weight is an input
    weights: dict[tuple[str, str], int]  # (service, endpoint) -> weight, the others
    snat: frozenset[tuple[int, str, str, int]]  # nat with snat: (family, address, protocol, port)
    names: tuple[str, ...] = ()  # the members' distinct endpoints, sorted (the Maglev order)
    ids: tuple[str, ...] = ()  # the backend id of each of ``names`` ("" for one that cannot be in a table)
    # The last result: ((health, drained weights), port, backends up, table). A pass where
    # neither changed reuses it.
    last: tuple[Any, PortForward, int, maglev.MaglevTable] | None = None
    seen: tuple[object, tuple[bool | None, ...]] | None = None  # (health version, health per member)


# service -> (spec, the other inputs, its groups): a health flip reuses them, and a change to one
# service's spec recomputes only that service (per backend, only what is new: ``_member``).
_STATIC: dict[str, tuple[ServiceSpec, tuple[Any, ...], tuple[_Group, ...]]] = {}


@functools.lru_cache(maxsize=1 << 17)
def _member(name: str, mode: str, snat: bool, port: PortSpec, b: Backend, device: str | None,
            port_device: str | None) -> _Member:
    endpoint, address = b.endpoint, str(b.address)
    note = ""
    if mode == "dsr":
        if device is None:
            note = "no interface of this node has a subnet holding it (dsr needs layer 2)"
        elif device != port_device:
            note = f"on {device}, not on {port_device} with the port's other backends (dsr)"
    target = BackendTarget(
        name=_id("b", name, mode, address, port.protocol, port.port, b.target_port, device),
        service=name, endpoint=endpoint, family=b.address.version, protocol=port.protocol,
        address=address, port=b.target_port, mode=mode, device=device,
    )
    return _Member(backend=b, endpoint=endpoint, target=target, note=note,
                   snat=(b.address.version, address, port.protocol, b.target_port) if mode == "nat" and snat else None,
                   port=port, port_device=port_device)


def _groups(name: str, spec: ServiceSpec, allocation: Allocation, forwarding: ForwardingConfig,
            interfaces: Mapping[str, Sequence[IPInterface]]) -> tuple[_Group, ...]:
    ifs = tuple(sorted((n, tuple(nets)) for n, nets in interfaces.items())) if spec.forward == "dsr" else ()
    inputs = (allocation, forwarding.table_size, forwarding.seed, ifs)
    cached = _STATIC.get(name)
    if cached is not None and (cached[0] is spec or cached[0] == spec) and cached[1] == inputs:
        return cached[2]
    # A changed spec (a weight, a backend added): the backends it still shares with the last one,
    # by identity (``dataclasses.replace`` and the sources keep them), are not worked out again.
    reuse: dict[int, _Member] = {}
    # The sorted endpoints of each last group, by their set: a weight change keeps the set, and
    # sorting 10,000 names again would be a good part of the pass.
    sorted_names: dict[frozenset[str], tuple[str, ...]] = {}
    if cached is not None and cached[1] == inputs and (cached[0].forward, cached[0].snat) == (spec.forward, spec.snat):
        reuse = {id(m.backend): m for g in cached[2] for m in g.members}
        sorted_names = {frozenset(g.names): g.names for g in cached[2]}
    groups: list[_Group] = []
    for port in spec.ports:
        members = [b for b in spec.backends if b.port is port or b.port == port]  # ``is``: no dataclass __eq__
        if not members:
            continue
        for vip in allocation.addresses:
            fitting = [b for b in members if b.address.version == vip.version]
            devices = {b: _device_for(b.address, interfaces) for b in fitting} if spec.forward == "dsr" else {}
            port_device: str | None = None
            if spec.forward == "dsr":
                devices_here = sorted({d for d in devices.values() if d})
                port_device = devices_here[0] if devices_here else None
            group_members = tuple(
                m if (m := reuse.get(id(b))) is not None and m.backend is b and m.port_device == port_device
                and m.target.port == b.target_port and (m.port is port or m.port == port)
                else _member(name, spec.forward, spec.snat, port, b, devices.get(b), port_device)
                for b in fitting)
            base = PortForward(
                name=_id("p", name, vip, port, spec.forward, forwarding.table_size, forwarding.seed, port_device),
                service=name, vip=str(vip), family=vip.version, protocol=port.protocol, port=port.port,
                mode=spec.forward, size=forwarding.table_size, seed=forwarding.seed, device=port_device,
            )
            chain_of = {m.endpoint: m.target.name for m in group_members if not m.note}
            endpoints = frozenset([m.endpoint for m in group_members])
            names = sorted_names.get(endpoints) or tuple(sorted(endpoints))
            groups.append(_Group(base=base, port_text=str(port), members=group_members,
                                 names=names, ids=tuple(chain_of.get(n, "") for n in names),
                                 chain_of=chain_of,
                                 targets={m.target.name: m.target for m in group_members if not m.note},
                                 drained=tuple(m for m in group_members if m.backend.weight == 0),
                                 weights={(name, m.endpoint): m.backend.weight for m in group_members
                                          if m.backend.weight > 0},
                                 snat=frozenset(m.snat for m in group_members if m.snat is not None)))
    _STATIC[name] = (spec, inputs, tuple(groups))
    return _STATIC[name][2]


_TARGETS: list[tuple[frozenset[str], tuple[BackendTarget, ...]]] = []


def _sorted_targets(backends: dict[str, BackendTarget]) -> tuple[BackendTarget, ...]:
    """The ruleset's backends in id order; the last answer again when the ids are the same
    (a health flip does not change them: every backend that can be in a table is listed)."""
    ids = frozenset(backends)
    if _TARGETS and _TARGETS[0][0] == ids and all(map(operator.is_, map(backends.__getitem__, (
            t.name for t in _TARGETS[0][1])), _TARGETS[0][1])):
        return _TARGETS[0][1]
    out = tuple(sorted(backends.values(), key=lambda b: b.name))
    _TARGETS[:] = [(ids, out)]
    return out


@functools.lru_cache(maxsize=256)
def _shares(table: maglev.MaglevTable) -> dict[str, float]:
    return table.shares()


def to_withdraw(want: Desired, services: Mapping[str, ServiceSpec]) -> frozenset[str]:
    """Services whose VIPs this node must give up: no healthy backend here and
    ``on_no_backend = "withdraw"`` (the daemon marks them failing, like a failed
    ``health_check``, so the election moves the VIP to a node that can serve)."""
    return frozenset(name for name in want.no_backend
                     if name in services and services[name].on_no_backend == "withdraw")
