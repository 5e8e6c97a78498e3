"""The BFD engine in a process of its own.

Measured (bench/bfd_timing.py, docs/bfd.md): on a thread of the daemon's
process, BFD shares the GIL with the event loop. When the loop runs CPU-bound
Python (a long reconcile pass) while other processes saturate the CPUs, the
GIL holder is often descheduled while holding it and every socket call of the
BFD thread waits for it again: packets went out up to ~170 ms late, more than
half of a 300 ms detection time. A separate interpreter shares nothing with
the daemon's loop, so its timing depends only on the kernel's scheduler (and
it asks for nice -10).

:class:`BfdProcess` offers the engine's interface (``configure``, ``remove``,
``admin_down``, ``snapshot`` returning futures) over a pipe. The child exits
when the pipe closes, so a killed daemon takes its BFD down with it, as a
crash must (no AdminDown is sent then). Metrics are kept here, in the
daemon's registry, from the child's snapshots and events.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import os
import signal
import threading
from typing import Any, Callable

import structlog

from lbd.bfd import metrics as m
from lbd.bfd.packet import SessionState
from lbd.bfd.session import SessionConfig, StateChanged
from lbd.bfd.transport import BfdEngine, Endpoint

log = structlog.get_logger(__name__)
SNAPSHOT_EVERY = 1.0  # seconds between unsolicited status snapshots from the child


RT_PRIORITY = 1  # the lowest real-time priority: above every normal process, below the kernel's own threads


def set_realtime(priority: int = RT_PRIORITY) -> bool:
    """SCHED_RR for this process (its threads inherit it). A waking real-time
    task preempts every normal one at once, so busy processes cannot delay a
    BFD packet. The BFD process sleeps between a few packets a second (about
    30 per second per session at 100 ms), and the kernel's real-time
    throttling (sched_rt_runtime_us) bounds it anyway. Needs root or
    CAP_SYS_NICE; without them the process stays normal at nice -10."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
        return True
    except (OSError, AttributeError):
        return False


def child_main(conn: Any, options: dict[str, Any]) -> None:
    """The child: one engine; requests from the pipe, results/events/snapshots back."""
    # The daemon drives this process: a SIGTERM/SIGINT sent to the whole process
    # group (a terminal's ^C, a test harness's killpg) must not end it before the
    # daemon has sent AdminDown through it. It ends when the daemon asks or dies.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    realtime = set_realtime() if options.pop("realtime", True) else False
    if not realtime:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -10)  # the child's main thread; the engine thread sets its own
        except OSError:
            pass
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            try:
                conn.send(message)
            except (OSError, EOFError):
                pass

    def on_event(key: str, event: StateChanged) -> None:
        send(("event", key, event))
        send(("snapshot", engine._snapshot()))  # on the engine thread, where reading it is safe

    engine = BfdEngine(on_event, **options)
    if realtime:
        engine.scheduling = "SCHED_RR"
    engine.start()
    try:
        while True:
            if not conn.poll(SNAPSHOT_EVERY):
                send(("snapshot", engine.snapshot().result(5)))
                continue
            try:
                req_id, op, args = conn.recv()
            except (EOFError, OSError):
                return  # the daemon is gone: stop without AdminDown (a crash is a crash)
            if op == "exit":
                send(("result", req_id, True, None))
                return
            try:
                fut = getattr(engine, op)(*args)
                value = fut.result(10) if isinstance(fut, concurrent.futures.Future) else fut
                send(("result", req_id, True, value))
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                send(("result", req_id, False, f"{type(exc).__name__}: {exc}"))
            send(("snapshot", engine.snapshot().result(5)))
    finally:
        engine.close()


class BfdProcess:
    """The engine's interface, served by a child process."""

    def __init__(self, on_event: Callable[[str, StateChanged], None],
                 on_exit: Callable[[], None] | None = None, **options: Any) -> None:
        """``on_exit`` is called (on the pipe's reader thread) when the child
        exits without being asked to: the owner restarts it."""
        self._on_event = on_event
        self._on_exit = on_exit
        self._closing = False
        ctx = multiprocessing.get_context("spawn")  # never fork a threaded asyncio process
        self._conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=child_main, args=(child, options), name="lbd-bfd", daemon=True)
        self.proc.start()
        child.close()
        self._ids = itertools.count(1)
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()
        self._snapshot: dict[str, dict[str, object]] = {}
        self._seen: dict[str, tuple[int, int, int]] = {}  # key -> (sent, received, discarded) counted
        self._reader = threading.Thread(target=self._read, name="lbd-bfd-pipe", daemon=True)
        self._reader.start()

    # -- the engine's interface ---------------------------------------------

    def _request(self, op: str, *args: Any) -> "concurrent.futures.Future[Any]":
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        req_id = next(self._ids)
        with self._lock:
            self._pending[req_id] = fut
            try:
                self._conn.send((req_id, op, args))
            except (OSError, EOFError, ValueError) as exc:
                self._pending.pop(req_id, None)
                fut.set_exception(OSError(f"BFD process unavailable: {exc}"))
        return fut

    def configure(self, key: str, endpoint: Endpoint, config: SessionConfig) -> "concurrent.futures.Future[Any]":
        return self._request("configure", key, endpoint, config)

    def remove(self, key: str) -> "concurrent.futures.Future[Any]":
        return self._request("remove", key)

    def admin_down(self, keys: list[str] | None = None) -> "concurrent.futures.Future[Any]":
        return self._request("admin_down", keys)

    def snapshot(self) -> "concurrent.futures.Future[Any]":
        return self._request("snapshot")

    def cached_snapshot(self) -> dict[str, dict[str, object]]:
        """The latest status the child sent (after every request, every second)."""
        return dict(self._snapshot)

    def close(self, timeout: float = 2.0) -> None:
        self._closing = True
        if self.proc.is_alive():
            try:
                self._request("exit").result(timeout)
            except Exception:  # noqa: BLE001 - it is going anyway
                pass
            self.proc.join(timeout)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(timeout)
        self._conn.close()

    def kill(self) -> None:
        """Tests: the BFD process dies without a word."""
        self.proc.kill()
        self.proc.join(5)

    # -- the pipe -------------------------------------------------------------

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == "result":
                _, req_id, ok, value = message
                with self._lock:
                    fut = self._pending.pop(req_id, None)
                if fut is not None and not fut.done():
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(RuntimeError(value))
            elif kind == "event":
                _, key, event = message
                self._account_event(key, event)
                try:
                    self._on_event(key, event)
                except Exception:  # noqa: BLE001 - an observer must not stop the reader
                    log.exception("bfd_event_callback_failed")
            elif kind == "snapshot":
                self._account_snapshot(message[1])
        with self._lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(OSError("the BFD process exited"))
        if not self._closing:
            self.proc.join(2)
            log.error("bfd_process_exited", exitcode=self.proc.exitcode)
            if self._on_exit is not None:
                self._on_exit()

    def _account_event(self, key: str, event: StateChanged) -> None:
        m.STATE.labels(peer=key).set(int(event.new))
        m.UP.labels(peer=key).set(1 if event.new == SessionState.UP else 0)
        m.TRANSITIONS.labels(peer=key, to=event.new.label).inc()

    def _account_snapshot(self, snap: dict[str, dict[str, Any]]) -> None:
        for key in set(self._snapshot) - set(snap):
            self._seen.pop(key, None)
            for metric in m.PER_PEER:
                try:
                    metric.remove(key)
                except KeyError:
                    pass
        self._snapshot = snap
        for key, row in snap.items():
            now = (int(row["packets_sent"]), int(row["packets_received"]), int(row["packets_discarded"]))
            old = self._seen.get(key, (0, 0, 0))
            if now[0] > old[0]:
                m.PACKETS_SENT.labels(peer=key).inc(now[0] - old[0])
            if now[1] > old[1]:
                m.PACKETS_RECEIVED.labels(peer=key).inc(now[1] - old[1])
            if now[2] > old[2]:
                m.DISCARDED.labels(reason="session").inc(now[2] - old[2])
            self._seen[key] = now
            m.DETECTION_TIME.labels(peer=key).set(float(row["detection_time_ms"]) / 1000)
            m.STATE.labels(peer=key).set({"AdminDown": 0, "Down": 1, "Init": 2, "Up": 3}[str(row["state"])])
            m.UP.labels(peer=key).set(1 if row["state"] == "Up" else 0)
