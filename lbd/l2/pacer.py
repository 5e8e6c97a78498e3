"""Sans-IO pacing of gratuitous ARP / unsolicited NA announcements.

One scheduler serves every VIP of an announcer (instead of one asyncio task per
VIP): it holds, per VIP, the packets still due (the takeover burst, then one
every ``announce_interval``) and hands them out under a packets-per-second cap,
so that 10,000 VIPs taking over at once do not flood the segment (a switch or
host drops or rate-limits ARP bursts; RFC 5227 §2.3 and RFC 4861 §7.2.6 both
space announcements rather than blast them).

Order when the cap holds packets back: first packets of a takeover burst, then
the rest of the bursts, then periodic repeats; within a class, earliest due
first. So a VIP that just moved here is announced before old VIPs are
refreshed. Pure: every method takes ``now`` (monotonic seconds); no clock, no I/O.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Deque, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)

FIRST, BURST, PERIODIC = 0, 1, 2
DEFAULT_RATE = 1000  # packets/s; see docs/configuration.md (announce_rate)


@dataclass
class _State:
    gen: int
    remaining: int  # burst packets still to send after the pending one
    interval: float
    spacing: float
    pending: bool = False  # a heap entry of this generation is queued


class AnnounceScheduler(Generic[K]):
    """Which VIPs to announce now, and when to wake up next."""

    def __init__(self, rate: float = DEFAULT_RATE, burst_spacing: float = 0.1) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        self.burst_spacing = burst_spacing
        # A small bucket smooths sends into slices of 50 ms instead of one wake per packet;
        # the 1-second log below makes the cap exact over any sliding second.
        self._capacity = max(1.0, self.rate / 20)
        self._tokens = self._capacity
        self._last: float | None = None
        self._sent: Deque[float] = deque()
        self._heaps: tuple[list[tuple[float, int, K, int]], ...] = ([], [], [])
        self._seq = itertools.count()
        self._gens = itertools.count(1)
        self._states: dict[K, _State] = {}

    def set_rate(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        self._capacity = max(1.0, self.rate / 20)
        self._tokens = min(self._tokens, self._capacity)

    def __len__(self) -> int:
        return len(self._states)

    def schedule(self, key: K, now: float, burst: int, interval: float) -> None:
        """(Re)start ``key``: ``burst`` packets (the first at once), then one per ``interval``
        (0: none). ``burst`` 0 starts with the periodic announcements only."""
        state = self._states[key] = _State(next(self._gens), max(0, burst - 1), interval, self.burst_spacing)
        if burst > 0:
            self._push(FIRST, now, key, state)
        elif interval > 0:
            self._push(PERIODIC, now + interval, key, state)

    def set_interval(self, key: K, now: float, interval: float) -> None:
        """Change the period; starts periodic announcements for a known idle VIP (no new burst)."""
        state = self._states.get(key)
        if state is None:
            self.schedule(key, now, 0, interval)
            return
        state.interval = interval
        if interval > 0 and not state.pending:
            self._push(PERIODIC, now + interval, key, state)

    def cancel(self, key: K) -> None:
        """Forget ``key``: its pending packets are never sent."""
        self._states.pop(key, None)

    def active(self, key: K) -> bool:
        state = self._states.get(key)
        return state is not None and state.pending

    def poll(self, now: float) -> list[K]:
        """The VIPs to send one announcement for now, within the cap."""
        self._refill(now)
        out: list[K] = []
        while self._tokens >= 1 and len(self._sent) < self.rate:
            item = self._pop_due(now)
            if item is None:
                break
            cls, key, state = item
            out.append(key)
            self._tokens -= 1
            self._sent.append(now)
            if state.remaining > 0:
                state.remaining -= 1
                self._push(BURST, now + state.spacing, key, state)
            elif state.interval > 0:
                self._push(PERIODIC, now + state.interval, key, state)
        return out

    def next_wake(self, now: float) -> float | None:
        """When ``poll`` has something to give next (``None``: nothing pending)."""
        due = None
        for heap in self._heaps:
            self._drop_stale(heap)
            if heap and (due is None or heap[0][0] < due):
                due = heap[0][0]
        if due is None:
            return None
        self._refill(now)
        wake = max(due, now)
        if self._tokens < 1:
            wake = max(wake, now + (1 - self._tokens) / self.rate)
        if len(self._sent) >= self.rate:
            wake = max(wake, self._sent[0] + 1.0)
        return wake

    # -- internals -------------------------------------------------------------

    def _push(self, cls: int, due: float, key: K, state: _State) -> None:
        state.pending = True
        heapq.heappush(self._heaps[cls], (due, next(self._seq), key, state.gen))

    def _live(self, key: K, gen: int) -> _State | None:
        state = self._states.get(key)
        return state if state is not None and state.gen == gen else None

    def _drop_stale(self, heap: list[tuple[float, int, K, int]]) -> None:
        while heap:
            _, _, key, gen = heap[0]
            state = self._live(key, gen)
            if state is not None and (state.interval > 0 or heap is not self._heaps[PERIODIC]):
                return
            heapq.heappop(heap)
            if state is not None:
                state.pending = False  # periodic repeat turned off (interval 0)

    def _pop_due(self, now: float) -> tuple[int, K, _State] | None:
        for cls, heap in enumerate(self._heaps):
            self._drop_stale(heap)
            if heap and heap[0][0] <= now:
                _, _, key, gen = heapq.heappop(heap)
                state = self._states[key]
                state.pending = False
                return cls, key, state
        return None

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        while self._sent and self._sent[0] <= now - 1.0:
            self._sent.popleft()
