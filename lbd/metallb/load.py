"""Reading MetalLB resources from YAML text (multi-document, ``kind: List`` as ``kubectl get -o
yaml`` prints it, Helm output), as Kubernetes' go-yaml reads it."""

from __future__ import annotations

import re
from typing import Any, Mapping

from lbd.metallb.model import MetalLBImportError, Resource


def load_documents(text: str, source: str) -> list[Resource]:
    """Every object in YAML ``text`` (``---``-separated documents; ``kind: List``
    expanded; empty documents skipped). Raises MetalLBImportError on bad YAML."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        raise MetalLBImportError("PyYAML is not installed (pip install pyyaml)") from None
    try:
        docs = list(yaml.load_all(text, Loader=yaml_loader()))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MetalLBImportError(f"{source}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise MetalLBImportError(f"{source}: the YAML is nested too deeply") from None
    out: list[Resource] = []
    for i, doc in enumerate(docs, start=1):
        label = f"{source}, document {i}" if len(docs) > 1 else source
        _expand(doc, label, out)
    return out


def yaml_loader() -> Any:
    """PyYAML's safe loader without YAML 1.1's base-60 numbers.

    Kubernetes reads YAML with go-yaml, for which ``1234:1`` (a BGP community)
    is a string; PyYAML's YAML 1.1 resolver would make it the integer 74041.
    Integers and floats are re-registered without the sexagesimal forms.
    """
    import yaml

    global _LOADER
    if _LOADER is not None:
        return _LOADER

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers
                if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(
        r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"), list("-+0123456789"))
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))
    _LOADER = Loader
    return Loader


_LOADER: Any = None


def _expand(doc: Any, label: str, out: list[Resource]) -> None:
    if doc is None:
        return
    if isinstance(doc, Mapping) and str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
        for j, item in enumerate(doc["items"]):
            _expand(item, f"{label}, items[{j}]", out)
        return
    out.append(Resource(doc if isinstance(doc, Mapping) else {"<value>": doc}, label))
