"""Shared fixtures: the network-namespace lab for lab and interop tests."""

from __future__ import annotations

import os
import shutil
from typing import Iterator

import pytest

from lbd.testing.netlab import Lab, require_binary  # noqa: F401 - re-exported for old imports

# Under LBD_REQUIRE_ALL=1 (make test, CI) every skip is a failure: see lbd/testing/pytest_require_all.py.
from lbd.testing.pytest_require_all import (  # noqa: F401 - hooks, found by pytest in this module's namespace
    pytest_collectreport,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)


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


# Shared test helpers live in lbd.testing.netlab (require_binary, wait_for, Lab, LbdNode): a module,
# not this conftest, so that test files import them by a name that cannot collide.
