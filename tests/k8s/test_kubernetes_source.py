"""The kubernetes source against the API-server emulator (tests/kubeapi_emulator.py)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("yaml")

from lbd.model import Family  # noqa: E402
# tests/kubeapi_emulator.py also runs standalone (python -m tests.kubeapi_emulator):
# import it as tests.kubeapi_emulator however pytest was started. (No conftest.py
# here: a second "conftest" module would shadow tests/conftest.py's helpers.)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.kubeapi_emulator import ApiServerEmulator, synthetic_services, write_kubeconfig  # noqa: E402
from tests.k8s.kube_harness import Runner  # noqa: E402

MANIFESTS = Path(__file__).parent / "manifests"
TOKEN = "s3cr3t-token"


@pytest.fixture
async def emu():
    server = ApiServerEmulator(token=TOKEN, bookmark_interval=0.3)
    server.load_manifests(MANIFESTS)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def kubeconfig(tmp_path: Path, emu: ApiServerEmulator) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", emu.url, TOKEN)


@pytest.fixture
async def run(emu, kubeconfig):
    runners: list[Runner] = []

    def make(**opts) -> Runner:
        r = Runner(emu, kubeconfig, **opts)
        r.start()
        runners.append(r)
        return r

    yield make
    for r in runners:
        await r.stop()


def ingress(emu: ApiServerEmulator, ns: str, name: str) -> list[str]:
    svc = emu.get("Service", ns, name)
    return [i["ip"] for i in svc["status"].get("loadBalancer", {}).get("ingress", [])]


async def test_snapshot_honours_class_annotations_and_policies(run):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    snap = r.last
    assert sorted(snap) == ["default/ours-by-class", "default/web", "infra/dns-udp", "infra/legacy-ip",
                            "shop/shop-local"]
    dns = snap["infra/dns-udp"]
    assert dns.pool == "public" and dns.share_key == "dns-share"
    assert [str(a) for a in dns.addresses] == ["10.77.100.50", "fd77::50"]
    assert dns.ip_families == (Family.IPV4, Family.IPV6)
    assert [str(p) for p in dns.ports] == ["udp/53"]
    legacy = snap["infra/legacy-ip"]
    assert legacy.pool == "legacy" and [str(a) for a in legacy.addresses] == ["10.77.100.60"]
    # node-c carries the exclude label: Cluster services may use every other node.
    assert snap["default/web"].eligible_nodes == frozenset({"node-a", "node-b"})
    assert snap["default/web"].backend_key == ""
    shop = snap["shop/shop-local"]
    assert shop.eligible_nodes == frozenset({"node-a"}), "node-b not ready, node-c excluded"
    assert shop.backend_key == "app=shop,tier=front"
    assert "default/both-set" in r.source.invalid
    assert "loadBalancerIP" in r.source.invalid["default/both-set"]
    assert len(r.snapshots) == 1, "the initial lists make one snapshot"


async def test_status_written_exactly_once_and_events(run, emu):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    r.source.set_writer(True)
    pending = {"default/ours-by-class": 'pool "x" is exhausted'}
    # Back to back, with a lagging watch: the second report runs before the
    # watch shows our write, and must not write again.
    emu.watch_delay = 0.3
    await r.source.report(r.results(pending=pending))
    await r.source.report(r.results(pending=pending))
    for _ in range(3):  # every reconcile reports; only the first one writes
        await r.source.report(r.results(pending=pending))
        await asyncio.sleep(0.15)
    await r.until(lambda: ingress(emu, "default", "web") != [])
    assert ingress(emu, "infra", "dns-udp") == ["10.77.100.50", "fd77::50"]
    assert ingress(emu, "infra", "legacy-ip") == ["10.77.100.60"]
    assert emu.status_writes[("default", "web")] == 1
    assert emu.status_writes[("infra", "dns-udp")] == 1
    # Not even attempted twice (a second attempt would only be stopped by a 409).
    assert emu.requests.count(("PATCH", "/api/v1/namespaces/default/services/web/status")) == 1
    assert ("default", "ours-by-class") not in emu.status_writes
    warnings = [e for e in emu.events() if e["type"] == "Warning"]
    reasons = sorted((e["reason"], e["involvedObject"]["name"]) for e in warnings)
    assert reasons == [("AllocationFailed", "ours-by-class"), ("DeprecatedAnnotation", "legacy-ip"),
                       ("InvalidService", "both-set")]
    assert all(e["source"]["component"] == "lbd" for e in emu.events())
    # Who announces: MetalLB's nodeAssigned Event, once per Service, and the annotation.
    await r.until(lambda: len([e for e in emu.events() if e["reason"] == "nodeAssigned"]) == 4)
    assigned = sorted((e["involvedObject"]["name"], e["type"], e["message"]) for e in emu.events()
                      if e["reason"] == "nodeAssigned")
    assert assigned == [(n, "Normal", 'announcing from node "node-a" with protocol "layer2"')
                        for n in ("dns-udp", "legacy-ip", "shop-local", "web")]
    await r.until(lambda: emu.get("Service", "default", "web")["metadata"]["annotations"].get(
        "lbd.io/announcing-nodes") == "node-a")
    # A status or annotation write is a Service MODIFIED event; it must not change the snapshot.
    await asyncio.sleep(0.3)
    assert len(r.snapshots) == 1


async def test_non_writer_never_writes(run, emu):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    await r.source.report(r.results())
    await asyncio.sleep(0.3)
    assert emu.status_writes == {} and emu.events() == []


async def test_new_service_gets_address_once(run, emu):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    r.source.set_writer(True)
    await r.source.report(r.results())
    emu.create({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "new", "namespace": "default",
                             "annotations": {"metallb.io/address-pool": "public"}},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 8443, "protocol": "TCP"}],
                         "selector": {"app": "new"}}})
    await r.until(lambda: "default/new" in r.last)
    assert r.last["default/new"].pool == "public"
    for _ in range(3):
        await r.source.report(r.results())
        await asyncio.sleep(0.1)
    await r.until(lambda: ingress(emu, "default", "new") != [])
    assert emu.status_writes[("default", "new")] == 1
    assert emu.status_writes[("default", "web")] == 1


async def test_conflict_is_retried(run, emu):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    r.source.set_writer(True)
    emu.fail_status_writes_with_conflict = 2
    await r.source.report(r.results())
    await r.until(lambda: ingress(emu, "default", "web") != [])
    assert emu.status_writes[("default", "web")] == 1


async def test_expired_watch_relists_without_churn(run, emu):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    relists = [i.relists for i in (r.source.services, r.source.slices, r.source.nodes)]
    await emu.stop()
    # Other objects change while the watches are cut; then history is compacted.
    emu.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "x", "namespace": "default"},
                "reason": "Unrelated"})
    emu.compact()
    await emu.start(emu.port)
    await r.until(lambda: all(i.relists > n for i, n in zip((r.source.services, r.source.slices,
                                                              r.source.nodes), relists)), timeout=15)
    await asyncio.sleep(0.3)
    assert len(r.snapshots) == 1, "a re-list with the same objects publishes nothing"
    await r.until(lambda: r.error is None)


async def test_api_outage_withdraws_nothing(run, emu):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    before = dict(r.last)
    await emu.stop()
    await r.until(lambda: r.error is not None, timeout=10)
    await asyncio.sleep(1.0)
    assert r.last == before and len(r.snapshots) == 1
    # While down, a Service is deleted: after the outage the source catches up.
    emu.delete("Service", "default", "web")
    await emu.start(emu.port)
    await r.until(lambda: "default/web" not in r.last, timeout=15)
    assert set(before) - set(r.last) == {"default/web"}
    await r.until(lambda: r.error is None, timeout=10)


async def test_restart_losing_history_relists(run, emu):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    await emu.stop(keep_history=False)
    emu.patch("Service", "default", "web", {"metadata": {"annotations": {"metallb.io/address-pool": "gold"}}})
    emu.compact()
    await emu.start(emu.port)
    await r.until(lambda: r.last["default/web"].pool == "gold", timeout=15)


async def test_etp_local_follows_endpointslices(run, emu):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    sl = emu.get("EndpointSlice", "shop", "shop-local-x7k2p")
    sl["endpoints"][1]["conditions"]["ready"] = True  # node-b's pod became ready
    emu.update(sl)
    await r.until(lambda: r.last["shop/shop-local"].eligible_nodes == frozenset({"node-a", "node-b"}))
    emu.delete("EndpointSlice", "shop", "shop-local-x7k2p")
    await r.until(lambda: r.last["shop/shop-local"].eligible_nodes == frozenset())
    # The Cluster-policy services are untouched by the slice churn.
    assert r.last["default/web"].eligible_nodes == frozenset({"node-a", "node-b"})


async def test_exclude_label_follows_nodes(run, emu):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    emu.patch("Node", "", "node-c", {"metadata": {"labels": {
        "node.kubernetes.io/exclude-from-external-load-balancers": None}}})
    await r.until(lambda: r.last["default/web"].eligible_nodes is None)
    assert r.last["shop/shop-local"].eligible_nodes == frozenset({"node-a", "node-c"})
    emu.patch("Node", "", "node-a", {"metadata": {"labels": {
        "node.kubernetes.io/exclude-from-external-load-balancers": "true"}}})
    await r.until(lambda: r.last["shop/shop-local"].eligible_nodes == frozenset({"node-c"}))


async def test_ignore_exclude_and_class_options(run, emu):
    r = run(ignore_exclude_lb=True, load_balancer_class="example.com/cloud-lb", claim_unclassed=False)
    await r.until(lambda: bool(r.snapshots))
    assert sorted(r.last) == ["default/other-class"]
    assert r.last["default/other-class"].eligible_nodes is None


async def test_bad_token_is_reported_not_published(emu, tmp_path):
    bad = write_kubeconfig(tmp_path / "bad", emu.url, "wrong")
    r = Runner(emu, bad)
    r.start()
    try:
        await r.until(lambda: r.error is not None and "401" in r.error)
        assert r.snapshots == []
    finally:
        await r.stop()


async def test_garbage_watch_stream_keeps_snapshot(run, emu):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    before = dict(r.last)
    emu.garbage_watches = 3
    await emu.restart()  # cut the watches: the re-watches get garbage
    await r.until(lambda: any("bad watch stream" in e for e in r.errors_seen), timeout=10)
    assert r.last == before and not r.task.done()
    emu.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "after", "namespace": "default"},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 81, "protocol": "TCP"}]}})
    await r.until(lambda: "default/after" in r.last, timeout=20)


async def test_watch_http_410_relists_and_504_resumes(run, emu):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    relists = r.source.services.relists
    emu.watch_http_errors = [410, 504, 504]
    await emu.restart()  # cut the watches: the next three answer HTTP 410, 504, 504
    emu.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "after-410", "namespace": "default"},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 81}]}})
    await r.until(lambda: "default/after-410" in r.last, timeout=15)
    assert sum(i.relists for i in (r.source.services, r.source.slices, r.source.nodes)) >= relists + 1
    await r.until(lambda: r.error is None, timeout=10)


async def test_watch_error_event_with_odd_code_degrades_without_crash(run, emu):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    before = dict(r.last)
    emu.watch_error_events = [{"kind": "Status", "code": "five hundred", "reason": "Weird", "message": "odd"}]
    await emu.restart()
    await r.until(lambda: any("500 Weird: odd" in e for e in r.errors_seen), timeout=10)
    assert not r.task.done() and r.last == before
    await r.until(lambda: r.error is None, timeout=10)


async def test_endless_watch_line_is_bounded(run, emu):
    """An 80 MiB line with no newline: the watch is dropped at the bound, memory does not follow."""
    import resource

    r = run()
    await r.until(lambda: bool(r.snapshots))
    before = dict(r.last)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    emu.huge_line_watches = 1
    await emu.restart()
    await r.until(lambda: any("bad watch stream: a watch line is longer than" in e for e in r.errors_seen),
                  timeout=20)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    # The emulator runs in this process too and builds its 1 MiB chunks; the client holds at most ~8 MiB.
    assert grown_mib < 40, f"peak RSS grew by {grown_mib:.0f} MiB"
    assert r.last == before and not r.task.done()
    await r.until(lambda: r.error is None, timeout=15)


async def test_owner_change_new_event_and_annotation(run, emu):
    r = run()
    await r.until(lambda: bool(r.snapshots))
    r.source.set_writer(True)
    await r.source.report(r.results())

    def assigned(name: str) -> list[str]:
        return [e["message"] for e in sorted(emu.events(), key=lambda e: e["metadata"]["resourceVersion"])
                if e["reason"] == "nodeAssigned" and e["involvedObject"]["name"] == name]

    def annotation() -> str | None:
        return emu.get("Service", "default", "web")["metadata"].get("annotations", {}).get("lbd.io/announcing-nodes")

    await r.until(lambda: annotation() == "node-a")
    for _ in range(3):  # nothing changed: nothing more is written
        await r.source.report(r.results())
        await asyncio.sleep(0.1)
    assert assigned("web") == ['announcing from node "node-a" with protocol "layer2"']
    writes = r.source.announce_writes
    r.owners = ("node-b", "node-c")
    await r.source.report(r.results())
    await r.until(lambda: annotation() == "node-b,node-c")
    assert assigned("web")[1:] == ['announcing from node "node-b" with protocol "layer2"',
                                   'announcing from node "node-c" with protocol "layer2"']
    for _ in range(3):
        await r.source.report(r.results())
        await asyncio.sleep(0.1)
    assert r.source.announce_writes == writes + len(r.last), "one annotation write per Service, no repeats"


def service_lists(emu: ApiServerEmulator) -> list[dict[str, str]]:
    return [q for path, q in emu.lists if path == "/api/v1/services"]


async def test_start_lists_once_from_the_watch_cache(run, emu):
    for svc in synthetic_services(1200, namespace="default"):
        emu.create(svc)
    r = run()
    await r.until(lambda: len(r.snapshots) > 0 and len(r.last) > 1200, timeout=30)
    # resourceVersion=0 with limit: the watch cache answers in one response
    assert service_lists(emu) == [{"limit": "500", "resourceVersion": "0"}]


async def test_start_without_a_watch_cache_pages_and_an_expired_page_relists(run, emu):
    emu.watch_cache = False
    emu.expire_continue_tokens = 1
    for svc in synthetic_services(1200, namespace="default"):
        emu.create(svc)
    r = run()
    await r.until(lambda: len(r.snapshots) > 0 and len(r.last) > 1200, timeout=30)
    lists = service_lists(emu)
    assert lists[:2] == [{"limit": "500", "resourceVersion": "0"}, {"limit": "500", "continue": lists[1]["continue"]}]
    # its 2nd page was a 410: the re-list is consistent (no resourceVersion), paged, from the start
    assert [q.get("resourceVersion") for q in lists[2:]] == [None, None, None] and "continue" not in lists[2]
    assert len(r.snapshots) == 1, "the expired list published nothing partial"


async def test_first_snapshot_is_not_debounced_later_ones_are(emu, kubeconfig):
    r = Runner(emu, kubeconfig)
    r.source.debounce = 60.0  # far longer than the test waits
    r.start()
    try:
        # every list complete: nothing to batch, the first snapshot is published at once
        await r.until(lambda: "default/web" in r.last, timeout=15)
        emu.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "later", "namespace": "default"},
                    "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
        await asyncio.sleep(1.0)
        assert "default/later" not in r.last and len(r.snapshots) == 1  # a watch event waits the debounce
    finally:
        await r.stop()
