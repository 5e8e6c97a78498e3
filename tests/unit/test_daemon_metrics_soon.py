"""The daemon's gauges follow its passes at most every METRICS_INTERVAL, from the state of the
latest pass, in a task (issue 9: never a count of every VIP per one-service change)."""

from __future__ import annotations

import asyncio

from lbd import daemon as daemon_mod
from lbd.config.schema import Config, NodeConfig
from lbd.daemon import Daemon
from lbd.model import Plan
from pathlib import Path


async def test_a_burst_of_passes_is_one_update_then_one_for_the_latest_state(monkeypatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(daemon_mod.m, "update", lambda **kw: calls.append(kw))
    monkeypatch.setattr(daemon_mod, "METRICS_INTERVAL", 0.3)
    d = Daemon.__new__(Daemon)
    d.config = Config(path=Path("/dev/null"), node=NodeConfig(name="n1"))
    d.allocations, d.pending, d.plan, d.drained = {}, {}, Plan(), False
    d._metrics_soon()  # the first pass: at once
    await asyncio.sleep(0.05)
    assert len(calls) == 1
    for i in range(5):  # a burst: coalesced into one update, after the interval, of the latest state
        d.pending = {"s": str(i)}
        d._metrics_soon()
        await asyncio.sleep(0.01)
    assert len(calls) == 1
    for _ in range(100):
        if len(calls) == 2:
            break
        await asyncio.sleep(0.02)
    assert len(calls) == 2 and calls[-1]["pending"] == {"s": "4"}
    await asyncio.sleep(0.5)
    assert len(calls) == 2, "no pass, no update"
