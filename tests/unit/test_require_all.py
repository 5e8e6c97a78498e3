"""Under LBD_REQUIRE_ALL=1 every skip is a failure (lbd/testing/pytest_require_all.py), run on a tiny suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = {
    "test_mixed.py": """
import pytest

def test_passes():
    pass

def test_skips_in_body():
    pytest.skip("needs root")

@pytest.fixture
def lab():
    pytest.skip("lab tests need root (network namespaces)")

def test_skips_in_fixture(lab):
    pass

@pytest.mark.skipif(True, reason="no IPv6 loopback")
def test_skipif_mark():
    pass

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False
""",
    "test_importorskip.py": """
import pytest
pytest.importorskip("lbd_no_such_module_for_this_test")

def test_never_runs():
    pass
""",
}


def run_suite(tmp_path: Path, require_all: str | None) -> subprocess.CompletedProcess[str]:
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "LBD_REQUIRE_ALL"}
    if require_all is not None:
        env["LBD_REQUIRE_ALL"] = require_all
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "lbd.testing.pytest_require_all",
         "-q", "-rA", "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def test_without_the_variable_skips_stay_skips(tmp_path: Path) -> None:
    out = run_suite(tmp_path, None)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 4 skipped, 1 xfailed" in out.stdout


@pytest.mark.parametrize("value", ["0", ""])
def test_zero_or_empty_is_off(tmp_path: Path, value: str) -> None:
    assert run_suite(tmp_path, value).returncode == 0


def test_every_skip_fails_the_run_under_require_all(tmp_path: Path) -> None:
    out = run_suite(tmp_path, "1")
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "1 passed" in text and "1 xfailed" in text
    # The three test-level skips are failures (a fixture's skip is an error at setup), each with its reason.
    for reason in ("needs root", "lab tests need root (network namespaces)", "no IPv6 loopback"):
        assert f"LBD_REQUIRE_ALL=1: a skip is a failure here: Skipped: {reason}" in text or \
            f"LBD_REQUIRE_ALL=1: a skip is a failure here: {reason}" in text, reason
    # Only the module skipped at collection is still counted as skipped (it has no test to fail).
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 2 errors" in text
    # The module skipped at collection is listed and fails the run.
    assert "FAILED (skipped) test_importorskip.py" in text
    assert "lbd_no_such_module_for_this_test" in text


def test_only_a_collection_skip_still_fails(tmp_path: Path) -> None:
    for name, text in SUITE.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "test_mixed.py").write_text("def test_passes():\n    pass\n")
    out = run_suite(tmp_path, "1")
    assert out.returncode == 1, out.stdout
    assert "1 passed" in out.stdout and "FAILED (skipped) test_importorskip.py" in out.stdout
