"""Address allocation: requested IPs, pool choice, sharing, stickiness. Pure.

``allocate(pools, services, previous)`` is a deterministic function of its
inputs (the order of ``services`` does not matter) and never raises: every
inconsistency becomes a pending reason that ``lbd-ctl status`` shows.

The rules are MetalLB's (``internal/allocator/``, see the notes, section 2):

* a requested address, if it lies in a pool (``auto_assign = false`` pools
  included) and in the named pool when a pool is named too;
* else the named pool (``auto_assign`` ignored);
* else the ``auto_assign`` pools pinned to the service (``service_allocation``
  matches it) by priority (lower number first, 0 last; config order among
  equals, where MetalLB's order is random), then the ``auto_assign`` pools
  without ``service_allocation`` in config order;
* a pool with ``service_allocation`` never serves a service it does not
  match, whether named, requested or held before (MetalLB's
  ``isPoolCompatibleWithService``);
* inside a pool the lowest usable free address (``lbd.pools``);
* a dual-stack service takes one address of each family from the same pool;
* two services share an address only with the same non-empty share key, the
  same backend key and no common (protocol, port).

Stickiness, which MetalLB lacks across restarts (its issues #1774, #2443,
#2449, #2723): a previous allocation is kept whenever it is still valid.
Services are processed in three passes so that nothing valid ever moves and a
pending service never steals an address:

1. services with a previous allocation, in name order (or the caller's
   ``precedence``): keep it if valid;
2. the same services whose allocation was invalid, in the same order:
   re-allocate, keeping the addresses that are still individually valid
   (a service that turns dual-stack keeps its IPv4 address);
3. new services, in name order.

Addresses only ever get added to the book during a run, which is what lets
``lbd.pools.FreeScanner`` find the lowest free address in amortised O(1).
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass, field
from operator import attrgetter
from typing import AbstractSet, Mapping, Sequence

from lbd import pools as poolmath
from lbd.config.schema import PoolConfig
from lbd.delta import changed_keys
from lbd.model import Allocation, Family, IPAddress, ServiceSpec
from lbd.selectors import matches


__all__ = [
    "AllocationChange",
    "IncrementalAllocator",
    "AllocationResult",
    "FamilyUsage",
    "PoolUsage",
    "allocate",
    "changed_keys",
    "pool_refuses",
    "pool_usage",
    "sharing_conflict",
]


@dataclass(frozen=True)
class AllocationChange:
    """An allocation that was released or moved; the daemon logs each as a warning."""

    service: str
    kind: str  # "released" (no new addresses) or "moved"
    old: tuple[IPAddress, ...]
    new: tuple[IPAddress, ...]
    reason: str
    old_pool: str = ""
    new_pool: str = ""

    def __str__(self) -> str:
        old = ", ".join(map(str, self.old)) or "-"
        if self.kind == "released":
            return f"{self.service}: released {old}: {self.reason}"
        new = ", ".join(map(str, self.new))
        return f"{self.service}: moved {old} -> {new}: {self.reason}"


@dataclass
class AllocationResult:
    allocations: dict[str, Allocation] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)  # service -> reason
    changes: list[AllocationChange] = field(default_factory=list)


@dataclass(frozen=True)
class FamilyUsage:
    used: int
    total: int  # usable addresses; a /64 is 2**64


@dataclass(frozen=True)
class PoolUsage:
    pool: str
    ipv4: FamilyUsage
    ipv6: FamilyUsage

    def family(self, family: Family) -> FamilyUsage:
        return self.ipv4 if family is Family.IPV4 else self.ipv6

    @property
    def used(self) -> int:
        return self.ipv4.used + self.ipv6.used

    @property
    def total(self) -> int:
        return self.ipv4.total + self.ipv6.total


# ---------------------------------------------------------------------------
# Sharing
# ---------------------------------------------------------------------------

_Port = tuple[str, int]
# One empty set of ports for every service and address without ports: an empty set is 216
# bytes, and there are two per service (its request, its address) at 100,000 (issue 9).
_NO_PORTS: frozenset[_Port] = frozenset()


def _ports(spec: ServiceSpec) -> frozenset[_Port]:
    return frozenset((p.protocol.lower(), p.port) for p in spec.ports)


@dataclass(slots=True)
class _Use:
    """Who holds one address; every holder has the same share and backend key."""

    pool: str
    share_key: str | None
    backend_key: str
    ports: AbstractSet[_Port]  # never changed in place (shared: _NO_PORTS)
    services: tuple[str, ...]  # a tuple: 48 bytes for the usual one holder, a list ~90 (issue 9)


def _conflict(share_key: str | None, backend_key: str, ports: frozenset[_Port], use: _Use) -> str | None:
    if not share_key or share_key != use.share_key:
        return "no common share key"
    if backend_key != use.backend_key:
        return f"backend keys differ ({backend_key!r} and {use.backend_key!r})"
    common = sorted(ports & use.ports)
    if common:
        return "both use " + ", ".join(f"{proto}/{port}" for proto, port in common)
    return None


def sharing_conflict(a: ServiceSpec, b: ServiceSpec) -> str | None:
    """Why ``a`` and ``b`` may not share an address, or None if they may."""
    use = _Use("", b.share_key, b.backend_key, set(_ports(b)), (b.name,))
    return _conflict(a.share_key, a.backend_key, _ports(a), use)


# ---------------------------------------------------------------------------
# Pools pinned to services (service_allocation)
# ---------------------------------------------------------------------------


def pool_refuses(pool: PoolConfig, spec: ServiceSpec,
                 namespaces: Mapping[str, Mapping[str, str]] | None = None) -> str | None:
    """Why ``pool``'s ``service_allocation`` excludes ``spec``, or None if it may serve it.

    MetalLB's rule: the namespace must be listed or selected when the pool
    restricts namespaces, and the labels selected when it has service
    selectors. ``namespaces`` maps a namespace to its labels (the config's
    ``[[namespace]]``); a service's own ``namespace_labels`` take precedence.
    One deviation: MetalLB resolves namespace selectors to a set of names and,
    when that set is empty, stops restricting by namespace; here a selector
    that selects nothing keeps refusing.
    """
    rule = getattr(pool, "service_allocation", None)
    if rule is None or getattr(spec, "placeholder", False):
        return None
    ns = spec.namespace if isinstance(spec.namespace, str) else None
    if rule.namespaces or rule.namespace_selectors:
        listed = ns is not None and ns in rule.namespaces
        if not listed and rule.namespace_selectors and ns is not None:
            labels = spec.namespace_labels
            if not isinstance(labels, Mapping):
                labels = (namespaces or {}).get(ns, {})
            listed = matches(rule.namespace_selectors, labels)  # non-empty here: any of them
        if not listed:
            where = f"namespace {ns!r}" if ns is not None else "no namespace"
            return f'pool "{pool.name}" serves only some namespaces (service_allocation) and the service has {where}'
    if rule.service_selectors:
        labels = spec.labels if isinstance(spec.labels, Mapping) else {}
        if not matches(rule.service_selectors, labels):
            return f'pool "{pool.name}" serves only services its service_selectors match (service_allocation)'
    return None


def _priority_order(pool: PoolConfig) -> tuple[int, int]:
    """MetalLB's ``sortPools``: priority 1, 2, ... first, then 0 (unset)."""
    priority = pool.service_allocation.priority if pool.service_allocation is not None else 0
    return (1, 0) if priority <= 0 else (0, priority)


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------


def _family_name(family: Family) -> str:
    return "IPv4" if family is Family.IPV4 else "IPv6"


@dataclass(frozen=True, slots=True)
class _Request:
    spec: ServiceSpec
    families: tuple[Family, ...]
    requested: dict[Family, IPAddress]
    pool: str | None
    ports: frozenset[_Port]


def _items(value: object) -> list[object]:
    """The elements of a sequence or set argument; anything else is empty (never raise)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, AbstractSet)):
        return []
    return list(value)


def _is_address(value: object) -> bool:
    return isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address))


def _request(spec: ServiceSpec) -> _Request | str:
    """Normalise a service, or say why it cannot be allocated at all."""
    families: list[Family] = []
    for f in spec.ip_families if isinstance(spec.ip_families, (tuple, list)) else ():
        if isinstance(f, Family) and f not in families:
            families.append(f)
    if not families:
        return "the service has no valid ip families"
    if spec.share_key is not None and not isinstance(spec.share_key, str):
        return "the share key is not a string"
    if not isinstance(spec.backend_key, str):
        return "the backend key is not a string"
    ports: set[_Port] = set()
    for p in spec.ports if isinstance(spec.ports, (tuple, list)) else ():
        if not (isinstance(getattr(p, "protocol", None), str) and isinstance(getattr(p, "port", None), int)):
            return f"invalid port {p!r}"
        ports.add((p.protocol.lower(), p.port))
    pool = spec.pool if isinstance(spec.pool, str) and spec.pool else None
    if spec.pool is not None and not isinstance(spec.pool, str):
        return "the pool name is not a string"
    requested: dict[Family, IPAddress] = {}
    addresses = spec.addresses if isinstance(spec.addresses, (tuple, list)) else ()
    for a in addresses:
        if not _is_address(a):
            return f"requested address {a!r} is not an IP address"
        f = Family.of(a)
        if f in requested and requested[f] != a:
            return f"more than one requested {_family_name(f)} address ({requested[f]}, {a})"
        if f not in families:
            wanted = ", ".join(x.value for x in families)
            return f"requested address {a} is {_family_name(f)} but the service's ip families are {wanted}"
        requested[f] = a
    return _Request(spec, tuple(families), requested, pool, _shared_ports(frozenset(ports)) if ports else _NO_PORTS)


_PORT_SETS: dict[frozenset[_Port], frozenset[_Port]] = {}
_PORT_SETS_MAX = 4096  # distinct sets kept for sharing; past it, new ones are not (bounded)


def _shared_ports(ports: frozenset[_Port]) -> frozenset[_Port]:
    """One object for equal port sets: 100,000 services on tcp/443 hold one set, not one
    each (about 270 bytes a service, kept by the allocator per holder; issue 9)."""
    shared = _PORT_SETS.get(ports)
    if shared is not None:
        return shared
    if len(_PORT_SETS) < _PORT_SETS_MAX:
        _PORT_SETS[ports] = ports
    return ports


# ---------------------------------------------------------------------------
# The book: addresses held during one run (only ever grows)
# ---------------------------------------------------------------------------


class _ShareGroup:
    """Addresses of one pool and family held with one (share key, backend key).

    Joining one of them depends only on ports. Ports held on an address only
    grow, so an address that clashes with a port set clashes with it for the
    rest of the run: a cursor per port set skips the clashing prefix of the
    sorted list once, and picking the lowest compatible address is amortised
    O(1) even when thousands of services share one key on one port.
    """

    def __init__(self) -> None:
        self.addresses: list[IPAddress] = []  # sorted
        self.cursors: dict[frozenset[_Port], int] = {}  # addresses[:cursor] clash with the port set

    def insert(self, address: IPAddress, ports: frozenset[_Port]) -> None:
        i = bisect.bisect_left(self.addresses, address)  # type: ignore[arg-type]
        self.addresses.insert(i, address)
        for sig, cursor in self.cursors.items():
            if cursor > i:
                # inserted inside a clashing prefix: keep the prefix exact
                self.cursors[sig] = cursor + 1 if ports & sig else i

    def remove(self, address: IPAddress) -> None:
        """``address`` is free again (its last holder released it)."""
        i = bisect.bisect_left(self.addresses, address)  # type: ignore[arg-type]
        if i < len(self.addresses) and self.addresses[i] == address:
            del self.addresses[i]
            for sig, cursor in self.cursors.items():
                if cursor > i:
                    self.cursors[sig] = cursor - 1  # the rest of the prefix still clashes

    def ports_shrank(self, address: IPAddress) -> None:
        """A holder of ``address`` left: it may clash with fewer port sets now."""
        i = bisect.bisect_left(self.addresses, address)  # type: ignore[arg-type]
        for sig, cursor in self.cursors.items():
            if cursor > i:
                self.cursors[sig] = i

    def lowest(self, sig: frozenset[_Port], uses: Mapping[IPAddress, _Use]) -> IPAddress | None:
        c = self.cursors.get(sig, 0)
        while c < len(self.addresses) and uses[self.addresses[c]].ports & sig:
            c += 1
        self.cursors[sig] = c
        return self.addresses[c] if c < len(self.addresses) else None


class _Scanner(poolmath.FreeScanner):
    """``FreeScanner`` that also hears of an address freed (``IncrementalAllocator`` releasing
    a removed service): the cursor steps back to it, so the next search still finds the lowest."""

    def release(self, value: int) -> None:
        if not self._space.contains_int(self._family, value):
            return
        if self._cursor is None or value < self._cursor:
            self._cursor = self._space.next_usable(self._family, value)


class _Book:
    def __init__(self, pools: Sequence[PoolConfig],
                 namespaces: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.namespaces = namespaces if isinstance(namespaces, Mapping) else {}
        self.pools: list[PoolConfig] = []
        self.by_name: dict[str, PoolConfig] = {}
        for p in pools:
            # Duplicate names are the config parser's error; the first one wins here.
            if isinstance(p, PoolConfig) and isinstance(p.name, str) and p.name not in self.by_name:
                self.pools.append(p)
                self.by_name[p.name] = p
        self.uses: dict[IPAddress, _Use] = {}
        self.taken: dict[Family, set[int]] = {Family.IPV4: set(), Family.IPV6: set()}
        self.used: dict[tuple[str, Family], int] = {}
        self.scanners: dict[tuple[str, Family], _Scanner] = {}
        # (share_key, backend_key, pool, family) -> addresses a sharing service could join
        self.shared: dict[tuple[str, str, str, Family], _ShareGroup] = {}

    def pool_of(self, address: IPAddress, prefer: str | None = None) -> PoolConfig | None:
        """The pool holding ``address``; ``prefer`` first, should pools overlap.

        Overlapping pools are a config error, but preferring the named (or
        previous) pool keeps allocations sticky even then.
        """
        preferred = self.by_name.get(prefer) if prefer is not None else None
        if preferred is not None and poolmath.space(preferred).contains_int(Family.of(address), int(address)):
            return preferred
        return poolmath.pool_of(self.pools, address)

    def refuses(self, pool: PoolConfig, req: _Request) -> str | None:
        return pool_refuses(pool, req.spec, self.namespaces)

    def conflict(self, req: _Request, address: IPAddress) -> str | None:
        use = self.uses.get(address)
        if use is None:
            return None
        why = _conflict(req.spec.share_key, req.spec.backend_key, req.ports, use)
        if why is None:
            return None
        return f"{address} is held by {', '.join(sorted(use.services))} and sharing is not allowed ({why})"

    def hold(self, req: _Request, pool: str, address: IPAddress) -> None:
        use = self.uses.get(address)
        if use is None:
            family = Family.of(address)
            use = _Use(pool, req.spec.share_key, req.spec.backend_key, _NO_PORTS, ())
            self.uses[address] = use
            self.taken[family].add(int(address))
            self.used[(pool, family)] = self.used.get((pool, family), 0) + 1
        if not req.ports <= use.ports:
            # A new set (_NO_PORTS and others' sets stay as they are); the first holder's own
            # (shared, frozen) when the address had none.
            use.ports = req.ports if not use.ports else use.ports | req.ports
        if len(use.services) == 0 and req.spec.share_key:
            key = (req.spec.share_key, req.spec.backend_key, pool, Family.of(address))
            self.shared.setdefault(key, _ShareGroup()).insert(address, frozenset(use.ports))
        use.services = (*use.services, req.spec.name)

    def release(self, name: str, addresses: Sequence[IPAddress], ports_of: Mapping[str, frozenset[_Port]]) -> None:
        """Undo ``hold`` of ``name`` on ``addresses`` (``ports_of``: the other holders' ports;
        a holder it lacks has none)."""
        for address in addresses:
            use = self.uses[address]
            i = use.services.index(name)  # (ValueError as list.remove: not a holder)
            use.services = use.services[:i] + use.services[i + 1:]
            family = Family.of(address)
            group = self.shared.get((use.share_key, use.backend_key, use.pool, family)) if use.share_key else None
            if use.services:
                use.ports = set().union(*(ports_of.get(other, _NO_PORTS) for other in use.services))
                if group is not None:
                    group.ports_shrank(address)
                continue
            del self.uses[address]
            self.taken[family].discard(int(address))
            self.used[(use.pool, family)] -= 1
            if group is not None:
                group.remove(address)
            for (_, scanned), scanner in self.scanners.items():
                if scanned is family:
                    scanner.release(int(address))

    def exhausted(self, pool: PoolConfig, family: Family) -> str:
        total = poolmath.usable_count(pool, family)
        used = self.used.get((pool.name, family), 0)
        what = "addresses" if len(poolmath.families(pool)) < 2 else f"{_family_name(family)} addresses"
        return f'pool "{pool.name}" is exhausted ({used} of {total} {what} in use)'

    def pick(self, req: _Request, pool: PoolConfig, family: Family) -> IPAddress | None:
        """The lowest address of ``family`` in ``pool`` that ``req`` may take."""
        key = (pool.name, family)
        scanner = self.scanners.get(key)
        if scanner is None:
            scanner = self.scanners[key] = _Scanner(pool, family, self.taken[family])
        best = scanner.lowest_free()
        share_key = req.spec.share_key
        if share_key:
            group = self.shared.get((share_key, req.spec.backend_key, pool.name, family))
            shared = group.lowest(req.ports, self.uses) if group is not None else None
            if shared is not None and (best is None or shared < best):
                best = shared
        return best


# ---------------------------------------------------------------------------
# Allocation of one service
# ---------------------------------------------------------------------------

# (pool, addresses) on success, else why the service stays pending
_Outcome = tuple[str, tuple[IPAddress, ...]] | str
# (previous pool, previous addresses)
_Previous = tuple[str, tuple[IPAddress, ...]]


def _try_pool(book: _Book, req: _Request, pool: PoolConfig, fixed: Mapping[Family, IPAddress]) -> tuple[IPAddress, ...] | str:
    """Addresses for every family of ``req`` from ``pool``, ``fixed`` ones included."""
    have = poolmath.families(pool)
    missing = [f for f in req.families if f not in have]
    if missing:
        return f'pool "{pool.name}" has no {" or ".join(_family_name(f) for f in missing)} addresses'
    chosen: list[IPAddress] = []
    for family in req.families:
        address = fixed.get(family)
        if address is None:
            address = book.pick(req, pool, family)
            if address is None:
                return book.exhausted(pool, family)
        chosen.append(address)
    return tuple(chosen)


def _with_requests(book: _Book, req: _Request, fixed: Mapping[Family, IPAddress], what: str) -> _Outcome:
    """Allocate around fixed addresses (requested ones, or kept ones: ``what``)."""
    pool: PoolConfig | None = None
    for family in req.families:
        address = fixed.get(family)
        if address is None:
            continue
        p = book.pool_of(address, req.pool if req.pool is not None else (pool.name if pool else None))
        if p is None:
            return f"{what} {address} is in no pool"
        if req.pool is not None and p.name != req.pool:
            return f'{what} {address} is in pool "{p.name}", not in the requested pool "{req.pool}"'
        if not poolmath.usable(p, address):
            return f'{what} {address} is skipped by pool "{p.name}" (avoid_buggy_ips)'
        refusal = book.refuses(p, req)
        if refusal is not None:
            return f"{what} {address}: {refusal}"
        if pool is not None and p.name != pool.name:
            return f'{what}es are in different pools ("{pool.name}" and "{p.name}"); one service takes all its addresses from one pool'
        pool = p
        conflict = book.conflict(req, address)
        if conflict is not None:
            return f"{what} {conflict}"
    if pool is None:  # unreachable: callers pass at least one family of req
        return f"no {what} given"
    chosen = _try_pool(book, req, pool, fixed)
    if isinstance(chosen, str):
        return chosen
    return pool.name, chosen


def _fresh(book: _Book, req: _Request) -> _Outcome:
    if req.requested:
        return _with_requests(book, req, req.requested, "requested address")
    if req.pool is not None:
        pool = book.by_name.get(req.pool)
        if pool is None:
            return f'pool "{req.pool}" does not exist'
        refusal = book.refuses(pool, req)
        if refusal is not None:
            return refusal
        chosen = _try_pool(book, req, pool, {})
        return chosen if isinstance(chosen, str) else (pool.name, chosen)
    # MetalLB's Allocate: the pinned pools that accept the service, by
    # priority, then every pool without service_allocation.
    pinned = sorted((p for p in book.pools if p.auto_assign and p.service_allocation is not None
                     and book.refuses(p, req) is None), key=_priority_order)
    candidates = pinned + [p for p in book.pools if p.auto_assign and p.service_allocation is None]
    if not candidates:
        refusals = [r for p in book.pools if p.auto_assign and (r := book.refuses(p, req)) is not None]
        if refusals:
            return "no auto-assign pool accepts the service: " + "; ".join(refusals)
        return "no pool has auto_assign enabled (name a pool or request an address)"
    wanted = set(req.families)
    fitting = [p for p in candidates if wanted <= poolmath.families(p)]
    if not fitting:
        fams = " and ".join(_family_name(f) for f in req.families)
        return f"no auto-assign pool has {fams} addresses"
    reasons = []
    for pool in fitting:
        chosen = _try_pool(book, req, pool, {})
        if not isinstance(chosen, str):
            return pool.name, chosen
        reasons.append(chosen)
    if len(reasons) == 1:
        return reasons[0]
    return "every auto-assign pool is exhausted: " + "; ".join(reasons)


def _previous_addresses(prev: object) -> _Previous | None:
    if not isinstance(prev, Allocation):
        return None
    addresses = prev.addresses if isinstance(prev.addresses, (tuple, list)) else ()
    if not all(_is_address(a) for a in addresses):
        return None
    return (prev.pool if isinstance(prev.pool, str) else ""), tuple(addresses)


def _check_previous(book: _Book, req: _Request, old_pool: str, old: tuple[IPAddress, ...]) -> tuple[dict[Family, IPAddress], str | None]:
    """The previous addresses still individually valid, and why the whole is not (None: valid)."""
    keep: dict[Family, IPAddress] = {}
    reason: str | None = None
    by_family: dict[Family, IPAddress] = {}
    for a in old:
        f = Family.of(a)
        if f in by_family:
            reason = reason or f"the previous allocation holds two {_family_name(f)} addresses"
            continue
        by_family[f] = a
    pool_seen: str | None = None
    for f, a in by_family.items():
        if f not in req.families:
            reason = reason or f"the service no longer has the {f.value} family"
            continue
        p = book.pool_of(a, req.pool if req.pool is not None else old_pool)
        if p is None:
            reason = reason or f'address {a} left pool "{old_pool}"'
            continue
        if not poolmath.usable(p, a):
            reason = reason or f'address {a} is now skipped by pool "{p.name}" (avoid_buggy_ips)'
            continue
        refusal = book.refuses(p, req)
        if refusal is not None:
            reason = reason or f"address {a}: {refusal}"
            continue
        if req.pool is not None and p.name != req.pool:
            reason = reason or f'the service now asks for pool "{req.pool}" and {a} is in pool "{p.name}"'
            continue
        wanted = req.requested.get(f)
        if wanted is not None and wanted != a:
            reason = reason or f"the service now requests {wanted} instead of {a}"
            continue
        conflict = book.conflict(req, a)
        if conflict is not None:
            reason = reason or f"address {conflict}"
            continue
        if pool_seen is not None and p.name != pool_seen:
            reason = reason or "the previous addresses are in different pools"
            continue
        pool_seen = p.name
        keep[f] = a
    if reason is None:
        missing = [f for f in req.families if f not in keep]
        if missing:
            reason = f"the service now also needs {' and '.join(_family_name(f) for f in missing)}"
    return keep, reason


def allocate(
    pools: Sequence[PoolConfig],
    services: Sequence[ServiceSpec],
    previous: Mapping[str, Allocation],
    *,
    precedence: Mapping[str, int] | None = None,
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
) -> AllocationResult:
    """Allocate addresses to ``services`` from ``pools``, keeping ``previous`` where valid.

    ``precedence`` orders the previous allocations when two of them conflict
    (one address, no sharing): lower values are kept first, services absent
    from it come after, ties go by name. The default is name order. The
    cluster passes, e.g., the epoch at which each allocation was made, so
    that after a partition heals the older allocation keeps its address and
    only the younger side's service moves.

    ``namespaces`` maps namespace names to their labels, for pools whose
    ``service_allocation`` selects namespaces by label (``Config.namespaces``).
    """
    run = _Round(pools, services, previous, precedence, namespaces)
    run.all_passes()
    return run.sorted_result()


def _specs_quickly(services: Sequence[ServiceSpec]) -> tuple[dict[str, ServiceSpec], set[str]]:
    """``_specs_by_name`` at C speed for the usual input (specs with distinct string names)."""
    items = _items(services)
    names = list(map(attrgetter("name"), items)) if set(map(type, items)) <= {ServiceSpec} else None
    if names is not None and set(map(type, names)) <= {str}:
        specs = dict(zip(names, items))
        if len(specs) == len(items):
            return specs, set()
    return _specs_by_name(services)


def _specs_by_name(services: Sequence[ServiceSpec]) -> tuple[dict[str, ServiceSpec], set[str]]:
    """The services by name, and the names defined more than once, differently."""
    specs: dict[str, ServiceSpec] = {}
    duplicates: set[str] = set()
    for spec in _items(services):
        if not isinstance(spec, ServiceSpec) or not isinstance(spec.name, str):
            continue  # nothing to name it by: a source's bug, not an allocation
        if spec.name in specs and specs[spec.name] != spec:
            duplicates.add(spec.name)
        specs[spec.name] = spec
    return specs, duplicates


class _Round:
    """One run of ``allocate``: the book, the normalised requests, the previous
    allocations, and the result as the three passes build it."""

    def __init__(
        self,
        pools: Sequence[PoolConfig],
        services: Sequence[ServiceSpec],
        previous: Mapping[str, Allocation],
        precedence: Mapping[str, int] | None,
        namespaces: Mapping[str, Mapping[str, str]] | None,
    ) -> None:
        self.result = AllocationResult()
        self.book = _Book(_items(pools), namespaces)  # type: ignore[arg-type]
        self.ranks: Mapping[str, int] = precedence if isinstance(precedence, Mapping) else {}
        self.specs, duplicates = _specs_by_name(services)
        self.requests = self._normalise(duplicates)
        self.olds = self._previous(previous)

    def _normalise(self, duplicates: set[str]) -> dict[str, _Request]:
        """Every service's request; the ones that cannot be allocated at all go pending."""
        requests: dict[str, _Request] = {}
        for name in sorted(self.specs):
            if name in duplicates:
                self.result.pending[name] = f'service "{name}" is defined more than once, differently'
                continue
            req = _request(self.specs[name])
            if isinstance(req, str):
                self.result.pending[name] = req
            else:
                requests[name] = req
        return requests

    def _previous(self, previous: Mapping[str, Allocation]) -> dict[str, _Previous]:
        """The previous allocations that hold addresses; those of removed services are released."""
        prev = dict(previous) if isinstance(previous, Mapping) else {}
        olds: dict[str, _Previous] = {}
        for name in sorted(k for k in prev if isinstance(k, str)):
            old = _previous_addresses(prev[name])
            if old is None or not old[1]:
                continue  # malformed or empty: nothing held, nothing to release
            olds[name] = old
            if name not in self.specs:
                self.result.changes.append(
                    AllocationChange(name, "released", old[1], (), "the service was removed", old_pool=old[0]))
        return olds

    def order(self, name: str) -> tuple[int, int, str]:
        """Precedence order of previous allocations: ranked ones first (lowest rank), then by name."""
        rank = self.ranks.get(name)
        if isinstance(rank, int) and not isinstance(rank, bool):
            return (0, rank, name)
        return (1, 0, name)

    def finish(self, name: str, outcome: _Outcome, why_moved: str | None) -> None:
        """Record ``name``'s outcome: hold its addresses, or leave it pending (releasing what it had)."""
        req = self.requests.get(name)
        old = self.olds.get(name)
        if isinstance(outcome, str) or req is None:
            self.result.pending[name] = outcome if isinstance(outcome, str) else self.result.pending.get(name, "")
            if old is not None:
                self.result.changes.append(
                    AllocationChange(name, "released", old[1], (), why_moved or str(outcome), old_pool=old[0]))
            return
        pool, addresses = outcome
        for a in addresses:
            self.book.hold(req, pool, a)
        self.result.allocations[name] = Allocation(name, pool, addresses)
        if old is not None and why_moved is not None:
            self.result.changes.append(
                AllocationChange(name, "moved", old[1], addresses, why_moved, old_pool=old[0], new_pool=pool))

    def keep_valid(self) -> dict[str, tuple[dict[Family, IPAddress], str]]:
        """Pass 1: keep every previous allocation that is still valid; return the invalid
        ones with their still individually valid addresses and why the whole is not."""
        invalid: dict[str, tuple[dict[Family, IPAddress], str]] = {}
        for name in sorted(self.olds, key=self.order):
            if name not in self.specs:
                continue
            req = self.requests.get(name)
            if req is None:  # the service itself is invalid now: release
                self.finish(name, self.result.pending[name], self.result.pending[name])
                continue
            old_pool = self.olds[name][0]
            keep, reason = _check_previous(self.book, req, *self.olds[name])
            if reason is None:
                pool = self.book.pool_of(next(iter(keep.values())), req.pool if req.pool is not None else old_pool)
                self.finish(name, (pool.name if pool else old_pool, tuple(keep[f] for f in req.families)), None)
            else:
                invalid[name] = (keep, reason)
        return invalid

    def reallocate(self, invalid: Mapping[str, tuple[dict[Family, IPAddress], str]]) -> None:
        """Pass 2: re-allocate the invalid ones, keeping what is still individually valid."""
        for name in sorted(invalid, key=self.order):
            req = self.requests[name]
            keep, reason = invalid[name]
            outcome: _Outcome = "unreachable"
            # Kept addresses were checked against the book of pass 1 only; re-check
            # them inside _with_requests against what pass 2 added since.
            fixed = {**{f: a for f, a in keep.items() if f not in req.requested}, **req.requested}
            if fixed:
                outcome = _with_requests(self.book, req, fixed, "address")
            if not fixed or isinstance(outcome, str):
                outcome = _fresh(self.book, req)
            self.finish(name, outcome, reason)

    def allocate_new(self) -> None:
        """Pass 3: new services, in name order."""
        for name in sorted(self.requests):
            if name in self.olds:
                continue
            self.finish(name, _fresh(self.book, self.requests[name]), None)

    def all_passes(self) -> None:
        # The three passes of the module docstring, in this order: nothing valid ever moves
        # and a pending service never steals an address.
        invalid = self.keep_valid()
        self.reallocate(invalid)
        self.allocate_new()

    def sorted_result(self) -> AllocationResult:
        self.result.allocations = dict(sorted(self.result.allocations.items()))
        self.result.pending = dict(sorted(self.result.pending.items()))
        return self.result


class IncrementalAllocator:
    """``allocate`` across reconcile passes, in work proportional to what changed (issue 9).

    It keeps the last round's book (who holds which address). When the next call has the same
    pools, namespaces and precedence, its ``previous`` is the last result, no service is
    defined twice and no service holding an address changed its spec, the result of
    ``allocate`` is known without re-checking every allocation: every allocation of the last
    result is still valid (it was made under these rules), the removed services release
    theirs, and the services without an address (pending ones and new ones) run pass 3 in
    name order against the book, as ``allocate`` would. Anything else runs ``allocate``'s
    full round (and keeps its book). The result equals ``allocate``'s as a mapping (after an
    increment the new services come last, not in name order), and the allocations of
    unchanged services are the same objects, so the planner's change detection is cheap.
    A result's mapping is never changed afterwards (the next call makes a new one, or
    returns the very same one when nothing changed).
    """

    def __init__(self) -> None:
        self._round: _Round | None = None
        self._inputs: tuple[list[PoolConfig], object, object] | None = None
        self._allocations: dict[str, Allocation] = {}
        self._pending: dict[str, str] = {}
        # Holders' ports, for releases; only the holders that have some (issue 9: at 100,000
        # services without ports, no dict of 100,000 empty sets).
        self._ports: dict[str, frozenset[_Port]] = {}
        self.full = True  # whether the last call ran the full round
        self.touched: set[str] | None = None  # services whose allocation the last call changed (None: any)

    def allocate(self, pools: Sequence[PoolConfig], services: Sequence[ServiceSpec] | Mapping[str, ServiceSpec],
                 previous: Mapping[str, Allocation], *, precedence: Mapping[str, int] | None = None,
                 namespaces: Mapping[str, Mapping[str, str]] | None = None,
                 changed: AbstractSet[str] | None = None) -> AllocationResult:
        """``allocate(pools, services, previous, precedence=, namespaces=)``, incrementally.

        ``services`` may be a mapping by name (each key its spec's name; not changed in place
        afterwards): taken as it is, without re-indexing 100,000 specs on every change.
        ``changed``: the names whose spec may differ from the last call's (a superset; the
        caller knows them from its sources' deltas); None: found by comparing (C speed, but
        O(N)). ``touched`` then names the services whose allocation this call changed (None
        after a full round)."""
        inputs = (_items(pools), precedence, namespaces)
        if isinstance(services, Mapping):
            specs, duplicates = services, set()
        else:
            specs, duplicates = _specs_quickly(services)
        result = None
        if self._round is not None and not duplicates and inputs == self._inputs and (
                previous is self._allocations or previous == self._allocations):
            result = self._increment(self._round, specs, changed)
        self.full = result is None
        self.touched = None if result is None else self._touched_now
        if result is None:
            if isinstance(services, Mapping):
                services = list(services.values())
            run = _Round(pools, services, previous, precedence, namespaces)
            run.all_passes()
            result = run.sorted_result()
            self._round, self._inputs = run, inputs
            self._ports = {name: req.ports for name, req in run.requests.items()
                           if req.ports and name in result.allocations}
            run.requests = {}  # only the round needs them (the increments make their own): 100,000 of them
        self._allocations, self._pending = result.allocations, result.pending
        return result

    def _increment(self, run: _Round, specs: Mapping[str, ServiceSpec],
                   hint: AbstractSet[str] | None = None) -> AllocationResult | None:
        """The next result from the last one, or None when only a full round can tell."""
        if hint is None:
            changed = changed_keys(run.specs, specs)
        else:  # changed_keys over the hinted names alone
            changed = {name for name in hint if (was := run.specs.get(name)) is not (now := specs.get(name))
                       and (was is None or now is None or was != now)}
        held = self._allocations
        if any(name in specs and name in held for name in changed):
            return None  # an allocated service changed: pass 1 may keep, move or release others too
        removed = sorted(name for name in changed if name not in specs and name in held)
        result = AllocationResult()
        for name in removed:
            old = held[name]
            self._ports.pop(name, None)
            run.book.release(name, old.addresses, self._ports)
            result.changes.append(AllocationChange(name, "released", old.addresses, (), "the service was removed",
                                                   old_pool=old.pool))
        run.specs = specs
        granted: dict[str, Allocation] = {}
        for name in sorted((set(self._pending) | set(changed)) & specs.keys()):  # pass 3, in name order
            req = _request(specs[name])
            if isinstance(req, str):
                result.pending[name] = req
                continue
            outcome = _fresh(run.book, req)
            if isinstance(outcome, str):
                result.pending[name] = outcome
                continue
            pool, addresses = outcome
            for address in addresses:
                run.book.hold(req, pool, address)
            granted[name] = Allocation(name, pool, addresses)
            if req.ports:
                self._ports[name] = req.ports
        if removed or granted:
            # A new mapping (the last one may still be read, e.g. by the gauges' thread), with the
            # new services after the others: keeping the name order took a rebuild of the whole
            # dict, 16 ms per change at 100,000 (issue 9); no consumer reads it in order.
            allocations = held.copy()
            for name in removed:
                del allocations[name]
            allocations.update(granted)
        else:  # nothing changed (a pending service still pending): the very same mapping
            allocations = held
        result.allocations = allocations
        self._touched_now = set(removed) | granted.keys()
        return result


def pool_usage(pools: Sequence[PoolConfig], allocations: Mapping[str, Allocation]) -> dict[str, PoolUsage]:
    """Used and total usable addresses per pool and family (config order).

    An address counts once however many services share it, for the first
    pool (config order) in which it is usable.

    The daemon asks on every pass (metrics, status): the counts of the last call are kept
    and only the allocations that changed since are counted again (issue 9). A ``dict`` of
    allocations is kept for that comparison as it is: pass a new one, never change it in place.
    """
    return _USAGE.usage(pools, allocations)


class _UsageCounts:
    """``pool_usage``'s counts as of its last call, for the next one to update."""

    def __init__(self) -> None:
        self.pools: list[PoolConfig] = []
        self.allocations: dict[str, Allocation] = {}
        self.holders: dict[IPAddress, int] = {}  # address -> how many times allocations name it
        self.used: dict[tuple[str, Family], int] = {}

    def usage(self, pools: Sequence[PoolConfig], allocations: Mapping[str, Allocation]) -> dict[str, PoolUsage]:
        valid = [p for p in _items(pools) if isinstance(p, PoolConfig)]
        if valid != self.pools:
            self.pools, self.allocations, self.holders, self.used = valid, {}, {}, {}
        # Kept as given, not copied (one dict of 100,000 less, issue 9): the daemon's
        # allocations are a new dict whenever they change, never changed in place.
        current = allocations if type(allocations) is dict else dict(allocations)
        for name in changed_keys(self.allocations, current):
            self._count(self.allocations.get(name), -1)
            self._count(current.get(name), 1)
        self.allocations = current
        out: dict[str, PoolUsage] = {}
        for p in valid:
            if p.name in out:
                continue
            out[p.name] = PoolUsage(
                p.name,
                FamilyUsage(self.used.get((p.name, Family.IPV4), 0), poolmath.usable_count(p, Family.IPV4)),
                FamilyUsage(self.used.get((p.name, Family.IPV6), 0), poolmath.usable_count(p, Family.IPV6)),
            )
        return out

    def _count(self, allocation: Allocation | None, step: int) -> None:
        for a in getattr(allocation, "addresses", ()) if allocation is not None else ():
            if not _is_address(a):
                continue
            before = self.holders.get(a, 0)
            after = before + step
            if after:
                self.holders[a] = after
            else:
                del self.holders[a]
            if (before == 0) != (after == 0):  # the address starts or stops being used
                pool = poolmath.pool_of(self.pools, a)
                if pool is not None and poolmath.usable(pool, a):
                    key = (pool.name, Family.of(a))
                    self.used[key] = self.used.get(key, 0) + (1 if after else -1)


_USAGE = _UsageCounts()
