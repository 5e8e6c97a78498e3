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
- bearer-token auth (401 Status otherwise);
- ``stop()``/``start()`` on the same port, keeping or losing the watch history;
- plain HTTP, or HTTPS with a fresh self-signed certificate (``tls=True``;
  the kubeconfig then carries it as ``certificate-authority-data``).

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
    Resource("", "v1", "nodes", "Node", False, True),
    Resource("", "v1", "events", "Event", True, False),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, False),
    Resource("events.k8s.io", "v1", "events", "Event", True, False),
]
BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES if r.group != "events.k8s.io"}


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
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class ApiServerEmulator:
    def __init__(self, *, token: str | None = None, bookmark_interval: float = 1.0,
                 max_watch_seconds: float = 1800.0, tls: bool = False) -> None:
        self.token = token
        self.tls: tuple[bytes, bytes] | None = self_signed("127.0.0.1") if tls else None  # (cert, key) PEM
        self.bookmark_interval = bookmark_interval
        self.max_watch_seconds = max_watch_seconds
        self.rv = 1000
        self.objects: dict[Resource, dict[tuple[str, str], dict]] = {r: {} for r in RESOURCES}
        self.history: dict[Resource, list[tuple[int, str, dict]]] = {r: [] for r in RESOURCES}
        self.oldest_rv = self.rv  # watches from an rv before this get 410
        self.watchers: list[_Watcher] = []
        self.status_writes: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_status_writes_with_conflict = 0  # test hook: answer the next N status writes 409
        self.watch_delay = 0.0  # test hook: the watch cache lags writes by this many seconds
        self.garbage_watches = 0  # test hook: the next N watch streams send a non-JSON line and end
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
            if w.resource == r and (w.namespace is None or w.namespace == obj["metadata"].get("namespace")):
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
        self.objects[r][key] = new  # type: ignore[index]
        self._record(r, "MODIFIED", new)
        return copy.deepcopy(new)

    def patch(self, kind: str, namespace: str, name: str, patch: dict, *, subresource: str | None = None) -> dict:
        r = self.resource(kind)
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

    def delete(self, kind: str, namespace: str, name: str) -> dict:
        r = self.resource(kind)
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

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(status_obj(401, "Unauthorized", "Unauthorized"), status=401)
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0-lbd-emulator"})
        if parts == ["emulator", "compact"] and request.method == "POST":
            self.compact()
            return web.json_response({"resourceVersion": str(self.rv)})
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
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
        try:
            if name is None:
                if request.method == "GET":
                    if _true(request.query.get("watch")):
                        return await self._watch(request, r, namespace)
                    return web.json_response(self._list(r, namespace))
                if request.method == "POST":
                    body = await request.json()
                    if namespace is not None:
                        body.setdefault("metadata", {})["namespace"] = namespace
                    body.setdefault("apiVersion", r.api_version)
                    body.setdefault("kind", r.kind)
                    return web.json_response(self.create(body, r), status=201)
            else:
                key_ns = namespace or ""
                if request.method == "GET":
                    obj = self.objects[r].get((key_ns, name))
                    if obj is None:
                        raise KeyError(name)
                    return web.json_response(obj)
                if request.method == "DELETE":
                    return web.json_response(self.delete(r.kind, key_ns, name))
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
                    return web.json_response(self.patch(r.kind, key_ns, name, await request.json(), subresource=sub))
        except KeyError:
            return web.json_response(status_obj(404, "NotFound", f'{r.plural} "{name}" not found',
                                                name=name, kind=r.plural), status=404)
        except ConflictError:
            return web.json_response(status_obj(
                409, "Conflict", f'Operation cannot be fulfilled on {r.plural} "{name}": the object has been '
                                 "modified; please apply your changes to the latest version and try again",
                name=name, kind=r.plural), status=409)
        except (ValueError, json.JSONDecodeError) as exc:
            return web.json_response(status_obj(400, "BadRequest", str(exc)), status=400)
        return web.json_response(status_obj(405, "MethodNotAllowed", request.method), status=405)

    def _maybe_conflict(self, sub: str | None) -> None:
        if sub == "status" and self.fail_status_writes_with_conflict > 0:
            self.fail_status_writes_with_conflict -= 1
            raise ConflictError("injected")

    def _list(self, r: Resource, namespace: str | None) -> dict:
        items = [o for (ns, _), o in sorted(self.objects[r].items()) if namespace is None or ns == namespace]
        return {"kind": f"{r.kind}List", "apiVersion": r.api_version,
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    async def _watch(self, request: web.Request, r: Resource, namespace: str | None) -> web.StreamResponse:
        rv_text = request.query.get("resourceVersion", "")
        bookmarks = _true(request.query.get("allowWatchBookmarks"))
        timeout = min(float(request.query.get("timeoutSeconds", self.max_watch_seconds)), self.max_watch_seconds)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if self.garbage_watches > 0:
            self.garbage_watches -= 1
            await resp.write(b'{"type": "ADDED", "object": {"metadata": \n[1, 2]\n')
            return resp

        async def send(kind: str, obj: dict) -> None:
            await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        initial: list[tuple[str, dict]] = []
        if rv_text in ("", "0"):
            initial = [("ADDED", copy.deepcopy(o)) for (ns, _), o in sorted(self.objects[r].items())
                       if namespace is None or ns == namespace]
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
                       if rv > since and (namespace is None or o["metadata"].get("namespace") == namespace)]
        watcher = _Watcher(r, namespace)
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


def write_kubeconfig(path: str | Path, server: str, token: str | None, ca_pem: bytes | None = None) -> Path:
    user: dict[str, Any] = {"token": token} if token else {}
    cluster: dict[str, Any] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": cluster}],
        "users": [{"name": "tester", "user": user}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
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
    try:
        asyncio.run(_main(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
