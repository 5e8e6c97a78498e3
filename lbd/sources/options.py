"""Reading a source's ``[[source]]`` keys with the main config's readers and messages.

``[[source]]`` options arrive as the plain TOML mapping minus ``type`` and
``name``. Plugins validate them with ``options_table`` so their messages look
exactly like the rest of the config (``path: expected a string, got ...``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from lbd.config.read import Errors, Table

_MARK = "\x00"


class OptionErrors(Errors):
    """Errors without a file: the registry adds the source, the loader the file."""

    def __init__(self) -> None:
        super().__init__(_MARK)

    def messages(self) -> list[str]:
        # The readers say "top level" for the table itself; here the table is
        # the [[source]] entry, which the registry already names.
        out = []
        for m in self.items:
            for prefix in (_MARK + ": top level: ", _MARK + ": "):
                if m.startswith(prefix):
                    m = m[len(prefix):]
                    break
            out.append(m)
        return out


def options_table(options: Mapping[str, Any], allowed: Sequence[str]) -> tuple[Table, OptionErrors]:
    errors = OptionErrors()
    return Table(errors, "", dict(options), allowed), errors
