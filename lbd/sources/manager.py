"""Running every configured source, keeping their snapshots, merging them.

Each source runs as its own task. A source that raises is restarted with
exponential backoff while its last good snapshot stays in effect: a source
failure never withdraws a VIP. The manager is level-triggered:
``reconfigure(configs)`` converges the running set to ``configs`` (unchanged
sources keep running untouched), and ``services()`` is always the merged view
of the latest snapshots.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

import structlog

from lbd import aio
from lbd.backoff import capped_backoff
from lbd.config.schema import SourceConfig
from lbd.delta import changed_keys
from lbd.model import ServiceSpec
from lbd.sources.base import ConfigOutcome, ServiceResult, Source, SourceContext
from lbd.sources.metrics import SOURCE_ERRORS, SOURCE_SERVICES, SOURCE_UP
from lbd.sources.registry import discover

log = structlog.get_logger(__name__)


class SnapshotError(ValueError):
    """A snapshot a source published is unusable (kept out; the last good one stays)."""


@dataclass
class _Running:
    config: SourceConfig
    source: Source | None = None
    task: asyncio.Task[None] | None = None
    snapshot: dict[str, ServiceSpec] | None = None  # full names; None until the first publish
    state: str = "starting"
    last_error: str | None = None
    reported_error: str | None = None  # from context.set_error, cleared by the source
    last_update: float | None = None  # wall clock of the last snapshot change
    failures: int = 0  # consecutive short-lived runs that crashed: drives the backoff
    faulty: bool = False  # crashed or published a rejected snapshot since its last good one
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _check_full_names(source_name: str, snapshot: Sequence[ServiceSpec]) -> dict[str, ServiceSpec]:
    """``_check`` for a source whose specs already carry their full names (the static source:
    the config names them ``static/<name>``): the same checks, and no copy of any spec (issue 9:
    100,000 copies stalled the loop for seconds and doubled the specs' memory)."""
    prefix = source_name + "/"
    out: dict[str, ServiceSpec] = {}
    for spec in snapshot:
        if not isinstance(spec, ServiceSpec):
            raise SnapshotError(f"expected ServiceSpec, got {type(spec).__name__}")
        full = spec.name
        if not isinstance(full, str) or not full.startswith(prefix):
            raise SnapshotError(f"service {full!r} is not named {prefix}<name>")
        local = full[len(prefix):]
        if not local or local.startswith("/") or local.endswith("/"):
            raise SnapshotError(f"invalid service name {local!r}")
        if full in out:
            raise SnapshotError(f"service {local!r} appears twice in one snapshot")
        out[full] = spec
    return out


class Publisher:
    """What a source's ``run`` is given. Call it with a complete snapshot (every source may);
    a source that knows what changed may then call :meth:`changes` with a delta on its last
    snapshot instead, in work proportional to the delta (issue 9)."""

    def __init__(self, manager: "SourceManager", entry: _Running) -> None:
        self._manager = manager
        self._entry = entry
        self._complete = False  # a delta needs this run's own complete snapshot first

    def __call__(self, snapshot: Sequence[ServiceSpec]) -> None:
        self._complete = True
        self._manager._publish(self._entry, snapshot)

    def changes(self, upserts: Sequence[ServiceSpec], removed: Sequence[str]) -> None:
        """``upserts``: services added or changed (local names); ``removed``: local names gone.
        Refused (the source shows degraded, its last good services stay) when invalid, or
        before this run published a complete snapshot."""
        if not self._complete:
            self._manager._rejected(self._entry, SnapshotError("changes published before a complete snapshot"))
            return
        self._manager._publish_changes(self._entry, upserts, removed)


class SourceManager:
    def __init__(self, *, node_name: str, state_dir: Any = None,
                 on_change: Callable[[], None] | None = None,
                 plugins: Mapping[str, type[Source]] | None = None,
                 backoff_initial: float = 1.0, backoff_max: float = 60.0,
                 report_timeout: float = 30.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 apply_config: Callable[[str, Sequence[Mapping[str, Any]], str], Awaitable[ConfigOutcome]]
                 | None = None,
                 pools_select_namespaces: Callable[[], bool] | None = None) -> None:
        self.node_name = node_name
        # Configuration sources read (the kubernetes source's live mode), by source name.
        self.apply_config = apply_config
        self.pools_select_namespaces = pools_select_namespaces
        self.state_dir = state_dir
        self.on_change = on_change
        self.changed = asyncio.Event()
        self._plugins = dict(plugins) if plugins is not None else None
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.report_timeout = report_timeout
        self._sleep = sleep  # injectable: tests drive the backoff on a simulated clock
        self._running: dict[str, _Running] = {}
        self._is_writer = False
        self._merged: dict[str, ServiceSpec] = {}  # every source's services by full name
        self._results: dict[str, dict[str, ServiceResult]] = {}  # the last report's, by source and local name
        self._taken: set[str] | None = None  # names changed since take_changes() (None: unknown, all)
        self._closed = False

    # -- public API -------------------------------------------------------

    def services(self) -> list[ServiceSpec]:
        """Every source's last good snapshot merged, sorted by full name."""
        return [self._merged[name] for name in sorted(self._merged)]

    def take_changes(self) -> set[str] | None:
        """The full names whose service changed since the last call (None: any may have: the
        first call, and after sources were added or removed); the daemon's hint to the
        allocator and planner, so that they need not compare 100,000 services (issue 9)."""
        taken, self._taken = self._taken, set()
        return taken

    def services_copy(self) -> dict[str, ServiceSpec]:
        """A copy of ``services_map()`` (dict.copy: C speed, the fastest path)."""
        return self._merged.copy()

    def services_map(self) -> Mapping[str, ServiceSpec]:
        """The same services by full name, kept up to date per change (a read-only view, no
        copy: the daemon takes it on every pass, issue 9). Not sorted."""
        return MappingProxyType(self._merged)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for name in sorted(self._running):
            r = self._running[name]
            out.append({
                "name": name,
                "type": r.config.type,
                "state": r.state,
                "services": len(r.snapshot or {}),
                "last_error": r.last_error,
                "last_update": r.last_update,
            })
        return out

    async def reconfigure(self, configs: Sequence[SourceConfig]) -> None:
        """Converge the running sources to ``configs``.

        A source whose type and options are unchanged keeps running. A changed
        one is restarted and its old snapshot stays in effect until the new
        instance publishes (no withdrawal while it re-lists). A removed one is
        stopped and its services go away.
        """
        names = [c.name for c in configs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate source names: {', '.join(dupes)}")
        wanted = {c.name: c for c in configs}
        for name in list(self._running):
            if name not in wanted:
                await self._stop(name, forget=True)
        for name, cfg in wanted.items():
            current = self._running.get(name)
            if current is not None and current.config == cfg:
                continue
            snapshot = None
            if current is not None:
                snapshot = current.snapshot
                await self._stop(name, forget=False)
            entry = _Running(config=cfg, snapshot=snapshot)
            self._running[name] = entry
            SOURCE_UP.labels(name).set(0)
            SOURCE_SERVICES.labels(name).set(len(snapshot or {}))
            SOURCE_ERRORS.labels(name)  # export 0 from the start
            entry.task = asyncio.create_task(self._supervise(entry), name=f"lbd-source-{name}")
        self._remerge()

    async def report(self, results: Mapping[str, ServiceResult], changed: Iterable[str] | None = None) -> None:
        """Fan allocation results (by full name) out to their sources' ``report``.

        ``changed``: the only names whose result differs from the last call's (None: any
        may). The per-source mappings are then updated for those names alone, so a change
        of one service costs the same with 100,000 present (issue 9); each source is still
        called after every pass (a source retries its failed writes then)."""
        if changed is None:
            by_source: dict[str, dict[str, ServiceResult]] = {}
            for full, result in results.items():
                source_name, sep, local = full.partition("/")
                if sep:
                    by_source.setdefault(source_name, {})[local] = result
            self._results = by_source
        else:
            for full in changed:
                source_name, sep, local = full.partition("/")
                if not sep:
                    continue
                result = results.get(full)
                if result is not None:
                    self._results.setdefault(source_name, {})[local] = result
                else:
                    self._results.get(source_name, {}).pop(local, None)
        calls = []
        for name, entry in self._running.items():
            if entry.source is not None:
                # A read-only view (no copy): valid for the call; a source that keeps results copies them.
                calls.append(self._report_one(name, entry.source, MappingProxyType(self._results.get(name, {}))))
        if calls:
            await asyncio.gather(*calls)

    def set_writer(self, is_writer: bool) -> None:
        """Tell every source whether this node writes results back."""
        self._is_writer = is_writer
        for name, entry in self._running.items():
            if entry.source is not None:
                self._call_set_writer(name, entry.source)

    async def close(self) -> None:
        self._closed = True
        for name in list(self._running):
            await self._stop(name, forget=True)

    # -- internals --------------------------------------------------------

    def _plugin(self, type_name: str) -> type[Source]:
        if self._plugins is None:
            self._plugins = discover()
        cls = self._plugins.get(type_name)
        if cls is None:
            raise LookupError(f'no source plugin "{type_name}" is installed')
        return cls

    def _call_set_writer(self, name: str, source: Source) -> None:
        try:
            source.set_writer(self._is_writer)
        except Exception as exc:
            log.error("source_set_writer_failed", source=name, error=repr(exc))
            SOURCE_ERRORS.labels(name).inc()

    async def _report_one(self, name: str, source: Source, results: Mapping[str, ServiceResult]) -> None:
        try:
            await aio.wait_for(source.report(results), self.report_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a plugin's report bug must not stop the daemon
            log.warning("source_report_failed", source=name, error=repr(exc))
            SOURCE_ERRORS.labels(name).inc()

    async def _stop(self, name: str, *, forget: bool) -> None:
        entry = self._running.get(name)
        if entry is None:
            return
        if entry.task is not None and not entry.task.done():
            entry.task.cancel()
            try:
                await entry.task
            except BaseException:  # noqa: BLE001 - cancelled or crashed: it is stopped either way
                pass
        entry.source = None
        if forget:
            del self._running[name]
            for metric in (SOURCE_UP, SOURCE_SERVICES, SOURCE_ERRORS):
                try:
                    metric.remove(name)
                except KeyError:
                    pass
            self._remerge()

    def _delay(self, failures: int) -> float:
        # Jitter (±20%) so that many nodes restarting a source do not hit an
        # API server in lockstep; capped so a crash loop retries for ever.
        return capped_backoff(max(1, failures), self.backoff_initial, self.backoff_max, jitter=0.2)

    def _set_state(self, entry: _Running) -> None:
        # "starting" wins until the first snapshot, even when the source already
        # reported an error (last_error says which): the daemon keeps the
        # persisted allocations of a starting source, so an API server that is
        # down when lbd starts withdraws nothing.
        if entry.snapshot is None and not entry.done:
            entry.state = "starting"
        elif entry.reported_error is not None:
            entry.state = "degraded"
        elif entry.faulty:
            entry.state = "degraded"
        else:
            entry.state = "ok"
        SOURCE_UP.labels(entry.config.name).set(1 if entry.state == "ok" else 0)

    async def _supervise(self, entry: _Running) -> None:
        name = entry.config.name
        while not self._closed:
            ctx = SourceContext(
                node_name=self.node_name,
                log=structlog.get_logger("lbd.sources").bind(source=name),
                state_dir=self.state_dir,
                set_error=lambda error, e=entry: self._reported(e, error),
            )
            if self.apply_config is not None:
                ctx.apply_config = functools.partial(self.apply_config, name)
            if self.pools_select_namespaces is not None:
                ctx.pools_select_namespaces = self.pools_select_namespaces
            started = time.monotonic()
            try:
                cls = self._plugin(entry.config.type)
                entry.source = cls(entry.config, ctx)
                self._call_set_writer(name, entry.source)
                await entry.source.run(Publisher(self, entry))
                entry.done = True
                entry.failures = 0
                entry.faulty = False
                entry.last_error = None
                self._set_state(entry)
                log.info("source_finished", source=name)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A run that lasted longer than the longest backoff was healthy
                # for a while: start the backoff over. Otherwise keep doubling,
                # even if the run published before crashing (a crash loop).
                if time.monotonic() - started > self.backoff_max:
                    entry.failures = 0
                entry.failures += 1
                entry.faulty = True
                entry.last_error = f"{type(exc).__name__}: {exc}"
                SOURCE_ERRORS.labels(name).inc()
                self._set_state(entry)
                delay = self._delay(entry.failures)
                log.error("source_failed", source=name, error=entry.last_error,
                          failures=entry.failures, retry_in=round(delay, 2))
                await self._sleep(delay)

    def _reported(self, entry: _Running, error: str | None) -> None:
        if error is not None and error != entry.reported_error:
            SOURCE_ERRORS.labels(entry.config.name).inc()
            entry.last_error = error
            log.warning("source_degraded", source=entry.config.name, error=error)
        if error is None and entry.reported_error is not None:
            log.info("source_recovered", source=entry.config.name)
        entry.reported_error = error
        self._set_state(entry)

    def _check(self, entry: _Running, snapshot: Sequence[ServiceSpec], cache: bool = True) -> dict[str, ServiceSpec]:
        source_name = entry.config.name
        if getattr(entry.source, "publishes_full_names", False):
            return _check_full_names(source_name, snapshot)
        # Prefixing copies every spec; reuse the copy of a spec object the
        # source published unchanged (sources rebuild snapshots of thousands).
        # (A delta, cache=False, is small: its specs are prefixed afresh.)
        previous: dict[int, tuple[ServiceSpec, ServiceSpec]] = entry.extra.get("prefixed", {}) if cache else {}
        prefixed: dict[int, tuple[ServiceSpec, ServiceSpec]] = {}
        out: dict[str, ServiceSpec] = {}
        for spec in snapshot:
            if not isinstance(spec, ServiceSpec):
                raise SnapshotError(f"expected ServiceSpec, got {type(spec).__name__}")
            if not spec.name or spec.name.startswith("/") or spec.name.endswith("/"):
                raise SnapshotError(f"invalid service name {spec.name!r}")
            full = f"{source_name}/{spec.name}"
            if full in out:
                raise SnapshotError(f"service {spec.name!r} appears twice in one snapshot")
            hit = previous.get(id(spec))
            named = hit[1] if hit is not None and hit[0] is spec else replace(spec, name=full)
            prefixed[id(spec)] = (spec, named)
            out[full] = named
        if cache:
            entry.extra["prefixed"] = prefixed
        return out

    def _publish(self, entry: _Running, snapshot: Sequence[ServiceSpec]) -> None:
        if self._running.get(entry.config.name) is not entry:
            return  # a stopped instance's late publish
        try:
            checked = self._check(entry, snapshot)
        except SnapshotError as exc:
            self._rejected(entry, exc)
            return
        previous = entry.snapshot
        entry.snapshot = checked
        changed = changed_keys(previous, checked) if previous is not None else set(checked)
        self._accepted(entry, changed)
        if previous is None and not changed:
            self._changed()  # a first, empty snapshot: the daemon drops this source's stand-ins (ghost_spec)

    def _publish_changes(self, entry: _Running, upserts: Sequence[ServiceSpec], removed: Sequence[str]) -> None:
        """A delta on the source's last snapshot: work in proportion to it (issue 9)."""
        if self._running.get(entry.config.name) is not entry:
            return
        try:
            if entry.snapshot is None:
                raise SnapshotError("changes published before a complete snapshot")
            upserted = self._check(entry, upserts, cache=False)
            gone = set()
            for local in removed:
                if not isinstance(local, str) or not local:
                    raise SnapshotError(f"invalid removed service name {local!r}")
                gone.add(f"{entry.config.name}/{local}")
            both = gone & upserted.keys()
            if both:
                raise SnapshotError(f"service {sorted(both)[0]!r} both changed and removed in one delta")
        except SnapshotError as exc:
            self._rejected(entry, exc)
            return
        snapshot, changed = entry.snapshot, set()
        for full, spec in upserted.items():
            if snapshot.get(full) != spec:
                snapshot[full] = spec
                changed.add(full)
        for full in gone:
            if snapshot.pop(full, None) is not None:
                changed.add(full)
        self._accepted(entry, changed)

    def _rejected(self, entry: _Running, exc: SnapshotError) -> None:
        # Reject the whole snapshot (or delta): a partial one would withdraw services.
        entry.last_error = f"rejected snapshot: {exc}"
        entry.faulty = True
        SOURCE_ERRORS.labels(entry.config.name).inc()
        self._set_state(entry)
        log.error("source_snapshot_rejected", source=entry.config.name, error=str(exc))

    def _accepted(self, entry: _Running, changed: set[str]) -> None:
        """``entry.snapshot`` holds what the source published; ``changed``: the full names that differ."""
        entry.faulty = False
        if entry.reported_error is None:
            entry.last_error = None
        if changed:
            entry.last_update = time.time()
            SOURCE_SERVICES.labels(entry.config.name).set(len(entry.snapshot or {}))
        self._set_state(entry)
        if changed:
            snapshot = entry.snapshot or {}
            if self._taken is not None:
                self._taken |= changed
            for full in changed:
                spec = snapshot.get(full)
                if spec is not None:
                    self._merged[full] = spec
                else:
                    self._merged.pop(full, None)
            self._changed()

    def _remerge(self) -> None:
        """The merged view from every source's snapshot, from scratch (sources added or removed)."""
        merged: dict[str, ServiceSpec] = {}
        for name in sorted(self._running):
            snap = self._running[name].snapshot
            if snap:
                merged.update(snap)
        if merged != self._merged:
            self._merged = merged
            self._taken = None
            self._changed()

    def _changed(self) -> None:
        self.changed.set()
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception as exc:
                log.error("source_on_change_failed", error=repr(exc))
