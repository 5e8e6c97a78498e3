"""One converter per MetalLB kind (``IPAddressPool``, ``L2Advertisement``, ``BGPAdvertisement``,
``BGPPeer``, ``BFDProfile``, ``Community``): a resource -> lbd entries, with a warning for every
field that has no lbd equivalent."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Iterable, Mapping

from lbd.metallb.model import DEFAULT_NAMESPACE, Conversion, Entry, Resource, as_list

PASSWORD_DIR = "/etc/lbd/bgp-passwords"  # where password_file references point
# A Kubernetes object name (DNS-1123 subdomain): safe as one file name, never "." or "..".
_PATH_SAFE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def labels_of(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def _unknown(conv: Conversion, r: Resource, entry: Entry, spec: Mapping[str, Any], known: Iterable[str]) -> None:
    for key in spec:
        if key not in known:
            conv.warn(r, f"spec.{key} is not known to this importer: not converted", entry)


def _origin_entry(section: str, r: Resource) -> Entry:
    return Entry(section, {"name": r.name}, [f"from {r.origin()}"], resource=r)


def _selector(value: Any) -> Any:
    """A Kubernetes LabelSelector -> lbd's TOML form (flat when only matchLabels)."""
    if not isinstance(value, Mapping):
        return value  # lbd check reports it with its key path
    labels = value.get("matchLabels") or value.get("match-labels") or {}
    exprs = value.get("matchExpressions") or value.get("match-expressions") or []
    if not exprs and isinstance(labels, Mapping) and not any(k in ("matchLabels", "matchExpressions") for k in labels):
        return labels_of(labels)
    out: dict[str, Any] = {}
    if labels:
        out["matchLabels"] = labels_of(labels) if isinstance(labels, Mapping) else labels
    if exprs:
        out["matchExpressions"] = [
            {k: (list(map(str, v)) if k == "values" and isinstance(v, list) else v)
             for k, v in e.items() if k in ("key", "operator", "values") and not (k == "values" and v is None)}
            if isinstance(e, Mapping) else e for e in (exprs if isinstance(exprs, list) else [exprs])]
    return out


def _selectors(value: Any) -> list[Any]:
    return [_selector(v) for v in value] if isinstance(value, list) else [_selector(value)]



def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _community(conv: Conversion, r: Resource, _: Mapping[str, Resource]) -> None:
    conv.community_comments.append(f"from {r.origin()}")
    for i, item in enumerate(as_list(r.spec.get("communities"))):
        if not isinstance(item, Mapping) or "name" not in item or "value" not in item:
            conv.warn(r, f"spec.communities[{i}] has no name or value: not converted")
            continue
        name, value = str(item["name"]), str(item["value"])
        if name in conv.communities and conv.communities[name] != value:
            conv.warn(r, f"community {name!r} was {conv.communities[name]!r}, now {value!r}")
        conv.communities[name] = value
        conv.community_origins[name] = r
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
    labels = labels_of(r.meta.get("labels"))
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
    if isinstance(secret, Mapping) and secret.get("name") and not _PATH_SAFE_NAME.fullmatch(r.name):
        # The peer's name becomes a file name below PASSWORD_DIR: an API server admits only
        # DNS-1123 names, but a file or a hostile server could say "../../etc/shadow".
        conv.warn(r, f"passwordSecret: the peer name {r.name!r} is not a DNS-1123 name, so no password_file "
                     "was made for it: set password_file by hand", e)
    elif isinstance(secret, Mapping) and secret.get("name"):
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


# Kind -> converter, in the order a conversion runs them: pools before the advertisements
# naming them.
CONVERTERS: dict[str, Callable[[Conversion, Resource, Mapping[str, Resource]], None]] = {
    "Community": _community, "IPAddressPool": _pool, "L2Advertisement": _l2,
    "BFDProfile": _bfd, "BGPPeer": _peer, "BGPAdvertisement": _bgp_advertisement,
}
