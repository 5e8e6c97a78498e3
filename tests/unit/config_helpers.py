"""Helpers shared by the config tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbd.config import ConfigError, parse_config
from lbd.config.schema import Config

FILE = Path("/etc/lbd.toml")

# A small valid skeleton the tests add to.
BASE = """
[node]
name = "n1"

[[pool]]
name = "lan"
addresses = ["192.168.1.48/28", "fd77::100-fd77::1ff"]
"""


def ok(text: str, base: str = BASE, **kwargs) -> Config:
    return parse_config(base + text, FILE, **kwargs)


def errors(text: str, base: str = BASE, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(base + text, FILE, **kwargs)
    assert info.value.errors, "a ConfigError must carry at least one message"
    for message in info.value.errors:
        assert message.startswith(f"{FILE}: "), message
    return info.value.errors


def only_error(text: str, base: str = BASE, **kwargs) -> str:
    found = errors(text, base, **kwargs)
    assert len(found) == 1, found
    return found[0]


def has_error(found: list[str], expected: str) -> None:
    """``expected`` is the message without the file prefix, exactly."""
    assert f"{FILE}: {expected}" in found, "\n".join(found)
