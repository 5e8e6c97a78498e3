"""Which keys of a mapping changed between two reconcile passes, at C speed (issue 9).

Leaf module (stdlib only): the allocator, the planner, the state file encoder and the
write-back all ask it, and the state file must not pull in the config schema.
"""

from __future__ import annotations

from itertools import compress, count
from operator import is_not, or_
from typing import Iterable, Mapping, TypeVar

__all__ = ["changed_keys"]

_K = TypeVar("_K")

_MISSING = object()


def changed_keys(old: Mapping[_K, object], new: Mapping[_K, object]) -> set[_K]:
    """Keys whose value differs between ``old`` and ``new`` (added and removed ones included).

    Between two passes the mappings are mostly the very same (key, value) objects in the same
    order: ``old == new`` runs at C speed and short-cuts on identical values; when they differ,
    C-speed iterators skip the common prefix and suffix of identical entries and only the
    window between them is compared in Python (a few entries for a change of a few keys)."""
    if old == new:
        return set()
    old_keys, new_keys, old_values, new_values = list(old), list(new), list(old.values()), list(new.values())
    short = min(len(old_keys), len(new_keys))

    def same(keys: Iterable[object], other_keys: Iterable[object], values: Iterable[object],
             other_values: Iterable[object]) -> int:
        differs = map(or_, map(is_not, keys, other_keys), map(is_not, values, other_values))
        return next(compress(count(), differs), short)

    head = same(old_keys, new_keys, old_values, new_values)
    tail = min(same(reversed(old_keys), reversed(new_keys), reversed(old_values), reversed(new_values)), short - head)
    # Outside the windows both hold the same keys, so a key inside one window is not outside the other.
    window = set(old_keys[head:len(old_keys) - tail]) | set(new_keys[head:len(new_keys) - tail])
    return {key for key in window if (was := old.get(key, _MISSING)) is not (now := new.get(key, _MISSING))
            and (was is _MISSING or now is _MISSING or was != now)}
