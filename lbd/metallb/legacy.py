"""The legacy ConfigMap (MetalLB < 0.13, a ``config`` key holding YAML) as the CRs MetalLB's own
converter (``configmaptocrs``) makes from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from lbd.metallb.load import yaml_loader
from lbd.metallb.model import DEFAULT_NAMESPACE, GROUP, Conversion, Resource, as_list


def legacy_config(r: Resource) -> Mapping[str, Any] | None:
    data = r.obj.get("data") if isinstance(r.obj, Mapping) else None
    if not isinstance(data, Mapping) or not isinstance(data.get("config"), str):
        return None
    try:
        import yaml

        parsed = yaml.load(data["config"], Loader=yaml_loader())
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


def legacy_to_crs(conv: Conversion, r: Resource) -> list[Resource]:
    """The ConfigMap as the CRs MetalLB's own converter (``configmaptocrs``) makes,
    named as it names them (peer1, bgpadvertisement1, l2advertisement1, ...)."""
    cfg = legacy_config(r) or {}
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
    for i, p in enumerate(as_list(cfg.get("bfd-profiles"))):
        if isinstance(p, Mapping):
            spec = {_camel(k): v for k, v in p.items() if k != "name"}
            crs.add("BFDProfile", str(p.get("name", f"bfdprofile{i + 1}")), spec, f"bfd-profiles[{i}]")
    for i, p in enumerate(as_list(cfg.get("peers"))):
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
    for i, pool in enumerate(as_list(cfg.get("address-pools"))):
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
