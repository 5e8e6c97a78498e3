"""``[[hook]]`` tables: commands run on events (keepalived's notify scripts).

A hook is an argv, never a shell line: ``exec[0]`` must be an absolute path to
an executable regular file, checked here so that ``lbd check`` catches a typo
before the event that needed the hook.
"""

from __future__ import annotations

import os
import stat

from lbd.config.read import Errors, Table, UniqueNames, array_of_tables, did_you_mean, entry_label, quote
from lbd.config.schema import HookConfig

HOOK_KEYS = ("name", "on", "exec", "timeout")
# Every event a hook may subscribe to (docs/hooks.md describes each payload).
HOOK_EVENTS = (
    "vip_up", "vip_down", "owner_changed",
    "bgp_session_up", "bgp_session_down",
    "member_joined", "member_left",
    "reload",
)
MAX_TIMEOUT = 3600.0


def check_executable(path: str) -> str | None:
    """Why ``path`` cannot be run as a hook, or None."""
    if not os.path.isabs(path):
        return f"{quote(path)} must be an absolute path (hooks never search PATH)"
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{quote(path)}: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"{quote(path)} is not a regular file"
    if not os.access(path, os.X_OK):
        return f"{quote(path)} is not executable"
    return None


def parse_hooks(errors: Errors, doc: dict) -> list[HookConfig]:
    out: list[HookConfig] = []
    names = UniqueNames(errors, "hook")
    for i, data in array_of_tables(errors, doc, "hook"):
        label = entry_label("hook", data, i)
        t = Table(errors, label, data, HOOK_KEYS)
        name = t.name("name", f"hook-{i}")
        events = t.string_list("on")
        if not t.has("on"):
            errors.add(label, "missing required key 'on' (the events that run the hook)")
        elif not events and t.array("on") == []:
            t.error("on", "must list at least one event")
        for j, event in enumerate(events):
            if event not in HOOK_EVENTS:
                t.error(f"on[{j}]", f"unknown event {quote(event)}{did_you_mean(event, HOOK_EVENTS)} "
                                    f"(known: {', '.join(HOOK_EVENTS)})")
        argv = t.array("exec")
        command: list[str] = []
        if argv is None and not t.has("exec"):
            errors.add(label, "missing required key 'exec' (the command and its arguments)")
        elif argv == []:
            t.error("exec", "must hold at least the command")
        for j, item in enumerate(argv or []):
            if not isinstance(item, str) or "\0" in item:
                t.error(f"exec[{j}]", "expected a string without NUL characters")
                continue
            command.append(item)
        if command and argv and isinstance(argv[0], str):
            problem = check_executable(command[0])
            if problem:
                t.error("exec[0]", problem)
        timeout = t.seconds("timeout", 10.0, positive=True, hi=MAX_TIMEOUT)
        if name is not None and names.repeated(name, i):
            continue
        if name is None or not command:
            continue
        names.add(name, i)  # a hook without a command does not take its name
        out.append(HookConfig(name=name, on=tuple(e for e in events if e in HOOK_EVENTS), exec=tuple(command),
                              timeout=timeout if timeout is not None else 10.0))
    return out
