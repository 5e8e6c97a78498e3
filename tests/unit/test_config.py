"""lbd.config: the document as a whole, node/cluster/pools/L2/export/log/metrics/sources."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
from config_helpers import BASE, FILE, errors, has_error, ok, only_error

from lbd.config import ConfigError, load_config, parse_config
from lbd.config.schema import ClusterConfig, L2AdvertisementConfig, LogConfig, MetricsConfig
from lbd.model import Family
from lbd.selectors import normalize

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "lbd.toml"


# --- the file as a whole ------------------------------------------------------


def test_minimal_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "host-from-os")
    config = parse_config("", FILE)
    assert config.path == FILE
    assert config.node.name == "host-from-os"
    assert config.node.labels == {}
    assert config.node.state_dir == Path("/var/lib/lbd")
    assert config.node.control_socket == Path("/run/lbd/lbd.sock")
    assert config.node.drained is False
    assert config.node.stop_linger == 0.5
    assert config.cluster == ClusterConfig()
    assert config.cluster.enabled is False
    assert config.pools == config.l2_advertisements == config.bgp_peers == ()
    assert config.services == config.sources == config.route_exports == ()
    assert config.log == LogConfig() and config.metrics == MetricsConfig()


def test_config_is_frozen() -> None:
    config = ok("")
    with pytest.raises(FrozenInstanceError):
        config.pools = ()  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        config.pools[0].name = "x"  # type: ignore[misc]


def test_error_format_from_the_issue() -> None:
    message = only_error("""
[[pool]]
name = "wan"
addresses = ["10.0.0.0/24", "10.0.0.300/24"]
""")
    assert message == '/etc/lbd.toml: pool "wan": addresses[1]: "10.0.0.300/24" is not a CIDR or a range'


def test_toml_syntax_error_has_line_and_column() -> None:
    message = only_error('[node]\nname = "n1"\nlabels = {a = }\n', base="")
    assert re.fullmatch(r"/etc/lbd\.toml: line 3, column \d+: .+", message), message


def test_toml_syntax_error_at_end_of_file() -> None:
    message = only_error('[node\n', base="")
    assert message.startswith("/etc/lbd.toml: "), message


def test_every_error_is_collected_not_just_the_first() -> None:
    found = errors("""
[cluster]
profile = "wan"

[[pool]]
name = "b"
addresses = ["10.0.0.1/24"]
auto_assign = "yes"

[[l2_advertisement]]
pools = ["nope"]
announce_burst = 0
announce_rate = 0
takeover_rate = 0

[log]
level = "verbose"
""")
    assert len(found) == 8, found
    has_error(found, 'cluster: profile: "wan" is not one of "default", "fast", "lan" (did you mean \'lan\'?)')
    assert any("pool \"b\": addresses[0]" in m and "host bits set" in m for m in found)
    has_error(found, 'pool "b": auto_assign: expected a boolean, got a string ("yes"); write true without quotes')
    has_error(found, "l2_advertisement[0]: announce_burst: 0 is out of range 1..100")
    has_error(found, "l2_advertisement[0]: announce_rate: 0 is out of range 1..1000000")
    has_error(found, "l2_advertisement[0]: takeover_rate: 0 is out of range 1..1000000")
    has_error(found, 'l2_advertisement[0]: pools: no pool is named "nope"')
    has_error(found, 'log: level: "verbose" is not one of "debug", "info", "warning", "error"')


def test_unknown_keys_with_did_you_mean_at_every_level() -> None:
    found = errors("""
[nodes]
x = 1

[log]
levle = "info"

[[pool]]
name = "p2"
adresses = ["10.9.0.0/24"]

[[service]]
name = "s"
health_check = { type = "tcp", port = 1, intervall = 3 }
""")
    has_error(found, "top level: unknown key 'nodes' (did you mean 'node'?)")
    has_error(found, "log: unknown key 'levle' (did you mean 'level'?)")
    has_error(found, "pool \"p2\": unknown key 'adresses' (did you mean 'addresses'?)")
    has_error(found, "pool \"p2\": missing required key 'addresses'")
    has_error(found, "service \"s\": health_check: unknown key 'intervall' (did you mean 'interval'?)")


def test_unknown_key_without_close_match_has_no_hint() -> None:
    assert only_error("[metrics]\nzzzzzz = 1\n").endswith("metrics: unknown key 'zzzzzz'")


def test_table_where_an_array_of_tables_is_expected() -> None:
    found = errors('[pool]\nname = "x"\n', base='[node]\nname = "n"\n')
    has_error(found, "pool: expected an array of tables ([[pool]]), got a table ([pool])")
    found = errors('[[log]]\nlevel = "info"\n', base="")
    has_error(found, "log: expected a table ([log]), got an array (write [log], not [[log]])")


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[node]\nname = 7\n', "node: name: expected a string, got an integer (7)"),
        ('[node]\nname = ""\n', "node: name: must not be empty"),
        ('[node]\nlabels = ["a"]\n', "node: labels: expected a table of strings, got an array"),
        ('[node]\nlabels = { a = 1 }\n', "node: labels: a: expected a string, got an integer (1)"),
        ('[node]\ndrained = 1\n', "node: drained: expected a boolean, got an integer (1)"),
        ('[node]\nstate_dir = 5\n', "node: state_dir: expected a string, got an integer (5)"),
        ('[node]\nname = "n1"\nstop_linger = -0.1\n', "node: stop_linger: -0.1 must be at least 0 seconds"),
        ('[node]\nname = "n1"\nstop_linger = 11\n', "node: stop_linger: 11 must be at most 10 seconds"),
        ('[cluster]\njoin = "10.0.0.1"\nallow_plaintext = true\n', 'cluster: join: expected an array, got a string ("10.0.0.1")'),
        ('[cluster]\njoin = ["10.0.0.1:99999"]\nallow_plaintext = true\n',
         'cluster: join[0]: "10.0.0.1:99999": the port 99999 is out of range 1..65535'),
        ('[cluster]\njoin = ["fd77::1:7946"]\nallow_plaintext = true\n', ""),  # a bare IPv6 address: the default port
        ('[cluster]\njoin = ["bad host!"]\nallow_plaintext = true\n', 'cluster: join[0]: "bad host!" is neither an IP address nor a host name'),
        ('[cluster]\nbind = "node1:7946"\nallow_plaintext = true\n', 'cluster: bind: "node1" is not an IP address'),
        ('[cluster]\nfailback_delay = -1\n', "cluster: failback_delay: -1 must be at least 0 seconds"),
        ('[cluster]\nfailback_delay = "later"\n',
         'cluster: failback_delay: expected a number of seconds or "never", got a string ("later")'),
        ('[cluster]\nfailback_delay = nan\n', "cluster: failback_delay: nan is not a finite number of seconds"),
        ('[log]\nformat = "text"\n', 'log: format: "text" is not one of "auto", "console", "json"'),
        ('[metrics]\nlisten = "127.0.0.1"\n', 'metrics: listen: "127.0.0.1" has no port (expected host:port)'),
        ('[metrics]\nlisten = "[::1:9120"\n', 'metrics: listen: "[::1:9120": missing \']\' after the IPv6 address'),
    ],
)
def test_scalar_errors(snippet: str, expected: str) -> None:
    base = "" if snippet.startswith("[node]") else '[node]\nname = "n1"\n'
    if not expected:
        ok(snippet, base=base)
        return
    assert only_error(snippet, base=base) == f"{FILE}: {expected}"


def test_node_and_cluster_values() -> None:
    config = parse_config("""
[node]
name = "n7"
labels = { zone = "a", "topology.example/rack" = "r2" }
state_dir = "state"
control_socket = "/run/x.sock"
drained = true
stop_linger = 0

[cluster]
bind = "10.77.0.1"
advertise = "10.77.0.1:8000"
join = ["10.77.0.2", "node3.example:7000", "[fd77::3]:7946", "fd77::4"]
keys_file = "/etc/lbd/keys"
profile = "lan"
failback_delay = "never"
""", Path("/srv/lbd/lbd.toml"))
    assert config.node.name == "n7"
    assert config.node.labels == {"zone": "a", "topology.example/rack": "r2"}
    assert config.node.state_dir == Path("/srv/lbd/state"), "relative paths are relative to the config file"
    assert config.node.drained is True
    assert config.node.stop_linger == 0
    cluster = config.cluster
    assert cluster.enabled is True
    assert cluster.bind == "10.77.0.1:7946"
    assert cluster.advertise == "10.77.0.1:8000"
    assert cluster.join == ("10.77.0.2:7946", "node3.example:7000", "[fd77::3]:7946", "[fd77::4]:7946")
    assert cluster.keys_file == Path("/etc/lbd/keys")
    assert cluster.profile == "lan"
    assert cluster.failback_delay is None


def test_cluster_enabled_by_join_alone_and_failback_number() -> None:
    config = ok('[cluster]\njoin = ["10.77.0.9"]\nfailback_delay = 0\nallow_plaintext = true\n')
    assert config.cluster.enabled and config.cluster.bind == "0.0.0.0:7946"
    assert config.cluster.failback_delay == 0.0
    assert ok('[cluster]\nprofile = "fast"\n').cluster.enabled is False


PLAINTEXT = ("cluster: keys_file: missing: the cluster {why} without encryption, so anyone who reaches the port "
             "can join it and rewrite allocations; write a key from `lbd keygen` into a keys file and set keys_file, "
             "or set allow_plaintext = true")


@pytest.mark.parametrize(("snippet", "why"), [
    ('[cluster]\njoin = ["10.77.0.9"]\n', "joins peers"),
    ('[cluster]\nbind = "127.0.0.1:7946"\njoin = ["127.0.0.1:7947"]\n', "joins peers"),
    ('[cluster]\nbind = "10.77.0.1"\n', "binds 10.77.0.1:7946"),
    ('[cluster]\nbind = "0.0.0.0"\n', "binds 0.0.0.0:7946"),
    ('[cluster]\nbind = "[::]:7000"\n', "binds [::]:7000"),
])
def test_plaintext_cluster_is_refused_unless_allowed(snippet: str, why: str) -> None:
    assert only_error(snippet) == f"{FILE}: " + PLAINTEXT.format(why=why)
    assert ok(snippet + "allow_plaintext = true\n").cluster.allow_plaintext is True
    assert ok(snippet + 'keys_file = "/etc/lbd/keys"\n').cluster.keys_file is not None


def test_loopback_only_cluster_may_be_plaintext() -> None:
    assert ok('[cluster]\nbind = "127.0.0.1:7946"\n').cluster.enabled
    assert ok('[cluster]\nbind = "[::1]:7946"\n').cluster.enabled
    assert only_error('[cluster]\nbind = "127.0.0.1"\nallow_plaintext = 1\n') == \
        f"{FILE}: cluster: allow_plaintext: expected a boolean, got an integer (1)"


def test_log_and_metrics_values() -> None:
    config = ok('[log]\nlevel = "debug"\nformat = "json"\n[metrics]\nlisten = "[::1]:9120"\n')
    assert config.log == LogConfig(level="debug", format="json")
    assert config.metrics.listen == "[::1]:9120"


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml")
    assert info.value.errors == [f"{tmp_path / 'missing.toml'}: cannot read: No such file or directory"]
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[node]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.errors == [f"{bad}: line 2, column 12: the file is not valid UTF-8"]
    assert isinstance(info.value, ValueError)


# --- pools ----------------------------------------------------------------------


def test_pool_values_cidr_range_and_single_address() -> None:
    config = ok("""
[[pool]]
name = "mixed"
addresses = ["10.88.0.0/30", " 10.88.1.10 - 10.88.1.12 ", "10.88.2.7", "fd77:0:0:1::/126"]
auto_assign = false
avoid_buggy_ips = true
""")
    pool = config.pool("mixed")
    assert pool is not None and pool.auto_assign is False and pool.avoid_buggy_ips is True
    sizes = [(str(r.first), str(r.last), r.size, r.family) for r in pool.addresses]
    assert sizes == [
        ("10.88.0.0", "10.88.0.3", 4, Family.IPV4),
        ("10.88.1.10", "10.88.1.12", 3, Family.IPV4),
        ("10.88.2.7", "10.88.2.7", 1, Family.IPV4),
        ("fd77:0:0:1::", "fd77:0:0:1::3", 4, Family.IPV6),
    ]
    lan = config.pool("lan")
    assert lan is not None and lan.auto_assign and not lan.avoid_buggy_ips
    assert lan.addresses[0].size == 16 and lan.addresses[0].text == "192.168.1.48/28"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("10.0.0.300/24", '"10.0.0.300/24" is not a CIDR or a range'),
        ("10.0.0.1/24", '"10.0.0.1/24" has host bits set: the network is "10.0.0.0/24"; for the addresses '
                        'from 10.0.0.1 on, write the range "10.0.0.1-10.0.0.255"'),
        ("10.0.0.9-10.0.0.1", '"10.0.0.9-10.0.0.1": the first address is after the last'),
        ("10.0.0.1-fd77::1", '"10.0.0.1-fd77::1" mixes IPv4 and IPv6'),
        ("10.0.0.1-10.0.0.2-10.0.0.3", '"10.0.0.1-10.0.0.2-10.0.0.3" is not a CIDR or a range'),
        ("fe80::1%eth0", '"fe80::1%eth0" is not a CIDR or a range'),
        ("lan", '"lan" is not a CIDR or a range'),
        ("", '"" is not a CIDR or a range'),
    ],
)
def test_pool_address_errors(entry: str, expected: str) -> None:
    found = errors(f'[[pool]]\nname = "p"\naddresses = ["10.9.0.0/24", "{entry}"]\n')
    assert found == [f'{FILE}: pool "p": addresses[1]: {expected}']


def test_pool_structural_errors() -> None:
    found = errors("""
[[pool]]
addresses = ["10.9.0.0/24"]

[[pool]]
name = "bad name!"
addresses = ["10.9.1.0/24"]

[[pool]]
name = "empty"
addresses = []

[[pool]]
name = "typed"
addresses = ["10.9.2.0/24", 5]
""")
    has_error(found, "pool[1]: missing required key 'name'")
    has_error(found, 'pool[2]: name: "bad name!" must be 1-63 letters, digits, \'.\', \'_\' or \'-\', '
                     "starting with a letter or digit")
    has_error(found, 'pool "empty": addresses: must list at least one CIDR or range')
    has_error(found, 'pool "typed": addresses[1]: expected a string, got an integer (5)')
    assert len(found) == 4, found


def test_duplicate_pool_names() -> None:
    found = errors('[[pool]]\nname = "lan"\naddresses = ["10.9.0.0/24"]\n')
    assert found == [f'{FILE}: pool[1]: name: "lan" is already the name of pool[0]']


def test_overlapping_pools_across_pools_name_both() -> None:
    found = errors('[[pool]]\nname = "other"\naddresses = ["192.168.1.60-192.168.1.70"]\n')
    assert found == [
        f'{FILE}: pool "other": addresses[0]: "192.168.1.60-192.168.1.70" overlaps "192.168.1.48/28" '
        '(pool "lan": addresses[0])'
    ]


def test_overlapping_within_one_pool_and_ipv6() -> None:
    found = errors("""
[[pool]]
name = "self"
addresses = ["10.9.0.0/24", "10.8.0.0/24", "10.9.0.128/25", "fd77::180/121"]
""")
    has_error(found, 'pool "self": addresses[2]: "10.9.0.128/25" overlaps "10.9.0.0/24" (pool "self": addresses[0])')
    has_error(found, 'pool "self": addresses[3]: "fd77::180/121" overlaps "fd77::100-fd77::1ff" (pool "lan": addresses[1])')
    assert len(found) == 2, found


def test_adjacent_ranges_do_not_overlap_and_families_never_collide() -> None:
    ok('[[pool]]\nname = "next"\naddresses = ["192.168.1.64/28", "192.168.1.40-192.168.1.47", "::ffff:c0a8:130/124"]\n')


def test_overlap_index_counts_broken_entries() -> None:
    found = errors('[[pool]]\nname = "o"\naddresses = ["nonsense", "192.168.1.50"]\n')
    has_error(found, 'pool "o": addresses[1]: "192.168.1.50" overlaps "192.168.1.48/28" (pool "lan": addresses[0])')


# --- L2 advertisements -------------------------------------------------------------


def test_l2_defaults_and_values() -> None:
    config = ok("""
[[l2_advertisement]]

[[l2_advertisement]]
name = "lan-resp"
pools = ["lan"]
interfaces = ["eth0", "br-lan.10"]
node_selector = { rack = "r1" }
mode = "responder"
announce_burst = 5
announce_interval = 0
announce_rate = 200
takeover_rate = 3000
""")
    first, second = config.l2_advertisements
    assert first == L2AdvertisementConfig(name="l2-0")
    assert second == L2AdvertisementConfig(
        name="lan-resp", pools=("lan",), interfaces=("eth0", "br-lan.10"), node_selector={"rack": "r1"},
        mode="responder", announce_burst=5, announce_interval=0.0, announce_rate=200, takeover_rate=3000,
    )


def test_l2_errors() -> None:
    found = errors("""
[[l2_advertisement]]
name = "x"
pools = ["lan", "lan", "wan"]
interfaces = ["eth0/1", "averyveryverylongname", "eth0", "eth0"]
mode = "arp"
announce_interval = "10s"

[[l2_advertisement]]
name = "x"
""")
    has_error(found, 'l2_advertisement "x": pools[1]: "lan" repeats pools[0]')
    has_error(found, 'l2_advertisement "x": pools: no pool is named "wan" (did you mean \'lan\'?)')
    has_error(found, 'l2_advertisement "x": interfaces[0]: "eth0/1" is not a valid interface name '
                     "(1-15 characters, no '/', ':' or spaces)")
    has_error(found, 'l2_advertisement "x": interfaces[1]: "averyveryverylongname" is not a valid interface '
                     "name (1-15 characters, no '/', ':' or spaces)")
    has_error(found, 'l2_advertisement "x": interfaces[3]: "eth0" repeats interfaces[2]')
    has_error(found, 'l2_advertisement "x": mode: "arp" is not one of "bind", "responder"')
    has_error(found, 'l2_advertisement "x": announce_interval: expected a number of seconds, got a string ("10s"); '
                     "durations are plain numbers of seconds: write 10")
    has_error(found, 'l2_advertisement[1]: name: "x" is already the name of l2_advertisement[0]')
    assert len(found) == 8, found


# --- route export ---------------------------------------------------------------


def test_route_export_defaults_and_values() -> None:
    config = ok("""
[[route_export]]
table = 100

[[route_export]]
name = "main"
table = 254
allow_main_table = true
pools = ["lan"]
protocol = 200
metric = 50
interface = "dummy0"
node_selector = { bird = "yes" }
""")
    first, second = config.route_exports
    assert (first.name, first.table, first.pools, first.protocol, first.metric, first.interface) == (
        "export-0", 100, (), 252, None, "lo")
    assert (second.table, second.pools, second.protocol, second.metric, second.interface, second.node_selector) == (
        254, ("lan",), 200, 50, "dummy0", normalize({"bird": "yes"}))


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("", "route_export[0]: missing required key 'table'"),
        ("table = 0", "route_export[0]: table: 0 is out of range 1..4294967295"),
        ("table = 255", "route_export[0]: table: 255 is the kernel's 'local' table; use a table of your own, "
                        "for example 100, and export it from BIRD or FRR"),
        ("table = 253", "route_export[0]: table: 253 is the kernel's 'default' table; use a table of your own, "
                        "for example 100, and export it from BIRD or FRR"),
        ("table = 254", "route_export[0]: table: 254 is the kernel's 'main' table; use a table of your own, "
                        "for example 100, and export it from BIRD or FRR (set allow_main_table = true to "
                        "really use it)"),
        ("table = 4294967296", "route_export[0]: table: 4294967296 is out of range 1..4294967295"),
        ("table = 100\nprotocol = 12", "route_export[0]: protocol: 12 is the 'bird' route protocol; lbd must "
                                       "mark its routes with a number of its own (default 252)"),
        ("table = 100\nprotocol = 256", "route_export[0]: protocol: 256 is out of range 1..255"),
        ("table = 100\nmetric = -1", "route_export[0]: metric: -1 is out of range 0..4294967295"),
        ("table = 100\npools = [\"wan\"]", 'route_export[0]: pools: no pool is named "wan" (did you mean \'lan\'?)'),
        ("table = 100.0", "route_export[0]: table: expected an integer, got a float (100.0)"),
        ("table = \"100\"", 'route_export[0]: table: expected an integer, got a string ("100"); '
                            "write the number without quotes"),
    ],
)
def test_route_export_errors(snippet: str, expected: str) -> None:
    assert only_error(f"[[route_export]]\n{snippet}\n") == f"{FILE}: {expected}"


# --- sources ----------------------------------------------------------------------


def test_sources_options_and_validator() -> None:
    seen = []

    def validate(source):
        seen.append(source)
        if source.type == "kubernetes":
            return ["kubeconfig: expected a string, got an integer (5)"]
        return []

    text = """
[[source]]
type = "directory"
path = "/etc/lbd/services.d"

[[source]]
type = "kubernetes"
name = "k8s"
kubeconfig = 5
"""
    found = errors(text, validate_source=validate)
    assert found == [f'{FILE}: source "k8s": kubeconfig: expected a string, got an integer (5)']
    directory = seen[0]
    assert (directory.type, directory.name, dict(directory.options)) == (
        "directory", "directory", {"path": "/etc/lbd/services.d"})
    config = ok(text.replace("kubeconfig = 5", 'kubeconfig = "/root/.kube/config"'), validate_source=lambda s: [])
    assert [s.name for s in config.sources] == ["directory", "k8s"]
    assert config.sources[1].options == {"kubeconfig": "/root/.kube/config"}


def test_source_validator_prefixed_messages_are_not_doubled() -> None:
    found = errors('[[source]]\ntype = "x"\n', validate_source=lambda s: [f'source "{s.name}": type: unknown'])
    assert found == [f'{FILE}: source "x": type: unknown']


def test_source_validator_crash_is_a_config_error() -> None:
    def broken(source):
        raise RuntimeError("boom")

    found = errors('[[source]]\ntype = "x"\n', validate_source=broken)
    assert found == [f"{FILE}: source \"x\": the 'x' source's validator failed: RuntimeError: boom"]


def test_source_errors() -> None:
    found = errors("""
[[source]]
path = "/x"

[[source]]
type = "directory"

[[source]]
type = "directory"
""")
    has_error(found, "source[0]: missing required key 'type'")
    has_error(found, 'source[2]: name: "directory" is already the name of source[1] '
                     "(set 'name' to run two sources of one type)")
    assert len(found) == 2


# --- the example file ----------------------------------------------------------------


def test_example_file_is_valid_and_is_the_user_story() -> None:
    config = load_config(EXAMPLE)
    lan, routed = config.pools
    assert (lan.name, [r.text for r in lan.addresses]) == ("lan", ["192.168.1.48/28"])
    assert lan.addresses[0].size == 16
    assert (routed.name, [r.text for r in routed.addresses]) == ("routed", ["10.42.0.0/16"])
    (l2,) = config.l2_advertisements
    assert l2.pools == ("lan",)
    (peer,) = config.bgp_peers
    assert peer.peer_address == ipaddress.ip_address("192.168.1.254")
    assert peer.my_asn == peer.peer_asn == 64512
    (adv,) = config.bgp_advertisements
    assert adv.pools == ("routed",) and adv.aggregation_length == 32 and adv.peers == (peer.name,)
    assert config.services and all(s.name.startswith("static/") for s in config.services)


def test_example_route_export_alternative_is_valid() -> None:
    """Uncommenting the Calico alternative (and dropping the BGP speaker) is valid too."""
    text = EXAMPLE.read_text()
    block = text[text.index("# [[route_export]]"):text.index("# --- Services")]
    uncommented = "\n".join(line[2:] if line.startswith("# ") else line for line in block.splitlines())
    text = text.replace(block, uncommented + "\n")
    config = parse_config(text, EXAMPLE)
    (export,) = config.route_exports
    assert (export.table, export.pools, export.protocol, export.interface) == (100, ("routed",), 252, "lo")


def test_example_cluster_block_is_valid() -> None:
    text = EXAMPLE.read_text()
    block = text[text.index("# [cluster]"):text.index("# --- Address pools")]
    uncommented = "\n".join(line[2:] if line.startswith("# ") else line for line in block.splitlines())
    config = parse_config(text.replace(block, uncommented + "\n"), EXAMPLE)
    assert config.cluster.enabled and config.cluster.join == ("192.168.1.12:7946", "192.168.1.13:7946")


def test_base_skeleton_is_valid() -> None:
    assert ok("").pool("lan") is not None
    assert BASE.strip()


# --- docs/configuration.md --------------------------------------------------------


def _doc_blocks(lang: str) -> list[str]:
    text = (REPO / "docs" / "configuration.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_documented_examples_are_valid() -> None:
    blocks = _doc_blocks("toml")
    assert len(blocks) >= 2
    story = parse_config(blocks[-1], FILE)
    assert [p.name for p in story.pools] == ["lan", "routed"]
    assert story.bgp_advertisements[0].aggregation_length == 32
    assert story.bgp_peers[0].my_asn == story.bgp_peers[0].peer_asn == 64512
    # the [communities] snippet is valid on its own
    assert parse_config('[node]\nname = "n"\n' + blocks[0], FILE).communities["tenant-a"] == "large:64512:1:42"


def test_documented_error_output_is_what_lbd_prints() -> None:
    shown = _doc_blocks("")[0]  # the first plain fence: the `lbd check` output
    expected = [line for line in shown.splitlines() if line.startswith("/etc/lbd.toml: ")]
    found = errors("""
[[pool]]
name = "lan2"
addresses = ["10.0.0.0/24"]
""", base='[node]\nname = "n"\n[[pool]]\nname = "lan"\naddresses = ["192.168.1.48/28", "10.0.0.300/24"]\n'
         'auto_asign = true\n[[l2_advertisement]]\nname = "lan-arp"\npools = ["lna"]\n')
    assert found == expected


def test_every_key_is_documented() -> None:
    from lbd.config import load as cfg
    from lbd.config.bgp import ADVERTISEMENT_KEYS, PEER_KEYS
    from lbd.config.health import HEALTH_KEYS
    from lbd.config.services import SERVICE_KEYS
    from lbd.config.hooks import HOOK_EVENTS, HOOK_KEYS

    text = (REPO / "docs" / "configuration.md").read_text()
    for key in (cfg.TOP_KEYS + cfg.NODE_KEYS + cfg.CLUSTER_KEYS + cfg.POOL_KEYS + cfg.L2_KEYS + cfg.EXPORT_KEYS
                + cfg.LOG_KEYS + cfg.METRICS_KEYS + PEER_KEYS + ADVERTISEMENT_KEYS + SERVICE_KEYS + HEALTH_KEYS
                + HOOK_KEYS + HOOK_EVENTS):
        assert f"`{key}`" in text or f"[{key}]" in text or f"[[{key}]]" in text, key
