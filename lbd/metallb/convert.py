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

``load_documents`` turns YAML text (multi-document, ``kind: List`` as
``kubectl get -o yaml`` prints it, Helm output) into resources.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from lbd.tomlw import table_lines

__all__ = [
    "Conversion",
    "Entry",
    "MetalLBImportError",
    "Resource",
    "convert",
    "load_documents",
    "render",
    "to_config_document",
]

DEFAULT_NAMESPACE = "metallb-system"
PASSWORD_DIR = "/etc/lbd/bgp-passwords"  # where password_file references point
GROUP = "metallb.io"
STATUS_KINDS = ("ServiceL2Status", "ServiceBGPStatus", "ConfigurationState")
SECTION_ORDER = ("pool", "namespace", "l2_advertisement", "bfd_profile", "bgp_peer", "bgp_advertisement")
DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


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


@dataclass
class Conversion:
    entries: list[Entry] = field(default_factory=list)
    communities: dict[str, str] = field(default_factory=dict)
    community_comments: list[str] = field(default_factory=list)
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


def to_config_document(resources: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The pure interface: MetalLB resources -> (lbd document, warnings)."""
    conversion = convert([Resource(r, f"resource {i}") for i, r in enumerate(resources)])
    return conversion.document(), conversion.warnings


# ---------------------------------------------------------------------------
# Reading YAML
# ---------------------------------------------------------------------------


def load_documents(text: str, source: str) -> list[Resource]:
    """Every object in YAML ``text`` (``---``-separated documents; ``kind: List``
    expanded; empty documents skipped). Raises MetalLBImportError on bad YAML."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is a dependency
        raise MetalLBImportError("PyYAML is not installed (pip install pyyaml)") from None
    try:
        docs = list(yaml.load_all(text, Loader=_loader()))
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


def _loader() -> Any:
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


# ---------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------


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
        if r.kind == "ConfigMap" and _legacy_config(r) is not None:
            legacy.extend(_legacy_to_crs(conv, r))
    return [r for r in resources if not (r.kind == "ConfigMap" and _legacy_config(r) is not None)] + legacy


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
    handlers = {
        "Community": _community, "IPAddressPool": _pool, "L2Advertisement": _l2,
        "BFDProfile": _bfd, "BGPPeer": _peer, "BGPAdvertisement": _bgp_advertisement,
    }
    for kind, handler in handlers.items():
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
        labels = _labels(r.meta.get("labels"))
        if wanted and labels:
            conv.entries.append(Entry("namespace", {"name": r.name, "labels": labels}, [f"from {r.origin()}"]))
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


def _labels(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def _unknown(conv: Conversion, r: Resource, entry: Entry, spec: Mapping[str, Any], known: Iterable[str]) -> None:
    for key in spec:
        if key not in known:
            conv.warn(r, f"spec.{key} is not known to this importer: not converted", entry)


def _origin_entry(section: str, r: Resource) -> Entry:
    return Entry(section, {"name": r.name}, [f"from {r.origin()}"])


def _selector(value: Any) -> Any:
    """A Kubernetes LabelSelector -> lbd's TOML form (flat when only matchLabels)."""
    if not isinstance(value, Mapping):
        return value  # lbd check reports it with its key path
    labels = value.get("matchLabels") or value.get("match-labels") or {}
    exprs = value.get("matchExpressions") or value.get("match-expressions") or []
    if not exprs and isinstance(labels, Mapping) and not any(k in ("matchLabels", "matchExpressions") for k in labels):
        return _labels(labels)
    out: dict[str, Any] = {}
    if labels:
        out["matchLabels"] = _labels(labels) if isinstance(labels, Mapping) else labels
    if exprs:
        out["matchExpressions"] = [
            {k: (list(map(str, v)) if k == "values" and isinstance(v, list) else v)
             for k, v in e.items() if k in ("key", "operator", "values") and not (k == "values" and v is None)}
            if isinstance(e, Mapping) else e for e in (exprs if isinstance(exprs, list) else [exprs])]
    return out


def _selectors(value: Any) -> list[Any]:
    return [_selector(v) for v in value] if isinstance(value, list) else [_selector(value)]


def _seq(value: Any) -> list[Any]:
    """A YAML sequence, or [] for anything else (lbd check or a warning reports what matters)."""
    return value if isinstance(value, list) else []


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


# -- kinds --------------------------------------------------------------------------------


def _community(conv: Conversion, r: Resource, _: Mapping[str, Resource]) -> None:
    conv.community_comments.append(f"from {r.origin()}")
    for i, item in enumerate(_seq(r.spec.get("communities"))):
        if not isinstance(item, Mapping) or "name" not in item or "value" not in item:
            conv.warn(r, f"spec.communities[{i}] has no name or value: not converted")
            continue
        name, value = str(item["name"]), str(item["value"])
        if name in conv.communities and conv.communities[name] != value:
            conv.warn(r, f"community {name!r} was {conv.communities[name]!r}, now {value!r}")
        conv.communities[name] = value
    _unknown(conv, r, Entry("", {}), r.spec, ("communities",))


def _pool(conv: Conversion, r: Resource, _: Mapping[str, Resource]) -> None:
    e = _origin_entry("pool", r)
    spec = r.spec
    addresses = []
    for text in _names(spec.get("addresses") or []):
        fixed = _masked(text)
        if fixed != text:
            e.key_comments.setdefault("addresses", []).append(
                f"{text} has host bits set; MetalLB uses the network {fixed}")
        addresses.append(fixed)
    e.table["addresses"] = addresses
    if "autoAssign" in spec:
        e.table["auto_assign"] = spec["autoAssign"]
    if "avoidBuggyIPs" in spec:
        e.table["avoid_buggy_ips"] = spec["avoidBuggyIPs"]
    labels = _labels(r.meta.get("labels"))
    if labels:
        e.table["labels"] = labels
    allocation = spec.get("serviceAllocation")
    if allocation is not None:
        sa: dict[str, Any] = {}
        if isinstance(allocation, Mapping):
            if "priority" in allocation:
                sa["priority"] = allocation["priority"]
            if allocation.get("namespaces"):
                sa["namespaces"] = _names(allocation["namespaces"])
            if allocation.get("namespaceSelectors"):
                sa["namespace_selectors"] = _selectors(allocation["namespaceSelectors"])
            if allocation.get("serviceSelectors"):
                sa["service_selectors"] = _selectors(allocation["serviceSelectors"])
            for key in allocation:
                if key not in ("priority", "namespaces", "namespaceSelectors", "serviceSelectors"):
                    conv.warn(r, f"spec.serviceAllocation.{key} is not known to this importer: not converted", e)
        e.table["service_allocation"] = sa
    _unknown(conv, r, e, spec, ("addresses", "autoAssign", "avoidBuggyIPs", "serviceAllocation"))
    conv.entries.append(e)


def _masked(text: str) -> str:
    """MetalLB parses CIDRs with Go's net.ParseCIDR, which keeps the network of
    ``198.51.100.10/24``; lbd refuses host bits, so write the network."""
    stripped = text.strip()
    if "/" not in stripped:
        return text
    try:
        ipaddress.ip_network(stripped, strict=True)
        return text
    except ValueError:
        pass
    try:
        return str(ipaddress.ip_network(stripped, strict=False))
    except ValueError:
        return text  # lbd check reports it


def _pools_keys(r: Resource, e: Entry) -> None:
    spec = r.spec
    if spec.get("ipAddressPools"):
        e.table["pools"] = _names(spec["ipAddressPools"])
    if spec.get("ipAddressPoolSelectors"):
        e.table["pool_selectors"] = _selectors(spec["ipAddressPoolSelectors"])
    if spec.get("nodeSelectors"):
        e.table["node_selector"] = _selectors(spec["nodeSelectors"])


def _l2(conv: Conversion, r: Resource, _: Mapping[str, Resource]) -> None:
    e = _origin_entry("l2_advertisement", r)
    spec = r.spec
    _pools_keys(r, e)
    if spec.get("interfaces"):
        e.table["interfaces"] = _names(spec["interfaces"])
    else:
        e.comments.append("no interfaces: MetalLB answers on every interface; lbd on the one whose subnet "
                          "holds the VIP (list interfaces to announce elsewhere)")
    if spec.get("serviceSelectors"):
        conv.warn(r, "spec.serviceSelectors (announce only some services of the pools) has no lbd equivalent: "
                     "every service of the pools is announced", e)
    if spec.get("preferredNodeSelectors"):
        conv.warn(r, "spec.preferredNodeSelectors (weighted node preference) has no lbd equivalent: lbd "
                     "elects among the selected nodes by rendezvous hash", e)
    _unknown(conv, r, e, spec, ("ipAddressPools", "ipAddressPoolSelectors", "nodeSelectors", "interfaces",
                                "serviceSelectors", "preferredNodeSelectors"))
    conv.entries.append(e)


def _bgp_advertisement(conv: Conversion, r: Resource, _: Mapping[str, Resource]) -> None:
    e = _origin_entry("bgp_advertisement", r)
    spec = r.spec
    _pools_keys(r, e)
    for theirs, ours in (("aggregationLength", "aggregation_length"), ("aggregationLengthV6", "aggregation_length_v6"),
                         ("localPref", "local_pref")):
        if theirs in spec:
            e.table[ours] = spec[theirs]
    if spec.get("communities"):
        e.table["communities"] = _names(spec["communities"])
    if spec.get("peers"):
        e.table["peers"] = _names(spec["peers"])
    if spec.get("serviceSelectors"):
        conv.warn(r, "spec.serviceSelectors (announce only some services of the pools) has no lbd equivalent: "
                     "every service of the pools is announced", e)
    _unknown(conv, r, e, spec, ("ipAddressPools", "ipAddressPoolSelectors", "nodeSelectors", "aggregationLength",
                                "aggregationLengthV6", "localPref", "communities", "peers", "serviceSelectors"))
    conv.entries.append(e)


BFD_KEYS = {
    "receiveInterval": "receive_interval", "transmitInterval": "transmit_interval",
    "detectMultiplier": "detect_multiplier", "echoInterval": "echo_interval", "echoMode": "echo_mode",
    "passiveMode": "passive_mode", "minimumTtl": "minimum_ttl",
}


def _bfd(conv: Conversion, r: Resource, _: Mapping[str, Resource]) -> None:
    e = _origin_entry("bfd_profile", r)
    for theirs, ours in BFD_KEYS.items():  # milliseconds, as MetalLB's
        if theirs in r.spec:
            e.table[ours] = r.spec[theirs]
    _unknown(conv, r, e, r.spec, BFD_KEYS)
    conv.entries.append(e)


PEER_KEYS = {
    "myASN": "my_asn", "peerASN": "peer_asn", "dynamicASN": "dynamic_asn", "localASN": "local_asn",
    "peerAddress": "peer_address", "sourceAddress": "source_address", "peerPort": "peer_port",
    "routerID": "router_id", "bfdProfile": "bfd_profile", "vrf": "vrf",
}
PEER_OTHER = ("holdTime", "keepaliveTime", "connectTime", "nodeSelectors", "password", "passwordSecret",
              "enableGracefulRestart", "ebgpMultiHop", "disableMP", "dualStackAddressFamily", "interface")


def _peer(conv: Conversion, r: Resource, secrets: Mapping[str, Resource]) -> None:
    e = _origin_entry("bgp_peer", r)
    spec = r.spec
    for theirs, ours in PEER_KEYS.items():
        value = spec.get(theirs)
        if value is not None and value != "":
            e.table[ours] = value.lower() if theirs == "dynamicASN" and isinstance(value, str) else value
    if spec.get("interface"):
        conv.warn(r, f"spec.interface ({spec['interface']}: BGP unnumbered) has no lbd equivalent: lbd peers "
                     "with an address", e)
        if "peer_address" not in e.table:
            conv.warn(r, "the peer has no peerAddress, which lbd needs: left out of the output", e)
            _unknown(conv, r, e, spec, (*PEER_KEYS, *PEER_OTHER))
            conv.notes.extend(f"{c}" for c in e.comments)
            return
    hold = _duration(conv, r, e, "holdTime")
    if hold is not None:
        e.table["hold_time"] = int(hold)  # MetalLB rounds down to whole seconds
    keepalive = _duration(conv, r, e, "keepaliveTime")
    if keepalive is not None:
        if keepalive == 0 and (hold is None or hold > 0):
            e.key_comments.setdefault("hold_time" if hold is not None else "name", []).append(
                "keepaliveTime 0s (as MetalLB's ConfigMap converter writes for unset): the default, hold_time / 3")
        else:
            e.table["keepalive_time"] = int(keepalive)
    connect = _duration(conv, r, e, "connectTime")
    if connect is not None:
        e.table["connect_time"] = int(connect)
    if spec.get("nodeSelectors"):
        e.table["node_selector"] = _selectors(spec["nodeSelectors"])
    if spec.get("password"):
        e.table["password"] = str(spec["password"])
    secret = spec.get("passwordSecret")
    if isinstance(secret, Mapping) and secret.get("name"):
        ns = secret.get("namespace") or r.namespace or DEFAULT_NAMESPACE
        path = f"{PASSWORD_DIR}/{r.name}"
        e.table["password_file"] = path
        found = " (it is in the input; its value is not copied here)" if f"{ns}/{secret['name']}" in secrets else ""
        e.key_comments["password_file"] = [
            f"write the 'password' key of Secret {ns}/{secret['name']} to {path}{found}:",
            f"kubectl -n {ns} get secret {secret['name']} -o jsonpath='{{.data.password}}' | base64 -d > {path}",
        ]
    if spec.get("enableGracefulRestart"):
        e.table["graceful_restart"] = True
    if spec.get("ebgpMultiHop"):
        local = e.table.get("local_asn", e.table.get("my_asn"))
        if e.table.get("dynamic_asn") == "internal" or (e.table.get("peer_asn") is not None
                                                         and e.table.get("peer_asn") == local):
            conv.warn(r, "spec.ebgpMultiHop is set on an iBGP session, where it does not apply: left out", e)
        else:
            e.table["ebgp_multihop"] = True
    if spec.get("disableMP"):
        conv.warn(r, "spec.disableMP (deprecated in MetalLB) has no lbd equivalent: lbd negotiates multiprotocol "
                     "capabilities per family", e)
    if spec.get("dualStackAddressFamily"):
        e.table["dual_stack_address_family"] = True
    _unknown(conv, r, e, spec, (*PEER_KEYS, *PEER_OTHER))
    conv.entries.append(e)


def _duration(conv: Conversion, r: Resource, e: Entry, key: str) -> float | None:
    """A Kubernetes Duration (Go ``time.ParseDuration``: "90s", "1m30s", "500ms") in seconds."""
    value = r.spec.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)  # not a Kubernetes Duration, but unambiguous enough: seconds
    text = str(value).strip()
    parts = DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        conv.warn(r, f"spec.{key} {text!r} is not a duration like \"90s\": not converted", e)
        return None
    return sum(float(n) * DURATION_UNITS[u] for n, u in parts)


# -- the legacy ConfigMap (MetalLB < 0.13) ---------------------------------------------------


def _legacy_config(r: Resource) -> Mapping[str, Any] | None:
    data = r.obj.get("data") if isinstance(r.obj, Mapping) else None
    if not isinstance(data, Mapping) or not isinstance(data.get("config"), str):
        return None
    try:
        import yaml

        parsed = yaml.load(data["config"], Loader=_loader())
    except Exception:
        return {"<unreadable>": True}
    if not isinstance(parsed, Mapping) or not ({"address-pools", "peers", "bgp-communities", "bfd-profiles"} & set(parsed)):
        return None
    return parsed


@dataclass
class _LegacyCRs:
    """The CRs made from one legacy ConfigMap, each sourced to the part of it it comes from."""

    configmap: Resource
    namespace: str
    out: list[Resource] = field(default_factory=list)

    def add(self, kind: str, name: str, spec: dict, what: str, version: str = "v1beta1", labels: Any = None) -> None:
        meta: dict[str, Any] = {"name": name, "namespace": self.namespace}
        if labels:
            meta["labels"] = labels
        self.out.append(Resource(
            {"apiVersion": f"{GROUP}/{version}", "kind": kind, "metadata": meta, "spec": spec},
            f"{self.configmap.source}, ConfigMap {self.namespace}/{self.configmap.name} {what}"))


def _legacy_to_crs(conv: Conversion, r: Resource) -> list[Resource]:
    """The ConfigMap as the CRs MetalLB's own converter (``configmaptocrs``) makes,
    named as it names them (peer1, bgpadvertisement1, l2advertisement1, ...)."""
    cfg = _legacy_config(r) or {}
    crs = _LegacyCRs(r, r.namespace or DEFAULT_NAMESPACE)
    if "<unreadable>" in cfg:
        conv.warn(r, "data.config is not valid YAML: not converted")
        return crs.out
    known = {"peers", "address-pools", "bgp-communities", "bfd-profiles"}
    for key in cfg:
        if key not in known:
            conv.warn(r, f"data.config: {key!r} is not known to this importer: not converted")
    if cfg.get("bgp-communities"):
        communities = cfg["bgp-communities"]
        if isinstance(communities, Mapping):
            crs.add("Community", "communities", {"communities": [{"name": str(k), "value": str(v)}
                                                                 for k, v in communities.items()]}, "bgp-communities")
    for i, p in enumerate(_seq(cfg.get("bfd-profiles"))):
        if isinstance(p, Mapping):
            spec = {_camel(k): v for k, v in p.items() if k != "name"}
            crs.add("BFDProfile", str(p.get("name", f"bfdprofile{i + 1}")), spec, f"bfd-profiles[{i}]")
    for i, p in enumerate(_seq(cfg.get("peers"))):
        if not isinstance(p, Mapping):
            continue
        names = {"peer-address": "peerAddress", "peer-asn": "peerASN", "my-asn": "myASN", "router-id": "routerID",
                 "source-address": "sourceAddress", "node-selectors": "nodeSelectors",
                 "ebgp-multihop": "ebgpMultiHop"}
        spec = {names.get(k, _camel(k)): v for k, v in p.items()}
        crs.add("BGPPeer", f"peer{i + 1}", spec, f"peers[{i}]", "v1beta2")
    _legacy_pools(conv, crs, cfg)
    return crs.out


def _legacy_pools(conv: Conversion, crs: _LegacyCRs, cfg: Mapping[str, Any]) -> None:
    """``address-pools``: an IPAddressPool each, and the L2 or BGP advertisements its protocol implies."""
    bgp_index = l2_index = 1
    for i, pool in enumerate(_seq(cfg.get("address-pools"))):
        if not isinstance(pool, Mapping):
            continue
        name = str(pool.get("name", f"pool{i + 1}"))
        spec: dict[str, Any] = {"addresses": pool.get("addresses") or []}
        if "auto-assign" in pool:
            spec["autoAssign"] = pool["auto-assign"]
        if "avoid-buggy-ips" in pool:
            spec["avoidBuggyIPs"] = pool["avoid-buggy-ips"]
        for key in pool:
            if key not in ("name", "protocol", "addresses", "auto-assign", "avoid-buggy-ips", "bgp-advertisements"):
                spec[_camel(key)] = pool[key]  # reported as unknown by the pool conversion
        crs.add("IPAddressPool", name, spec, f"address-pools[{i}]")
        protocol = str(pool.get("protocol", ""))
        if protocol in ("layer2", "l2"):
            crs.add("L2Advertisement", f"l2advertisement{l2_index}", {"ipAddressPools": [name]},
                    f"address-pools[{i}] (protocol {protocol})")
            l2_index += 1
        elif protocol == "bgp":
            bgp_index = _legacy_bgp_advertisements(crs, i, name, pool, bgp_index)
        else:
            conv.warn(crs.configmap, f"address-pools[{i}] ({name}): protocol {protocol!r} is not layer2 or bgp: "
                                     "the pool is imported but not announced")


def _legacy_bgp_advertisements(crs: _LegacyCRs, i: int, name: str, pool: Mapping[str, Any], index: int) -> int:
    """A bgp pool's ``bgp-advertisements`` (none: one default advertisement), numbered from
    ``index`` across the ConfigMap; returns the next number."""
    ads = pool.get("bgp-advertisements") or [{}]
    for j, ad in enumerate(ads if isinstance(ads, list) else [ads]):
        ad = ad if isinstance(ad, Mapping) else {}
        spec = {"ipAddressPools": [name]}
        names = {"aggregation-length": "aggregationLength", "aggregation-length-v6": "aggregationLengthV6",
                 "localpref": "localPref"}
        spec.update({names.get(k, _camel(k)): v for k, v in ad.items()})
        crs.add("BGPAdvertisement", f"bgpadvertisement{index}", spec,
                f"address-pools[{i}].bgp-advertisements[{j}]" if pool.get("bgp-advertisements")
                else f"address-pools[{i}] (protocol bgp)")
        index += 1
    return index


def _camel(key: str) -> str:
    head, *rest = str(key).split("-")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


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
