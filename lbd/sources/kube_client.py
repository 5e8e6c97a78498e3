"""Kubernetes credentials and transport for the kubernetes source, on lightkube.

lightkube (the ``lbd[kubernetes]`` extra) does the kubeconfig plumbing:
kubeconfig and in-cluster models, and the TLS context (CA file or data,
client certificate and key as files or ``*-data``, which go to temp files it
deletes as soon as the context is built, ``insecure-skip-tls-verify``).
Requests go over aiohttp (see KubeClient for why not lightkube's httpx
client). lbd keeps plain-dict JSON
(no typed models: 5,000 Services stay small) and its own list/watch informer
(``lbd/sources/kubernetes.py``), so this module only turns a kubeconfig or an
in-cluster service account into an authenticated client and offers
``request`` and ``watch``. Why lightkube and not kubernetes_asyncio: see
docs/sources.md ("Client library"), with the figures.

Narrow fills where lightkube stops (each says so where it is done):

- more than one path in ``KUBECONFIG`` (merged as kubectl does: the first file
  that defines a name or ``current-context`` wins; relative paths stay
  relative to the file that wrote them);
- ``tls-server-name`` (SNI and verification name) and ``proxy-url`` (read from
  the raw cluster entry: lightkube's model drops them);
- bearer tokens, and token files re-read when the file changes and after a 401 (a rotated
  service-account token is used at once; no clock involved, so nothing waits
  for the host's uptime);
- ``exec`` plugins (lightkube's run only with its httpx client and know
  v1beta1 only): ``client.authentication.k8s.io/v1`` too, the
  ``KUBERNETES_EXEC_INFO`` variable, and ``expirationTimestamp`` honoured
  (cached until then, else until a 401);
- a client certificate, key or CA file rotated on disk is picked up: the HTTP
  client is rebuilt when one of them changes (open watches reconnect).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# etcd refuses objects over 1.5 MiB; a watch event is one object plus a few
# bytes. A line past this is hostile or broken: the watch is dropped and
# retried rather than buffered (an 80 MiB line once grew the daemon by 280 MB).
MAX_WATCH_LINE = 8 * 1024 * 1024
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1",
                     "client.authentication.k8s.io/v1alpha1")


class KubeConfigError(ValueError):
    """Kubeconfig or in-cluster credentials that cannot be used."""


class ApiError(Exception):
    """The API server answered with an error status (a Status object)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class WatchStreamError(ValueError):
    """A watch stream that is not a sequence of bounded JSON-object lines."""


class Unreachable(OSError):
    """The API server could not be reached (connect, TLS, proxy, read timeout)."""


@dataclass
class Connection:
    """Everything needed to talk to one API server as one user."""

    server: str
    config: Any  # lightkube SingleConfig
    tls_server_name: str | None = None
    proxy: str | None = None
    origin: str = ""  # where the credentials came from, for error messages
    files: tuple[str, ...] = field(default=())  # cert/key/CA files watched for rotation


def _abs(value: Any, base: Path) -> Any:
    if isinstance(value, str) and value and not os.path.isabs(value):
        return str(base / value)
    return value


_PATH_KEYS = {"cluster": ("certificate-authority",), "user": ("client-certificate", "client-key", "tokenFile")}


def merge_kubeconfigs(paths: list[str]) -> dict:
    """kubectl's merge of several kubeconfig files (first definition of a name wins)."""
    merged: dict[str, Any] = {"clusters": [], "contexts": [], "users": []}
    seen: dict[str, set[str]] = {k: set() for k in merged}
    found = False
    for raw in paths:
        if not raw:
            continue
        p = Path(raw).expanduser()
        try:
            doc = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            continue  # kubectl skips missing files in KUBECONFIG
        except OSError as exc:
            raise KubeConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise KubeConfigError(f"{p}: not valid YAML: {exc}") from None
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise KubeConfigError(f"{p}: not a kubeconfig (expected a mapping)")
        found = True
        if doc.get("current-context") and "current-context" not in merged:
            merged["current-context"] = doc["current-context"]
        for section in ("clusters", "contexts", "users"):
            entries = doc.get(section) or []
            if not isinstance(entries, list):
                raise KubeConfigError(f"{p}: {section} must be a list")
            for item in entries:
                if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                    raise KubeConfigError(f"{p}: {section}: an entry without a name")
                if item["name"] in seen[section]:
                    continue
                seen[section].add(item["name"])
                item = dict(item)
                inner_key = section[:-1]
                inner = item.get(inner_key)
                if inner is not None and not isinstance(inner, dict):
                    raise KubeConfigError(f"{p}: {section}: {item['name']!r} is not a mapping")
                inner = dict(inner or {})
                for key in _PATH_KEYS.get(inner_key, ()):
                    inner[key] = _abs(inner.get(key), p.parent)
                if inner_key == "user" and isinstance(inner.get("exec"), dict):
                    cmd = inner["exec"].get("command")
                    # kubectl: a command with a slash is relative to the kubeconfig's directory.
                    if isinstance(cmd, str) and "/" in cmd:
                        inner["exec"] = {**inner["exec"], "command": _abs(cmd, p.parent)}
                item[inner_key] = {k: v for k, v in inner.items() if v is not None}
                merged[section].append(item)
    if not found:
        raise KubeConfigError(f"no kubeconfig found at {os.pathsep.join(paths)}")
    return merged


def load_kubeconfig(paths: str | os.PathLike[str] | list[str], context: str | None = None) -> Connection:
    from lightkube import ConfigError, KubeConfig

    path_list = [str(paths)] if not isinstance(paths, list) else [str(p) for p in paths]
    origin = os.pathsep.join(path_list)
    doc = merge_kubeconfigs(path_list)
    ctx_name = context or doc.get("current-context")
    if not ctx_name:
        raise KubeConfigError(f"{origin}: no current-context and no context configured")

    def named(section: str, name: Any) -> dict:
        for item in doc[section]:
            if item["name"] == name:
                return item[section[:-1]]
        raise KubeConfigError(f"{origin}: {section}: no entry named {name!r}")

    ctx = named("contexts", ctx_name)
    cluster = named("clusters", ctx.get("cluster"))
    user = named("users", ctx.get("user")) if ctx.get("user") else {}
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("http://", "https://")):
        raise KubeConfigError(f"{origin}: cluster {ctx.get('cluster')!r}: server must be an http(s) URL")
    if "auth-provider" in user:
        raise KubeConfigError(f"{origin}: user {ctx.get('user')!r}: auth-provider credentials (removed from "
                              "kubectl in 1.26) are not supported; use an exec plugin, a token or a client "
                              "certificate")
    exec_cfg = user.get("exec")
    if exec_cfg is not None and (not isinstance(exec_cfg, dict) or exec_cfg.get("apiVersion") not in EXEC_API_VERSIONS
                                 or not isinstance(exec_cfg.get("command"), str)):
        raise KubeConfigError(f"{origin}: user {ctx.get('user')!r}: exec needs a command and an apiVersion "
                              f"of {', '.join(EXEC_API_VERSIONS)}")
    # Only the chosen context's entries: an unused broken user elsewhere must not matter (kubectl ignores it).
    one = {"current-context": ctx_name,
           "contexts": [{"name": ctx_name, "context": ctx}],
           "clusters": [{"name": ctx.get("cluster"), "cluster": cluster}],
           "users": [{"name": ctx.get("user"), "user": user}] if ctx.get("user") else []}
    try:
        kc = KubeConfig.from_dict(one, fname=path_list[0])
        single = kc.get(ctx_name)
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise KubeConfigError(f"{origin}: {type(exc).__name__}: {exc}") from None
    files = tuple(f for f in (cluster.get("certificate-authority"), user.get("client-certificate"),
                              user.get("client-key")) if isinstance(f, str))
    for f in files:
        if not os.path.isfile(f):
            raise KubeConfigError(f"{origin}: {f} does not exist")
    tls_name = cluster.get("tls-server-name")
    proxy = cluster.get("proxy-url")
    return Connection(server=server.rstrip("/"), config=single,
                      tls_server_name=tls_name if isinstance(tls_name, str) else None,
                      proxy=proxy if isinstance(proxy, str) else None,
                      origin=f"kubeconfig {origin} context {ctx_name!r}", files=files)


def in_cluster(sa_dir: Path | None = None, environ: Mapping[str, str] | None = None) -> Connection:
    from lightkube import KubeConfig
    from lightkube.config.models import Cluster, User

    sa_dir = SA_DIR if sa_dir is None else sa_dir
    environ = os.environ if environ is None else environ
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError("not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set")
    token, ca = sa_dir / "token", sa_dir / "ca.crt"
    for f in (token, ca):
        if not f.is_file():
            raise KubeConfigError(f"not in a cluster: {f} does not exist")
    host = f"[{host}]" if ":" in host else host
    server = f"https://{host}:{port}"
    # Not KubeConfig.from_service_account: it reads the token once into the
    # config and needs the namespace file; lbd re-reads the token file instead.
    kc = KubeConfig.from_one(cluster=Cluster(server=server, certificate_auth=str(ca)),
                             user=User(token_file=str(token)))
    return Connection(server=server, config=kc.get(), origin=f"in-cluster service account {sa_dir}",
                      files=(str(ca),))


def _file_sig(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class TokenFileAuth:
    """A bearer token from a file, re-read whenever the file changes and after a 401.

    lightkube re-reads only after a 401; checking the file's identity on each
    request (a stat) uses a rotated token at once. There is no clock in it, so
    it cannot wait on the host's uptime the way the old ``monotonic() - 0.0 >
    60`` check did.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.sig: tuple[int, int, int] | None = None
        self.bearer: str | None = None
        self.reads = 0

    def _load(self, force: bool = False) -> None:
        sig = _file_sig(self.path)
        if force or self.bearer is None or sig != self.sig:
            try:
                self.bearer = "Bearer " + Path(self.path).read_text().strip()
            except OSError as exc:
                raise KubeConfigError(f"token file {self.path}: {exc.strerror or exc}") from None
            self.sig = sig
            self.reads += 1

    async def header(self) -> str | None:
        self._load()
        return self.bearer

    async def unauthorized(self) -> bool:
        old = self.bearer
        self._load(force=True)
        return self.bearer != old


class StaticAuth:
    def __init__(self, value: str | None) -> None:
        self.value = value

    async def header(self) -> str | None:
        return self.value

    async def unauthorized(self) -> bool:
        return False


class ExecAuth:
    """client-go's exec credential plugin: token cached until expirationTimestamp or a 401.

    lightkube's own ExecAuth knows only v1alpha1/v1beta1, sets no
    KUBERNETES_EXEC_INFO and ignores expirationTimestamp.
    """

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.bearer: str | None = None
        self.expiry: datetime.datetime | None = None
        self.runs = 0
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        if self.bearer is None:
            return False
        return self.expiry is None or datetime.datetime.now(datetime.timezone.utc) < self.expiry

    async def _run(self) -> None:
        spec = self.spec
        env = dict(os.environ)
        for item in spec.env or []:
            env[item.name] = item.value
        env["KUBERNETES_EXEC_INFO"] = json.dumps({"apiVersion": spec.apiVersion, "kind": "ExecCredential",
                                                  "spec": {"interactive": False}})
        try:
            proc = await asyncio.create_subprocess_exec(
                spec.command, *(spec.args or []), env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        except (OSError, asyncio.TimeoutError) as exc:
            raise KubeConfigError(f"exec plugin {spec.command}: {type(exc).__name__}: {exc}") from None
        if proc.returncode != 0:
            raise KubeConfigError(f"exec plugin {spec.command} exited {proc.returncode}: "
                                  f"{err.decode(errors='replace').strip()[:200]}")
        try:
            status = json.loads(out)["status"]
            token = status["token"]
            if not isinstance(token, str) or not token:
                raise TypeError("no token")
        except (ValueError, KeyError, TypeError) as exc:
            raise KubeConfigError(f"exec plugin {spec.command}: output is not an ExecCredential with a "
                                  f"status.token ({type(exc).__name__}: {exc}); client certificates from "
                                  "exec plugins are not supported") from None
        self.bearer = f"Bearer {token}"
        self.expiry = None
        expiry = status.get("expirationTimestamp")
        if isinstance(expiry, str):
            try:
                self.expiry = datetime.datetime.fromisoformat(expiry.replace("Z", "+00:00"))
            except ValueError:
                self.expiry = None
        self.runs += 1

    async def header(self) -> str | None:
        async with self._lock:  # one plugin run for a burst of requests
            if not self._fresh():
                await self._run()
        return self.bearer

    async def unauthorized(self) -> bool:
        async with self._lock:
            old = self.bearer
            await self._run()
            return self.bearer != old


def make_auth(user: Any) -> Any:
    if user is None:
        return StaticAuth(None)
    if user.token_file:
        return TokenFileAuth(user.token_file)
    if user.token:
        return StaticAuth(f"Bearer {user.token}")
    if user.exec:
        return ExecAuth(user.exec)
    if user.username and user.password:
        return StaticAuth(aiohttp_basic(user.username, user.password))
    return StaticAuth(None)


def aiohttp_basic(username: str, password: str) -> str:
    import aiohttp

    return aiohttp.BasicAuth(username, password).encode()


class KubeClient:
    """An authenticated HTTP client for one API server: JSON in, plain dicts out.

    The transport is aiohttp, not lightkube's httpx client: at 16 concurrent
    status writes httpx cost ~4x aiohttp's CPU per request here (1,000 GETs:
    6.4 s vs 1.6 s against the emulator), which would have tripled the time
    to write 5,000 statuses.
    """

    def __init__(self, conn: Connection, *, user_agent: str = "lbd", max_connections: int = 32) -> None:
        self.conn = conn
        self.user_agent = user_agent
        self.max_connections = max_connections
        self._session: Any = None
        self._sigs: tuple[Any, ...] = ()
        self.auth = make_auth(conn.config.user)
        self.rebuilds = 0

    def session(self) -> Any:
        """The aiohttp session, rebuilt when a certificate, key or CA file changed on disk."""
        import aiohttp
        from lightkube import ConfigError
        from lightkube.config.client_adapter import verify_cluster

        sigs = tuple(_file_sig(f) for f in self.conn.files)
        if self._session is not None and sigs == self._sigs and not self._session.closed:
            return self._session
        cfg = self.conn.config
        ssl_ctx: Any = False
        if self.conn.server.startswith("https://"):
            try:
                # lightkube: CA file or -data, client cert/key files or -data (its temp
                # files are deleted once loaded), insecure-skip-tls-verify.
                ssl_ctx = verify_cluster(cfg.cluster, cfg.user or _empty_user(), cfg.abs_file, trust_env=False)
            except (ConfigError, OSError, ValueError) as exc:
                raise KubeConfigError(f"{self.conn.origin}: TLS material: {type(exc).__name__}: {exc}") from None
            if cfg.cluster.insecure:
                ssl_ctx.check_hostname = False
                ssl_ctx.verify_mode = 0  # ssl.CERT_NONE
        old = self._session
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=self.max_connections),
            headers={"User-Agent": self.user_agent, "Accept": "application/json"}, trust_env=False)
        self._sigs = sigs
        if old is not None:
            self.rebuilds += 1
            # In-flight requests and watches on the old session end and are retried on the new one.
            asyncio.get_running_loop().create_task(old.close())
        return self._session

    def _kwargs(self) -> dict:
        kw: dict[str, Any] = {}
        if self.conn.tls_server_name:
            kw["server_hostname"] = self.conn.tls_server_name
        if self.conn.proxy:
            kw["proxy"] = self.conn.proxy
        return kw

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def _error(status: int, reason: str, body: bytes) -> ApiError:
        try:
            doc = json.loads(body)
            if isinstance(doc, dict):
                return ApiError(status, str(doc.get("reason", reason)), str(doc.get("message", ""))[:500])
        except ValueError:
            pass
        return ApiError(status, reason, body[:200].decode(errors="replace"))

    def _unreachable(self, exc: BaseException) -> Unreachable:
        detail = str(exc) or type(exc).__name__
        return Unreachable(f"cannot reach {self.conn.server}: {detail}")

    async def _send(self, method: str, path: str, *, timeout: Any, **kw: Any) -> Any:
        """One request, retried once with fresh credentials after a 401 (rotated token, expired exec token)."""
        import aiohttp

        for attempt in (0, 1):
            headers = dict(kw.pop("headers", None) or {})
            auth = await self.auth.header()
            if auth:
                headers["Authorization"] = auth
            try:
                resp = await self.session().request(method, self.conn.server + path, headers=headers,
                                                    timeout=timeout, **self._kwargs(), **kw)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise self._unreachable(exc) from None
            if resp.status == 401 and attempt == 0 and await self.auth.unauthorized():
                resp.release()
                kw["headers"] = headers
                continue
            return resp
        raise AssertionError("unreachable")

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json",
                      timeout: float = 30.0) -> dict:
        import aiohttp

        headers = {}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        resp = await self._send(method, path, params=params, data=data, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout))
        async with resp:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise self._unreachable(exc) from None
            if resp.status >= 400:
                raise self._error(resp.status, resp.reason or "", raw)
        try:
            result = json.loads(raw)
        except ValueError:
            raise ApiError(resp.status, "BadResponse", "the response is not JSON") from None
        if not isinstance(result, dict):
            raise ApiError(resp.status, "BadResponse", "expected a JSON object")
        return result

    async def watch(self, path: str, params: Mapping[str, str], *, timeout: float) -> AsyncIterator[dict]:
        """Watch events as dicts, one per JSON line of the chunked response.

        ``timeout`` bounds silence on the stream (bookmarks and the server's
        own timeoutSeconds keep a healthy watch talking) so a half-dead TCP
        connection is noticed. A line longer than MAX_WATCH_LINE ends the
        watch with WatchStreamError instead of being buffered.
        """
        import aiohttp

        resp = await self._send("GET", path, params=dict(params),
                                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout))
        async with resp:
            try:
                if resp.status >= 400:
                    raise self._error(resp.status, resp.reason or "", await resp.content.read(65536))
                buf = bytearray()
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    start = 0
                    while True:
                        nl = buf.find(b"\n", start)
                        if nl < 0:
                            break
                        line = bytes(buf[start:nl])
                        start = nl + 1
                        if line.strip():
                            yield _event(line)
                    del buf[:start]
                    if len(buf) > MAX_WATCH_LINE:
                        raise WatchStreamError(f"a watch line is longer than {MAX_WATCH_LINE} bytes")
                if buf.strip():
                    yield _event(bytes(buf))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise self._unreachable(exc) from None


def _event(line: bytes) -> dict:
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise WatchStreamError(f"a watch line is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise WatchStreamError("a watch event is not a JSON object")
    return event


def _empty_user() -> Any:
    from lightkube.config.models import User

    return User()
