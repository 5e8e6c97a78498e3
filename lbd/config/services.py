"""``[[service]]`` tables: the static source, and drop-in files with the same rules.

Kept apart from ``lbd.config.load`` so the ``directory`` source validates services
from other files with exactly the same code and messages.
"""

from __future__ import annotations

import re
import sys
from types import MappingProxyType
from typing import Any, Mapping

from lbd.config.forward import FORWARD_KEYS, parse_forwarding
from lbd.config.health import parse_health_check
from lbd.config.read import (
    NAME_RE,
    Errors,
    Table,
    UniqueNames,
    array_of_tables,
    check_string,
    did_you_mean,
    got,
    parse_ip,
    quote,
)
from lbd.model import Family, IPAddress, PortSpec, ServiceSpec

SERVICE_KEYS = (
    "name", "pool", "addresses", "ports", "share_key", "ip_families", "health_check", "labels", "nodes",
    *FORWARD_KEYS,
    "namespace",
)
PROTOCOLS = ("tcp", "udp", "sctp")
FAMILIES = ("ipv4", "ipv6")
PORT_RE = re.compile(r"([A-Za-z]+)/(\d{1,5})")
REVERSED_PORT_RE = re.compile(r"(\d{1,5})/([A-Za-z]+)")


def parse_port(errors: Errors, where: str, value: object) -> PortSpec | None:
    text = check_string(errors, where, value)
    if text is None:
        return None
    match = PORT_RE.fullmatch(text.strip())
    if not match:
        reversed_match = REVERSED_PORT_RE.fullmatch(text.strip())
        hint = ""
        if reversed_match:
            hint = f'; write "{reversed_match.group(2).lower()}/{reversed_match.group(1)}"'
        errors.add(where, f"{quote(text)} is not protocol/port like \"tcp/80\"{hint}")
        return None
    protocol, port = match.group(1), int(match.group(2))
    if protocol not in PROTOCOLS:
        hint = f'; write "{protocol.lower()}/{port}"' if protocol.lower() in PROTOCOLS else ""
        errors.add(where, f"{quote(text)}: the protocol must be tcp, udp or sctp{hint}")
        return None
    if not 1 <= port <= 65535:
        errors.add(where, f"{quote(text)}: the port {port} is out of range 1..65535")
        return None
    return PortSpec(protocol, port)


_FORWARD_KEYS = frozenset(FORWARD_KEYS)
_NO_FORWARDING: dict[str, Any] = {}


def _no_forwarding() -> dict[str, Any]:
    """``parse_forwarding`` of a service with none of its keys: the same for every such service."""
    if not _NO_FORWARDING:
        t = Table(Errors(""), "", {}, SERVICE_KEYS)
        _NO_FORWARDING.update(parse_forwarding(t, (), (Family.IPV4,)))
        assert not t.errors.items
    return _NO_FORWARDING


def parse_service_table(table: dict, where: str, file: str) -> tuple[ServiceSpec | None, list[str]]:
    """Validate one ``[[service]]`` table.

    ``where`` names the table in messages when it has no usable name (for
    example ``service[2]``); with a name, messages say ``service "web"``. The
    returned spec carries the bare name: the caller adds its namespace prefix.
    Checks that need the pools (does the named pool exist, is a requested
    address inside it) are the caller's: see ``lbd.config.check_services``.
    """
    spec, errors = _service_table(table, where, file)
    return (spec if not errors else None), errors


_PLAIN_KEYS = frozenset({"name", "pool", "ports"})
_IPV4_ONLY = (Family.IPV4,)
_NO_LABELS: Mapping[str, str] = MappingProxyType({})  # read-only: one for every service without labels


def _plain_service(table: dict, file: str, prefix: str) -> ServiceSpec | None:
    """The spec of a plain, valid table (``name``, ``pool``, ``ports`` only), read directly;
    None for anything else, which the full reader then reads (and reports). The result equals
    the full reader's (tests/unit/test_config_services_fast.py): at 100,000 services the full
    reader cost as much again as tomllib (issue 9)."""
    name, pool = table.get("name"), table.get("pool")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return None
    if pool is not None and (not isinstance(pool, str) or not NAME_RE.fullmatch(pool)):
        return None
    ports: tuple[PortSpec, ...] = ()
    raw = table.get("ports")
    if raw is not None:
        if not isinstance(raw, list):
            return None
        errors = Errors(file)
        parsed = [parse_port(errors, "", item) for item in raw]
        if errors.items or len(set(parsed)) != len(parsed):
            return None
        ports = tuple(parsed)  # type: ignore[arg-type]
    if pool is not None:
        pool = sys.intern(pool)  # one string for the pool's 100,000 services, not one each
    return ServiceSpec(name=prefix + name, pool=pool, ports=ports, ip_families=_IPV4_ONLY, labels=_NO_LABELS,
                       **_no_forwarding())


def _service_table(table: dict, where: str, file: str, prefix: str = "") -> tuple[ServiceSpec | None, list[str]]:
    """Like ``parse_service_table`` but returns what is valid even when some
    keys are not (for cross-checks that find the remaining errors). The spec's
    name is ``prefix + name`` (built once: copying 100,000 specs to rename them
    cost as much as validating them, issue 9)."""
    if isinstance(table, dict) and _PLAIN_KEYS.issuperset(table):
        spec = _plain_service(table, file, prefix)
        if spec is not None:
            return spec, []
    return _read_service_table(table, where, file, prefix)


def _read_service_table(table: dict, where: str, file: str, prefix: str = "") -> tuple[ServiceSpec | None, list[str]]:
    """The full reader of ``_service_table``: every key, every error."""
    errors = Errors(file)
    if not isinstance(table, dict):
        errors.add(where, f"expected a table, {got(table)}")
        return None, errors.items
    name = table.get("name")
    label = f'service "{name}"' if isinstance(name, str) and NAME_RE.fullmatch(name) else where
    t = Table(errors, label, table, SERVICE_KEYS)
    name = t.name(required=True)
    pool = t.name("pool")
    addresses = _service_addresses(t)
    ports = _service_ports(t)
    share_key = t.string("share_key") if "share_key" in table else None
    families = _ip_families(t, addresses)

    # Absent optional keys are skipped without their readers: a plain service then costs
    # little more than tomllib's own parse of it (issue 9: 100,000 services).
    health = None
    health_table = t.table("health_check") if "health_check" in table else None
    if health_table is not None:
        health = parse_health_check(errors, t.at("health_check"), health_table)
    labels = t.string_map("labels") if "labels" in table else _NO_LABELS
    namespace = t.name("namespace") if "namespace" in table else None
    eligible_nodes = _eligible_nodes(t)
    if _FORWARD_KEYS.isdisjoint(table):
        forwarding = _no_forwarding()
    else:
        forwarding = parse_forwarding(t, ports, families)

    if name is None:
        return None, errors.items
    return ServiceSpec(
        name=prefix + name,
        pool=pool,
        addresses=tuple(addresses),
        ports=ports,
        share_key=share_key,
        ip_families=families,
        health_check=health,
        eligible_nodes=eligible_nodes,
        labels=labels,
        **forwarding,
        namespace=namespace,
    ), errors.items


def _service_addresses(t: Table) -> list[IPAddress]:
    """``addresses``: requested addresses, at most one per family."""
    addresses: list[IPAddress] = []
    by_family: dict[Family, int] = {}
    for i, item in enumerate((t.array("addresses") or []) if t.has("addresses") else ()):
        at = f"{t.at('addresses')}[{i}]"
        text = check_string(t.errors, at, item)
        if text is None:
            continue
        address = parse_ip(text)
        if address is None:
            hint = " (request one address, not a network)" if "/" in text or "-" in text else ""
            t.errors.add(at, f"{quote(text)} is not an IP address{hint}")
            continue
        family = Family.of(address)
        if family in by_family:
            t.errors.add(at, f"{quote(text)}: a service requests at most one address per family, "
                             f"and addresses[{by_family[family]}] is already {family.value}")
            continue
        by_family[family] = i
        addresses.append(address)
    return addresses


def _service_ports(t: Table) -> tuple[PortSpec, ...]:
    """``ports``: ``protocol/port`` strings, each at most once, in file order."""
    ports: dict[PortSpec, int] = {}  # port -> index in the file
    for i, item in enumerate((t.array("ports") or []) if t.has("ports") else ()):
        at = f"{t.at('ports')}[{i}]"
        spec = parse_port(t.errors, at, item)
        if spec is None:
            continue
        if spec in ports:
            t.errors.add(at, f'"{spec}" repeats ports[{ports[spec]}]')
            continue
        ports[spec] = i
    return tuple(ports)


def _ip_families(t: Table, addresses: list[IPAddress]) -> tuple[Family, ...]:
    """``ip_families``, which the requested addresses must agree with; absent: the
    addresses' own families, or IPv4 alone."""
    if not t.has("ip_families"):
        return tuple(Family.of(a) for a in addresses) or (Family.IPV4,)
    good = []
    for i, fam in enumerate(t.string_list("ip_families")):
        if fam not in FAMILIES:
            t.error(f"ip_families[{i}]", f'{quote(fam)} is not "ipv4" or "ipv6"{did_you_mean(fam, FAMILIES)}')
        else:
            good.append(Family(fam))
    if t.array("ip_families") == []:
        t.error("ip_families", 'must list "ipv4", "ipv6" or both')
    families = tuple(good)
    for address in addresses:
        if Family.of(address) not in families and good:
            t.errors.add(t.at("addresses"),
                         f"{address} is {Family.of(address).value} but ip_families is "
                         f"{[f.value for f in families]}")
    return families


def _eligible_nodes(t: Table) -> frozenset[str] | None:
    """``nodes``: the nodes that may hold the service; absent: every node (None)."""
    if not t.has("nodes"):
        return None
    nodes = t.string_list("nodes")
    if t.array("nodes") == []:
        t.error("nodes", "an empty list would leave the service with no node: omit the key for every node")
    return frozenset(nodes)


def parse_services_document(doc: dict, file: str, prefix: str) -> tuple[list[ServiceSpec], list[str]]:
    """Validate a document made of ``[[service]]`` tables (a drop-in file).

    Every service's name becomes ``prefix + name``; names must be unique in the
    document. Any other top-level key is an error.
    """
    errors = Errors(file)
    if not isinstance(doc, dict):
        errors.add("", f"expected a table, {got(doc)}")
        return [], errors.items
    for key in doc:
        if key != "service":
            errors.add("", f"unknown key {key!r}{did_you_mean(str(key), ['service'])}")
    return parse_services(errors, doc, prefix, partial=False)


def parse_services(errors: Errors, doc: dict, prefix: str, *, partial: bool) -> tuple[list[ServiceSpec], list[str]]:
    """The ``[[service]]`` tables of ``doc`` (the main config's or a drop-in's), names
    prefixed with ``prefix``; errors are added to ``errors``, whose items are returned.
    With ``partial``, services with errors are returned too (with what was valid), for
    the main config's cross-checks."""
    specs: list[ServiceSpec] = []
    names = UniqueNames(errors, "service")
    for i, table in array_of_tables(errors, doc, "service"):
        spec, messages = _service_table(table, f"service[{i}]", errors.file, prefix)
        errors.extend(messages)
        if messages and not partial:
            spec = None
        name: Any = table.get("name")
        if isinstance(name, str) and NAME_RE.fullmatch(name) and not names.claim(name, i):
            continue
        if spec is not None:
            specs.append(spec)
    return specs, errors.items
