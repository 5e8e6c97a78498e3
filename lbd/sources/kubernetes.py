"""The ``kubernetes`` source: LoadBalancer Services from a Kubernetes API server.

::

    [[source]]
    type = "kubernetes"
    name = "k8s"
    kubeconfig = "/etc/lbd/kubeconfig"        # default: in-cluster, else $KUBECONFIG, else ~/.kube/config
    context = "prod"                          # default: the kubeconfig's current-context
    load_balancer_class = "lbd.io/lbd"        # Services with this spec.loadBalancerClass are ours
    claim_unclassed = true                    # ... and so are Services with no class (MetalLB's default)
    ignore_exclude_lb = false                 # true: ignore node.kubernetes.io/exclude-from-external-load-balancers
    namespaces = ["web", "shop"]              # only these namespaces (default: all)

It lists and watches Services, EndpointSlices and Nodes (informer pattern:
list, then watch from the list's resourceVersion with bookmarks; on 410 Gone a
re-list replaces the store, and since only a changed snapshot is published a
re-list is not churn). While the API server is unreachable the stores, and so
the snapshot, stay as they are: nothing is withdrawn. Service names are
``<source name>/<namespace>/<name>``.

Results are written back to ``status.loadBalancer.ingress`` through the status
subresource, only by the writer node, only when they differ, with the
resourceVersion as precondition (409 -> re-read and retry). Allocation failures
and invalid Services become Warning Events. Who announces each Service is
written too, after the status and in the background: MetalLB's ``nodeAssigned``
Event when the announcing node changes, and the ``lbd.io/announcing-nodes``
annotation. A write refused with 401/403 makes the source degraded with the
API server's reason; nothing is withdrawn for it.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lbd.config.schema import SourceConfig
from lbd.model import Backend, Family, IPAddress, PortSpec, ServiceSpec
from lbd.sources.base import Publish, ServiceResult, Source, SourceContext
from lbd.backoff import capped_backoff
from lbd.sources.options import options_table

DEFAULT_CLASS = "lbd.io/lbd"
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
ANNOTATION_PREFIXES = ("metallb.io/", "metallb.universe.tf/")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
OPTION_KEYS = ("kubeconfig", "context", "in_cluster", "load_balancer_class", "claim_unclassed",
               "ignore_exclude_lb", "watch_timeout", "write_concurrency", "forward", "namespaces")
ANNOUNCING_ANNOTATION = "lbd.io/announcing-nodes"
# MetalLB's speaker: c.client.Infof(svc, "nodeAssigned", "announcing from node %q with protocol %q", ...)
NODE_ASSIGNED = "nodeAssigned"
FAMILIES = {"IPv4": Family.IPV4, "IPv6": Family.IPV6}


class ServiceError(ValueError):
    """A Service whose lbd-relevant fields are contradictory or malformed."""


def _map(value: Any) -> Mapping[str, Any]:
    """A JSON object, or {} for anything else (API objects are input too)."""
    # dict, not typing.Mapping: the ABC check costs ~2 us and runs ~200 times
    # per Service per snapshot (JSON objects are always dicts).
    return value if isinstance(value, dict) else {}


def _seq(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# ---------------------------------------------------------------------------
# Pure mapping: Kubernetes objects -> ServiceSpec
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassFilter:
    load_balancer_class: str = DEFAULT_CLASS
    claim_unclassed: bool = True

    def wants(self, svc: Mapping[str, Any]) -> bool:
        spec = _map(_map(svc).get("spec"))
        if spec.get("type") != "LoadBalancer":
            return False
        cls = spec.get("loadBalancerClass")
        if cls is None:
            return self.claim_unclassed
        return cls == self.load_balancer_class


def annotation(meta: Mapping[str, Any], key: str) -> tuple[str | None, str | None]:
    """(value, the full key it came from): ``metallb.io/`` first, then the older prefix."""
    annotations = _map(meta.get("annotations"))
    for prefix in ANNOTATION_PREFIXES:
        value = annotations.get(prefix + key)
        if isinstance(value, str):
            return value, prefix + key
    return None, None


def deprecated_annotations(meta: Mapping[str, Any]) -> list[str]:
    """The lbd-relevant annotations written with the old ``metallb.universe.tf/`` prefix."""
    annotations = _map(meta.get("annotations"))
    return sorted(k for k in annotations if isinstance(k, str) and k.startswith(ANNOTATION_PREFIXES[1])
                  and k[len(ANNOTATION_PREFIXES[1]):] in ("loadBalancerIPs", "address-pool", "allow-shared-ip"))


def selector_string(selector: Mapping[str, Any] | None) -> str:
    """``labels.Set(selector).String()``: sorted ``k=v`` joined by commas (MetalLB's backend key)."""
    sel = _map(selector)
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
    meta = _map(_map(svc).get("metadata"))
    spec = _map(_map(svc).get("spec"))
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
        labels={str(k): str(v) for k, v in _map(meta.get("labels")).items()},
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
    for i, port in enumerate(_seq(spec.get("ports"))):
        port = _map(port)
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
    for fam in _seq(spec.get("ipFamilies")):
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
        meta = _map(_map(sl).get("metadata"))
        service = _map(meta.get("labels")).get(SERVICE_NAME_LABEL)
        if not isinstance(service, str) or not service:
            continue
        nodes = out.setdefault((str(meta.get("namespace", "default")), service), set())
        for ep in _seq(_map(sl).get("endpoints")):
            ep = _map(ep)
            if _map(ep.get("conditions")).get("ready") is False:
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
        meta = _map(_map(sl).get("metadata"))
        service = _map(meta.get("labels")).get(SERVICE_NAME_LABEL)
        key = (str(meta.get("namespace", "default")), service)
        svc = services.get(key) if isinstance(service, str) else None
        if svc is None or _map(sl).get("addressType") not in ("IPv4", "IPv6"):
            continue
        slice_ports = {str(p.get("name") or ""): p for p in map(_map, _seq(_map(sl).get("ports")))}
        for port in map(_map, _seq(_map(_map(svc).get("spec")).get("ports"))):
            proto = str(port.get("protocol", "TCP")).lower()
            number = port.get("port")
            target = _map(slice_ports.get(str(port.get("name") or ""))).get("port")
            if (proto not in ("tcp", "udp", "sctp") or not isinstance(number, int) or not isinstance(target, int)
                    or isinstance(target, bool) or not 1 <= target <= 65535 or not 1 <= number <= 65535):
                continue
            for ep in map(_map, _seq(_map(sl).get("endpoints"))):
                if _map(ep.get("conditions")).get("ready") is False:
                    continue
                for text in _seq(ep.get("addresses")):
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
    ingress = _seq(_map(_map(_map(svc).get("status")).get("loadBalancer")).get("ingress"))
    return [str(i.get("ip")) for i in ingress if isinstance(i, dict) and i.get("ip")]


# ---------------------------------------------------------------------------
# Informer: list + watch one resource into a dict store
# ---------------------------------------------------------------------------


def describe_error(exc: BaseException, path: str) -> str:
    """One operator-readable line for a failed request: what failed and why.

    ``path`` is the API path listed/watched, or what was written ("status").
    403s carry the API server's own message, which names the user, the verb
    and the resource that the ClusterRole lacks.
    """
    from lbd.sources.kube_client import ApiError, Unreachable, WatchStreamError

    resource = path.rstrip("/").rsplit("/", 1)[-1]
    if isinstance(exc, ApiError):
        if exc.code == 401:
            return f"401 Unauthorized: the API server rejected lbd's credentials ({resource})"
        if exc.code == 403:
            return f"403 Forbidden: {exc.message}"
        return f"{resource}: {exc.code} {exc.reason}: {exc.message}"
    if isinstance(exc, Unreachable):
        return str(exc)
    if isinstance(exc, WatchStreamError):
        return f"{resource}: bad watch stream: {exc}"
    return f"{resource}: {type(exc).__name__}: {exc}"


class Informer:
    def __init__(self, client: Any, path: str, *, on_change: Callable[[], None],
                 on_health: Callable[[str, str | None], bool], log: Any, watch_timeout: float,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 store: dict[tuple[str, str], dict] | None = None, namespace: str | None = None) -> None:
        self.client = client
        self.path = path
        self.on_change = on_change
        self.on_health = on_health
        self.log = log
        self.watch_timeout = watch_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        # With a namespaces filter, one informer per namespace shares one store
        # and owns the keys of its namespace.
        self.store: dict[tuple[str, str], dict] = store if store is not None else {}
        self.namespace = namespace
        self.resource_version: str | None = None
        self.synced = False
        self.relists = 0

    @staticmethod
    def key(obj: Mapping[str, Any]) -> tuple[str, str]:
        meta = _map(_map(obj).get("metadata"))
        return (str(meta.get("namespace", "")), str(meta.get("name", "")))

    async def _list(self) -> None:
        result = await self.client.request("GET", self.path)
        fresh = {self.key(o): o for o in _seq(result.get("items")) if isinstance(o, dict)}
        if self.namespace is None:
            self.store.clear()
        else:
            for key in [k for k in self.store if k[0] == self.namespace]:
                del self.store[key]
        self.store.update(fresh)  # one step: no await between clear and update
        self.resource_version = (result.get("metadata") or {}).get("resourceVersion")
        self.synced = True
        self.relists += 1
        self.on_health(self.path, None)
        self.on_change()

    async def run(self) -> None:
        from lbd.sources.kube_client import ApiError

        failures = 0
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                server_timeout = int(self.watch_timeout * random.uniform(1.0, 1.2))
                params = {"watch": "true", "resourceVersion": self.resource_version or "",
                          "allowWatchBookmarks": "true", "timeoutSeconds": str(server_timeout)}
                async for event in self.client.watch(self.path, params, timeout=server_timeout + 30):
                    if failures:
                        failures = 0
                        self.on_health(self.path, None)
                    if self._apply(event):
                        break
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.code == 410:
                    self._expire()
                    continue
                if exc.code == 504 and failures == 0:
                    # The API server's watch timed out on its side ("Timeout: Too large
                    # resource version" or a gateway): resume at once, like client-go.
                    failures += 1
                    continue
                failures += 1
                await self._fail(failures, exc)
            except (OSError, asyncio.TimeoutError, ValueError) as exc:
                # Unreachable, reset, timed out, garbage, an over-long line: keep the store, retry.
                failures += 1
                await self._fail(failures, exc)

    def _expire(self) -> None:
        # 410 Gone: our resourceVersion was compacted away. Re-list; the store
        # is replaced in one step so unchanged objects cause no churn.
        self.log.info("watch_expired_relisting", path=self.path, resource_version=self.resource_version)
        self.resource_version = None

    def retry_delay(self, failures: int) -> float:
        return capped_backoff(max(1, failures), self.backoff_initial, self.backoff_max, jitter=0.2)

    async def _fail(self, failures: int, exc: BaseException) -> None:
        delay = self.retry_delay(failures)
        cause = describe_error(exc, self.path)
        if self.on_health(self.path, cause):
            # One line per distinct cause, not one per retry.
            self.log.warning("kube_watch_failed", path=self.path, error=cause, retry_in=round(delay, 2))
        await asyncio.sleep(delay)

    def _apply(self, event: Mapping[str, Any]) -> bool:
        """Apply one watch event; True when the watch must be restarted."""
        from lbd.sources.kube_client import ApiError

        kind = event.get("type")
        obj = _map(event.get("object"))
        if kind == "ERROR":
            code = obj.get("code")
            # A Status's code is an int; anything else (hostile or broken) is a 500.
            code = code if isinstance(code, int) and not isinstance(code, bool) else 500
            if code == 410:
                self._expire()
                return True
            raise ApiError(code, str(obj.get("reason", ""))[:200], str(obj.get("message", ""))[:500])
        rv = _map(obj.get("metadata")).get("resourceVersion")
        if kind == "BOOKMARK":
            self.resource_version = rv or self.resource_version
            return False
        if not obj:
            return False
        if kind in ("ADDED", "MODIFIED"):
            self.store[self.key(obj)] = obj
        elif kind == "DELETED":
            self.store.pop(self.key(obj), None)
        else:
            return False
        self.resource_version = rv or self.resource_version
        self.on_change()
        return False


# ---------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------


class KubernetesSource(Source):
    debounce = 0.05  # batch watch events (the initial list, a rollout) into one snapshot

    @classmethod
    def validate(cls, options: Mapping[str, Any]) -> list[str]:
        t, errors = options_table(options, OPTION_KEYS)
        kubeconfig = t.string("kubeconfig")
        if kubeconfig is not None and not os.path.isabs(kubeconfig):
            t.error("kubeconfig", f"{kubeconfig!r} must be an absolute path")
        t.string("context")
        in_cluster = t.boolean("in_cluster", False)
        if in_cluster and kubeconfig is not None:
            t.error("in_cluster", "set either kubeconfig or in_cluster = true, not both")
        t.string("load_balancer_class")
        t.boolean("claim_unclassed", True)
        t.boolean("ignore_exclude_lb", False)
        t.seconds("watch_timeout", 300.0, lo=1.0, hi=3600.0)
        t.integer("write_concurrency", 16, lo=1, hi=256)
        t.boolean("forward", False)
        t.string_list("namespaces")
        try:
            import aiohttp  # noqa: F401
            import lightkube.config.client_adapter  # noqa: F401
            import yaml  # noqa: F401
        except ImportError:
            errors.add("", "the kubernetes source needs the lbd[kubernetes] extra (lightkube, aiohttp, PyYAML)")
        return errors.messages()

    def __init__(self, config: SourceConfig, context: SourceContext) -> None:
        super().__init__(config, context)
        o = config.options
        self.filter = ClassFilter(str(o.get("load_balancer_class", DEFAULT_CLASS)),
                                  bool(o.get("claim_unclassed", True)))
        self.ignore_exclude = bool(o.get("ignore_exclude_lb", False))
        self.watch_timeout = float(o.get("watch_timeout", 300.0))  # type: ignore[arg-type]
        self.write_concurrency = int(o.get("write_concurrency", 16))  # type: ignore[arg-type]
        self.forward = bool(o.get("forward", False))  # balance to ready endpoints (docs/forwarding.md)
        self.namespaces: tuple[str, ...] = tuple(o.get("namespaces") or ())  # type: ignore[arg-type]
        self._announced: dict[str, tuple[str, ...]] = {}  # uid -> nodes a nodeAssigned Event was sent for
        self._annotating: dict[str, str] = {}  # uid -> annotation value written, not yet seen in the watch
        self._background: set[asyncio.Task] = set()
        self._announcing: set[str] = set()  # uids with an announcement write in flight
        self.announce_writes = 0
        self.client: Any = None
        self.services: Informer | None = None
        self.slices: Informer | None = None
        self.nodes: Informer | None = None
        self._dirty = asyncio.Event()
        self._health: dict[str, str] = {}
        self._published: list[ServiceSpec] | None = None
        self.invalid: dict[str, str] = {}  # local name -> why it is not allocated
        self._spec_cache: dict[tuple[str, str], Any] = {}
        self.deprecated: dict[str, list[str]] = {}  # local name -> old-prefix annotations in use
        self._evented: set[tuple[str, str, str]] = set()  # (uid, reason, message) already emitted
        self._written: dict[str, tuple[str, list[str]]] = {}  # uid -> (resourceVersion written over, ips)
        self._inflight: set[str] = set()
        self._failed: dict[str, str] = {}  # uid -> the allocation failure last reported
        self.status_writes = 0
        self.publishes = 0

    def _credentials(self) -> Any:
        from lbd.sources.kube_client import in_cluster, load_kubeconfig

        o = self.config.options
        if o.get("kubeconfig"):
            return load_kubeconfig(str(o["kubeconfig"]), o.get("context"))  # type: ignore[arg-type]
        if o.get("in_cluster") or os.environ.get("KUBERNETES_SERVICE_HOST"):
            return in_cluster()
        # kubectl's rule: every path in $KUBECONFIG, merged; else ~/.kube/config.
        paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
        return load_kubeconfig(paths or [str(Path.home() / ".kube" / "config")], o.get("context"))  # type: ignore[arg-type]

    def _on_health(self, path: str, error: str | None) -> bool:
        """Record one informer's health; True when the cause is new (worth a log line)."""
        if error is None:
            changed = self._health.pop(path, None) is not None
        else:
            changed = self._health.get(path) != error
            self._health[path] = error
        self._report_health()
        return changed

    def _report_health(self) -> None:
        causes = [self._health[k] for k in sorted(self._health)]
        # Identical causes from the three informers (401, unreachable) read once.
        unique = list(dict.fromkeys(causes))
        self.context.set_error("; ".join(unique) or None)

    async def run(self, publish: Publish) -> None:
        from lbd.sources.kube_client import KubeClient, KubeConfigError

        try:
            conn = self._credentials()
        except KubeConfigError as exc:
            self.log.error("kube_config_invalid", error=str(exc))
            self.context.set_error(f"bad kubeconfig: {exc}")
            raise
        self.client = KubeClient(conn, user_agent=f"lbd/{self.context.node_name}")
        mk = lambda path: Informer(self.client, path, on_change=self._dirty.set, on_health=self._on_health,  # noqa: E731
                                   log=self.log, watch_timeout=self.watch_timeout)
        self.nodes = mk("/api/v1/nodes")
        if not self.namespaces:
            self.services = mk("/api/v1/services")
            self.slices = mk("/apis/discovery.k8s.io/v1/endpointslices")
            informers = [self.services, self.slices, self.nodes]
        else:
            # Only these namespaces: list/watch each (a namespaced Role is then enough
            # for Services and EndpointSlices); the stores are shared per resource.
            svc_store: dict = {}
            slice_store: dict = {}
            svcs = [Informer(self.client, f"/api/v1/namespaces/{ns}/services", on_change=self._dirty.set,
                             on_health=self._on_health, log=self.log, watch_timeout=self.watch_timeout,
                             store=svc_store, namespace=ns) for ns in self.namespaces]
            slices = [Informer(self.client, f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                               on_change=self._dirty.set, on_health=self._on_health, log=self.log,
                               watch_timeout=self.watch_timeout, store=slice_store, namespace=ns)
                      for ns in self.namespaces]
            self.services, self.slices = svcs[0], slices[0]
            informers = [*svcs, *slices, self.nodes]
        tasks = [asyncio.create_task(i.run(), name=f"lbd-kube-{i.path}") for i in informers]
        try:
            while True:
                waiter = asyncio.create_task(self._dirty.wait())
                done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
                for t in tasks:
                    if t in done:
                        waiter.cancel()
                        t.result()  # an informer bug: raise so the manager restarts us
                await asyncio.sleep(self.debounce)
                self._dirty.clear()
                if all(i.synced for i in informers):
                    snapshot = self.snapshot()
                    if snapshot != self._published:
                        self._published = snapshot
                        self.publishes += 1
                        publish(snapshot)
        finally:
            for t in [*tasks, *self._background]:
                t.cancel()
            await asyncio.gather(*tasks, *self._background, return_exceptions=True)
            await self.client.close()

    def snapshot(self) -> list[ServiceSpec]:
        assert self.services and self.slices and self.nodes
        all_nodes = frozenset(name for (_, name) in self.nodes.store)
        excluded = frozenset() if self.ignore_exclude else frozenset(
            name for (_, name), n in self.nodes.store.items()
            if EXCLUDE_LABEL in _map(_map(n.get("metadata")).get("labels")))
        ready = ready_nodes_by_service(self.slices.store)
        nodes_sig = (excluded, all_nodes if excluded else None)
        out: list[ServiceSpec] = []
        invalid: dict[str, str] = {}
        deprecated: dict[str, list[str]] = {}
        backends = backends_by_service(self.services.store, self.slices.store) if self.forward else {}
        cache: dict[tuple[str, str], tuple[Any, frozenset[str], Any, ServiceSpec | ServiceError]] = {}
        for key in sorted(self.services.store):
            svc = self.services.store[key]
            if not self.filter.wants(svc):
                continue
            # Each status write we make comes back as a MODIFIED event: reuse the
            # spec of a Service whose object and inputs did not change, so a
            # burst of writes does not remap all 5,000 Services each time.
            rv = _map(svc.get("metadata")).get("resourceVersion")
            ready_here = frozenset(ready.get(key, ()))
            hit = self._spec_cache.get(key)
            if hit is not None and hit[0] == rv and rv is not None and hit[1] == ready_here and hit[2] == nodes_sig:
                value = hit[3]
            else:
                try:
                    value = service_to_spec(svc, ready_nodes=ready_here, all_nodes=all_nodes, excluded=excluded)
                except ServiceError as exc:
                    value = exc
            cache[key] = (rv, ready_here, nodes_sig, value)
            old = deprecated_annotations(_map(svc.get("metadata")))
            if old:
                deprecated[f"{key[0]}/{key[1]}"] = old
            if isinstance(value, ServiceError):
                invalid[f"{key[0]}/{key[1]}"] = str(value)
            elif self.forward:
                out.append(replace(value, backends=backends.get(key, ())))
            else:
                out.append(value)
        self._spec_cache = cache
        self.deprecated = deprecated
        for name, why in invalid.items():
            if self.invalid.get(name) != why:
                self.log.warning("kube_service_invalid", service=name, error=why)
        self.invalid = invalid
        return out

    # -- results back to the API -----------------------------------------

    async def report(self, results: Mapping[str, ServiceResult]) -> None:
        if not self.is_writer or self.services is None or self.client is None:
            return
        sem = asyncio.Semaphore(self.write_concurrency)
        jobs = []
        announce = []
        for local, result in results.items():
            ns, _, name = local.partition("/")
            svc = self.services.store.get((ns, name))
            if svc is None:
                continue
            uid = svc["metadata"].get("uid", local)
            desired = [str(a) for a in result.addresses]
            if not result.addresses and result.pending:
                message = f"Failed to allocate IP for \"{local}\": {result.pending}"
                if self._failed.get(uid) != message:
                    self._failed[uid] = message
                    jobs.append(self._event(svc, "AllocationFailed", message, sem))
            elif result.addresses:
                self._failed.pop(uid, None)
            if result.addresses:
                announce.append((svc, uid, tuple(result.nodes)))
            if uid in self._inflight or self._up_to_date(svc, uid, desired):
                continue
            jobs.append(self._write(ns, name, uid, svc, desired, sem))
        for local, why in self.invalid.items():
            ns, _, name = local.partition("/")
            svc = self.services.store.get((ns, name))
            if svc is not None:
                jobs.append(self._event(svc, "InvalidService", why, sem))
        for local, keys in self.deprecated.items():
            ns, _, name = local.partition("/")
            svc = self.services.store.get((ns, name))
            if svc is not None:
                # MetalLB still reads the old prefix and warns the same way.
                jobs.append(self._event(svc, "DeprecatedAnnotation", "deprecated annotations "
                                        + ", ".join(keys) + ": use the metallb.io/ prefix", sem))
        if jobs:
            await asyncio.gather(*jobs)
        # Who announces: after the status writes, in the background, so that a
        # burst of owner changes never delays an address reaching a Service.
        pending = [(svc, uid, nodes) for svc, uid, nodes in announce
                   if uid not in self._announcing and self._needs_announce(svc, uid, nodes)]
        if pending:
            self._announcing.update(uid for _, uid, _ in pending)
            task = asyncio.get_running_loop().create_task(self._announce_all(pending))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # -- who announces -----------------------------------------------------

    def _needs_announce(self, svc: Mapping[str, Any], uid: str, nodes: tuple[str, ...]) -> bool:
        if self._announced.get(uid, ()) != nodes and nodes:
            return True
        return not self._annotation_current(svc, uid, nodes)

    def _annotation_current(self, svc: Mapping[str, Any], uid: str, nodes: tuple[str, ...]) -> bool:
        value = ",".join(nodes)
        current = _map(_map(svc.get("metadata")).get("annotations")).get(ANNOUNCING_ANNOTATION)
        if current == value or (current is None and not nodes):
            self._annotating.pop(uid, None)
            return True
        # Our own patch may not be back through the watch yet (the status write in
        # between changes the resourceVersion too): do not write twice.
        return self._annotating.get(uid) == value

    async def _announce_all(self, pending: list[tuple[Mapping[str, Any], str, tuple[str, ...]]]) -> None:
        sem = asyncio.Semaphore(max(1, self.write_concurrency // 2))
        todo = iter(pending)

        async def worker() -> None:
            # A few workers over the list, not one task per Service: 5,000 at
            # once cost ~35 MiB of coroutines for work that is rate-bound anyway.
            for svc, uid, nodes in todo:
                try:
                    await self._announce(svc, uid, nodes, sem)
                finally:
                    self._announcing.discard(uid)

        try:
            await asyncio.gather(*(worker() for _ in range(max(1, self.write_concurrency // 2))))
        finally:
            self._announcing.difference_update(uid for _, uid, _ in pending)

    async def _announce(self, svc: Mapping[str, Any], uid: str, nodes: tuple[str, ...],
                        sem: asyncio.Semaphore) -> None:
        from lbd.sources.kube_client import ApiError

        meta = svc["metadata"]
        before = self._announced.get(uid, ())
        if nodes and before != nodes:
            self._announced[uid] = nodes
            # One Event per node that starts announcing, as each MetalLB speaker writes its own.
            for node in nodes:
                if node not in before:
                    await self._event(svc, NODE_ASSIGNED, f"announcing from node \"{node}\" with protocol "
                                      f"\"layer2\"", sem, kind="Normal")
        if self._annotation_current(svc, uid, nodes):
            return
        value = ",".join(nodes)
        self._annotating[uid] = value
        patch = {"metadata": {"annotations": {ANNOUNCING_ANNOTATION: value or None}}}
        try:
            async with sem:
                await self.client.request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/services/{meta['name']}",
                                          body=patch, content_type="application/merge-patch+json")
            self.announce_writes += 1
            self._write_health("annotations", None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._annotating.pop(uid, None)
            if isinstance(exc, ApiError) and exc.code == 404:
                return
            self._write_health("annotations", exc, f"{meta['namespace']}/{meta['name']}")

    def _write_health(self, what: str, exc: BaseException | None, service: str = "") -> None:
        """Writes back to the API (status, Events, annotations) that fail for a reason an operator
        must fix (401, 403) make the source degraded, with that reason; the Services stay announced."""
        from lbd.sources.kube_client import ApiError

        key = f"write:{what}"
        if exc is None:
            if key in self._health:
                self._health.pop(key)
                self._report_health()
            return
        if isinstance(exc, ApiError) and exc.code in (401, 403):
            cause = describe_error(exc, what)
            if self._health.get(key) != cause:
                self._health[key] = cause
                self._report_health()
                self.log.error("kube_write_forbidden", what=what, service=service, error=cause)
        else:
            self.log.warning("kube_write_failed", what=what, service=service, error=repr(exc))

    def _up_to_date(self, svc: Mapping[str, Any], uid: str, desired: list[str]) -> bool:
        if ingress_ips(svc) == desired:
            self._written.pop(uid, None)
            return True
        # The store can lag our own write by one watch event: do not write twice.
        written = self._written.get(uid)
        return written is not None and written[0] == svc["metadata"].get("resourceVersion") and written[1] == desired

    async def _write(self, ns: str, name: str, uid: str, svc: Mapping[str, Any], desired: list[str],
                     sem: asyncio.Semaphore) -> None:
        from lbd.sources.kube_client import ApiError

        path = f"/api/v1/namespaces/{ns}/services/{name}/status"
        current: Mapping[str, Any] = svc
        self._inflight.add(uid)
        try:
            async with sem:
                for _ in range(4):
                    rv = current["metadata"].get("resourceVersion")
                    patch = {"metadata": {"resourceVersion": rv},
                             "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in desired]}}}
                    try:
                        await self.client.request("PATCH", path, body=patch,
                                                  content_type="application/merge-patch+json")
                    except ApiError as exc:
                        if exc.code == 409:  # stale resourceVersion: re-read, re-check, retry
                            current = await self.client.request("GET", f"/api/v1/namespaces/{ns}/services/{name}")
                            if current["metadata"].get("uid") != uid or ingress_ips(current) == desired:
                                return
                            continue
                        if exc.code == 404:
                            return
                        raise
                    self._written[uid] = (str(svc["metadata"].get("resourceVersion")), desired)
                    self.status_writes += 1
                    self._write_health("status", None)
                    self.log.info("kube_status_written", service=f"{ns}/{name}", ingress=desired)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # retried on the next report
            self._write_health("status", exc, f"{ns}/{name}")
        finally:
            self._inflight.discard(uid)

    async def _event(self, svc: Mapping[str, Any], reason: str, message: str, sem: asyncio.Semaphore,
                     kind: str = "Warning") -> None:
        meta = svc["metadata"]
        uid = meta.get("uid", "")
        key = (uid, reason, message)
        if reason not in ("AllocationFailed", NODE_ASSIGNED):  # these two are deduplicated by their callers
            if key in self._evented:
                return
            self._evented.add(key)
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Service", "namespace": meta["namespace"],
                               "name": meta["name"], "uid": uid, "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message, "type": kind, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "lbd", "host": self.context.node_name},
            "reportingComponent": "lbd", "reportingInstance": self.context.node_name,
        }
        try:
            async with sem:
                await self.client.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=event)
            self._write_health("events", None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._evented.discard(key)  # try again on the next report
            if reason == "AllocationFailed":
                self._failed.pop(uid, None)
            if reason == NODE_ASSIGNED:
                self._announced.pop(uid, None)
            self._write_health("events", exc, f"{meta['namespace']}/{meta['name']}")
