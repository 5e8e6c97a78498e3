"""Metrics are declared only in modules named ``metrics.py`` (docs/DEVELOPING.md, Rules).

A package's metrics live in its own ``metrics.py`` (``lbd/bgp/metrics.py`` ...), the metrics
of the modules directly under ``lbd/`` in ``lbd/metrics.py`` beside the registry. One place per
package means a reader finds every series a piece exports without grepping for constructors,
and an optional piece's metrics still appear only once the daemon imports that piece.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lbd

LBD = Path(lbd.__file__).parent
REPO = LBD.parent

# What declares a metric: prometheus_client's metric classes, a custom collector's metric
# families (``CounterMetricFamily`` ...), and registering anything on a registry.
METRIC_CLASSES = frozenset({"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"})


def _is_metric_class(name: str) -> bool:
    return name in METRIC_CLASSES or name.endswith("MetricFamily")


def declarations(source: str) -> list[tuple[int, str]]:
    """(line, what) for every metric declared in ``source``: a prometheus_client metric
    constructed, a call with a ``registry=`` argument, or ``<registry>.register(...)``.

    Names are resolved through the module's imports, so ``collections.Counter`` is not one.
    """
    tree = ast.parse(source)
    from_prometheus: dict[str, str] = {}  # local name -> prometheus_client class name
    prometheus_modules: set[str] = set()  # local names bound to prometheus_client (sub)modules
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prometheus_client":
            for alias in node.names:
                if _is_metric_class(alias.name):
                    from_prometheus[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "prometheus_client":
                    prometheus_modules.add(alias.asname or alias.name.split(".")[0])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in from_prometheus:
            found.append((node.lineno, f"{from_prometheus[func.id]}(...)"))
        elif isinstance(func, ast.Attribute) and _is_metric_class(func.attr) and _root_name(func) in prometheus_modules:
            found.append((node.lineno, f"{func.attr}(...)"))
        elif isinstance(func, ast.Attribute) and func.attr == "register" and _names_a_registry(func.value):
            found.append((node.lineno, f"{ast.unparse(func)}(...)"))
        elif any(k.arg == "registry" for k in node.keywords):
            found.append((node.lineno, f"{ast.unparse(func)}(..., registry=...)"))
    return sorted(found)


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _names_a_registry(node: ast.expr) -> bool:
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return "REGISTRY" in name.upper()


def where_to_declare(module: Path) -> str:
    package = module.parent
    return "lbd/metrics.py" if package == LBD else f"{package.relative_to(REPO)}/metrics.py"


def test_metrics_are_declared_only_in_metrics_modules() -> None:
    misplaced = []
    for module in sorted(LBD.rglob("*.py")):
        if module.name == "metrics.py":
            continue
        for line, what in declarations(module.read_text(encoding="utf-8")):
            misplaced.append(f"{module.relative_to(REPO)}:{line}: {what} -> declare it in "
                             f"{where_to_declare(module)} and import it from there")
    assert not misplaced, "metrics declared outside a metrics.py module:\n" + "\n".join(misplaced)


def test_the_metrics_modules_do_declare_metrics() -> None:
    """The walk above sees declarations at all: every metrics module has some."""
    for module in sorted(LBD.rglob("metrics.py")):
        assert declarations(module.read_text(encoding="utf-8")), module


def test_the_check_sees_each_form_and_not_collections_counter() -> None:
    source = (
        "import collections\n"
        "from collections import Counter as Tally\n"
        "import prometheus_client as prom\n"
        "from prometheus_client import Gauge as G\n"
        "from prometheus_client.core import GaugeMetricFamily\n"
        "from lbd.metrics import REGISTRY\n"
        "tally = collections.Counter('abc')\n"
        "more = Tally('abc')\n"
        "UP = G('x_up', 'help', registry=REGISTRY)\n"  # line 9
        "RUNS = prom.Counter('x_runs', 'help')\n"  # 10
        "family = GaugeMetricFamily('x', 'help')\n"  # 11
        "REGISTRY.register(object())\n"  # 12
        "OTHER = make('x', registry=REGISTRY)\n"  # 13
    )
    assert [line for line, _ in declarations(source)] == [9, 10, 11, 12, 13]
