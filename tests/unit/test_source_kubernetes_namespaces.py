"""Namespace labels from the API, where the source decides (KubernetesSource.snapshot) and where
allocation uses them: Services carry their namespace's labels once a pool selects namespaces, and
MetalLB's namespaceSelectors then choose the pool without [[namespace]] tables."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("yaml")

from lbd.config import parse_config  # noqa: E402
from lbd.config.schema import SourceConfig  # noqa: E402
from lbd.ipam import allocate  # noqa: E402
from lbd.sources.base import SourceContext  # noqa: E402
from lbd.sources.kubernetes import KubernetesSource, label_map, metallb_order  # noqa: E402

CONFIG = """
[node]
name = "node-a"
[[pool]]
name = "general"
addresses = ["10.77.5.0/28"]
[[pool]]
name = "team-a"
addresses = ["10.77.6.0/28"]
service_allocation = { namespace_selectors = [{ team = "a" }] }
[[namespace]]
name = "shop"
labels = { team = "a" }
"""


def store(*objs: dict) -> SimpleNamespace:
    return SimpleNamespace(synced=True, store={(o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
                                               for o in objs})


def service(ns: str, name: str) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "uid": f"{ns}-{name}", "resourceVersion": "1"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}}


def namespace(name: str, **labels: str) -> dict:
    return {"metadata": {"name": name, "labels": labels}}


def source(services: list[dict], namespaces: list[dict] | None) -> KubernetesSource:
    src = KubernetesSource(SourceConfig("kubernetes", "k8s", {}), SourceContext(node_name="node-a"))
    src.services, src.slices, src.nodes = store(*services), store(), store()  # type: ignore[assignment]
    src.namespace_informer = store(*namespaces) if namespaces is not None else None  # type: ignore[assignment]
    return src


def test_services_carry_their_namespaces_labels_only_when_read():
    svcs = [service("shop", "web"), service("blog", "web"), service("gone", "web")]
    unread = {s.name: s for s in source(svcs, None).snapshot()}
    assert unread["shop/web"].namespace_labels is None, "None: the config's [[namespace]] tables apply"
    read = {s.name: s for s in source(svcs, [namespace("shop", team="b"), namespace("blog", team="a")]).snapshot()}
    assert read["shop/web"].namespace_labels == {"team": "b"}
    assert read["blog/web"].namespace_labels == {"team": "a"}
    assert read["gone/web"].namespace_labels == {}, "a namespace the API does not list has no labels"


def test_the_apis_labels_choose_the_pool_and_win_over_namespace_tables():
    config = parse_config(CONFIG, Path("/etc/lbd.toml"))
    svcs = [service("shop", "web"), service("blog", "web")]
    specs = source(svcs, [namespace("shop", team="b"), namespace("blog", team="a")]).snapshot()
    first = allocate(config.pools, specs, {}, namespaces=config.namespaces)
    pools = {a.service: a.pool for a in first.allocations.values()}
    # shop is team=a in the file but team=b in the cluster: the cluster wins.
    assert pools == {"shop/web": "general", "blog/web": "team-a"}
    # A label change that leaves the selection as it was moves nothing.
    again = source(svcs, [namespace("shop", team="b", env="prod"), namespace("blog", team="a", env="x")]).snapshot()
    second = allocate(config.pools, again, first.allocations, namespaces=config.namespaces)
    assert second.allocations == first.allocations
    # A new Service in a namespace labelled for the pool gets it.
    more = source([*svcs, service("new", "api")], [namespace("shop", team="b"), namespace("blog", team="a"),
                                                   namespace("new", team="a")]).snapshot()
    third = allocate(config.pools, more, second.allocations, namespaces=config.namespaces)
    assert third.allocations["new/api"].pool == "team-a"
    assert {k: v for k, v in third.allocations.items() if k != "new/api"} == first.allocations


def test_label_map_and_order_take_hostile_metadata():
    assert label_map({"metadata": {"labels": {"a": "b", "n": 1}}}) == {"a": "b"}
    assert label_map({"metadata": "x"}) == {} and label_map({}) == {}
    objs = [{"metadata": {"name": "b", "creationTimestamp": "2026-01-02T00:00:00Z"}},
            {"metadata": {"name": "a", "creationTimestamp": "2026-01-02T00:00:00Z"}},
            {"metadata": {"name": "z", "creationTimestamp": "2026-01-01T00:00:00Z"}}, {"metadata": None}]
    assert [o["metadata"]["name"] if o["metadata"] else None for o in sorted(objs, key=metallb_order)] == \
        [None, "z", "a", "b"]


def test_live_mode_options():
    assert KubernetesSource.validate({"metallb_resources": True, "metallb_namespace": "lb"}) == []
    assert any("metallb_resources" in e for e in KubernetesSource.validate({"metallb_resources": "yes"}))
    assert any("metallb_namespace" in e for e in KubernetesSource.validate({"metallb_namespace": ""}))
    src = KubernetesSource(SourceConfig("kubernetes", "k8s", {}), SourceContext(node_name="n"))
    assert src.metallb_resources is False and src.metallb_namespace == "metallb-system"
