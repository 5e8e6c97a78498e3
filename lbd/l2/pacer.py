"""Sans-IO pacing of gratuitous ARP / unsolicited NA announcements.

One scheduler serves every VIP of an announcer (instead of one asyncio task per
VIP): it holds, per VIP, the packets still due (the takeover burst, then one
every ``announce_interval``) and hands them out under packets-per-second caps,
so that 10,000 VIPs taking over at once do not flood the segment (a switch or
host drops or rate-limits ARP bursts; RFC 5227 §2.3 and RFC 4861 §7.2.6 both
space announcements rather than blast them).

Two caps, two budgets (issue 9):

- ``takeover_rate``: the first packet of each takeover, the one that moves the
  neighbours' caches and so ends the outage of a failover. Its own budget, so
  a takeover never waits behind the repeats of older VIPs, and its own default
  (``DEFAULT_TAKEOVER_RATE``, 10,000/s): under one cap of 1,000/s the ~3,300
  VIPs a dead node of three held took 3.3 s to announce, twice the failover
  goal, on the pacing alone.
- ``rate`` (``announce_rate``): everything else, the rest of each burst and the
  periodic repeats, which only refresh caches that are already right.

Order within the second budget: the rest of the bursts, then periodic repeats;
within a class, earliest due first. Pure: every method takes ``now`` (monotonic
seconds); no clock, no I/O.
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
# First packets of takeovers/s (takeover_rate). 10,000 VIPs' worth of gratuitous ARP (a request
# and a reply each, 60 bytes on the wire) is about 10 Mbit/s, flooded in hardware by switches;
# a segment with ARP inspection policing the CPU-punted ARPs wants it lower (docs/configuration.md).
DEFAULT_TAKEOVER_RATE = 10_000


@dataclass
class _State:
    gen: int
    remaining: int  # burst packets still to send after the pending one
    interval: float
    spacing: float
    pending: bool = False  # a heap entry of this generation is queued


class _Bucket:
    """A packets-per-second cap: a small token bucket smooths sends into slices of 50 ms
    instead of one wake per packet; a log of the last second's sends makes the cap exact
    over any sliding second."""

    def __init__(self, rate: float) -> None:
        self._last: float | None = None
        self._sent: Deque[float] = deque()
        self.set_rate(rate)
        self.tokens = self.capacity

    def set_rate(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate / 20)
        self.tokens = min(getattr(self, "tokens", self.capacity), self.capacity)

    def refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        while self._sent and self._sent[0] <= now - 1.0:
            self._sent.popleft()

    def ready(self) -> bool:
        return self.tokens >= 1 and len(self._sent) < self.rate

    def take(self, now: float) -> None:
        self.tokens -= 1
        self._sent.append(now)

    def available_at(self, now: float) -> float:
        """When the next packet may go (``refill(now)`` first)."""
        wake = now
        if self.tokens < 1:
            wake = max(wake, now + (1 - self.tokens) / self.rate)
        if len(self._sent) >= self.rate:
            wake = max(wake, self._sent[0] + 1.0)
        return wake


class AnnounceScheduler(Generic[K]):
    """Which VIPs to announce now, and when to wake up next."""

    def __init__(self, rate: float = DEFAULT_RATE, burst_spacing: float = 0.1,
                 takeover_rate: float = DEFAULT_TAKEOVER_RATE) -> None:
        self.burst_spacing = burst_spacing
        self._buckets = (_Bucket(takeover_rate), _Bucket(rate))  # FIRST; BURST and PERIODIC
        self._heaps: tuple[list[tuple[float, int, K, int]], ...] = ([], [], [])
        self._seq = itertools.count()
        self._gens = itertools.count(1)
        self._states: dict[K, _State] = {}

    @property
    def rate(self) -> float:
        return self._buckets[1].rate

    @property
    def takeover_rate(self) -> float:
        return self._buckets[0].rate

    def set_rate(self, rate: float) -> None:
        """The cap on burst repeats and periodic announcements (``announce_rate``)."""
        self._buckets[1].set_rate(rate)

    def set_takeover_rate(self, rate: float) -> None:
        """The cap on the first packet of each takeover (``takeover_rate``)."""
        self._buckets[0].set_rate(rate)

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

    def takeovers_pending(self) -> bool:
        """Whether a takeover's first packet is still to go."""
        heap = self._heaps[FIRST]
        self._drop_stale(heap)
        return bool(heap)

    def active(self, key: K) -> bool:
        state = self._states.get(key)
        return state is not None and state.pending

    def poll(self, now: float) -> list[K]:
        """The VIPs to send one announcement for now, within the caps: takeovers' first
        packets from their own budget, then the rest from the other."""
        out: list[K] = []
        for bucket, classes in zip(self._buckets, ((FIRST,), (BURST, PERIODIC))):
            bucket.refill(now)
            while bucket.ready():
                item = self._pop_due(now, classes)
                if item is None:
                    break
                key, state = item
                out.append(key)
                bucket.take(now)
                if state.remaining > 0:
                    state.remaining -= 1
                    self._push(BURST, now + state.spacing, key, state)
                elif state.interval > 0:
                    self._push(PERIODIC, now + state.interval, key, state)
        return out

    def next_wake(self, now: float) -> float | None:
        """When ``poll`` has something to give next (``None``: nothing pending)."""
        wake: float | None = None
        for bucket, classes in zip(self._buckets, ((FIRST,), (BURST, PERIODIC))):
            due = None
            for cls in classes:
                heap = self._heaps[cls]
                self._drop_stale(heap)
                if heap and (due is None or heap[0][0] < due):
                    due = heap[0][0]
            if due is None:
                continue
            bucket.refill(now)
            at = max(due, bucket.available_at(now))
            wake = at if wake is None else min(wake, at)
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

    def _pop_due(self, now: float, classes: tuple[int, ...]) -> tuple[K, _State] | None:
        for cls in classes:
            heap = self._heaps[cls]
            self._drop_stale(heap)
            if heap and heap[0][0] <= now:
                _, _, key, gen = heapq.heappop(heap)
                state = self._states[key]
                state.pending = False
                return key, state
        return None
