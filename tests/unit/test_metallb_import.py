"""``lbd import metallb``: the documentation corpus, field by field, and the
importer's rules (origins, warnings, passwords, legacy ConfigMap, input forms).

The corpus (tests/unit/metallb_corpus/) holds every YAML example of MetalLB's
configuration pages (website/content/configuration/: _index, advanced BGP,
advanced L2, advanced IPAddressPool, migration to CRDs) at 7938d3f, plus the
seed story and MetalLB's own legacy-ConfigMap converter test input. Each
``X.yaml`` has its reviewed conversion in ``X.lbd.toml``.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from lbd.config import load as lbd_config
from lbd.cli import main
from lbd.config import parse_config
from lbd.import_cmd import run
from lbd.ipam import allocate
from lbd.metallb.convert import convert, render, to_config_document
from lbd.metallb.load import load_documents
from lbd.metallb.model import Resource
from lbd.model import ServiceSpec
from lbd.selectors import LabelSelector, Requirement
from lbd.sources.registry import validate_source
from lbd.tomlw import dumps_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CORPUS = Path(__file__).parent / "metallb_corpus"
EXAMPLES = sorted(CORPUS.glob("*.yaml"))
HAS_BFD = "bfd_profile" in lbd_config.TOP_KEYS  # engineer i11's [[bfd_profile]] section
A = ipaddress.ip_address


def imported(path: Path):
    return convert(load_documents(path.read_text(), path.name))


def check(text: str):
    return parse_config(text, Path("/etc/lbd.toml"), validate_source)


def needs_bfd(doc: dict) -> None:
    if "bfd_profile" in doc and not HAS_BFD:
        pytest.skip("needs the [[bfd_profile]] section (engineer i11's branch); runs once both are merged")


# -- the corpus ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_corpus_example_converts_to_its_reviewed_lbd_toml(path: Path) -> None:
    conversion = imported(path)
    expected_text = path.with_suffix(".lbd.toml").read_text()
    expected = tomllib.loads(expected_text)
    got = conversion.document()
    # field by field, so a failure names the field
    assert sorted(got) == sorted(expected)
    for section, value in expected.items():
        if isinstance(value, list):
            assert len(got[section]) == len(value), section
            for mine, theirs in zip(got[section], value):
                for key in sorted(set(mine) | set(theirs)):
                    assert mine.get(key) == theirs.get(key), f"{path.name}: {section} {theirs.get('name')}: {key}"
        else:
            assert got[section] == value, section
    assert render(conversion) == expected_text  # comments (origins, warnings) included
    assert len(conversion.warnings) == expected_text.count("# WARNING: ")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_corpus_example_passes_lbd_check(path: Path) -> None:
    text = path.with_suffix(".lbd.toml").read_text()
    needs_bfd(tomllib.loads(text))
    check(text)


def test_corpus_covers_every_documentation_example() -> None:
    """42 YAML examples on MetalLB's configuration pages; 8 need a warning."""
    pages = {
        "_index.md": 10, "_advanced_bgp_configuration.md": 15, "_advanced_ipaddresspool_configuration.md": 5,
        "_advanced_l2_configuration.md": 10, "migration_to_crds.md": 2,
    }
    seen: dict[str, set[int]] = {page: set() for page in pages}
    warned: set[tuple[str, int]] = set()
    for path in EXAMPLES:
        text = path.read_text()
        match = re.search(r"configuration/(\S+\.md) .*\n# example\(s\) ([\d, ]+)", text)
        if not match:
            continue
        numbers = {int(n) for n in match.group(2).split(",")}
        seen[match.group(1)] |= numbers
        conversion = imported(path)
        # Which documentation examples needed a warning: those whose resources got one.
        for n in numbers:
            block = text.split(f"# documentation example {n}\n", 1)[1].split("\n---\n# ", 1)[0]
            names = set(re.findall(r"^  name: (\S+)", block, re.M))
            if any(any(f"/{name} in " in w for name in names) for w in conversion.warnings):
                warned.add((match.group(1), n))
    assert {page: sorted(numbers) for page, numbers in seen.items()} == {
        page: list(range(1, count + 1)) for page, count in pages.items()}
    assert sum(pages.values()) == 42
    assert len(warned) == 8, sorted(warned)


# -- field by field, by hand -------------------------------------------------------------


def test_seed_story_allocates_as_metallb_would() -> None:
    text = render(imported(CORPUS / "seed-story.yaml"))
    cfg = check(text)
    lan, routed = cfg.pools
    assert (lan.name, str(lan.addresses[0].first), str(lan.addresses[0].last)) == ("lan", "192.168.1.48", "192.168.1.63")
    assert (routed.name, routed.addresses[0].text, routed.auto_assign) == ("routed", "10.42.0.0/16", True)
    (l2,) = cfg.l2_advertisements
    assert (l2.name, l2.pools) == ("lan", ("lan",))
    (peer,) = cfg.bgp_peers
    assert (peer.name, peer.my_asn, peer.peer_asn, str(peer.peer_address)) == ("gateway", 64512, 64512, "192.168.1.254")
    (ad,) = cfg.bgp_advertisements
    assert (ad.name, ad.pools, ad.aggregation_length) == ("routed", ("routed",), 32)
    # MetalLB: the lowest free address of the first pool with room; a named pool for routed services
    result = allocate(cfg.pools, [ServiceSpec("web"), ServiceSpec("api", pool="routed")], {})
    assert [str(a) for a in result.allocations["web"].addresses] == ["192.168.1.48"]
    assert [str(a) for a in result.allocations["api"].addresses] == ["10.42.0.0"]


def test_service_allocation_sample_pins_the_pool() -> None:
    cfg = check(render(imported(CORPUS / "pool-02-service-allocation.yaml")))
    (pool,) = cfg.pools
    sa = pool.service_allocation
    assert pool.avoid_buggy_ips and sa is not None
    assert (sa.priority, sa.namespaces) == (50, ("namespace-a", "namespace-b"))
    assert sa.namespace_selectors == (LabelSelector((("foo", "bar"),)),)
    assert sa.service_selectors == (LabelSelector((), (Requirement("app", "In", ("bar",)),)),)
    services = [ServiceSpec("a-bar", namespace="namespace-a", labels={"app": "bar"}),
                ServiceSpec("a-foo", namespace="namespace-a", labels={"app": "foo"}),
                ServiceSpec("c-bar", namespace="namespace-c", labels={"app": "bar"})]
    result = allocate(cfg.pools, services, {}, namespaces={"namespace-c": {"foo": "bar"}})
    assert [str(a) for a in result.allocations["a-bar"].addresses] == ["192.168.20.1"]  # .0 avoided
    assert [str(a) for a in result.allocations["c-bar"].addresses] == ["192.168.20.2"]  # selected by label
    assert "service_selectors" in result.pending["a-foo"]


def test_peer_selectors_round_trip_to_the_same_selectors() -> None:
    cfg = check(render(imported(CORPUS / "bgp-02-peer-node-selectors.yaml")))
    (peer,) = cfg.bgp_peers
    assert peer.peer_port == 180
    assert peer.node_selector == (
        LabelSelector((("rack", "frontend"),), (Requirement("network-speed", "NotIn", ("slow",)),)),
        LabelSelector((), (Requirement("kubernetes.io/hostname", "In", ("hostA", "hostB")),)),
    )


def test_legacy_configmap_equals_metallb_s_own_conversion() -> None:
    """migration_to_crds.md: the ConfigMap and the CRs MetalLB's converter makes
    from it import to the same lbd config (the converter spells out the default hold time)."""
    legacy = imported(CORPUS / "migration-01-configmap.yaml").document()
    crs = imported(CORPUS / "migration-02-generated-crs.yaml").document()
    assert crs["bgp_peer"][0].pop("hold_time") == 90
    assert legacy == crs


def test_password_secret_becomes_a_password_file_reference() -> None:
    text = """
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: gw, namespace: metallb-system}
spec:
  myASN: 64512
  peerASN: 64513
  peerAddress: 10.88.0.1
  holdTime: 1m30s
  keepaliveTime: 30s
  ebgpMultiHop: true
  passwordSecret: {name: gw-md5, namespace: metallb-system}
---
apiVersion: v1
kind: Secret
metadata: {name: gw-md5, namespace: metallb-system}
type: kubernetes.io/basic-auth
data: {password: c2VjcmV0}
"""
    conversion = convert(load_documents(text, "peer.yaml"))
    out = render(conversion)
    assert "c2VjcmV0" not in out and "secret" not in out.split("Secret", 1)[0].lower().replace("# ", "")
    (peer,) = conversion.document()["bgp_peer"]
    assert peer["password_file"] == "/etc/lbd/bgp-passwords/gw"
    assert (peer["hold_time"], peer["keepalive_time"], peer["ebgp_multihop"]) == (90, 30, True)
    assert "# write the 'password' key of Secret metallb-system/gw-md5 to /etc/lbd/bgp-passwords/gw" in out
    assert "it is in the input; its value is not copied here" in out
    cfg = check(out)
    assert str(cfg.bgp_peers[0].password_file) == "/etc/lbd/bgp-passwords/gw"


def test_a_peer_name_that_could_leave_the_password_directory_makes_no_password_file() -> None:
    """The peer's name becomes a file name (live mode reads it from the cluster): a name that is
    not DNS-1123 (a path, a dot-dot) gets a warning, never a path outside the directory."""
    for name in ("../../etc/shadow", "..", "a/b", "Upper"):
        text = f"""
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {{name: "{name}", namespace: metallb-system}}
spec: {{myASN: 64512, peerASN: 64513, peerAddress: 10.88.0.1, passwordSecret: {{name: s}}}}
"""
        conversion = convert(load_documents(text, "peer.yaml"))
        (peer,) = conversion.document()["bgp_peer"]
        assert "password_file" not in peer, name
        assert any("not a DNS-1123 name" in w for w in conversion.warnings), name


def test_v1beta1_peer_and_ibgp_multihop_warning() -> None:
    text = """
apiVersion: metallb.io/v1beta1
kind: BGPPeer
metadata: {name: old}
spec: {myASN: 64512, peerASN: 64512, peerAddress: 10.88.0.1, ebgpMultiHop: true, routerID: 10.88.0.9}
"""
    conversion = convert(load_documents(text, "old.yaml"))
    (peer,) = conversion.document()["bgp_peer"]
    assert peer == {"name": "old", "my_asn": 64512, "peer_asn": 64512, "peer_address": "10.88.0.1",
                    "router_id": "10.88.0.9"}
    assert any("ebgpMultiHop is set on an iBGP session" in w for w in conversion.warnings)
    check(render(conversion))


def test_nothing_is_dropped_silently() -> None:
    text = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: p, namespace: metallb-system}
spec: {addresses: [10.88.0.0/24]}
---
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: unnumbered, namespace: metallb-system}
spec: {myASN: 64512, dynamicASN: external, interface: eth0, disableMP: true}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: elsewhere, namespace: team-a}
spec: {addresses: [10.88.1.0/24]}
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: p, namespace: metallb-system}
spec: {addresses: [10.88.2.0/24], futureField: 1}
---
apiVersion: metallb.io/v1beta1
kind: MetalLB
metadata: {name: metallb, namespace: metallb-system}
spec: {logLevel: debug}
"""
    conversion = convert(load_documents(text, "x.yaml"))
    warnings = "\n".join(conversion.warnings)
    assert "spec.futureField is not known to this importer" in warnings
    assert "spec.interface (eth0: BGP unnumbered) has no lbd equivalent" in warnings
    assert "the peer has no peerAddress" in warnings
    assert "MetalLB reads only its own namespace (metallb-system): skipped" in warnings
    assert "replaces IPAddressPool (metallb.io/v1beta1) metallb-system/p in x.yaml, document 1" in warnings
    assert "the MetalLB operator's settings has no lbd equivalent" in warnings
    out = render(conversion)
    for warning in conversion.warnings:  # every warning is in the output too
        assert warning.split(": ", 1)[1] in out
    assert conversion.document()["pool"] == [{"name": "p", "addresses": ["10.88.2.0/24"]}]


def test_kubectl_list_helm_output_and_namespaces() -> None:
    text = """
# Source: metallb/templates/controller.yaml
apiVersion: apps/v1
kind: Deployment
metadata: {name: controller, namespace: metallb-system}
---
---
apiVersion: v1
kind: List
items:
- apiVersion: metallb.io/v1beta1
  kind: IPAddressPool
  metadata: {name: team, namespace: metallb-system, labels: {tier: gold}}
  spec:
    addresses: [10.88.0.0/24]
    serviceAllocation:
      namespaceSelectors: [{matchLabels: {team: a}}]
- apiVersion: v1
  kind: Namespace
  metadata: {name: shop, labels: {team: a}}
- apiVersion: metallb.io/v1beta1
  kind: L2Advertisement
  metadata: {name: gold, namespace: metallb-system}
  spec:
    ipAddressPoolSelectors: [{matchExpressions: [{key: tier, operator: In, values: [gold]}]}]
- apiVersion: metallb.io/v1beta1
  kind: ServiceL2Status
  metadata: {name: l2-abc, namespace: metallb-system}
"""
    conversion = convert(load_documents(text, "helm.yaml"))
    doc = conversion.document()
    assert doc["namespace"] == [{"name": "shop", "labels": {"team": "a"}}]
    assert doc["l2_advertisement"][0]["pool_selectors"] == [
        {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}]}]
    assert conversion.skipped == 2 and not conversion.warnings
    out = render(conversion)
    assert "# skipped Deployment (apps/v1) metallb-system/controller in helm.yaml, document 1" in out
    assert "ServiceL2Status (metallb.io/v1beta1) metallb-system/l2-abc in helm.yaml, document 3, items[3]: " \
           "MetalLB status, not configuration" in out
    cfg = check(out)
    assert cfg.namespaces == {"shop": {"team": "a"}}
    result = allocate(cfg.pools, [ServiceSpec("s", namespace="shop")], {}, namespaces=cfg.namespaces)
    assert result.allocations["s"].pool == "team"


def test_yaml_1_1_numbers_stay_strings_as_in_kubernetes() -> None:
    (r,) = load_documents("apiVersion: metallb.io/v1beta1\nkind: Community\nmetadata: {name: c}\n"
                          "spec: {communities: [{name: a, value: 1234:1}]}\n", "c.yaml")
    assert r.obj["spec"]["communities"][0]["value"] == "1234:1"


def test_pure_interface() -> None:
    doc, warnings = to_config_document([
        {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool", "metadata": {"name": "p"},
         "spec": {"addresses": ["10.88.0.0/24"], "autoAssign": False}},
        {"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement", "metadata": {"name": "l2"},
         "spec": {"serviceSelectors": [{"matchLabels": {"a": "b"}}]}},
    ])
    assert doc["pool"] == [{"name": "p", "addresses": ["10.88.0.0/24"], "auto_assign": False}]
    assert len(warnings) == 1 and "serviceSelectors" in warnings[0]
    lbd_config.config_from_document(doc, Path("/etc/lbd.toml"))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20)
kinds = st.sampled_from(["IPAddressPool", "L2Advertisement", "BGPAdvertisement", "BGPPeer", "BFDProfile",
                         "Community", "ConfigMap", "Namespace", "Secret", "Other"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "apiVersion": st.sampled_from(["metallb.io/v1beta1", "metallb.io/v1beta2", "v1", "x"]),
    "kind": kinds,
    "metadata": st.one_of(json_values, st.fixed_dictionaries({"name": st.text(max_size=8)})),
    "spec": json_values,
    "data": st.one_of(st.none(), st.fixed_dictionaries({"config": st.sampled_from([
        "peers: [{my-asn: 1, peer-asn: 2, peer-address: 10.0.0.1}]", "address-pools: 3", "[", "bgp-communities: {a: '1:2'}",
    ])})),
}), max_size=5))
def test_hostile_input_never_crashes_and_always_renders_valid_toml(objs: list) -> None:
    conversion = convert([Resource(o, "fuzz") for o in objs])
    tomllib.loads(render(conversion))  # valid TOML whatever went in
    try:
        lbd_config.config_from_document(conversion.document(), Path("/f.toml"))
    except lbd_config.ConfigError:
        pass  # invalid config is reported, never a crash


# -- the command ---------------------------------------------------------------------------


def cli(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    from lbd.import_cmd import add_parser

    add_parser(sub)
    args = parser.parse_args(["import", "metallb", *argv])
    out, err = io.StringIO(), io.StringIO()
    status = run(args, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_exit_codes_and_check_mode(tmp_path: Path) -> None:
    status, out, err = cli(str(CORPUS / "seed-story.yaml"))
    assert status == 0 and "[[pool]]" in out and "2 resource" not in err
    status, out, err = cli("--check", str(CORPUS / "l2-03-preferred-edge.yaml"))
    assert status == 1 and out == "" and "warning: L2Advertisement" in err
    status, out, err = cli("-", stdin="kind: [")
    assert status == 2 and "not valid YAML at line 1" in err
    status, out, err = cli("-", stdin="apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    assert status == 2 and "no MetalLB configuration found" in err
    bad = tmp_path / "d" / "bad.yml"
    bad.parent.mkdir()
    bad.write_text("apiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: b}\n"
                   "spec: {ipAddressPools: [missing]}\n")
    status, out, err = cli(str(tmp_path / "d"))  # a directory
    assert status == 2 and 'no pool is named "missing"' in err and "[[bgp_advertisement]]" in out
    status, _, err = cli(str(tmp_path / "nope.yaml"))
    assert status == 2 and "No such file" in err


def test_lbd_import_metallb_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "metallb", "--check", str(CORPUS / "seed-story.yaml")]) == 0
    assert capsys.readouterr().out == ""


# -- the TOML writer ---------------------------------------------------------------------------

toml_scalars = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
                         st.text())
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=10)


@given(st.dictionaries(st.text(max_size=8), toml_values, max_size=5))
def test_toml_writer_round_trips(table: dict) -> None:
    text = "\n".join(f"{dumps_value_key(k)} = {dumps_value(v)}" for k, v in table.items())
    assert tomllib.loads(text) == table


def dumps_value_key(key: str) -> str:
    from lbd.tomlw import dumps_key

    return dumps_key(key)
