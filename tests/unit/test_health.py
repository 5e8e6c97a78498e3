"""Health checks: the rise/fall core on a simulated clock, and real checks on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbd.health import (
    DOWN,
    UNKNOWN,
    UP,
    HealthChecker,
    HealthState,
    HttpStatusError,
    check_exec,
    check_http,
    check_tcp,
    next_delay,
    parse_status_line,
)
from lbd.metrics import REGISTRY
from lbd.model import HealthCheckConfig

# ---------------------------------------------------------------------------
# Sans-IO core
# ---------------------------------------------------------------------------


def feed(state: HealthState, results: str, start: float = 0.0, step: float = 1.0) -> list[bool]:
    """Feed '+'/'-' results one per ``step`` seconds; return the flips."""
    return [state.record(r == "+", start + i * step) for i, r in enumerate(results)]


def test_starts_unknown_and_failing_until_rise_successes() -> None:
    s = HealthState(rise=3, fall=2, since=0.0)
    assert s.state == UNKNOWN and not s.healthy
    assert feed(s, "++") == [False, False]
    assert not s.healthy
    assert s.record(True, 2.0) is True
    assert s.state == UP and s.since == 2.0


def test_rise_one_is_up_on_first_success() -> None:
    s = HealthState(rise=1, fall=1, since=0.0)
    assert s.record(True, 5.0) is True and s.healthy and s.since == 5.0


def test_fall_needs_consecutive_failures() -> None:
    s = HealthState(rise=1, fall=3, since=0.0)
    feed(s, "+")
    assert feed(s, "--+--+", start=1.0) == [False] * 6
    assert s.healthy
    assert feed(s, "---", start=10.0) == [False, False, True]
    assert s.state == DOWN and s.since == 12.0
    assert (s.successes, s.failures) == (0, 3)


def test_failures_from_unknown_go_down_without_a_flip() -> None:
    s = HealthState(rise=2, fall=2, since=0.0)
    assert feed(s, "--") == [False, False]
    assert s.state == DOWN and s.since == 1.0 and not s.healthy
    assert feed(s, "++", start=2.0) == [False, True]
    assert s.state == UP


def test_flapping_check_does_not_flap_the_state() -> None:
    up = HealthState(rise=2, fall=2, since=0.0)
    feed(up, "++")
    assert not any(feed(up, "-+" * 50, start=2.0))
    assert up.healthy
    down = HealthState(rise=2, fall=2, since=0.0)
    feed(down, "--")
    assert not any(feed(down, "+-" * 50, start=2.0))
    assert not down.healthy


def test_retune_keeps_state_and_validates() -> None:
    s = HealthState(rise=1, fall=1, since=0.0)
    feed(s, "+")
    s.retune(rise=5, fall=5)
    assert s.healthy
    assert feed(s, "----", start=1.0) == [False] * 4
    assert s.record(False, 9.0) is True
    with pytest.raises(ValueError):
        s.retune(0, 1)
    with pytest.raises(ValueError):
        HealthState(rise=1, fall=0, since=0.0)


def test_next_delay_is_jittered_around_the_interval_and_never_negative() -> None:
    assert next_delay(2.0, 0.0, 0.5) == pytest.approx(2.0)
    assert next_delay(2.0, 0.0, 0.0) == pytest.approx(1.8)
    assert next_delay(2.0, 0.0, 0.999999) == pytest.approx(2.2, abs=1e-5)
    assert next_delay(2.0, 0.5, 0.5) == pytest.approx(1.5)  # start to start
    assert next_delay(1.0, 5.0, 0.5) == 0.0


@pytest.mark.parametrize(
    "line, status",
    [
        (b"HTTP/1.1 200 OK\r\n", 200),
        (b"HTTP/1.0 503 Service Unavailable\r\n", 503),
        (b"HTTP/1.1 204\r\n", 204),
        (b"HTTP/1.1 404 \r\n", 404),
    ],
)
def test_parse_status_line(line: bytes, status: int) -> None:
    assert parse_status_line(line) == status


@pytest.mark.parametrize(
    "line",
    [b"", b"\r\n", b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/2 200\r\n", b"HTTP/1.1 20 OK\r\n", b"HTTP/1.1 2x0 OK\r\n",
     b"HTTP/1.1 099 X\r\n", b"HTTP/1.1\r\n", "HTTP/1.1 ٢٠٠ OK\r\n".encode()],
)
def test_parse_status_line_rejects(line: bytes) -> None:
    with pytest.raises(HttpStatusError):
        parse_status_line(line)


@given(st.binary(max_size=300))
def test_parse_status_line_fuzz(data: bytes) -> None:
    try:
        status = parse_status_line(data)
    except HttpStatusError:
        return
    assert 100 <= status <= 999


# ---------------------------------------------------------------------------
# Real checks on 127.0.0.1
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def http_server(response: bytes | None):
    """A server answering every request with ``response`` (None: never answers)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if response is None:
                await asyncio.sleep(30)
            writer.write(response)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_tcp_check_connects_and_fails_on_a_closed_port() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert (await check_tcp("127.0.0.1", port, 2.0)).ok
    result = await check_tcp("127.0.0.1", free_port(), 2.0)
    assert not result.ok and "connect to 127.0.0.1" in result.detail


async def test_http_check_status() -> None:
    server, port = await http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    async with server:
        assert (await check_http("127.0.0.1", port, "/healthz", 200, 2.0)).ok
        wrong = await check_http("127.0.0.1", port, "/", 204, 2.0)
        assert not wrong.ok and "status 200, expected 204" in wrong.detail
    server, port = await http_server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
    async with server:
        assert not (await check_http("127.0.0.1", port, "/", 200, 2.0)).ok
        assert (await check_http("127.0.0.1", port, "/", 503, 2.0)).ok


async def test_http_check_rejects_garbage_and_times_out() -> None:
    server, port = await http_server(b"SSH-2.0-OpenSSH_9.6 Ubuntu\r\n")
    async with server:
        result = await check_http("127.0.0.1", port, "/", 200, 2.0)
        assert not result.ok and "not an HTTP/1.x response" in result.detail
    server, port = await http_server(None)
    async with server:
        started = time.monotonic()
        result = await check_http("127.0.0.1", port, "/", 200, 0.3)
        assert not result.ok and "no response within" in result.detail
        assert time.monotonic() - started < 5.0
    result = await check_http("127.0.0.1", free_port(), "/", 200, 2.0)
    assert not result.ok


async def test_exec_check_exit_status_and_output() -> None:
    assert (await check_exec(("true",), 5.0)).ok
    result = await check_exec(("sh", "-c", "echo backend down; exit 3"), 5.0)
    assert not result.ok and "exited 3" in result.detail and "backend down" in result.detail
    result = await check_exec(("/nonexistent/lbd-check",), 5.0)
    assert not result.ok and "cannot run" in result.detail
    # No shell: the argument is passed as is.
    assert (await check_exec(("test", "a;b", "=", "a;b"), 5.0)).ok


def gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie waiting for init)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


async def wait_gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_exec_check_that_hangs_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $! > {pids}; echo $$ >> {pids}; wait"
    started = time.monotonic()
    result = await check_exec(("sh", "-c", script), 0.5)
    assert not result.ok and "timed out" in result.detail
    assert time.monotonic() - started < 10.0
    assert await wait_gone([int(p) for p in pids.read_text().split()])


# ---------------------------------------------------------------------------
# The checker
# ---------------------------------------------------------------------------


def fast(**kw: object) -> HealthCheckConfig:
    base: dict[str, object] = dict(interval=0.05, timeout=0.5, rise=2, fall=2)
    base.update(kw)
    return HealthCheckConfig(**base)  # type: ignore[arg-type]


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_checker_follows_a_tcp_backend_up_and_down() -> None:
    changes: list[bool | None] = []
    checker = HealthChecker(on_change=lambda: changes.append(checker.healthy("web")))
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        checker.set_checks({"web": fast(type="tcp", port=port)})
        assert checker.healthy("web") is False  # unknown counts as failing
        assert checker.healthy("other") is None
        await until(lambda: checker.healthy("web") is True)
        assert changes == [True]
        assert REGISTRY.get_sample_value("lbd_health_check_up", {"service": "web"}) == 1.0
        status = checker.status()["web"]
        assert status["state"] == "up" and status["consecutive_successes"] >= 2
        assert status["last_duration"] is not None and abs(status["since"] - time.time()) < 60

        server.close()
        await server.wait_closed()
        await until(lambda: checker.healthy("web") is False)
        assert changes == [True, False]
        status = checker.status()["web"]
        assert status["state"] == "down" and "connect to" in status["last_output"]
        assert REGISTRY.get_sample_value("lbd_health_check_up", {"service": "web"}) == 0.0
        assert REGISTRY.get_sample_value("lbd_health_check_failures_total", {"service": "web"}) >= 2
        assert REGISTRY.get_sample_value("lbd_health_check_duration_seconds_count", {"type": "tcp"}) >= 4
    finally:
        await checker.close()
    assert checker.healthy("web") is None
    assert REGISTRY.get_sample_value("lbd_health_check_up", {"service": "web"}) is None


async def test_set_checks_is_level_triggered(tmp_path: Path) -> None:
    marker = tmp_path / "ok"
    marker.write_text("")
    changes: list[int] = []
    checker = HealthChecker(on_change=lambda: changes.append(1))
    try:
        check = fast(type="exec", command=("test", "-e", str(marker)))
        checker.set_checks({"a": check, "b": check})
        await until(lambda: checker.healthy("a") and checker.healthy("b"))
        task_a = checker._entries["a"].task
        # The same config again changes nothing; a changed config restarts the
        # task and keeps the state; a dropped service is forgotten.
        checker.set_checks({"a": check, "b": check})
        assert checker._entries["a"].task is task_a
        changed = fast(type="exec", command=("test", "-e", str(marker)), interval=0.1, rise=3)
        checker.set_checks({"a": changed})
        assert checker._entries["a"].task is not task_a
        assert checker.healthy("a") is True and checker.healthy("b") is None
        assert set(checker.status()) == {"a"}
        marker.unlink()
        await until(lambda: checker.healthy("a") is False)
        assert len(changes) == 3  # a up, b up, a down
    finally:
        await checker.close()


async def test_close_kills_a_running_exec_check(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    checker = HealthChecker()
    checker.set_checks({"slow": fast(type="exec", command=("sh", "-c", f"echo $$ > {pids}; exec sleep 30"),
                                     interval=5.0, timeout=5.0)})
    await until(lambda: pids.exists() and pids.read_text().strip() != "")
    await checker.close()
    assert await wait_gone([int(pids.read_text())])


class CountingRandom(random.Random):
    def __init__(self) -> None:
        super().__init__(1)
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return super().random()


async def test_every_wait_is_drawn_from_the_jitter_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first run and every interval get their own random draw (next_delay's ``draw``)."""
    import lbd.health as health

    runs = 0

    async def ok(config: HealthCheckConfig) -> health.CheckResult:
        nonlocal runs
        runs += 1
        return health.CheckResult(True)

    monkeypatch.setattr(health, "run_check", ok)
    rng = CountingRandom()
    checker = HealthChecker(rng=rng)
    try:
        checker.set_checks({"a": fast(type="exec", command=("a",), interval=0.02)})
        await until(lambda: runs >= 5)
    finally:
        await checker.close()
    assert rng.draws >= runs


def test_set_checks_needs_a_running_loop() -> None:
    checker = HealthChecker()
    with pytest.raises(RuntimeError):
        checker.set_checks({"x": fast(type="tcp", port=1)})
    assert checker.healthy("x") is None
