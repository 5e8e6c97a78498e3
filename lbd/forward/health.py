"""Backend health checks: every node checks every backend of every forwarded service.

Reuses the service checks' sans-IO rise/fall counter (``lbd.health.HealthState``)
and check coroutines (``run_check``). A backend's check defaults to a TCP
connect to its own address and port every 2 s, rise 2, fall 2; a service's
``backend_check`` overrides type, port, path, interval, timeout, rise and fall
(the host is always the backend's address; an ``exec`` command may name it
as ``{address}`` and ``{port}``).

Every node runs the checks, not only the VIP's owner, so that a node taking
over a VIP already knows which backends are up and builds the same Maglev
table as the node it replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import random
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import structlog

from lbd.config.forward import DEFAULT_BACKEND_CHECK
from lbd.forward.metrics import BACKEND_TRANSITIONS, BACKEND_UP
from lbd.health import JITTER, HealthState, next_delay, run_check_timed
from lbd.model import Backend, HealthCheckConfig, ServiceSpec

log = structlog.get_logger(__name__)

Key = tuple[str, str, int]  # (service, address, port checked)


def check_for(spec: ServiceSpec, backend: Backend) -> tuple[Key, HealthCheckConfig]:
    """The concrete check of one backend: its key and config (host and port filled in)."""
    return _check_for(spec.name, spec.backend_check, backend)


# Asked for every backend on every reconcile pass (10,000 backends: 10,000 calls); the answer
# depends only on these three, so it is worked out once.
@functools.lru_cache(maxsize=1 << 17)
def _check_for(name: str, backend_check: HealthCheckConfig | None, backend: Backend) -> tuple[Key, HealthCheckConfig]:
    base = backend_check or DEFAULT_BACKEND_CHECK
    port = base.port if base.port is not None else backend.target_port
    host = str(backend.address)
    command = tuple(arg.replace("{address}", host).replace("{port}", str(port)) for arg in base.command)
    return (name, host, port), replace(base, host=host, port=port if base.type != "exec" else None,
                                            command=command)


def endpoint_label(key: Key) -> str:
    _, host, port = key
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class _Entry:
    config: HealthCheckConfig
    state: HealthState
    task: asyncio.Task[None] | None = None
    detail: str = ""
    runs: int = 0


class BackendChecker:
    """Level-triggered like ``lbd.health.HealthChecker``: ``set_services()`` converges the checks."""

    def __init__(self, on_change: Callable[[], None] | None = None, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, on_near_flip: Callable[[str], None] | None = None) -> None:
        self._on_change = on_change
        # Called with the service when one of its backends is one result away from flipping
        # (``ahead``): the forwarder works out the table it will need then, beforehand.
        self._on_near_flip = on_near_flip
        self._clock = clock
        self._rng = rng or random.Random()
        self._entries: dict[Key, _Entry] = {}
        self._last_specs: list[ServiceSpec] | None = None
        self._versions: dict[str, int] = {}  # service -> bumped whenever a backend's health may change

    def set_services(self, services: Mapping[str, ServiceSpec]) -> None:
        # The same specs as last time (the same objects): the checks already match them.
        same = [services[n] for n in sorted(services)]
        if self._last_specs is not None and len(same) == len(self._last_specs) and all(
                map(operator.is_, same, self._last_specs)):
            return
        self._last_specs = same
        for name in set(services) | {key[0] for key in self._entries}:
            self._bump(name)
        wanted: dict[Key, HealthCheckConfig] = {}
        for spec in services.values():
            for backend in spec.backends:
                key, config = check_for(spec, backend)
                wanted[key] = config
        loop = asyncio.get_running_loop()
        for key in list(self._entries):
            if key not in wanted:
                self._stop(self._entries.pop(key))
                self._unlabel(key)
        for key, config in wanted.items():
            entry = self._entries.get(key)
            if entry is not None and entry.config == config:
                continue
            if entry is None:
                entry = _Entry(config, HealthState(config.rise, config.fall, since=self._clock()))
                self._entries[key] = entry
                BACKEND_UP.labels(key[0], endpoint_label(key)).set(0)
            else:
                self._stop(entry)
                entry.config = config
                entry.state.retune(config.rise, config.fall)
            entry.task = loop.create_task(self._loop(key, entry), name=f"backend-check:{endpoint_label(key)}")

    def _bump(self, service: str) -> None:
        self._versions[service] = self._versions.get(service, 0) + 1

    def version(self, service: str) -> tuple[int, int]:
        """Changes whenever the health of one of ``service``'s backends may have changed: the
        forwarder asks every backend's health again only then (``ruleset.desired(versions=)``)."""
        return id(self), self._versions.get(service, 0)

    def healthy(self, spec: ServiceSpec, backend: Backend) -> bool | None:
        """True when up; False when down or not yet known; None when not checked."""
        entry = self._entries.get(check_for(spec, backend)[0])
        return None if entry is None else entry.state.healthy

    def ahead(self, spec: ServiceSpec, backend: Backend) -> bool | None:
        """The health ``backend`` will have if its next result is like its last one, when that
        result flips it (up with ``fall - 1`` failures in a row: False; not up with ``rise - 1``
        successes: True); None when the next result cannot flip it."""
        entry = self._entries.get(check_for(spec, backend)[0])
        return None if entry is None else near_flip(entry.state)

    def status(self, key: Key) -> dict[str, object]:
        entry = self._entries.get(key)
        if entry is None:
            return {}
        return {"state": entry.state.state, "since": time.time() - (self._clock() - entry.state.since),
                "last_output": entry.detail, "runs": entry.runs, "check": entry.config.type}

    async def close(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for entry in self._entries.values():
            self._stop(entry)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for key in self._entries:
            self._unlabel(key)
            self._bump(key[0])
        self._entries.clear()
        self._last_specs = None

    @staticmethod
    def _stop(entry: _Entry) -> None:
        if entry.task is not None and not entry.task.done():
            entry.task.cancel()
        entry.task = None

    @staticmethod
    def _unlabel(key: Key) -> None:
        with contextlib.suppress(KeyError):
            BACKEND_UP.remove(key[0], endpoint_label(key))

    async def _loop(self, key: Key, entry: _Entry) -> None:
        config = entry.config
        label = endpoint_label(key)
        delay = config.interval * JITTER * self._rng.random()
        while True:
            await asyncio.sleep(delay)
            result, duration = await run_check_timed(config, self._clock)
            entry.runs += 1
            entry.detail = result.detail
            before = entry.state.state
            flipped = entry.state.record(result.ok, self._clock())
            if entry.state.state != before:
                BACKEND_TRANSITIONS.labels(key[0], label, entry.state.state).inc()
            BACKEND_UP.labels(key[0], label).set(1 if entry.state.healthy else 0)
            if flipped:
                self._bump(key[0])
                log.info("backend_health_changed", service=key[0], backend=label, healthy=entry.state.healthy,
                         detail=result.detail)
                if self._on_change is not None:
                    self._on_change()
            elif self._on_near_flip is not None and near_flip(entry.state) is not None:
                self._on_near_flip(key[0])  # once a run: near_flip holds at one count only
            delay = next_delay(config.interval, duration, self._rng.random())


def near_flip(state: HealthState) -> bool | None:
    """The health ``state`` takes if its next result is like its last one and that flips it;
    None when it does not (``BackendChecker.ahead``)."""
    if state.healthy:
        return False if state.failures and state.failures == state.fall - 1 else None
    return True if state.successes and state.successes == state.rise - 1 else None
