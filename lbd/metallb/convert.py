"""MetalLB configuration -> an lbd configuration document. Pure (``lbd import metallb``).

``convert(resources)`` takes MetalLB's resources as parsed YAML (dicts:
``IPAddressPool``, ``L2Advertisement``, ``BGPAdvertisement``, ``BGPPeer``
v1beta1/v1beta2, ``BFDProfile``, ``Community``, ``Namespace``, and the legacy
pre-0.13 ``ConfigMap`` with a ``config`` key) and returns a ``Conversion``:
the lbd document (``.document()``, what ``lbd.config.config_from_document``
validates), a comment per entry naming the resource it came from, and a
warning for everything that has no lbd equivalent. Nothing is dropped
silently. The Kubernetes source's live mode can feed it the resources it
lists from the cluster; ``render`` writes the commented ``lbd.toml``.

What carries over so that allocations come out the same: pool names, their
order (MetalLB tries pools without ``serviceAllocation`` in Go map order,
that is at random; lbd tries them in file order, so the import keeps the
input order), addresses, ``autoAssign``, ``avoidBuggyIPs`` and
``serviceAllocation``.

``lbd.metallb.load.load_documents`` turns YAML text (multi-document, ``kind:
List`` as ``kubectl get -o yaml`` prints it, Helm output) into resources.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Mapping, Sequence

from lbd.metallb.legacy import legacy_config, legacy_to_crs
from lbd.metallb.model import DEFAULT_NAMESPACE, GROUP, SECTION_ORDER, STATUS_KINDS, Conversion, Entry, Resource
from lbd.metallb.resources import CONVERTERS, labels_of
from lbd.tomlw import table_lines


def to_config_document(resources: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The pure interface: MetalLB resources -> (lbd document, warnings)."""
    conversion = convert([Resource(r, f"resource {i}") for i, r in enumerate(resources)])
    return conversion.document(), conversion.warnings


def convert(resources: Sequence[Resource], namespace: str | None = None) -> Conversion:
    """MetalLB resources -> lbd entries, warnings and notes.

    MetalLB reads only the namespace it runs in: ``namespace`` (default: the
    one most resources name, else metallb-system). Resources without a
    namespace (Helm templates, documentation snippets) count as in it.
    """
    conv = Conversion()
    resources = _with_legacy_expanded(conv, list(resources))
    if namespace is None:
        namespace = _metallb_namespace(resources)
    by_kind, secrets, namespaces = _select(conv, resources, namespace)
    _convert_kinds(conv, by_kind, secrets)
    _convert_namespaces(conv, namespaces)
    _local_pref_conflicts(conv)
    for e in conv.entries:
        e.table = _tomlable(e.table)
    conv.communities = _tomlable(conv.communities)
    if any("namespace_selectors" in e.table.get("service_allocation", {}) for e in conv.entries) \
            and not any(e.section == "namespace" for e in conv.entries):
        conv.notes.append("a pool selects namespaces by label: list each namespace's labels in [[namespace]] "
                          "tables (or import `kubectl get namespaces -o yaml` too)")
    return conv


def _with_legacy_expanded(conv: Conversion, resources: list[Resource]) -> list[Resource]:
    """The resources with each legacy ConfigMap replaced by its CRs, which come last."""
    legacy: list[Resource] = []
    for r in resources:
        if r.kind == "ConfigMap" and legacy_config(r) is not None:
            legacy.extend(legacy_to_crs(conv, r))
    return [r for r in resources if not (r.kind == "ConfigMap" and legacy_config(r) is not None)] + legacy


def _metallb_namespace(resources: Sequence[Resource]) -> str:
    """The namespace most MetalLB resources name, else metallb-system."""
    ours = [r for r in resources if r.api_version.split("/")[0] == GROUP and r.kind not in STATUS_KINDS]
    counts = Counter(r.namespace for r in ours if r.namespace)
    return counts.most_common(1)[0][0] if counts else DEFAULT_NAMESPACE


def _select(conv: Conversion, resources: Sequence[Resource], namespace: str
            ) -> tuple[dict[str, list[Resource]], dict[str, Resource], list[Resource]]:
    """(MetalLB resources by kind, Secrets by "namespace/name", Namespaces): the latest definition
    of each (kind, name) wins, as with kubectl apply; the rest is warned about or noted."""
    chosen: dict[tuple[str, str], Resource] = {}
    order: list[tuple[str, str]] = []
    secrets: dict[str, Resource] = {}
    namespaces: list[Resource] = []
    for r in resources:
        group = r.api_version.split("/")[0]
        if r.kind == "Secret":
            secrets[f"{r.namespace or namespace}/{r.name}"] = r
            continue
        if r.kind == "Namespace" and r.api_version in ("v1", ""):
            namespaces.append(r)
            continue
        if group != GROUP and group.endswith("." + GROUP):  # frrk8s.metallb.io: FRRConfiguration
            conv.warn(r, f"{r.kind} ({group}) has no lbd equivalent: not converted (lbd's own BGP speaker "
                         "does not receive routes; see [[route_export]] to work with a local FRR or BIRD)")
            continue
        if group != GROUP or r.kind in STATUS_KINDS:
            _foreign(conv, r)
            continue
        if r.namespace is not None and r.namespace != namespace:
            conv.warn(r, f"MetalLB reads only its own namespace ({namespace}): skipped")
            continue
        key = (r.kind, r.name)
        if key in chosen:
            conv.warn(r, f"replaces {chosen[key].origin()} (same kind and name)")
        else:
            order.append(key)
        chosen[key] = r
    by_kind: dict[str, list[Resource]] = {}
    for key in order:
        by_kind.setdefault(key[0], []).append(chosen[key])
    return by_kind, secrets, namespaces


def _convert_kinds(conv: Conversion, by_kind: dict[str, list[Resource]], secrets: Mapping[str, Resource]) -> None:
    """Each MetalLB resource through its kind's converter, in the order later kinds rely on
    (pools before the advertisements naming them); a kind without one is warned about."""
    for kind, handler in CONVERTERS.items():
        for r in by_kind.pop(kind, []):
            handler(conv, r, secrets)
            conv.converted += 1
    for kind, items in by_kind.items():
        for r in items:
            what = ("frr-k8s configuration" if kind == "FRRConfiguration" else
                    "the MetalLB operator's settings" if kind == "MetalLB" else f"a {kind}")
            conv.warn(r, f"{what} has no lbd equivalent: not converted")


def _convert_namespaces(conv: Conversion, namespaces: Sequence[Resource]) -> None:
    """Namespaces become ``[[namespace]]`` tables only when a pool selects namespaces by label."""
    wanted = any("namespace_selectors" in e.table.get("service_allocation", {}) for e in conv.entries)
    for r in namespaces:
        labels = labels_of(r.meta.get("labels"))
        if wanted and labels:
            conv.entries.append(Entry("namespace", {"name": r.name, "labels": labels}, [f"from {r.origin()}"],
                                      resource=r))
            conv.converted += 1
        else:
            conv.skipped += 1
            conv.notes.append(f"skipped {r.origin()}: no pool selects namespaces by label" if not labels or not wanted
                              else f"skipped {r.origin()}")


def _local_pref_conflicts(conv: Conversion) -> None:
    """MetalLB lets advertisements with different ``serviceSelectors`` give one
    pool different LOCAL_PREFs (per-service routes); lbd announces every
    service of the pool (the selectors are dropped with a warning), so two
    LOCAL_PREFs for one pool and aggregation would be rejected by lbd check.
    The first advertisement keeps its LOCAL_PREF; a later, service-selected
    one loses it, with a warning."""
    from lbd.selectors import normalize, selects_pool

    pools = {e.table["name"]: e.table.get("labels", {}) for e in conv.entries if e.section == "pool"}
    seen: dict[tuple[str, Any, Any], tuple[Any, str]] = {}
    for e in conv.entries:
        if e.section != "bgp_advertisement" or "local_pref" not in e.table:
            continue
        try:
            selectors = normalize(e.table.get("pool_selectors") or ())
        except Exception:  # a malformed selector: lbd check reports it
            continue
        names = e.table.get("pools") or []
        key_len = (e.table.get("aggregation_length", 32), e.table.get("aggregation_length_v6", 128))
        for pool, labels in pools.items():
            if not isinstance(labels, Mapping) or not selects_pool(names, selectors, pool, labels):
                continue
            key = (pool, *key_len)
            previous = seen.get(key)
            if previous is None:
                seen[key] = (e.table["local_pref"], e.table["name"])
            elif previous[0] != e.table["local_pref"] and any("serviceSelectors" in c for c in e.comments):
                e.comments.append(
                    f"WARNING: local_pref {e.table['local_pref']} left out: it was for the services its "
                    f"serviceSelectors chose, and lbd announces pool {pool!r} with the local_pref "
                    f"{previous[0]} of bgp_advertisement {previous[1]!r}")
                conv.warnings.append(f"bgp_advertisement {e.table['name']!r}: local_pref {e.table['local_pref']} "
                                     f"conflicts with {previous[1]!r} for pool {pool!r} once serviceSelectors "
                                     "are gone: left out")
                del e.table["local_pref"]
                break


def _tomlable(value: Any) -> Any:
    """What YAML may hold and TOML may not (null, .inf, timestamps) becomes a
    string, so the output is always valid TOML and ``lbd check`` names the key."""
    if isinstance(value, Mapping):
        return {str(k): _tomlable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tomlable(v) for v in value]
    if isinstance(value, bool) or isinstance(value, (int, str)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if value is None:
        return "null"
    return str(value)


def _foreign(conv: Conversion, r: Resource) -> None:
    """An object that is not MetalLB configuration: listed, not converted."""
    conv.skipped += 1
    if r.kind == "ConfigMap" and r.name.endswith("excludel2"):
        conv.warn(r, "interface exclusions have no lbd equivalent (lbd announces a VIP only on interfaces whose "
                     "subnet holds it, or on an advertisement's interfaces): not converted")
        return
    why = "MetalLB status, not configuration" if r.kind in STATUS_KINDS else "not MetalLB configuration"
    conv.notes.append(f"skipped {r.origin()}: {why}")


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

HEADER = """\
lbd configuration imported from MetalLB by `lbd import metallb`.
Check it with `lbd check --config FILE`; the reference is docs/configuration.md.
Pools keep MetalLB's names and the input's order: lbd tries pools without
service_allocation in file order (MetalLB in random order).
Each node needs its own [node] table, with the labels its node selectors
match (MetalLB matched the Kubernetes Node's labels), for example:
  [node]
  name = "node-1"
  labels = { "kubernetes.io/hostname" = "node-1" }"""


def render(conv: Conversion) -> str:
    lines = [f"# {line}" if line else "#" for line in HEADER.splitlines()]
    if conv.warnings:
        lines.append(f"# {len(conv.warnings)} warning(s): search for WARNING below.")
    for note in conv.notes:
        lines.extend(table_lines("", {}, [note]))
    if conv.communities:
        lines.append("")
        lines.extend(table_lines("[communities]", conv.communities, conv.community_comments))
    for section in SECTION_ORDER:
        for e in conv.entries:
            if e.section == section:
                lines.append("")
                lines.extend(table_lines(f"[[{section}]]", e.table, e.comments, e.key_comments))
    return "\n".join(lines) + "\n"
