"""RBAC: the ClusterRole documented in docs/sources.md is enough, and a missing rule is named exactly.

The emulator enforces the rules the way the API server's RBAC authorizer does
and answers 403 with its wording (verb, resource, API group, scope).
"""

from __future__ import annotations

import asyncio
import copy
import re
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lightkube")
pytest.importorskip("aiohttp")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.k8s.kube_harness import MANIFESTS, Runner  # noqa: E402
from tests.kubeapi_emulator import ApiServerEmulator, write_kubeconfig  # noqa: E402

USER = "system:serviceaccount:lbd-system:lbd"


def documented_rules(name: str = "lbd") -> list[dict]:
    text = (ROOT / "docs" / "sources.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        doc = yaml.safe_load(block)
        if isinstance(doc, dict) and doc.get("kind") == "ClusterRole" and doc["metadata"]["name"] == name:
            return doc["rules"]
    raise AssertionError(f"docs/sources.md has no ClusterRole named {name}")


def without(rules: list[dict], resource: str, verb: str) -> list[dict]:
    out = copy.deepcopy(rules)
    for rule in out:
        if resource in rule["resources"] and verb in rule["verbs"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    return out


async def start(tmp_path: Path, rules: list[dict], **opts) -> tuple[ApiServerEmulator, Runner]:
    emu = ApiServerEmulator(tls=True, tokens={"sa-token": USER}, rbac={USER: rules}, bookmark_interval=0.3)
    emu.load_manifests(MANIFESTS)
    await emu.start()
    r = Runner(emu, write_kubeconfig(tmp_path / "kc", emu.url, "sa-token", emu.ca_pem), **opts)
    r.start()
    return emu, r


def ingress(emu: ApiServerEmulator, ns: str, name: str) -> list[str]:
    svc = emu.get("Service", ns, name)
    return [i["ip"] for i in svc["status"].get("loadBalancer", {}).get("ingress", [])]


async def test_documented_cluster_role_is_enough(tmp_path):
    emu, r = await start(tmp_path, documented_rules())
    try:
        await r.until(lambda: bool(r.snapshots))
        r.source.set_writer(True)
        await r.source.report(r.results(pending={"default/ours-by-class": "pool exhausted"}))
        await r.until(lambda: ingress(emu, "default", "web") != [])
        await r.until(lambda: emu.get("Service", "default", "web")["metadata"].get("annotations", {}).get(
            "lbd.io/announcing-nodes") == "node-a")
        await r.until(lambda: any(e["reason"] == "nodeAssigned" for e in emu.events()))
        await asyncio.sleep(0.3)
        assert r.error is None
        assert emu.denied == []
    finally:
        await r.stop()
        await emu.stop()


async def test_without_services_status_says_exactly_that_and_keeps_announcing(tmp_path):
    emu, r = await start(tmp_path, without(without(documented_rules(), "services/status", "patch"),
                                           "services/status", "update"))
    try:
        await r.until(lambda: bool(r.snapshots))
        published = dict(r.last)
        r.source.set_writer(True)
        await r.source.report(r.results())
        await r.until(lambda: r.error is not None)
        assert r.error.startswith("403 Forbidden: services ")
        assert (f'is forbidden: User "{USER}" cannot patch resource "services/status" in API group "" '
                'in the namespace ') in r.error
        # Nothing is withdrawn: the snapshot (what the daemon announces) is unchanged, the watch goes on.
        emu.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "later", "namespace": "default"},
                    "spec": {"type": "LoadBalancer", "ports": [{"port": 81}]}})
        await r.until(lambda: "default/later" in r.last)
        assert set(published) <= set(r.last) and not r.task.done()
        assert ingress(emu, "default", "web") == []
        # The annotation and the Events, which are allowed, were still written.
        await r.until(lambda: any(e["reason"] == "nodeAssigned" for e in emu.events()))
        # Granted again: the status is written and the source is healthy.
        emu.rbac = {USER: documented_rules()}
        await r.source.report(r.results())
        await r.until(lambda: ingress(emu, "default", "web") != [] and r.error is None)
    finally:
        await r.stop()
        await emu.stop()


async def test_without_watch_on_endpointslices_keeps_the_last_good_set(tmp_path):
    emu, r = await start(tmp_path, documented_rules())
    try:
        await r.until(lambda: bool(r.snapshots))
        before = dict(r.last)
        emu.rbac = {USER: without(documented_rules(), "endpointslices", "watch")}
        await emu.restart()  # the watches reconnect and are refused
        await r.until(lambda: r.error is not None, timeout=10)
        assert ('cannot watch resource "endpointslices" in API group "discovery.k8s.io" at the cluster scope'
                in r.error)
        await asyncio.sleep(0.5)
        assert r.last == before and not r.task.done()
    finally:
        await r.stop()
        await emu.stop()


async def test_namespaces_filter_watches_only_those(tmp_path):
    # Services and EndpointSlices only in "infra" and "shop": namespaced requests only.
    emu, r = await start(tmp_path, documented_rules(), namespaces=["infra", "shop"])
    try:
        await r.until(lambda: bool(r.snapshots))
        assert sorted(r.last) == ["infra/dns-udp", "infra/legacy-ip", "shop/shop-local"]
        assert r.last["shop/shop-local"].eligible_nodes == frozenset({"node-a"}), "slices of shop are seen"
        paths = {p for _, p in emu.requests}
        assert "/api/v1/services" not in paths and "/api/v1/namespaces/infra/services" in paths
        emu.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "default"},
                    "spec": {"type": "LoadBalancer", "ports": [{"port": 81}]}})
        emu.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "y", "namespace": "shop"},
                    "spec": {"type": "LoadBalancer", "ports": [{"port": 81}]}})
        await r.until(lambda: "shop/y" in r.last)
        assert "default/x" not in r.last
    finally:
        await r.stop()
        await emu.stop()


async def test_live_mode_needs_the_documented_lbd_metallb_role_and_says_what_is_missing(tmp_path):
    """metallb_resources = true: with lbd and lbd-metallb the resources and Namespaces are read;
    without lbd-metallb no Service is published (no allocation against a partial configuration)
    and the 403 names the resource."""
    from lbd.sources.base import ConfigOutcome

    applied: list[list[dict]] = []

    async def apply(objects, namespace):
        applied.append(list(objects))
        return ConfigOutcome("applied")

    pool = {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": "lan", "namespace": "metallb-system"}, "spec": {"addresses": ["10.77.7.0/28"]}}
    for rules, works in ((documented_rules() + documented_rules("lbd-metallb"), True), (documented_rules(), False)):
        emu = ApiServerEmulator(tls=True, tokens={"sa-token": USER}, rbac={USER: rules}, bookmark_interval=0.3)
        emu.load_manifests(MANIFESTS)
        emu.create(pool)
        await emu.start()
        r = Runner(emu, write_kubeconfig(tmp_path / "kc", emu.url, "sa-token", emu.ca_pem), metallb_resources=True)
        r.source.context.apply_config = apply
        r.source.context.pools_select_namespaces = lambda: True
        r.start()
        try:
            if works:
                await r.until(lambda: bool(r.snapshots) and r.source.namespace_informer is not None
                              and r.source.namespace_informer.synced)
                assert [o["metadata"]["name"] for o in applied[-1]] == ["lan"]
                assert emu.denied == [] and r.error is None
            else:
                await r.until(lambda: r.error is not None)
                assert (f'User "{USER}" cannot list resource "ipaddresspools" in API group "metallb.io" '
                        'in the namespace "metallb-system"') in r.error
                await asyncio.sleep(0.5)
                assert r.snapshots == []
        finally:
            await r.stop()
            await emu.stop()
