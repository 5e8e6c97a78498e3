"""Retry loops go on for ever at their cap (issue 10 finding 1).

``initial * 2 ** (failures - 1)`` overflowed after 1,025 failures in a row;
these tests drive each retry loop through 100,000 failures on a simulated
clock and check it is still retrying, at the cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
from typing import Any, Mapping

import structlog
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbd.backoff import capped_backoff
from lbd.bgp import codec
from lbd.bgp.events import ConnectRequested, NotificationSent, State
from lbd.bgp.fsm import Session
from lbd.bgp.settings import SessionSettings
from lbd.config.schema import SourceConfig
from lbd.model import ServiceSpec
from lbd.sources.base import Source
from lbd.sources.manager import SourceManager

A_ID = ipaddress.IPv4Address("10.77.0.1")
B_ID = ipaddress.IPv4Address("10.77.0.2")
FAILURES = 100_000


def test_capped_backoff_sequence_and_cap() -> None:
    assert capped_backoff(0, 1.0, 120.0) == 0.0
    assert [capped_backoff(n, 1.0, 120.0) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 64, 120, 120]
    for n in (1_024, 1_025, 1_100, 10**6, 10**18, 2**70):
        assert capped_backoff(n, 1.0, 120.0) == 120.0
        assert capped_backoff(n, 0.5, 30.0, jitter=0.2, rng=random.Random(n)) <= 36.0


@given(st.integers(min_value=-5, max_value=2**80), st.floats(0.001, 1e6), st.floats(0.001, 1e6),
       st.floats(0.0, 0.99))
def test_capped_backoff_always_finite_and_bounded(failures: int, initial: float, cap: float, jitter: float) -> None:
    d = capped_backoff(failures, initial, cap, jitter=jitter, rng=random.Random(0))
    assert math.isfinite(d) and 0.0 <= d <= cap * (1 + jitter)


QUIET = structlog.wrap_logger(structlog.ReturnLogger(), processors=[],
                              wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))


def _session(cfg: SessionSettings) -> Session:
    s = Session(cfg)
    s.log = QUIET  # 100,000 failures: keep the debug logging out of the measurement
    return s


def _cfg(**kw: Any) -> SessionSettings:
    return SessionSettings(local_as=64512, router_id=A_ID, peer_as=64513, **kw)


def test_bgp_active_peer_keeps_reconnecting_after_100k_failures() -> None:
    s = _session(_cfg())
    now = 0.0
    events = s.start(now)
    connects = 0
    for _ in range(FAILURES):
        assert any(isinstance(e, ConnectRequested) for e in events)
        connects += 1
        s.connection_failed(now)
        assert s.state == State.ACTIVE
        deadline = s.next_deadline()
        assert deadline is not None and deadline - now <= s.settings.connect_retry_max
        now = deadline
        events = s.tick(now)
    assert connects == FAILURES
    assert s.state == State.CONNECT and s.next_deadline() is not None
    assert s._backoff() == s.settings.connect_retry_max  # noqa: SLF001 - at the cap, not overflowed


def test_bgp_passive_peer_keeps_answering_after_100k_failures() -> None:
    # A passive peer whose connections all carry garbage: each one is answered
    # with a NOTIFICATION and the session waits again in Active with a deadline.
    s = _session(_cfg(passive=True))
    now = 0.0
    s.start(now)
    bad = b"\x00" * 19  # a header without the marker
    notes = 0
    for _ in range(FAILURES):
        assert s.state == State.ACTIVE
        s.connection_made(now, A_ID, B_ID, outbound=False)
        s.data_to_send()
        events = s.handle_bytes(bad, now)
        notes += sum(isinstance(e, NotificationSent) for e in events)
        assert s.data_to_send(), "the NOTIFICATION is written"
        assert s.state == State.ACTIVE and s.next_deadline() is not None
        now = s.next_deadline() or now
        s.tick(now)
    assert notes == FAILURES


# -- every timer that should run is scheduled, in every state -------------------

_OPEN = codec.encode_open(codec.Open.for_asn(64513, 90, B_ID, (codec.MultiprotocolCap(1, 1),)))
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["start", "stop", "made", "failed", "lost", "open", "keepalive", "garbage",
                         "notification", "tick", "fail_many"]),
        st.floats(0.0, 500.0),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OPS, st.booleans())
def test_fsm_timers_stay_scheduled_in_every_state(ops: list[tuple[str, float]], passive: bool) -> None:
    s = _session(_cfg(passive=passive, hold_time=9))
    now = 0.0
    for op, dt in ops:
        now += dt
        if op == "start":
            s.start(now)
        elif op == "stop":
            s.stop(now)
        elif op == "made" and s.state not in (State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED):
            s.connection_made(now, A_ID, B_ID, outbound=not passive)
        elif op == "failed":
            s.connection_failed(now)
        elif op == "lost":
            s.connection_lost(now)
        elif op == "open":
            s.handle_bytes(_OPEN, now)
        elif op == "keepalive":
            s.handle_bytes(codec.encode_keepalive(), now)
        elif op == "garbage":
            s.handle_bytes(b"\xff" * 16 + b"\x00\x13\x09", now)
        elif op == "notification":
            s.handle_bytes(codec.encode_notification(codec.Notification(6, 2)), now)
        elif op == "tick":
            d = s.next_deadline()
            s.tick(max(now, d) if d is not None else now)
        elif op == "fail_many":
            s._failures += 5_000  # noqa: SLF001 - jump ahead: days of failures
        s.data_to_send()
        d = s.next_deadline()
        if s.state in (State.CONNECT, State.OPENSENT, State.OPENCONFIRM):
            assert d is not None, f"no deadline in {s.state}"  # connect timer / hold timer
        elif s.state == State.ESTABLISHED:
            assert d is not None, "negotiated hold 9: keepalive and hold timers run"
        elif s._auto_restart:  # noqa: SLF001 - Idle/Active under automatic restart retry
            # A passive session waiting in Active needs no timer (the peer
            # connects); every other one must have a finite retry deadline.
            if not (passive and s.state == State.ACTIVE):
                assert d is not None and math.isfinite(d), f"no retry deadline in {s.state}"
        else:
            assert d is None, "stopped: nothing to do"
        if d is not None:
            assert math.isfinite(d) and d >= 0


# -- the source supervisor -------------------------------------------------------

class _Crasher(Source):
    runs = 0

    @classmethod
    def validate(cls, options: Mapping[str, Any]) -> list[str]:
        return []

    async def run(self, publish: Any) -> None:
        _Crasher.runs += 1
        if _Crasher.runs == 1:
            publish([ServiceSpec(name="web")])
        raise RuntimeError("crash")


async def test_source_supervisor_retries_after_100k_crashes(monkeypatch: Any) -> None:
    clock = {"now": 0.0, "max": 0.0}
    done = asyncio.Event()

    async def fake_sleep(delay: float) -> None:
        assert math.isfinite(delay) and 0 <= delay <= 60.0 * 1.2
        clock["now"] += delay
        clock["max"] = max(clock["max"], delay)
        if _Crasher.runs >= FAILURES + 1:
            done.set()
            await asyncio.Event().wait()  # park: the test is over

    _Crasher.runs = 0
    mgr = SourceManager(node_name="n1", plugins={"crasher": _Crasher}, sleep=fake_sleep)
    import lbd.sources.manager as manager_mod
    monkeypatch.setattr(manager_mod, "log", QUIET)
    try:
        await mgr.reconfigure([SourceConfig("crasher", "c")])
        entry = mgr._running["c"]  # noqa: SLF001
        assert entry.task is not None
        waiter = asyncio.ensure_future(done.wait())
        await asyncio.wait({waiter, entry.task}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if entry.task.done():
            exc = entry.task.exception()
            pytest.fail(f"the supervisor died after {entry.failures} failures: {type(exc).__name__}: {exc}")
        assert done.is_set(), f"only {_Crasher.runs} runs in time"
        assert entry.failures > FAILURES
        assert clock["max"] >= 60.0 * 0.8, "the delay reached its cap and stayed there"
        assert [s.name for s in mgr.services()] == ["c/web"], "the last good snapshot stays"
    finally:
        await mgr.close()
