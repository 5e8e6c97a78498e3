"""The forwarding table caches are bounded by the entries they hold, not by a count."""

from __future__ import annotations

import threading

from lbd.forward import maglev, ruleset
from lbd.forward.tablecache import DEFAULT_BUDGET, SizedLru, sized_lru


def test_a_hit_returns_the_cached_value_without_calling_again() -> None:
    calls: list[int] = []

    @sized_lru(len, budget=100)
    def make(n: int) -> tuple[int, ...]:
        calls.append(n)
        return tuple(range(n))

    assert make(10) is make(10)
    assert calls == [10]


def test_the_least_recently_used_values_go_first_when_the_budget_is_exceeded() -> None:
    cache: SizedLru = SizedLru(lambda n: tuple(range(n)), len, budget=100)
    cache(40)
    cache(30)
    cache(40)  # 40 is now the most recent
    cache(50)  # 120 > 100: 30 goes, not 40
    assert cache.held == 90 and len(cache) == 2
    before = cache(40)
    assert cache(40) is before


def test_a_value_larger_than_the_budget_is_returned_but_not_kept() -> None:
    cache: SizedLru = SizedLru(lambda n: tuple(range(n)), len, budget=10)
    assert len(cache(50)) == 50
    assert cache.held == 0 and len(cache) == 0


def test_many_large_tables_stay_within_the_budget() -> None:
    # What the flapping 10,000-backend port would do to a count-bounded cache:
    # every backend set a new 65,537-entry table. Here 40 distinct sets at 4,099 entries.
    cache: SizedLru = SizedLru(lambda names: maglev.build(list(names), 4099), lambda t: t.size, budget=5 * 4099)
    for i in range(40):
        cache(tuple(f"b{j}" for j in range(10) if j != i % 10) + (f"x{i}",))
    assert cache.held <= 5 * 4099 and len(cache) == 5


def test_concurrent_callers_agree_and_the_budget_holds() -> None:
    cache: SizedLru = SizedLru(lambda n: tuple(range(n)), len, budget=1000)
    seen: list[tuple[int, ...]] = []

    def worker(k: int) -> None:
        for i in range(200):
            seen.append(cache((i * k) % 97 + 1))

    threads = [threading.Thread(target=worker, args=(k,)) for k in (1, 3, 7, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(len(v) == v[-1] + 1 for v in seen)
    assert cache.held <= 1000


def test_the_ruleset_caches_are_entry_bounded() -> None:
    for cache in (ruleset._table, ruleset._table_sorted, ruleset._bucket_ids):
        assert isinstance(cache, SizedLru) and cache.budget == DEFAULT_BUDGET
