"""Clients nobody here wrote accept the emulator: kubectl end to end, and the official Python client.

kubectl (``/usr/bin/kubectl``, Debian's ``kubernetes-client`` or the cloud SDK
build): a Service applied with kubectl gets its address from lbd's source,
``kubectl get svc`` shows it as EXTERNAL-IP, ``kubectl describe svc`` shows
the nodeAssigned Event, ``kubectl get svc -w`` streams the change, and
``kubectl delete`` removes it. The official ``kubernetes`` client lists and
watches.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("lightkube")
pytest.importorskip("aiohttp")

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.conftest import require_binary  # noqa: E402
from tests.k8s.kube_harness import MANIFESTS, Runner  # noqa: E402
from tests.kubeapi_emulator import ApiServerEmulator, write_kubeconfig  # noqa: E402

SERVICE_YAML = """\
apiVersion: v1
kind: Service
metadata:
  name: shop-front
  namespace: default
  annotations:
    metallb.io/address-pool: public
spec:
  type: LoadBalancer
  selector:
    app: shop-front
  ports:
  - name: https
    port: 443
    targetPort: 8443
"""


@pytest.fixture
async def emu():
    server = ApiServerEmulator(tls=True, tokens={"admin-token": "kubernetes-admin"}, bookmark_interval=0.5)
    server.load_manifests(MANIFESTS)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def kubeconfig(emu, tmp_path):
    return write_kubeconfig(tmp_path / "kubeconfig", emu.url, "admin-token", emu.ca_pem)


def kubectl_bin() -> str:
    require_binary("kubectl")
    return shutil.which("kubectl") or "kubectl"


async def kubectl(kubeconfig: Path, *args: str, timeout: float = 30) -> str:
    proc = await asyncio.create_subprocess_exec(
        kubectl_bin(), "--kubeconfig", str(kubeconfig), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(kubeconfig.parent), "KUBECACHEDIR": str(kubeconfig.parent / "cache")})
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
    return out.decode()


async def test_kubectl_end_to_end(emu, kubeconfig, tmp_path):
    manifest = tmp_path / "svc.yaml"
    manifest.write_text(SERVICE_YAML)
    r = Runner(emu, kubeconfig)
    r.start()
    r.source.set_writer(True)
    reporter = asyncio.create_task(r.reporting())
    watcher = None
    try:
        assert "service/shop-front created" in await kubectl(kubeconfig, "apply", "-f", str(manifest))
        watcher = await asyncio.create_subprocess_exec(
            kubectl_bin(), "--kubeconfig", str(kubeconfig), "get", "svc", "shop-front", "-w",
            "--request-timeout=60s", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HOME": str(tmp_path)})
        await r.until(lambda: "default/shop-front" in r.last, timeout=15)
        assert r.last["default/shop-front"].pool == "public"

        async def external_ip() -> str:
            out = await kubectl(kubeconfig, "get", "svc", "shop-front")
            header, row = out.splitlines()[:2]
            return row.split()[header.split().index("EXTERNAL-IP")]

        deadline = asyncio.get_running_loop().time() + 20
        while (ip := await external_ip()) == "<pending>":
            assert asyncio.get_running_loop().time() < deadline, "EXTERNAL-IP never shown"
            await asyncio.sleep(0.3)
        address = str(r.allocated["default/shop-front"][0])
        assert ip == address
        jsonpath = await kubectl(kubeconfig, "get", "svc", "shop-front", "-o",
                                 "jsonpath={.status.loadBalancer.ingress[0].ip} "
                                 "{.metadata.annotations.lbd\\.io/announcing-nodes}")
        assert jsonpath.split() == [address, "node-a"]
        # Who announces, as MetalLB users look for it.
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            described = await kubectl(kubeconfig, "describe", "svc", "shop-front")
            if "nodeAssigned" in described:
                break
            assert asyncio.get_running_loop().time() < deadline, described
            await asyncio.sleep(0.3)
        line = next(ln for ln in described.splitlines() if "nodeAssigned" in ln)
        assert line.split()[0] == "Normal" and 'announcing from node "node-a" with protocol "layer2"' in line
        assert f"LoadBalancer Ingress:     {address}" in described or address in described
        # The owner moves: a new nodeAssigned Event, the annotation follows.
        r.owners = ("node-b",)
        deadline = asyncio.get_running_loop().time() + 20
        while 'announcing from node "node-b"' not in (described := await kubectl(kubeconfig, "describe", "svc",
                                                                                   "shop-front")):
            assert asyncio.get_running_loop().time() < deadline, described
            await asyncio.sleep(0.3)
        assert (await kubectl(kubeconfig, "get", "svc", "shop-front", "-o",
                              "jsonpath={.metadata.annotations.lbd\\.io/announcing-nodes}")) == "node-b"
        # kubectl get -w streamed the changes.
        assert "service \"shop-front\" deleted" in await kubectl(kubeconfig, "delete", "svc", "shop-front")
        await r.until(lambda: "default/shop-front" not in r.last, timeout=15)
        watcher.terminate()
        out = (await asyncio.wait_for(watcher.communicate(), 30))[0].decode()
        rows = [ln.split() for ln in out.splitlines() if ln.startswith("shop-front")]
        # The first row, then one per change streamed (address written, annotation changed).
        assert len(rows) >= 2 and rows[-1][3] == address, out
    finally:
        if watcher is not None and watcher.returncode is None:
            watcher.kill()
            await watcher.wait()
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        await r.stop()


def _official_client(kubeconfig: Path, listed: threading.Event) -> dict:
    """Runs in a thread: the official client is synchronous."""
    import kubernetes

    api_client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    v1 = kubernetes.client.CoreV1Api(api_client)
    out: dict = {}
    services = v1.list_service_for_all_namespaces()
    out["names"] = sorted(f"{s.metadata.namespace}/{s.metadata.name}" for s in services.items)
    out["web_cluster_ip"] = v1.read_namespaced_service("web", "default").spec.cluster_ip
    page = v1.list_service_for_all_namespaces(limit=3)
    out["page"] = len(page.items)
    out["continue"] = bool(page.metadata._continue)
    rest = v1.list_service_for_all_namespaces(limit=100, _continue=page.metadata._continue)
    out["rest"] = len(rest.items)
    out["selected"] = [s.metadata.name for s in v1.list_namespaced_service(
        "default", label_selector="app in (web,nothing)").items]
    events = []
    w = kubernetes.watch.Watch()
    listed.set()  # the test creates a Service now: the watch must replay or stream it
    for event in w.stream(v1.list_namespaced_service, "default", resource_version=services.metadata.resource_version,
                          timeout_seconds=10):
        events.append((event["type"], event["object"].metadata.name))
        if ("ADDED", "from-official") in events:
            w.stop()
    out["events"] = events
    api_client.close()
    return out


async def test_official_python_client_lists_and_watches(emu, kubeconfig):
    pytest.importorskip("kubernetes")

    listed = threading.Event()

    async def create_soon() -> None:
        while not listed.is_set():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        emu.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "from-official",
                                                                         "namespace": "default"},
                    "spec": {"ports": [{"port": 80}]}})

    creator = asyncio.create_task(create_soon())
    out = await asyncio.to_thread(_official_client, kubeconfig, listed)
    await creator
    assert "default/web" in out["names"] and "infra/dns-udp" in out["names"]
    assert out["web_cluster_ip"] == "10.96.120.17"
    assert out["page"] == 3 and out["continue"] and out["page"] + out["rest"] == len(out["names"])
    assert out["selected"] == ["web"]
    assert ("ADDED", "from-official") in out["events"]
    assert json.dumps(out)  # plain data came back through the generated models
