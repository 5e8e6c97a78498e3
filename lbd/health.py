"""Local health checks (tcp, http, exec) with rise/fall, feeding VIP eligibility.

A service may carry a ``HealthCheckConfig``. Every node runs the check itself;
while it fails on a node, that node is not eligible to own the service's VIPs
(the planner skips it in the owner election and BGP withdraws the service's
routes from that node only). The result is published to the cluster as
``Member.failing``.

Two layers, as everywhere in lbd:

- ``HealthState``: the sans-IO rise/fall counter. The caller passes each
  result and the time; it answers whether the state flipped.
- ``HealthChecker``: the asyncio adapter. One task per check, level-triggered
  through ``set_checks()``; the checks themselves (``check_tcp``,
  ``check_http``, ``check_exec``) are plain coroutines.

Initial state: a check starts ``unknown``, which counts as *failing*, and
needs ``rise`` consecutive successes to become healthy (keepalived's
``vrrp_script`` with ``init_fail``). keepalived's default is the opposite (a
script starts up), which is right for a VRRP pair that must hold its VIP
somewhere, but wrong for a load balancer: a freshly started backend often
accepts connections before it can serve, announcing a VIP on one success and
withdrawing it on the next failure moves client traffic twice, and a node that
is not yet known healthy loses nothing by waiting, because the other nodes
keep serving. ``rise = 1`` gives "announce on the first success".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import structlog

from lbd import aio
from lbd.metrics import HEALTH_DURATION, HEALTH_FAILURES, HEALTH_UP
from lbd.model import HealthCheckConfig

log = structlog.get_logger(__name__)

UNKNOWN, UP, DOWN = "unknown", "up", "down"
OUTPUT_LIMIT = 512  # bytes of exec output / error text kept for status
JITTER = 0.1  # each interval is stretched or shrunk by up to 10%


# ---------------------------------------------------------------------------
# Sans-IO core
# ---------------------------------------------------------------------------


@dataclass
class HealthState:
    """Rise/fall counting for one check; the caller passes ``now``.

    ``unknown`` (the start) and ``down`` are both failing. From ``unknown`` or
    ``down``, ``rise`` consecutive successes make it ``up``; from ``up``,
    ``fall`` consecutive failures make it ``down``. From ``unknown``, ``fall``
    consecutive failures make it ``down`` too (no eligibility change: it only
    tells the operator the check has really failed rather than not run yet).
    """

    rise: int
    fall: int
    since: float
    state: str = UNKNOWN
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError(f"rise and fall must be at least 1 (got rise={self.rise}, fall={self.fall})")

    @property
    def healthy(self) -> bool:
        return self.state == UP

    def record(self, ok: bool, now: float) -> bool:
        """Count one result; True when ``healthy`` flipped."""
        before = self.healthy
        if ok:
            self.successes += 1
            self.failures = 0
            if self.state != UP and self.successes >= self.rise:
                self._enter(UP, now)
        else:
            self.failures += 1
            self.successes = 0
            if self.state != DOWN and self.failures >= self.fall:
                self._enter(DOWN, now)
        return self.healthy != before

    def retune(self, rise: int, fall: int) -> None:
        """New thresholds from a changed config; the current state is kept."""
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be at least 1 (got rise={rise}, fall={fall})")
        self.rise, self.fall = rise, fall

    def _enter(self, state: str, now: float) -> None:
        self.state = state
        self.since = now


async def run_check_timed(config: HealthCheckConfig, clock: Callable[[], float],
                          logger: Any = None) -> tuple[CheckResult, float]:
    """One run of ``config`` and how long it took on ``clock``.

    A bug in a check is a failed result (logged on ``logger`` when given), never an
    exception that would stop the caller's checking loop; cancellation passes.
    """
    started = clock()
    try:
        result = await run_check(config)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in a check must not stop checking
        if logger is not None:
            logger.exception("health_check_error")
        result = CheckResult(False, f"internal error: {exc!r}")
    return result, clock() - started


def next_delay(interval: float, duration: float, draw: float, jitter: float = JITTER) -> float:
    """Seconds to wait before the next run, start to start.

    ``draw`` is a uniform random number in [0, 1): intervals vary by up to
    ``jitter`` either way so that checks started together (a config load, a
    fleet restart) do not stay in lockstep against the same backend.
    """
    target = interval * (1.0 + jitter * (2.0 * draw - 1.0))
    return max(0.0, target - duration)


class HttpStatusError(ValueError):
    """The bytes a health-checked server sent are not an HTTP/1.x status line."""


def parse_status_line(line: bytes) -> int:
    """The status code of an HTTP/1.x status line (RFC 9112 section 4).

    ``status-line = HTTP-version SP status-code SP [ reason-phrase ]``; some
    servers omit the space after the code, which we accept.
    """
    if len(line) > 8192:
        raise HttpStatusError("status line longer than 8192 bytes")
    text = line.rstrip(b"\r\n")
    parts = text.split(b" ", 2)
    if len(parts) < 2:
        raise HttpStatusError(f"not a status line: {text[:80]!r}")
    version, code = parts[0], parts[1]
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise HttpStatusError(f"not an HTTP/1.x response: {version[:20]!r}")
    if len(code) != 3 or not all(0x30 <= c <= 0x39 for c in code):
        raise HttpStatusError(f"status code {code[:20]!r} is not three digits")
    status = int(code)
    if status < 100:
        raise HttpStatusError(f"status code {status} is out of range 100..999")
    return status


# ---------------------------------------------------------------------------
# The checks (asyncio)
# ---------------------------------------------------------------------------


@dataclass
class CheckResult:
    ok: bool
    detail: str = ""  # error text or command output, truncated


def _truncate(text: str) -> str:
    return text if len(text) <= OUTPUT_LIMIT else "..." + text[-OUTPUT_LIMIT:]


async def check_tcp(host: str, port: int, timeout: float) -> CheckResult:
    """Healthy iff a TCP connection to host:port is established within ``timeout``."""
    try:
        _reader, writer = await aio.wait_for(asyncio.open_connection(host, port), timeout)
    except asyncio.TimeoutError:
        return CheckResult(False, f"connect to {host}:{port} timed out after {timeout:g}s")
    except OSError as exc:
        return CheckResult(False, f"connect to {host}:{port}: {exc.strerror or exc}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return CheckResult(True, f"connected to {host}:{port}")


async def check_http(host: str, port: int, path: str, expected_status: int, timeout: float) -> CheckResult:
    """Healthy iff ``GET path`` answers ``expected_status`` within ``timeout``.

    A minimal HTTP/1.1 client (RFC 9112): one request with ``Connection:
    close``, only the status line is read; the body does not matter.
    """
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: lbd-health\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1", errors="replace")
    writer: asyncio.StreamWriter | None = None

    async def exchange() -> bytes:
        nonlocal writer
        reader, writer = await asyncio.open_connection(host, port, limit=8192)
        writer.write(request)
        await writer.drain()
        return await reader.readline()

    try:
        line = await aio.wait_for(exchange(), timeout)
        if not line:
            return CheckResult(False, f"http://{authority}{path}: connection closed before a response")
        status = parse_status_line(line)
    except asyncio.TimeoutError:
        return CheckResult(False, f"http://{authority}{path}: no response within {timeout:g}s")
    except (OSError, ValueError) as exc:  # ValueError: HttpStatusError, or a line over the limit
        return CheckResult(False, f"http://{authority}{path}: {getattr(exc, 'strerror', None) or exc}")
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if status != expected_status:
        return CheckResult(False, f"http://{authority}{path}: status {status}, expected {expected_status}")
    return CheckResult(True, f"http://{authority}{path}: status {status}")


async def check_exec(command: tuple[str, ...], timeout: float) -> CheckResult:
    """Healthy iff ``command`` (argv, no shell) exits 0 within ``timeout``.

    The command runs in its own session; on timeout the whole process group
    is killed, so a shell script's children do not outlive the check.
    """
    if not command:
        return CheckResult(False, "no command")
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return CheckResult(False, f"cannot run {command[0]}: {exc.strerror or exc}")
    tail = bytearray()

    async def collect() -> None:
        assert proc.stdout is not None
        while True:  # ends at EOF; bounded in memory by keeping only the tail
            chunk = await proc.stdout.read(4096)
            if not chunk:
                return
            tail.extend(chunk)
            del tail[:-OUTPUT_LIMIT]

    async def finish() -> int:
        await collect()
        return await proc.wait()

    try:
        code = await aio.wait_for(finish(), timeout)
    except asyncio.TimeoutError:
        return CheckResult(False, f"{command[0]} timed out after {timeout:g}s, killed")
    finally:
        # Timed out, or the check was cancelled (set_checks, close): never
        # leave the command or its children running.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                await asyncio.shield(proc.wait())
    output = tail.decode(errors="replace").strip()
    if code != 0:
        how = f"killed by signal {-code}" if code < 0 else f"exited {code}"
        return CheckResult(False, _truncate(f"{command[0]} {how}: {output}" if output else f"{command[0]} {how}"))
    return CheckResult(True, _truncate(output))


async def run_check(config: HealthCheckConfig) -> CheckResult:
    """Run one check of any type; never raises for a failing target."""
    if config.type == "tcp":
        return await check_tcp(config.host, _port(config), config.timeout)
    if config.type == "http":
        return await check_http(config.host, _port(config), config.path, config.expected_status, config.timeout)
    if config.type == "exec":
        return await check_exec(tuple(config.command), config.timeout)
    return CheckResult(False, f"unknown check type {config.type!r}")


def _port(config: HealthCheckConfig) -> int:
    if config.port is None:
        raise ValueError(f"a {config.type} health check needs a port")
    return config.port


# ---------------------------------------------------------------------------
# The checker (asyncio adapter)
# ---------------------------------------------------------------------------


@dataclass
class _Entry:
    config: HealthCheckConfig
    state: HealthState
    task: asyncio.Task[None] | None = None
    last_detail: str = ""
    last_duration: float | None = None
    last_run: float | None = None  # wall clock
    runs: int = 0
    extra: dict[str, object] = field(default_factory=dict)


class HealthChecker:
    """Runs every configured check periodically; level-triggered by ``set_checks``.

    ``on_change()`` (no arguments, called from the event loop) fires whenever
    a service's ``healthy()`` flips because of a check result; the daemon uses
    it to trigger a reconcile. Changes made by ``set_checks`` itself do not
    fire it: the caller knows it changed the checks.
    """

    def __init__(
        self,
        on_change: Callable[[], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        jitter: float = JITTER,
    ) -> None:
        self._on_change = on_change
        self._clock = clock
        self._rng = rng or random.Random()
        self._jitter = jitter
        self._entries: dict[str, _Entry] = {}
        self._closed = False

    # -- API -----------------------------------------------------------------

    def set_checks(self, checks: Mapping[str, HealthCheckConfig]) -> None:
        """Converge to exactly these checks (service name -> config).

        New services start ``unknown`` (failing). A changed config restarts
        the service's task at once but keeps its state, so an edit to, say,
        the interval does not make a healthy node ineligible; a changed check
        that fails will bring it down after ``fall`` runs. Must be called with
        an event loop running.
        """
        if self._closed:
            raise RuntimeError("HealthChecker is closed")
        loop = asyncio.get_running_loop()  # RuntimeError before any change when there is none
        for service in list(self._entries):
            if service not in checks:
                entry = self._entries.pop(service)
                self._cancel(entry)
                _remove_labels(service)
                log.info("health_check_removed", service=service)
        for service, config in checks.items():
            entry = self._entries.get(service)
            if entry is not None and entry.config == config:
                continue
            if entry is None:
                entry = _Entry(config=config, state=HealthState(config.rise, config.fall, since=self._clock()))
                self._entries[service] = entry
                HEALTH_UP.labels(service).set(0)
                HEALTH_FAILURES.labels(service)  # present at 0 from the start
                log.info("health_check_added", service=service, type=config.type)
            else:
                self._cancel(entry)
                entry.config = config
                entry.state.retune(config.rise, config.fall)
                log.info("health_check_changed", service=service, type=config.type)
            entry.task = loop.create_task(
                self._loop(service, entry), name=f"health:{service}"
            )

    def healthy(self, service: str) -> bool | None:
        """True/False for a service with a check (unknown counts as False); None without one."""
        entry = self._entries.get(service)
        return None if entry is None else entry.state.healthy

    def status(self) -> dict[str, dict]:
        """Per service: what ``lbd-ctl status`` and the control socket show."""
        now_mono, now_wall = self._clock(), time.time()
        out: dict[str, dict] = {}
        for service, entry in sorted(self._entries.items()):
            s = entry.state
            out[service] = {
                "type": entry.config.type,
                "healthy": s.healthy,
                "state": s.state,
                "since": now_wall - (now_mono - s.since),
                "consecutive_successes": s.successes,
                "consecutive_failures": s.failures,
                "runs": entry.runs,
                "last_run": entry.last_run,
                "last_duration": entry.last_duration,
                "last_output": entry.last_detail,
                "rise": s.rise,
                "fall": s.fall,
                "interval": entry.config.interval,
            }
        return out

    async def close(self) -> None:
        """Stop every check and wait for the tasks (and exec children) to end."""
        self._closed = True
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for entry in self._entries.values():
            self._cancel(entry)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for service in self._entries:
            _remove_labels(service)
        self._entries.clear()

    # -- internals -----------------------------------------------------------

    @staticmethod
    def _cancel(entry: _Entry) -> None:
        if entry.task is not None and not entry.task.done():
            entry.task.cancel()
        entry.task = None

    async def _loop(self, service: str, entry: _Entry) -> None:
        config = entry.config
        bound = log.bind(service=service, type=config.type)
        # The first run comes soon but not at the same instant for every check.
        delay = config.interval * self._jitter * self._rng.random()
        while True:
            await asyncio.sleep(delay)
            result, duration = await run_check_timed(config, self._clock, bound)
            HEALTH_DURATION.labels(config.type).observe(duration)
            entry.runs += 1
            entry.last_duration = duration
            entry.last_run = time.time()
            entry.last_detail = _truncate(result.detail)
            if not result.ok:
                HEALTH_FAILURES.labels(service).inc()
            flipped = entry.state.record(result.ok, self._clock())
            HEALTH_UP.labels(service).set(1 if entry.state.healthy else 0)
            if flipped:
                bound.info("health_changed", healthy=entry.state.healthy, detail=entry.last_detail)
                if self._on_change is not None:
                    try:
                        self._on_change()
                    except Exception:  # noqa: BLE001
                        bound.exception("health_on_change_failed")
            elif not result.ok:
                bound.debug("health_check_failed", detail=entry.last_detail, failures=entry.state.failures)
            delay = next_delay(config.interval, duration, self._rng.random(), self._jitter)


def _remove_labels(service: str) -> None:
    for metric in (HEALTH_UP, HEALTH_FAILURES):
        with contextlib.suppress(KeyError):
            metric.remove(service)
