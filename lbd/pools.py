"""Pool arithmetic: usable addresses, membership, counting and free search.

A pool is a list of inclusive address ranges (a CIDR is a range: every address
of ``192.168.1.48/28`` is usable, ``.48`` to ``.63``; a pool is not a subnet).
Everything here works on integers and never enumerates a range, so a ``/64``
(2**64 addresses) costs the same as a ``/30``.

Ordering. Inside a pool and a family the ranges are sorted and merged, and
"lowest" means numerically lowest. MetalLB walks a pool's CIDRs in the order
written; the two agree whenever the ranges are written in ascending order,
which is the usual case, and numeric order does not depend on how a range
happens to be spelled.

``avoid_buggy_ips`` skips every IPv4 address ending in ``.0`` or ``.255``
anywhere in a range (MetalLB's rule: old clients treat them as network or
broadcast addresses even inside a larger prefix). It never affects IPv6.

The per-pool tables are cached on the (frozen, hashable) ``PoolConfig``.
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass
from typing import AbstractSet, Callable, Collection, Iterator, Sequence

from lbd.config.schema import PoolConfig
from lbd.model import Family, IPAddress

__all__ = [
    "PoolSpace",
    "FreeScanner",
    "space",
    "families",
    "usable_count",
    "usable",
    "pool_of",
    "iter_usable",
    "lowest_free",
    "is_buggy",
    "to_address",
]


_ADDRESS_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address)


def to_address(family: Family, value: int) -> IPAddress:
    if family is Family.IPV4:
        return ipaddress.IPv4Address(value)
    return ipaddress.IPv6Address(value)


def is_buggy(address: IPAddress) -> bool:
    """True for IPv4 addresses ending in .0 or .255 (avoid_buggy_ips)."""
    return address.version == 4 and int(address) % 256 in (0, 255)


def _count_congruent(first: int, last: int, residue: int, modulus: int) -> int:
    """How many x in [first, last] have x % modulus == residue (floor division)."""
    if last < first:
        return 0
    return (last - residue) // modulus - (first - 1 - residue) // modulus


@dataclass(frozen=True)
class PoolSpace:
    """A pool's ranges per family, sorted and merged, as integer spans."""

    pool: PoolConfig
    spans: dict[Family, tuple[tuple[int, int], ...]]
    # starts[family] mirrors spans[family] for bisect lookups
    starts: dict[Family, tuple[int, ...]]
    counts: dict[Family, int]  # usable addresses per family
    usable_families: frozenset[Family]  # families with at least one usable address

    def _avoid(self, family: Family) -> bool:
        return self.pool.avoid_buggy_ips and family is Family.IPV4

    def families(self) -> frozenset[Family]:
        return self.usable_families

    def count(self, family: Family | None = None) -> int:
        """Usable addresses of one family, or of both when ``family`` is None."""
        if family is None:
            return sum(self.counts.values())
        return self.counts.get(family, 0)

    def contains_int(self, family: Family, value: int) -> bool:
        """True if ``value`` lies in one of the ranges (usable or not)."""
        starts = self.starts.get(family, ())
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= self.spans[family][i][1]

    def usable_int(self, family: Family, value: int) -> bool:
        if not self.contains_int(family, value):
            return False
        return not (self._avoid(family) and value % 256 in (0, 255))

    def next_usable(self, family: Family, value: int) -> int | None:
        """The lowest usable address >= ``value``, or None past the end."""
        spans = self.spans.get(family, ())
        i = max(bisect.bisect_right(self.starts.get(family, ()), value) - 1, 0)
        avoid = self._avoid(family)
        while i < len(spans):
            first, last = spans[i]
            c = max(value, first)
            if avoid:
                low = c % 256
                if low == 255:
                    c += 1  # .255 -> next .0, skipped below
                    low = 0
                if low == 0:
                    c += 1
            if c <= last:
                return c
            i += 1
        return None

    def iter_ints(self, family: Family, start: int | None = None) -> Iterator[int]:
        """Usable addresses in ascending order (lazily: safe on a /64)."""
        c = self.next_usable(family, start if start is not None else 0)
        while c is not None:
            yield c
            c = self.next_usable(family, c + 1)


def _count(spans: tuple[tuple[int, int], ...], avoid: bool) -> int:
    total = 0
    for first, last in spans:
        n = last - first + 1
        if avoid:
            n -= _count_congruent(first, last, 0, 256)
            n -= _count_congruent(first, last, 255, 256)
        total += n
    return total


def _merge(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    spans.sort()
    merged: list[tuple[int, int]] = []
    for first, last in spans:
        if last < first:
            continue  # an inverted range is the config parser's error; ignore it here
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return tuple(merged)


# id(pool) -> (pool, space). Keyed by identity because hashing a PoolConfig
# walks every range on each call; the strong reference to the pool keeps its
# id from being reused while the entry lives.
_SPACES: dict[int, tuple[PoolConfig, PoolSpace]] = {}
_SPACES_MAX = 4096


def space(pool: PoolConfig) -> PoolSpace:
    """The integer view of ``pool`` (cached: pools are frozen)."""
    hit = _SPACES.get(id(pool))
    if hit is not None and hit[0] is pool:
        return hit[1]
    if len(_SPACES) >= _SPACES_MAX:
        _SPACES.clear()
    result = _build_space(pool)
    _SPACES[id(pool)] = (pool, result)
    return result


def _build_space(pool: PoolConfig) -> PoolSpace:
    raw: dict[Family, list[tuple[int, int]]] = {Family.IPV4: [], Family.IPV6: []}
    ranges = pool.addresses if isinstance(pool.addresses, (tuple, list)) else ()
    for r in ranges:
        first, last = getattr(r, "first", None), getattr(r, "last", None)
        if not (isinstance(first, _ADDRESS_TYPES) and isinstance(last, _ADDRESS_TYPES)):
            continue  # not a range: the config parser never builds one
        if first.version != last.version:
            continue  # mixed-family range: rejected by the config parser
        raw[Family.of(first)].append((int(first), int(last)))
    spans = {f: _merge(s) for f, s in raw.items()}
    starts = {f: tuple(a for a, _ in s) for f, s in spans.items()}
    counts = {f: _count(s, pool.avoid_buggy_ips and f is Family.IPV4) for f, s in spans.items()}
    usable_families = frozenset(f for f, n in counts.items() if n > 0)
    return PoolSpace(pool=pool, spans=spans, starts=starts, counts=counts, usable_families=usable_families)


def families(pool: PoolConfig) -> frozenset[Family]:
    """The families of which ``pool`` has at least one usable address."""
    return space(pool).families()


def usable_count(pool: PoolConfig, family: Family | None = None) -> int:
    """Usable addresses in ``pool`` (of one family, or both). Exact, never enumerated."""
    return space(pool).count(family)


def usable(pool: PoolConfig, address: IPAddress) -> bool:
    """True if ``address`` may be allocated from ``pool``."""
    if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return False
    return space(pool).usable_int(Family.of(address), int(address))


def pool_of(pools: Sequence[PoolConfig], address: IPAddress) -> PoolConfig | None:
    """The first pool (config order) whose ranges contain ``address``.

    Containment, not usability: an address that ``avoid_buggy_ips`` skips
    still belongs to its pool (so messages can say why it is refused);
    check ``usable`` for that.
    """
    if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return None
    family, value = Family.of(address), int(address)
    for pool in pools:
        if space(pool).contains_int(family, value):
            return pool
    return None


def iter_usable(pool: PoolConfig, family: Family) -> Iterator[IPAddress]:
    """Usable addresses of ``family`` in ascending order, lazily."""
    for value in space(pool).iter_ints(family):
        yield to_address(family, value)


def lowest_free(
    pool: PoolConfig,
    family: Family,
    taken: Collection[IPAddress] | AbstractSet[IPAddress],
    accept: Callable[[IPAddress], bool] | None = None,
) -> IPAddress | None:
    """The lowest usable address of ``family`` not in ``taken`` that ``accept`` likes.

    Cost: the taken addresses inside the pool are sorted once (O(k log k)),
    then the gaps are walked; the range itself is never enumerated. For a
    series of allocations against a growing set use ``FreeScanner``, which
    is amortised O(1) per allocation.

    ``accept`` is a filter for free addresses; every rejected address costs
    one call, so it must reject rarely (it is not a way to search a /64).
    """
    sp = space(pool)
    inside = sorted(
        v
        for v in (int(a) for a in taken if getattr(a, "version", None) == (4 if family is Family.IPV4 else 6))
        if sp.contains_int(family, v)
    )
    c = sp.next_usable(family, 0)
    i = 0
    while c is not None:
        i = bisect.bisect_left(inside, c, i)
        if i < len(inside) and inside[i] == c:
            # c is taken: jump over the whole run of consecutive taken values
            while i + 1 < len(inside) and inside[i + 1] == inside[i] + 1:
                i += 1
            c = sp.next_usable(family, inside[i] + 1)
            continue
        address = to_address(family, c)
        if accept is None or accept(address):
            return address
        c = sp.next_usable(family, c + 1)
    return None


class FreeScanner:
    """Lowest-free search in one pool and family while ``taken`` only grows.

    It keeps a cursor below which every usable address is known to be taken;
    because ``taken`` (a set of integers shared with the caller) never
    shrinks while the scanner lives, the cursor only moves forward and a run
    of N allocations costs O(N + holes) set lookups instead of O(N**2).
    """

    def __init__(self, pool: PoolConfig, family: Family, taken: AbstractSet[int]) -> None:
        self._space = space(pool)
        self._family = family
        self._taken = taken
        self._cursor = self._space.next_usable(family, 0)

    def lowest_free(self) -> IPAddress | None:
        c = self._cursor
        while c is not None and c in self._taken:
            c = self._space.next_usable(self._family, c + 1)
        self._cursor = c
        return None if c is None else to_address(self._family, c)
