"""Pure pieces of the kubernetes source: object mapping, class filter, kubeconfig."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

pytest.importorskip("yaml")

from lbd.model import Family  # noqa: E402
from lbd.sources.kube_client import KubeConfigError, in_cluster, load_kubeconfig  # noqa: E402
from lbd.sources.kube_translate import (  # noqa: E402
    ClassFilter,
    ServiceError,
    ready_nodes_by_service,
    selector_string,
    service_to_spec,
)
from lbd.sources.kubernetes import KubernetesSource  # noqa: E402

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
  cluster: {{server: "https://10.77.0.1:6443/", certificate-authority-data: {ca}, tls-server-name: api.internal,
             proxy-url: "http://10.77.0.9:3128"}}
users:
- name: u1
  user: {{tokenFile: token}}
- name: u2
  user: {{exec: {{command: aws}}}}
- name: u3
  user: {{auth-provider: {{name: gcp}}}}
contexts:
- name: a
  context: {{cluster: c1, user: u1}}
- name: b
  context: {{cluster: c1, user: u2}}
- name: c
  context: {{cluster: c1, user: u3}}
""")
    conn = load_kubeconfig(tmp_path / "kc")
    assert conn.server == "https://10.77.0.1:6443"
    assert conn.config.user.token_file == str(tmp_path / "token"), "relative to the kubeconfig's directory"
    assert conn.tls_server_name == "api.internal" and conn.proxy == "http://10.77.0.9:3128"
    with pytest.raises(KubeConfigError, match="exec needs a command and an apiVersion"):
        load_kubeconfig(tmp_path / "kc", "b")
    with pytest.raises(KubeConfigError, match="auth-provider"):
        load_kubeconfig(tmp_path / "kc", "c")
    with pytest.raises(KubeConfigError, match="no entry named 'zz'"):
        load_kubeconfig(tmp_path / "kc", "zz")
    (tmp_path / "bad").write_text(": [")
    with pytest.raises(KubeConfigError, match="not valid YAML"):
        load_kubeconfig(tmp_path / "bad")
    with pytest.raises(KubeConfigError, match="no kubeconfig found"):
        load_kubeconfig(tmp_path / "missing")


def test_kubeconfig_paths_merge_like_kubectl(tmp_path: Path):
    """KUBECONFIG=a:b: the first file to define a name or current-context wins; paths stay per file."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "kc").write_text("""
clusters:
- {name: c, cluster: {server: "https://10.77.0.1:6443"}}
users:
- {name: u, user: {client-certificate: u.crt, client-key: u.key}}
""")
    (tmp_path / "two" / "kc").write_text("""
current-context: x
clusters:
- {name: c, cluster: {server: "https://10.77.0.2:6443"}}
users:
- {name: u, user: {token: ignored}}
- {name: v, user: {tokenFile: tok}}
contexts:
- {name: x, context: {cluster: c, user: u}}
- {name: y, context: {cluster: c, user: v}}
""")
    for name in ("u.crt", "u.key"):
        (tmp_path / "one" / name).write_text("x")
    paths = [str(tmp_path / "one" / "kc"), str(tmp_path / "nowhere"), str(tmp_path / "two" / "kc")]
    conn = load_kubeconfig(paths)
    assert conn.server == "https://10.77.0.1:6443", "the first file's cluster c wins"
    assert conn.config.user.client_cert == str(tmp_path / "one" / "u.crt")
    assert conn.config.user.token is None
    assert conn.files == (str(tmp_path / "one" / "u.crt"), str(tmp_path / "one" / "u.key"))
    assert load_kubeconfig(paths, "y").config.user.token_file == str(tmp_path / "two" / "tok")


def test_in_cluster_needs_env_and_files(tmp_path: Path):
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        in_cluster(tmp_path, {})
    env = {"KUBERNETES_SERVICE_HOST": "fd77::1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(KubeConfigError, match="token does not exist"):
        in_cluster(tmp_path, env)
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text("c")
    conn = in_cluster(tmp_path, env)
    assert conn.server == "https://[fd77::1]:443" and conn.files == (str(tmp_path / "ca.crt"),)


def test_backoff_never_overflows_and_stays_at_its_cap():
    """100,000 failures in a row: every delay is a finite number within the cap (the loop goes on)."""
    from lbd.sources.kube_informer import Informer

    informer = Informer.__new__(Informer)
    informer.backoff_initial, informer.backoff_max = 0.5, 30.0
    delays = [informer.retry_delay(n) for n in range(1, 100_001)]
    assert 0.4 <= delays[0] <= 0.6 and 0.8 <= delays[1] <= 1.2
    assert all(0.4 <= d <= 36.0 for d in delays) and 24.0 <= delays[-1] <= 36.0


async def test_informer_retries_forever_on_a_simulated_clock(monkeypatch):
    """The informer's own retry loop through 100,000 failures (asyncio.sleep is the simulated clock)."""
    import asyncio

    from lbd.sources import kube_informer as k

    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)
        if len(slept) >= 100_000:
            raise asyncio.CancelledError

    class Down:
        async def request(self, *a, **kw):
            raise OSError("connection refused")

    monkeypatch.setattr(k.asyncio, "sleep", fake_sleep)
    health: list[str | None] = []
    inf = k.Informer(Down(), "/api/v1/services", on_change=lambda: None,
                     on_health=lambda p, e: health.append(e) or len(health) == 1, log=_NullLog(), watch_timeout=5)
    with pytest.raises(asyncio.CancelledError):
        await inf.run()
    assert len(slept) == 100_000 and max(slept) <= 30.0 * 1.2 and min(slept[-1000:]) >= 30.0 * 0.8


class _NullLog:
    def __getattr__(self, name):
        return lambda *a, **kw: None


@pytest.mark.parametrize("code", ["410", 4.5, None, [1], {"x": 1}, True, 2 ** 80])
def test_watch_error_event_with_odd_code_is_an_api_error(code):
    from lbd.sources.kube_client import ApiError
    from lbd.sources.kube_informer import Informer

    inf = Informer(None, "/api/v1/services", on_change=lambda: None, on_health=lambda p, e: True,
                   log=_NullLog(), watch_timeout=5)
    with pytest.raises(ApiError) as info:
        inf._apply({"type": "ERROR", "object": {"kind": "Status", "code": code, "reason": "x", "message": "y"}})
    assert isinstance(info.value.code, int)
    # A real 410 asks for a re-list instead.
    assert inf._apply({"type": "ERROR", "object": {"code": 410}}) is True and inf.resource_version is None


def test_validate_options():
    assert KubernetesSource.validate({}) == []
    msgs = KubernetesSource.validate({"kubeconfig": "rel", "in_cluster": True, "watch_timout": 3,
                                      "claim_unclassed": "yes"})
    assert any(m.startswith("kubeconfig: ") and "absolute" in m for m in msgs)
    assert any(m.startswith("in_cluster: ") for m in msgs)
    assert any("did you mean 'watch_timeout'" in m for m in msgs)
    assert any(m.startswith("claim_unclassed: ") and "write true" in m for m in msgs)
