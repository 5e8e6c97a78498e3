"""TOML configuration (``/etc/lbd.toml``) -> the typed, validated ``lbd.config.schema.Config``.

Every problem in the file is collected and reported at once, each as
``<file>: <where>: <what>``, for example::

    /etc/lbd.toml: pool "lan": addresses[1]: "10.0.0.300/24" is not a CIDR or a range

``ConfigError`` (a ``ValueError``) is the only exception ``load_config`` and
``parse_config`` raise, whatever the input. The reference of every key is
``docs/configuration.md``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from lbd.config.bfd import check_peer_profiles, parse_bfd_profiles
from lbd.config.bgp import (
    check_advertisements,
    parse_advertisements,
    parse_communities_table,
    parse_peers,
)
from lbd.config.forward import parse_forwarding_section
from lbd.config.hooks import parse_hooks
from lbd.config.read import (
    Errors,
    Table,
    UniqueNames,
    array_of_tables,
    check_endpoint,
    check_ifname,
    did_you_mean,
    entry_label,
    got,
    parse_address_entry,
    quote,
)
from lbd.config.schema import (
    AddressRange,
    ClusterConfig,
    Config,
    L2AdvertisementConfig,
    LogConfig,
    MetricsConfig,
    NodeConfig,
    PoolConfig,
    RouteExportConfig,
    ServiceAllocationConfig,
    SourceConfig,
)
from lbd.config.services import parse_service_table, parse_services, parse_services_document
from lbd.model import ServiceSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


DEFAULT_PATH = Path("/etc/lbd.toml")
STATIC_PREFIX = "static/"  # ServiceSpec.name of a [[service]] table is "static/<name>"
CLUSTER_PORT = 7946  # memberlist's default

SourceValidator = Callable[[SourceConfig], "list[str]"]

TOP_KEYS = (
    "node", "cluster", "pool", "l2_advertisement", "bgp_peer", "bgp_advertisement", "route_export",
    "service", "source", "communities", "log", "metrics", "hook", "forwarding", "bfd_profile", "namespace",
)
STOP_LINGER_MAX = 10.0  # [node] stop_linger: the stop must stay well inside the unit's TimeoutStopSec (30 s)
NODE_KEYS = ("name", "labels", "state_dir", "control_socket", "drained", "allow_readdress", "stop_linger")
CLUSTER_KEYS = ("bind", "advertise", "join", "keys_file", "profile", "failback_delay")
POOL_KEYS = ("name", "addresses", "auto_assign", "avoid_buggy_ips", "labels", "service_allocation")
SERVICE_ALLOCATION_KEYS = ("priority", "namespaces", "namespace_selectors", "service_selectors")
NAMESPACE_KEYS = ("name", "labels")
L2_KEYS = ("name", "pools", "interfaces", "node_selector", "mode", "announce_burst", "announce_interval",
           "pool_selectors", "announce_rate", "takeover_rate")
EXPORT_KEYS = ("name", "table", "pools", "protocol", "metric", "interface", "node_selector", "allow_main_table",
               "accept")
LOG_KEYS = ("level", "format")
METRICS_KEYS = ("listen",)

# rtnetlink tables (include/uapi/linux/rtnetlink.h): 0 unspec, 253 default,
# 254 main, 255 local. Only main may be chosen, and only explicitly.
RT_TABLE_MAIN = 254
RESERVED_TABLES = {0: "unspec", 253: "default", 254: "main", 255: "local"}
# rtnetlink protocols: below RTPROT_STATIC (4) the kernel's own; and the
# numbers of routing daemons whose routes lbd must never claim
# (/etc/iproute2/rt_protos and rt_protos.d).
RESERVED_PROTOCOLS = {
    0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra", 10: "mrt",
    11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp", 17: "mrouted",
    18: "keepalived", 42: "babel", 99: "openr", 186: "bgp (FRR)", 187: "isis (FRR)", 188: "ospf (FRR)",
    189: "rip (FRR)", 192: "eigrp (FRR)",
}

TOML_POSITION_RE = re.compile(r"^(?P<msg>.*?)\s*\(at (?P<pos>line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$")


class ConfigError(ValueError):
    """The configuration is invalid; ``errors`` holds every problem found."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))


MAX_CONFIG_BYTES = 16 * 1024 * 1024


def load_config(path: Path, validate_source: SourceValidator | None = None) -> Config:
    """Read and validate the file at ``path``."""
    path = Path(path)
    from lbd.safefile import read_regular_file  # never blocks on a FIFO (a reload runs on the event loop)

    try:
        data, _ = read_regular_file(path, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError([f"{path}: line {line}, column {column}: the file is not valid UTF-8"]) from None
    return parse_config(text, path, validate_source)


def parse_config(text: str, path: Path, validate_source: SourceValidator | None = None) -> Config:
    """Validate TOML ``text`` as if read from ``path`` (used in messages and
    to resolve relative paths)."""
    return config_from_document(parse_document(text, path), Path(path), validate_source)


def parse_document(text: str, path: Path) -> dict:
    """TOML ``text`` -> the document, or a ``ConfigError`` saying where the syntax is wrong."""
    path = Path(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_error(path, exc)]) from None
    except Exception as exc:  # tomllib documents only TOMLDecodeError; be sure nothing else escapes
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None


def _syntax_error(path: Path, exc: Exception) -> str:
    message = str(exc)
    match = TOML_POSITION_RE.match(message)
    if match and match.group("line"):
        return f"{path}: line {match.group('line')}, column {match.group('col')}: {match.group('msg')}"
    if match:
        return f"{path}: end of file: {match.group('msg')}"
    return f"{path}: not valid TOML: {message}"


def config_from_document(doc: dict, path: Path, validate_source: SourceValidator | None = None) -> Config:
    """Validate an already-parsed TOML document (a dict as ``tomllib`` returns)."""
    path = Path(path)
    errors = Errors(str(path))
    try:
        config = _build(errors, doc, path, validate_source)
    except RecursionError:
        raise ConfigError([f"{path}: the document is nested too deeply"]) from None
    if errors.items or config is None:
        raise ConfigError(errors.items or [f"{path}: invalid configuration"])
    return config


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def _build(errors: Errors, doc: Any, path: Path, validate_source: SourceValidator | None) -> Config | None:
    if not isinstance(doc, dict):
        errors.add("", f"expected a table, {got(doc)}")
        return None
    base = path.parent
    for key in doc:
        if key not in TOP_KEYS:
            errors.add("", f"unknown key {key!r}{did_you_mean(str(key), TOP_KEYS)}")
    node = _node(errors, _section(errors, doc, "node"), base)
    cluster = _cluster(errors, _section(errors, doc, "cluster"), base)
    pools = _pools(errors, doc)
    _check_overlaps(errors, pools)
    l2 = _l2_advertisements(errors, doc)
    aliases = parse_communities_table(errors, doc)
    peers, peer_names = parse_peers(errors, doc, base)
    advertisements = parse_advertisements(errors, doc, aliases)
    bfd_profiles, bfd_names = parse_bfd_profiles(errors, doc, base)
    check_peer_profiles(errors, peers, bfd_names)
    exports = _route_exports(errors, doc)
    services, messages = parse_services(Errors(errors.file), doc, STATIC_PREFIX, partial=True)
    errors.extend(messages)
    sources = _sources(errors, doc, validate_source)
    namespaces = _namespaces(errors, doc)
    log = _log(errors, _section(errors, doc, "log"))
    metrics = _metrics(errors, _section(errors, doc, "metrics"))
    hooks = parse_hooks(errors, doc)
    forwarding = parse_forwarding_section(errors, _section(errors, doc, "forwarding"))

    pool_list = [pool for _, pool, _ in pools]
    pool_names = {pool.name for pool in pool_list}
    for label, item in [*l2, *exports]:
        for name in item.pools:
            if name not in pool_names:
                errors.add(f"{label}: pools", f'no pool is named "{name}"{did_you_mean(name, pool_names)}')
    check_advertisements(errors, advertisements, pools, peers, peer_names, pool_names)
    errors.extend(check_services(services, pool_list, str(path), STATIC_PREFIX, namespaces))

    if node is None:
        return None
    return Config(
        path=path,
        node=node,
        cluster=cluster,
        pools=tuple(pool_list),
        l2_advertisements=tuple(a for _, a in l2),
        bgp_peers=tuple(p for _, p in peers),
        bgp_advertisements=tuple(a for _, a in advertisements),
        bfd_profiles=tuple(bfd_profiles),
        route_exports=tuple(e for _, e in exports),
        services=tuple(services),
        sources=tuple(sources),
        communities=aliases,
        namespaces=namespaces,
        log=log,
        metrics=metrics,
        hooks=tuple(hooks),
        forwarding=forwarding,
    )


def _section(errors: Errors, doc: dict, key: str) -> dict:
    value = doc.get(key, {})
    if isinstance(value, list):
        errors.add(key, f"expected a table ([{key}]), got an array (write [{key}], not [[{key}]])")
        return {}
    if not isinstance(value, dict):
        errors.add(key, f"expected a table ([{key}]), {got(value)}")
        return {}
    return value


def _node(errors: Errors, data: dict, base: Path) -> NodeConfig | None:
    t = Table(errors, "node", data, NODE_KEYS)
    name = t.string("name")
    if name is None and not t.has("name"):
        try:
            name = socket.gethostname()
        except OSError:  # pragma: no cover - gethostname does not fail on Linux
            name = "localhost"
    elif name is not None and (len(name) > 253 or any(c.isspace() for c in name)):
        t.error("name", f"{quote(name)} must be at most 253 characters without spaces")
        name = None
    labels = t.string_map("labels")
    state_dir = t.path("state_dir", Path("/var/lib/lbd"), base)
    control_socket = t.path("control_socket", Path("/run/lbd/lbd.sock"), base)
    if len(str(control_socket).encode()) > 107:
        t.error("control_socket", "a Unix socket path is limited to 107 bytes (sun_path)")
    drained = t.boolean("drained", False)
    allow_readdress = t.boolean("allow_readdress", False)
    stop_linger = t.seconds("stop_linger", NodeConfig.stop_linger, hi=STOP_LINGER_MAX)
    if name is None:
        return None
    return NodeConfig(name=name, labels=labels, state_dir=state_dir, control_socket=control_socket,
                      drained=drained, allow_readdress=allow_readdress, stop_linger=stop_linger)


CLUSTER_KEYS += ("allow_plaintext",)  # issue 10: plaintext gossip only when said so


def _cluster(errors: Errors, data: dict, base: Path) -> ClusterConfig:
    t = Table(errors, "cluster", data, CLUSTER_KEYS)
    defaults = ClusterConfig()
    bind = defaults.bind
    if t.has("bind"):
        bind = check_endpoint(errors, t.at("bind"), t.raw("bind"), default_port=CLUSTER_PORT, ip_only=True) or bind
    advertise = None
    if t.has("advertise"):
        bind_port = int(bind.rsplit(":", 1)[1])
        advertise = check_endpoint(errors, t.at("advertise"), t.raw("advertise"), default_port=bind_port,
                                   ip_only=True)
    join: list[str] = []
    for i, item in enumerate(t.array("join") or []):
        endpoint = check_endpoint(errors, f"{t.at('join')}[{i}]", item, default_port=CLUSTER_PORT, ip_only=False)
        if endpoint is not None:
            join.append(endpoint)
    keys_file = t.path("keys_file", None, base)
    profile = t.string("profile", "default", choices=("default", "fast", "lan"))
    failback: float | None = defaults.failback_delay
    if t.has("failback_delay"):
        raw = t.raw("failback_delay")
        if raw == "never":
            failback = None
        elif isinstance(raw, str):
            t.error("failback_delay", f'expected a number of seconds or "never", {got(raw)}')
        else:
            failback = t.seconds("failback_delay", defaults.failback_delay)
    allow_plaintext = t.boolean("allow_plaintext", False)
    enabled = t.has("bind") or t.has("join")
    bind_host = bind.rsplit(":", 1)[0].strip("[]")
    reachable = bool(join) or not ipaddress.ip_address(bind_host).is_loopback
    if enabled and keys_file is None and not allow_plaintext and reachable:
        # Plaintext gossip is unauthenticated: whoever reaches the port can add
        # members and rewrite allocations. Only a loopback-only node is exempt.
        why = "joins peers" if join else f"binds {bind}"
        t.error("keys_file", f"missing: the cluster {why} without encryption, so anyone who reaches the port "
                             "can join it and rewrite allocations; write a key from `lbd keygen` into a keys file "
                             "and set keys_file, or set allow_plaintext = true")
    return ClusterConfig(
        allow_plaintext=allow_plaintext,
        enabled=enabled,
        bind=bind,
        advertise=advertise,
        join=tuple(join),
        keys_file=keys_file,
        profile=profile,
        failback_delay=failback,
    )


def _pools(errors: Errors, doc: dict) -> list[tuple[str, PoolConfig, tuple[int, ...]]]:
    """Each pool with its label and, per kept range, its index in the file."""
    out: list[tuple[str, PoolConfig, tuple[int, ...]]] = []
    names = UniqueNames(errors, "pool")
    for i, data in array_of_tables(errors, doc, "pool"):
        label = entry_label("pool", data, i)
        t = Table(errors, label, data, POOL_KEYS)
        name = t.name(required=True)
        ranges: list[AddressRange] = []
        positions: list[int] = []
        raw = t.array("addresses")
        if raw is None and not t.has("addresses"):
            errors.add(label, "missing required key 'addresses'")
        elif raw == []:
            t.error("addresses", "must list at least one CIDR or range")
        for j, item in enumerate(raw or []):
            where = f"{t.at('addresses')}[{j}]"
            if not isinstance(item, str):
                errors.add(where, f"expected a string, {got(item)}")
                continue
            entry, problem = parse_address_entry(item)
            if problem:
                errors.add(where, problem)
                continue
            assert entry is not None
            ranges.append(entry)
            positions.append(j)
        auto_assign = t.boolean("auto_assign", True)
        avoid_buggy = t.boolean("avoid_buggy_ips", False)
        labels = t.string_map("labels")
        service_allocation = _service_allocation(t)
        if name is None or not names.claim(name, i):
            continue
        # Kept even when an entry is broken, so the cross-checks still run on
        # what is valid (the errors already make the whole config invalid).
        out.append((label, PoolConfig(name=name, addresses=tuple(ranges), auto_assign=auto_assign,
                                      avoid_buggy_ips=avoid_buggy, labels=labels,
                                      service_allocation=service_allocation), tuple(positions)))
    return out


def _service_allocation(t: Table) -> ServiceAllocationConfig | None:
    """A pool's ``service_allocation`` table (MetalLB's ``serviceAllocation``)."""
    raw = t.table("service_allocation")
    if raw is None:
        return None
    s = Table(t.errors, t.at("service_allocation"), raw, SERVICE_ALLOCATION_KEYS)
    # MetalLB: a lower number is a higher priority, 0 (unset) sorts last.
    priority = s.integer("priority", 0, lo=0, hi=2**31 - 1)
    return ServiceAllocationConfig(
        priority=priority if priority is not None else 0,
        namespaces=s.string_list("namespaces", names=True),
        namespace_selectors=s.selectors("namespace_selectors"),
        service_selectors=s.selectors("service_selectors"),
    )


def _namespaces(errors: Errors, doc: dict) -> dict[str, dict[str, str]]:
    """``[[namespace]] name, labels``: the labels pools' namespace_selectors
    match for services of sources that do not supply them (static, directory)."""
    out: dict[str, dict[str, str]] = {}
    names = UniqueNames(errors, "namespace")
    for i, data in array_of_tables(errors, doc, "namespace"):
        label = entry_label("namespace", data, i)
        t = Table(errors, label, data, NAMESPACE_KEYS)
        name = t.name(required=True)
        labels = t.string_map("labels")
        if name is None or not names.claim(name, i):
            continue
        out[name] = labels
    return out


def _check_overlaps(errors: Errors, pools: list[tuple[str, PoolConfig, tuple[int, ...]]]) -> None:
    """Pools may not overlap, within one pool or across pools (MetalLB's rule):
    an address must belong to exactly one pool for allocation to be unambiguous."""
    entries = []
    for label, pool, positions in pools:
        for entry, k in zip(pool.addresses, positions):
            entries.append((entry.first.version, int(entry.first), int(entry.last), f"{label}: addresses[{k}]", entry))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    active: list[tuple] = []  # entries that may still overlap the next ones (same family, last >= first)
    for entry in entries:
        version, first, _, where, rng = entry
        active = [a for a in active if a[0] == version and a[2] >= first]
        for other in active:
            errors.add(where, f"{quote(rng.text)} overlaps {quote(other[4].text)} ({other[3]})")
        active.append(entry)


def _l2_advertisements(errors: Errors, doc: dict) -> list[tuple[str, L2AdvertisementConfig]]:
    out: list[tuple[str, L2AdvertisementConfig]] = []
    names = UniqueNames(errors, "l2_advertisement")
    defaults = L2AdvertisementConfig(name="")
    for i, data in array_of_tables(errors, doc, "l2_advertisement"):
        label = entry_label("l2_advertisement", data, i)
        t = Table(errors, label, data, L2_KEYS)
        name = t.name("name", f"l2-{i}")
        pools = t.string_list("pools", names=True)
        interfaces: dict[str, int] = {}  # name -> index in the file
        for j, item in enumerate(t.array("interfaces") or []):
            ifname = check_ifname(errors, f"{t.at('interfaces')}[{j}]", item)
            if ifname is not None:
                if ifname in interfaces:
                    t.error(f"interfaces[{j}]", f"{quote(ifname)} repeats interfaces[{interfaces[ifname]}]")
                else:
                    interfaces[ifname] = j
        node_selector = t.selectors("node_selector")
        pool_selectors = t.selectors("pool_selectors")
        mode = t.string("mode", defaults.mode, choices=("bind", "responder"))
        burst = t.integer("announce_burst", defaults.announce_burst, lo=1, hi=100)
        interval = t.seconds("announce_interval", defaults.announce_interval)
        rate = t.integer("announce_rate", defaults.announce_rate, lo=1, hi=1_000_000)
        takeover_rate = t.integer("takeover_rate", defaults.takeover_rate, lo=1, hi=1_000_000)
        if name is None or not names.claim(name, i):
            continue
        out.append((label, L2AdvertisementConfig(
            name=name, pools=pools, interfaces=tuple(interfaces), node_selector=node_selector, mode=mode,
            announce_burst=burst, announce_interval=interval, pool_selectors=pool_selectors,
            announce_rate=rate, takeover_rate=takeover_rate,
        )))
    return out


def _route_exports(errors: Errors, doc: dict) -> list[tuple[str, RouteExportConfig]]:
    out: list[tuple[str, RouteExportConfig]] = []
    names = UniqueNames(errors, "route_export")
    for i, data in array_of_tables(errors, doc, "route_export"):
        label = entry_label("route_export", data, i)
        t = Table(errors, label, data, EXPORT_KEYS)
        name = t.name("name", f"export-{i}")
        table = t.integer("table", lo=1, hi=2**32 - 1, required=True)
        allow_main = t.boolean("allow_main_table", False)
        if table in RESERVED_TABLES and not (table == RT_TABLE_MAIN and allow_main):
            hint = " (set allow_main_table = true to really use it)" if table == RT_TABLE_MAIN else ""
            t.error("table", f"{table} is the kernel's {RESERVED_TABLES[table]!r} table; use a table of "
                             f"your own, for example 100, and export it from BIRD or FRR{hint}")
        pools = t.string_list("pools", names=True)
        protocol = t.integer("protocol", 252, lo=1, hi=255)
        if protocol in RESERVED_PROTOCOLS:
            t.error("protocol", f"{protocol} is the {RESERVED_PROTOCOLS[protocol]!r} route protocol; lbd "
                                "must mark its routes with a number of its own (default 252)")
        metric = t.integer("metric", lo=0, hi=2**32 - 1)
        interface = "lo"
        if t.has("interface"):
            interface = check_ifname(errors, t.at("interface"), t.raw("interface")) or "lo"
        node_selector = t.selectors("node_selector")
        accept = t.string("accept", "address", choices=("address", "local-route"))
        if name is None or not names.claim(name, i):
            continue
        out.append((label, RouteExportConfig(
            name=name, table=table if table is not None else 0, pools=pools, protocol=protocol, metric=metric, interface=interface,
            node_selector=node_selector, accept=accept or "address",
        )))
    return out


def _sources(errors: Errors, doc: dict, validate_source: SourceValidator | None) -> list[SourceConfig]:
    out: list[SourceConfig] = []
    names = UniqueNames(errors, "source")
    for i, data in array_of_tables(errors, doc, "source"):
        t = Table(errors, f"source[{i}]", data, tuple(data))  # options are the plugin's to check
        kind = t.name("type", required=True)
        name = t.name("name", kind)
        label = f'source "{name}"' if name is not None else f"source[{i}]"
        hint = "" if t.has("name") else " (set 'name' to run two sources of one type)"
        if name is not None and names.repeated(name, i, hint):
            continue
        if kind is None or name is None:
            continue
        names.add(name, i)  # a source without a type does not take its name
        options = {k: v for k, v in data.items() if k not in ("type", "name")}
        source = SourceConfig(type=kind, name=name, options=options)
        if validate_source is not None:
            try:
                problems = validate_source(source)
            except Exception as exc:  # a plugin bug must not escape as anything but ConfigError
                problems = [f"the {kind!r} source's validator failed: {type(exc).__name__}: {exc}"]
            if not isinstance(problems, (list, tuple)):
                problems = [f"the {kind!r} source's validator returned {type(problems).__name__}, not a list"]
            for problem in problems:
                # The registry's validator already names the source; others may not.
                problem = str(problem)
                if problem.startswith(label + ": "):
                    errors.items.append(f"{errors.file}: {problem}")
                else:
                    errors.add(label, problem)
        out.append(source)
    return out


def _log(errors: Errors, data: dict) -> LogConfig:
    t = Table(errors, "log", data, LOG_KEYS)
    level = t.string("level", "info", choices=("debug", "info", "warning", "error"))
    fmt = t.string("format", "auto", choices=("auto", "console", "json"))
    return LogConfig(level=level, format=fmt)


def _metrics(errors: Errors, data: dict) -> MetricsConfig:
    t = Table(errors, "metrics", data, METRICS_KEYS)
    listen = None
    if t.has("listen"):
        listen = check_endpoint(errors, t.at("listen"), t.raw("listen"), default_port=None, ip_only=True)
    return MetricsConfig(listen=listen)


# ---------------------------------------------------------------------------
# Services against pools
# ---------------------------------------------------------------------------


def check_services(services: Iterable[ServiceSpec], pools: Iterable[PoolConfig], file: str,
                   prefix: str = STATIC_PREFIX,
                   namespaces: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Cross-check services against the pools: the named pool exists and
    holds the requested addresses, every requested address is in some pool,
    and two services request one address only if they may share it.

    ``prefix`` is stripped from names so messages say ``service "web"``.
    """
    # Imported here: lbd.ipam imports lbd.config.schema, and so this package.
    from lbd.ipam import pool_refuses

    errors = Errors(file)
    pools = list(pools)
    names = [p.name for p in pools]
    # Constant work per service (issue 9: 100,000 of them): pools by name, pool families once.
    by_name: dict[str, PoolConfig] = {}
    for p in pools:
        by_name.setdefault(p.name, p)
    families_of = {p.name: {r.family for r in p.addresses} for p in by_name.values()}
    claimed: dict[Any, ServiceSpec] = {}
    for spec in services:
        short = spec.name[len(prefix):] if spec.name.startswith(prefix) else spec.name
        label = f'service "{short}"'
        pool = None
        if spec.pool is not None:
            pool = by_name.get(spec.pool)
            if pool is None:
                errors.add(f"{label}: pool", f'no pool is named "{spec.pool}"{did_you_mean(spec.pool, names)}')
            else:
                has = families_of[pool.name]
                for family in spec.ip_families:
                    if family not in has:
                        errors.add(f"{label}: ip_families", f'pool "{pool.name}" has no {family.value} addresses')
                refusal = pool_refuses(pool, spec, namespaces or {})
                if refusal is not None:
                    errors.add(f"{label}: pool", refusal)
        for k, address in enumerate(spec.addresses):
            where = f"{label}: addresses[{k}]"
            holder = next((p for p in pools if any(address in r for r in p.addresses)), None)
            if pool is not None and holder is not pool:
                errors.add(where, f'{address} is not in pool "{pool.name}"')
            elif spec.pool is None and holder is None:
                errors.add(where, f"{address} is not in any pool")
            elif spec.pool is None and holder is not None and pool_refuses(holder, spec, namespaces or {}):
                errors.add(where, f"{address}: {pool_refuses(holder, spec, namespaces or {})}")
            elif holder is not None and holder.avoid_buggy_ips and address.version == 4 \
                    and int(address) & 0xFF in (0, 255):
                errors.add(where, f'{address} ends in .0 or .255, which pool "{holder.name}" avoids '
                                  "(avoid_buggy_ips = true)")
            other = claimed.get(address)
            if other is not None and not _may_share(spec, other):
                other_short = other.name[len(prefix):] if other.name.startswith(prefix) else other.name
                errors.add(where, f'{address} is also requested by service "{other_short}"; two services '
                                  "share an address only with the same share_key and no common port")
            claimed.setdefault(address, spec)
    return errors.items


def _may_share(a: ServiceSpec, b: ServiceSpec) -> bool:
    """MetalLB's sharing rule: same non-empty key, same backend key, disjoint ports."""
    return (a.share_key is not None and a.share_key == b.share_key and a.backend_key == b.backend_key
            and not set(a.ports) & set(b.ports))
