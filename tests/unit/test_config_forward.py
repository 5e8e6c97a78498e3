"""lbd.config: the forwarding keys of [[service]] and the [forwarding] section."""

from __future__ import annotations

import ipaddress

from config_helpers import errors, ok, only_error

from lbd.config import parse_services_document
from lbd.config.schema import ForwardingConfig
from lbd.model import Backend, HealthCheckConfig, PortSpec

T80 = PortSpec("tcp", 80)
A = ipaddress.ip_address


def test_backends_array_every_port_and_defaults() -> None:
    (spec,) = ok('[[service]]\nname = "web"\nports = ["tcp/80", "tcp/443"]\nbackends = ["10.88.1.10", "10.88.1.11"]\n').services
    assert spec.forward == "nat" and spec.snat is False and spec.on_no_backend == "withdraw"
    assert spec.backend_check is None
    assert spec.backends == (
        Backend(T80, A("10.88.1.10"), 80), Backend(T80, A("10.88.1.11"), 80),
        Backend(PortSpec("tcp", 443), A("10.88.1.10"), 443), Backend(PortSpec("tcp", 443), A("10.88.1.11"), 443),
    )


def test_backends_with_ports_weights_and_table_form() -> None:
    (spec,) = ok("""
[[service]]
name = "web"
ports = ["tcp/80", "udp/53"]
forward = "nat"
snat = true
on_no_backend = "keep"
backends = { "tcp/80" = ["10.88.1.10:8080", { address = "10.88.1.11", port = 8081, weight = 0 }], "udp/53" = ["10.88.1.12"] }
backend_check = { type = "http", path = "/healthz", interval = 1, timeout = 0.5 }
""").services
    assert spec.snat and spec.on_no_backend == "keep"
    assert spec.backends == (
        Backend(T80, A("10.88.1.10"), 8080), Backend(T80, A("10.88.1.11"), 8081, weight=0),
        Backend(PortSpec("udp", 53), A("10.88.1.12"), 53),
    )
    assert spec.backend_check == HealthCheckConfig(type="http", port=None, host="", path="/healthz",
                                                   interval=1.0, timeout=0.5)


def test_single_port_service_may_name_backend_ports_and_ipv6() -> None:
    (spec,) = ok('[[service]]\nname = "w"\nip_families = ["ipv6"]\nports = ["tcp/80"]\n'
                 'backends = ["[fd77::10]:8080", "fd77::11"]\n').services
    assert [b.endpoint for b in spec.backends] == ["[fd77::10]:8080", "[fd77::11]:80"]


def test_dsr() -> None:
    (spec,) = ok('[[service]]\nname = "w"\nports = ["tcp/80"]\nforward = "dsr"\nbackends = ["10.88.1.10"]\n').services
    assert spec.forward == "dsr"
    message = only_error('[[service]]\nname = "w"\nports = ["tcp/80"]\nforward = "dsr"\nbackends = ["10.88.1.10:8080"]\n')
    assert 'service "w": backends: 10.88.1.10:8080: forward = "dsr" cannot change the port' in message
    message = only_error('[[service]]\nname = "w"\nports = ["tcp/80"]\nforward = "dsr"\nsnat = true\nbackends = ["10.88.1.10"]\n')
    assert 'service "w": snat: only applies to forward = "nat"' in message


def test_errors_have_key_paths() -> None:
    assert 'service "w": backends[0]: "10.88.1.300" is not an IP address' in only_error(
        '[[service]]\nname = "w"\nports = ["tcp/80"]\nbackends = ["10.88.1.300"]\n')
    assert "backends[1]: 10.88.1.10:80 repeats [0]" in only_error(
        '[[service]]\nname = "w"\nports = ["tcp/80"]\nbackends = ["10.88.1.10", "10.88.1.10:80"]\n')
    assert "a backend port in a list for several service ports is ambiguous" in only_error(
        '[[service]]\nname = "w"\nports = ["tcp/80", "tcp/81"]\nbackends = ["10.88.1.10:8080"]\n')
    assert 'backends."tcp/81": "tcp/81" is not one of the service\'s ports' in only_error(
        '[[service]]\nname = "w"\nports = ["tcp/80"]\nbackends = { "tcp/81" = ["10.88.1.10"] }\n')
    assert "backends: the service has no ports to forward" in only_error(
        '[[service]]\nname = "w"\nbackends = ["10.88.1.10"]\n')
    assert "backends[0]: weight: 10001 is out of range 0..10000" in only_error(
        '[[service]]\nname = "w"\nports = ["tcp/80"]\nbackends = [{ address = "10.88.1.10", weight = 10001 }]\n')
    assert len(errors('[[service]]\nname = "w"\nports = ["tcp/80", "tcp/81"]\nbackends = ["fd77::1"]\n')) == 1
    assert "fd77::1 is ipv6 but the service's ip_families is ['ipv4']" in only_error(
        '[[service]]\nname = "w"\nports = ["tcp/80"]\nbackends = ["fd77::1"]\n')
    assert 'service "w": forward: only applies to a service with backends' in only_error(
        '[[service]]\nname = "w"\nforward = "dsr"\n')
    assert "backend_check: host: a backend check connects to each backend's own address" in only_error(
        '[[service]]\nname = "w"\nports = ["tcp/80"]\nbackends = ["10.88.1.10"]\nbackend_check = { host = "1.2.3.4" }\n')
    assert "backend_check: command: only applies to type = 'exec'" in only_error(
        '[[service]]\nname = "w"\nports = ["tcp/80"]\nbackends = ["10.88.1.10"]\nbackend_check = { command = ["x"] }\n')
    assert 'forward: "lvs" is not one of' in only_error(
        '[[service]]\nname = "w"\nports = ["tcp/80"]\nbackends = ["10.88.1.10"]\nforward = "lvs"\n').replace("'", '"')


def test_drop_in_files_get_the_same_parser() -> None:
    specs, problems = parse_services_document(
        {"service": [{"name": "w", "ports": ["tcp/80"], "backends": ["10.88.1.10", {"address": "10.88.1.11"}]}]},
        "/etc/lbd.d/w.toml", "files/")
    assert not problems and [b.endpoint for b in specs[0].backends] == ["10.88.1.10:80", "10.88.1.11:80"]
    specs, problems = parse_services_document(
        {"service": [{"name": "w", "ports": ["tcp/80"], "backends": [42]}]}, "/etc/lbd.d/w.toml", "files/")
    assert not specs and problems == [
        '/etc/lbd.d/w.toml: service "w": backends[0]: expected "address[:port]" or '
        "{ address = ..., port = ..., weight = ... }, got an integer (42)"]


def test_forwarding_section() -> None:
    assert ok("").forwarding == ForwardingConfig()
    assert ok("[forwarding]\nseed = 7\ntable_size = 131071\n").forwarding == ForwardingConfig(seed=7, table_size=131071)
    assert "forwarding: table_size: 65536 is not a prime" in only_error("[forwarding]\ntable_size = 65536\n")
    assert "forwarding: seed: 4294967296 is out of range" in only_error("[forwarding]\nseed = 4294967296\n")
