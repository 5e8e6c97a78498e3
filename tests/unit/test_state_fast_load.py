"""Issue 9: loading persisted state takes the C address parser for the text lbd writes; the
accepted addresses and the errors must stay exactly those of ``ipaddress.ip_address``."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbd.state import StateError, decode_state


def doc(*addresses: object) -> bytes:
    return json.dumps({"version": 1, "allocations": {"static/a": {"pool": "p", "addresses": list(addresses)}}}).encode()


def reference(text: str) -> object:
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def loaded(text: str) -> object:
    try:
        return decode_state(doc(text)).allocations["static/a"].addresses[0]
    except StateError as exc:
        assert "allocations['static/a'].addresses[0]" in str(exc)
        return None


@pytest.mark.parametrize("text", [
    "10.88.0.1", "0.0.0.0", "255.255.255.255", "010.1.1.1", "1.2.3", "1.2.3.4.5", "1.2.3.256", " 1.2.3.4",
    "1.2.3.4 ", "1.2.3.4\x00", "fd77::1", "FD77::1", "::ffff:1.2.3.4", "::", "fd77::1%eth0", "fd77:::1",
    "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9", "", "١.٢.٣.٤", "fd77::1.2.3.4.5",
])
def test_the_same_addresses_as_ipaddress(text: str) -> None:
    assert loaded(text) == reference(text)
    if reference(text) is not None:
        assert type(loaded(text)) is type(reference(text))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789abcdefABCDEF.:% x\x00", max_size=45),
                 st.ip_addresses().map(str), st.ip_addresses().map(lambda a: a.exploded)))
def test_the_same_addresses_as_ipaddress_fuzzed(text: str) -> None:
    assert loaded(text) == reference(text)


def test_errors_name_the_entry() -> None:
    with pytest.raises(StateError, match=r"allocations\['static/a'\].addresses\[1\]: 'nope'"):
        decode_state(doc("10.88.0.1", "nope"))
    with pytest.raises(StateError, match="duplicate address"):
        decode_state(doc("10.88.0.1", "10.88.0.1"))
    with pytest.raises(StateError, match="not an object with pool and addresses"):
        decode_state(json.dumps({"version": 1, "allocations": {"x": {"pool": "p", "addresses": ["10.88.0.1"],
                                                                     "extra": 1}}}).encode())
