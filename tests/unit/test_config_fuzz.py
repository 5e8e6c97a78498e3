"""The config parser raises nothing but ConfigError, whatever it is fed."""

from __future__ import annotations

import copy
import datetime
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbd.config import load as cfg
from lbd.config.load import tomllib  # tomli before Python 3.11
from lbd.config import ConfigError, config_from_document, parse_config
from lbd.config.bgp import ADVERTISEMENT_KEYS, PEER_KEYS
from lbd.config.health import HEALTH_KEYS
from lbd.config.services import SERVICE_KEYS
from lbd.config.schema import Config

FILE = Path("/etc/lbd.toml")
# LBD_FUZZ_SCALE=20 runs twenty times the examples (a deeper, slower run).
SCALE = max(1, int(os.environ.get("LBD_FUZZ_SCALE", "1")))
EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "lbd.toml"
SKELETON = tomllib.loads(EXAMPLE.read_text())

KEYS = sorted(set(
    cfg.TOP_KEYS + cfg.NODE_KEYS + cfg.CLUSTER_KEYS + cfg.POOL_KEYS + cfg.L2_KEYS + cfg.EXPORT_KEYS
    + cfg.LOG_KEYS + cfg.METRICS_KEYS + PEER_KEYS + ADVERTISEMENT_KEYS + SERVICE_KEYS + HEALTH_KEYS
    + ("type", "path")
))

INTERESTING = [
    "", " ", "lan", "routed", "gateway", "web", "static/web", "a b", "never", "internal", "external", "tcp/80",
    "80/tcp", "udp/0", "sctp/65536", "ipv4", "ipv6", "tcp", "http", "exec", "bind", "responder", "debug", "json",
    "192.168.1.48/28", "192.168.1.50/28", "10.0.0.300/24", "10.0.0.1-10.0.0.9", "10.0.0.9-10.0.0.1",
    "fd77::/64", "fd77::1-fd77::ff", "fe80::1%eth0", "::", "0.0.0.0", "255.255.255.255", "192.168.1.50",
    "fd77::150", "1.2.3.4-fd77::1", "[fd77::1]:7946", "[fd77::1", "host:99999", "node:7946", "10.0.0.1:0",
    "65000:1", "large:1:2:3", "large:1:2", "70000:1", "no-export", "lan-only", "eth0", "a/b", "x" * 100,
    "\x00", "é", "🙂", "30s", "5ms", "/abs/path", "relative/path",
]

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 3, 32, 128, 179, 252, 253, 254, 255, 4095, 65535, 65536, 4294967295, 4294967296,
                     2**64, -(2**64), 10**400]),
    st.builds(lambda: 10**5000),  # beyond what Python will print
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(INTERESTING),
    st.datetimes(), st.dates(), st.times(),
    st.none(),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


def check(run) -> None:
    try:
        result = run()
    except ConfigError as exc:
        assert exc.errors, "a ConfigError carries at least one message"
        for message in exc.errors:
            assert isinstance(message, str) and message.startswith(f"{FILE}: "), message
        return
    assert isinstance(result, Config)


@settings(max_examples=300 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    check(lambda: parse_config(text, FILE))


LINE = st.one_of(
    st.sampled_from(["[node]", "[cluster]", "[log]", "[metrics]", "[communities]", "[[pool]]",
                     "[[l2_advertisement]]", "[[bgp_peer]]", "[[bgp_advertisement]]", "[[route_export]]",
                     "[[service]]", "[[source]]", "[pool]", "[[log]]", "[service.health_check]"]),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(KEYS), st.one_of(
        st.sampled_from(['"lan"', "true", "0", "-1", "3.5", "nan", "inf", "[]", "{}", '["lan"]',
                         '["10.0.0.0/24", "x"]', '{ type = "tcp" }', '"never"', "1979-05-27T07:32:00Z",
                         '["tcp/80", 80]', '{ a = "b" }', "4294967296", '"192.168.1.48/28"']),
        st.sampled_from(INTERESTING).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"')
                                         .replace("\x00", "\\u0000") + '"'),
    )),
)


@settings(max_examples=300 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE, max_size=25))
def test_toml_ish_documents(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    check(lambda: parse_config(text, FILE))
    # a source validator's messages join the others, still as ConfigError
    check(lambda: parse_config(text, FILE, validate_source=lambda s: [f"checked {s.type}"] if s.options else []))


def _mutate(doc: object, path: list, value: object) -> object:
    """Replace (or add) the value at a path of indices into a copy of the skeleton."""
    doc = copy.deepcopy(doc)
    node = doc
    for step in path[:-1]:
        if isinstance(node, dict) and node:
            node = node[sorted(node)[step % len(node)]]
        elif isinstance(node, list) and node:
            node = node[step % len(node)]
        else:
            break
    last = path[-1] if path else 0
    if isinstance(node, dict):
        names = sorted(node) + KEYS
        node[names[last % len(names)]] = value
    elif isinstance(node, list) and node:
        node[last % len(node)] = value
    return doc


@settings(max_examples=400 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(st.integers(0, 200), min_size=1, max_size=5), values), min_size=1, max_size=4))
def test_random_values_in_a_valid_skeleton(mutations: list) -> None:
    doc: object = SKELETON
    for path, value in mutations:
        doc = _mutate(doc, path, value)
    check(lambda: config_from_document(doc, FILE))  # type: ignore[arg-type]


def test_skeleton_is_valid_and_mutation_reaches_deep_keys() -> None:
    assert isinstance(config_from_document(copy.deepcopy(SKELETON), FILE), Config)
    pool = sorted(SKELETON).index("pool")
    name = sorted(SKELETON["pool"][0]).index("name")
    mutated = _mutate(SKELETON, [pool, 0, name], "x")
    assert mutated["pool"][0]["name"] == "x" and SKELETON["pool"][0]["name"] == "lan"  # type: ignore[index]


def test_huge_numbers() -> None:
    for digits in ("9" * 5000, "18446744073709551616"):
        for text in (f"[node]\nname = \"n\"\n[[route_export]]\ntable = {digits}\n",
                     f"[cluster]\nfailback_delay = {digits}\n"):
            check(lambda: parse_config(text, FILE))
    for value in (10**5000, 2**64):
        check(lambda: config_from_document({"cluster": {"failback_delay": value}}, FILE))
        check(lambda: config_from_document({"route_export": [{"table": value}]}, FILE))


@given(values)
@settings(max_examples=100 * SCALE, deadline=None)
def test_any_document_object(doc: object) -> None:
    check(lambda: config_from_document(doc, FILE))  # type: ignore[arg-type]


def test_deep_nesting_is_a_config_error() -> None:
    doc: object = {}
    for _ in range(5000):
        doc = {"node": doc}
    check(lambda: config_from_document(doc, FILE))  # type: ignore[arg-type]


def test_date_values_are_named_precisely() -> None:
    try:
        config_from_document({"node": {"name": datetime.date(2024, 1, 2)}}, FILE)
    except ConfigError as exc:
        assert exc.errors == [f"{FILE}: node: name: expected a string, got a date (datetime.date(2024, 1, 2))"]
    else:  # pragma: no cover
        raise AssertionError("a date is not a node name")
