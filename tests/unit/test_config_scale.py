"""Issue 9: validating many ``[[service]]`` tables skips the readers of absent keys and looks
pools up by name; results and messages must be exactly those of the full readers."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbd.config import ConfigError, parse_config
from lbd.config.forward import parse_forwarding
from lbd.config.read import Errors, Table
from lbd.config.services import SERVICE_KEYS, _no_forwarding, _service_table
from lbd.model import Family, PortSpec

HEAD = '[node]\nname = "n1"\n[[pool]]\nname = "v4"\naddresses = ["10.88.0.0/24"]\n' \
       '[[pool]]\nname = "v6"\naddresses = ["fd77::/120"]\n'


@pytest.mark.parametrize("ports", [(), (PortSpec("tcp", 443),), (PortSpec("tcp", 80), PortSpec("udp", 53))])
@pytest.mark.parametrize("families", [(Family.IPV4,), (Family.IPV6,), (Family.IPV4, Family.IPV6)])
def test_no_forwarding_is_what_the_full_reader_gives(ports, families) -> None:
    t = Table(Errors("f"), "service", {"name": "a"}, SERVICE_KEYS)
    assert parse_forwarding(t, ports, families) == _no_forwarding()
    assert not t.errors.items


def test_a_plain_service_equals_one_with_its_defaults_spelled_out() -> None:
    plain, errors = _service_table({"name": "a", "pool": "v4"}, "service[0]", "f", "static/")
    assert not errors
    spelled, errors = _service_table({"name": "a", "pool": "v4", "addresses": [], "ports": [], "labels": {},
                                      "forward": "nat", "on_no_backend": "withdraw"}, "service[0]", "f", "static/")
    # forward/on_no_backend without backends are errors ("only applies to a service with backends"),
    # everything else must be equal.
    assert plain is not None and spelled is not None and plain == spelled
    assert plain.name == "static/a" and plain.labels == {} and plain.eligible_nodes is None


def test_errors_of_present_keys_are_still_reported() -> None:
    spec, errors = _service_table({"name": "a", "nodes": [], "labels": {"k": 1}, "share_key": "",
                                   "namespace": "Bad Name"}, "service[0]", "f")
    text = "\n".join(errors)
    assert "nodes: an empty list" in text and "labels" in text and "share_key" in text and "namespace" in text


def test_pool_cross_checks_by_name() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(HEAD + '[[service]]\nname = "a"\npool = "v6"\nip_families = ["ipv4"]\n'
                     '[[service]]\nname = "b"\npool = "nope"\n'
                     '[[service]]\nname = "c"\npool = "v4"\naddresses = ["fd77::1"]\n', Path("/x/lbd.toml"))
    text = "\n".join(exc.value.errors)
    assert 'service "a": ip_families: pool "v6" has no ipv4 addresses' in text
    assert 'service "b": pool: no pool is named "nope"' in text
    assert 'fd77::1 is not in pool "v4"' in text
    config = parse_config(HEAD + "".join(f'[[service]]\nname = "s{i}"\npool = "v4"\n' for i in range(200)),
                          Path("/x/lbd.toml"))
    assert len(config.services) == 200 and config.services[7].name == "static/s7"
