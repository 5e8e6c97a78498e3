"""A least-recently-used cache bounded by the total size of what it holds.

``functools.lru_cache`` bounds the number of entries. The forwarding caches hold Maglev
tables whose size ranges from a few hundred entries to a million: 256 tables of 65,537
entries are 128 MiB per cache, and a port of 10,000 flapping backends makes a new table per
backend set, so a count alone does not bound the daemon's memory. This bound is on the sum of
the cached values' sizes (table entries), so many small tables stay cached while only a few
large ones do. Safe to call from worker threads (the tables are built off the event loop).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

# 2,000,000 table entries: a tuple slot is 8 bytes, so about 16 MiB per cache, room for
# thirty 65,537-entry tables or thousands of small ones.
DEFAULT_BUDGET = 2_000_000


class SizedLru(Generic[P, R]):
    def __init__(self, func: Callable[P, R], size_of: Callable[[R], int], budget: int) -> None:
        self._func = func
        self._size_of = size_of
        self.budget = budget
        self._items: OrderedDict[Hashable, tuple[R, int]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        functools.update_wrapper(self, func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key = (args, tuple(sorted(kwargs.items())))
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit[0]
        value = self._func(*args, **kwargs)  # outside the lock: two threads may both build; equal results
        size = max(1, self._size_of(value))
        with self._lock:
            if key not in self._items and size <= self.budget:
                self._items[key] = (value, size)
                self._held += size
                while self._held > self.budget:
                    _, (_, dropped) = self._items.popitem(last=False)
                    self._held -= dropped
        return value

    @property
    def held(self) -> int:
        """The sum of the cached values' sizes."""
        return self._held

    def __len__(self) -> int:
        return len(self._items)

    def cache_clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._held = 0


def sized_lru(size_of: Callable[[R], int], budget: int = DEFAULT_BUDGET
              ) -> Callable[[Callable[P, R]], SizedLru[P, R]]:
    def wrap(func: Callable[P, R]) -> SizedLru[P, R]:
        return SizedLru(func, size_of, budget)
    return wrap
