"""Two test files with one basename break collection of the whole suite.

The test directories are not packages, so pytest imports each test file by its
basename ("rootdir" import mode): a second ``test_x.py`` in another directory is
an "import file mismatch" error that stops every test from running (it happened
once: tests/unit and tests/lab both had test_cluster_facts.py).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_every_test_file_has_its_own_basename() -> None:
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        by_name[path.name].append(str(path.relative_to(TESTS)))
    clashes = {name: sorted(paths) for name, paths in by_name.items() if len(paths) > 1}
    assert not clashes, f"rename one of each (e.g. a _lab suffix for the lab's): {clashes}"
