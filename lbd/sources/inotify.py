"""Minimal inotify(7) through ctypes: no extra dependency.

``parse_events`` is the pure decoder of the kernel's ``struct inotify_event``
records (``int wd; uint32_t mask, cookie, len; char name[len]``, the name
NUL-padded); ``Inotify`` is the thin fd wrapper the directory source puts on
the asyncio loop with ``add_reader``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("=iIII")


class InotifyDecodeError(ValueError):
    """A buffer that is not a sequence of whole inotify_event records."""


@dataclass(frozen=True)
class InotifyEvent:
    wd: int
    mask: int
    cookie: int
    name: str


def parse_events(buf: bytes) -> list[InotifyEvent]:
    """Decode every record in ``buf`` (one read(2) returns whole records only)."""
    events = []
    offset = 0
    while offset < len(buf):
        if len(buf) - offset < _HEADER.size:
            raise InotifyDecodeError(f"truncated header at offset {offset}")
        wd, mask, cookie, length = _HEADER.unpack_from(buf, offset)
        offset += _HEADER.size
        if length > len(buf) - offset:
            raise InotifyDecodeError(f"name length {length} overruns the buffer at offset {offset}")
        raw = buf[offset:offset + length].split(b"\0", 1)[0]
        offset += length
        # File names are bytes; surrogateescape keeps odd ones round-trippable.
        events.append(InotifyEvent(wd, mask, cookie, raw.decode("utf-8", "surrogateescape")))
    return events


class Inotify:
    """One non-blocking inotify instance."""

    def __init__(self) -> None:
        libc_name = ctypes.util.find_library("c") or "libc.so.6"
        self._libc = ctypes.CDLL(libc_name, use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd

    def add_watch(self, path: str, mask: int) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        return int(wd)

    def read(self) -> list[InotifyEvent]:
        """Every queued event; [] when none (the fd is non-blocking)."""
        out: list[InotifyEvent] = []
        for _ in range(64):  # bounded: the caller is woken again if more arrive
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not buf:
                break
            out.extend(parse_events(buf))
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
