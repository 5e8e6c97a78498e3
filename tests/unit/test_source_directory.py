"""The directory source against real files in a temporary folder (inotify + rescan)."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from lbd.config.schema import SourceConfig
from lbd.sources.base import SourceContext
from lbd.sources.directory import DirectorySource, is_candidate
from lbd.sources.inotify import InotifyDecodeError, parse_events

WEB = '[[service]]\nname = "web"\npool = "p"\nports = ["tcp/80"]\n'
API = '[[service]]\nname = "api"\naddresses = ["10.77.1.5"]\n'


class Harness:
    def __init__(self, path: Path, **opts) -> None:
        self.snapshots: list[list[str]] = []
        self.error: str | None = None
        ctx = SourceContext(node_name="n1", set_error=self._set_error)
        cfg = SourceConfig("directory", "drop", {"path": str(path), **opts})
        assert DirectorySource.validate(cfg.options) == []
        self.source = DirectorySource(cfg, ctx)
        self.task: asyncio.Task | None = None

    def _set_error(self, error: str | None) -> None:
        self.error = error

    def start(self) -> None:
        self.task = asyncio.create_task(self.source.run(lambda snap: self.snapshots.append(sorted(s.name for s in snap))))

    def spec(self, name: str):
        return {s.name: s for s in self.source._published or []}.get(name)

    @property
    def last(self) -> list[str] | None:
        return self.snapshots[-1] if self.snapshots else None

    async def until(self, pred, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not pred():
            assert self.task is not None
            if self.task.done():
                self.task.result()
            if loop.time() > deadline:
                raise AssertionError(f"not met; snapshots={self.snapshots} error={self.error}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def atomic_write(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_initial_load_add_change_delete(tmp_path: Path):
    (tmp_path / "a.toml").write_text(WEB)
    (tmp_path / "notes.txt").write_text("ignored")
    h = Harness(tmp_path, rescan_interval=60)
    h.start()
    await h.until(lambda: h.last == ["web"])
    assert h.error is None
    atomic_write(tmp_path / "b.toml", API)  # atomic-rename save: IN_MOVED_TO
    await h.until(lambda: h.last == ["api", "web"], timeout=1.5)
    (tmp_path / "a.toml").write_text(WEB.replace('"p"', '"q"'))  # in-place save: IN_CLOSE_WRITE
    await h.until(lambda: h.spec("web") is not None and h.spec("web").pool == "q", timeout=1.5)
    (tmp_path / "b.toml").unlink()
    await h.until(lambda: h.last == ["web"], timeout=1.5)
    await h.stop()


async def test_symlinked_dropin(tmp_path: Path):
    d = tmp_path / "d"
    d.mkdir()
    (tmp_path / "real.toml").write_text(WEB)
    h = Harness(d, rescan_interval=60)
    h.start()
    await h.until(lambda: h.snapshots == [[]])
    os.symlink(tmp_path / "real.toml", d / "web.toml")
    await h.until(lambda: h.last == ["web"], timeout=1.5)
    await h.stop()


async def test_partial_write_is_never_a_deletion(tmp_path: Path):
    target = tmp_path / "svc.toml"
    target.write_text(WEB + API)
    h = Harness(tmp_path, rescan_interval=0.2, settle=1.0)
    h.start()
    await h.until(lambda: h.last == ["api", "web"])
    count = len(h.snapshots)
    # A cp in progress: truncate and write half of the content, keep the file open.
    fh = open(target, "w")
    fh.write(WEB)  # a valid but truncated document: must not drop "api"
    fh.flush()
    await asyncio.sleep(0.8)  # several rescans pass while the writer is still busy
    assert len(h.snapshots) == count and h.last == ["api", "web"]
    fh.write(API)
    fh.close()  # IN_CLOSE_WRITE: now it is read
    await asyncio.sleep(0.5)
    assert h.last == ["api", "web"] and h.error is None
    await h.stop()


async def test_new_file_half_written_is_not_read_by_rescan(tmp_path: Path):
    h = Harness(tmp_path, rescan_interval=0.3, settle=0.2)
    h.start()
    await h.until(lambda: h.snapshots == [[]])
    fh = open(tmp_path / "new.toml", "w")  # a slow cp: pauses longer than settle
    for part in (WEB, "\n", API):
        fh.write(part)
        fh.flush()
        await asyncio.sleep(0.25)
        assert h.snapshots == [[]], "a file still being written was read"
    fh.close()  # IN_CLOSE_WRITE: complete now
    await h.until(lambda: h.last == ["api", "web"], timeout=1.5)
    await h.stop()


async def test_editor_rename_dance_and_temp_files(tmp_path: Path):
    target = tmp_path / "svc.toml"
    target.write_text(WEB)
    h = Harness(tmp_path, rescan_interval=60)
    h.start()
    await h.until(lambda: h.last == ["web"])
    count = len(h.snapshots)
    # vim (backupcopy=no): rename to a backup, write the new file, delete the backup.
    os.rename(target, tmp_path / "svc.toml~")
    (tmp_path / ".svc.toml.swp").write_text("garbage [[[")
    target.write_text(WEB + API)
    (tmp_path / "svc.toml~").unlink()
    await h.until(lambda: h.last == ["api", "web"], timeout=1.5)
    assert all("web" in snap for snap in h.snapshots[count:]), "web was never withdrawn"
    assert h.error is None
    await h.stop()


async def test_invalid_file_keeps_last_good_and_reports(tmp_path: Path):
    (tmp_path / "a.toml").write_text(WEB)
    (tmp_path / "b.toml").write_text(API)
    h = Harness(tmp_path, rescan_interval=60)
    h.start()
    await h.until(lambda: h.last == ["api", "web"])
    atomic_write(tmp_path / "a.toml", '[[service]]\nname = "web"\nports = ["tcp/99999"]\n')
    await h.until(lambda: h.error is not None, timeout=1.5)
    assert f"{tmp_path / 'a.toml'}" in h.error and "ports[0]" in h.error
    assert h.last == ["api", "web"]
    atomic_write(tmp_path / "a.toml", "this is [not toml")
    await h.until(lambda: h.error is not None and "line 1" in h.error, timeout=1.5)
    assert h.last == ["api", "web"]
    # Fixing the file clears the error and applies the new content.
    atomic_write(tmp_path / "a.toml", WEB.replace("web", "web2"))
    await h.until(lambda: h.last == ["api", "web2"] and h.error is None, timeout=1.5)
    await h.stop()


async def test_duplicate_names_error_for_later_file(tmp_path: Path):
    (tmp_path / "a.toml").write_text(WEB)
    (tmp_path / "b.toml").write_text(WEB.replace('"p"', '"other"') + API)
    h = Harness(tmp_path, rescan_interval=60)
    h.start()
    await h.until(lambda: h.last == ["api", "web"])
    assert h.spec("web").pool == "p", "the earlier file wins"
    assert h.error is not None and "b.toml" in h.error and 'service "web"' in h.error
    await h.stop()


async def test_rescan_safety_net_and_missing_directory(tmp_path: Path):
    missing = tmp_path / "later"
    h = Harness(missing, rescan_interval=0.2, settle=0.2)
    h.start()
    await h.until(lambda: h.error is not None and "cannot" in h.error)
    missing.mkdir()
    (missing / "a.toml").write_text(WEB)
    await h.until(lambda: h.last == ["web"], timeout=3)
    # Blind the watcher: changes are still seen by the periodic rescan.
    h.source._pending.clear()
    h.source._on_readable = lambda: None  # type: ignore[method-assign]
    asyncio.get_running_loop().remove_reader(h.source._inotify.fd)
    (missing / "b.toml").write_text(API)
    await h.until(lambda: h.last == ["api", "web"], timeout=3)
    (missing / "b.toml").unlink()
    await h.until(lambda: h.last == ["web"], timeout=3)
    await h.stop()


async def test_directory_removed_withdraws_nothing(tmp_path: Path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "a.toml").write_text(WEB)
    h = Harness(d, rescan_interval=0.2)
    h.start()
    await h.until(lambda: h.last == ["web"])
    os.rename(d, tmp_path / "elsewhere")
    await h.until(lambda: h.error is not None)
    await asyncio.sleep(0.5)
    assert h.last == ["web"]
    await h.stop()


def test_validate_messages():
    assert DirectorySource.validate({}) == ["missing required key 'path'"]
    msgs = DirectorySource.validate({"path": "rel/dir", "rescan_interval": "5s", "pth": 1})
    assert any("did you mean 'path'" in m for m in msgs)
    assert any(m.startswith("path: ") and "absolute" in m for m in msgs)
    assert any(m.startswith("rescan_interval: ") and "write 5" in m for m in msgs)


def test_candidate_names():
    assert is_candidate("web.toml")
    for bad in (".web.toml", ".web.toml.swp", "web.toml~", "#web.toml#", "web.toml.tmp", "4913", ".toml",
                "web.toml.dpkg-new", ".#web.toml"):
        assert not is_candidate(bad), bad


def test_inotify_decode():
    rec = struct.pack("=iIII", 1, 0x8, 0, 16) + b"web.toml".ljust(16, b"\0")
    rec += struct.pack("=iIII", 1, 0x8000, 0, 0)
    evs = parse_events(rec)
    assert [(e.wd, e.mask, e.name) for e in evs] == [(1, 8, "web.toml"), (1, 0x8000, "")]
    with pytest.raises(InotifyDecodeError):
        parse_events(rec[:-3])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_inotify_decode_fuzz(data: bytes):
    try:
        parse_events(data)
    except InotifyDecodeError:
        pass


async def test_a_broken_file_does_not_freeze_the_other_files(tmp_path: Path):
    # Each file is its own unit: a.toml broken keeps a.toml's last good services, and a change
    # to b.toml still goes through (a snapshot frozen on any error would withhold it).
    (tmp_path / "a.toml").write_text(WEB)
    (tmp_path / "b.toml").write_text(API)
    h = Harness(tmp_path, rescan_interval=60)
    h.start()
    await h.until(lambda: h.last == ["api", "web"] and h.error is None)
    atomic_write(tmp_path / "a.toml", "this is [not toml")
    await h.until(lambda: h.error is not None and "a.toml" in h.error, timeout=1.5)
    atomic_write(tmp_path / "b.toml", API.replace("10.77.1.5", "10.77.1.6"))
    await h.until(lambda: h.spec("api") is not None and str(h.spec("api").addresses[0]) == "10.77.1.6", timeout=1.5)
    assert h.spec("web") is not None and h.spec("web").pool == "p", "the broken file's last good version stays"
    atomic_write(tmp_path / "c.toml", WEB.replace('"web"', '"new"'))  # a new file goes through too
    await h.until(lambda: h.last == ["api", "new", "web"], timeout=1.5)
    assert "a.toml" in (h.error or "")
    await h.stop()
