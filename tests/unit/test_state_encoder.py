"""``StateEncoder``: the state file's bytes, re-encoding only what changed, equal ``encode_state``'s (issue 9)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbd.model import Allocation
from lbd.state import PersistedState, StateEncoder, StateError, StateStore, decode_state, encode_state

A = ipaddress.ip_address

NAMES = st.sampled_from([f"src/s{i}" for i in range(12)] + ["a/\u00e9t\u00e9", 'b/"q"', "c/x\\y", "z"])
ADDRESSES = st.lists(st.sampled_from([A("10.77.0.1"), A("10.77.0.2"), A("fd77::1"), A("fd77::a:2")]),
                     min_size=1, max_size=2, unique=True).map(tuple)
ALLOCATION = st.tuples(NAMES, st.sampled_from(["lan", "routed", "p\u00f6\u00f6l"]), ADDRESSES)
# One step: set some allocations (new objects), remove some names, flip drained, change extra.
STEP = st.tuples(st.lists(ALLOCATION, max_size=4), st.lists(NAMES, max_size=3), st.booleans(),
                 st.dictionaries(st.sampled_from(["cluster", "x"]), st.integers(-3, 3), max_size=2))


@settings(max_examples=150, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=12))
def test_incremental_encoding_equals_encode_state_after_every_step(steps: list) -> None:
    encoder = StateEncoder()
    encoder.chunk = 2  # tiny chunks: inserts split them, removals empty them
    allocations: dict[str, Allocation] = {}
    for sets, removes, drained, extra in steps:
        allocations = dict(allocations)  # a new table each pass, unchanged entries the same objects
        for name, pool, addresses in sets:
            allocations[name] = Allocation(name, pool, addresses)
        for name in removes:
            allocations.pop(name, None)
        state = PersistedState(allocations=allocations, drained=drained, extra=extra)
        data = encoder.encode(state)
        assert data == encode_state(state)
        assert decode_state(data) == state


def test_an_equal_but_new_allocation_object_is_encoded_again() -> None:
    encoder = StateEncoder()
    first = {"s/a": Allocation("s/a", "lan", (A("10.77.0.1"),))}
    encoder.encode(PersistedState(allocations=first))
    moved = {"s/a": Allocation("s/a", "lan", (A("10.77.0.9"),))}
    assert b"10.77.0.9" in encoder.encode(PersistedState(allocations=moved))
    assert encoder.encode(PersistedState()) == encode_state(PersistedState())


def test_bad_extra_is_refused_like_encode_state() -> None:
    with pytest.raises(StateError):
        StateEncoder().encode(PersistedState(extra={"x": float("nan")}))


def test_store_writes_what_encode_state_would(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    allocations = {f"s/{i}": Allocation(f"s/{i}", "lan", (A(f"10.77.0.{i + 1}"),)) for i in range(5)}
    for drop in range(5):
        allocations = {k: v for k, v in allocations.items() if k != f"s/{drop}"}
        state = PersistedState(allocations=allocations)
        store.save(state)
        assert store.path.read_bytes() == encode_state(state)
        assert StateStore(tmp_path).load() == state


@settings(max_examples=30, deadline=None)
@given(st.integers(65, 200), st.lists(st.integers(0, 199), max_size=80), st.integers(0, 199))
def test_many_changes_at_once_take_the_bulk_path_and_still_match(n: int, removed: list[int], added: int) -> None:
    encoder = StateEncoder()
    encoder.chunk = 16
    allocations = {f"s/{i:03}": Allocation(f"s/{i:03}", "lan", (A(f"10.77.{i // 250}.{i % 250 + 1}"),))
                   for i in range(n)}
    assert encoder.encode(PersistedState(allocations=allocations)) == encode_state(PersistedState(allocations=allocations))
    allocations = {k: v for k, v in allocations.items() if int(k[2:]) not in removed}
    allocations[f"s/x{added}"] = Allocation(f"s/x{added}", "lan", (A("10.88.0.1"),))
    state = PersistedState(allocations=allocations)
    assert encoder.encode(state) == encode_state(state)
