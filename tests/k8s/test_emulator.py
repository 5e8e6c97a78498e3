"""The API-server emulator follows the Kubernetes API semantics the source relies on."""

from __future__ import annotations

import asyncio
import sys
import json
from pathlib import Path

import pytest

aiohttp = pytest.importorskip("aiohttp")

from lbd.sources.kube_client import ApiError, KubeClient, Unreachable, load_kubeconfig  # noqa: E402
# tests/kubeapi_emulator.py also runs standalone (python -m tests.kubeapi_emulator):
# import it as tests.kubeapi_emulator however pytest was started. (No conftest.py
# here: a second "conftest" module would shadow tests/conftest.py's helpers.)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.kubeapi_emulator import ApiServerEmulator, write_kubeconfig  # noqa: E402

MANIFESTS = Path(__file__).parent / "manifests"
AUTH = {"Authorization": "Bearer tk"}


@pytest.fixture
async def emu():
    server = ApiServerEmulator(token="tk", bookmark_interval=0.2)
    server.load_manifests(MANIFESTS)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def get(http, emu, path, **params):
    async with http.get(emu.url + path, params=params) as resp:
        return resp.status, await resp.json()


async def watch(http, emu, path, limit: int, **params) -> list[dict]:
    events = []
    async with http.get(emu.url + path, params={"watch": "true", **params}) as resp:
        assert resp.status == 200
        async for line in resp.content:
            if line.strip():
                events.append(json.loads(line))
                if len(events) >= limit:
                    break
    return events


async def test_manifests_and_list(emu, http):
    status, body = await get(http, emu, "/api/v1/services")
    assert status == 200 and body["kind"] == "ServiceList"
    assert int(body["metadata"]["resourceVersion"]) == emu.rv
    assert len(body["items"]) == 8
    assert {i["metadata"]["name"] for i in (await get(http, emu, "/api/v1/namespaces/infra/services"))[1]["items"]} \
        == {"dns-udp", "legacy-ip"}
    assert len((await get(http, emu, "/api/v1/nodes"))[1]["items"]) == 3
    _, sl = await get(http, emu, "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/shop-local-x7k2p")
    assert sl["endpoints"][0]["nodeName"] == "node-a"
    async with aiohttp.ClientSession() as anon:
        async with anon.get(emu.url + "/api/v1/services") as resp:
            assert resp.status == 401 and (await resp.json())["reason"] == "Unauthorized"


async def test_watch_events_bookmarks_and_timeout(emu, http):
    _, body = await get(http, emu, "/api/v1/services")
    rv = body["metadata"]["resourceVersion"]

    async def changes():
        await asyncio.sleep(0.1)
        emu.patch("Service", "default", "web", {"metadata": {"labels": {"x": "y"}}})
        emu.delete("Service", "default", "web")

    task = asyncio.create_task(changes())
    events = await watch(http, emu, "/api/v1/services", 3, resourceVersion=rv, allowWatchBookmarks="true")
    await task
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED", "BOOKMARK"]
    assert int(events[0]["object"]["metadata"]["resourceVersion"]) < int(events[1]["object"]["metadata"]["resourceVersion"])
    assert events[2]["object"]["metadata"] == {"resourceVersion": str(emu.rv)}
    # No bookmarks unless asked; timeoutSeconds ends the stream cleanly.
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    quiet = await watch(http, emu, "/api/v1/nodes", 10, resourceVersion=str(emu.rv), timeoutSeconds="1")
    assert quiet == [] and loop.time() - t0 < 5


async def test_watch_from_empty_version_starts_with_state(emu, http):
    events = await watch(http, emu, "/api/v1/nodes", 3, resourceVersion="")
    assert [e["type"] for e in events] == ["ADDED"] * 3


async def test_expired_version_gets_410(emu, http):
    old = str(emu.rv)
    emu.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1", "namespace": "default"}})
    emu.compact()
    (event,) = await watch(http, emu, "/api/v1/services", 1, resourceVersion=old)
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    assert "too old resource version" in event["object"]["message"]


async def test_status_subresource_and_conflicts(emu, http):
    svc = emu.get("Service", "default", "web")
    rv = svc["metadata"]["resourceVersion"]
    url = emu.url + "/api/v1/namespaces/default/services/web"
    merge = {"Content-Type": "application/merge-patch+json"}
    # The status subresource changes only .status.
    patch = {"metadata": {"resourceVersion": rv}, "spec": {"type": "ClusterIP"},
             "status": {"loadBalancer": {"ingress": [{"ip": "10.77.100.1"}]}}}
    async with http.patch(url + "/status", data=json.dumps(patch), headers=merge) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["spec"]["type"] == "LoadBalancer" and body["status"]["loadBalancer"]["ingress"][0]["ip"] == "10.77.100.1"
    assert emu.status_writes[("default", "web")] == 1
    # The same stale resourceVersion again: 409 Conflict.
    async with http.patch(url + "/status", data=json.dumps(patch), headers=merge) as resp:
        assert resp.status == 409 and (await resp.json())["reason"] == "Conflict"
    # The main resource ignores .status.
    async with http.patch(url, data=json.dumps({"status": {"loadBalancer": {}}, "metadata": {"labels": {"a": "b"}}}),
                          headers=merge) as resp:
        body = await resp.json()
    assert body["status"]["loadBalancer"]["ingress"] and body["metadata"]["labels"]["a"] == "b"
    # PUT on status with the current version works; JSON patch is refused.
    body["status"] = {"loadBalancer": {}}
    async with http.put(url + "/status", json=body) as resp:
        assert resp.status == 200 and (await resp.json())["status"] == {"loadBalancer": {}}
    async with http.patch(url, data="[]", headers={"Content-Type": "application/json-patch+json"}) as resp:
        assert resp.status == 415


async def test_events_are_created_with_generate_name(emu, http):
    ev = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "web."},
          "involvedObject": {"kind": "Service", "name": "web", "namespace": "default"}, "reason": "R"}
    async with http.post(emu.url + "/api/v1/namespaces/default/events", json=ev) as resp:
        assert resp.status == 201
        body = await resp.json()
    assert body["metadata"]["name"].startswith("web.") and body["metadata"]["namespace"] == "default"
    assert [e["reason"] for e in emu.events()] == ["R"]


async def test_restart_keeps_or_loses_history(emu, http):
    rv = str(emu.rv)
    await emu.stop(keep_history=True)
    emu.delete("Service", "default", "web")
    await emu.start(emu.port)
    (event,) = await watch(http, emu, "/api/v1/services", 1, resourceVersion=rv)
    assert event["type"] == "DELETED"
    rv = str(emu.rv)
    await emu.stop(keep_history=False)
    emu.delete("Service", "infra", "dns-udp")
    await emu.start(emu.port)
    (event,) = await watch(http, emu, "/api/v1/services", 1, resourceVersion=rv)
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


async def test_tls_with_kubeconfig_ca(tmp_path):
    server = ApiServerEmulator(token="tk", tls=True)
    server.load_manifests(MANIFESTS)
    await server.start()
    try:
        assert server.url.startswith("https://")
        kc = write_kubeconfig(tmp_path / "kc", server.url, "tk", server.tls[0])
        client = KubeClient(load_kubeconfig(kc))
        body = await client.request("GET", "/api/v1/nodes")
        assert len(body["items"]) == 3
        with pytest.raises(ApiError) as info:
            await client.request("GET", "/api/v1/namespaces/default/services/nope")
        assert info.value.code == 404
        await client.close()
        # Without the CA the certificate is refused.
        untrusted = KubeClient(load_kubeconfig(write_kubeconfig(tmp_path / "kc2", server.url, "tk")))
        with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusted.request("GET", "/api/v1/nodes")
        await untrusted.close()
    finally:
        await server.stop()
