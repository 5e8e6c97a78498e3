"""FIFOs, devices, directories and symlinks where lbd expects a file: refused precisely, never a hang.

Every test here runs under a hard timeout: before the fix, opening the FIFO
blocked forever (the drop-in reader and the state loader used plain ``open``).
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from pathlib import Path

import pytest

from lbd.safefile import NotRegularFileError, describe_mode, read_regular_file
from lbd.state import PersistedState, StateStore
from test_source_directory import API, WEB, Harness, atomic_write

pytestmark = pytest.mark.timeout(20)

WEIRD = ["fifo", "symlink-to-fifo", "dev-zero", "symlink-to-dev-zero", "directory", "symlink-to-directory"]


def make_weird(kind: str, path: Path, scratch: Path) -> None:
    """Put ``kind`` at ``path``; targets of symlinks go in ``scratch``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-to-fifo":
        os.mkfifo(scratch / "the.fifo")
        os.symlink(scratch / "the.fifo", path)
    elif kind == "dev-zero":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5)) if os.geteuid() == 0 else os.symlink("/dev/zero", path)
    elif kind == "symlink-to-dev-zero":
        os.symlink("/dev/zero", path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink-to-directory":
        (scratch / "a-dir").mkdir()
        os.symlink(scratch / "a-dir", path)
    else:  # pragma: no cover - a typo in the list above
        raise AssertionError(kind)


EXPECTED = {
    "fifo": "a FIFO (named pipe)",
    "symlink-to-fifo": "a FIFO (named pipe)",
    "dev-zero": "a character device",
    "symlink-to-dev-zero": "a character device",
    "directory": "a directory",
    "symlink-to-directory": "a directory",
}


@pytest.mark.parametrize("kind", WEIRD)
def test_read_regular_file_refuses_without_blocking(tmp_path: Path, kind: str) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    target = tmp_path / "x.toml"
    make_weird(kind, target, scratch)
    with pytest.raises(NotRegularFileError, match=re.escape(f"not a regular file: it is {EXPECTED[kind]}")):
        read_regular_file(target, 1024)


def test_read_regular_file_symlink_policy(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"hello")
    os.symlink(tmp_path / "real", tmp_path / "link")
    data, st = read_regular_file(tmp_path / "link", 1024)
    assert data == b"hello" and stat.S_ISREG(st.st_mode)
    with pytest.raises(NotRegularFileError, match="symbolic link"):
        read_regular_file(tmp_path / "link", 1024, follow_symlinks=False)
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing", 1024)


def test_read_regular_file_limit(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    assert len(read_regular_file(tmp_path / "f", 10)[0]) == 11  # limit + 1: "over the limit" is visible
    assert len(read_regular_file(tmp_path / "f", 100)[0]) == 100


def test_fifo_swapped_in_after_the_stat_is_caught_by_fstat(tmp_path: Path, monkeypatch) -> None:
    # The race the O_NONBLOCK open and the fstat are for: a regular file at stat time, a FIFO at open time.
    target = tmp_path / "x.toml"
    target.write_text("ok")
    real_stat = os.stat
    swapped = []

    def stat_then_swap(path, *args, **kwargs):
        result = real_stat(path, *args, **kwargs)
        if Path(path) == target and not swapped:
            swapped.append(True)
            target.unlink()
            os.mkfifo(target)
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    with pytest.raises(NotRegularFileError, match="FIFO"):
        read_regular_file(target, 1024)


def test_describe_mode() -> None:
    assert describe_mode(stat.S_IFSOCK | 0o600) == "a socket"
    assert describe_mode(stat.S_IFLNK | 0o777) == "a symbolic link"
    assert describe_mode(stat.S_IFBLK | 0o600) == "a block device"


# -- the state file at start-up ------------------------------------------------


@pytest.mark.parametrize("kind", WEIRD + ["symlink-to-file"])
def test_state_file_that_is_not_a_regular_file_is_moved_aside_without_blocking(tmp_path: Path, kind: str) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    path = state_dir / "allocations.json"
    if kind == "symlink-to-file":
        (scratch / "real.json").write_text('{"version": 1, "allocations": {}}')
        os.symlink(scratch / "real.json", path)
        reason = "a symbolic link"
    else:
        make_weird(kind, path, scratch)
        reason = "a symbolic link" if kind.startswith("symlink") else EXPECTED[kind]
    store = StateStore(state_dir)
    assert store.load() == PersistedState()
    aside = [n for n in os.listdir(state_dir) if n.startswith("allocations.json.corrupt-")]
    assert len(aside) == 1 and not path.exists() and not path.is_symlink()
    if kind.startswith("symlink"):
        assert os.path.islink(state_dir / aside[0])  # the link itself, its target untouched
    # The name is free again: saving works.
    store.save(PersistedState(drained=True))
    assert store.load().drained is True
    assert reason  # the reason is logged (state_corrupt, error=...)


# -- the directory source ------------------------------------------------------


@pytest.mark.parametrize("kind", WEIRD)
async def test_dropin_that_is_not_a_regular_file_is_an_error_not_a_hang(tmp_path: Path, kind: str) -> None:
    d = tmp_path / "d"
    d.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (d / "a.toml").write_text(WEB)
    make_weird(kind, d / "bad.toml", scratch)  # present at start: the initial scan meets it
    h = Harness(d, rescan_interval=0.2, settle=0.1)
    h.start()
    await h.until(lambda: h.last == ["web"] and h.error is not None, timeout=5)
    assert f"{d / 'bad.toml'}: not a regular file: it is {EXPECTED[kind]}" in h.error
    # The loop is alive: another drop-in is still picked up.
    atomic_write(d / "b.toml", API)
    await h.until(lambda: h.last == ["api", "web"], timeout=3)
    await h.stop()


async def test_symlink_to_fifo_created_while_running_does_not_block_the_loop(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    os.mkfifo(tmp_path / "pipe")
    (d / "a.toml").write_text(WEB)
    h = Harness(d, rescan_interval=60)  # only inotify: IN_CREATE of a symlink reads it at once
    h.start()
    await h.until(lambda: h.last == ["web"])
    os.symlink(tmp_path / "pipe", d / "evil.toml")
    ticks = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    while loop.time() < deadline:  # a blocked loop would never come back here
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks > 20
    await h.until(lambda: h.error is not None and "FIFO" in h.error, timeout=3)
    assert h.last == ["web"]
    await h.stop()


async def test_regular_dropin_replaced_by_a_fifo_keeps_its_last_good_services(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.toml").write_text(WEB)
    (d / "b.toml").write_text(API)
    h = Harness(d, rescan_interval=0.2, settle=0.1)
    h.start()
    await h.until(lambda: h.last == ["api", "web"])
    os.mkfifo(tmp_path / "pipe")
    os.replace(tmp_path / "pipe", d / "a.toml")  # IN_MOVED_TO of a FIFO
    await h.until(lambda: h.error is not None and "FIFO" in h.error, timeout=3)
    await asyncio.sleep(0.5)  # a few rescans: they must agree with inotify and keep "web"
    assert h.last == ["api", "web"]
    await h.stop()


# -- the main config (read again at every reload, on the event loop) ------------


@pytest.mark.parametrize("kind", WEIRD)
def test_config_that_is_not_a_regular_file_is_a_config_error(tmp_path: Path, kind: str) -> None:
    from lbd.config import ConfigError, load_config

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    make_weird(kind, tmp_path / "lbd.toml", scratch)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "lbd.toml")
    assert info.value.errors == [f"{tmp_path / 'lbd.toml'}: cannot read: not a regular file: it is {EXPECTED[kind]}"]


def test_oversized_config_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    import lbd.config.load as config

    from lbd.config import ConfigError, load_config

    monkeypatch.setattr(config, "MAX_CONFIG_BYTES", 1024 * 1024)
    (tmp_path / "lbd.toml").write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config(tmp_path / "lbd.toml")
