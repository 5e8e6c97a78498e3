"""Typed readers for TOML tables that collect every error instead of raising.

``lbd.config`` builds the typed ``Config`` with these. Every reader records a
precise message (``<file>: <where>: <what>``) in an ``Errors`` list and returns
``None`` (or the default) for a bad value, so one pass over the document finds
every problem.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from lbd.config.schema import AddressRange
from lbd.model import IPAddress
from lbd.selectors import Selectors

MISSING: Any = object()

# Integers beyond this are reported without their digits: Python refuses to
# print ints of more than 4300 digits, and no setting needs more than 20.
HUGE = 10**30

# Names of pools, advertisements, peers, services, sources: they show up in
# messages, metrics labels, state files and namespaced service names.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NAME_RULE = "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"

# Linux IFNAMSIZ is 16 including the NUL; '/' and whitespace are refused by
# dev_valid_name() in net/core/dev.c, as are "." and "..".
IFNAME_RE = re.compile(r"[^/\s:]{1,15}")

HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)

DURATION_HINT_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*")


def quote(value: object, limit: int = 60) -> str:
    """Render a value from the document for a message: strings in double quotes."""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > HUGE:
        text = "a number of more than 30 digits"
    else:
        text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def type_name(value: object) -> str:
    """The TOML name of a Python value's type, with an article."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, datetime.time):
        return "a time"
    return f"a {type(value).__name__}"


def got(value: object) -> str:
    """``got a string ("yes")``: the type, and the value when it is short and scalar."""
    if isinstance(value, (list, dict)):
        return f"got {type_name(value)}"
    return f"got {type_name(value)} ({quote(value)})"


def did_you_mean(key: str, allowed: Iterable[str]) -> str:
    # Sets are sorted so that ties between equally close names resolve the same way every run.
    candidates = sorted(allowed) if isinstance(allowed, (set, frozenset)) else list(allowed)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def join(where: str, key: str) -> str:
    return f"{where}: {key}" if where else key


@dataclass
class Errors:
    """Every problem found in one file, formatted ``<file>: <where>: <what>``."""

    file: str
    items: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{self.file}: {where or 'top level'}: {what}")

    def extend(self, messages: Iterable[str]) -> None:
        self.items.extend(messages)

    def __len__(self) -> int:
        return len(self.items)


class UniqueNames:
    """The names given so far to the entries of one ``[[kind]]`` array.

    A name given twice is reported at the repeat, pointing at the first:
    ``kind[3]: name: "web" is already the name of kind[1]``. Every section
    with named entries uses this one check, so every one says it the same way.
    """

    def __init__(self, errors: Errors, kind: str) -> None:
        self.errors = errors
        self.kind = kind
        self.first: dict[str, int] = {}  # name -> index of the entry that has it

    def repeated(self, name: str, index: int, hint: str = "") -> bool:
        """Whether an earlier entry has ``name`` (then the repeat is reported, ``hint`` appended)."""
        first = self.first.get(name)
        if first is None:
            return False
        self.errors.add(f"{self.kind}[{index}]", f'name: "{name}" is already the name of {self.kind}[{first}]{hint}')
        return True

    def add(self, name: str, index: int) -> None:
        """Entry ``index`` has ``name`` (for the entries whose name counts only once they are sound)."""
        self.first[name] = index

    def claim(self, name: str, index: int, hint: str = "") -> bool:
        """Give ``name`` to entry ``index``; False (and the repeat reported) when an earlier entry has it."""
        if self.repeated(name, index, hint):
            return False
        self.add(name, index)
        return True

    def names(self) -> set[str]:
        return set(self.first)


def read_string_map(errors: Any, where: str, value: Any) -> dict[str, str]:
    """``value`` as a table of string -> string (labels, selectors); each bad entry is one error at ``where``."""
    if not isinstance(value, dict):
        errors.add(where, f"expected a table of strings, {got(value)}")
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        at = f"{where}: {k}" if k else f'{where}: ""'
        if not k:
            errors.add(at, "an empty key is not allowed")
        elif not isinstance(v, str):
            errors.add(at, f"expected a string, {got(v)}")
        else:
            out[k] = v
    return out


class Table:
    """A TOML table being read: typed getters, and unknown-key detection.

    ``allowed`` is every key the table may hold; anything else is reported
    (with a "did you mean") as soon as the reader is made.
    """

    def __init__(self, errors: Errors, where: str, data: dict, allowed: Sequence[str]) -> None:
        self.errors = errors
        self.where = where
        self.data = data
        self.allowed = tuple(allowed)
        for key in data:
            if key not in self.allowed:
                self.errors.add(where, f"unknown key {key!r}{did_you_mean(str(key), self.allowed)}")

    # -- plumbing ---------------------------------------------------------

    def at(self, key: str) -> str:
        return join(self.where, key)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        return self.data.get(key, MISSING)

    def error(self, key: str, what: str) -> None:
        self.errors.add(self.at(key), what)

    def _missing(self, key: str, default: Any, required: bool) -> Any:
        if required:
            self.errors.add(self.where, f"missing required key {key!r}")
        return default

    # -- scalars ----------------------------------------------------------

    def string(self, key: str, default: Any = None, *, required: bool = False,
               choices: Sequence[str] | None = None, nonempty: bool = True) -> Any:
        value = self.raw(key)
        if value is MISSING:
            return self._missing(key, default, required)
        return check_string(self.errors, self.at(key), value, choices=choices, nonempty=nonempty,
                            default=default)

    def name(self, key: str = "name", default: Any = None, *, required: bool = False) -> Any:
        value = self.string(key, MISSING, required=required)
        if value is MISSING or value is None:
            return default
        if not NAME_RE.fullmatch(value):
            self.error(key, f"{quote(value)} {NAME_RULE}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is MISSING:
            return default
        if not isinstance(value, bool):
            hint = ""
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
                hint = f"; write {str(value.lower() in ('true', 'yes', 'on')).lower()} without quotes"
            self.error(key, f"expected a boolean, {got(value)}{hint}")
            return default
        return value

    def integer(self, key: str, default: Any = None, *, lo: int | None = None, hi: int | None = None,
                required: bool = False) -> Any:
        value = self.raw(key)
        if value is MISSING:
            return self._missing(key, default, required)
        return check_int(self.errors, self.at(key), value, lo=lo, hi=hi, default=default)

    def seconds(self, key: str, default: Any = None, *, lo: float = 0.0, hi: float | None = None,
                positive: bool = False, whole: bool = False, required: bool = False) -> Any:
        value = self.raw(key)
        if value is MISSING:
            return self._missing(key, default, required)
        return check_seconds(self.errors, self.at(key), value, lo=lo, hi=hi, positive=positive,
                             whole=whole, default=default)

    def ip(self, key: str, default: Any = None, *, required: bool = False, version: int | None = None) -> Any:
        value = self.string(key, MISSING, required=required)
        if value is MISSING or value is None:
            return default
        address = parse_ip(value)
        if address is None:
            self.error(key, f"{quote(value)} is not an IP address")
            return default
        if version is not None and address.version != version:
            self.error(key, f"{quote(value)} is not an IPv{version} address")
            return default
        return address

    def path(self, key: str, default: Any, base: Path) -> Any:
        value = self.string(key, MISSING)
        if value is MISSING or value is None:
            return default
        if "\0" in value:
            self.error(key, "a path cannot contain a NUL character")
            return default
        path = Path(value)
        return path if path.is_absolute() else base / path

    # -- compound ---------------------------------------------------------

    def array(self, key: str) -> list | None:
        """The raw array at ``key`` (None when absent or not an array)."""
        value = self.raw(key)
        if value is MISSING:
            return None
        if not isinstance(value, list):
            self.error(key, f"expected an array, {got(value)}")
            return None
        return value

    def string_list(self, key: str, *, unique: bool = True, names: bool = False) -> tuple[str, ...]:
        values = self.array(key)
        if values is None:
            return ()
        out: list[str] = []
        first_at: dict[str, int] = {}
        for i, item in enumerate(values):
            where = f"{self.at(key)}[{i}]"
            text = check_string(self.errors, where, item, default=None)
            if text is None:
                continue
            if names and not NAME_RE.fullmatch(text):
                self.errors.add(where, f"{quote(text)} {NAME_RULE}")
                continue
            if unique and text in first_at:
                self.errors.add(where, f"{quote(text)} repeats {key}[{first_at[text]}]")
                continue
            first_at[text] = i
            out.append(text)
        return tuple(out)

    def string_map(self, key: str) -> dict[str, str]:
        """A table of string -> string (labels, node selectors)."""
        value = self.raw(key)
        if value is MISSING:
            return {}
        return read_string_map(self.errors, self.at(key), value)

    def selectors(self, key: str, *, flat: bool = True) -> "Selectors":
        """A label selector or an array of them (``lbd.selectors``); absent: ()."""
        from lbd.selectors import parse_selectors

        value = self.raw(key)
        if value is MISSING:
            return ()
        return parse_selectors(self.errors, self.at(key), value, flat=flat)

    def table(self, key: str) -> dict | None:
        value = self.raw(key)
        if value is MISSING:
            return None
        if not isinstance(value, dict):
            self.error(key, f"expected a table, {got(value)}")
            return None
        return value


# ---------------------------------------------------------------------------
# Value checks shared by the readers and by list items
# ---------------------------------------------------------------------------


def check_string(errors: Errors, where: str, value: object, *, choices: Sequence[str] | None = None,
                 nonempty: bool = True, default: Any = None) -> Any:
    if not isinstance(value, str):
        errors.add(where, f"expected a string, {got(value)}")
        return default
    if nonempty and not value.strip():
        errors.add(where, "must not be empty")
        return default
    if "\0" in value:
        errors.add(where, "must not contain a NUL character")
        return default
    if choices is not None and value not in choices:
        options = ", ".join(f'"{c}"' for c in choices)
        errors.add(where, f"{quote(value)} is not one of {options}{did_you_mean(value, choices)}")
        return default
    return value


def check_int(errors: Errors, where: str, value: object, *, lo: int | None = None, hi: int | None = None,
              default: Any = None) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = ""
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            hint = "; write the number without quotes"
        errors.add(where, f"expected an integer, {got(value)}{hint}")
        return default
    if abs(value) > HUGE and (lo is not None or hi is not None):
        errors.add(where, f"{quote(value)} is out of range {lo}..{hi}")
        return default
    if lo is not None and hi is not None and not lo <= value <= hi:
        errors.add(where, f"{value} is out of range {lo}..{hi}")
        return default
    if lo is not None and value < lo:
        errors.add(where, f"{value} must be at least {lo}")
        return default
    if hi is not None and value > hi:
        errors.add(where, f"{value} must be at most {hi}")
        return default
    return value


def check_seconds(errors: Errors, where: str, value: object, *, lo: float = 0.0, hi: float | None = None,
                  positive: bool = False, whole: bool = False, default: Any = None) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = ""
        if isinstance(value, str):
            match = DURATION_HINT_RE.fullmatch(value)
            if match:
                number = float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]
                hint = f"; durations are plain numbers of seconds: write {number:g}"
        errors.add(where, f"expected a number of seconds, {got(value)}{hint}")
        return default
    if isinstance(value, int) and abs(value) > HUGE:
        errors.add(where, f"{quote(value)} is not a sensible number of seconds")
        return default
    if not math.isfinite(value):
        errors.add(where, f"{value} is not a finite number of seconds")
        return default
    if whole and value != int(value):
        errors.add(where, f"{value} must be a whole number of seconds")
        return default
    if positive and value <= 0:
        errors.add(where, f"{value:g} must be more than 0 seconds")
        return default
    if value < lo:
        errors.add(where, f"{value:g} must be at least {lo:g} seconds")
        return default
    if hi is not None and value > hi:
        errors.add(where, f"{value:g} must be at most {hi:g} seconds")
        return default
    return float(value)


def parse_ip(text: str) -> IPAddress | None:
    """An IPv4 or IPv6 address, or None; scoped IPv6 (``fe80::1%eth0``) is refused."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if getattr(address, "scope_id", None):
        return None
    return address


def parse_address_entry(text: str) -> tuple[AddressRange | None, str | None]:
    """A pool entry: a CIDR, a ``first-last`` range or a single address.

    Returns the range, or an error (what is wrong, without location).
    """
    stripped = text.strip()
    bad = f"{quote(text)} is not a CIDR or a range"
    if "/" in stripped:
        try:
            network = ipaddress.ip_network(stripped, strict=True)
        except ValueError as exc:
            if "host bits set" not in str(exc):
                return None, bad
            loose = ipaddress.ip_network(stripped, strict=False)
            start = ipaddress.ip_interface(stripped).ip
            hint = (f"{quote(text)} has host bits set: the network is \"{loose}\"; "
                    f"for the addresses from {start} on, write the range \"{start}-{loose.broadcast_address}\"")
            return None, hint
        if "%" in stripped:
            return None, bad
        return AddressRange(network.network_address, network.broadcast_address, stripped), None
    if "-" in stripped:
        parts = stripped.split("-")
        if len(parts) != 2:
            return None, bad
        first, last = parse_ip(parts[0]), parse_ip(parts[1])
        if first is None or last is None:
            return None, bad
        if first.version != last.version:
            return None, f"{quote(text)} mixes IPv4 and IPv6"
        if first > last:
            return None, f"{quote(text)}: the first address is after the last"
        return AddressRange(first, last, stripped), None
    single = parse_ip(stripped)
    if single is None:
        return None, bad
    return AddressRange(single, single, stripped), None


def split_host_port(text: str, default_port: int | None) -> tuple[str, int] | str:
    """``host:port``, ``[v6]:port``, or (with a default port) a bare host.

    Returns (host, port) or an error message.
    """
    text = text.strip()
    port_text: str | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return f"{quote(text)}: missing ']' after the IPv6 address"
        host = text[1:close]
        rest = text[close + 1:]
        if rest:
            if not rest.startswith(":"):
                return f"{quote(text)} is not host:port"
            port_text = rest[1:]
        if parse_ip(host) is None or ":" not in host:
            return f"{quote(host)} is not an IPv6 address"
    elif text.count(":") > 1:
        # A bare IPv6 address: only valid without a port.
        if parse_ip(text) is None:
            return f"{quote(text)} is not host:port (write an IPv6 address as [addr]:port)"
        host = text
    elif ":" in text:
        host, port_text = text.split(":", 1)
    else:
        host = text
    if not host:
        return f"{quote(text)} has no host"
    if port_text is None:
        if default_port is None:
            return f"{quote(text)} has no port (expected host:port)"
        port = default_port
    else:
        if not port_text.isdigit() or not port_text.isascii():
            return f"{quote(text)}: the port {quote(port_text)} is not a number"
        port = int(port_text)
        if not 1 <= port <= 65535:
            return f"{quote(text)}: the port {port} is out of range 1..65535"
    return host, port


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_endpoint(errors: Errors, where: str, value: object, *, default_port: int | None,
                   ip_only: bool) -> str | None:
    """Validate an endpoint string and return it normalized as ``host:port``."""
    text = check_string(errors, where, value)
    if text is None:
        return None
    parts = split_host_port(text, default_port)
    if isinstance(parts, str):
        errors.add(where, parts)
        return None
    host, port = parts
    address = parse_ip(host)
    if address is None:
        if ip_only:
            errors.add(where, f"{quote(host)} is not an IP address")
            return None
        if not HOSTNAME_RE.fullmatch(host):
            errors.add(where, f"{quote(host)} is neither an IP address nor a host name")
            return None
        return format_host_port(host, port)
    return format_host_port(str(address), port)


def check_ifname(errors: Errors, where: str, value: object) -> str | None:
    text = check_string(errors, where, value)
    if text is None:
        return None
    if text in (".", "..") or not IFNAME_RE.fullmatch(text):
        errors.add(where, f"{quote(text)} is not a valid interface name (1-15 characters, no '/', ':' or spaces)")
        return None
    return text


def array_of_tables(errors: Errors, doc: dict, key: str) -> list[tuple[int, dict]]:
    """The ``[[key]]`` entries of a document, each with its index; reports misuse."""
    value = doc.get(key, MISSING)
    if value is MISSING:
        return []
    if isinstance(value, dict):
        errors.add(key, f"expected an array of tables ([[{key}]]), got a table ([{key}])")
        return []
    if not isinstance(value, list):
        errors.add(key, f"expected an array of tables ([[{key}]]), {got(value)}")
        return []
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            errors.add(f"{key}[{i}]", f"expected a table, {got(item)}")
            continue
        out.append((i, item))
    return out


def entry_label(kind: str, table: dict, index: int) -> str:
    """How to name one ``[[kind]]`` entry in messages: by name when it has a usable one."""
    name = table.get("name")
    if isinstance(name, str) and NAME_RE.fullmatch(name):
        return f'{kind} "{name}"'
    return f"{kind}[{index}]"
