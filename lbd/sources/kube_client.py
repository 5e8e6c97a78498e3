"""A small Kubernetes REST client: credentials, list, watch, patch, create.

Why not lightkube or kubernetes_asyncio (both install here): the source needs
exactly list + watch with ``resourceVersion``/``allowWatchBookmarks``, a
re-list on 410 that does not look like churn, and conditional status patches,
and it must keep its store across errors. Both libraries wrap these in their
own retry/re-list logic (lightkube's watch re-lists and replays silently;
kubernetes_asyncio's ``Watch`` hides bookmarks and raises on 410 from deep
inside generated code), and the generated models of kubernetes_asyncio cost
~10x the memory of plain dicts for 5,000 Services. So this is a ~300-line
client on aiohttp (the ``lbd[kubernetes]`` extra) that speaks the documented
API (https://kubernetes.io/docs/reference/using-api/api-concepts/) directly,
which also makes every step visible to the emulator in the tests.

Supported credentials: kubeconfig (token, tokenFile, client certificate and
key as files or ``-data``, CA as file or ``-data``, ``insecure-skip-tls-verify``)
and in-cluster service-account credentials. ``exec`` and ``auth-provider``
plugins are not supported (the error says so).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import aiohttp
import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(ValueError):
    """Kubeconfig or in-cluster credentials that cannot be used."""


class ApiError(Exception):
    """The API server answered with an error status (a Status object)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


@dataclass
class Credentials:
    server: str
    token: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


def _materialize(data_b64: str, suffix: str) -> str:
    """Write ``*-data`` material to a private temp file (ssl wants paths)."""
    raw = base64.b64decode(data_b64)
    fd, name = tempfile.mkstemp(prefix="lbd-kube-", suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    return name


def load_kubeconfig(path: str | os.PathLike[str], context: str | None = None) -> Credentials:
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise KubeConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise KubeConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise KubeConfigError(f"{p}: not a kubeconfig (expected a mapping)")

    def named(section: str, name: str) -> dict:
        for item in doc.get(section) or []:
            if isinstance(item, dict) and item.get("name") == name:
                inner = item.get(section[:-1])
                if isinstance(inner, dict):
                    return inner
        raise KubeConfigError(f"{p}: {section}: no entry named {name!r}")

    ctx_name = context or doc.get("current-context")
    if not ctx_name:
        raise KubeConfigError(f"{p}: no current-context and no context configured")
    ctx = named("contexts", ctx_name)
    cluster = named("clusters", str(ctx.get("cluster")))
    user = named("users", str(ctx.get("user"))) if ctx.get("user") else {}
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("http://", "https://")):
        raise KubeConfigError(f"{p}: cluster {ctx.get('cluster')!r}: server must be an http(s) URL")
    base = p.parent

    def rel(value: Any) -> str | None:
        return None if not value else str(value if os.path.isabs(str(value)) else base / str(value))

    if "exec" in user or "auth-provider" in user:
        raise KubeConfigError(f"{p}: user {ctx.get('user')!r}: exec and auth-provider credentials are not "
                              "supported; use a token or a client certificate")
    creds = Credentials(server=server.rstrip("/"), insecure=bool(cluster.get("insecure-skip-tls-verify")))
    creds.ca_file = rel(cluster.get("certificate-authority"))
    if cluster.get("certificate-authority-data"):
        creds.ca_file = _materialize(cluster["certificate-authority-data"], ".crt")
    creds.token = user.get("token")
    creds.token_file = rel(user.get("tokenFile"))
    creds.cert_file = rel(user.get("client-certificate"))
    creds.key_file = rel(user.get("client-key"))
    if user.get("client-certificate-data"):
        creds.cert_file = _materialize(user["client-certificate-data"], ".crt")
    if user.get("client-key-data"):
        creds.key_file = _materialize(user["client-key-data"], ".key")
    return creds


def in_cluster() -> Credentials:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError("not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set")
    if not (SA_DIR / "token").exists():
        raise KubeConfigError(f"not in a cluster: {SA_DIR / 'token'} does not exist")
    host = f"[{host}]" if ":" in host else host
    return Credentials(server=f"https://{host}:{port}", token_file=str(SA_DIR / "token"),
                       ca_file=str(SA_DIR / "ca.crt"))


class KubeClient:
    def __init__(self, creds: Credentials, *, user_agent: str = "lbd") -> None:
        self.creds = creds
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = creds.token
        self._token_read = 0.0

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.creds.server.startswith("https://"):
            return False
        ctx = ssl.create_default_context(cafile=self.creds.ca_file)
        if self.creds.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.creds.cert_file:
            ctx.load_cert_chain(self.creds.cert_file, self.creds.key_file)
        return ctx

    def _headers(self) -> dict[str, str]:
        # Bound service-account tokens rotate (about hourly): re-read the file each minute.
        if self.creds.token_file and time.monotonic() - self._token_read > 60:
            try:
                self._token = Path(self.creds.token_file).read_text().strip()
                self._token_read = time.monotonic()
            except OSError:
                pass
        headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=32)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    async def _raise_for(resp: aiohttp.ClientResponse) -> None:
        if resp.status < 400:
            return
        text = await resp.text()
        try:
            status = json.loads(text)
            raise ApiError(resp.status, str(status.get("reason", "")), str(status.get("message", text)))
        except (ValueError, AttributeError):
            raise ApiError(resp.status, resp.reason or "", text[:200]) from None

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json",
                      timeout: float = 30.0) -> dict:
        headers = self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        async with self.session().request(method, self.creds.server + path, params=params, data=data,
                                          headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            await self._raise_for(resp)
            result = await resp.json(content_type=None)
            if not isinstance(result, dict):
                raise ApiError(resp.status, "BadResponse", "expected a JSON object")
            return result

    async def watch(self, path: str, params: Mapping[str, str], *, timeout: float) -> AsyncIterator[dict]:
        """Watch events as dicts, one per JSON line of the chunked response.

        ``timeout`` bounds silence on the stream (bookmarks and the server's
        own timeoutSeconds keep a healthy watch talking) so a half-dead TCP
        connection is noticed.
        """
        ct = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout)
        async with self.session().get(self.creds.server + path, params=dict(params), headers=self._headers(),
                                      timeout=ct) as resp:
            await self._raise_for(resp)
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        event = json.loads(line)
                        if not isinstance(event, dict):
                            raise ApiError(200, "BadWatchEvent", "a watch event is not a JSON object")
                        yield event
            if buf.strip():
                yield json.loads(buf)
