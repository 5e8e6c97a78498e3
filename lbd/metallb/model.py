"""The types of a MetalLB import: the input ``Resource``, the output ``Entry`` tables and the
``Conversion`` gathering them with warnings and notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

DEFAULT_NAMESPACE = "metallb-system"
GROUP = "metallb.io"
STATUS_KINDS = ("ServiceL2Status", "ServiceBGPStatus", "ConfigurationState")
SECTION_ORDER = ("pool", "namespace", "l2_advertisement", "bfd_profile", "bgp_peer", "bgp_advertisement")


class MetalLBImportError(ValueError):
    """The input cannot be read as YAML resources."""


@dataclass(frozen=True)
class Resource:
    """One object from the input, and where it came from (for comments)."""

    obj: Mapping[str, Any]
    source: str = "<input>"  # "file.yaml, document 3"

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", "")) if isinstance(self.obj, Mapping) else ""

    @property
    def api_version(self) -> str:
        return str(self.obj.get("apiVersion", "")) if isinstance(self.obj, Mapping) else ""

    @property
    def meta(self) -> Mapping[str, Any]:
        meta = self.obj.get("metadata") if isinstance(self.obj, Mapping) else None
        return meta if isinstance(meta, Mapping) else {}

    @property
    def name(self) -> str:
        return str(self.meta.get("name", ""))

    @property
    def namespace(self) -> str | None:
        ns = self.meta.get("namespace")
        return str(ns) if ns is not None else None

    @property
    def spec(self) -> Mapping[str, Any]:
        spec = self.obj.get("spec") if isinstance(self.obj, Mapping) else None
        return spec if isinstance(spec, Mapping) else {}

    def origin(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        version = f" ({self.api_version})" if self.api_version else ""
        return f"{self.kind or '<no kind>'}{version} {ns}{self.name or '<no name>'} in {self.source}"


@dataclass
class Entry:
    """One ``[[section]]`` table of the output, with its comments."""

    section: str
    table: dict[str, Any]
    comments: list[str] = field(default_factory=list)  # above the table: origin first
    key_comments: dict[str, list[str]] = field(default_factory=dict)
    resource: Resource | None = None  # the resource it came from (live mode names it in Events)


@dataclass
class Conversion:
    entries: list[Entry] = field(default_factory=list)
    communities: dict[str, str] = field(default_factory=dict)
    community_comments: list[str] = field(default_factory=list)
    community_origins: dict[str, Resource] = field(default_factory=dict)  # alias -> the Community defining it
    warnings: list[str] = field(default_factory=list)  # "<origin>: <what>"
    notes: list[str] = field(default_factory=list)  # header comments: skipped objects, hints
    converted: int = 0  # resources turned into lbd configuration
    skipped: int = 0  # objects that are not MetalLB configuration

    def document(self) -> dict[str, Any]:
        """The lbd configuration document (as ``tomllib`` would read the rendered text)."""
        doc: dict[str, Any] = {}
        if self.communities:
            doc["communities"] = dict(self.communities)
        for section in SECTION_ORDER:
            tables = [dict(e.table) for e in self.entries if e.section == section]
            if tables:
                doc[section] = tables
        return doc

    def warn(self, resource: Resource | None, what: str, entry: Entry | None = None) -> None:
        where = resource.origin() if resource is not None else "input"
        self.warnings.append(f"{where}: {what}")
        if entry is not None:
            entry.comments.append(f"WARNING: {what}")
        else:
            self.notes.append(f"WARNING: {where}: {what}")


def as_list(value: Any) -> list[Any]:
    """A YAML sequence, or [] for anything else (lbd check or a warning reports what matters)."""
    return value if isinstance(value, list) else []
