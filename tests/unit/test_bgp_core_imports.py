"""The BGP speaker core never sees configuration (issue 8; gobgp keeps its packet
library free of config the same way): codec, attributes, attribute_decoding, packing, errors,
settings, events, fsm and rib import only each other, the standard library,
lbd.backoff and the plain runtime types of lbd.model. A configured peer becomes
a SessionSettings in one adapter, lbd.bgp.announcer.session_settings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lbd.bgp

BGP_DIR = Path(lbd.bgp.__file__).parent
CORE = ("codec", "attributes", "attribute_decoding", "packing", "errors", "settings", "events", "fsm", "rib")
ALLOWED_LBD = {f"lbd.bgp.{name}" for name in CORE} | {"lbd.backoff", "lbd.model"}


def lbd_imports(source: str, filename: str = "<source>") -> list[tuple[str, tuple[str, ...]]]:
    """Every ``lbd`` module the source imports, with the names taken from it
    (``from lbd.bgp import codec`` counts as importing ``lbd.bgp.codec``)."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names if alias.name.split(".")[0] == "lbd"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lbd":
            names = tuple(alias.name for alias in node.names)
            if node.module in ("lbd", "lbd.bgp"):
                found += [(f"{node.module}.{name}", ()) for name in names]
            else:
                found.append((node.module, names))
    return found


def refusals(source: str, filename: str = "<source>") -> list[str]:
    """Why each of the source's lbd imports is not allowed in the core (empty: clean)."""
    out = []
    for module, names in lbd_imports(source, filename):
        if module.startswith("lbd.config"):
            out.append(f"{filename} imports {module}")
        elif module not in ALLOWED_LBD:
            out.append(f"{filename} imports {module}: outside the speaker core")
        elif module == "lbd.model":
            # lbd.model still holds the config sections too: only runtime values may come from it.
            config_types = [n for n in names if n.endswith("Config") or n == "*"]
            if config_types:
                out.append(f"{filename} imports configuration types {config_types} from lbd.model")
    return out


@pytest.mark.parametrize("name", CORE)
def test_core_module_imports_no_configuration(name: str) -> None:
    path = BGP_DIR / f"{name}.py"
    assert refusals(path.read_text(), path.name) == []


@pytest.mark.parametrize(
    "source",
    [
        "from lbd.model import BgpPeerConfig\n",
        "from lbd.model import *\n",
        "import lbd.config\n",
        "from lbd import config\n",
        "from lbd.config.bgp import parse_peer\n",
        "def f():\n    from lbd.bgp.announcer import session_settings\n",
        "from lbd.bgp import speaker\n",
    ],
)
def test_the_walk_refuses_each_import_form(source: str) -> None:
    """The check is not vacuous: nested and aliased forms are seen too."""
    assert refusals(source) != []


def test_the_walk_allows_the_core_and_runtime_types() -> None:
    assert refusals("from lbd.bgp import codec\nfrom lbd.model import IPNetwork\nimport lbd.backoff\n") == []


# Outside the core, only the announcer adapts the configuration (the standalone
# runner and the kernel route exporter, which read it too, live in lbd/testing/
# and lbd/kernel/).
CONFIG_READERS = {"announcer.py"}


def config_imports(source: str, filename: str) -> list[str]:
    found = []
    for module, names in lbd_imports(source, filename):
        if module.startswith("lbd.config"):
            found.append(module)
        elif module == "lbd.model":
            found += [n for n in names if n.endswith("Config") or n == "*"]
    return found


def test_only_the_announcer_reads_configuration_in_lbd_bgp() -> None:
    readers = {p.name for p in BGP_DIR.glob("*.py") if config_imports(p.read_text(), p.name)}
    assert readers <= CONFIG_READERS, f"configuration read outside the adapter: {sorted(readers - CONFIG_READERS)}"
