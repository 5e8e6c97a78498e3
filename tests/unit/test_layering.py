"""No production module imports the test lab (lbd.testing).

lbd/testing/ is left out of the wheel (pyproject.toml), so a production module
importing it would fail on an installed node, and only there. This walks every
module under lbd/ except lbd/testing/ with ast and fails on any import of
lbd.testing: plain, from-imports, relative ones, and those under
``if TYPE_CHECKING:`` alike (a rule with exceptions is one nobody can check).
"""

from __future__ import annotations

import ast
from pathlib import Path

import lbd

PACKAGE_ROOT = Path(lbd.__file__).resolve().parent
TESTING = "lbd.testing"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # "from lbd import testing" names the package in the alias, not the module.
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
    return found


def _imports_testing(name: str) -> bool:
    return name == TESTING or name.startswith(TESTING + ".")


def _production_modules() -> list[Path]:
    testing_dir = PACKAGE_ROOT / "testing"
    return sorted(p for p in PACKAGE_ROOT.rglob("*.py") if testing_dir not in p.parents)


def test_no_production_module_imports_lbd_testing() -> None:
    modules = _production_modules()
    assert len(modules) > 50, f"walked only {len(modules)} modules under {PACKAGE_ROOT}"
    offenders = []
    for path in modules:
        module = _module_name(path)
        for line, name in _imported_modules(path.read_text(), module, path.name == "__init__.py"):
            if _imports_testing(name):
                offenders.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{line} imports {name}")
    assert not offenders, "production modules import the test lab:\n" + "\n".join(offenders)


def test_the_check_sees_every_form_of_import() -> None:
    """The walker is only worth something if it catches each spelling."""
    sources = {
        "import lbd.testing.netlab": ("lbd.daemon", False),
        "from lbd.testing.netlab import Lab": ("lbd.daemon", False),
        "from lbd import testing": ("lbd.daemon", False),
        "from ..testing import netlab": ("lbd.l2.announcer", False),
        "from .. import testing": ("lbd.l2.announcer", False),
        "from . import testing": ("lbd", True),  # in lbd/__init__.py
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lbd.testing.netlab import Host": ("lbd.l2.x", False),
    }
    for source, (module, is_package) in sources.items():
        names = [name for _, name in _imported_modules(source, module, is_package)]
        assert any(_imports_testing(n) for n in names), (source, names)
    clean = "from lbd.kernel.netlink import Netlink\nfrom . import arp\nimport lbd.testingx"
    names = [name for _, name in _imported_modules(clean, "lbd.l2.announcer", False)]
    assert not any(_imports_testing(n) for n in names), names
