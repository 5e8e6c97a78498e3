"""The kubernetes source with ``forward = true``: ready EndpointSlice endpoints become backends."""

from __future__ import annotations

import ipaddress

import pytest

pytest.importorskip("yaml")

from lbd.model import Backend, PortSpec  # noqa: E402
from lbd.sources.kube_translate import backends_by_service  # noqa: E402
from lbd.sources.kubernetes import KubernetesSource  # noqa: E402


def service(ports):  # type: ignore[no-untyped-def]
    return {"metadata": {"name": "web", "namespace": "ns"}, "spec": {"type": "LoadBalancer", "ports": ports}}


def eps(name, address_type, ports, endpoints):  # type: ignore[no-untyped-def]
    return {"metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": address_type, "ports": ports, "endpoints": endpoints}


def test_ready_endpoints_by_port_name() -> None:
    services = {("ns", "web"): service([{"name": "http", "port": 80, "protocol": "TCP"},
                                        {"name": "dns", "port": 53, "protocol": "UDP"}])}
    slices = {
        ("ns", "a"): eps("a", "IPv4", [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353}], [
            {"addresses": ["10.88.1.10"], "conditions": {"ready": True}},
            {"addresses": ["10.88.1.11"]},  # ready unset means ready
            {"addresses": ["10.88.1.12"], "conditions": {"ready": False}},
            {"addresses": ["not-an-ip"]},
        ]),
        ("ns", "b"): eps("b", "FQDN", [{"name": "http", "port": 8080}], [{"addresses": ["example.com"]}]),
        ("ns", "c"): eps("c", "IPv4", [{"name": "http", "port": 8080}], [{"addresses": ["10.88.1.10"]}]),  # dup
    }
    ip = ipaddress.ip_address
    assert backends_by_service(services, slices) == {("ns", "web"): (
        Backend(PortSpec("tcp", 80), ip("10.88.1.10"), 8080), Backend(PortSpec("tcp", 80), ip("10.88.1.11"), 8080),
        Backend(PortSpec("udp", 53), ip("10.88.1.10"), 5353), Backend(PortSpec("udp", 53), ip("10.88.1.11"), 5353),
    )}


def test_unnamed_single_port_and_unknown_service() -> None:
    services = {("ns", "web"): service([{"port": 443}])}
    slices = {("ns", "a"): eps("a", "IPv6", [{"port": 8443}], [{"addresses": ["fd77::10"]}])}
    (backend,) = backends_by_service(services, slices)[("ns", "web")]
    assert backend.endpoint == "[fd77::10]:8443" and backend.port == PortSpec("tcp", 443)
    assert backends_by_service({}, slices) == {}
    garbage = {("ns", "x"): {"metadata": "nope", "ports": 5}, ("ns", "y"): eps("y", "IPv4", [{"port": "x"}], 7)}
    assert backends_by_service(services, garbage) == {}


def test_forward_option_is_off_by_default_and_validated() -> None:
    assert KubernetesSource.validate({"forward": True}) == []
    assert any(m.startswith("forward: ") for m in KubernetesSource.validate({"forward": "yes"}))
