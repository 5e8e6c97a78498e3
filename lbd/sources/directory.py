"""The ``directory`` source: drop-in ``*.toml`` files of ``[[service]]`` tables.

::

    [[source]]
    type = "directory"
    name = "dropins"
    path = "/etc/lbd/services.d"
    rescan_interval = 5   # seconds; the safety net behind inotify
    allow_exec = false    # exec health checks from a directory others can write

Each file is validated with the main config's rules and messages
(``lbd.config.parse_services_document``). Service names are
``<source name>/<service name>``.

Never read a half-written file as a deletion:

- files are (re)read on ``IN_CLOSE_WRITE`` and ``IN_MOVED_TO`` only, i.e. once a
  writer closed it or an atomic rename put it in place; ``IN_CREATE`` and
  ``IN_MODIFY`` are ignored because the content is not complete yet (except
  the creation of a symlink, which is complete at once);
- deletions (``IN_DELETE``, ``IN_MOVED_FROM``) are acted on after a short
  grace: editors that rename the old file away and write a new one produce
  "gone" then "written" for the same name, which nets to a re-read;
- temporary names are ignored: dotfiles (``.web.toml.swp``, ``.#web.toml``),
  backups (``web.toml~``), and anything not ending in ``.toml``;
- only regular files are opened, never blocking (``lbd.safefile``): a FIFO,
  device or directory named like a drop-in is an error, like a bad file;
- a file that does not parse keeps its last good services, and the error
  (path, key, what) is reported: the source shows degraded;
- the periodic rescan (for missed events) reads only files whose stat changed,
  that have been left alone for ``settle`` seconds and that did not change
  since the previous rescan, so it cannot catch a ``cp`` mid-copy.

An ``exec`` health check runs a command as root: it is refused (the file is
treated as invalid) unless the directory and file are root's and not writable
by group or others, or the source sets ``allow_exec = true``.

Removing the directory itself withdraws nothing (reported as an error): remove
the files to withdraw services.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from lbd.config import parse_services_document
from lbd.model import ServiceSpec
from lbd.sources.base import Publish, Source
from lbd.sources.inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
)
from lbd.sources.options import options_table
from lbd.safefile import NotRegularFileError, read_regular_file
from lbd import aio

WATCH_MASK = IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
OPTION_KEYS = ("path", "rescan_interval", "settle", "allow_exec")


def ownership_problem(path: str | os.PathLike[str], st: os.stat_result, euid: int) -> str | None:
    """Why ``path`` (with stat ``st``) could be changed by someone other than root, or None.

    Whoever can write a drop-in with an ``exec`` health check runs a command as
    lbd's user (root): the drop-in, and the directories it sits in, must be
    owned by root (or lbd's own user) and not writable by group or others.
    """
    if st.st_uid not in (0, euid):
        return f"{path} is owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def is_candidate(name: str) -> bool:
    """Whether a file name is a drop-in (not an editor temp file or backup)."""
    return name.endswith(".toml") and not name.startswith((".", "#")) and "~" not in name and len(name) > 5


@dataclass
class _File:
    signature: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) of the last read
    services: list[ServiceSpec] = field(default_factory=list)  # last good
    errors: list[str] = field(default_factory=list)


class DirectorySource(Source):
    # Seconds between an event and acting on it: gathers the events of one burst (a save,
    # a batch of files). A closed or renamed-into-place file is complete, so this is short:
    # it is in the latency of every change (issue 9: one change <= 20 ms with 100,000 present).
    debounce = 0.005
    # A deletion waits this long (from its event) before it withdraws anything: editors that
    # rename the old file away and write the new one produce "gone" then "written" for the
    # same name within milliseconds, which nets to a re-read.
    gone_grace = 0.02

    @classmethod
    def validate(cls, options: Mapping[str, Any]) -> list[str]:
        t, errors = options_table(options, OPTION_KEYS)
        path = t.string("path", required=True)
        if path is not None and not os.path.isabs(path):
            t.error("path", f"{path!r} must be an absolute path")
        t.seconds("rescan_interval", 5.0, positive=True, hi=3600)
        t.seconds("settle", 1.0, hi=60)
        t.boolean("allow_exec", False)
        return errors.messages()

    def __init__(self, config, context) -> None:
        super().__init__(config, context)
        self.path = Path(str(config.options["path"]))
        self.rescan_interval = float(config.options.get("rescan_interval", 5.0))  # type: ignore[arg-type]
        self.settle = float(config.options.get("settle", 1.0))  # type: ignore[arg-type]
        self.allow_exec = config.options.get("allow_exec", False) is True
        self.files: dict[str, _File] = {}
        self._pending: dict[str, str] = {}  # name -> "write" | "gone"
        self._gone_at: dict[str, float] = {}  # name -> when its "gone" event came (loop time)
        self._full_rescan = False
        self._last_seen: dict[str, tuple[int, int, int]] = {}  # signatures at the previous rescan
        self._wake = asyncio.Event()
        self._inotify: Inotify | None = None
        self._watching = False
        self._dir_error: str | None = None
        self._publish: Publish | None = None
        # What was published, kept per change (issue 9): the services each file defines as
        # indexed (last good), the files defining each name, and the winner per name (the
        # first file in name order; the others are reported as duplicates).
        self._dirty: set[str] = set()  # files whose services or errors may have changed
        self._indexed: dict[str, dict[str, ServiceSpec]] = {}
        self._definers: dict[str, set[str]] = {}
        self._dupes: set[str] = set()  # names more than one file defines
        self._error_files: set[str] = set()
        self._emitted: dict[str, ServiceSpec] = {}
        self._emitted_once = False

    # -- run loop ---------------------------------------------------------

    async def run(self, publish: Publish) -> None:
        self._publish = publish
        loop = asyncio.get_running_loop()
        self._inotify = Inotify()
        loop.add_reader(self._inotify.fd, self._on_readable)
        try:
            self._ensure_watch()
            self._rescan(initial=True)
            self._emit()
            while True:
                try:
                    await aio.wait_for(self._wake.wait(), self.rescan_interval)
                except asyncio.TimeoutError:
                    self._ensure_watch()
                    self._rescan(initial=False)
                    self._emit()
                    continue
                await asyncio.sleep(self.debounce)
                self._wake.clear()
                self._flush()
                self._emit()
        finally:
            loop.remove_reader(self._inotify.fd)
            self._inotify.close()

    def _ensure_watch(self) -> None:
        assert self._inotify is not None
        if self._watching:
            return
        try:
            self._inotify.add_watch(str(self.path), WATCH_MASK)
        except OSError as exc:
            self._dir_error = f"{self.path}: cannot watch: {exc.strerror or exc}"
            return
        self._watching = True
        self._dir_error = None
        self._full_rescan = True

    def _on_readable(self) -> None:
        assert self._inotify is not None
        try:
            events = self._inotify.read()
        except (OSError, ValueError) as exc:
            self.log.warning("inotify_read_failed", error=repr(exc))
            self._full_rescan = True
            events = []
        for ev in events:
            if ev.mask & IN_Q_OVERFLOW:
                self._full_rescan = True
            elif ev.mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                # The directory went away (or was moved): the watch is dead.
                self._watching = False
                self._dir_error = f"{self.path}: the directory was removed or moved; keeping its services"
            elif is_candidate(ev.name):
                if ev.mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                    self._pending[ev.name] = "write"
                elif ev.mask & IN_CREATE and os.path.islink(self.path / ev.name):
                    # A symlink is complete when created (configuration
                    # management links drop-ins in); a created regular file is
                    # not, and waits for its close.
                    self._pending[ev.name] = "write"
                elif ev.mask & (IN_DELETE | IN_MOVED_FROM):
                    self._pending.setdefault(ev.name, "gone")
        self._wake.set()

    # -- reading ----------------------------------------------------------

    def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        if self._full_rescan:
            self._rescan(initial=False)
        now = asyncio.get_running_loop().time()
        for name, what in sorted(pending.items()):
            path = self.path / name
            if what == "write":
                self._gone_at.pop(name, None)
                self._load(name, path)
                continue
            wait = self._gone_at.setdefault(name, now) + self.gone_grace - now
            if wait > 0:  # not yet: look again when its grace is over
                self._pending.setdefault(name, "gone")
                asyncio.get_running_loop().call_later(wait, self._wake.set)
                continue
            del self._gone_at[name]
            if not path.exists():
                self._forget(name)
            # "gone" but present again: it was replaced; its close/rename event
            # or the rescan will read the new content.

    def _forget(self, name: str) -> None:
        self._dirty.add(name)
        if self.files.pop(name, None) is not None:
            self.log.info("dropin_removed", file=str(self.path / name))

    def _rescan(self, *, initial: bool) -> None:
        self._full_rescan = False
        try:
            entries = list(os.scandir(self.path))
        except OSError as exc:
            # Unreadable or missing directory: keep everything (never a silent deletion).
            self._dir_error = f"{self.path}: cannot list: {exc.strerror or exc}"
            return
        if self._watching:
            self._dir_error = None
        present: set[str] = set()
        seen: dict[str, tuple[int, int, int]] = {}
        now_ns = time.time_ns()
        for entry in entries:
            if not is_candidate(entry.name):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            present.add(entry.name)
            if not stat.S_ISREG(st.st_mode):
                # A FIFO, device or directory named like a drop-in: an error, the same
                # whichever path (inotify or rescan) finds it; its last good services stay.
                self._load(entry.name, Path(entry.path))
                continue
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
            known = self.files.get(entry.name)
            if known is not None and known.signature == sig:
                continue
            if not initial:
                # Being written right now? Its close event reads it. The rescan
                # (for missed events) reads only a file left alone for `settle`
                # seconds AND unchanged since the previous rescan.
                stable = self._last_seen.get(entry.name) == sig
                if not stable or now_ns - st.st_mtime_ns < self.settle * 1e9:
                    seen[entry.name] = sig
                    continue
            seen[entry.name] = sig
            self._load(entry.name, Path(entry.path))
        for name in list(self.files):
            if name not in present:
                self._forget(name)
        self._last_seen = seen

    def _load(self, name: str, path: Path) -> None:
        self._dirty.add(name)
        entry = self.files.setdefault(name, _File())
        try:
            # Never a plain open(): a drop-in that is (or links to) a FIFO would block the
            # event loop, a device may never end. Symlinks are followed (documented usage).
            data, st = read_regular_file(path, 16 * 1024 * 1024)
        except FileNotFoundError:
            self._forget(name)
            return
        except NotRegularFileError as exc:
            entry.signature = None
            entry.errors = [f"{path}: {exc.strerror}; ignored (keeping its last good services)"]
            return
        except OSError as exc:
            entry.errors = [f"{path}: cannot read: {exc.strerror or exc}"]
            return
        entry.signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if len(data) > 16 * 1024 * 1024:
            entry.errors = [f"{path}: larger than 16 MiB; ignored (keeping its last good services)"]
            return
        try:
            doc = tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            entry.errors = [f"{path}: not UTF-8 at byte {exc.start}"]
            return
        except tomllib.TOMLDecodeError as exc:
            entry.errors = [f"{path}: {exc}"]
            return
        services, errors = parse_services_document(doc, str(path), "")
        if not errors:
            errors = self._refuse_exec(path, st, services)
        if errors:
            entry.errors = list(errors)
            self.log.warning("dropin_invalid", file=str(path), errors=errors,
                             kept=len(entry.services))
            return
        entry.services = list(services)
        entry.errors = []
        self.log.info("dropin_loaded", file=str(path), services=len(services))

    def _refuse_exec(self, path: Path, st: os.stat_result, services: list[ServiceSpec]) -> list[str]:
        """Errors for ``exec`` health checks from a drop-in others could have written.

        Refused (the file is treated as invalid: its last good services stay,
        the source shows degraded) unless ``allow_exec = true``.
        """
        execs = [spec.name for spec in services if spec.health_check is not None and spec.health_check.type == "exec"]
        if not execs or self.allow_exec:
            return []
        euid = os.geteuid()
        problem = ownership_problem(path, st, euid)  # the file itself (st: after symlinks)
        dirs = [self.path]
        real_dir = Path(os.path.realpath(path)).parent
        if real_dir != Path(os.path.realpath(self.path)):
            dirs.append(real_dir)  # a symlinked drop-in: where its target lives counts too
        for d in dirs:
            if problem is not None:
                break
            try:
                problem = ownership_problem(d, os.stat(d), euid)
            except OSError as exc:
                problem = f"{d}: cannot check its owner: {exc.strerror or exc}"
        if problem is None:
            return []
        return [f'{path}: service "{name}": health_check.type: "exec" refused: {problem}; '
                f'exec checks from drop-ins need root-owned files and directories not writable by group '
                f'or others, or allow_exec = true on [[source]] "{self.config.name}"' for name in execs]

    # -- output -----------------------------------------------------------

    @property
    def _published(self) -> list[ServiceSpec] | None:
        """The services published so far (None before the first publish)."""
        return list(self._emitted.values()) if self._emitted_once else None

    def _reindex(self) -> set[str]:
        """Bring the index up to date with the files read since the last call; the service
        names whose definers changed."""
        touched: set[str] = set()
        for fname in self._dirty:
            entry = self.files.get(fname)
            new = {spec.name: spec for spec in entry.services} if entry is not None else {}
            old = self._indexed.pop(fname, {})
            for name in old:
                if name not in new or new[name] is not old[name]:
                    self._definers[name].discard(fname)
                    touched.add(name)
            for name, spec in new.items():
                if name not in old or old[name] is not spec:
                    self._definers.setdefault(name, set()).add(fname)
                    touched.add(name)
            if new:
                self._indexed[fname] = new
            if entry is not None and entry.errors:
                self._error_files.add(fname)
            else:
                self._error_files.discard(fname)
        self._dirty.clear()
        for name in touched:
            files = self._definers.get(name)
            if not files:
                self._definers.pop(name, None)
            if files and len(files) > 1:
                self._dupes.add(name)
            else:
                self._dupes.discard(name)
        return touched

    def _errors(self) -> list[str]:
        """The dir error, then per file in name order its errors and its duplicate names (the
        first file in name order defining a name wins): only files with something to say."""
        errors: list[str] = [self._dir_error] if self._dir_error else []
        losers = {f for name in self._dupes for f in self._definers[name] if f != min(self._definers[name])}
        for fname in sorted(self._error_files | losers):
            entry = self.files.get(fname)
            if entry is None:
                continue
            errors.extend(entry.errors)
            if fname not in losers:
                continue
            for spec in entry.services:
                if spec.name in self._dupes and (first := min(self._definers[spec.name])) != fname:
                    errors.append(f'{self.path / fname}: service "{spec.name}": name: already defined in '
                                  f"{self.path / first}")
        return errors

    def _emit(self) -> None:
        """Publish what changed: a delta when the manager takes one (``publish.changes``), in
        work proportional to the files read (issue 9); else the complete snapshot."""
        upserts: list[ServiceSpec] = []
        removed: list[str] = []
        for name in sorted(self._reindex()):
            files = self._definers.get(name)
            if files:
                spec = self._indexed[min(files)][name]
                if self._emitted.get(name) is not spec:
                    self._emitted[name] = spec
                    upserts.append(spec)
            elif self._emitted.pop(name, None) is not None:
                removed.append(name)
        errors = self._errors()
        self.context.set_error("; ".join(errors) if errors else None)
        assert self._publish is not None
        changes = getattr(self._publish, "changes", None)
        if not self._emitted_once or (changes is None and (upserts or removed)):
            self._emitted_once = True
            self._publish(list(self._emitted.values()))
        elif upserts or removed:
            changes(upserts, removed)
