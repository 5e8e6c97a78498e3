"""Drop-ins from a directory others can write may not run commands as root (exec health checks)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lbd.config.schema import SourceConfig
from lbd.sources.directory import DirectorySource, ownership_problem
from test_source_directory import API, Harness, atomic_write

EXEC = '[[service]]\nname = "db"\npool = "p"\n[service.health_check]\ntype = "exec"\ncommand = ["/bin/true"]\n'
TCP = '[[service]]\nname = "web"\npool = "p"\n[service.health_check]\ntype = "tcp"\nport = 80\n'


def fake_stat(uid: int, mode: int) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 1, 1, 1, uid, 0, 0, 0, 0, 0))


def test_ownership_problem():
    assert ownership_problem("/d", fake_stat(0, 0o755), euid=0) is None
    assert ownership_problem("/d", fake_stat(0, 0o1755), euid=0) is None
    assert ownership_problem("/d", fake_stat(1000, 0o755), euid=1000) is None  # lbd's own user
    assert ownership_problem("/d", fake_stat(1000, 0o755), euid=0) == "/d is owned by uid 1000, not root"
    assert ownership_problem("/d", fake_stat(0, 0o775), euid=0) == \
        "/d is writable by group or others (mode 0775)"
    assert ownership_problem("/d", fake_stat(0, 0o1777), euid=0) == \
        "/d is writable by group or others (mode 1777)"


def test_allow_exec_is_a_boolean_option():
    assert DirectorySource.validate({"path": "/x", "allow_exec": True}) == []
    assert DirectorySource.validate({"path": "/x", "allow_exec": "yes"}) == \
        ["allow_exec: expected a boolean, got a string (\"yes\"); write true without quotes"]


def _dropins(tmp_path: Path, mode: int) -> Path:
    d = tmp_path / "services.d"
    d.mkdir()
    os.chmod(d, mode)
    return d


async def test_exec_check_from_a_group_or_world_writable_directory_is_refused(tmp_path: Path):
    d = _dropins(tmp_path, 0o777)
    (d / "db.toml").write_text(EXEC)
    (d / "web.toml").write_text(TCP + API)  # no exec: accepted from the same directory
    h = Harness(d, rescan_interval=60)
    h.start()
    await h.until(lambda: h.last == ["api", "web"] and h.error is not None)
    assert (f'{d / "db.toml"}: service "db": health_check.type: "exec" refused: {d} is writable by group '
            f'or others (mode 0777)') in h.error
    assert 'allow_exec = true on [[source]] "drop"' in h.error
    # Made safe by the operator, and the file saved again: accepted.
    os.chmod(d, 0o755)
    atomic_write(d / "db.toml", EXEC)
    await h.until(lambda: h.last == ["api", "db", "web"] and h.error is None, timeout=3)
    # Unsafe again: a changed file is refused and its last good version stays in effect.
    os.chmod(d, 0o775)
    atomic_write(d / "db.toml", EXEC.replace("/bin/true", "/bin/false"))
    await h.until(lambda: h.error is not None and "mode 0775" in h.error, timeout=3)
    assert h.spec("db").health_check.command == ("/bin/true",)
    await h.stop()


async def test_exec_check_from_a_directory_owned_by_another_user_is_refused(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("chown needs root")  # a failure under LBD_REQUIRE_ALL=1
    d = _dropins(tmp_path, 0o755)
    (d / "db.toml").write_text(EXEC)
    os.chown(d, 65534, 65534)
    h = Harness(d, rescan_interval=60)
    h.start()
    await h.until(lambda: h.snapshots == [[]] and h.error is not None)
    assert f"{d} is owned by uid 65534, not root" in h.error
    await h.stop()


async def test_exec_check_in_a_writable_file_or_a_symlink_into_an_unsafe_place_is_refused(tmp_path: Path):
    d = _dropins(tmp_path, 0o755)
    (d / "db.toml").write_text(EXEC)
    os.chmod(d / "db.toml", 0o666)
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    os.chmod(unsafe, 0o777)
    (unsafe / "real.toml").write_text(EXEC.replace('"db"', '"db2"'))
    os.chmod(unsafe / "real.toml", 0o644)
    os.symlink(unsafe / "real.toml", d / "db2.toml")
    h = Harness(d, rescan_interval=60)
    h.start()
    await h.until(lambda: h.snapshots == [[]] and h.error is not None)
    assert f"{d / 'db.toml'} is writable by group or others (mode 0666)" in h.error
    assert f"{unsafe} is writable by group or others (mode 0777)" in h.error
    await h.stop()


async def test_allow_exec_accepts_exec_checks_from_any_directory(tmp_path: Path):
    d = _dropins(tmp_path, 0o777)
    (d / "db.toml").write_text(EXEC)
    h = Harness(d, rescan_interval=60, allow_exec=True)
    h.start()
    await h.until(lambda: h.last == ["db"])
    assert h.error is None
    await h.stop()


def test_harness_config_carries_allow_exec(tmp_path: Path):
    # Guard for the tests above: the option reaches the source.
    src = Harness(tmp_path, allow_exec=True).source
    assert src.allow_exec is True and isinstance(src.config, SourceConfig)
