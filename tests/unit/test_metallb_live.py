"""Live mode where its decisions are made: the cluster's MetalLB resources merged into the file's
document (lbd.metallb.live), validated as a file is (lbd.liveconfig), errors attributed to the
resource at fault, and the daemon applying or keeping the running config (Daemon.apply_cluster_config)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from lbd.config import ConfigError, load_config, parse_config
from lbd.liveconfig import merged_config
from lbd.metallb.live import ClusterDocument, attribute, changed_resources, cluster_document, merge, ref_of

pytest.importorskip("yaml")

FILE = """
[node]
name = "n1"
[[pool]]
name = "file-pool"
addresses = ["10.77.1.0/28"]
[[l2_advertisement]]
pools = ["file-pool"]
[[source]]
type = "kubernetes"
name = "k8s"
kubeconfig = "/nonexistent/kubeconfig"
metallb_resources = true
"""


def pool(name: str, addresses: list[str], rv: str = "1", **spec) -> dict:
    return {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": name, "namespace": "metallb-system", "uid": f"uid-{name}", "resourceVersion": rv},
            "spec": {"addresses": addresses, **spec}}


def l2(name: str, pools: list[str], rv: str = "1") -> dict:
    return {"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
            "metadata": {"name": name, "namespace": "metallb-system", "uid": f"uid-{name}", "resourceVersion": rv},
            "spec": {"ipAddressPools": pools}}


def cluster(*objects: dict, source: str = "k8s") -> ClusterDocument:
    return cluster_document(source, list(objects), "metallb-system")


def test_the_file_then_the_cluster_validated_like_a_file():
    doc = cluster(pool("lan", ["10.77.2.0/28"], autoAssign=False), l2("lan-l2", ["lan"]))
    assert doc.origins[("pool", "lan")].kind == "IPAddressPool"
    config = merged_config(FILE, Path("/etc/lbd.toml"), [doc])
    assert [p.name for p in config.pools] == ["file-pool", "lan"]
    assert config.pools[1].auto_assign is False
    assert len(config.l2_advertisements) == 2
    # Exactly what the same tables written in the file give.
    written = parse_config(FILE + '[[pool]]\nname = "lan"\naddresses = ["10.77.2.0/28"]\nauto_assign = false\n'
                           '[[l2_advertisement]]\nname = "lan-l2"\npools = ["lan"]\n', Path("/etc/lbd.toml"))
    assert config.pools == written.pools and config.l2_advertisements == written.l2_advertisements


def test_without_a_live_source_the_cluster_is_not_merged():
    doc = cluster(pool("lan", ["10.77.2.0/28"]))
    off = FILE.replace("metallb_resources = true", "metallb_resources = false")
    assert [p.name for p in merged_config(off, Path("/etc/lbd.toml"), [doc]).pools] == ["file-pool"]
    other = cluster(pool("lan", ["10.77.2.0/28"]), source="elsewhere")
    assert [p.name for p in merged_config(FILE, Path("/etc/lbd.toml"), [other]).pools] == ["file-pool"]


def test_the_file_must_pass_alone_as_lbd_check_and_a_start_check_it():
    doc = cluster(pool("lan", ["10.77.2.0/28"]))
    leaning = FILE + '[[l2_advertisement]]\nname = "x"\npools = ["lan"]\n'
    with pytest.raises(ConfigError) as info:
        merged_config(leaning, Path("/etc/lbd.toml"), [doc])
    assert any('no pool is named "lan"' in e for e in info.value.errors)


def test_a_name_in_both_is_an_error_naming_both_origins():
    doc = cluster(pool("file-pool", ["10.77.2.0/28"]))
    _, errors = merge({"pool": [{"name": "file-pool", "addresses": ["10.77.1.0/28"]}]}, [doc], "/etc/lbd.toml")
    assert errors == ['/etc/lbd.toml: pool "file-pool": defined in /etc/lbd.toml and by IPAddressPool '
                      'metallb-system/file-pool (source k8s): rename one of them']
    with pytest.raises(ConfigError) as info:
        merged_config(FILE, Path("/etc/lbd.toml"), [doc])
    assert any("defined in /etc/lbd.toml and by IPAddressPool metallb-system/file-pool" in e for e in info.value.errors)
    by = attribute(info.value.errors, [doc], doc.resources)
    assert list(by) == [ref_of(pool("file-pool", []))]


def test_communities_merge_by_alias():
    community = {"apiVersion": "metallb.io/v1beta1", "kind": "Community",
                 "metadata": {"name": "c", "namespace": "metallb-system"},
                 "spec": {"communities": [{"name": "gold", "value": "64512:1"}, {"name": "silver", "value": "64512:2"}]}}
    doc = cluster(community)
    merged, errors = merge({"communities": {"gold": "64512:1"}}, [doc], "f")
    assert errors == [] and merged["communities"] == {"gold": "64512:1", "silver": "64512:2"}
    _, errors = merge({"communities": {"gold": "64512:9"}}, [doc], "f")
    assert len(errors) == 1 and "Community metallb-system/c" in errors[0] and '"gold"' in errors[0]


def test_an_overlap_is_posted_on_the_resource_that_changed():
    before = cluster(pool("a", ["10.77.2.0/28"]))
    after = cluster(pool("a", ["10.77.2.0/28"]), pool("b", ["10.77.2.8/29"]))
    with pytest.raises(ConfigError) as info:
        merged_config(FILE, Path("/etc/lbd.toml"), [after])
    errors = info.value.errors
    assert any("overlaps" in e and "[from the cluster: IPAddressPool metallb-system/" in e for e in errors)
    changed = changed_resources([before], [after])
    assert [r.name for r in changed] == ["b"]
    by = attribute(errors, [after], changed)
    assert [r.name for r in by] == ["b"] and all("overlaps" in e for e in by[changed[0]])
    # Both new (the first list): both are named, both get it.
    assert {r.name for r in attribute(errors, [after], changed_resources([], [after]))} == {"a", "b"}


def test_an_overlap_with_a_file_pool_goes_to_the_cluster_pool():
    doc = cluster(pool("wide", ["10.77.1.0/24"]))
    with pytest.raises(ConfigError) as info:
        merged_config(FILE, Path("/etc/lbd.toml"), [doc])
    assert [r.name for r in attribute(info.value.errors, [doc], [])] == ["wide"]


def test_conversion_warnings_are_kept_per_resource():
    adv = l2("adv", ["a"])
    adv["spec"]["serviceSelectors"] = [{"matchLabels": {"app": "web"}}]
    doc = cluster(pool("a", ["10.77.2.0/28"]), adv)
    (ref,) = doc.warnings_by
    assert ref.name == "adv" and any("serviceSelectors" in w for w in doc.warnings_by[ref])
    assert not any(w.startswith("L2Advertisement") for w in doc.warnings_by[ref]), "the origin is not repeated"


def test_an_error_naming_no_resource_goes_to_each_changed_one():
    doc = cluster(pool("a", ["10.77.2.0/28"]), l2("adv", ["a"]))
    by = attribute(["/etc/lbd.toml: something global"], [doc], changed_resources([], [doc]))
    assert {r.name for r in by} == {"a", "adv"}


def test_an_advertisement_naming_a_missing_pool_is_its_own_fault():
    doc = cluster(l2("adv", ["nope"]))
    with pytest.raises(ConfigError) as info:
        merged_config(FILE, Path("/etc/lbd.toml"), [doc])
    assert [r.kind for r in attribute(info.value.errors, [doc], doc.resources)] == ["L2Advertisement"]


# -- the daemon ------------------------------------------------------------


@pytest.fixture
async def daemon(tmp_path):
    from lbd.daemon import Daemon

    path = tmp_path / "lbd.toml"
    path.write_text(FILE.replace('name = "n1"', f'name = "n1"\nstate_dir = "{tmp_path}/state"\n'
                                                f'control_socket = "{tmp_path}/lbd.sock"')
                    + '[[service]]\nname = "a"\npool = "file-pool"\n')
    d = Daemon(load_config(path))
    await d.apply_config()
    deadline = time.monotonic() + 10
    while not d.services_now() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    try:
        yield d
    finally:
        await d.sources.close()
        await d.hook_runner.close()
        await d.netlink.aclose()


async def test_daemon_applies_a_valid_set_and_keeps_the_running_config_on_an_invalid_one(daemon):
    ok = await daemon.apply_cluster_config("k8s", [pool("lan", ["10.77.2.0/28"]), l2("lan-l2", ["lan"])],
                                           "metallb-system")
    assert ok.result == "applied" and [p.name for p in daemon.config.pools] == ["file-pool", "lan"]
    assert daemon.last_reload == "applied" and daemon._pools_select_namespaces() is False

    from structlog.testing import capture_logs

    with capture_logs() as logs:
        bad = await daemon.apply_cluster_config("k8s", [pool("lan", ["10.77.2.0/28"]), l2("lan-l2", ["lan"]),
                                                        pool("dup", ["10.77.2.4/30"], rv="7")], "metallb-system")
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["cluster_config_not_applied"], "one clear line"
    assert errors[0]["resources"] == ["IPAddressPool metallb-system/dup"] and errors[0]["result"] == "rejected"
    assert bad.result == "rejected"
    assert [p.name for p in daemon.config.pools] == ["file-pool", "lan"], "the running config stays"
    assert [r.name for r in bad.by_resource] == ["dup"]
    assert daemon.last_reload == "rejected" and any("overlaps" in e for e in daemon.reload_error or [])
    # Reverted: back to what runs, nothing to reload, and the status says so.
    back = await daemon.apply_cluster_config("k8s", [pool("lan", ["10.77.2.0/28"]), l2("lan-l2", ["lan"])],
                                             "metallb-system")
    assert back.result == "applied" and daemon.last_reload == "applied" and daemon.reload_error is None

    # A file reload keeps the cluster's part merged in.
    assert await daemon.reload() is True
    assert [p.name for p in daemon.config.pools] == ["file-pool", "lan"]

    # A file reload rejected for the file's own fault stays shown after a cluster change is reverted.
    dup = [pool("lan", ["10.77.2.0/28"]), l2("lan-l2", ["lan"]), pool("dup", ["10.77.2.4/30"], rv="8")]
    assert (await daemon.apply_cluster_config("k8s", dup, "metallb-system")).result == "rejected"
    text = daemon.config.path.read_text()
    daemon.config.path.write_text(text + "[[pool]]\nname = 5\n")
    assert await daemon.reload() is False
    await daemon.apply_cluster_config("k8s", [pool("lan", ["10.77.2.0/28"]), l2("lan-l2", ["lan"])], "metallb-system")
    assert daemon.last_reload == "rejected" and any("name" in e for e in daemon.reload_error or [])
    daemon.config.path.write_text(text)
    assert await daemon.reload() is True and daemon.reload_error is None

    # Namespace selectors from the cluster: the source is told to read namespaces' labels.
    sel = pool("lan", ["10.77.2.0/28"], rv="9", serviceAllocation={"namespaceSelectors": [{"matchLabels": {"team": "a"}}]})
    assert (await daemon.apply_cluster_config("k8s", [sel, l2("lan-l2", ["lan"])], "metallb-system")).result == "applied"
    assert daemon._pools_select_namespaces() is True


async def test_daemon_refuses_a_cluster_change_that_readdresses(daemon):
    import ipaddress
    from dataclasses import replace

    from lbd.model import Allocation

    assert (await daemon.apply_cluster_config("k8s", [pool("lan", ["10.77.2.0/28"])], "metallb-system")).result \
        == "applied"
    # A service holding 10.77.2.5 from the cluster's pool (as a source would publish it) ...
    spec = replace(daemon.services_now()["static/a"], name="k8s/default/b", pool="lan")
    daemon.sources._merged[spec.name] = spec
    daemon.allocations["k8s/default/b"] = Allocation(service="k8s/default/b", pool="lan",
                                                addresses=(ipaddress.ip_address("10.77.2.5"),))
    # ... and an edit that shrinks the pool under it: refused like a file reload would be.
    out = await daemon.apply_cluster_config("k8s", [pool("lan", ["10.77.2.8/29"], rv="2")], "metallb-system")
    assert out.result == "refused" and any("k8s/default/b" in e for e in out.errors)
    assert [r.name for r in out.by_resource] == ["lan"]
    assert next(p for p in daemon.config.pools if p.name == "lan").addresses[0].text == "10.77.2.0/28"


async def test_a_restart_starts_with_the_resources_last_applied(daemon):
    import json
    import stat

    from lbd.daemon import Daemon

    objects = [pool("lan", ["10.77.2.0/28"]), l2("lan-l2", ["lan"])]
    assert (await daemon.apply_cluster_config("k8s", objects, "metallb-system")).result == "applied"
    saved = daemon.config.node.state_dir / "metallb-k8s.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600, "a BGPPeer may hold an inline password"
    assert json.loads(saved.read_text())["objects"] == objects

    made: list[Daemon] = []

    def restarted() -> Daemon:
        d = Daemon(load_config(daemon.config.path))
        made.append(d)
        d._file_text = daemon.config.path.read_text()
        d.restore_cluster_config()
        return d

    again = restarted()
    assert [p.name for p in again.config.pools] == ["file-pool", "lan"], "the cluster's pools before the API answers"
    assert set(again.cluster_applied) == {"k8s"}
    # A file that no longer fits (now the file has a pool "lan" too) or a broken cache: left out.
    text = daemon.config.path.read_text()
    daemon.config.path.write_text(text + '[[pool]]\nname = "lan"\naddresses = ["10.77.9.0/28"]\n')
    assert [p.name for p in restarted().config.pools] == ["file-pool", "lan"]
    assert restarted().config.pools[1].addresses[0].text == "10.77.9.0/28" and not restarted().cluster_seen
    daemon.config.path.write_text(text)
    saved.write_text("{not json")
    broken = restarted()
    assert [p.name for p in broken.config.pools] == ["file-pool"] and not broken.cluster_seen
    for d in made:
        await d.netlink.aclose()



JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=20)
KINDS = st.sampled_from(["IPAddressPool", "L2Advertisement", "BGPAdvertisement", "BGPPeer", "BFDProfile", "Community"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "apiVersion": st.sampled_from(["metallb.io/v1beta1", "metallb.io/v1beta2", "v1"]), "kind": KINDS,
    "metadata": st.fixed_dictionaries({"name": st.text(max_size=8), "namespace": st.just("metallb-system")}) | JSON,
    "spec": JSON}), max_size=5))
def test_hostile_resources_are_config_errors_never_a_crash(objects):
    doc = cluster_document("k8s", objects, "metallb-system")
    try:
        merged_config(FILE, Path("/etc/lbd.toml"), [doc])
    except ConfigError as exc:
        attribute(exc.errors, [doc], changed_resources([], [doc]))
