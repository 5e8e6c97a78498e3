"""Persisted state: allocations (and what later pieces add), written atomically.

File: ``<state_dir>/allocations.json``::

    {"version": 1,
     "drained": false,
     "allocations": {"static/web": {"pool": "lan", "addresses": ["192.168.1.48"]}},
     "extra": {}}

Atomicity. ``save`` writes a temp file in the same directory, flushes and
fsyncs it, renames it over ``allocations.json`` (``rename(2)`` replaces the
name atomically within one file system) and fsyncs the directory so the rename
itself is durable. A crash at any point leaves either the old or the new file;
a leftover temp file is never read and is removed by the next ``load``.

Failure policy.

* Missing file: empty state (first start).
* Unreadable or corrupt file: it is renamed aside to
  ``allocations.json.corrupt-<UTC timestamp>``, logged at error level, and
  ``load`` returns an empty state. Moving it aside first means the next
  ``save`` can never overwrite the evidence, and an operator can restore it.
  If it cannot be moved aside, ``load`` raises ``StateError``: starting empty
  and later saving would destroy it.
* Not a regular file (a FIFO, a device, a directory, a symlink: lbd only ever
  renames a regular file into place): never opened in a way that could block
  (``lbd.safefile``), and moved aside like a corrupt file, with the reason
  ("not a regular file: it is a FIFO (named pipe)").
* A file written by a newer lbd (``version`` above ``FORMAT_VERSION``) is not
  corrupt: ``load`` raises ``StateError`` and leaves the file alone, so a
  downgrade never silently drops allocations.

``decode_state`` parses hostile bytes and raises only ``StateError``.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime
import ipaddress
import json
import math
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import structlog

from lbd.delta import changed_keys
from lbd.model import Allocation, IPAddress
from lbd.safefile import NotRegularFileError, read_regular_file

__all__ = [
    "FORMAT_VERSION",
    "STATE_FILE",
    "PersistedState",
    "StateError",
    "StateVersionError",
    "StateStore",
    "StateEncoder",
    "StateWriter",
    "decode_state",
    "encode_state",
]

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1
STATE_FILE = "allocations.json"
_ENTRY_KEYS = frozenset({"pool", "addresses"})
_TEMP_PREFIX = f".{STATE_FILE}.tmp-"
_MAX_BYTES = 64 * 1024 * 1024  # far above any real table; refuse to read a runaway file
# Writes closer together than this are coalesced into one (the latest state): a burst of
# changes costs one encode and one fsync, not one per change. The first change after a
# quiet spell is written at once.
WRITE_INTERVAL = 0.25


class StateError(ValueError):
    """The state file is malformed, or cannot be handled safely."""


class StateVersionError(StateError):
    """The state file was written by a newer lbd: not corrupt, not ours to touch."""


@dataclass
class PersistedState:
    allocations: dict[str, Allocation] = field(default_factory=dict)
    drained: bool = False
    extra: dict[str, object] = field(default_factory=dict)  # JSON values, for later pieces
    version: int = FORMAT_VERSION


# ---------------------------------------------------------------------------
# Codec (pure)
# ---------------------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise StateError(f"invalid JSON number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StateError(f"number {text} out of range")
    return value


def _address(text: object, where: Callable[[], str]) -> IPAddress:
    """``where`` is called only for a message: formatting it per address was half the load
    time of 100,000 allocations (issue 9), as was ``ip_address``'s pure-Python parser; the
    C parser takes the canonical text lbd writes, anything else goes the slow, same way."""
    if not isinstance(text, str) or "%" in text:
        raise StateError(f"{where()}: {text!r} is not an IP address")
    try:
        if ":" in text:
            return ipaddress.IPv6Address(int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big"))
        return ipaddress.IPv4Address(int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
    except (OSError, ValueError):
        pass
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise StateError(f"{where()}: {text!r} is not an IP address") from None


def decode_state(data: bytes) -> PersistedState:
    """Parse the file's bytes; raises ``StateError`` (only) on anything malformed."""
    if not isinstance(data, (bytes, bytearray)):
        raise StateError("state must be bytes")
    try:
        doc = json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except StateError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StateError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise StateError("the top level is not an object")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StateError(f"version: {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise StateVersionError(f"version {version} was written by a newer lbd (this one reads up to {FORMAT_VERSION})")
    unknown = set(doc) - {"version", "drained", "allocations", "extra"}
    if unknown:
        raise StateError(f"unknown keys: {', '.join(sorted(map(str, unknown)))}")
    drained = doc.get("drained", False)
    if not isinstance(drained, bool):
        raise StateError("drained: not a boolean")
    extra = doc.get("extra", {})
    if not isinstance(extra, dict):
        raise StateError("extra: not an object")
    raw = doc.get("allocations", {})
    if not isinstance(raw, dict):
        raise StateError("allocations: not an object")
    allocations: dict[str, Allocation] = {}
    for name, entry in raw.items():
        # Messages are formatted only on error (per entry, formatting cost as much as parsing).
        if not name:
            raise StateError(f"allocations[{name!r}]: empty service name")
        if not isinstance(entry, dict) or not _ENTRY_KEYS.issuperset(entry):
            raise StateError(f"allocations[{name!r}]: not an object with pool and addresses")
        pool = entry.get("pool")
        if not isinstance(pool, str):
            raise StateError(f"allocations[{name!r}].pool: not a string")
        addresses = entry.get("addresses")
        if not isinstance(addresses, list) or not addresses:
            raise StateError(f"allocations[{name!r}].addresses: not a non-empty list")
        parsed = tuple(_address(a, lambda i=i: f"allocations[{name!r}].addresses[{i}]")  # type: ignore[misc]
                       for i, a in enumerate(addresses))
        if len(parsed) > 1 and len(set(parsed)) != len(parsed):
            raise StateError(f"allocations[{name!r}].addresses: duplicate address")
        allocations[name] = Allocation(service=name, pool=pool, addresses=parsed)
    return PersistedState(allocations=allocations, drained=drained, extra=extra, version=version)


def _check_json(value: object, where: str, depth: int = 0) -> None:
    if depth > 64:
        raise StateError(f"{where}: nested too deeply")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StateError(f"{where}: {value} is not representable in JSON")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise StateError(f"{where}: key {key!r} is not a string")
            _check_json(item, f"{where}.{key}", depth + 1)
        return
    raise StateError(f"{where}: {type(value).__name__} is not a JSON value")


def encode_state(state: PersistedState) -> bytes:
    """Serialise (always at ``FORMAT_VERSION``); ``StateError`` if ``extra`` is not JSON."""
    _check_json(state.extra, "extra")
    # The text ``json.dumps(doc, indent=1, sort_keys=True)`` gives (tests/unit/test_state_encode.py
    # holds them equal), written per allocation: json's indenting encoder is pure Python and the
    # document a dict per allocation, a second and ~50 MB at 100,000 allocations (issue 9).
    dumps = json.dumps
    entries = []
    for name in sorted(state.allocations):
        alloc = state.allocations[name]
        if alloc.addresses:
            addresses = "[\n    " + ",\n    ".join(dumps(str(a)) for a in alloc.addresses) + "\n   ]"
        else:
            addresses = "[]"
        entries.append(f'  {dumps(name)}: {{\n   "addresses": {addresses},\n   "pool": {dumps(alloc.pool)}\n  }}')
    allocations = "{\n" + ",\n".join(entries) + "\n }" if entries else "{}"
    extra = dumps(state.extra, indent=1, sort_keys=True, allow_nan=False).replace("\n", "\n ")
    text = (f'{{\n "allocations": {allocations},\n "drained": {dumps(bool(state.drained))},\n'
            f' "extra": {extra},\n "version": {dumps(FORMAT_VERSION)}\n}}\n')
    return text.encode("utf-8")


_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii  # json.dumps(str), without its overhead


def _fragment(name: str, alloc: Allocation) -> str:
    """One allocation as ``encode_state`` lays it out inside ``"allocations"`` (indent 2)."""
    # By hand: json.dumps with indent runs the pure-Python encoder (2.3 s for 100,000 of these).
    # An address's text needs no escaping; names and pools go through the C encoder.
    addresses = ('[\n    "' + '",\n    "'.join(map(str, alloc.addresses)) + '"\n   ]') if alloc.addresses else "[]"
    return f'  {_quote(name)}: {{\n   "addresses": {addresses},\n   "pool": {_quote(alloc.pool)}\n  }}'



class StateEncoder:
    """``encode_state``, byte for byte, in work proportional to what changed since its last call.

    One change with 100,000 allocations present re-encoded the whole table in pure Python
    (``json.dumps`` with ``indent`` has no C path; ``str`` of every address): a third of the
    daemon's CPU under churn (issue 9). This keeps each allocation's text, encodes only the
    allocations that are not the very objects of the last call (``changed_keys``: C-speed
    scans), and joins the texts in name order at C speed. The file format, and the atomic
    write around it (``StateStore.save``), are unchanged; a property test compares it with
    ``encode_state``. Not thread-safe: one writer uses it at a time (``StateWriter``).
    """

    chunk = 1024  # names per chunk of joined text: a change re-joins one chunk, not the table

    def __init__(self) -> None:
        self._allocations: Mapping[str, Allocation] = {}
        self._texts: dict[str, str] = {}
        # The names in sorted order (as json.dumps(sort_keys=True) orders them), in chunks; each
        # chunk's joined text is kept until a name in it changes.
        self._chunks: list[list[str]] = []
        self._firsts: list[str] = []  # each chunk's first name
        self._joined: list[bytes | None] = []

    def encode(self, state: PersistedState) -> bytes:
        _check_json(state.extra, "extra")

        allocations = state.allocations  # kept, not copied: a PersistedState is a snapshot (persist copies)
        changed = changed_keys(self._allocations, allocations)
        texts = self._texts
        if len(changed) > 64:  # many (the first write): texts by name, then one C-speed sort
            for name in changed:
                alloc = allocations.get(name)
                if alloc is None:
                    texts.pop(name, None)
                else:
                    texts[name] = _fragment(name, alloc)
            names = sorted(allocations)
            self._chunks = [names[i:i + self.chunk] for i in range(0, len(names), self.chunk)]
            self._firsts = [c[0] for c in self._chunks]
            self._joined = [None] * len(self._chunks)
            changed = set()
        for name in changed:
            alloc = allocations.get(name)
            if alloc is None:
                if texts.pop(name, None) is not None:
                    self._remove(name)
            else:
                if name not in texts:
                    self._insert(name)
                else:
                    self._joined[self._locate(name)] = None
                texts[name] = _fragment(name, alloc)
        self._allocations = allocations
        rest = json.dumps({"drained": bool(state.drained), "extra": state.extra, "version": FORMAT_VERSION},
                          indent=1, sort_keys=True, allow_nan=False)
        if not self._chunks:
            return ('{\n "allocations": {},\n' + rest[2:] + "\n").encode("utf-8")
        parts = [b'{\n "allocations": {\n']
        for i, joined in enumerate(self._joined):
            if joined is None:  # the texts are ASCII (json's ensure_ascii, addresses)
                joined = self._joined[i] = ",\n".join(map(texts.__getitem__, self._chunks[i])).encode("ascii")
            if i:
                parts.append(b",\n")
            parts.append(joined)
        parts.append(("\n },\n" + rest[2:] + "\n").encode("utf-8"))
        return b"".join(parts)  # one copy of the table

    def _locate(self, name: str) -> int:
        return max(bisect.bisect_right(self._firsts, name) - 1, 0)

    def _insert(self, name: str) -> None:
        if not self._chunks:
            self._chunks, self._firsts, self._joined = [[name]], [name], [None]
            return
        i = self._locate(name)
        chunk = self._chunks[i]
        bisect.insort(chunk, name)
        self._firsts[i] = chunk[0]
        self._joined[i] = None
        if len(chunk) > 2 * self.chunk:  # split: chunks stay small
            half = len(chunk) // 2
            self._chunks[i:i + 1] = [chunk[:half], chunk[half:]]
            self._firsts[i:i + 1] = [chunk[0], chunk[half]]
            self._joined[i:i + 1] = [None, None]

    def _remove(self, name: str) -> None:
        i = self._locate(name)
        chunk = self._chunks[i]
        del chunk[bisect.bisect_left(chunk, name)]
        if chunk:
            self._firsts[i] = chunk[0]
            self._joined[i] = None
        else:
            del self._chunks[i], self._firsts[i], self._joined[i]


# ---------------------------------------------------------------------------
# Store (I/O)
# ---------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_FILE
        self._encoder = StateEncoder()  # one change re-encodes one allocation (issue 9)

    def load(self) -> PersistedState:
        """The saved state; empty if there is none or it was corrupt (moved aside)."""
        self._remove_temp_files()
        try:
            # Not open(): a FIFO (or a symlink to one) in its place would block start-up forever.
            # The daemon only ever puts a regular file here (rename), so a symlink is refused too.
            data, _ = read_regular_file(self.path, _MAX_BYTES, follow_symlinks=False)
        except FileNotFoundError:
            return PersistedState()
        except NotRegularFileError as exc:
            return self._set_aside(str(exc.strerror))
        except OSError as exc:
            return self._set_aside(f"unreadable: {exc}")
        if len(data) > _MAX_BYTES:
            return self._set_aside(f"larger than {_MAX_BYTES} bytes")
        try:
            state = decode_state(data)
        except StateVersionError as exc:
            log.error("state_from_newer_version", path=str(self.path), error=str(exc))
            raise
        except StateError as exc:
            return self._set_aside(str(exc))
        log.info("state_loaded", path=str(self.path), allocations=len(state.allocations), drained=state.drained)
        return state

    def save(self, state: PersistedState) -> None:
        """Write ``state`` atomically; raises ``OSError`` or ``StateError`` and leaves the old file."""
        self.save_file(STATE_FILE, self._encoder.encode(state))

    def load_file(self, name: str, limit: int = _MAX_BYTES) -> bytes | None:
        """Another file of the state directory (written by ``save_file``); None when there is none.
        Raises ``OSError`` (``NotRegularFileError`` for anything but a regular file) or ``StateError``
        when it is larger than ``limit``."""
        try:
            data, _ = read_regular_file(self.state_dir / name, limit, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if len(data) > limit:
            raise StateError(f"{self.state_dir / name} is larger than {limit} bytes")
        return data

    def save_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``data`` to ``name`` in the state directory atomically (temp file, fsync, rename);
        raises ``OSError`` and leaves the old file."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / f"{_TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)  # the data is on disk before the name points at it
            finally:
                os.close(fd)
            os.replace(tmp, self.state_dir / name)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(self.state_dir)  # make the rename itself durable

    def _remove_temp_files(self) -> None:
        # Leftovers of a crash between write and rename: never read, safe to drop
        # (one daemon per state_dir).
        try:
            names = [n for n in os.listdir(self.state_dir) if n.startswith(_TEMP_PREFIX)]
        except OSError:
            return
        for name in names:
            try:
                os.unlink(self.state_dir / name)
                log.info("state_temp_removed", path=str(self.state_dir / name))
            except OSError:
                pass

    def _set_aside(self, error: str) -> PersistedState:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target = self.path.with_name(f"{STATE_FILE}.corrupt-{stamp}")
        n = 1
        while target.exists() and n < 1000:
            target = self.path.with_name(f"{STATE_FILE}.corrupt-{stamp}.{n}")
            n += 1
        try:
            os.rename(self.path, target)
            _fsync_dir(self.state_dir)
        except OSError as exc:
            log.error("state_corrupt_not_moved", path=str(self.path), error=error, rename_error=str(exc))
            raise StateError(f"{self.path} is corrupt ({error}) and could not be moved aside: {exc}") from None
        log.error(
            "state_corrupt",
            path=str(self.path),
            moved_to=str(target),
            error=error,
            consequence="starting with no allocations; services may get new addresses",
        )
        return PersistedState()


class StateWriter:
    """Writes the state file off the event loop, only when told it changed, coalesced.

    At 100,000 allocations encoding and writing the file takes seconds of CPU (issue 9):
    on the event loop that stalled gossip acks, BFD and SIGTERM. :meth:`submit` only keeps
    the latest snapshot; one task writes it in a worker thread, at most every
    ``min_interval`` seconds (the first one at once), so a burst of changes is one write.
    :meth:`flush` writes what is pending now and waits for it (a drain, the final write at
    stop). A failed write is logged (``persist_failed``) and retried with the next one.
    """

    def __init__(self, store: StateStore, min_interval: float = WRITE_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.min_interval = min_interval
        self._clock = clock
        self._pending: PersistedState | None = None  # the latest snapshot not yet written
        self._task: asyncio.Task[None] | None = None
        self._last_write = -math.inf
        self._hurry = False  # flush(): skip the coalescing wait
        self.writes = 0  # files written (for tests and figures)
        self.last_error: str | None = None

    @property
    def dirty(self) -> bool:
        """A snapshot is waiting to be written, or being written, or the last write failed."""
        return (self._pending is not None or (self._task is not None and not self._task.done())
                or self.last_error is not None)

    def submit(self, state: PersistedState) -> None:
        """Write ``state`` soon (replacing any snapshot still waiting). Call it on the event
        loop; without a running loop (tools, tests) it is written now, in this thread."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._save(state)
            return
        self._pending = state
        if self._task is not None and not self._task.done():
            return  # the running writer picks the latest snapshot up
        self._task = loop.create_task(self._run(), name="lbd-state-writer")

    async def flush(self) -> None:
        """Write what is pending now, without the coalescing wait, and wait until it is on disk."""
        if self._pending is not None and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lbd-state-writer")
        if self._task is None:
            return
        self._hurry = True
        try:
            # Shielded: a cancelled caller must not cut a write short (the worker thread
            # would finish anyway; the task then still records what it wrote).
            await asyncio.shield(self._task)
        finally:
            self._hurry = False

    async def _run(self) -> None:
        while self._pending is not None:
            wait = self._last_write + self.min_interval - self._clock()
            while wait > 0 and not self._hurry:
                await asyncio.sleep(min(wait, 0.05))  # re-checks _hurry: a flush stops the wait
                wait = self._last_write + self.min_interval - self._clock()
            state, self._pending = self._pending, None
            self._last_write = self._clock()
            await asyncio.to_thread(self._save, state)

    def _save(self, state: PersistedState) -> None:
        try:
            self.store.save(state)
        except (OSError, StateError) as exc:
            self.last_error = str(exc)
            log.error("persist_failed", error=str(exc), path=str(self.store.path))
            return
        self.writes += 1
        self.last_error = None
