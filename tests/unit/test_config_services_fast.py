"""Issue 9: plain ``[[service]]`` tables (name, pool, ports) are read by a direct path that
must give exactly what the full reader gives, and leave everything else (and every error)
to the full reader."""

from __future__ import annotations

import pytest

from lbd.config.services import _plain_service, _read_service_table, _service_table

PLAIN = [
    {"name": "web"},
    {"name": "web", "pool": "lan"},
    {"name": "a.b_c-1", "pool": "p", "ports": []},
    {"name": "web", "ports": ["tcp/80", "udp/53", "sctp/9"]},
    {"name": "web", "pool": "lan", "ports": [" tcp/443 "]},
]
NOT_PLAIN = [
    {"name": "web", "pool": ""},
    {"name": "-web"},
    {"name": 3},
    {"pool": "lan"},
    {"name": "web", "pool": 7},
    {"name": "web", "ports": "tcp/80"},
    {"name": "web", "ports": ["tcp/80", "tcp/80"]},
    {"name": "web", "ports": ["80/tcp"]},
    {"name": "web", "ports": ["tcp/0"]},
    {"name": "web", "ports": ["TCP/80"]},
    {"name": "web", "ports": [80]},
    {"name": "web", "addresses": ["10.0.0.1"]},
    {"name": "web", "nmae": "x"},
]


@pytest.mark.parametrize("table", PLAIN)
def test_a_plain_table_reads_as_the_full_reader_reads_it(table: dict) -> None:
    for prefix in ("", "static/"):
        fast = _plain_service(table, "f.toml", prefix)
        full, errors = _read_service_table(table, "service[0]", "f.toml", prefix)
        assert errors == [] and fast is not None
        assert fast == full
        assert _service_table(table, "service[0]", "f.toml", prefix) == (full, [])


@pytest.mark.parametrize("table", NOT_PLAIN)
def test_anything_else_goes_to_the_full_reader_with_its_errors(table: dict) -> None:
    assert _plain_service(table, "f.toml", "") is None or set(table) - {"name", "pool", "ports"}
    assert _service_table(table, "service[0]", "f.toml") == _read_service_table(table, "service[0]", "f.toml")
