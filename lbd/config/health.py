"""Health checks: a service's ``health_check`` table (tcp, http or exec), and
the base of a forwarded service's ``backend_check``.

Its own module because both ``lbd.config.services`` and ``lbd.config.forward``
read health checks, and services reads forwarding keys: here neither has to
import the other lazily.
"""

from __future__ import annotations

from lbd.config.read import Errors, Table, quote
from lbd.model import HealthCheckConfig

HEALTH_KEYS = (
    "type", "port", "host", "path", "expected_status", "command", "interval", "timeout", "rise", "fall",
)
HEALTH_TYPES = ("tcp", "http", "exec")

# Which health-check keys make sense for which type: anything else is a mistake
# worth reporting (a "command" on a tcp check would silently do nothing).
HEALTH_KEYS_FOR = {
    "tcp": {"type", "port", "host", "interval", "timeout", "rise", "fall"},
    "http": {"type", "port", "host", "path", "expected_status", "interval", "timeout", "rise", "fall"},
    "exec": {"type", "command", "interval", "timeout", "rise", "fall"},
}


def parse_health_check(errors: Errors, where: str, data: dict) -> HealthCheckConfig | None:
    t = Table(errors, where, data, HEALTH_KEYS)
    before = len(errors)
    kind = t.string("type", required=True, choices=HEALTH_TYPES)
    if kind is None:
        return None
    for key in data:
        if key in HEALTH_KEYS and key not in HEALTH_KEYS_FOR[kind]:
            users = [k for k, keys in HEALTH_KEYS_FOR.items() if key in keys]
            t.error(key, f"only applies to type = {' or '.join(repr(u) for u in users)}, not {kind!r}")
    port = None
    if kind in ("tcp", "http"):
        port = t.integer("port", lo=1, hi=65535, required=True)
    host = t.string("host", "127.0.0.1")
    path = t.string("path", "/")
    if isinstance(path, str) and not path.startswith("/"):
        t.error("path", f"{quote(path)} must start with '/'")
    expected_status = t.integer("expected_status", 200, lo=100, hi=599)
    command: tuple[str, ...] = ()
    if kind == "exec":
        if not t.has("command"):
            t.errors.add(where, "missing required key 'command' (an array: program and arguments)")
        else:
            command = t.string_list("command", unique=False)
            if t.array("command") == []:
                t.error("command", "must name at least the program to run")
    interval = t.seconds("interval", 2.0, positive=True)
    timeout = t.seconds("timeout", 1.0, positive=True)
    if interval is not None and timeout is not None and timeout > interval:
        t.error("timeout", f"{timeout:g} s is longer than the interval ({interval:g} s)")
    rise = t.integer("rise", 2, lo=1, hi=1000)
    fall = t.integer("fall", 2, lo=1, hi=1000)
    if len(errors) > before:
        return None
    return HealthCheckConfig(
        type=kind, port=port, host=host, path=path, expected_status=expected_status, command=command,
        interval=interval, timeout=timeout, rise=rise, fall=fall,
    )
