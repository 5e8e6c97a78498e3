"""Live mode: MetalLB's resources read from the cluster, merged into the file's document (pure).

The kubernetes source with ``metallb_resources = true`` lists and watches MetalLB's
configuration resources and hands them to the daemon, which turns them into an lbd
document with the importer (``convert``, the same one ``lbd import metallb`` uses) and
merges it into the file's document here. The merged document is then validated by
``lbd.config`` exactly as a file is (``lbd.liveconfig``).

The merge rule: every section is the file's entries, then the cluster's (per source, in
the order the source listed them). A name that both the file and the cluster define in
one section is an error naming both origins: the cluster never overrides the file,
nor the file the cluster. ``[communities]`` are merged by alias the same way (the same
value in both is not a clash). ``[[namespace]]`` tables stay the file's own.

Errors are attributed to resources so that an invalid change shows up as an Event on
the resource at fault: the resources whose entries an error names (``pool "b"``), or,
when no error names one, every resource that changed since the last applied set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from lbd.metallb.convert import convert
from lbd.metallb.model import SECTION_ORDER, Resource

# The sections a cluster contributes to ([[namespace]] comes from the file or the API's Namespaces).
MERGED_SECTIONS = tuple(s for s in SECTION_ORDER if s != "namespace")


@dataclass(frozen=True)
class ResourceRef:
    """One Kubernetes object, as an Event's ``involvedObject`` names it."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str = ""
    resource_version: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


def ref_of(obj: Mapping[str, Any]) -> ResourceRef:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    return ResourceRef(api_version=str(obj.get("apiVersion", "")), kind=str(obj.get("kind", "")),
                       namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
                       uid=str(meta.get("uid", "")), resource_version=str(meta.get("resourceVersion", "")))


@dataclass(frozen=True)
class ClusterDocument:
    """What one source's MetalLB resources contribute to the configuration."""

    source: str
    document: Mapping[str, Any] = field(default_factory=dict)  # lbd sections, as tomllib would read them
    origins: Mapping[tuple[str, str], ResourceRef] = field(default_factory=dict)  # (section, name) -> resource
    warnings: tuple[str, ...] = ()  # fields with no lbd equivalent (as `lbd import metallb` warns)
    warnings_by: Mapping[ResourceRef, tuple[str, ...]] = field(default_factory=dict)  # the same, per resource
    resources: tuple[ResourceRef, ...] = ()  # every resource read, converted or not
    objects: tuple[Mapping[str, Any], ...] = ()  # the resources as read (what a restart starts from)
    namespace: str = "metallb-system"


def cluster_document(source: str, objects: Sequence[Mapping[str, Any]], namespace: str) -> ClusterDocument:
    """MetalLB resources listed from the cluster -> their lbd document, with each entry's resource."""
    label = f"the cluster (source {source})"
    conversion = convert([Resource(o, label) for o in objects], namespace=namespace)
    origins: dict[tuple[str, str], ResourceRef] = {}
    for e in conversion.entries:
        if e.resource is not None and isinstance(e.table.get("name"), str):
            origins[(e.section, e.table["name"])] = ref_of(e.resource.obj)
    for alias, r in conversion.community_origins.items():
        origins[("communities", alias)] = ref_of(r.obj)
    document = conversion.document()
    document.pop("namespace", None)
    # Each warning starts with the origin of its resource ("<kind> (<apiVersion>) <ns>/<name> in ..."):
    # said once more as an Event on that resource.
    by: dict[ResourceRef, list[str]] = {}
    for r in (Resource(o, label) for o in objects if isinstance(o, Mapping)):
        prefix = r.origin() + ": "
        for warning in conversion.warnings:
            if warning.startswith(prefix):
                by.setdefault(ref_of(r.obj), []).append(warning[len(prefix):])
    return ClusterDocument(source=source, document=document, origins=origins,
                           warnings=tuple(conversion.warnings),
                           warnings_by={ref: tuple(w) for ref, w in by.items()},
                           resources=tuple(ref_of(o) for o in objects if isinstance(o, Mapping)),
                           objects=tuple(objects), namespace=namespace)


def merge(file_doc: Mapping[str, Any], clusters: Sequence[ClusterDocument], file_label: str
          ) -> tuple[dict[str, Any], list[str]]:
    """(the merged document, clash errors). A clashing cluster entry is left out of the
    document (the error reports it), so the other checks still run on the rest."""
    merged: dict[str, Any] = dict(file_doc)
    errors: list[str] = []
    owner: dict[tuple[str, Any], str] = {}  # (section, name) -> who defines it
    for section in MERGED_SECTIONS:
        for t in merged.get(section, []) if isinstance(merged.get(section), list) else []:
            if isinstance(t, Mapping):
                owner[(section, t.get("name"))] = file_label
    for cluster in clusters:
        for section in MERGED_SECTIONS:
            theirs = cluster.document.get(section) or []
            ours = merged.get(section, [])
            if not theirs or not isinstance(ours, list):
                continue  # a section the file gets wrong: config_from_document reports it
            out = list(ours)
            for table in theirs:
                name = table.get("name")
                ref = cluster.origins.get((section, str(name)))
                here = f"{ref or 'the cluster'} (source {cluster.source})"
                if (section, name) in owner:
                    errors.append(f'{file_label}: {section} "{name}": defined in {owner[(section, name)]} and by '
                                  f"{here}: rename one of them")
                    continue
                owner[(section, name)] = here
                out.append(dict(table))
            merged[section] = out
        theirs_c = cluster.document.get("communities") or {}
        if theirs_c:
            ours_c = merged.get("communities", {})
            if not isinstance(ours_c, Mapping):
                continue
            combined = dict(ours_c)
            for alias, value in theirs_c.items():
                if alias in combined and combined[alias] != value:
                    ref = cluster.origins.get(("communities", alias))
                    errors.append(f'{file_label}: communities: "{alias}" is {combined[alias]!r} in {file_label} and '
                                  f"{value!r} in {ref or 'the cluster'} (source {cluster.source}): rename one of them")
                    continue
                combined[alias] = value
            merged["communities"] = combined
    return merged, errors


def _named(error: str, cluster: ClusterDocument) -> list[ResourceRef]:
    """The cluster resources whose entries ``error`` names, in the order it names them."""
    found: dict[ResourceRef, int] = {}
    for (section, name), ref in cluster.origins.items():
        needle = f'"{name}"' if section == "communities" else f'{section} "{name}"'
        at = error.find(needle) if section != "communities" or "communit" in error else -1
        if at >= 0:
            found[ref] = min(at, found.get(ref, at))
    return sorted(found, key=found.__getitem__)


def annotate(errors: Sequence[str], clusters: Sequence[ClusterDocument]) -> list[str]:
    """Each error with the cluster resources it names, so that a message about
    ``pool "b"`` says it is an IPAddressPool in the cluster, not in the file."""
    out = []
    for error in errors:
        refs = [r for c in clusters for r in _named(error, c)]
        if refs and "from the cluster" not in error and " by " + str(refs[0]) not in error:
            error = f"{error} [from the cluster: {', '.join(str(r) for r in refs)}]"
        out.append(error)
    return out


def changed_resources(before: Sequence[ClusterDocument], after: Sequence[ClusterDocument]) -> list[ResourceRef]:
    """The resources added or modified (new resourceVersion) between two sets."""
    old = {r.identity: r.resource_version for c in before for r in c.resources}
    return [r for c in after for r in c.resources if old.get(r.identity) != r.resource_version]


def attribute(errors: Sequence[str], clusters: Sequence[ClusterDocument], changed: Sequence[ResourceRef]
              ) -> dict[ResourceRef, list[str]]:
    """Which resources an invalid configuration is posted on, with the errors for each.

    An error naming cluster entries goes to their resources; among several, to those
    that changed (an overlap names the pool already in place too) when any did. An
    error naming none (a file entry, a cross-check) goes to every changed resource.
    """
    changed_ids = {r.identity for r in changed}
    out: dict[ResourceRef, list[str]] = {}
    unnamed: list[str] = []
    for error in errors:
        named = [r for c in clusters for r in _named(error, c)]
        if not named:
            unnamed.append(error)
            continue
        fresh = [r for r in named if r.identity in changed_ids]
        for ref in fresh or named:
            out.setdefault(ref, []).append(error)
    if unnamed:
        for ref in changed:
            out.setdefault(ref, []).extend(unnamed)
    return out
