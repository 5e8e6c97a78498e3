"""Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
Software Network Load Balancer", NSDI 2016, section 3.4).

Pure and deterministic: every node computes the same lookup table from the
same backend set, so a flow hashed to bucket ``b`` reaches the same backend
whichever node forwards it. That is what lets established flows survive a VIP
failover (docs/forwarding.md).

The table has ``M`` entries, ``M`` prime (65537 by default, the paper's
choice). Each backend ``i`` has a preference list, a permutation of
``0..M-1`` (section 3.4, Pseudocode 1)::

    offset = h1(name) mod M
    skip   = h2(name) mod (M - 1) + 1
    permutation[i][j] = (offset + j * skip) mod M

``skip`` is in ``1..M-1`` and ``M`` is prime, so the sequence visits every
entry. Backends then take turns: each takes its next preferred entry that is
still empty, until the table is full.

Weights: the paper gives every backend one turn per round. lbd gives backend
``i`` a turn in round ``k`` only while ``taken[i] * w_max < k * w[i]`` (integer
arithmetic, so every node agrees), so each backend ends with a share of the
table proportional to its weight, to within one entry per round. Weight 0
(drain) takes no entry at all.

``h1`` and ``h2`` are BLAKE2b keyed with two different constants: stable
across Python versions and machines (Python's ``hash()`` is salted per
process and would break the cross-node agreement).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

DEFAULT_TABLE_SIZE = 65537
MAX_TABLE_SIZE = 1_000_003  # a prime; beyond this the kernel map gets unwieldy


class MaglevError(ValueError):
    """A backend set or table size that cannot make a Maglev table."""


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _h(key: bytes, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, key=key).digest(), "big")


@functools.lru_cache(maxsize=1 << 17)  # two BLAKE2b per backend: a third of a build at 10,000 backends
def permutation_params(name: str, size: int) -> tuple[int, int]:
    """(offset, skip) of backend ``name`` for a table of ``size`` entries."""
    offset = _h(b"lbd-maglev-offset", name) % size
    skip = _h(b"lbd-maglev-skip", name) % (size - 1) + 1
    return offset, skip


@dataclass(frozen=True)
class MaglevTable:
    """The lookup table: ``entries[b]`` is the index in ``backends`` of bucket ``b``."""

    backends: tuple[str, ...]  # sorted names, the ones with weight > 0
    entries: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.entries)

    def backend(self, bucket: int) -> str:
        return self.backends[self.entries[bucket]]

    def counts(self) -> dict[str, int]:
        tally = Counter(self.entries)
        return {name: tally.get(i, 0) for i, name in enumerate(self.backends)}

    def shares(self) -> dict[str, float]:
        return {name: count / self.size for name, count in self.counts().items()}

    def as_names(self) -> list[str]:
        return [self.backends[i] for i in self.entries]


def build(weights: Mapping[str, int] | Sequence[str], size: int = DEFAULT_TABLE_SIZE) -> MaglevTable:
    """The Maglev table for ``weights`` (name -> weight, or a list of names with weight 1).

    The order of the input does not matter (names are sorted first), so two
    nodes with the same set build the same table. An empty set, or every
    weight 0, gives an empty table (no backend can take new flows).
    """
    if not isinstance(weights, Mapping):
        weights = dict.fromkeys(weights, 1)
    if not is_prime(size) or size > MAX_TABLE_SIZE:
        raise MaglevError(f"the table size {size} must be a prime up to {MAX_TABLE_SIZE}")
    for name, weight in weights.items():
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise MaglevError(f"backend {name!r}: the weight {weight!r} must be a non-negative integer")
    names = tuple(sorted(n for n, w in weights.items() if w > 0))
    if len(names) > size:
        raise MaglevError(f"{len(names)} backends do not fit a table of {size} entries")
    return build_sorted(names, tuple(weights[n] for n in names), size)


def build_sorted(names: tuple[str, ...], weights: tuple[int, ...], size: int) -> MaglevTable:
    """``build`` for callers that hold their backends already sorted by name (unique), with a
    weight for each (valid: non-negative integers, ``size`` a prime, at most ``size``
    backends of weight > 0), in the same order: the same table, without sorting or checking
    again. The permutation parameters are kept per ``names``, so a caller asking again
    with the same names (the same tuple) and other weights skips that work too."""
    offsets, skips = _params_of(names, size)
    if 0 in weights:  # only the backends of weight > 0 play; C-level selection, order kept
        names = tuple(itertools.compress(names, weights))
        offsets = tuple(itertools.compress(offsets, weights))
        skips = tuple(itertools.compress(skips, weights))
        weights = tuple(itertools.compress(weights, weights))
    if not names:
        return MaglevTable((), ())
    entries = [0] * size
    _populate(_turns(list(weights)), list(offsets), list(skips), entries, size)
    return MaglevTable(names, tuple(entries))


@functools.lru_cache(maxsize=64)
def _params_of(names: tuple[str, ...], size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    params = [permutation_params(n, size) for n in names]
    return tuple(offset for offset, _ in params), tuple(skip for _, skip in params)


# Below this many empty entries the population switches from walking a backend's preference
# list to asking every empty entry how far down that list it is (see ``_populate``). Any value
# gives the same table; this one is about where the two cost the same (about sqrt(size)).
TAIL = 256


def _turns(w: list[int]) -> Iterator[list[int]]:
    """The backends taking a turn in each round, in order (``build``'s weighted schedule).

    Backend i's turn in round r: while taken[i] * w_max < r * w[i], i.e. the backends of weight
    c play in round r iff ceil(r*c/w_max) > ceil((r-1)*c/w_max) (at most once a round, as
    c <= w_max). Every backend of one weight has the same schedule, so a round's players are a
    function of which weights play; their (sorted) list is computed once per such pattern and a
    round costs its turns, not a pass over every backend.
    """
    w_max = max(w)
    classes = sorted(set(w))
    players: dict[tuple[int, ...], list[int]] = {}
    rounds = 0
    while True:
        rounds += 1
        playing = tuple(c for c in classes if (rounds * c + w_max - 1) // w_max > ((rounds - 1) * c + w_max - 1) // w_max)
        order = players.get(playing)
        if order is None:
            chosen = set(playing)
            order = players[playing] = [i for i in range(len(w)) if w[i] in chosen]
        yield order


def _populate(turns: Iterator[list[int]], pos: list[int], steps: list[int], entries: list[int], size: int) -> None:
    """Fill ``entries`` (bucket -> backend index): each turn, the backend takes the first empty
    entry of its preference list from ``pos`` on (Pseudocode 1 of the paper), until all are taken.

    Two ways to find that entry, giving the same one:

    - walk: try pos, pos + skip, pos + 2 skip, ... (mod size). A walk costs 1 / (share of
      empty entries) steps on average, so the last few hundred empty entries cost most of a
      build (about size * ln(TAIL) steps for the last TAIL of them).
    - ask the empty entries: entry e is ``(e - pos) * skip^-1 mod size`` steps down the
      backend's list from pos (``size`` is prime, so skip has an inverse and these distances
      are distinct); the first empty entry on the list is the one with the smallest
      distance. That costs one multiplication per empty entry, cheaper than a walk once
      fewer than about sqrt(size) entries are empty.
    """
    free = bytearray(b"\x01") * size  # 1: the entry is still empty
    walks = size - min(TAIL, size)  # turns taken by walking; the rest ask the empty entries
    order: list[int] = []
    at = 0
    while walks:
        order = next(turns)
        # A whole round at a time, or the part of the last one that still walks: no counter
        # to check on every turn (this loop is most of a build).
        at = min(len(order), walks)
        walks -= at
        for i in order[:at] if at < len(order) else order:
            c, skip = pos[i], steps[i]
            while not free[c]:
                c += skip
                if c >= size:
                    c -= size
            free[c] = 0
            entries[c] = i
            c += skip
            pos[i] = c - size if c >= size else c
    empty = list(itertools.compress(range(size), free))
    while empty:
        for i in order[at:]:
            c, skip = pos[i], steps[i]
            inverse = pow(skip, -1, size)
            distance = [(e - c) * inverse % size for e in empty]
            k = distance.index(min(distance))
            e = empty[k]
            empty[k] = empty[-1]  # the order of ``empty`` does not matter: distances are distinct
            empty.pop()
            entries[e] = i
            e += skip
            pos[i] = e - size if e >= size else e
            if not empty:
                return
        order, at = next(turns), 0


def diff(old: Sequence[str | None], new: Sequence[str | None]) -> dict[int, str | None]:
    """Buckets whose backend differs: bucket -> new backend (None: no backend)."""
    if len(old) != len(new):
        return {b: name for b, name in enumerate(new)}
    return {b: n for b, (o, n) in enumerate(zip(old, new)) if o != n}
