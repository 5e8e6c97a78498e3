"""The event loop's lag probe: how long the loop was blocked (gossip acks, BFD and signals
wait that long). Its histogram is ``lbd_event_loop_lag_seconds`` (lbd.metrics)."""

from __future__ import annotations

import asyncio
import time

import structlog

from lbd.metrics import LOOP_LAG

log = structlog.get_logger(__name__)


class LoopLagProbe:
    """Measures event-loop stalls: a task asks to wake every ``interval`` seconds and records
    how late it wakes (the longest stall since :meth:`reset`, and the histogram above).

    A pass that holds the loop longer than a gossip probe timeout gets the node declared
    dead by its peers (issue 9); this is the figure that shows it."""

    def __init__(self, interval: float = 0.005, clock=time.perf_counter,  # type: ignore[no-untyped-def]
                 warn_after: float | None = None, warn_every: float = 10.0) -> None:
        self.interval = interval
        self._clock = clock
        self.max_lag = 0.0
        self.samples = 0
        self.lags: list[float] = []  # kept only when ``keep`` (benchmarks)
        self.keep = False
        # A stall of ``warn_after`` seconds or more is logged (``event_loop_stalled``), at most
        # one line per ``warn_every`` seconds with the number of stalls it stands for.
        self.warn_after = warn_after
        self.warn_every = warn_every
        self._last_warning = -warn_every
        self._unreported = 0
        self._unreported_max = 0.0

    def reset(self) -> None:
        self.max_lag = 0.0
        self.samples = 0
        self.lags = []

    async def run(self) -> None:
        while True:
            due = self._clock() + self.interval
            await asyncio.sleep(self.interval)
            lag = max(0.0, self._clock() - due)
            self.samples += 1
            self.max_lag = max(self.max_lag, lag)
            if self.keep:
                self.lags.append(lag)
            LOOP_LAG.observe(lag)
            if self.warn_after is not None and lag >= self.warn_after:
                self._stalled(lag)

    def _stalled(self, lag: float) -> None:
        self._unreported += 1
        self._unreported_max = max(self._unreported_max, lag)
        now = self._clock()
        if now - self._last_warning >= self.warn_every:
            log.warning("event_loop_stalled", seconds=round(self._unreported_max, 3), stalls=self._unreported,
                        detail="gossip probes, BFD and signals waited that long")
            self._last_warning = now
            self._unreported = 0
            self._unreported_max = 0.0
