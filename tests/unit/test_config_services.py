"""lbd.config: [[service]] (the static source) and the drop-in helpers."""

from __future__ import annotations

import ipaddress

import pytest
from config_helpers import FILE, errors, has_error, ok, only_error

from lbd.config.load import tomllib  # tomli before Python 3.11
from lbd.config import check_services, parse_service_table, parse_services_document
from lbd.model import Family, HealthCheckConfig, PortSpec, ServiceSpec


def test_service_defaults() -> None:
    (spec,) = ok('[[service]]\nname = "web"\n').services
    assert spec == ServiceSpec(name="static/web")
    assert spec.ip_families == (Family.IPV4,) and spec.eligible_nodes is None


def test_service_every_field() -> None:
    (spec,) = ok("""
[[service]]
name = "web"
pool = "lan"
addresses = ["fd77::150", "192.168.1.50"]
ports = ["tcp/80", "udp/443", "sctp/9"]
share_key = "k"
ip_families = ["ipv6", "ipv4"]
labels = { team = "a" }
nodes = ["n1", "n2"]
health_check = { type = "http", port = 8080, host = "::1", path = "/ready", expected_status = 204, interval = 5, timeout = 2.5, rise = 3, fall = 1 }
""").services
    assert spec == ServiceSpec(
        name="static/web", pool="lan",
        addresses=(ipaddress.ip_address("fd77::150"), ipaddress.ip_address("192.168.1.50")),
        ports=(PortSpec("tcp", 80), PortSpec("udp", 443), PortSpec("sctp", 9)), share_key="k",
        ip_families=(Family.IPV6, Family.IPV4), labels={"team": "a"}, eligible_nodes=frozenset({"n1", "n2"}),
        health_check=HealthCheckConfig(type="http", port=8080, host="::1", path="/ready", expected_status=204,
                                       interval=5.0, timeout=2.5, rise=3, fall=1),
    )


def test_ip_families_default_to_the_requested_addresses() -> None:
    (spec,) = ok('[[service]]\nname = "v6"\naddresses = ["fd77::120", "192.168.1.60"]\n').services
    assert spec.ip_families == (Family.IPV6, Family.IPV4)


def test_exec_and_tcp_health_checks() -> None:
    a, b = ok("""
[[service]]
name = "a"
health_check = { type = "exec", command = ["/usr/bin/check", "--quick"] }

[[service]]
name = "b"
health_check = { type = "tcp", port = 22 }
""").services
    assert a.health_check == HealthCheckConfig(type="exec", command=("/usr/bin/check", "--quick"))
    assert b.health_check == HealthCheckConfig(type="tcp", port=22)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('pool = 1', 'pool: expected a string, got an integer (1)'),
        ('addresses = ["192.168.1.49/32"]', 'addresses[0]: "192.168.1.49/32" is not an IP address '
                                            "(request one address, not a network)"),
        ('addresses = ["192.168.1.49", "192.168.1.50"]',
         'addresses[1]: "192.168.1.50": a service requests at most one address per family, and addresses[0] '
         "is already ipv4"),
        ('addresses = ["fd77::101"]\nip_families = ["ipv4"]',
         "addresses: fd77::101 is ipv6 but ip_families is ['ipv4']"),
        ('ip_families = ["ipv4x"]', 'ip_families[0]: "ipv4x" is not "ipv4" or "ipv6" (did you mean \'ipv4\'?)'),
        ('ip_families = []', 'ip_families: must list "ipv4", "ipv6" or both'),
        ('ip_families = ["ipv4", "ipv4"]', 'ip_families[1]: "ipv4" repeats ip_families[0]'),
        ('ports = ["tcp/80", "tcp/80"]', 'ports[1]: "tcp/80" repeats ports[0]'),
        ('ports = ["80/tcp"]', 'ports[0]: "80/tcp" is not protocol/port like "tcp/80"; write "tcp/80"'),
        ('ports = ["TCP/80"]', 'ports[0]: "TCP/80": the protocol must be tcp, udp or sctp; write "tcp/80"'),
        ('ports = ["icmp/1"]', 'ports[0]: "icmp/1": the protocol must be tcp, udp or sctp'),
        ('ports = ["tcp/0"]', 'ports[0]: "tcp/0": the port 0 is out of range 1..65535'),
        ('ports = ["tcp/65536"]', 'ports[0]: "tcp/65536": the port 65536 is out of range 1..65535'),
        ('ports = [80]', "ports[0]: expected a string, got an integer (80)"),
        ('share_key = ""', "share_key: must not be empty"),
        ('labels = { a = true }', "labels: a: expected a string, got a boolean (True)"),
        ('nodes = []', "nodes: an empty list would leave the service with no node: omit the key for every node"),
        ('health_check = "tcp"', 'health_check: expected a table, got a string ("tcp")'),
        ('health_check = { port = 80 }', "health_check: missing required key 'type'"),
        ('health_check = { type = "icmp" }', 'health_check: type: "icmp" is not one of "tcp", "http", "exec"'),
        ('health_check = { type = "http" }', "health_check: missing required key 'port'"),
        ('health_check = { type = "exec" }', "health_check: missing required key 'command' "
                                             "(an array: program and arguments)"),
        ('health_check = { type = "exec", command = [] }', "health_check: command: must name at least the "
                                                           "program to run"),
        ('health_check = { type = "tcp", port = 1, command = ["x"] }',
         "health_check: command: only applies to type = 'exec', not 'tcp'"),
        ('health_check = { type = "tcp", port = 1, path = "/x" }',
         "health_check: path: only applies to type = 'http', not 'tcp'"),
        ('health_check = { type = "http", port = 1, path = "x" }', 'health_check: path: "x" must start with \'/\''),
        ('health_check = { type = "http", port = 1, expected_status = 600 }',
         "health_check: expected_status: 600 is out of range 100..599"),
        ('health_check = { type = "tcp", port = 1, interval = 1, timeout = 2 }',
         "health_check: timeout: 2 s is longer than the interval (1 s)"),
        ('health_check = { type = "tcp", port = 1, interval = 0 }',
         "health_check: interval: 0 must be more than 0 seconds"),
        ('health_check = { type = "tcp", port = 1, rise = 0 }', "health_check: rise: 0 is out of range 1..1000"),
        ('health_check = { type = "tcp", port = 1, fall = 0 }', "health_check: fall: 0 is out of range 1..1000"),
        ('health_check = { type = "tcp", port = 70000 }', "health_check: port: 70000 is out of range 1..65535"),
        ('poll = "lan"', "unknown key 'poll' (did you mean 'pool'?)"),
    ],
)
def test_service_errors(body: str, expected: str) -> None:
    assert only_error(f'[[service]]\nname = "web"\n{body}\n') == f'{FILE}: service "web": {expected}'


def test_service_name_problems() -> None:
    found = errors("""
[[service]]
pool = "lan"

[[service]]
name = "a/b"

[[service]]
name = "dup"

[[service]]
name = "dup"
""")
    has_error(found, "service[0]: missing required key 'name'")
    has_error(found, 'service[1]: name: "a/b" must be 1-63 letters, digits, \'.\', \'_\' or \'-\', '
                     "starting with a letter or digit")
    has_error(found, 'service[3]: name: "dup" is already the name of service[2]')
    assert len(found) == 3, found


# --- services against pools ---------------------------------------------------------


def test_service_pool_cross_checks() -> None:
    found = errors("""
[[pool]]
name = "v4only"
addresses = ["10.88.0.0/24"]
auto_assign = false
avoid_buggy_ips = true

[[service]]
name = "missing-pool"
pool = "lann"

[[service]]
name = "outside"
addresses = ["10.99.0.1"]

[[service]]
name = "wrong-pool"
pool = "v4only"
addresses = ["192.168.1.49"]

[[service]]
name = "no-v6"
pool = "v4only"
ip_families = ["ipv4", "ipv6"]

[[service]]
name = "buggy"
addresses = ["10.88.0.255"]
""")
    has_error(found, 'service "missing-pool": pool: no pool is named "lann" (did you mean \'lan\'?)')
    has_error(found, 'service "outside": addresses[0]: 10.99.0.1 is not in any pool')
    has_error(found, 'service "wrong-pool": addresses[0]: 192.168.1.49 is not in pool "v4only"')
    has_error(found, 'service "no-v6": ip_families: pool "v4only" has no ipv6 addresses')
    has_error(found, 'service "buggy": addresses[0]: 10.88.0.255 ends in .0 or .255, which pool "v4only" '
                     "avoids (avoid_buggy_ips = true)")
    assert len(found) == 5, found


def test_requested_address_in_a_non_auto_assign_pool_is_fine() -> None:
    ok('[[pool]]\nname = "manual"\naddresses = ["10.88.0.0/24"]\nauto_assign = false\n'
       '[[service]]\nname = "s"\naddresses = ["10.88.0.7"]\n')


def test_two_services_on_one_address() -> None:
    shared = """
[[service]]
name = "a"
addresses = ["192.168.1.53"]
ports = ["udp/53"]
share_key = "dns"

[[service]]
name = "b"
addresses = ["192.168.1.53"]
ports = ["tcp/53"]
share_key = "dns"
"""
    ok(shared)
    conflict = ('service "b": addresses[0]: 192.168.1.53 is also requested by service "a"; two services share '
                "an address only with the same share_key and no common port")
    assert only_error(shared.replace('share_key = "dns"\n\n', 'share_key = "other"\n\n', 1)) == f"{FILE}: {conflict}"
    assert only_error(shared.replace("tcp/53", "udp/53")) == f"{FILE}: {conflict}"
    assert only_error(shared.replace('share_key = "dns"', "")) == f"{FILE}: {conflict}"


def test_errors_inside_a_service_do_not_hide_its_cross_checks() -> None:
    found = errors('[[service]]\nname = "s"\npool = "nope"\nports = ["bad"]\n')
    has_error(found, 'service "s": pool: no pool is named "nope"')
    has_error(found, 'service "s": ports[0]: "bad" is not protocol/port like "tcp/80"')
    assert len(found) == 2


# --- the helpers the directory source uses -------------------------------------------------


def test_parse_service_table_same_rules_and_messages() -> None:
    spec, problems = parse_service_table({"name": "web", "ports": ["tcp/80"]}, "service[0]", "/d/web.toml")
    assert problems == [] and spec == ServiceSpec(name="web", ports=(PortSpec("tcp", 80),))
    spec, problems = parse_service_table({"name": "web", "ports": ["tcp/0"]}, "service[0]", "/d/web.toml")
    assert spec is None
    assert problems == ['/d/web.toml: service "web": ports[0]: "tcp/0": the port 0 is out of range 1..65535']
    spec, problems = parse_service_table({"ports": []}, "service[4]", "/d/x.toml")
    assert spec is None and problems == ["/d/x.toml: service[4]: missing required key 'name'"]
    spec, problems = parse_service_table("nope", "service[1]", "/d/x.toml")  # type: ignore[arg-type]
    assert spec is None and problems == ['/d/x.toml: service[1]: expected a table, got a string ("nope")']


def test_parse_services_document() -> None:
    doc = tomllib.loads("""
[[service]]
name = "a"
ports = ["tcp/80"]

[[service]]
name = "b"
ports = ["tcp/x"]

[[service]]
name = "a"

[[servise]]
name = "c"
""")
    specs, problems = parse_services_document(doc, "/etc/lbd/services.d/x.toml", "dir/x/")
    assert [s.name for s in specs] == ["dir/x/a"]
    assert problems == [
        "/etc/lbd/services.d/x.toml: top level: unknown key 'servise' (did you mean 'service'?)",
        '/etc/lbd/services.d/x.toml: service "b": ports[0]: "tcp/x" is not protocol/port like "tcp/80"',
        '/etc/lbd/services.d/x.toml: service[2]: name: "a" is already the name of service[0]',
    ]
    specs, problems = parse_services_document({"service": {"name": "x"}}, "/f.toml", "p/")
    assert specs == [] and problems == ["/f.toml: service: expected an array of tables ([[service]]), got a table "
                                        "([service])"]


def test_check_services_for_drop_ins() -> None:
    pools = ok("").pools
    specs, _ = parse_services_document({"service": [{"name": "w", "addresses": ["10.1.1.1"]}]}, "/f.toml", "dir/")
    assert check_services(specs, pools, "/f.toml", "dir/") == [
        '/f.toml: service "w": addresses[0]: 10.1.1.1 is not in any pool']
