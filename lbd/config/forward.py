"""The forwarding keys of a ``[[service]]`` table: backends, forward, snat,
backend_check, on_no_backend (docs/forwarding.md).

Called by ``lbd.config.services`` for the static source and drop-in files, so
every source that writes TOML gets the same checks and messages.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from lbd.config.health import parse_health_check
from lbd.config.read import Errors, Table, did_you_mean, got, parse_ip, quote, split_host_port
from lbd.config.schema import ForwardingConfig
from lbd.model import Backend, Family, HealthCheckConfig, PortSpec

FORWARD_KEYS = ("backends", "forward", "snat", "backend_check", "on_no_backend")
FORWARD_MODES = ("nat", "dsr")
NO_BACKEND_CHOICES = ("withdraw", "keep")
BACKEND_KEYS = ("address", "port", "weight")
MAX_WEIGHT = 10000

# The default backend check (issue 14): a TCP connect to each backend's address and port.
DEFAULT_BACKEND_CHECK = HealthCheckConfig(type="tcp", port=None, host="", interval=2.0, timeout=1.0, rise=2, fall=2)


def parse_forwarding(t: Table, ports: Sequence[PortSpec], families: Sequence[Family]) -> dict[str, Any]:
    """The ServiceSpec fields for forwarding; errors go to ``t.errors``."""
    out: dict[str, Any] = {}
    forward = t.string("forward", "nat", choices=FORWARD_MODES)
    snat = t.boolean("snat", False)
    on_no = t.string("on_no_backend", "withdraw", choices=NO_BACKEND_CHOICES)
    if forward == "dsr" and t.has("snat") and snat:
        t.error("snat", 'only applies to forward = "nat": in "dsr" mode the backends answer the client directly')
    backends: list[Backend] = []
    raw = t.raw("backends")
    if t.has("backends"):
        if not ports:
            t.error("backends", 'the service has no ports to forward: add ports = ["tcp/80", ...]')
        elif isinstance(raw, list):
            # Checked once (one message per mistake), then expanded to every port.
            for n, port in enumerate(ports):
                errors = t.errors if n == 0 else Errors(t.errors.file)
                backends += _entries(errors, t.at("backends"), raw, port, len(ports) == 1)
        elif isinstance(raw, dict):
            by_text = {str(p): p for p in ports}
            for key, items in raw.items():
                at = f"{t.at('backends')}.{quote(key)}"
                port = by_text.get(key)
                if port is None:
                    t.errors.add(at, f"{quote(key)} is not one of the service's ports {sorted(by_text)}"
                                     f"{did_you_mean(str(key), by_text)}")
                    continue
                if not isinstance(items, list):
                    t.errors.add(at, f"expected an array of backends, {got(items)}")
                    continue
                backends += _entries(t.errors, at, items, port, True)
        else:
            t.error("backends", 'expected an array (["10.88.1.10:8080", ...]) or a table keyed by port '
                                f'({{ "tcp/80" = [...] }}), {got(raw)}')
    else:
        for key in ("forward", "snat", "backend_check", "on_no_backend"):
            if t.has(key):
                t.error(key, "only applies to a service with backends")
    reported: set[str] = set()  # an array applies to every port: one message per mistake
    for b in backends:
        problems = []
        if Family.of(b.address) not in families:
            problems.append(f"{b.address} is {Family.of(b.address).value} but the service's ip_families is "
                            f"{[f.value for f in families]} (lbd does not translate between families)")
        if forward == "dsr" and b.target_port != b.port.port:
            problems.append(f'{b.endpoint}: forward = "dsr" cannot change the port ({b.port} -> '
                            f"{b.target_port}): a DSR backend serves the VIP's own port")
        for problem in problems:
            if problem not in reported:
                reported.add(problem)
                t.error("backends", problem)
    check = None
    table = t.table("backend_check")
    if table is not None:
        check = parse_backend_check(t.errors, t.at("backend_check"), table)
    out.update(backends=tuple(backends), forward=forward or "nat", snat=bool(snat) and forward == "nat",
               backend_check=check, on_no_backend=on_no or "withdraw")
    return out


def _entries(errors: Errors, where: str, items: list, port: PortSpec, port_allowed: bool) -> list[Backend]:
    out: list[Backend] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        backend = _entry(errors, at, item, port, port_allowed)
        if backend is None:
            continue
        if backend.endpoint in seen:
            errors.add(at, f"{backend.endpoint} repeats [{seen[backend.endpoint]}]")
            continue
        seen[backend.endpoint] = i
        out.append(backend)
    return out


def _entry(errors: Errors, at: str, item: object, port: PortSpec, port_allowed: bool) -> Backend | None:
    weight = 1
    if isinstance(item, str):
        parts = split_host_port(item, port.port)
        if isinstance(parts, str):
            errors.add(at, parts)
            return None
        host, target = parts
        explicit = split_host_port(item, None)
        has_port = not isinstance(explicit, str)
    elif isinstance(item, dict):
        t = Table(errors, at, item, BACKEND_KEYS)
        host = t.string("address", required=True)
        target = t.integer("port", port.port, lo=1, hi=65535)
        weight = t.integer("weight", 1, lo=0, hi=MAX_WEIGHT)
        has_port = t.has("port")
        if host is None or target is None or weight is None:
            return None
    else:
        errors.add(at, f'expected "address[:port]" or {{ address = ..., port = ..., weight = ... }}, {got(item)}')
        return None
    address = parse_ip(host)
    if address is None:
        errors.add(at, f"{quote(host)} is not an IP address")
        return None
    if has_port and not port_allowed:
        errors.add(at, f"{quote(item if isinstance(item, str) else host)}: a backend port in a list for several "
                       'service ports is ambiguous; write backends = { "tcp/80" = [...], "tcp/443" = [...] }, '
                       "or leave the port out (each backend then serves the VIP's own port)")
        return None
    return Backend(port=port, address=address, target_port=target, weight=weight)


def parse_backend_check(errors: Errors, where: str, data: dict) -> HealthCheckConfig | None:
    """``[service.backend_check]``: the keys of ``health_check`` except ``host``
    (each backend's own address), ``type`` defaulting to tcp and ``port`` to each backend's port."""
    if "host" in data:
        errors.add(f"{where}: host", "a backend check connects to each backend's own address; remove host")
        data = {k: v for k, v in data.items() if k != "host"}
    filled = dict(data)
    filled.setdefault("type", "tcp")
    port_given = "port" in data
    if filled.get("type") in ("tcp", "http") and not port_given:
        filled["port"] = 1  # placeholder: each backend's own port
    before = len(errors)
    check = parse_health_check(errors, where, filled)
    if check is None or len(errors) > before:
        return None
    return replace(check, port=check.port if port_given else None, host="")



FORWARDING_KEYS = ("seed", "table_size")


def parse_forwarding_section(errors: Errors, data: dict) -> ForwardingConfig:
    """``[forwarding]``: cluster-wide, equal on every node (the flow hash must agree)."""
    from lbd.forward.maglev import MAX_TABLE_SIZE, is_prime

    t = Table(errors, "forwarding", data, FORWARDING_KEYS)
    default = ForwardingConfig()
    seed = t.integer("seed", default.seed, lo=0, hi=2**32 - 1)
    size = t.integer("table_size", default.table_size, lo=3, hi=MAX_TABLE_SIZE)
    if isinstance(size, int) and not is_prime(size):
        t.error("table_size", f"{size} is not a prime (Maglev needs one; 65537, 131071, 262139 and 1000003 are)")
        size = default.table_size
    return ForwardingConfig(seed=seed if seed is not None else default.seed,
                            table_size=size if size is not None else default.table_size)
