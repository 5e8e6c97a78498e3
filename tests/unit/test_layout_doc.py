"""docs/DEVELOPING.md's layout tables are true: every module under lbd/ has its row, and no more.

A table that lists modules drifts the day someone adds one. So this walks lbd/ and fails on
a module without a row (printing the row to add, under which heading), on a row naming a
module that does not exist, on a row listed twice or under another package's heading, and
on the two "must never" claims a machine can check: "import lbd.X" (any import of lbd.X or
below, lazy and TYPE_CHECKING ones included) and "read a clock".
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import lbd
from tests.unit.test_layering import _imported_modules, _module_name

LBD = Path(lbd.__file__).resolve().parent
REPO = LBD.parent
DOC = REPO / "docs" / "DEVELOPING.md"
SECTION = "## Layout and who owns what"

ROW = re.compile(r"^\|\s*`(?P<module>lbd/[^`]+)`\s*\|(?P<concern>[^|]*)\|(?P<never>[^|]*)\|\s*$")
HEADING = re.compile(r"^###\s+`(?P<package>lbd/[^`]*)`")
IMPORT_CLAIM = re.compile(r"\bimport (lbd(?:\.\w+)*)\b")
# Calls that read a clock: time.time(), time.monotonic(), loop.time(), datetime.now() ...
CLOCK_CALLS = frozenset({"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns",
                         "now", "utcnow", "today"})


@dataclass(frozen=True)
class Row:
    module: str  # "lbd/bgp/fsm.py"
    package: str | None  # the heading it is under: "lbd/bgp/"
    concern: str
    never: str
    line: int


def layout_rows(text: str) -> list[Row]:
    lines = text.splitlines()
    start = lines.index(SECTION)
    rows: list[Row] = []
    package = None
    for number, line in enumerate(lines[start + 1:], start + 2):
        if line.startswith("## "):
            break
        if heading := HEADING.match(line):
            package = heading["package"]
        elif row := ROW.match(line):
            rows.append(Row(row["module"], package, row["concern"].strip(), row["never"].strip(), number))
    return rows


def package_of(module: str) -> str:
    return module.rpartition("/")[0] + "/"


def modules_on_disk() -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in LBD.rglob("*.py") if "__pycache__" not in p.parts)


def row_to_add(module: str, headings: set[str], docstring: str | None = None) -> str:
    """The message for a module without a row: where it goes, and the row (its concern taken
    from the docstring's first line when there is one; what it must never do is for a human)."""
    package = package_of(module)
    where = (f"under the heading ### `{package}`" if package in headings
             else f"in a new table headed ### `{package}` (a new package)")
    # The docstring's first sentence, unwrapped, in Markdown's backticks.
    paragraph = " ".join((docstring or "").strip().split("\n\n")[0].split())
    concern = paragraph.split(". ")[0].rstrip(".").replace("``", "`").replace("|", "/")
    return (f"{module}: add this row to docs/DEVELOPING.md {where}:\n"
            f"    | `{module}` | {concern or '<its one concern>'} | <must never> |")


def docstring_of(module: str) -> str | None:
    try:
        return ast.get_docstring(ast.parse((REPO / module).read_text(encoding="utf-8")))
    except SyntaxError:
        return None


def reads_a_clock(source: str) -> list[int]:
    tree = ast.parse(source)
    from_time = {alias.asname or alias.name for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module in ("time", "datetime")
                 for alias in node.names if alias.name in CLOCK_CALLS}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or node.args:
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr in CLOCK_CALLS:
            lines.append(node.lineno)
        elif isinstance(node.func, ast.Name) and node.func.id in from_time:
            lines.append(node.lineno)
    return lines


def broken_claims(row: Row) -> list[str]:
    path = REPO / row.module
    source = path.read_text(encoding="utf-8")
    problems = []
    imported = _imported_modules(source, _module_name(path), path.name == "__init__.py")
    for claimed in IMPORT_CLAIM.findall(row.never):
        # One report per import statement: "from lbd.config import X" also yields lbd.config.X.
        offending = {line: name for line, name in sorted(imported, key=lambda item: -len(item[1]))
                     if name == claimed or name.startswith(claimed + ".")}
        problems.extend(f"{row.module}:{line} imports {name}, but its row says it must never import {claimed}"
                        for line, name in sorted(offending.items()))
    if "read a clock" in row.never:
        problems.extend(f"{row.module}:{line} reads a clock, but its row says it must never"
                        for line in sorted(set(reads_a_clock(source))))
    return problems


def test_every_module_has_one_row_under_its_package() -> None:
    rows = layout_rows(DOC.read_text(encoding="utf-8"))
    assert len(rows) > 50, f"found only {len(rows)} rows in {DOC}'s {SECTION!r}"
    on_disk = modules_on_disk()
    listed = [row.module for row in rows]
    headings = {row.package for row in rows if row.package}
    problems = [row_to_add(module, headings, docstring_of(module)) for module in on_disk if module not in listed]
    problems += [f"docs/DEVELOPING.md:{row.line}: `{row.module}` does not exist: remove its row (or fix the path)"
                 for row in rows if row.module not in on_disk]
    problems += [f"docs/DEVELOPING.md:{row.line}: `{row.module}` is listed twice: keep one row"
                 for i, row in enumerate(rows) if row.module in listed[:i]]
    problems += [f"docs/DEVELOPING.md:{row.line}: `{row.module}` is under ### `{row.package}`: "
                 f"move its row under ### `{package_of(row.module)}`"
                 for row in rows if row.package != package_of(row.module)]
    problems += [f"docs/DEVELOPING.md:{row.line}: `{row.module}`: fill in both columns"
                 for row in rows if not row.concern or not row.never or "<" in row.concern + row.never]
    assert not problems, "the layout tables in docs/DEVELOPING.md are not true:\n" + "\n".join(problems)


def test_what_the_rows_say_a_module_never_imports_or_reads_holds() -> None:
    rows = [row for row in layout_rows(DOC.read_text(encoding="utf-8")) if (REPO / row.module).exists()]
    assert sum(bool(IMPORT_CLAIM.search(row.never)) for row in rows) > 20  # the claims are being read
    problems = [problem for row in rows for problem in broken_claims(row)]
    assert not problems, "docs/DEVELOPING.md's 'must never' column is not true:\n" + "\n".join(problems)


def test_a_new_module_is_reported_with_the_row_to_add() -> None:
    doc = "\n".join([
        SECTION, "", "### `lbd/bgp/`: x", "", "| module | its one concern | must never |", "|---|---|---|",
        "| `lbd/bgp/fsm.py` | the FSM | read a clock |", "", "## Rules",
    ])
    rows = layout_rows(doc)
    assert [(r.module, r.package, r.never) for r in rows] == [("lbd/bgp/fsm.py", "lbd/bgp/", "read a clock")]
    headings = {"lbd/bgp/"}
    assert row_to_add("lbd/bgp/incremental.py", headings) == (
        "lbd/bgp/incremental.py: add this row to docs/DEVELOPING.md under the heading ### `lbd/bgp/`:\n"
        "    | `lbd/bgp/incremental.py` | <its one concern> | <must never> |")
    assert "a new package" in row_to_add("lbd/facts/__init__.py", headings)
    assert row_to_add("lbd/bgp/incremental.py", headings, "Incremental ``RIB``\nupdates. Fast.\n\nMore.").endswith(
        "| `lbd/bgp/incremental.py` | Incremental `RIB` updates | <must never> |")


def test_the_clock_check_sees_each_spelling() -> None:
    source = ("import time\nfrom time import monotonic as mono\nimport datetime\n"
              "a = time.monotonic()\nb = mono()\nc = loop.time()\nd = datetime.datetime.now()\n"
              "e = time.sleep(1)\nf = datetime.time(1, 2)\n")
    assert reads_a_clock(source) == [4, 5, 6, 7]
