"""Maglev lookup table (lbd.forward.maglev): balance, minimal disruption, determinism.

The bounds come from the paper (Eisenbud et al., NSDI 2016, section 3.4):
with a prime table size ``M >= 100 * N`` every backend's share of the table is
within 1% of its target, and removing one backend moves its own entries plus
at most about as many again between the survivors (Maglev trades a little
disruption for balance; the paper's figure 13 shows the same order).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbd.forward import maglev
from lbd.forward.maglev import MaglevError, build, diff, is_prime, permutation_params

SIZES = (4099, 8191)  # primes; small so that the properties run quickly
names = st.lists(
    st.builds(lambda a, b, p: f"10.88.{a}.{b}:{p}", st.integers(0, 255), st.integers(1, 254), st.integers(1, 65535)),
    min_size=1, max_size=40, unique=True,
)


@settings(max_examples=40, deadline=None)
@given(names=names, size=st.sampled_from(SIZES), data=st.data())
def test_share_within_one_percent_of_weight(names: list[str], size: int, data: st.DataObject) -> None:
    weights = {n: data.draw(st.integers(1, 10), label=n) for n in names}
    table = build(weights, size)
    total = sum(weights.values())
    shares = table.shares()
    assert set(shares) == set(names)
    for name, weight in weights.items():
        assert abs(shares[name] - weight / total) <= 0.01, (name, shares[name], weight / total)


@settings(max_examples=40, deadline=None)
@given(names=names.filter(lambda n: len(n) >= 2), size=st.sampled_from(SIZES), data=st.data())
def test_removing_one_backend_disrupts_little(names: list[str], size: int, data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(names))
    before = build(names, size)
    after = build([n for n in names if n != gone], size)
    own = before.counts()[gone]
    changed = diff(before.as_names(), after.as_names())
    # Every entry of the removed backend moves, to a survivor.
    assert all(before.backend(b) != gone or after.backend(b) != gone for b in range(size))
    assert sum(1 for b in changed if before.backend(b) == gone) == own
    # Entries moving between survivors: the paper (section 3.4, figure 13) gives no strict
    # bound, only that they are few. Measured over 2,500 random cases: median 0.28x the
    # removed backend's own entries, p99 0.92x, max 1.41x (9 backends at 4099 reached 1.01x,
    # which failed an earlier "at most as many again"). Twice is the per-case bound; the
    # typical case is held to a tighter one in test_typical_disruption_is_small below.
    between_survivors = len(changed) - own
    assert between_survivors <= 2 * own, (len(names), own, between_survivors)


def test_ci_finding_moves_its_own_entries_and_few_others() -> None:
    """The case that broke the old one-to-one bound in CI (9 backends, 4099 entries)."""
    pool = ["10.88.0.1:1", "10.88.0.3:1", "10.88.0.1:2", "10.88.0.1:36", "10.88.0.86:11459", "10.88.1.1:2",
            "10.88.32.2:31", "10.88.42.254:502", "10.88.235.199:155"]
    before, after = build(pool, 4099), build([n for n in pool if n != "10.88.0.3:1"], 4099)
    own = before.counts()["10.88.0.3:1"]
    between_survivors = len(diff(before.as_names(), after.as_names())) - own
    assert own < between_survivors <= 2 * own  # 456 own, 462 others


def test_typical_disruption_is_small() -> None:
    """Over fixed random cases, the median of (entries moved between survivors / the removed
    backend's own entries) stays low: a permutation or population bug shows up here."""
    rng = random.Random(20161)  # fixed: the same 150 cases every run
    ratios = []
    for _ in range(150):
        count, size = rng.randint(2, 40), rng.choice(SIZES)
        pool = sorted({f"10.88.{rng.randint(0, 255)}.{rng.randint(1, 254)}:{rng.randint(1, 65535)}"
                       for _ in range(count)})
        if len(pool) < 2:
            continue
        gone = rng.choice(pool)
        before, after = build(pool, size), build([n for n in pool if n != gone], size)
        own = before.counts()[gone]
        ratios.append((len(diff(before.as_names(), after.as_names())) - own) / own)
    ratios.sort()
    assert ratios[len(ratios) // 2] <= 0.5, ratios[len(ratios) // 2]


@settings(max_examples=25, deadline=None)
@given(names=names, size=st.sampled_from(SIZES), seed=st.integers(0, 2**32))
def test_same_table_whatever_the_order(names: list[str], size: int, seed: int) -> None:
    shuffled = list(names)
    random.Random(seed).shuffle(shuffled)
    assert build(names, size) == build(shuffled, size)


def test_known_table_is_stable_across_runs_and_machines() -> None:
    # A regression anchor: every node (any Python version) must build exactly this table.
    table = build(["10.88.1.10:8080", "10.88.1.11:8080", "10.88.1.12:8080"], 13)
    assert table.backends == ("10.88.1.10:8080", "10.88.1.11:8080", "10.88.1.12:8080")
    assert table.entries == build(["10.88.1.12:8080", "10.88.1.11:8080", "10.88.1.10:8080"], 13).entries
    assert permutation_params("10.88.1.10:8080", 65537) == permutation_params("10.88.1.10:8080", 65537)
    assert sorted(table.counts().values()) == [4, 4, 5]


def test_default_size_balance() -> None:
    table = build({"a:1": 1, "b:1": 2, "c:1": 1})
    assert table.size == 65537
    shares = table.shares()
    assert abs(shares["b:1"] - 0.5) < 0.001 and abs(shares["a:1"] - 0.25) < 0.001


def test_weight_zero_takes_no_entry_and_empty_set_is_empty() -> None:
    table = build({"a:1": 1, "b:1": 0}, 101)
    assert table.backends == ("a:1",) and set(table.entries) == {0}
    assert build({}, 101).entries == () and build({"a:1": 0}, 101).size == 0


@pytest.mark.parametrize("size", [0, 1, 100, 65536, 1_000_033])
def test_bad_sizes_rejected(size: int) -> None:
    with pytest.raises(MaglevError):
        build(["a:1"], size)


def test_bad_weights_and_too_many_backends() -> None:
    with pytest.raises(MaglevError):
        build({"a:1": -1}, 101)
    with pytest.raises(MaglevError):
        build({"a:1": True}, 101)  # type: ignore[dict-item]
    with pytest.raises(MaglevError):
        build([f"b{i}" for i in range(12)], 11)


def test_is_prime() -> None:
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert is_prime(65537) and is_prime(1_000_003)


def _reference(weights: dict[str, int], size: int) -> maglev.MaglevTable:
    """The weighted Maglev population as documented, written plainly (every backend is asked
    every round): ``build`` schedules the turns faster and must give exactly this table."""
    names = tuple(sorted(n for n, w in weights.items() if w > 0))
    w = [weights[n] for n in names]
    w_max = max(w)
    params = [maglev.permutation_params(n, size) for n in names]
    pos = [offset for offset, _ in params]
    taken = [0] * len(names)
    entries = [-1] * size
    filled, rounds = 0, 0
    while True:
        rounds += 1
        for i in range(len(names)):
            if taken[i] * w_max >= rounds * w[i]:
                continue
            c = pos[i]
            while entries[c] >= 0:
                c = (c + params[i][1]) % size
            entries[c] = i
            pos[i] = (c + params[i][1]) % size
            taken[i] += 1
            filled += 1
            if filled == size:
                return maglev.MaglevTable(names, tuple(entries))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text("abcdef0123456789.:", min_size=1, max_size=12), st.integers(min_value=0, max_value=9),
                       min_size=1, max_size=40),
       st.sampled_from([2, 3, 7, 31, 101, 1021]))
def test_build_equals_the_plain_weighted_population(weights: dict[str, int], size: int) -> None:
    if not any(weights.values()) or sum(1 for w in weights.values() if w) > size:
        return
    assert maglev.build(weights, size) == _reference(weights, size)


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(st.text("abcdef0123456789.:", min_size=1, max_size=12), st.integers(min_value=0, max_value=4),
                       min_size=1, max_size=300),
       st.sampled_from([257, 1021, 4099]), st.sampled_from([1, 7, 256, 5000]))
def test_walking_and_asking_the_empty_entries_give_the_same_table(
        weights: dict[str, int], size: int, tail: int) -> None:
    """``build`` walks preference lists until ``TAIL`` entries are empty, then asks each
    empty entry how far down a backend's list it is: wherever that switch happens (every
    entry walked, every entry asked, or in between), the table is the plain population's."""
    if not any(weights.values()) or sum(1 for w in weights.values() if w) > size:
        return
    old = maglev.TAIL
    maglev.TAIL = tail
    try:
        assert maglev.build(weights, size) == _reference(weights, size)
    finally:
        maglev.TAIL = old


def test_a_large_weighted_table_equals_the_plain_population() -> None:
    """The benchmark's shape, smaller: many backends, mixed weights, both phases used."""
    rng = random.Random(14)
    weights = {f"10.88.{i // 250}.{i % 250 + 1}:8080": rng.choice((0, 1, 1, 1, 2, 5)) for i in range(1500)}
    assert maglev.build(weights, 16381) == _reference(weights, 16381)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text("abcdef0123456789.:", min_size=1, max_size=12), st.integers(min_value=0, max_value=5),
                       min_size=1, max_size=60),
       st.sampled_from([61, 1021]))
def test_build_sorted_is_build(weights: dict[str, int], size: int) -> None:
    """The forwarder's entry point (names sorted once per VIP port, weights in that order,
    zeros included) gives the table ``build`` gives."""
    if sum(1 for w in weights.values() if w) > size:
        return
    names = tuple(sorted(weights))
    table = maglev.build_sorted(names, tuple(weights[n] for n in names), size)
    assert table == build(weights, size)
    assert table == maglev.build_sorted(names, tuple(weights[n] for n in names), size)  # params cached per names
