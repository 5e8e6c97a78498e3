"""Shared fixtures: the network-namespace lab for lab and interop tests."""

from __future__ import annotations

import os
import shutil
from typing import Iterator

import pytest

from lbd.netlab import Lab


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces)"
    if shutil.which("ip") is None:
        return "lab tests need iproute2"
    return None


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = _lab_unavailable()
    if reason:
        pytest.skip(reason)
    with Lab() as the_lab:
        yield the_lab


def require_binary(*names: str) -> None:
    """Skip unless every named program is installed (CI installs them all)."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        if os.environ.get("CI") or os.environ.get("LBD_REQUIRE_ALL"):
            pytest.fail(f"not installed (make test installs them): {', '.join(missing)}")
        pytest.skip(f"not installed: {', '.join(missing)}")
