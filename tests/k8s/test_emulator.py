"""The API-server emulator follows the Kubernetes API semantics the source relies on."""

from __future__ import annotations

import asyncio
import sys
import json
import ssl
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


async def test_discovery_documents(emu, http):
    status, version = await get(http, emu, "/version")
    assert status == 200 and version["major"] == "1"
    _, api = await get(http, emu, "/api")
    assert api["kind"] == "APIVersions" and api["versions"] == ["v1"]
    _, core = await get(http, emu, "/api/v1")
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["services"]["shortNames"] == ["svc"] and by_name["services"]["namespaced"]
    assert by_name["services/status"]["verbs"] == ["get", "patch", "update"]
    assert not by_name["nodes"]["namespaced"]
    _, groups = await get(http, emu, "/apis")
    assert {g["name"] for g in groups["groups"]} == {"discovery.k8s.io", "events.k8s.io", "metallb.io"}
    _, disc = await get(http, emu, "/apis/discovery.k8s.io/v1")
    assert [r["name"] for r in disc["resources"]] == ["endpointslices"]
    _, openapi = await get(http, emu, "/openapi/v3")
    assert "api/v1" in openapi["paths"]


async def test_metallb_group_is_served_like_services(emu, http):
    """metallb.io: discovery with both versions (v1beta2 preferred), namespaced list and
    watch with resourceVersions, as the kubernetes source's live mode reads them."""
    _, group = await get(http, emu, "/apis/metallb.io")
    assert [v["version"] for v in group["versions"]] == ["v1beta2", "v1beta1"]
    assert group["preferredVersion"]["version"] == "v1beta2"
    _, v1 = await get(http, emu, "/apis/metallb.io/v1beta1")
    assert {r["name"] for r in v1["resources"] if "/" not in r["name"]} == {
        "ipaddresspools", "l2advertisements", "bgpadvertisements", "bfdprofiles", "communities", "bgppeers"}
    assert all(r["namespaced"] for r in v1["resources"])
    _, v2 = await get(http, emu, "/apis/metallb.io/v1beta2")
    assert [r["name"] for r in v2["resources"] if "/" not in r["name"]] == ["bgppeers"]
    _, openapi = await get(http, emu, "/openapi/v3")
    assert {"apis/metallb.io/v1beta1", "apis/metallb.io/v1beta2"} <= set(openapi["paths"])

    path = "/apis/metallb.io/v1beta1/namespaces/metallb-system/ipaddresspools"
    _, empty = await get(http, emu, path)
    assert empty["kind"] == "IPAddressPoolList" and empty["items"] == []
    rv = empty["metadata"]["resourceVersion"]

    async def changes():
        await asyncio.sleep(0.1)
        emu.create({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                    "metadata": {"name": "other", "namespace": "elsewhere"}, "spec": {"addresses": ["10.77.9.0/24"]}})
        emu.create({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                    "metadata": {"name": "lan", "namespace": "metallb-system"}, "spec": {"addresses": ["10.77.0.0/28"]}})
        emu.patch("IPAddressPool", "metallb-system", "lan", {"spec": {"autoAssign": False}})
        emu.delete("IPAddressPool", "metallb-system", "lan")

    task = asyncio.create_task(changes())
    events = await watch(http, emu, path, 3, resourceVersion=rv)
    await task
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert {e["object"]["metadata"]["namespace"] for e in events} == {"metallb-system"}
    assert events[1]["object"]["spec"] == {"addresses": ["10.77.0.0/28"], "autoAssign": False}
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > int(rv)
    # Each BGPPeer version has its path; a write through one reaches that version's object.
    peer = {"apiVersion": "metallb.io/v1beta2", "kind": "BGPPeer", "metadata": {"name": "r1"},
            "spec": {"myASN": 64512, "peerASN": 64512, "peerAddress": "10.77.0.1"}}
    async with http.post(emu.url + "/apis/metallb.io/v1beta2/namespaces/metallb-system/bgppeers", json=peer) as resp:
        assert resp.status == 201
    async with http.patch(emu.url + "/apis/metallb.io/v1beta2/namespaces/metallb-system/bgppeers/r1",
                          json={"spec": {"peerASN": 64513}},
                          headers={"Content-Type": "application/merge-patch+json"}) as resp:
        assert resp.status == 200 and (await resp.json())["spec"]["peerASN"] == 64513
    _, v1peers = await get(http, emu, "/apis/metallb.io/v1beta1/namespaces/metallb-system/bgppeers")
    assert v1peers["items"] == []


async def test_no_op_writes_change_nothing(emu, http):
    before = emu.get("Service", "default", "web")
    emu.patch("Service", "default", "web", {"metadata": {"labels": {"app": "web"}}})
    emu.patch("Service", "default", "web", {"status": before["status"]}, subresource="status")
    after = emu.get("Service", "default", "web")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert emu.history[emu.resource("Service")] == [h for h in emu.history[emu.resource("Service")]
                                                    if h[1] == "ADDED"]


async def test_service_defaulting(emu, http):
    async with http.post(emu.url + "/api/v1/namespaces/default/services", json={
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "bare"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}) as resp:
        assert resp.status == 201
        svc = await resp.json()
    spec = svc["spec"]
    assert spec["clusterIP"].startswith("10.97.") and spec["clusterIPs"] == [spec["clusterIP"]]
    assert spec["ipFamilies"] == ["IPv4"] and spec["ipFamilyPolicy"] == "SingleStack"
    assert spec["externalTrafficPolicy"] == "Cluster" and spec["allocateLoadBalancerNodePorts"] is True
    assert spec["ports"][0]["protocol"] == "TCP" and 30000 <= spec["ports"][0]["nodePort"] <= 32767
    async with http.patch(emu.url + "/api/v1/namespaces/default/services/bare/status",
                          json={"status": {"loadBalancer": {"ingress": [{"ip": "10.77.0.9"}]}}},
                          headers={"Content-Type": "application/merge-patch+json"}) as resp:
        written = await resp.json()
    assert written["status"]["loadBalancer"]["ingress"] == [{"ip": "10.77.0.9", "ipMode": "VIP"}]
    async with http.post(emu.url + "/api/v1/namespaces/default/services", json={
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "bare"}, "spec": {}}) as resp:
        assert resp.status == 409 and (await resp.json())["reason"] == "AlreadyExists"


async def test_label_and_field_selectors_and_pagination(emu, http):
    _, body = await get(http, emu, "/api/v1/services", labelSelector="app in (web,shop)")
    assert [s["metadata"]["name"] for s in body["items"]] == ["web", "shop-local"]
    _, body = await get(http, emu, "/api/v1/services", labelSelector="!app")
    assert "web" not in [s["metadata"]["name"] for s in body["items"]]
    _, body = await get(http, emu, "/api/v1/services", fieldSelector="metadata.namespace=infra")
    assert {s["metadata"]["namespace"] for s in body["items"]} == {"infra"}
    _, everything = await get(http, emu, "/api/v1/services")
    names, token, pages = [], None, 0
    while True:
        params = {"limit": "2", **({"continue": token} if token else {})}
        _, page = await get(http, emu, "/api/v1/services", **params)
        pages += 1
        names += [s["metadata"]["name"] for s in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
        assert page["metadata"]["remainingItemCount"] == len(everything["items"]) - len(names)
    assert names == [s["metadata"]["name"] for s in everything["items"]] and pages > 2
    status, bad = await get(http, emu, "/api/v1/services", labelSelector="a in (")
    assert status == 400


async def test_resource_version_0_lists_are_whole_as_from_the_watch_cache(emu, http):
    _, everything = await get(http, emu, "/api/v1/services")
    assert len(everything["items"]) > 2
    # The watch cache ignores limit at resourceVersion=0 (kube-apiserver's cacher).
    _, whole = await get(http, emu, "/api/v1/services", limit="2", resourceVersion="0")
    assert whole["items"] == everything["items"] and "continue" not in whole["metadata"]
    # Without a resourceVersion the list is paged; so is one at 0 with the watch cache off.
    _, paged = await get(http, emu, "/api/v1/services", limit="2")
    assert len(paged["items"]) == 2 and paged["metadata"]["continue"]
    emu.watch_cache = False
    _, paged0 = await get(http, emu, "/api/v1/services", limit="2", resourceVersion="0")
    assert len(paged0["items"]) == 2 and paged0["metadata"]["continue"]
    # An expired continue token is a 410 Expired Status, as the API server answers it.
    emu.expire_continue_tokens = 1
    async with http.get(emu.url + "/api/v1/services",
                        params={"limit": "2", "continue": paged0["metadata"]["continue"]}) as resp:
        assert resp.status == 410 and (await resp.json())["reason"] == "Expired"
    _, rest = await get(http, emu, "/api/v1/services", limit="100", **{"continue": paged0["metadata"]["continue"]})
    assert [s["metadata"]["name"] for s in paged0["items"] + rest["items"]] == \
        [s["metadata"]["name"] for s in everything["items"]]
    assert [q.get("resourceVersion") for _, q in emu.lists[:4]] == [None, "0", None, "0"]


async def test_watch_errors_as_http_status_and_events(emu, http):
    emu.watch_http_errors = [410, 504]
    for code in (410, 504):
        async with http.get(emu.url + "/api/v1/services", params={"watch": "true"}) as resp:
            assert resp.status == code and (await resp.json())["code"] == code
    emu.watch_error_events = [{"kind": "Status", "code": "bogus", "message": "odd"}]
    (event,) = await watch(http, emu, "/api/v1/services", 1)
    assert event["type"] == "ERROR" and event["object"]["code"] == "bogus"


async def test_rbac_and_mtls_modes(tmp_path):
    from tests.kubeapi_emulator import TestCA, forbidden_message  # noqa: F401

    ca = TestCA()
    server = ApiServerEmulator(ca=ca, client_ca=ca.cert_pem, tokens={"t": "alice"},
                               rbac={"alice": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]})
    await server.start()
    try:
        ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer t"}) as s:
            async with s.get(server.url + "/api/v1/services", ssl=ctx) as resp:
                assert resp.status == 200
            async with s.get(server.url + "/api/v1/namespaces/default/services/web", ssl=ctx) as resp:
                body = await resp.json()
                assert resp.status == 403 and body["reason"] == "Forbidden"
                assert body["message"] == ('services "web" is forbidden: User "alice" cannot get resource "services" '
                                           'in API group "" in the namespace "default"')
            async with s.get(server.url + "/apis/discovery.k8s.io/v1/endpointslices", ssl=ctx,
                             params={"watch": "1"}) as resp:
                assert (await resp.json())["message"] == (
                    'endpointslices is forbidden: User "alice" cannot watch resource "endpointslices" in API group '
                    '"discovery.k8s.io" at the cluster scope')
        async with aiohttp.ClientSession() as s:  # neither a token nor a certificate
            async with s.get(server.url + "/api/v1/services", ssl=ctx) as resp:
                assert resp.status == 401
        cert, key = ca.issue("alice")
        (tmp_path / "c.crt").write_bytes(cert)
        (tmp_path / "c.key").write_bytes(key)
        ctx.load_cert_chain(tmp_path / "c.crt", tmp_path / "c.key")
        async with aiohttp.ClientSession() as s:
            async with s.get(server.url + "/api/v1/services", ssl=ctx) as resp:
                assert resp.status == 200 and server.users_seen[-1] == "alice"
    finally:
        await server.stop()
