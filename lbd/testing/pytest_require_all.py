"""pytest plugin: under ``LBD_REQUIRE_ALL=1`` every skip is a failure.

``make test`` (what CI runs) sets ``LBD_REQUIRE_ALL=1``: there, a test that
skips because it is not root, iproute2 or a peer daemon is missing, or an
optional package is not installed (``pytest.importorskip``) means the run did
not test what it claims, so it must not pass quietly. Without the variable (a
developer's quick run) skips stay skips.

- A test that skips (in its body, a fixture or a ``skipif`` mark) is reported
  as failed, with the skip's reason.
- A module skipped at collection (``pytest.importorskip`` or
  ``pytest.skip(allow_module_level=True)`` at module level) is listed in the
  summary and makes the run's exit status "tests failed"; the other modules
  still run.
- ``xfail`` is not a skip and is left alone.

Loaded by ``tests/conftest.py``; a run of its own: ``pytest -p lbd.testing.pytest_require_all``.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import pytest

ENV = "LBD_REQUIRE_ALL"
_collection_skips: list[tuple[str, str]] = []


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def _reason(longrepr: Any) -> str:
    # A skip's longrepr is (file, line, "Skipped: reason").
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return f"{longrepr[2]} ({longrepr[0]}:{longrepr[1]})"
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if enabled() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"{ENV}=1: a skip is a failure here: {_reason(report.longrepr)}"


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if enabled() and report.skipped:
        _collection_skips.append((report.nodeid, _reason(report.longrepr)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _collection_skips:
        terminalreporter.section(f"{ENV}=1: modules skipped at collection (each is a failure)", red=True)
        for nodeid, reason in _collection_skips:
            terminalreporter.line(f"FAILED (skipped) {nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _collection_skips and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
