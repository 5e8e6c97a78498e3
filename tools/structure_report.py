"""Print lbd's structure figures: modules over 400 lines, functions over 60
lines, and the installed wheel's size and file count.

Used for the before/after report of the structure refactor (issue 8):

    .venv/bin/python tools/structure_report.py            # modules and functions
    .venv/bin/python tools/structure_report.py --wheel    # also build the wheel

The `duplicates` pairs are counted separately with `duplicates --repo lbd`.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE_LIMIT = 400
FUNCTION_LIMIT = 60


def long_modules(package: Path) -> list[tuple[str, int]]:
    rows = []
    for path in sorted(package.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > MODULE_LIMIT:
            rows.append((str(path.relative_to(ROOT)), lines))
    return sorted(rows, key=lambda row: -row[1])


def long_functions(package: Path) -> list[tuple[str, int]]:
    rows = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        length = (child.end_lineno or child.lineno) - child.lineno + 1
                        if length > FUNCTION_LIMIT:
                            rows.append((f"{path.relative_to(ROOT)}:{name}", length))
                    stack.append((child, name + "."))
    return sorted(rows, key=lambda row: -row[1])


def wheel_figures() -> tuple[int, int, str]:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps",
             "-q", "-w", out, str(ROOT)],
            check=True,
        )
        wheel = next(Path(out).glob("lbd-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            infos = archive.infolist()
            installed = sum(info.file_size for info in infos)
        return len(infos), installed, wheel.name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", action="store_true", help="build the wheel and report it")
    args = parser.parse_args()
    package = ROOT / "lbd"
    modules = long_modules(package)
    print(f"modules over {MODULE_LIMIT} lines: {len(modules)}")
    for name, lines in modules:
        print(f"  {lines:5d}  {name}")
    functions = long_functions(package)
    print(f"functions over {FUNCTION_LIMIT} lines: {len(functions)}")
    for name, lines in functions:
        print(f"  {lines:5d}  {name}")
    if args.wheel:
        count, size, name = wheel_figures()
        print(f"wheel {name}: {count} files, {size:,} bytes installed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
