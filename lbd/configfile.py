"""Reading the config file as the daemon and its control socket do: never blocking on a FIFO or
device, never reading what the requesting user may not, bounded in size, with a precise error."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lbd.config import ConfigError

MAX_CONFIG_BYTES = 64 << 20


def may_read(st: os.stat_result, uid: int | None, gid: int | None) -> bool:
    """Whether ``uid``/``gid`` (None: unknown) may read a file with ``st``, by its mode bits."""
    if uid == 0:
        return True
    if uid is not None and st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if gid is not None and st.st_gid == gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def read_config_text(path: Path, uid: int | None = 0, gid: int | None = 0) -> str:
    """A config file's text, read without blocking on a FIFO or device; ConfigError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError([f"{path}: not a regular file"])
        if not may_read(st, uid, gid):
            raise ConfigError([f"{path}: cannot read: the requesting user may not read it"])
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB"])
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{path}: line {line}: the file is not valid UTF-8"]) from None
