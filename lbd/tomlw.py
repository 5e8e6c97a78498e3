"""A small TOML writer for the documents lbd generates (``lbd import``). Pure.

The standard library reads TOML (``tomllib``) but does not write it. lbd only
writes flat documents it builds itself: top-level tables and arrays of tables
whose values are strings, integers, floats, booleans, arrays and inline
tables, so a writer of this subset is short and is tested by round-tripping
through ``tomllib`` rather than by pulling in a dependency.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping

__all__ = ["TomlWriteError", "dumps_key", "dumps_value", "table_lines"]

BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")

# TOML 1.0 §String: basic strings escape ", \ and every control character
# except tab (U+0000-U+001F and U+007F).
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


class TomlWriteError(ValueError):
    """A value this writer cannot express (None, NaN, an unknown type)."""


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def dumps_key(key: str) -> str:
    if not isinstance(key, str):
        raise TomlWriteError(f"a key must be a string, not {type(key).__name__}")
    return key if BARE_KEY_RE.fullmatch(key) else _string(key)


def dumps_value(value: Any) -> str:
    """One value, inline (arrays and tables on one line)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TomlWriteError(f"{value} has no TOML form lbd writes")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{dumps_key(k)} = {dumps_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps_value(v) for v in value) + "]"
    raise TomlWriteError(f"cannot write {type(value).__name__} as TOML")


def table_lines(header: str, table: Mapping[str, Any], comments: Iterable[str] = (),
                key_comments: Mapping[str, Iterable[str]] | None = None) -> list[str]:
    """``# comments``, the ``header`` line (``[x]`` or ``[[x]]``; "" for none)
    and one ``key = value`` line per entry, each preceded by its comments."""
    lines = [_comment(c) for c in comments]
    if header:
        lines.append(header)
    for key, value in table.items():
        for c in (key_comments or {}).get(key, ()):
            lines.append(_comment(c))
        lines.append(f"{dumps_key(key)} = {dumps_value(value)}")
    return lines


def _comment(text: str) -> str:
    # A comment ends at the line's end: newlines become spaces,
    # and TOML allows no control character but tab in it.
    clean = "".join(ch if ch == "\t" or (ord(ch) >= 0x20 and ord(ch) != 0x7F) else " " for ch in str(text))
    return "# " + clean if clean else "#"
