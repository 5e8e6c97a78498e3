"""The directory source publishes deltas (issue 9): after any sequence of drop-ins written,
rewritten, broken and removed, what the manager holds from its deltas equals the complete
snapshot computed from scratch (first file in name order wins a name; the others are errors)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from lbd.config.schema import SourceConfig
from lbd.model import ServiceSpec
from lbd.sources.base import SourceContext
from lbd.sources.directory import DirectorySource
from lbd.sources.manager import SourceManager

FILES = ["a.toml", "b.toml", "c.toml"]
SERVICES = ["web", "api", "db"]


def text(names: list[str], pool: str) -> str:
    return "".join(f'[[service]]\nname = "{n}"\npool = "{pool}"\n' for n in names)


def from_scratch(source: DirectorySource) -> tuple[dict[str, ServiceSpec], list[str]]:
    """The snapshot and errors as the source computed them before deltas: every file in name
    order, the first definition of a name wins, later ones are reported."""
    seen: dict[str, str] = {}
    snapshot: dict[str, ServiceSpec] = {}
    errors: list[str] = [source._dir_error] if source._dir_error else []
    for name in sorted(source.files):
        entry = source.files[name]
        errors.extend(entry.errors)
        for spec in entry.services:
            if spec.name in seen:
                errors.append(f'{source.path / name}: service "{spec.name}": name: already defined in '
                              f"{source.path / seen[spec.name]}")
                continue
            seen[spec.name] = name
            snapshot[spec.name] = spec
    return snapshot, errors


class Recorder:
    """A publish callable that takes deltas, applied to a dict (what the manager does)."""

    def __init__(self) -> None:
        self.state: dict[str, ServiceSpec] = {}
        self.full = 0
        self.deltas: list[int] = []

    def __call__(self, snapshot) -> None:  # type: ignore[no-untyped-def]
        self.full += 1
        self.state = {s.name: s for s in snapshot}

    def changes(self, upserts, removed) -> None:  # type: ignore[no-untyped-def]
        self.deltas.append(len(upserts) + len(removed))
        for spec in upserts:
            self.state[spec.name] = spec
        for name in removed:
            del self.state[name]


STEP = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(FILES), st.lists(st.sampled_from(SERVICES), unique=True, max_size=3),
              st.sampled_from(["p", "q"])),
    st.tuples(st.just("broken"), st.sampled_from(FILES)),
    st.tuples(st.just("remove"), st.sampled_from(FILES)),
)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.lists(STEP, min_size=1, max_size=3), min_size=1, max_size=8))
def test_deltas_equal_the_complete_snapshot_after_every_flush(batches: list[list[tuple]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        errors: list[str | None] = []
        source = DirectorySource(SourceConfig("directory", "drop", {"path": str(path)}),
                                 SourceContext(node_name="n1", set_error=errors.append))
        recorder = Recorder()
        source._publish = recorder
        source._rescan(initial=True)
        source._emit()
        for batch in batches:
            for step in batch:
                target = path / step[1]
                if step[0] == "write":
                    target.write_text(text(step[2], step[3]))
                    source._load(step[1], target)
                elif step[0] == "broken":
                    target.write_text("[[service]\n")
                    source._load(step[1], target)
                else:
                    target.unlink(missing_ok=True)
                    source._forget(step[1])
            source._emit()
            snapshot, want_errors = from_scratch(source)
            assert recorder.state == snapshot
            assert errors[-1] == ("; ".join(want_errors) if want_errors else None)
        assert recorder.full == 1, "after the first snapshot, only deltas"


async def test_one_changed_file_among_many_is_a_delta_of_one_service(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"bulk-{i:03}.toml").write_text(text([f"s{i}-{j}" for j in range(20)], "p"))
    manager = SourceManager(node_name="n1")
    await manager.reconfigure([SourceConfig("directory", "drop", {"path": str(tmp_path), "rescan_interval": 60})])
    try:
        for _ in range(500):
            if len(manager.services_map()) == 1000:
                break
            await asyncio.sleep(0.01)
        assert len(manager.services_map()) == 1000
        calls: list[tuple[int, int]] = []
        running = manager._running["drop"]
        assert running.source is not None
        original = manager._publish_changes

        def spy(entry, upserts, removed):  # type: ignore[no-untyped-def]
            calls.append((len(upserts), len(removed)))
            original(entry, upserts, removed)

        manager._publish_changes = spy  # type: ignore[method-assign]
        assert manager.take_changes() is None, "sources were added: unknown"
        assert manager.take_changes() == set()
        (tmp_path / ".new.tmp").write_text(text(["extra"], "p"))
        (tmp_path / ".new.tmp").rename(tmp_path / "new.toml")
        for _ in range(500):
            if "drop/extra" in manager.services_map():
                break
            await asyncio.sleep(0.01)
        assert "drop/extra" in manager.services_map() and calls == [(1, 0)]
        assert manager.take_changes() == {"drop/extra"}  # the daemon's hint to allocator and planner
        (tmp_path / "new.toml").unlink()
        for _ in range(500):
            if "drop/extra" not in manager.services_map():
                break
            await asyncio.sleep(0.01)
        assert "drop/extra" not in manager.services_map() and calls == [(1, 0), (0, 1)]
        assert manager.take_changes() == {"drop/extra"}
        assert len(manager.services_map()) == 1000
    finally:
        await manager.close()


async def test_a_removal_waits_its_grace_and_a_quick_replacement_withdraws_nothing(tmp_path: Path) -> None:
    (tmp_path / "web.toml").write_text(text(["web"], "p"))
    snapshots: list[set[str]] = []

    class Keep(Recorder):
        def __call__(self, snapshot) -> None:  # type: ignore[no-untyped-def]
            super().__call__(snapshot)
            snapshots.append(set(self.state))

        def changes(self, upserts, removed) -> None:  # type: ignore[no-untyped-def]
            super().changes(upserts, removed)
            snapshots.append(set(self.state))

    source = DirectorySource(SourceConfig("directory", "drop", {"path": str(tmp_path), "rescan_interval": 60}),
                             SourceContext(node_name="n1"))
    task = asyncio.create_task(source.run(Keep()))
    try:
        for _ in range(200):
            if snapshots:
                break
            await asyncio.sleep(0.01)
        assert snapshots == [{"web"}]
        # An editor's save: the old file renamed away, the new one written in its place.
        (tmp_path / "web.toml").rename(tmp_path / "web.toml~")
        (tmp_path / ".web.tmp").write_text(text(["web"], "q"))
        (tmp_path / ".web.tmp").rename(tmp_path / "web.toml")
        for _ in range(100):
            if len(snapshots) > 1:
                break
            await asyncio.sleep(0.01)
        assert all("web" in s for s in snapshots), "a save must never withdraw the service"
        (tmp_path / "web.toml").unlink()
        loop = asyncio.get_running_loop()
        removed_at = loop.time()
        for _ in range(200):
            if "web" not in snapshots[-1]:
                break
            await asyncio.sleep(0.002)
        assert "web" not in snapshots[-1]
        assert loop.time() - removed_at >= DirectorySource.gone_grace * 0.9, "withdrawn before its grace"
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
