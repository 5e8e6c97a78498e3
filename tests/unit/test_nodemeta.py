"""Node metadata: round trip, the 512-byte limit, hostile input."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from lbd.cluster.nodemeta import META_MAX, MetaError, NodeMeta, decode, encode


def test_round_trip():
    meta = NodeMeta(
        labels={"rack": "r1", "zone": "a"},
        interfaces={"eth0": (ipaddress.ip_interface("10.77.0.11/24"), ipaddress.ip_interface("fd77::11/64"))},
        drained=True,
        failing=frozenset({"static/web"}),
        holds=("10.77.0.100", "fd77::100"),
    )
    data, dropped = encode(meta)
    assert dropped == [] and len(data) <= META_MAX
    assert decode(data) == meta


def test_holds_give_way_when_too_big():
    meta = NodeMeta(labels={}, interfaces={"eth0": (ipaddress.ip_interface("10.77.0.11/24"),)},
                    holds=tuple(str(ipaddress.ip_address("10.77.1.0") + i) for i in range(200)))
    data, dropped = encode(meta)
    assert dropped == ["holds"] and len(data) <= META_MAX
    back = decode(data)
    assert back.holds == () and back.holds_known is False


def test_too_many_labels_is_an_error():
    with pytest.raises(ValueError, match="at most 512"):
        encode(NodeMeta(labels={f"label{i}": "x" * 20 for i in range(40)}, interfaces={}))


@given(st.binary(max_size=600))
def test_decode_garbage(data):
    try:
        decode(b"L\x01" + data)
    except MetaError:
        pass


def test_serf_tags_are_not_ours():
    with pytest.raises(MetaError, match="not lbd node metadata"):
        decode(b"\xff\x80")
