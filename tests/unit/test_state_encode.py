"""Issue 9: the state file is written per allocation, byte for byte what
``json.dumps(doc, indent=1, sort_keys=True)`` writes (the format other versions read)."""

from __future__ import annotations

import ipaddress
import json

from hypothesis import given, settings, strategies as st

from lbd.model import Allocation
from lbd.state import FORMAT_VERSION, PersistedState, decode_state, encode_state


def reference(state: PersistedState) -> bytes:
    doc = {
        "version": FORMAT_VERSION,
        "drained": bool(state.drained),
        "allocations": {name: {"pool": a.pool, "addresses": [str(x) for x in a.addresses]}
                        for name, a in sorted(state.allocations.items())},
        "extra": state.extra,
    }
    return (json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
addresses = st.lists(st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                               st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)), max_size=3)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3), max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, st.tuples(names, addresses), max_size=6), st.booleans(),
       st.dictionaries(st.text(max_size=6), json_values, max_size=3))
def test_encode_state_writes_what_json_dumps_writes(allocs, drained, extra):
    state = PersistedState(allocations={n: Allocation(n, pool, tuple(a)) for n, (pool, a) in allocs.items()},
                           drained=drained, extra=extra)
    assert encode_state(state) == reference(state)


def test_an_empty_state_and_a_round_trip() -> None:
    empty = PersistedState(allocations={}, drained=False, extra={})
    assert encode_state(empty) == reference(empty)
    state = PersistedState(allocations={"static/web": Allocation("static/web", "lan", (
        ipaddress.ip_address("10.77.0.100"), ipaddress.ip_address("fd77::100")))}, drained=True, extra={"k": [1, {}]})
    assert encode_state(state) == reference(state)
    assert decode_state(encode_state(state)).allocations == state.allocations
