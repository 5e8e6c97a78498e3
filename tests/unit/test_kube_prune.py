"""The kubernetes source at scale: pruned stores, paged lists, the snapshot's per-Service reuse, and
bounded write-back (issue 12's memory and time at 5,000 Services; bench/sources.py measures them)."""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

pytest.importorskip("yaml")

from lbd.config.schema import SourceConfig  # noqa: E402
from lbd.sources import kube_informer  # noqa: E402
from lbd.sources import kubernetes as kube  # noqa: E402
from lbd.sources.base import ServiceResult, SourceContext  # noqa: E402
from lbd.sources.kube_client import ApiError  # noqa: E402
from lbd.sources.kube_translate import (  # noqa: E402
    NODE_SHAPE,
    SERVICE_SHAPE,
    SLICE_SHAPE,
    ClassFilter,
    ServiceError,
    annotation,
    backends_by_service,
    deprecated_annotations,
    ingress_ips,
    prune,
    ready_nodes_by_service,
    service_to_spec,
)

# JSON-ish values built from the keys the readers look at (as test_source_kubernetes.py's fuzz).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=12)
    | st.sampled_from(["LoadBalancer", "Local", "TCP", "IPv4", "10.77.0.1", "fd77::1", "metallb.io/loadBalancerIPs"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["metadata", "spec", "status", "loadBalancer", "ingress", "ip", "annotations", "ports",
                         "protocol", "port", "ipFamilies", "type", "selector", "loadBalancerIP",
                         "externalTrafficPolicy", "name", "namespace", "metallb.io/loadBalancerIPs",
                         "metallb.universe.tf/address-pool", "labels", "endpoints", "addresses", "addressType",
                         "conditions", "ready", "nodeName", "kubernetes.io/service-name"]) | st.text(max_size=5),
        children, max_size=4),
    max_leaves=20)

NODES = frozenset({"a", "b"})


def full_service(i: int = 1, **spec: Any) -> dict:
    """A Service as a real API server sends it: managedFields, last-applied-configuration and all."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": f"svc-{i}", "namespace": "ns", "uid": f"uid-{i}", "resourceVersion": str(100 + i),
            "creationTimestamp": "2026-12-02T10:00:00Z", "generation": 1, "labels": {"app": f"app-{i}"},
            "annotations": {"metallb.io/address-pool": "web", "metallb.universe.tf/allow-shared-ip": "k",
                            "lbd.io/announcing-nodes": "a",
                            "kubectl.kubernetes.io/last-applied-configuration": "{" + "x" * 2000 + "}"},
            "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"type": "LoadBalancer", "selector": {"app": f"app-{i}"}, "clusterIP": "10.96.0.2",
                 "clusterIPs": ["10.96.0.2"], "externalTrafficPolicy": "Local", "ipFamilies": ["IPv4"],
                 "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                 "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}],
                 **spec},
        "status": {"loadBalancer": {"ingress": [{"ip": "10.77.0.1", "ipMode": "VIP"}]}},
    }


def full_slice() -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "svc-1-x", "namespace": "ns", "resourceVersion": "7",
                         "labels": {"kubernetes.io/service-name": "svc-1"}, "managedFields": [{"a": 1}]},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.88.0.5"], "conditions": {"ready": True, "serving": True},
                           "nodeName": "a", "targetRef": {"kind": "Pod", "name": "p"}},
                          {"addresses": ["10.88.0.6"], "conditions": {"ready": False}, "nodeName": "b"}]}


def spec_or_error(obj: Any) -> Any:
    try:
        return service_to_spec(obj, ready_nodes=frozenset({"a"}), all_nodes=NODES, excluded=frozenset({"b"}))
    except ServiceError as exc:
        return ("error", str(exc))


def test_pruned_objects_read_the_same_and_are_smaller() -> None:
    svc, sl = full_service(), full_slice()
    psvc, psl = prune(svc, SERVICE_SHAPE), prune(sl, SLICE_SHAPE)
    assert spec_or_error(psvc) == spec_or_error(svc)
    assert ClassFilter().wants(psvc) and ingress_ips(psvc) == ingress_ips(svc) == ["10.77.0.1"]
    assert deprecated_annotations(psvc["metadata"]) == deprecated_annotations(svc["metadata"]) != []
    assert annotation(psvc["metadata"], "address-pool") == ("web", "metallb.io/address-pool")
    assert psvc["metadata"]["annotations"] == {"metallb.io/address-pool": "web",
                                               "metallb.universe.tf/allow-shared-ip": "k",
                                               "lbd.io/announcing-nodes": "a"}
    assert ready_nodes_by_service({1: psl}) == ready_nodes_by_service({1: sl}) == {("ns", "svc-1"): {"a"}}
    assert backends_by_service({("ns", "svc-1"): psvc}, {1: psl}) == backends_by_service({("ns", "svc-1"): svc}, {1: sl})
    node = {"metadata": {"name": "a", "labels": {"x": "y"}, "managedFields": []}, "status": {"images": [1] * 50}}
    assert prune(node, NODE_SHAPE) == {"metadata": {"name": "a", "labels": {"x": "y"}}}
    assert len(json.dumps(psvc)) < len(json.dumps(svc)) / 5
    # Keys are shared between objects parsed separately (each watch event is its own json.loads).
    one, two = (prune(json.loads(json.dumps(full_service(i))), SERVICE_SHAPE) for i in (1, 2))
    k1 = next(iter(one["metadata"]["labels"]))
    k2 = next(iter(two["metadata"]["labels"]))
    assert k1 is k2


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_prune_never_changes_what_the_readers_see(obj: Any) -> None:
    """Hostile or broken objects mean the same pruned or not (the readers' json_object/json_array rules)."""
    obj = obj if isinstance(obj, dict) else {"spec": obj}
    pruned = prune(copy.deepcopy(obj), SERVICE_SHAPE)
    assert spec_or_error(pruned) == spec_or_error(obj)
    assert ClassFilter().wants(pruned) == ClassFilter().wants(obj)
    assert ingress_ips(pruned) == ingress_ips(obj)
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    pmeta = pruned.get("metadata") if isinstance(pruned.get("metadata"), dict) else {}
    assert deprecated_annotations(pmeta) == deprecated_annotations(meta)
    as_slice = prune(copy.deepcopy(obj), SLICE_SHAPE)
    assert ready_nodes_by_service({0: as_slice}) == ready_nodes_by_service({0: obj})
    assert backends_by_service({("", ""): pruned}, {0: as_slice}) == backends_by_service({("", ""): obj}, {0: obj})


class _NullLog:
    def bind(self, **kw: Any) -> "_NullLog":
        return self

    def warning(self, event: str, **kw: Any) -> None:
        raise AssertionError(f"unexpected warning {event}: {kw}")

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **kw: None


class Pages:
    """A fake client answering a list in pages of ``limit``, as the API server does."""

    def __init__(self, items: list[dict], endless: bool = False) -> None:
        self.items, self.endless, self.calls = items, endless, []

    async def request(self, method: str, path: str, *, params: Any = None, **kw: Any) -> dict:
        params = dict(params or {})
        self.calls.append(params)
        start = int(params.get("continue", "0"))
        limit = int(params.get("limit", "0")) or len(self.items)
        page = self.items[start:start + limit]
        meta: dict[str, Any] = {"resourceVersion": "555"}
        if start + limit < len(self.items) or self.endless:
            meta["continue"] = str(start + limit)
        return {"metadata": meta, "items": page}


def informer(client: Any, **kw: Any) -> kube_informer.Informer:
    return kube_informer.Informer(client, "/api/v1/services", on_change=lambda: None, on_health=lambda p, e: True,
                                  log=_NullLog(), watch_timeout=5, **kw)


async def test_list_is_paged_and_pruned() -> None:
    client = Pages([full_service(i) for i in range(1, 12)])
    inf = informer(client, page_size=5, trim=lambda o: prune(o, SERVICE_SHAPE))
    await inf._list()
    assert [c.get("limit") for c in client.calls] == ["5", "5", "5"]
    assert [c.get("continue") for c in client.calls] == [None, "5", "10"]
    # resourceVersion=0 on the first page only (a server without a watch cache pages it)
    assert [c.get("resourceVersion") for c in client.calls] == ["0", None, None]
    assert len(inf.store) == 11 and inf.resource_version == "555" and inf.synced
    assert all("managedFields" not in o["metadata"] for o in inf.store.values())
    # Watch events are pruned too.
    inf._apply({"type": "MODIFIED", "object": full_service(3)})
    assert "clusterIP" not in inf.store[("ns", "svc-3")]["spec"]


async def test_a_list_that_never_ends_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_informer, "MAX_LIST_PAGES", 20)
    client = Pages([full_service(1)], endless=True)
    inf = informer(client, page_size=1)
    with pytest.raises(ValueError, match="more than 20 pages"):
        await inf._list()
    assert len(client.calls) == 20 and not inf.synced and inf.store == {}


class Store:
    def __init__(self, objs: dict | None = None) -> None:
        self.store = objs or {}
        self.synced = True


def source(**options: Any) -> kube.KubernetesSource:
    src = kube.KubernetesSource(SourceConfig("kubernetes", "k8s", options), SourceContext(node_name="n1",
                                                                                          log=_NullLog()))
    src.services, src.slices, src.nodes = Store(), Store(), Store({("", "a"): {"metadata": {"name": "a"}}})
    return src


def test_snapshot_remaps_only_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = kube.service_to_spec

    def counting(svc: Any, **kw: Any) -> Any:
        calls.append(svc["metadata"]["name"])
        return real(svc, **kw)

    monkeypatch.setattr(kube, "service_to_spec", counting)
    src = source()
    assert src.services is not None and src.nodes is not None
    for i in range(1, 6):
        src.services.store[("ns", f"svc-{i}")] = prune(full_service(i, externalTrafficPolicy="Cluster"), SERVICE_SHAPE)
    first = src.snapshot()
    assert len(first) == 5 and len(calls) == 5
    calls.clear()
    assert src.snapshot() == first and calls == []  # nothing changed: nothing remapped
    # Our own status write comes back: a new resourceVersion, the same spec.
    echo = full_service(2, externalTrafficPolicy="Cluster")
    echo["metadata"]["resourceVersion"] = "999"
    src.services.store[("ns", "svc-2")] = prune(echo, SERVICE_SHAPE)
    assert src.snapshot() == first and calls == ["svc-2"]
    calls.clear()
    # A node change is an input of every Service: all are remapped.
    src.nodes.store[("", "b")] = {"metadata": {"name": "b", "labels": {kube.EXCLUDE_LABEL: ""}}}
    after = src.snapshot()
    assert sorted(calls) == [f"svc-{i}" for i in range(1, 6)]
    assert all(s.eligible_nodes == frozenset({"a"}) for s in after)
    # A Service that stops being ours leaves the snapshot although its entry is cached.
    calls.clear()
    gone = full_service(4, externalTrafficPolicy="Cluster", type="ClusterIP")
    gone["metadata"]["resourceVersion"] = "1000"
    src.services.store[("ns", "svc-4")] = prune(gone, SERVICE_SHAPE)
    assert [s.name for s in src.snapshot()] == ["ns/svc-1", "ns/svc-2", "ns/svc-3", "ns/svc-5"]


async def test_drain_runs_every_job_with_bounded_concurrency() -> None:
    running, peak, done = [0], [0], []

    async def job(i: int) -> None:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0)
        running[0] -= 1
        done.append(i)

    made = []

    def lazily(i: int) -> Any:
        def make() -> Any:
            made.append(i)
            assert len(made) - len(done) <= 4, "a coroutine made before a worker was free"
            return job(i)
        return make

    await kube.drain((lazily(i) for i in range(1000)), 4)
    assert sorted(done) == list(range(1000)) and peak[0] == 4


class Api:
    """A fake API: records PATCHes, answers 409 once for a stale resourceVersion."""

    def __init__(self, src: kube.KubernetesSource) -> None:
        self.src, self.patches = src, []

    async def request(self, method: str, path: str, *, body: Any = None, **kw: Any) -> dict:
        assert self.src.services is not None
        if method == "PATCH":
            self.patches.append((path, body))
            return {}
        if method == "POST":
            return {}
        name = path.rsplit("/", 1)[-1]
        return copy.deepcopy(self.src.services.store[("ns", name)])


async def test_status_write_uses_the_object_current_when_it_runs() -> None:
    src = source()
    src.is_writer = True
    assert src.services is not None
    api = Api(src)
    src.client = api
    for i in (1, 2, 3):
        obj = full_service(i)
        obj["status"] = {}
        src.services.store[("ns", f"svc-{i}")] = prune(obj, SERVICE_SHAPE)
    result = ServiceResult(addresses=(ipaddress.ip_address("10.77.0.9"),), pool="web", nodes=("n1",))
    sem = asyncio.Semaphore(1)
    # Queued for svc-1; before it runs the watch brings a newer object (an annotation write): the
    # PATCH carries the newer resourceVersion, not the one the report saw.
    newer = copy.deepcopy(src.services.store[("ns", "svc-1")])
    newer["metadata"]["resourceVersion"] = "777"
    src.services.store[("ns", "svc-1")] = newer
    await src._write("ns", "svc-1", "uid-1", ["10.77.0.9"], sem)
    assert api.patches[-1][1]["metadata"]["resourceVersion"] == "777"
    # svc-2 was deleted and re-created (another uid) meanwhile: nothing is written over it.
    src.services.store[("ns", "svc-2")]["metadata"]["uid"] = "uid-other"
    await src._write("ns", "svc-2", "uid-2", ["10.77.0.9"], sem)
    assert len(api.patches) == 1
    # A whole report writes the rest and leaves nothing marked in flight.
    await src.report({"ns/svc-3": result})
    assert [p for p, _ in api.patches if p.endswith("/status")] == [
        "/api/v1/namespaces/ns/services/svc-1/status", "/api/v1/namespaces/ns/services/svc-3/status"]
    assert src._inflight == set() and src.status_writes == 2
    for task in list(src._background):
        await task
    assert src._announcing == set()


async def test_a_conflict_is_counted_and_retried() -> None:
    src = source()
    assert src.services is not None
    obj = full_service(1)
    obj["status"] = {}
    src.services.store[("ns", "svc-1")] = prune(obj, SERVICE_SHAPE)

    class Conflicting(Api):
        async def request(self, method: str, path: str, *, body: Any = None, **kw: Any) -> dict:
            if method == "PATCH" and not self.patches:
                self.patches.append((path, body))
                raise ApiError(409, "Conflict", "the object has been modified")
            return await super().request(method, path, body=body, **kw)

    src.client = api = Conflicting(src)
    await src._write("ns", "svc-1", "uid-1", ["10.77.0.9"], asyncio.Semaphore(1))
    assert src.conflicts == 1 and src.status_writes == 1 and len(api.patches) == 2



async def test_announcements_wait_while_statuses_are_written() -> None:
    src = source()
    src.is_writer = True
    assert src.services is not None
    src.client = api = Api(src)
    src.services.store[("ns", "svc-1")] = prune(full_service(1), SERVICE_SHAPE)
    src._writes_idle.clear()  # a report is writing statuses
    task = asyncio.create_task(src._announce_all([(("ns", "svc-1"), "uid-1", ("n1",))]))
    for _ in range(20):
        await asyncio.sleep(0)
    assert api.patches == [] and not task.done()
    src._writes_idle.set()
    await task
    assert api.patches == [("/api/v1/namespaces/ns/services/svc-1",
                            {"metadata": {"annotations": {"lbd.io/announcing-nodes": "n1"}}})]
    assert src.announce_writes == 1 and src._announcing == set()


async def test_a_settled_service_is_skipped_until_its_object_or_result_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    src = source()
    src.is_writer = True
    assert src.services is not None
    src.client = api = Api(src)
    obj = full_service(1)
    obj["metadata"]["annotations"]["lbd.io/announcing-nodes"] = "n1"
    src.services.store[("ns", "svc-1")] = prune(obj, SERVICE_SHAPE)
    src._announced["uid-1"] = ("n1",)
    result = ServiceResult(addresses=(ipaddress.ip_address("10.77.0.1"),), pool="web", nodes=("n1",))
    checks: list[str] = []
    real = src._up_to_date
    monkeypatch.setattr(src, "_up_to_date", lambda svc, uid, desired: checks.append(uid) or real(svc, uid, desired))
    await src.report({"ns/svc-1": result})
    assert checks == ["uid-1"] and api.patches == []  # up to date, announced: settled
    await src.report({"ns/svc-1": ServiceResult(addresses=result.addresses, pool="web", nodes=("n1",))})
    assert checks == ["uid-1"]  # an equal result for the same object: skipped
    # A new result (another address): written.
    moved = ServiceResult(addresses=(ipaddress.ip_address("10.77.0.2"),), pool="web", nodes=("n1",))
    await src.report({"ns/svc-1": moved})
    assert len(checks) == 3 and api.patches[-1][0].endswith("/svc-1/status")  # report's check and _write's
    # A write that fails is not settled: the next report tries again.
    src._written.clear()

    class Failing(Api):
        async def request(self, method: str, path: str, *, body: Any = None, **kw: Any) -> dict:
            raise ApiError(500, "InternalError", "etcd is sad")

    src.client = Failing(src)
    src.log.warning = lambda *a, **kw: None  # type: ignore[method-assign]
    await src.report({"ns/svc-1": moved})
    await src.report({"ns/svc-1": moved})
    assert len(checks) == 7 and "ns/svc-1" not in src._settled
    # The object replaced by a watch event (the same content): looked at again.
    src.client = api
    src.services.store[("ns", "svc-1")] = prune(obj, SERVICE_SHAPE)
    await src.report({"ns/svc-1": result})
    assert len(checks) == 8 and "ns/svc-1" in src._settled
