"""lbd's kubernetes source against the emulator in each auth mode, with each kubeconfig shape.

The emulator serves HTTPS with a certificate from a CA this test makes; it
accepts bearer tokens and client certificates signed by that CA (the user is
the certificate's CN, as kube-apiserver's x509 authenticator does).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("lightkube")
pytest.importorskip("aiohttp")

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from lbd.sources import kube_client  # noqa: E402
from tests.k8s.kube_harness import MANIFESTS, Runner  # noqa: E402
from tests.kubeapi_emulator import ApiServerEmulator, TestCA, write_kubeconfig  # noqa: E402

USER = "system:serviceaccount:lbd-system:lbd"
NEW_SERVICE = {"apiVersion": "v1", "kind": "Service",
               "spec": {"type": "LoadBalancer", "ports": [{"port": 443, "protocol": "TCP"}]}}


def new_service(name: str) -> dict:
    return {**NEW_SERVICE, "metadata": {"name": name, "namespace": "default"}}


@pytest.fixture
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
async def emu(ca):
    server = ApiServerEmulator(ca=ca, client_ca=ca.cert_pem, tokens={"tok-1": USER}, bookmark_interval=0.3)
    server.load_manifests(MANIFESTS)
    await server.start()
    yield server
    await server.stop()


async def run_source(kubeconfig: Path | None, **opts) -> Runner:
    r = Runner(None, kubeconfig, **opts)
    r.start()
    return r


async def converges(r: Runner, emu: ApiServerEmulator, name: str) -> None:
    """The source publishes the manifests, then a Service created now (the watch works)."""
    await r.until(lambda: "default/web" in r.last, timeout=15)
    emu.create(new_service(name))
    await r.until(lambda: f"default/{name}" in r.last, timeout=15)


def write(path: Path, data: bytes, mode: int = 0o600) -> str:
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


async def test_kubeadm_client_certificate_files(emu, ca, tmp_path):
    """admin.conf shape: CA, client certificate and key as files next to the kubeconfig (relative)."""
    cert, key = ca.issue(USER, org="system:masters")
    write(tmp_path / "ca.crt", ca.cert_pem, 0o644)
    write(tmp_path / "client.crt", cert)
    write(tmp_path / "client.key", key)
    kc = write_kubeconfig(tmp_path / "admin.conf", emu.url, None, ca_file="ca.crt",
                          user={"client-certificate": "client.crt", "client-key": "client.key"})
    r = await run_source(kc)
    try:
        await converges(r, emu, "via-cert-files")
        assert emu.users_seen[-1] == USER and r.error is None
    finally:
        await r.stop()


async def test_embedded_data_leaves_no_temp_files(emu, ca, tmp_path, monkeypatch):
    """k3s.yaml shape: everything as *-data. The temp files the TLS context needs do not stay."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    cert, key = ca.issue(USER)
    kc = write_kubeconfig(tmp_path / "k3s.yaml", emu.url, None, ca.cert_pem, user={
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(key).decode()})
    r = await run_source(kc)
    try:
        await converges(r, emu, "via-cert-data")
        assert list(scratch.iterdir()) == [], "key material left in temp files"
    finally:
        await r.stop()
    assert list(scratch.iterdir()) == []


async def test_token(emu, tmp_path):
    kc = write_kubeconfig(tmp_path / "kc", emu.url, "tok-1", emu.ca_pem)
    r = await run_source(kc)
    try:
        await converges(r, emu, "via-token")
    finally:
        await r.stop()


async def test_wrong_ca_is_one_clear_error(emu, tmp_path):
    other = TestCA("someone-else")
    kc = write_kubeconfig(tmp_path / "kc", emu.url, "tok-1", other.cert_pem)
    r = await run_source(kc)
    try:
        await r.until(lambda: r.error is not None, timeout=10)
        assert "cannot reach" in r.error and "CERTIFICATE_VERIFY_FAILED" in r.error
        assert r.snapshots == []
    finally:
        await r.stop()


async def test_token_file_rotated_while_watching(emu, tmp_path):
    """tokenFile (kubeconfig): a rotated token is picked up when the watches reconnect."""
    token = tmp_path / "token"
    token.write_text("tok-1\n")
    kc = write_kubeconfig(tmp_path / "kc", emu.url, None, emu.ca_pem, user={"tokenFile": "token"})
    r = await run_source(kc)
    try:
        await converges(r, emu, "before-rotation")
        # The kubelet rotates the token: the old one stops working, the watches are cut.
        emu.tokens = {"tok-2": USER}
        tmp = tmp_path / ".token.new"
        tmp.write_text("tok-2\n")
        os.replace(tmp, token)
        await emu.restart()
        emu.create(new_service("after-rotation"))
        await r.until(lambda: "default/after-rotation" in r.last, timeout=15)
        await r.until(lambda: r.error is None, timeout=10)
    finally:
        await r.stop()


def test_token_file_read_at_boot(tmp_path, monkeypatch):
    """A host up for 0.5 s (monotonic clock below 60): the token file is read on first use.

    (The old client compared ``monotonic() - 0.0 > 60`` and sent no token for the first minute.)
    """
    monkeypatch.setattr(time, "monotonic", lambda: 0.5)
    asyncio.run(_token_file_read_at_boot(tmp_path))


async def _token_file_read_at_boot(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("abc\n")
    auth = kube_client.TokenFileAuth(str(tmp_path / "t"))
    assert await auth.header() == "Bearer abc"
    assert await auth.header() == "Bearer abc" and auth.reads == 1, "cached while the file is unchanged"
    (tmp_path / "t2").write_text("def\n")
    os.replace(tmp_path / "t2", tmp_path / "t")
    assert await auth.header() == "Bearer def"


def exec_plugin(tmp_path: Path, *, expires_in: float | None) -> tuple[Path, Path]:
    """A credential plugin script (like aws eks get-token): prints an ExecCredential, counts its runs."""
    source = tmp_path / "plugin-token"
    count = tmp_path / "plugin-runs"
    expiry = ""
    if expires_in is not None:
        expiry = (datetime.datetime.now(datetime.timezone.utc)
                  + datetime.timedelta(seconds=expires_in)).strftime("%Y-%m-%dT%H:%M:%SZ")
    script = tmp_path / "get-token"
    script.write_text(f"""#!{sys.executable}
import json, os, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
assert info["kind"] == "ExecCredential", info
with open({str(count)!r}, "a") as fh:
    fh.write(os.environ.get("LBD_TEST_ARG", "") + "\\n")
status = {{"token": open({str(source)!r}).read().strip()}}
if {expiry!r}:
    status["expirationTimestamp"] = {expiry!r}
print(json.dumps({{"apiVersion": info["apiVersion"], "kind": "ExecCredential", "status": status}}))
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return source, count


async def test_exec_plugin_cached_then_rerun_on_401(emu, tmp_path):
    source, count = exec_plugin(tmp_path, expires_in=None)
    source.write_text("tok-1")
    kc = write_kubeconfig(tmp_path / "kc", emu.url, None, emu.ca_pem, user={"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": "./get-token", "args": [],
        "env": [{"name": "LBD_TEST_ARG", "value": "x"}], "interactiveMode": "Never"}})
    r = await run_source(kc)
    try:
        await converges(r, emu, "via-exec")
        r.source.set_writer(True)
        await r.source.report(r.results())  # a burst of status writes: still one plugin run
        assert count.read_text().splitlines() == ["x"]
        emu.tokens = {"tok-2": USER}
        source.write_text("tok-2")
        await emu.restart()
        emu.create(new_service("after-exec-rotation"))
        await r.until(lambda: "default/after-exec-rotation" in r.last, timeout=15)
        assert len(count.read_text().splitlines()) >= 2
    finally:
        await r.stop()


async def test_exec_plugin_expiry_is_honoured(tmp_path):
    """expirationTimestamp in the past (or within the skew): the next request runs the plugin again."""
    source, count = exec_plugin(tmp_path, expires_in=-1)
    source.write_text("t")
    from lightkube.config.models import UserExec

    auth = kube_client.ExecAuth(UserExec(apiVersion="client.authentication.k8s.io/v1beta1",
                                         command=str(tmp_path / "get-token")))
    assert await auth.header() == "Bearer t"
    assert await auth.header() == "Bearer t"
    assert auth.runs == 2
    source2, count2 = exec_plugin(tmp_path, expires_in=3600)
    auth = kube_client.ExecAuth(UserExec(apiVersion="client.authentication.k8s.io/v1beta1",
                                         command=str(tmp_path / "get-token")))
    await auth.header()
    await auth.header()
    assert auth.runs == 1


async def test_in_cluster_service_account_with_rotation(emu, tmp_path, monkeypatch):
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("tok-1")
    (sa / "ca.crt").write_bytes(emu.ca_pem)
    (sa / "namespace").write_text("lbd-system")
    monkeypatch.setattr(kube_client, "SA_DIR", sa)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(emu.port))
    r = await run_source(None)
    try:
        await converges(r, emu, "in-cluster")
        # kubelet's projected-volume update: a new ..data symlink target, the token file replaced.
        emu.tokens = {"tok-2": USER}
        (sa / "token.new").write_text("tok-2")
        os.replace(sa / "token.new", sa / "token")
        await emu.restart()
        emu.create(new_service("in-cluster-rotated"))
        await r.until(lambda: "default/in-cluster-rotated" in r.last, timeout=15)
    finally:
        await r.stop()


async def test_client_certificate_rotated_on_disk(emu, ca, tmp_path):
    """A renewed client certificate (kubelet/kubeadm cert rotation) is used without a restart."""
    cert, key = ca.issue("lbd-old")
    write(tmp_path / "client.crt", cert)
    write(tmp_path / "client.key", key)
    kc = write_kubeconfig(tmp_path / "kc", emu.url, None, emu.ca_pem,
                          user={"client-certificate": "client.crt", "client-key": "client.key"})
    r = await run_source(kc)
    try:
        await converges(r, emu, "before-cert-rotation")
        assert emu.users_seen[-1] == "lbd-old"
        # Only the new identity may read from now on (the old certificate is as good as expired).
        emu.rbac = {"lbd-new": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}
        cert2, key2 = ca.issue("lbd-new")
        write(tmp_path / "client.key.new", key2)
        write(tmp_path / "client.crt.new", cert2)
        os.replace(tmp_path / "client.key.new", tmp_path / "client.key")
        os.replace(tmp_path / "client.crt.new", tmp_path / "client.crt")
        await emu.restart()
        emu.create(new_service("after-cert-rotation"))
        await r.until(lambda: "default/after-cert-rotation" in r.last, timeout=20)
        assert emu.users_seen[-1] == "lbd-new"
    finally:
        await r.stop()


async def test_mtls_without_certificate_or_token_is_401(emu, tmp_path):
    kc = write_kubeconfig(tmp_path / "kc", emu.url, None, emu.ca_pem, user={})
    r = await run_source(kc)
    try:
        await r.until(lambda: r.error is not None, timeout=10)
        assert r.error.startswith("401 Unauthorized: the API server rejected lbd's credentials")
        assert r.snapshots == []
    finally:
        await r.stop()


async def test_tls_server_name(emu, tmp_path):
    """The server is reached by IP but verified as kubernetes.default.svc (tls-server-name)."""
    url = emu.url.replace("127.0.0.1", "localhost")
    kc = write_kubeconfig(tmp_path / "kc", url, "tok-1", emu.ca_pem,
                          cluster_extra={"tls-server-name": "kubernetes.default.svc"})
    r = await run_source(kc)
    try:
        await converges(r, emu, "via-sni")
    finally:
        await r.stop()


async def test_unreachable_and_bad_kubeconfig_are_clear(tmp_path):
    kc = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:9", "t")
    r = await run_source(kc)
    try:
        await r.until(lambda: r.error is not None, timeout=10)
        assert r.error.startswith("cannot reach https://127.0.0.1:9:"), r.error
    finally:
        await r.stop()
    (tmp_path / "bad").write_text(json.dumps({"clusters": [], "contexts": [], "users": []}))
    r = await run_source(tmp_path / "bad")
    try:
        await asyncio.sleep(0.2)
        assert r.task.done() and r.error is not None
        assert r.error.startswith("bad kubeconfig: ") and "no current-context" in r.error
    finally:
        await r.stop()
