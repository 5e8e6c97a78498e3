"""Reading a file that someone else may have replaced with a FIFO, a device or a directory.

``open(path)`` on a FIFO blocks until a writer appears, which on the event
loop's thread stops the whole daemon (no ``lbd-ctl``, gossip, BGP or ARP); a
device may have side effects when opened (``/dev/watchdog``) or never end
(``/dev/zero``). So a file lbd reads from a directory others can write to is:

1. ``stat``-ed first (no open) and refused unless it is a regular file;
2. opened with ``O_NONBLOCK`` (a FIFO swapped in after the ``stat`` cannot
   block the open) and, where a symlink has no business, ``O_NOFOLLOW``;
3. ``fstat``-ed after the open and refused unless it is still a regular file,
   the same one that was checked;
4. read up to a size limit.

Every refusal is a ``NotRegularFileError`` (an ``OSError``, so callers that
already handle unreadable files handle it too) whose message says what the
path is instead.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["NotRegularFileError", "describe_mode", "read_regular_file"]


class NotRegularFileError(OSError):
    """The path is not a regular file (a FIFO, device, directory, socket or refused symlink)."""


def describe_mode(mode: int) -> str:
    """What a file is, in words, from its ``st_mode``."""
    kinds = (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISREG, "a regular file"),
    )
    for test, name in kinds:
        if test(mode):
            return name
    return f"a special file (mode {stat.S_IFMT(mode):#o})"


def read_regular_file(path: str | os.PathLike[str], limit: int, *,
                      follow_symlinks: bool = True) -> tuple[bytes, os.stat_result]:
    """Up to ``limit + 1`` bytes of ``path`` and its ``fstat``; never blocks, never opens a non-file.

    Raises ``NotRegularFileError`` when ``path`` is (or, with ``follow_symlinks``,
    points at) anything but a regular file, ``FileNotFoundError`` when it is
    missing, and ``OSError`` for other failures. Reading ``limit + 1`` bytes
    lets the caller tell "exactly at the limit" from "over it".
    """
    p = Path(path)
    before = os.stat(p, follow_symlinks=follow_symlinks)
    if not stat.S_ISREG(before.st_mode):
        raise NotRegularFileError(errno.EINVAL, f"not a regular file: it is {describe_mode(before.st_mode)}",
                                  str(p))
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise NotRegularFileError(errno.ELOOP, "not a regular file: it is a symbolic link (refused)",
                                      str(p)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(errno.EINVAL, f"not a regular file: it is {describe_mode(st.st_mode)}",
                                      str(p))
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise NotRegularFileError(errno.EAGAIN, "replaced while being opened; try again", str(p))
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)
