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
    metallb_resources = true                  # live mode: MetalLB's resources are configuration too
    metallb_namespace = "metallb-system"      # ... read from this namespace (MetalLB's)

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

Live mode (``metallb_resources = true``, off by default): the source also lists and
watches, in ``metallb_namespace``, MetalLB's IPAddressPool, L2Advertisement,
BGPAdvertisement, BGPPeer (v1beta2 when the API serves it, else v1beta1), BFDProfile and
Community, and hands the complete set to the daemon (``SourceContext.apply_config``) each
time it changes, before it publishes Services: the daemon converts them as ``lbd import
metallb`` does, merges them into the file's configuration and applies the result through
its reload path (docs/sources.md, "Live mode"). An invalid or refused change keeps the
running config; the source is degraded and posts a Warning Event (``InvalidConfiguration``,
or ``ReaddressRefused``) on each resource the errors are about; a field with no lbd
equivalent is a Warning Event ``NotConverted`` on its resource. Secrets are never read: a
BGPPeer's ``passwordSecret`` becomes ``password_file = "/etc/lbd/bgp-passwords/<peer>"``,
a file each node provides, as with the importer.

When a pool of the running config has ``namespace_selectors``, the source also watches
Namespaces and gives each Service its namespace's labels (they win over ``[[namespace]]``
tables, which remain for the other sources).
"""

from __future__ import annotations

import asyncio
import datetime
import os
from dataclasses import dataclass, replace
from pathlib import Path
from functools import partial
from typing import Any, Awaitable, Callable, Iterable, Mapping

from lbd.config.schema import SourceConfig
from lbd.model import ServiceSpec
from lbd.sources.base import ConfigOutcome, Publish, ServiceResult, Source, SourceContext
from lbd.sources.kube_informer import Informer, describe_error
from lbd.sources.kube_translate import (
    DEFAULT_CLASS,
    NODE_SHAPE,
    SERVICE_SHAPE,
    SLICE_SHAPE,
    ClassFilter,
    ServiceError,
    backends_by_service,
    deprecated_annotations,
    ingress_ips,
    json_object,
    prune,
    ready_nodes_by_service,
    service_to_spec,
)
from lbd.sources.options import options_table

EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
OPTION_KEYS = ("kubeconfig", "context", "in_cluster", "load_balancer_class", "claim_unclassed",
               "ignore_exclude_lb", "watch_timeout", "write_concurrency", "forward", "namespaces",
               "metallb_resources", "metallb_namespace")
ANNOUNCING_ANNOTATION = "lbd.io/announcing-nodes"
# MetalLB's speaker: c.client.Infof(svc, "nodeAssigned", "announcing from node %q with protocol %q", ...)
NODE_ASSIGNED = "nodeAssigned"
METALLB_GROUP = "metallb.io"
# (plural, version): the configuration kinds live mode reads; BGPPeer's version is discovered.
METALLB_KINDS = (("ipaddresspools", "v1beta1"), ("l2advertisements", "v1beta1"), ("bgpadvertisements", "v1beta1"),
                 ("bfdprofiles", "v1beta1"), ("communities", "v1beta1"), ("bgppeers", None))
CONFIG_REASONS = {"rejected": "InvalidConfiguration", "refused": "ReaddressRefused",
                  "rolled_back": "ConfigurationNotApplied"}
NAMESPACE_CHECK = 1.0  # how often to look whether a pool now selects namespaces (a reload may add one)


def label_map(obj: Mapping[str, Any]) -> dict[str, str]:
    labels = json_object(json_object(obj.get("metadata")).get("labels"))
    return {str(k): str(v) for k, v in labels.items() if isinstance(v, str)}


def metallb_order(obj: Mapping[str, Any]) -> tuple[str, str]:
    """The order resources reach the converter: oldest first (pools are tried in that order)."""
    meta = json_object(obj.get("metadata"))
    return (str(meta.get("creationTimestamp", "")), str(meta.get("name", "")))


_NO_NODES: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _Entry:
    """One Service as the last snapshot mapped it; reused while rv and inputs are unchanged."""

    rv: Any
    ready: frozenset[str]
    value: ServiceSpec | ServiceError | None  # None: not ours (type, class)
    deprecated: list[str]


class KubernetesSource(Source):
    debounce = 0.05  # batch watch events (a rollout) into one snapshot; not the first, from complete lists

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
        t.boolean("metallb_resources", False)
        metallb_ns = t.string("metallb_namespace")
        if metallb_ns is not None and not metallb_ns:
            t.error("metallb_namespace", "must not be empty")
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
        self.metallb_resources = bool(o.get("metallb_resources", False))
        self.metallb_namespace = str(o.get("metallb_namespace") or "metallb-system")
        self.metallb: list[Informer] = []
        self.namespace_informer: Informer | None = None
        self.config_outcome: ConfigOutcome | None = None
        self.config_applies = 0
        self._announced: dict[str, tuple[str, ...]] = {}  # uid -> nodes a nodeAssigned Event was sent for
        self._annotating: dict[str, str] = {}  # uid -> annotation value written, not yet seen in the watch
        self._background: set[asyncio.Task] = set()
        self._announcing: set[str] = set()  # uids with an announcement write in flight
        # Set while no report is writing statuses: announcement workers wait for it
        # before each write, so a new Service's address never queues behind a burst of them.
        self._writes_idle = asyncio.Event()
        self._writes_idle.set()
        self.announce_writes = 0
        self.client: Any = None
        self.services: Informer | None = None
        self.slices: Informer | None = None
        self.nodes: Informer | None = None
        self._dirty = asyncio.Event()
        self._health: dict[str, str] = {}
        self._published: list[ServiceSpec] | None = None
        self.invalid: dict[str, str] = {}  # local name -> why it is not allocated
        self._spec_cache: dict[tuple[str, str], _Entry] = {}
        self._nodes_sig: Any = None
        self.deprecated: dict[str, list[str]] = {}  # local name -> old-prefix annotations in use
        self._evented: set[tuple[str, str, str]] = set()  # (uid, reason, message) already emitted
        self._written: dict[str, tuple[str, list[str]]] = {}  # uid -> (resourceVersion written over, ips)
        self._inflight: set[str] = set()
        # local name -> (the object, the result, uid) of a report that had nothing to do for it
        self._settled: dict[str, tuple[Mapping[str, Any], ServiceResult, str]] = {}
        self._failed: dict[str, str] = {}  # uid -> the allocation failure last reported
        self.status_writes = 0
        self.conflicts = 0  # status writes refused with 409 (stale resourceVersion) and retried
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

    def _informers(self) -> list[Informer]:
        """Services, EndpointSlices and Nodes: cluster-wide, or one informer per namespace of the filter."""

        def mk(path: str, shape: Any, store: dict | None = None, namespace: str | None = None) -> Informer:
            return Informer(self.client, path, on_change=self._dirty.set, on_health=self._on_health, log=self.log,
                            watch_timeout=self.watch_timeout, store=store, namespace=namespace,
                            trim=lambda obj: prune(obj, shape))

        self.nodes = mk("/api/v1/nodes", NODE_SHAPE)
        if not self.namespaces:
            self.services = mk("/api/v1/services", SERVICE_SHAPE)
            self.slices = mk("/apis/discovery.k8s.io/v1/endpointslices", SLICE_SHAPE)
            return [self.services, self.slices, self.nodes]
        # Only these namespaces: list/watch each (a namespaced Role is then enough
        # for Services and EndpointSlices); the stores are shared per resource.
        svc_store: dict = {}
        slice_store: dict = {}
        svcs = [mk(f"/api/v1/namespaces/{ns}/services", SERVICE_SHAPE, svc_store, ns) for ns in self.namespaces]
        slices = [mk(f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", SLICE_SHAPE, slice_store, ns)
                  for ns in self.namespaces]
        self.services, self.slices = svcs[0], slices[0]
        return [*svcs, *slices, self.nodes]

    async def run(self, publish: Publish) -> None:
        from lbd.sources.kube_client import KubeClient, KubeConfigError

        try:
            conn = self._credentials()
        except KubeConfigError as exc:
            self.log.error("kube_config_invalid", error=str(exc))
            self.context.set_error(f"bad kubeconfig: {exc}")
            raise
        self.client = KubeClient(conn, user_agent=f"lbd/{self.context.node_name}")
        # Full objects (no pruning) for what the converter and the namespace labels read.
        mk = lambda path: Informer(self.client, path, on_change=self._dirty.set, on_health=self._on_health,  # noqa: E731
                                   log=self.log, watch_timeout=self.watch_timeout)
        informers = self._informers()
        if self.metallb_resources:
            try:
                self.metallb = [mk(path) for path in await self._metallb_paths()]
            except BaseException:
                await self.client.close()  # raised before the loop's finally: close it here
                raise
        informers = [*informers, *self.metallb]
        tasks = [asyncio.create_task(i.run(), name=f"lbd-kube-{i.path}") for i in informers]
        applied: tuple | None = None  # the MetalLB resources last handed to the daemon
        try:
            while True:
                waiter = asyncio.create_task(self._dirty.wait())
                done, _ = await asyncio.wait([waiter, *tasks], timeout=NAMESPACE_CHECK,
                                             return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                for t in tasks:
                    if t in done:
                        t.result()  # an informer bug: raise so the manager restarts us
                if self.namespace_informer is None and self.context.pools_select_namespaces():
                    self.namespace_informer = mk("/api/v1/namespaces")
                    informers.append(self.namespace_informer)
                    tasks.append(asyncio.create_task(self.namespace_informer.run(), name="lbd-kube-namespaces"))
                if not self._dirty.is_set():
                    continue
                if self._published is not None or not all(i.synced for i in informers):
                    await asyncio.sleep(self.debounce)
                # else the first snapshot, every list complete: nothing to batch, publish now
                self._dirty.clear()
                if self.metallb and all(i.synced for i in self.metallb):
                    signature = self._metallb_signature()
                    if signature != applied:
                        applied = signature
                        await self._apply_metallb()
                        self._dirty.set()  # a pool may now select namespaces: look again first
                        continue
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

    # -- live mode: MetalLB's resources as configuration -------------------

    async def _metallb_paths(self) -> list[str]:
        """The list/watch path of each MetalLB kind in MetalLB's namespace. BGPPeer: v1beta2
        when the API serves it (MetalLB >= 0.14; the API converts v1beta1 peers to it),
        else v1beta1; both at once would read every peer twice."""
        from lbd.sources.kube_client import ApiError

        peers = "v1beta1"
        try:
            listing = await self.client.request("GET", f"/apis/{METALLB_GROUP}/v1beta2")
            if any(isinstance(r, dict) and r.get("name") == "bgppeers" for r in listing.get("resources") or []):
                peers = "v1beta2"
        except ApiError as exc:
            if exc.code != 404:
                raise
        ns = self.metallb_namespace
        return [f"/apis/{METALLB_GROUP}/{version or peers}/namespaces/{ns}/{plural}" for plural, version in METALLB_KINDS]

    def metallb_objects(self) -> list[dict]:
        out = []
        for informer in self.metallb:
            out.extend(sorted(informer.store.values(), key=metallb_order))
        return out

    def _metallb_signature(self) -> tuple:
        return tuple((i.path, k, json_object(o.get("metadata")).get("resourceVersion"))
                     for i in self.metallb for k, o in sorted(i.store.items()))

    async def _apply_metallb(self) -> None:
        """Hand the resources to the daemon; on a refusal, say so where operators look."""
        objects = self.metallb_objects()
        if self.context.apply_config is None:
            self._health["config"] = "metallb_resources: this daemon takes no configuration from sources"
            self._report_health()
            return
        outcome = await self.context.apply_config(objects, self.metallb_namespace)
        self.config_outcome = outcome
        self.config_applies += 1
        sem = asyncio.Semaphore(self.write_concurrency)
        if self.is_writer and self.client is not None and outcome.warnings:
            # As `lbd import metallb` warns: a field with no lbd equivalent is never dropped silently.
            await asyncio.gather(*(self._config_event(ref, "NotConverted", "; ".join(warnings), sem)
                                   for ref, warnings in outcome.warnings.items()))
        if outcome.result == "applied":
            if self._health.pop("config", None) is not None:
                self._report_health()
            return
        first = outcome.errors[0] if outcome.errors else ""
        more = f" (and {len(outcome.errors) - 1} more)" if len(outcome.errors) > 1 else ""
        self._health["config"] = f"MetalLB resources not applied ({outcome.result}), running config kept: {first}{more}"
        self._report_health()
        if self.is_writer and self.client is not None:
            reason = CONFIG_REASONS.get(outcome.result, "InvalidConfiguration")
            await asyncio.gather(*(self._config_event(ref, reason, "; ".join(errors), sem)
                                   for ref, errors in outcome.by_resource.items()))

    async def _config_event(self, ref: Any, reason: str, message: str, sem: asyncio.Semaphore) -> None:
        """A Warning Event whose involvedObject is a MetalLB resource (``ResourceRef``)."""
        key = (f"{ref.uid}@{ref.resource_version}", reason, message)
        if key in self._evented:
            return
        self._evented.add(key)
        event = self._event_body({"apiVersion": ref.api_version, "kind": ref.kind, "namespace": ref.namespace,
                                  "name": ref.name, "uid": ref.uid, "resourceVersion": ref.resource_version},
                                 reason, message[:1024], "Warning")
        if not await self._post_event(ref.namespace, event, sem, str(ref)):
            self._evented.discard(key)

    def snapshot(self) -> list[ServiceSpec]:
        assert self.services and self.slices and self.nodes
        all_nodes = frozenset(name for (_, name) in self.nodes.store)
        excluded = frozenset() if self.ignore_exclude else frozenset(
            name for (_, name), n in self.nodes.store.items()
            if EXCLUDE_LABEL in json_object(json_object(n.get("metadata")).get("labels")))
        ready = ready_nodes_by_service(self.slices.store)
        nodes_sig = (excluded, all_nodes if excluded else None)
        nodes_same = nodes_sig == self._nodes_sig  # once per snapshot, not once per Service
        self._nodes_sig = nodes_sig
        out: list[ServiceSpec] = []
        invalid: dict[str, str] = {}
        deprecated: dict[str, list[str]] = {}
        backends = backends_by_service(self.services.store, self.slices.store) if self.forward else {}
        cache: dict[tuple[str, str], _Entry] = {}
        old_cache = self._spec_cache
        for key in sorted(self.services.store):
            svc = self.services.store[key]
            # Each status write we make comes back as a MODIFIED event: a Service
            # whose object (resourceVersion) and inputs did not change reuses its
            # entry whole (filter, spec, old annotations), so the snapshot that a
            # burst of 5,000 write echoes asks for costs a lookup per Service
            # (it was ~30 ms of mapping each time, and the CPU the writes needed).
            rv = json_object(svc.get("metadata")).get("resourceVersion")
            ready_here = ready.get(key, _NO_NODES)
            hit = old_cache.get(key)
            if hit is not None and nodes_same and rv is not None and hit.rv == rv and hit.ready == ready_here:
                entry = hit
            else:
                entry = self._entry(svc, rv, frozenset(ready_here), all_nodes, excluded)
            cache[key] = entry
            value = entry.value
            if value is None:
                continue
            local = f"{key[0]}/{key[1]}"
            if entry.deprecated:
                deprecated[local] = entry.deprecated
            if isinstance(value, ServiceError):
                invalid[local] = str(value)
            elif self.forward:
                out.append(replace(value, backends=backends.get(key, ())))
            else:
                out.append(value)
        self._spec_cache = cache
        if self.namespace_informer is not None and self.namespace_informer.synced:
            # The API's labels win over [[namespace]] tables (lbd.ipam: a spec's own namespace_labels).
            labels = {name: label_map(obj) for (_, name), obj in self.namespace_informer.store.items()}
            out = [replace(spec, namespace_labels=labels.get(spec.namespace or "", {})) for spec in out]
        self.deprecated = deprecated
        for name, why in invalid.items():
            if self.invalid.get(name) != why:
                self.log.warning("kube_service_invalid", service=name, error=why)
        self.invalid = invalid
        return out

    def _entry(self, svc: Mapping[str, Any], rv: Any, ready_here: frozenset[str], all_nodes: frozenset[str],
               excluded: frozenset[str]) -> "_Entry":
        if not self.filter.wants(svc):
            return _Entry(rv, ready_here, None, [])
        value: ServiceSpec | ServiceError
        try:
            value = service_to_spec(svc, ready_nodes=ready_here, all_nodes=all_nodes, excluded=excluded)
        except ServiceError as exc:
            value = exc
        return _Entry(rv, ready_here, value, deprecated_annotations(json_object(svc.get("metadata"))))

    # -- results back to the API -----------------------------------------

    async def report(self, results: Mapping[str, ServiceResult]) -> None:
        if not self.is_writer or self.services is None or self.client is None:
            return
        sem = asyncio.Semaphore(self.write_concurrency)
        jobs: list[Callable[[], Awaitable[None]]] = []  # made into coroutines only as workers take them
        writes: list[str] = []
        announce = []
        quiet: dict[str, tuple[Mapping[str, Any], ServiceResult, str]] = {}  # nothing queued for these
        for local, result in results.items():
            ns, _, name = local.partition("/")
            svc = self.services.store.get((ns, name))
            if svc is None:
                continue
            prev = self._settled.get(local)
            if prev is not None and prev[0] is svc and prev[1] == result:
                # The same object (no watch event since) and the same result as a report that
                # found nothing to write or announce: still nothing. The daemon reports every
                # Service every pass; this keeps a pass at 5,000 from costing ~30 ms here.
                quiet[local] = prev
                continue
            queued = len(jobs)
            uid = svc["metadata"].get("uid", local)
            desired = [str(a) for a in result.addresses]
            if not result.addresses and result.pending:
                message = f"Failed to allocate IP for \"{local}\": {result.pending}"
                if self._failed.get(uid) != message:
                    self._failed[uid] = message
                    jobs.append(partial(self._event, svc, "AllocationFailed", message, sem))
            elif result.addresses:
                self._failed.pop(uid, None)
            if result.addresses:
                announce.append(((ns, name), uid, tuple(result.nodes)))
            if uid in self._inflight:
                continue
            if self._up_to_date(svc, uid, desired):
                if len(jobs) == queued:
                    quiet[local] = (svc, result, uid)
                continue
            # By key, not the object: the write reads the store when it runs (the newest
            # resourceVersion, fewer 409s), and 5,000 queued writes pin no old objects.
            writes.append(uid)
            jobs.append(partial(self._write, ns, name, uid, desired, sem))
        for local, why in self.invalid.items():
            ns, _, name = local.partition("/")
            svc = self.services.store.get((ns, name))
            if svc is not None:
                jobs.append(partial(self._event, svc, "InvalidService", why, sem))
        for local, keys in self.deprecated.items():
            ns, _, name = local.partition("/")
            svc = self.services.store.get((ns, name))
            if svc is not None:
                # MetalLB still reads the old prefix and warns the same way.
                jobs.append(partial(self._event, svc, "DeprecatedAnnotation", "deprecated annotations "
                                    + ", ".join(keys) + ": use the metallb.io/ prefix", sem))
        self._inflight.update(writes)
        if writes:
            self._writes_idle.clear()
        try:
            await drain(jobs, self.write_concurrency)
        finally:
            self._inflight.difference_update(writes)
            self._writes_idle.set()
        # Who announces: after the status writes, in the background, so that a
        # burst of owner changes never delays an address reaching a Service.
        store = self.services.store
        pending = [(key, uid, nodes) for key, uid, nodes in announce
                   if uid not in self._announcing and key in store and self._needs_announce(store[key], uid, nodes)]
        if pending:
            self._announcing.update(uid for _, uid, _ in pending)
            task = asyncio.get_running_loop().create_task(self._announce_all(pending))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        # Settled: written, announced, nothing in flight that could still fail and need a retry.
        self._settled = {local: v for local, v in quiet.items() if v[2] not in self._announcing}

    # -- who announces -----------------------------------------------------

    def _needs_announce(self, svc: Mapping[str, Any], uid: str, nodes: tuple[str, ...]) -> bool:
        if self._announced.get(uid, ()) != nodes and nodes:
            return True
        return not self._annotation_current(svc, uid, nodes)

    def _annotation_current(self, svc: Mapping[str, Any], uid: str, nodes: tuple[str, ...]) -> bool:
        value = ",".join(nodes)
        current = json_object(json_object(svc.get("metadata")).get("annotations")).get(ANNOUNCING_ANNOTATION)
        if current == value or (current is None and not nodes):
            self._annotating.pop(uid, None)
            return True
        # Our own patch may not be back through the watch yet (the status write in
        # between changes the resourceVersion too): do not write twice.
        return self._annotating.get(uid) == value

    async def _announce_all(self, pending: list[tuple[tuple[str, str], str, tuple[str, ...]]]) -> None:
        assert self.services is not None
        store = self.services.store
        sem = asyncio.Semaphore(max(1, self.write_concurrency // 2))

        async def one(key: tuple[str, str], uid: str, nodes: tuple[str, ...]) -> None:
            try:
                await self._writes_idle.wait()  # statuses first
                # The object as it is now (the status write in between replaced it).
                svc = store.get(key)
                if svc is not None and json_object(svc.get("metadata")).get("uid", uid) == uid:
                    await self._announce(svc, uid, nodes, sem)
            finally:
                self._announcing.discard(uid)

        try:
            # A few workers over the list, not one task per Service: 5,000 at
            # once cost ~35 MiB of coroutines for work that is rate-bound anyway.
            await drain([partial(one, *item) for item in pending], max(1, self.write_concurrency // 2))
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

    async def _write(self, ns: str, name: str, uid: str, desired: list[str], sem: asyncio.Semaphore) -> None:
        from lbd.sources.kube_client import ApiError

        assert self.services is not None
        path = f"/api/v1/namespaces/{ns}/services/{name}/status"
        current = self.services.store.get((ns, name))
        if current is None or current["metadata"].get("uid", uid) != uid or self._up_to_date(current, uid, desired):
            return  # deleted, replaced, or written since this write was queued
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
                            self.conflicts += 1
                            current = await self.client.request("GET", f"/api/v1/namespaces/{ns}/services/{name}")
                            if current["metadata"].get("uid") != uid or ingress_ips(current) == desired:
                                return
                            continue
                        if exc.code == 404:
                            return
                        raise
                    self._written[uid] = (str(rv), desired)
                    self.status_writes += 1
                    self._write_health("status", None)
                    self.log.info("kube_status_written", service=f"{ns}/{name}", ingress=desired)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # retried on the next report
            self._write_health("status", exc, f"{ns}/{name}")

    def _event_body(self, involved: Mapping[str, Any], reason: str, message: str, kind: str) -> dict[str, Any]:
        """A core/v1 Event about ``involved`` (a Service, or a MetalLB resource in live mode)."""
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": involved["namespace"]},
            "involvedObject": dict(involved),
            "reason": reason, "message": message, "type": kind, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "lbd", "host": self.context.node_name},
            "reportingComponent": "lbd", "reportingInstance": self.context.node_name,
        }

    async def _event(self, svc: Mapping[str, Any], reason: str, message: str, sem: asyncio.Semaphore,
                     kind: str = "Warning") -> None:
        meta = svc["metadata"]
        uid = meta.get("uid", "")
        key = (uid, reason, message)
        if reason not in ("AllocationFailed", NODE_ASSIGNED):  # these two are deduplicated by their callers
            if key in self._evented:
                return
            self._evented.add(key)
        event = self._event_body({"apiVersion": "v1", "kind": "Service", "namespace": meta["namespace"],
                                  "name": meta["name"], "uid": uid, "resourceVersion": meta.get("resourceVersion")},
                                 reason, message, kind)
        if not await self._post_event(meta["namespace"], event, sem, f"{meta['namespace']}/{meta['name']}"):
            self._evented.discard(key)  # try again on the next report
            if reason == "AllocationFailed":
                self._failed.pop(uid, None)
            if reason == NODE_ASSIGNED:
                self._announced.pop(uid, None)

    async def _post_event(self, namespace: str, event: Mapping[str, Any], sem: asyncio.Semaphore, about: str) -> bool:
        """POST one Event; False (the failure counted in the source's health) when it did not go."""
        try:
            async with sem:
                await self.client.request("POST", f"/api/v1/namespaces/{namespace}/events", body=event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._write_health("events", exc, about)
            return False
        self._write_health("events", None)
        return True


async def drain(jobs: Iterable[Callable[[], Awaitable[None]]], workers: int) -> None:
    """Run ``jobs`` with at most ``workers`` at a time; a job's coroutine exists only while it runs.

    ``asyncio.gather`` over 5,000 coroutines holds 5,000 frames (and what they
    reference) for the whole burst; the writes are rate-bound by the API server anyway.
    """
    todo = iter(jobs)

    async def worker() -> None:
        for job in todo:
            await job()

    await asyncio.gather(*(worker() for _ in range(max(1, workers))))
