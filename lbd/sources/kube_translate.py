"""Kubernetes objects -> lbd: a LoadBalancer Service and its EndpointSlices as a ``ServiceSpec``
and backends. Pure: no client, no clock; the ``kubernetes`` source (``lbd.sources.kubernetes``)
feeds it what its informers hold.

MetalLB's annotations (``metallb.io/``, and the older ``metallb.universe.tf/``) are read as MetalLB
reads them, so Services move between the two unchanged.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

from lbd.model import Backend, Family, IPAddress, PortSpec, ServiceSpec

DEFAULT_CLASS = "lbd.io/lbd"
ANNOTATION_PREFIXES = ("metallb.io/", "metallb.universe.tf/")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
FAMILIES = {"IPv4": Family.IPV4, "IPv6": Family.IPV6}
# A key -> True (keep whole), a nested shape, or a tuple of key prefixes to keep (see prune).
Shape = Mapping[str, Union[bool, tuple, "Shape"]]


class ServiceError(ValueError):
    """A Service whose lbd-relevant fields are contradictory or malformed."""


def json_object(value: Any) -> Mapping[str, Any]:
    """A JSON object, or {} for anything else (API objects are input too)."""
    # dict, not typing.Mapping: the ABC check costs ~2 us and runs ~200 times
    # per Service per snapshot (JSON objects are always dicts).
    return value if isinstance(value, dict) else {}


def json_array(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# What lbd reads of each kind, and nothing else, is what the informers keep
# (``prune``). A Service parsed from one watch event is ~5.9 KB of dicts and
# strings here (and far more in a real cluster: managedFields, the
# last-applied-configuration annotation); pruned, ~1.5 KB, its keys shared.
# A field a function in this module starts reading must be added here:
# tests/unit/test_kube_prune.py checks every reader against pruned objects.
ANNOTATION_KEEP = ANNOTATION_PREFIXES + ("lbd.io/",)
PORT_SHAPE: Shape = {"name": True, "protocol": True, "port": True}
SERVICE_SHAPE: Shape = {
    "metadata": {"name": True, "namespace": True, "uid": True, "resourceVersion": True, "labels": True,
                 "annotations": ANNOTATION_KEEP},
    "spec": {"type": True, "loadBalancerClass": True, "loadBalancerIP": True, "ports": PORT_SHAPE,
             "ipFamilies": True, "externalTrafficPolicy": True, "selector": True},
    "status": {"loadBalancer": {"ingress": {"ip": True}}},
}
SLICE_SHAPE: Shape = {
    "metadata": {"name": True, "namespace": True, "resourceVersion": True, "labels": True},
    "addressType": True,
    "endpoints": {"addresses": True, "conditions": {"ready": True}, "nodeName": True},
    "ports": PORT_SHAPE,
}
NODE_SHAPE: Shape = {"metadata": {"name": True, "resourceVersion": True, "labels": True}}


def prune(value: Any, shape: "Shape") -> Any:
    """``value`` reduced to the keys ``shape`` names, with shared (interned) key strings.

    A shape maps a key to ``True`` (keep the value whole), to a nested shape
    (applied to an object, or to each element of an array), or to a tuple of
    prefixes (keep the object's keys that start with one). Anything that is not
    the JSON type a shape expects is kept as it is: the readers treat it as
    they treated the unpruned object (``json_object`` and ``json_array``
    turn it into {} or []), so hostile input means the same pruned or not.
    """
    if isinstance(value, list):
        return [prune(item, shape) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, sub in shape.items():
        if key not in value:
            continue
        item = value[key]
        if sub is True:
            out[key] = _interned(item)
        elif isinstance(sub, tuple):
            out[key] = {_key(k): v for k, v in item.items() if isinstance(k, str) and k.startswith(sub)} \
                if isinstance(item, dict) else item
        else:
            out[key] = prune(item, sub)
    return out


def _key(k: Any) -> Any:
    return sys.intern(k) if type(k) is str else k


def _interned(value: Any) -> Any:
    """A JSON value with its object keys interned: 5,000 Services share one "app" key, not 5,000."""
    if isinstance(value, dict):
        return {_key(k): _interned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interned(v) for v in value]
    return value


@dataclass(frozen=True)
class ClassFilter:
    load_balancer_class: str = DEFAULT_CLASS
    claim_unclassed: bool = True

    def wants(self, svc: Mapping[str, Any]) -> bool:
        spec = json_object(json_object(svc).get("spec"))
        if spec.get("type") != "LoadBalancer":
            return False
        cls = spec.get("loadBalancerClass")
        if cls is None:
            return self.claim_unclassed
        return cls == self.load_balancer_class


def annotation(meta: Mapping[str, Any], key: str) -> tuple[str | None, str | None]:
    """(value, the full key it came from): ``metallb.io/`` first, then the older prefix."""
    annotations = json_object(meta.get("annotations"))
    for prefix in ANNOTATION_PREFIXES:
        value = annotations.get(prefix + key)
        if isinstance(value, str):
            return value, prefix + key
    return None, None


def deprecated_annotations(meta: Mapping[str, Any]) -> list[str]:
    """The lbd-relevant annotations written with the old ``metallb.universe.tf/`` prefix."""
    annotations = json_object(meta.get("annotations"))
    return sorted(k for k in annotations if isinstance(k, str) and k.startswith(ANNOTATION_PREFIXES[1])
                  and k[len(ANNOTATION_PREFIXES[1]):] in ("loadBalancerIPs", "address-pool", "allow-shared-ip"))


def selector_string(selector: Mapping[str, Any] | None) -> str:
    """``labels.Set(selector).String()``: sorted ``k=v`` joined by commas (MetalLB's backend key)."""
    sel = json_object(selector)
    return ",".join(f"{k}={sel[k]}" for k in sorted(sel, key=str))


def _ips(text: str, where: str) -> tuple[IPAddress, ...]:
    out: list[IPAddress] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_address(part))
        except ValueError:
            raise ServiceError(f'{where}: "{part}" is not an IP address') from None
    families = [a.version for a in out]
    if len(families) != len(set(families)):
        raise ServiceError(f"{where}: at most one IPv4 and one IPv6 address")
    return tuple(out)


def service_to_spec(svc: Mapping[str, Any], *, ready_nodes: frozenset[str], all_nodes: frozenset[str],
                    excluded: frozenset[str]) -> ServiceSpec:
    """The ServiceSpec (local name ``namespace/name``) for one LoadBalancer Service.

    ``ready_nodes`` are the nodes holding a ready endpoint of this Service
    (from its EndpointSlices); ``excluded`` the nodes carrying the exclude
    label. Raises ServiceError for a Service lbd must not allocate.
    """
    meta = json_object(json_object(svc).get("metadata"))
    spec = json_object(json_object(svc).get("spec"))
    ns, name = str(meta.get("namespace", "default")), str(meta.get("name", ""))
    requested = _requested_addresses(meta, spec)
    pool, _ = annotation(meta, "address-pool")
    share, _ = annotation(meta, "allow-shared-ip")
    ports = _service_ports(spec)
    families = _service_families(spec, requested)
    local = spec.get("externalTrafficPolicy") == "Local"
    if local:
        # MetalLB: only nodes with a ready local endpoint may announce, and the
        # service shares an IP only with services of the same selector.
        eligible: frozenset[str] | None = ready_nodes - excluded
        backend_key = selector_string(spec.get("selector"))
    else:
        eligible = (all_nodes - excluded) if excluded else None
        backend_key = ""
    return ServiceSpec(
        name=f"{ns}/{name}",
        pool=pool or None,
        addresses=requested,
        ports=ports,
        share_key=share or None,
        ip_families=families,
        backend_key=backend_key,
        eligible_nodes=eligible,
        # The Service's own labels and namespace, for pools' service_allocation
        # (MetalLB matches serviceSelectors against metadata.labels). Namespace
        # labels (namespaceSelectors) are not read yet: [[namespace]] in the config.
        labels={str(k): str(v) for k, v in json_object(meta.get("labels")).items()},
        namespace=ns,
    )


def _requested_addresses(meta: Mapping[str, Any], spec: Mapping[str, Any]) -> tuple[IPAddress, ...]:
    """The addresses the Service asks for: the loadBalancerIPs annotation, else the deprecated
    ``spec.loadBalancerIP`` (both set is an error), else none."""
    lb_ip = spec.get("loadBalancerIP") or None
    if lb_ip is not None and not isinstance(lb_ip, str):
        raise ServiceError("spec.loadBalancerIP: expected a string")
    ips_text, ips_key = annotation(meta, "loadBalancerIPs")
    if lb_ip and ips_text is not None:
        raise ServiceError(f"spec.loadBalancerIP and the {ips_key} annotation are both set; use only the annotation")
    if ips_text is not None:
        return _ips(ips_text, f"annotation {ips_key}")
    if lb_ip:
        return _ips(str(lb_ip), "spec.loadBalancerIP")
    return ()


def _service_ports(spec: Mapping[str, Any]) -> tuple[PortSpec, ...]:
    ports = []
    for i, port in enumerate(json_array(spec.get("ports"))):
        port = json_object(port)
        proto = str(port.get("protocol", "TCP")).lower()
        number = port.get("port")
        if (proto not in ("tcp", "udp", "sctp") or isinstance(number, bool) or not isinstance(number, int)
                or not 1 <= number <= 65535):
            raise ServiceError(f"spec.ports[{i}]: unsupported {port.get('protocol')}/{number}")
        ports.append(PortSpec(proto, number))
    return tuple(ports)


def _service_families(spec: Mapping[str, Any], requested: Sequence[IPAddress]) -> tuple[Family, ...]:
    """``spec.ipFamilies``; unset: the families of the requested addresses, else IPv4."""
    families: list[Family] = []
    for fam in json_array(spec.get("ipFamilies")):
        if not isinstance(fam, str) or fam not in FAMILIES:
            raise ServiceError(f"spec.ipFamilies: unknown family {fam!r}")
        families.append(FAMILIES[fam])
    if not families:
        families = [Family.of(a) for a in requested] or [Family.IPV4]
    return tuple(families)


def ready_nodes_by_service(slices: Mapping[Any, Mapping[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(namespace, service name) -> nodes holding a ready endpoint.

    ``conditions.ready`` unset means ready (discovery/v1 API docs).
    """
    out: dict[tuple[str, str], set[str]] = {}
    for sl in slices.values():
        meta = json_object(json_object(sl).get("metadata"))
        service = json_object(meta.get("labels")).get(SERVICE_NAME_LABEL)
        if not isinstance(service, str) or not service:
            continue
        nodes = out.setdefault((str(meta.get("namespace", "default")), service), set())
        for ep in json_array(json_object(sl).get("endpoints")):
            ep = json_object(ep)
            if json_object(ep.get("conditions")).get("ready") is False:
                continue
            node = ep.get("nodeName")
            if isinstance(node, str) and node:
                nodes.add(node)
    return out


def backends_by_service(services: Mapping[tuple[str, str], Mapping[str, Any]],
                        slices: Mapping[Any, Mapping[str, Any]]) -> dict[tuple[str, str], tuple[Backend, ...]]:
    """(namespace, name) -> the ready endpoints of each Service port, as lbd backends (``forward = true``).

    A Service port is matched to an EndpointSlice port by name (both unnamed
    for a single-port Service), which is how kube-proxy resolves targetPort;
    ``conditions.ready`` unset means ready. Endpoints of another family than
    the slice's addressType are skipped.
    """
    out: dict[tuple[str, str], list[Backend]] = {}
    seen: set[tuple[str, str, PortSpec, str, int]] = set()
    for sl in slices.values():
        meta = json_object(json_object(sl).get("metadata"))
        service = json_object(meta.get("labels")).get(SERVICE_NAME_LABEL)
        key = (str(meta.get("namespace", "default")), service)
        svc = services.get(key) if isinstance(service, str) else None
        if svc is None or json_object(sl).get("addressType") not in ("IPv4", "IPv6"):
            continue
        slice_ports = {str(p.get("name") or ""): p for p in map(json_object, json_array(json_object(sl).get("ports")))}
        for port in map(json_object, json_array(json_object(json_object(svc).get("spec")).get("ports"))):
            proto = str(port.get("protocol", "TCP")).lower()
            number = port.get("port")
            target = json_object(slice_ports.get(str(port.get("name") or ""))).get("port")
            if (proto not in ("tcp", "udp", "sctp") or not isinstance(number, int) or not isinstance(target, int)
                    or isinstance(target, bool) or not 1 <= target <= 65535 or not 1 <= number <= 65535):
                continue
            for ep in map(json_object, json_array(json_object(sl).get("endpoints"))):
                if json_object(ep.get("conditions")).get("ready") is False:
                    continue
                for text in json_array(ep.get("addresses")):
                    try:
                        address = ipaddress.ip_address(str(text))
                    except ValueError:
                        continue
                    item = (key[0], key[1], PortSpec(proto, number), str(address), target)
                    if item in seen:
                        continue
                    seen.add(item)
                    out.setdefault(key, []).append(Backend(PortSpec(proto, number), address, target))
    return {k: tuple(sorted(v, key=lambda b: (b.port.protocol, b.port.port, b.endpoint))) for k, v in out.items()}


def ingress_ips(svc: Mapping[str, Any]) -> list[str]:
    ingress = json_array(json_object(json_object(json_object(svc).get("status")).get("loadBalancer")).get("ingress"))
    return [str(i.get("ip")) for i in ingress if isinstance(i, dict) and i.get("ip")]
