"""A Kubernetes API server emulator for tests and benchmarks (no kube-apiserver here).

It follows the API semantics lbd's kubernetes source depends on, as documented
in https://kubernetes.io/docs/reference/using-api/api-concepts/:

- one global, increasing ``resourceVersion`` (etcd's revision) stamped on every
  write; lists carry ``metadata.resourceVersion``;
- ``?watch=true`` streams JSON lines over chunked encoding: ADDED, MODIFIED,
  DELETED, and BOOKMARK (only with ``allowWatchBookmarks=true``, carrying just
  ``metadata.resourceVersion``); ``resourceVersion`` "" or "0" starts with
  synthetic ADDED events for the current state; ``timeoutSeconds`` ends the
  stream cleanly;
- a ``resourceVersion`` older than the retained history gets one ERROR event
  holding a Status with code 410, reason "Expired" ("too old resource
  version"), like the real watch cache; ``compact()`` drops history;
- the ``/status`` subresource: PUT and PATCH (merge and strategic merge, both
  applied as RFC 7386 merge patches) change only ``.status``; the main
  resource ignores ``.status`` changes; a stale ``metadata.resourceVersion``
  in the body is a 409 Conflict Status;
- Events (core/v1) can be created (``generateName`` honoured) and listed;
- Namespaces, and MetalLB's configuration CRDs (``metallb.io``: IPAddressPool,
  L2Advertisement, BGPAdvertisement, BFDProfile, Community at v1beta1, BGPPeer at
  v1beta1 and v1beta2, each version its own store), namespaced, with discovery
  listing both versions (v1beta2 preferred) and the same list/watch semantics;
- what real clients need (kubectl 1.32 and the official Python client run
  against it in tests/k8s/test_real_clients.py): ``/version``, discovery,
  a minimal OpenAPI v3, Table responses for ``Accept: ...;as=Table``, label
  and field selectors, ``limit``/``continue``, Service defaulting, no-op
  writes that change nothing;
- lists at ``resourceVersion=0`` are served whole, ``limit`` ignored, as the
  API server's watch cache serves them (kube-apiserver's cacher,
  ``computeListLimit``: "the limit is ignored for requests that set RV == 0");
  with ``watch_cache = False`` (``--no-watch-cache``) they are paged like
  the others, as a server with its watch cache off pages them. A continue
  token can be expired (``expire_continue_tokens``): 410 Expired;
- auth: bearer tokens (token -> user), mTLS (``client_ca``; the certificate's
  CN is the user), RBAC (``rbac``: user -> ClusterRole rules, 403 Status worded
  like the API server's); 401 Status otherwise;
- test hooks for watch failures: HTTP 410/504, ERROR events, garbage, an
  endless line;
- ``stop()``/``start()`` on the same port, keeping or losing the watch history;
- plain HTTP, or HTTPS with a fresh self-signed certificate (``tls=True``)
  or one signed by a ``TestCA`` (``ca=``); the kubeconfig then carries the CA
  as ``certificate-authority-data``.

Objects are loaded from manifests shaped like ``kubectl get -o yaml`` output
(``kind: List`` and multi-document YAML accepted).

Standalone::

    python -m tests.kubeapi_emulator --port 6443 --manifests tests/k8s/manifests \\
        --token secret --kubeconfig /tmp/kubeconfig [--services 5000]

then point lbd's ``[[source]] type = "kubernetes" kubeconfig = "/tmp/kubeconfig"``
at it. ``POST /emulator/compact`` drops the watch history (clients re-list).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import datetime
import ipaddress
import json
import ssl
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web


@dataclass(frozen=True)
class Resource:
    group: str  # "" for core
    version: str
    plural: str
    kind: str
    namespaced: bool
    has_status: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES = [
    Resource("", "v1", "services", "Service", True, True),
    Resource("", "v1", "namespaces", "Namespace", False, True),
    Resource("", "v1", "endpoints", "Endpoints", True, False),
    Resource("", "v1", "nodes", "Node", False, True),
    Resource("", "v1", "events", "Event", True, False),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, False),
    Resource("events.k8s.io", "v1", "events", "Event", True, False),
    # MetalLB's configuration CRDs (metallb.io), namespaced, for the kubernetes source's live mode.
    # BGPPeer is served at v1beta1 and v1beta2; here each version has its own store (a real API
    # server converts one stored object between them: create a peer at the version you list).
    Resource("metallb.io", "v1beta1", "ipaddresspools", "IPAddressPool", True, True),
    Resource("metallb.io", "v1beta1", "l2advertisements", "L2Advertisement", True, False),
    Resource("metallb.io", "v1beta1", "bgpadvertisements", "BGPAdvertisement", True, False),
    Resource("metallb.io", "v1beta1", "bfdprofiles", "BFDProfile", True, False),
    Resource("metallb.io", "v1beta1", "communities", "Community", True, False),
    Resource("metallb.io", "v1beta1", "bgppeers", "BGPPeer", True, False),
    Resource("metallb.io", "v1beta2", "bgppeers", "BGPPeer", True, True),
]
SHORT_NAMES = {"services": "svc", "nodes": "no", "events": "ev", "endpoints": "ep", "namespaces": "ns"}
BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES if r.group != "events.k8s.io"}


def group_versions(group: str) -> list[str]:
    """A group's versions, the newest (preferred) first."""
    return sorted({r.version for r in RESOURCES if r.group == group}, reverse=True)


def status_obj(code: int, reason: str, message: str, **details: Any) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details, "code": code}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _true(value: str | None) -> bool:
    """Query booleans as the API server parses them (strconv.ParseBool: 1, t, true, True, TRUE)."""
    return value in ("1", "t", "T", "true", "True", "TRUE")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Watcher:
    resource: Resource
    namespace: str | None
    match: Any = None  # object -> bool (label and field selectors)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


# -- selectors (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/) --


class SelectorError(ValueError):
    pass


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b``)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [p.strip() for p in out if p.strip()]


def label_matcher(text: str) -> Any:
    """A label selector: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``."""
    import re

    tests = []
    for term in _split_top(text or ""):
        m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            tests.append(lambda lb, k=key, o=op, vs=values: (lb.get(k) in vs) if o == "in" else (lb.get(k) not in vs))
            continue
        m = re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)", term)
        if m:
            key, op, value = m.groups()
            tests.append(lambda lb, k=key, o=op, v=value: (lb.get(k) == v) if o != "!=" else (lb.get(k) != v))
            continue
        m = re.fullmatch(r"(!?)([\w./-]+)", term)
        if m:
            neg, key = m.groups()
            tests.append(lambda lb, k=key, n=bool(neg): (k in lb) != n)
            continue
        raise SelectorError(f"unable to parse requirement: {term!r}")
    return lambda obj: all(t((obj.get("metadata") or {}).get("labels") or {}) for t in tests)


def field_matcher(text: str) -> Any:
    """A field selector: dotted paths with ``=``, ``==``, ``!=`` (``involvedObject.name=web``)."""
    tests = []
    for term in _split_top(text or ""):
        for op in ("!=", "==", "="):
            if op in term:
                path, value = term.split(op, 1)
                break
        else:
            raise SelectorError(f"invalid field selector: {term!r}")

        def get(obj: Any, dotted: str = path.strip()) -> str:
            for part in dotted.split("."):
                obj = obj.get(part) if isinstance(obj, dict) else None
            return "" if obj is None else str(obj)

        tests.append(lambda o, g=get, v=value.strip(), neg=(op == "!="): (g(o) == v) != neg)
    return lambda obj: all(t(obj) for t in tests)


def openapi_v3(resources: list[Resource]) -> dict:
    """A minimal OpenAPI v3 document: one open schema per kind, tagged with its group/version/kind.

    Enough for kubectl's client-side validation (``--validate=strict`` needs a
    schema for the kind and accepts open objects); it is not the real schema.
    """
    obj = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    schemas = {}
    for r in resources:
        schemas[f"emulator.{r.group or 'core'}.{r.version}.{r.kind}"] = {
            "type": "object",
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": obj,
                           "spec": obj, "status": obj},
            "x-kubernetes-preserve-unknown-fields": True,
            "x-kubernetes-group-version-kind": [{"group": r.group, "version": r.version, "kind": r.kind}]}
    # Operations that take fieldValidation: kubectl then asks the server to
    # validate (fieldValidation=Strict) instead of needing OpenAPI v2.
    paths = {}
    for r in resources:
        prefix = f"/apis/{r.group}/{r.version}" if r.group else f"/api/{r.version}"
        ns = "/namespaces/{namespace}" if r.namespaced else ""
        gvk = {"group": r.group, "version": r.version, "kind": r.kind}
        op = {"x-kubernetes-group-version-kind": gvk, "responses": {"200": {"description": "OK"}},
              "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]}
        paths[f"{prefix}{ns}/{r.plural}"] = {"post": {**op, "x-kubernetes-action": "post"}}
        paths[f"{prefix}{ns}/{r.plural}/{{name}}"] = {"patch": {**op, "x-kubernetes-action": "patch"},
                                                       "put": {**op, "x-kubernetes-action": "put"}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0-lbd-emulator"},
            "paths": paths, "components": {"schemas": schemas}}


def _age(ts: str | None) -> str:
    try:
        then = datetime.datetime.strptime(str(ts), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "<unknown>"
    secs = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= 2 * size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


TABLE_COLUMNS = {
    "Service": ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age", "Selector"],
    "Event": ["Last Seen", "Type", "Reason", "Object", "Message"],
}


def table_cells(obj: dict) -> list[Any]:
    """The cells the API server's table convertor prints (pkg/printers/internalversion)."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    if obj.get("kind") == "Service":
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        ips = [i.get("ip") or i.get("hostname") for i in ingress if isinstance(i, dict)]
        external = ",".join(ips) if ips else ("<pending>" if spec.get("type") == "LoadBalancer" else "<none>")
        ports = ",".join(f"{p.get('port')}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/{p.get('protocol', 'TCP')}"
                         for p in spec.get("ports") or [] if isinstance(p, dict)) or "<none>"
        selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items())) or "<none>"
        return [meta.get("name"), spec.get("type"), spec.get("clusterIP", "<none>"), external, ports,
                _age(meta.get("creationTimestamp")), selector]
    if obj.get("kind") == "Event":
        io = obj.get("involvedObject") or {}
        return [_age(obj.get("lastTimestamp")), obj.get("type"), obj.get("reason"),
                f"{str(io.get('kind', '')).lower()}/{io.get('name')}", obj.get("message")]
    return [meta.get("name"), _age(meta.get("creationTimestamp"))]


def table(kind: str, objs: list[dict], meta: dict | None = None, columns: bool = True) -> dict:
    names = TABLE_COLUMNS.get(kind, ["Name", "Age"])
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta or {},
            "columnDefinitions": [{"name": n, "type": "string", "format": "name" if n == "Name" else "",
                                   "description": n, "priority": 1 if n == "Selector" else 0}
                                  for n in names] if columns else [],
            "rows": [{"cells": table_cells(o), "object": {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata")}}
                for o in objs]}


def wants_table(request: Any) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def forbidden_message(user: str, verb: str, r: Resource, sub: str | None, name: str | None,
                      namespace: str | None) -> str:
    """The API server's RBAC denial, word for word (k8s.io/apiserver forbidden.go)."""
    resource = r.plural + (f"/{sub}" if sub else "")
    subject = f'{r.plural} "{name}"' if name else r.plural
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return (f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
            f'in API group "{r.group}" {scope}')


def rbac_allows(rules: list[dict], verb: str, r: Resource, sub: str | None) -> bool:
    resource = r.plural + (f"/{sub}" if sub else "")
    for rule in rules:
        groups, resources, verbs = rule.get("apiGroups") or [], rule.get("resources") or [], rule.get("verbs") or []
        if (("*" in groups or r.group in groups) and ("*" in resources or resource in resources)
                and ("*" in verbs or verb in verbs)):
            return True
    return False


class ApiServerEmulator:
    def __init__(self, *, token: str | None = None, bookmark_interval: float = 1.0,
                 max_watch_seconds: float = 1800.0, tls: bool = False, ca: "TestCA | None" = None,
                 client_ca: bytes | None = None, tokens: dict[str, str] | None = None,
                 rbac: dict[str, list[dict]] | None = None) -> None:
        """``token``: one accepted bearer token (user "admin"); ``tokens``: token -> user name.
        ``client_ca`` (PEM): mTLS, a client certificate signed by it is required unless a
        bearer token authenticates (its CN is the user). ``rbac``: user -> ClusterRole rules;
        None allows everything, a user without rules gets 403 for everything.
        ``ca``: sign the serving certificate with this CA (else it is self-signed)."""
        self.token = token
        self.tokens: dict[str, str] = dict(tokens or {})
        if token is not None:
            self.tokens.setdefault(token, "admin")
        self.client_ca = client_ca
        self.rbac = rbac
        self.tls: tuple[bytes, bytes] | None = None  # (cert, key) PEM
        if ca is not None:
            self.tls = ca.issue("kube-apiserver", ips=["127.0.0.1"], dns=["kubernetes.default.svc", "localhost"],
                                server=True)
            self.ca_pem: bytes | None = ca.cert_pem
        elif tls or client_ca is not None:
            self.tls = self_signed("127.0.0.1")
            self.ca_pem = self.tls[0]
        else:
            self.ca_pem = None
        self.bookmark_interval = bookmark_interval
        self.max_watch_seconds = max_watch_seconds
        self.rv = 1000
        self.objects: dict[Resource, dict[tuple[str, str], dict]] = {r: {} for r in RESOURCES}
        self.history: dict[Resource, list[tuple[int, str, dict]]] = {r: [] for r in RESOURCES}
        self.oldest_rv = self.rv  # watches from an rv before this get 410
        self.watchers: list[_Watcher] = []
        self.status_writes: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str]] = []
        self.lists: list[tuple[str, dict[str, str]]] = []  # every list's path and query
        self.fail_status_writes_with_conflict = 0  # test hook: answer the next N status writes 409
        self.watch_delay = 0.0  # test hook: the watch cache lags writes by this many seconds
        self.garbage_watches = 0  # test hook: the next N watch streams send a non-JSON line and end
        self.watch_http_errors: list[int] = []  # test hook: the next watches answer this HTTP status (410, 504)
        self.watch_error_events: list[dict] = []  # test hook: the next watches send this ERROR Status and end
        self.huge_line_watches = 0  # test hook: the next N watches send an endless line (no newline)
        self.huge_line_mib = 80
        self.watch_cache = True  # lists at resourceVersion=0 ignore limit, as the watch cache serves them
        self.expire_continue_tokens = 0  # test hook: the next N lists with a continue token answer 410 Expired
        self.users_seen: list[str] = []
        self.denied: list[str] = []  # every 403 message sent
        self._cluster_ip = 0  # allocated from 10.97.0.0/16 (the synthetic services use 10.96.0.0/16)
        self._node_port = 30000
        self.port = 0
        self.host = "127.0.0.1"
        self._runner: web.AppRunner | None = None
        self._compact_on_start = False

    # -- lifecycle --------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    async def start(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        if self._compact_on_start:
            self.compact()
            self._compact_on_start = False
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        self.host = host
        site = web.TCPSite(self._runner, host, port if port is not None else self.port, reuse_address=True,
                           ssl_context=self._ssl_context())
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert.write_bytes(self.tls[0])
            key.write_bytes(self.tls[1])
            ctx.load_cert_chain(cert, key)
        if self.client_ca is not None:
            # Like kube-apiserver's --client-ca-file: a certificate is asked for and
            # verified when sent; requests without one must carry a token.
            ctx.verify_mode = ssl.CERT_OPTIONAL
            ctx.load_verify_locations(cadata=self.client_ca.decode())
        return ctx

    async def stop(self, *, keep_history: bool = True) -> None:
        """Stop serving (open watches are cut). Without history, every old rv gets 410 later."""
        for w in self.watchers:
            w.queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # A restarted API server without its watch cache: whatever happened up
        # to the restart is not replayable (compacted when it comes back).
        self._compact_on_start = not keep_history

    async def restart(self, *, keep_history: bool = True) -> None:
        await self.stop(keep_history=keep_history)
        await self.start(self.port, self.host)

    def compact(self) -> None:
        for r in RESOURCES:
            self.history[r].clear()
        self.oldest_rv = self.rv

    def _next_cluster_ip(self) -> int:
        self._cluster_ip += 1
        return self._cluster_ip

    def _next_node_port(self) -> int:
        self._node_port = 30000 + (self._node_port - 30000 + 1) % 2768
        return self._node_port

    # -- object store (also the tests' API) --------------------------------

    def _resource_of(self, obj: dict) -> Resource:
        r = BY_KIND.get((obj.get("apiVersion", ""), obj.get("kind", "")))
        if r is None:
            raise ValueError(f"unsupported kind {obj.get('apiVersion')}/{obj.get('kind')}")
        return r

    def _record(self, r: Resource, kind: str, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history[r].append((self.rv, kind, copy.deepcopy(obj)))
        for w in self.watchers:
            if (w.resource == r and (w.namespace is None or w.namespace == obj["metadata"].get("namespace"))
                    and (w.match is None or w.match(obj))):
                w.queue.put_nowait((self.rv, kind, copy.deepcopy(obj)))

    def create(self, obj: dict, resource: Resource | None = None) -> dict:
        r = resource or self._resource_of(obj)
        obj = copy.deepcopy(obj)
        obj.setdefault("apiVersion", r.api_version)
        obj.setdefault("kind", r.kind)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if r.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = (meta.get("namespace", ""), meta["name"])
        if key in self.objects[r]:
            raise KeyError(key)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        meta["generation"] = 1
        meta.pop("managedFields", None)
        if r.kind == "Service":
            default_service(obj, self)
        self.objects[r][key] = obj
        self._record(r, "ADDED", obj)
        return copy.deepcopy(obj)

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        r = self.resource(kind)
        obj = self.objects[r].get((namespace if r.namespaced else "", name))
        return copy.deepcopy(obj) if obj is not None else None

    def resource(self, kind: str) -> Resource:
        for r in RESOURCES:
            if r.kind == kind and r.group != "events.k8s.io":
                return r
        raise KeyError(kind)

    def update(self, obj: dict, *, subresource: str | None = None) -> dict:
        """Replace an object (or only its status); checks resourceVersion when given."""
        r = self._resource_of(obj) if "kind" in obj else self.resource("Service")
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", "default") if r.namespaced else "", meta.get("name"))
        current = self.objects[r].get(key)  # type: ignore[arg-type]
        if current is None:
            raise KeyError(key)
        want_rv = meta.get("resourceVersion")
        if want_rv and want_rv != current["metadata"]["resourceVersion"]:
            raise ConflictError(want_rv)
        new = copy.deepcopy(current)
        if subresource == "status":
            new["status"] = copy.deepcopy(obj.get("status") or {})
            self.status_writes[key] = self.status_writes.get(key, 0) + 1  # type: ignore[index]
        else:
            for k, v in obj.items():
                if k not in ("status", "metadata"):
                    new[k] = copy.deepcopy(v)
            for k in ("labels", "annotations"):
                if k in meta:
                    new["metadata"][k] = copy.deepcopy(meta[k])
            if new.get("spec") != current.get("spec"):
                new["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        if r.kind == "Service":
            default_service(new, self)
        if new == current:
            # A write that changes nothing is a no-op on the API server: same
            # resourceVersion, no watch event.
            return copy.deepcopy(current)
        self.objects[r][key] = new  # type: ignore[index]
        self._record(r, "MODIFIED", new)
        return copy.deepcopy(new)

    def patch(self, kind: str, namespace: str, name: str, patch: dict, *, subresource: str | None = None,
              resource: Resource | None = None) -> dict:
        r = resource or self.resource(kind)
        key = (namespace if r.namespaced else "", name)
        current = self.objects[r].get(key)
        if current is None:
            raise KeyError(key)
        want_rv = (patch.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != current["metadata"]["resourceVersion"]:
            raise ConflictError(want_rv)
        merged = merge_patch(current, patch)
        merged["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self.update(merged, subresource=subresource)

    def delete(self, kind: str, namespace: str, name: str, resource: Resource | None = None) -> dict:
        r = resource or self.resource(kind)
        obj = self.objects[r].pop((namespace if r.namespaced else "", name))
        self._record(r, "DELETED", obj)
        return copy.deepcopy(obj)

    def events(self) -> list[dict]:
        return [copy.deepcopy(o) for o in self.objects[self.resource("Event")].values()]

    def load_manifests(self, directory: str | Path) -> int:
        count = 0
        for path in sorted(Path(directory).iterdir()):
            if path.suffix not in (".yaml", ".yml", ".json"):
                continue
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc:
                    continue
                items = doc.get("items", []) if doc.get("kind", "").endswith("List") else [doc]
                for item in items:
                    self.create(item)
                    count += 1
        return count

    # -- HTTP -------------------------------------------------------------

    # -- authentication and authorization ---------------------------------

    def _user(self, request: web.Request) -> str | None:
        """The authenticated user, or None (401). Token first, then the client certificate."""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[7:] in self.tokens:
            return self.tokens[auth[7:]]
        if self.client_ca is not None and request.transport is not None:
            cert = request.transport.get_extra_info("peercert")  # only when verified against client_ca
            if cert:
                for rdn in cert.get("subject", ()):
                    for key, value in rdn:
                        if key == "commonName":
                            return str(value)
        if not self.tokens and self.client_ca is None:
            return "admin"  # no authentication configured
        return None

    def _allowed(self, user: str, verb: str, r: Resource, sub: str | None) -> bool:
        if self.rbac is None:
            return True
        return rbac_allows(self.rbac.get(user, []), verb, r, sub)

    # -- discovery ----------------------------------------------------------

    def _discovery(self, parts: list[str], request: web.Request) -> dict | None:
        groups: dict[str, list[Resource]] = {}
        for r in RESOURCES:
            groups.setdefault(r.group, []).append(r)

        def resource_list(group: str, version: str) -> dict:
            out = []
            for r in groups.get(group, []):
                if r.version != version:
                    continue
                verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
                entry = {"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                         "kind": r.kind, "verbs": verbs}
                short = SHORT_NAMES.get(r.plural)
                if short and group == "":
                    entry["shortNames"] = [short]
                if r.plural in ("services", "endpoints", "namespaces", "nodes") and group == "":
                    entry["categories"] = ["all"] if r.plural == "services" else []
                out.append(entry)
                if r.has_status:
                    out.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced,
                                "kind": r.kind, "verbs": ["get", "patch", "update"]})
            return {"kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": f"{group}/{version}" if group else version, "resources": out}

        def group_doc(group: str) -> dict:
            gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in group_versions(group)]
            return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": gvs, "preferredVersion": gvs[0]}

        if parts == ["openapi", "v3"]:
            # kubectl apply validates against OpenAPI v3 (falls back to v2; refuses without either).
            return {"paths": {(f"apis/{g}/{v}" if g else "api/v1"): {"serverRelativeURL": (
                f"/openapi/v3/apis/{g}/{v}" if g else "/openapi/v3/api/v1") + "?hash=emulator"}
                for g in groups for v in group_versions(g)}}
        if parts[:2] == ["openapi", "v3"]:
            gv = parts[2:]
            group = gv[1] if gv[:1] == ["apis"] and len(gv) == 3 else ("" if gv == ["api", "v1"] else None)
            if group is None or group not in groups:
                return None
            version = gv[2] if group else "v1"
            return openapi_v3([r for r in groups[group] if r.version == version])
        if parts == ["version"]:
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-lbd-emulator", "platform": "linux/amd64"}
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}]}
        if parts == ["api", "v1"]:
            return resource_list("", "v1")
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_doc(g) for g in groups if g]}
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups and parts[1]:
            return group_doc(parts[1])
        if len(parts) == 3 and parts[0] == "apis" and parts[1] in groups and parts[1] \
                and parts[2] in group_versions(parts[1]):
            return resource_list(parts[1], parts[2])
        return None

    # -- HTTP -------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        user = self._user(request)
        if user is None:
            return web.json_response(status_obj(401, "Unauthorized", "Unauthorized"), status=401)
        self.users_seen.append(user)
        parts = [p for p in request.path.split("/") if p]
        if parts == ["emulator", "compact"] and request.method == "POST":
            self.compact()
            return web.json_response({"resourceVersion": str(self.rv)})
        doc = self._discovery(parts, request) if request.method == "GET" else None
        if doc is not None:
            return web.json_response(doc)
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return web.json_response(status_obj(404, "NotFound", "the server could not find the requested resource"),
                                     status=404)
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        r = BY_PATH.get((group, version, rest[0] if rest else ""))
        if r is None or (namespace is not None and not r.namespaced):
            return web.json_response(status_obj(404, "NotFound", "the server could not find the requested resource"),
                                     status=404)
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) >= 3 else None
        if sub is not None and (sub != "status" or not r.has_status):
            return web.json_response(status_obj(404, "NotFound", f"no subresource {sub}"), status=404)
        watching = request.method == "GET" and _true(request.query.get("watch"))
        verb = {"GET": "watch" if watching else ("get" if name else "list"), "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete"}.get(request.method, request.method.lower())
        if not self._allowed(user, verb, r, sub):
            self.denied.append(forbidden_message(user, verb, r, sub, name, namespace))
            return web.json_response(status_obj(
                403, "Forbidden", self.denied[-1], name=name or "",
                group=r.group, kind=r.plural), status=403)
        try:
            if name is None:
                if request.method == "GET":
                    match = self._matcher(request)
                    if watching:
                        return await self._watch(request, r, namespace, match)
                    self.lists.append((request.path, dict(request.query)))
                    listed = self._list(r, namespace, match, request.query)
                    if wants_table(request):  # kubectl get: server-side printing
                        return web.json_response(table(r.kind, listed["items"], listed["metadata"]))
                    return web.json_response(listed)
                if request.method == "POST":
                    body = await request.json()
                    if namespace is not None:
                        body.setdefault("metadata", {})["namespace"] = namespace
                    body.setdefault("apiVersion", r.api_version)
                    body.setdefault("kind", r.kind)
                    try:
                        return web.json_response(self.create(body, r), status=201)
                    except KeyError:
                        n = body["metadata"].get("name")
                        return web.json_response(status_obj(409, "AlreadyExists", f'{r.plural} "{n}" already exists',
                                                            name=n, kind=r.plural), status=409)
            else:
                key_ns = namespace or ""
                if request.method == "GET":
                    obj = self.objects[r].get((key_ns, name))
                    if obj is None:
                        raise KeyError(name)
                    if wants_table(request):
                        return web.json_response(table(r.kind, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]}))
                    return web.json_response(obj)
                if request.method == "DELETE":
                    return web.json_response(self.delete(r.kind, key_ns, name, r))
                if request.method == "PUT":
                    body = await request.json()
                    body.setdefault("apiVersion", r.api_version)
                    body.setdefault("kind", r.kind)
                    body.setdefault("metadata", {}).update({"name": name, "namespace": key_ns})
                    self._maybe_conflict(sub)
                    return web.json_response(self.update(body, subresource=sub))
                if request.method == "PATCH":
                    ctype = request.content_type
                    if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                        return web.json_response(status_obj(415, "UnsupportedMediaType",
                                                            f"the emulator does not support {ctype}"), status=415)
                    self._maybe_conflict(sub)
                    return web.json_response(self.patch(r.kind, key_ns, name, await request.json(),
                                                               subresource=sub, resource=r))
        except KeyError:
            return web.json_response(status_obj(404, "NotFound", f'{r.plural} "{name}" not found',
                                                name=name, kind=r.plural), status=404)
        except ExpiredError as exc:
            return web.json_response(status_obj(410, "Expired", str(exc)), status=410)
        except ConflictError:
            return web.json_response(status_obj(
                409, "Conflict", f'Operation cannot be fulfilled on {r.plural} "{name}": the object has been '
                                 "modified; please apply your changes to the latest version and try again",
                name=name, kind=r.plural), status=409)
        except (ValueError, json.JSONDecodeError) as exc:
            return web.json_response(status_obj(400, "BadRequest", str(exc)), status=400)
        return web.json_response(status_obj(405, "MethodNotAllowed", request.method), status=405)

    @staticmethod
    def _matcher(request: web.Request) -> Any:
        labels = label_matcher(request.query.get("labelSelector", ""))
        fields = field_matcher(request.query.get("fieldSelector", ""))
        return lambda obj: labels(obj) and fields(obj)

    def _maybe_conflict(self, sub: str | None) -> None:
        if sub == "status" and self.fail_status_writes_with_conflict > 0:
            self.fail_status_writes_with_conflict -= 1
            raise ConflictError("injected")

    def _list(self, r: Resource, namespace: str | None, match: Any = None,
              query: Any = None) -> dict:
        """A list, filtered by selectors, paginated by ``limit``/``continue`` (opaque tokens, as documented)."""
        query = query or {}
        items = [o for (ns, _), o in sorted(self.objects[r].items())
                 if (namespace is None or ns == namespace) and (match is None or match(o))]
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        token = query.get("continue")
        if token and self.expire_continue_tokens > 0:
            self.expire_continue_tokens -= 1
            raise ExpiredError("The provided continue parameter is too old to display a consistent list result. "
                               "You can start a new list without the continue parameter.")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                after, meta["resourceVersion"] = tuple(state["after"]), state["rv"]
            except (ValueError, KeyError, TypeError):
                raise ValueError("continue key is not valid") from None
            items = [o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > after]
        limit = int(query.get("limit") or 0)
        if not token and self.watch_cache and query.get("resourceVersion") == "0":
            limit = 0  # served from the watch cache, which ignores limit at resourceVersion 0
        if limit > 0 and len(items) > limit:
            last = items[limit - 1]["metadata"]
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(
                {"after": [last.get("namespace", ""), last["name"]], "rv": meta["resourceVersion"]}).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {"kind": f"{r.kind}List", "apiVersion": r.api_version, "metadata": meta, "items": items}

    async def _watch(self, request: web.Request, r: Resource, namespace: str | None,
                     match: Any = None) -> web.StreamResponse:
        rv_text = request.query.get("resourceVersion", "")
        bookmarks = _true(request.query.get("allowWatchBookmarks"))
        timeout = min(float(request.query.get("timeoutSeconds", self.max_watch_seconds)), self.max_watch_seconds)
        if self.watch_http_errors:
            code = self.watch_http_errors.pop(0)
            reason = {410: "Expired", 504: "Timeout"}.get(code, "InternalError")
            message = {410: "too old resource version", 504: "Timeout: Too large resource version"}.get(code, "error")
            return web.json_response(status_obj(code, reason, message), status=code)
        match = match or (lambda obj: True)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if self.garbage_watches > 0:
            self.garbage_watches -= 1
            await resp.write(b'{"type": "ADDED", "object": {"metadata": \n[1, 2]\n')
            return resp
        if self.huge_line_watches > 0:
            self.huge_line_watches -= 1
            chunk = b'{"type": "ADDED", "object": {"metadata": {"name": "' + b"x" * (1024 * 1024)
            try:
                for _ in range(self.huge_line_mib):
                    await resp.write(chunk)
                    chunk = b"x" * (1024 * 1024)
            except (ConnectionResetError, RuntimeError):
                pass
            return resp

        as_table = wants_table(request)
        first = [True]

        async def send(kind: str, obj: dict) -> None:
            if as_table and kind in ("ADDED", "MODIFIED", "DELETED"):
                # Watch as Table (kubectl get -w): one row per event, columns in the first.
                obj = table(r.kind, [obj], {"resourceVersion": obj["metadata"].get("resourceVersion")}, first[0])
                first[0] = False
            await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        if self.watch_error_events:
            await send("ERROR", self.watch_error_events.pop(0))
            return resp
        initial: list[tuple[str, dict]] = []
        if rv_text in ("", "0"):
            initial = [("ADDED", copy.deepcopy(o)) for (ns, _), o in sorted(self.objects[r].items())
                       if (namespace is None or ns == namespace) and match(o)]
        else:
            try:
                since = int(rv_text)
            except ValueError:
                await send("ERROR", status_obj(400, "BadRequest", f"invalid resourceVersion {rv_text!r}"))
                return resp
            if since < self.oldest_rv:
                await send("ERROR", status_obj(410, "Expired",
                                               f"too old resource version: {since} ({self.oldest_rv})"))
                return resp
            initial = [(kind, copy.deepcopy(o)) for rv, kind, o in self.history[r]
                       if rv > since and (namespace is None or o["metadata"].get("namespace") == namespace)
                       and match(o)]
        watcher = _Watcher(r, namespace, match)
        self.watchers.append(watcher)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            for kind, obj in initial:
                await send(kind, obj)
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), min(remaining, self.bookmark_interval))
                except asyncio.TimeoutError:
                    if bookmarks and watcher.queue.empty():
                        await send("BOOKMARK", {"kind": r.kind, "apiVersion": r.api_version,
                                                "metadata": {"resourceVersion": str(self.rv)}})
                    continue
                if item is None:  # server stopping
                    break
                _, kind, obj = item
                if self.watch_delay:
                    await asyncio.sleep(self.watch_delay)
                await send(kind, obj)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.remove(watcher)
        try:
            await resp.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return resp


class ConflictError(Exception):
    pass


class ExpiredError(Exception):
    """410 Expired: a continue token too old to serve."""


def default_service(svc: dict, emu: "ApiServerEmulator") -> None:
    """The API server's defaulting and allocation for a Service (pkg/apis/core/v1/defaults.go,
    the ClusterIP and NodePort allocators, and LoadBalancerIPMode: ``ipMode: VIP`` for an ingress IP)."""
    spec = svc.setdefault("spec", {})
    kind = spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if kind != "ExternalName":
        if not spec.get("clusterIP"):
            spec["clusterIP"] = str(ipaddress.ip_address("10.97.0.0") + emu._next_cluster_ip())
        if spec["clusterIP"] != "None":
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
        if not spec.get("ipFamilies"):
            ip = spec["clusterIP"]
            spec["ipFamilies"] = ["IPv6" if ip != "None" and ":" in ip else "IPv4"]
        spec.setdefault("ipFamilyPolicy", "SingleStack" if len(spec["ipFamilies"]) == 1 else "RequireDualStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if kind in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if kind == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    for port in spec.get("ports") or []:
        if not isinstance(port, dict):
            continue
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
        if (kind == "NodePort" or (kind == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts"))) \
                and "nodePort" not in port:
            port["nodePort"] = emu._next_node_port()
    lb = svc.setdefault("status", {}).setdefault("loadBalancer", {})
    for ingress in lb.get("ingress") or []:
        if isinstance(ingress, dict) and ingress.get("ip"):
            ingress.setdefault("ipMode", "VIP")


class TestCA:
    """A certificate authority made by the test (cryptography): signs serving and client certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str = "lbd-test-ca") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))

    @property
    def cert_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn: str, *, org: str | None = None, ips: list[str] = (), dns: list[str] = (),
              server: bool = False, days: float = 1.0) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for ``cn`` (a user for client certificates, as kubeadm makes them)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
        builder = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(self.name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        names = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips] + [x509.DNSName(d) for d in dns]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def self_signed(ip: str) -> tuple[bytes, bytes]:
    """A self-signed serving certificate for ``ip`` (its own CA), as PEM (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver-emulator")])
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def write_kubeconfig(path: str | Path, server: str, token: str | None, ca_pem: bytes | None = None, *,
                     user: dict[str, Any] | None = None, cluster_extra: dict[str, Any] | None = None,
                     ca_file: str | None = None) -> Path:
    """A kubeconfig for the emulator. ``user`` replaces the token user entry (client-certificate,
    tokenFile, exec ...); ``ca_file`` names the CA as a file instead of ``-data``."""
    user_entry: dict[str, Any] = user if user is not None else ({"token": token} if token else {})
    cluster: dict[str, Any] = {"server": server, **(cluster_extra or {})}
    if ca_file is not None:
        cluster["certificate-authority"] = ca_file
    elif ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": cluster}],
        "users": [{"name": "tester", "user": user_entry}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                      "namespace": "default"}}],
    }
    p = Path(path)
    p.write_text(yaml.safe_dump(doc))
    return p


def synthetic_services(count: int, namespace: str = "bench") -> list[dict]:
    """``count`` LoadBalancer Services shaped like real ones (for benchmarks)."""
    out = []
    for i in range(count):
        out.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"svc-{i:05d}", "namespace": namespace, "labels": {"app": f"app-{i}"}},
            "spec": {"type": "LoadBalancer", "selector": {"app": f"app-{i}"}, "clusterIP": f"10.96.{i // 250}.{i % 250 + 1}",
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                     "externalTrafficPolicy": "Cluster", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "sessionAffinity": "None", "internalTrafficPolicy": "Cluster", "allocateLoadBalancerNodePorts": True},
            "status": {"loadBalancer": {}},
        })
    return out


async def _main(args: argparse.Namespace) -> None:
    emu = ApiServerEmulator(token=args.token, bookmark_interval=args.bookmark_interval, tls=args.tls)
    emu.watch_cache = not args.no_watch_cache
    if args.manifests:
        emu.load_manifests(args.manifests)
    for svc in synthetic_services(args.services):
        emu.create(svc)
    await emu.start(args.port, args.host)
    if args.kubeconfig:
        write_kubeconfig(args.kubeconfig, emu.url, args.token, emu.tls[0] if emu.tls else None)
    print(json.dumps({"url": emu.url, "resourceVersion": emu.rv}), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="Kubernetes API server emulator for lbd tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--manifests", help="directory of YAML/JSON manifests to serve")
    parser.add_argument("--token", help="require this bearer token")
    parser.add_argument("--kubeconfig", help="write a kubeconfig pointing at the emulator here")
    parser.add_argument("--services", type=int, default=0, help="add N synthetic LoadBalancer Services")
    parser.add_argument("--bookmark-interval", type=float, default=1.0)
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a fresh self-signed certificate")
    parser.add_argument("--no-watch-cache", action="store_true",
                        help="page lists at resourceVersion=0 too (an API server with its watch cache off)")
    try:
        asyncio.run(_main(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
