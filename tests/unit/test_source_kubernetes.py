"""Pure pieces of the kubernetes source: object mapping, class filter, kubeconfig."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

pytest.importorskip("yaml")

from lbd.model import Family  # noqa: E402
from lbd.sources.kube_client import KubeConfigError, load_kubeconfig  # noqa: E402
from lbd.sources.kubernetes import (  # noqa: E402
    ClassFilter,
    KubernetesSource,
    ServiceError,
    ready_nodes_by_service,
    selector_string,
    service_to_spec,
)

NONE = frozenset()


def svc(annotations=None, **spec):
    return {"metadata": {"name": "s", "namespace": "ns", "annotations": annotations or {}},
            "spec": {"type": "LoadBalancer", **spec}}


def to_spec(obj, ready=NONE, nodes=NONE, excluded=NONE):
    return service_to_spec(obj, ready_nodes=ready, all_nodes=nodes, excluded=excluded)


def test_requested_addresses_and_prefix_precedence():
    s = to_spec(svc({"metallb.io/loadBalancerIPs": "10.77.0.5, fd77::5",
                     "metallb.universe.tf/loadBalancerIPs": "10.77.0.9"}))
    assert [str(a) for a in s.addresses] == ["10.77.0.5", "fd77::5"]
    assert s.ip_families == (Family.IPV4, Family.IPV6), "families follow the requested addresses"
    assert [str(a) for a in to_spec(svc(loadBalancerIP="10.77.0.7")).addresses] == ["10.77.0.7"]
    old = to_spec(svc({"metallb.universe.tf/address-pool": "p", "metallb.universe.tf/allow-shared-ip": "k"}))
    assert old.pool == "p" and old.share_key == "k"
    assert to_spec(svc()).name == "ns/s" and to_spec(svc()).ip_families == (Family.IPV4,)


@pytest.mark.parametrize("obj, fragment", [
    (svc({"metallb.io/loadBalancerIPs": "10.77.0.5"}, loadBalancerIP="10.77.0.6"), "both set"),
    (svc({"metallb.io/loadBalancerIPs": "10.77.0.5,10.77.0.6"}), "at most one IPv4"),
    (svc({"metallb.io/loadBalancerIPs": "nope"}), '"nope" is not an IP address'),
    (svc(ports=[{"port": 80, "protocol": "ICMP"}]), "spec.ports[0]"),
    (svc(ipFamilies=["IPv5"]), "unknown family"),
])
def test_invalid_services(obj, fragment):
    with pytest.raises(ServiceError, match=None) as info:
        to_spec(obj)
    assert fragment in str(info.value)


def test_traffic_policies_and_exclusion():
    local = svc(externalTrafficPolicy="Local", selector={"tier": "front", "app": "shop"})
    s = to_spec(local, ready=frozenset({"a", "c"}), nodes=frozenset("abc"), excluded=frozenset("c"))
    assert s.eligible_nodes == frozenset("a") and s.backend_key == "app=shop,tier=front"
    c = to_spec(svc(), nodes=frozenset("abc"), excluded=frozenset("c"))
    assert c.eligible_nodes == frozenset("ab") and c.backend_key == ""
    assert to_spec(svc(), nodes=frozenset("abc")).eligible_nodes is None
    assert selector_string(None) == ""


def test_class_filter():
    f = ClassFilter()
    assert f.wants(svc()) and f.wants(svc(loadBalancerClass="lbd.io/lbd"))
    assert not f.wants(svc(loadBalancerClass="other")) and not f.wants({"spec": {"type": "ClusterIP"}})
    strict = ClassFilter("x", claim_unclassed=False)
    assert strict.wants(svc(loadBalancerClass="x")) and not strict.wants(svc())


def test_ready_nodes():
    slices = {1: {"metadata": {"namespace": "ns", "labels": {"kubernetes.io/service-name": "s"}},
                  "endpoints": [{"nodeName": "a", "conditions": {}}, {"nodeName": "b", "conditions": {"ready": False}},
                                {"conditions": {"ready": True}}]},
              2: {"metadata": {"namespace": "ns"}, "endpoints": [{"nodeName": "z"}]}}
    assert ready_nodes_by_service(slices) == {("ns", "s"): {"a"}}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=12)
    | st.sampled_from(["LoadBalancer", "Local", "TCP", "IPv4", "10.77.0.1", "fd77::1", "metallb.io/loadBalancerIPs"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["metadata", "spec", "annotations", "ports", "protocol", "port", "ipFamilies", "type",
                         "selector", "loadBalancerIP", "externalTrafficPolicy", "name", "namespace",
                         "metallb.io/loadBalancerIPs", "metallb.io/address-pool", "labels", "endpoints",
                         "conditions", "ready", "nodeName", "kubernetes.io/service-name"]) | st.text(max_size=5),
        children, max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_mapping_fuzz_only_service_error(obj):
    try:
        to_spec(obj if isinstance(obj, dict) else {"spec": obj}, ready=frozenset("a"), nodes=frozenset("ab"))
    except ServiceError:
        pass
    ready_nodes_by_service({0: obj} if isinstance(obj, dict) else {})


def test_kubeconfig(tmp_path: Path):
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "kc").write_text(f"""
apiVersion: v1
kind: Config
current-context: a
clusters:
- name: c1
  cluster: {{server: "https://10.77.0.1:6443/", certificate-authority-data: {ca}}}
users:
- name: u1
  user: {{tokenFile: token}}
- name: u2
  user: {{exec: {{command: aws}}}}
contexts:
- name: a
  context: {{cluster: c1, user: u1}}
- name: b
  context: {{cluster: c1, user: u2}}
""")
    creds = load_kubeconfig(tmp_path / "kc")
    assert creds.server == "https://10.77.0.1:6443" and creds.token_file == str(tmp_path / "token")
    assert Path(creds.ca_file).read_bytes().startswith(b"-----BEGIN")
    with pytest.raises(KubeConfigError, match="exec"):
        load_kubeconfig(tmp_path / "kc", "b")
    with pytest.raises(KubeConfigError, match="no entry named 'zz'"):
        load_kubeconfig(tmp_path / "kc", "zz")
    (tmp_path / "bad").write_text(": [")
    with pytest.raises(KubeConfigError, match="not valid YAML"):
        load_kubeconfig(tmp_path / "bad")


def test_validate_options():
    assert KubernetesSource.validate({}) == []
    msgs = KubernetesSource.validate({"kubeconfig": "rel", "in_cluster": True, "watch_timout": 3,
                                      "claim_unclassed": "yes"})
    assert any(m.startswith("kubeconfig: ") and "absolute" in m for m in msgs)
    assert any(m.startswith("in_cluster: ") for m in msgs)
    assert any("did you mean 'watch_timeout'" in m for m in msgs)
    assert any(m.startswith("claim_unclassed: ") and "write true" in m for m in msgs)
