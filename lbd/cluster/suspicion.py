"""Lifeguard's suspicion timer, as memberlist ``suspicion.go`` runs it, sans-IO.

A member suspected of failure is declared dead when its timer runs out. The
timer starts at ``tmax`` and shrinks toward ``tmin`` as independent members
confirm the suspicion (up to ``k`` of them): many witnesses make a failure
likely, a lone accuser gets the long timeout, time enough for the accused to
refute (Lifeguard's "LHA-Suspicion", Dadgar et al. 2018; memberlist-wire.md
section 11). The caller passes ``now``; nothing here reads a clock.
"""

from __future__ import annotations

import math


def remaining_suspicion_time(n: int, k: int, elapsed: float, tmin: float, tmax: float) -> float:
    """memberlist remainingSuspicionTime: max - ln(n+1)/ln(k+1) * (max - min), floored to ms."""
    frac = math.log(n + 1.0) / math.log(k + 1.0)
    raw = tmax - frac * (tmax - tmin)
    timeout = math.floor(1000.0 * raw + 1e-9) / 1000.0
    return max(timeout, tmin) - elapsed


class Suspicion:
    """One suspected member's timer: ``deadline`` shortens with each new confirmation.

    The first accuser is remembered but is not a confirmation (memberlist counts
    only the others); with ``k`` < 1 (too few members to wait for witnesses) the
    timer is ``tmin`` from the start.
    """

    def __init__(self, accuser: str, k: int, tmin: float, tmax: float, now: float) -> None:
        self.start = now
        self.k = k
        self.tmin = tmin
        self.tmax = tmax
        self.confirmations = 0
        self._accusers = {accuser}
        self.deadline = now + (tmax if k >= 1 else tmin)

    def confirm(self, accuser: str) -> bool:
        """A suspicion from ``accuser``: True if it is new and shortened the timer (re-gossip it)."""
        if self.confirmations >= self.k or accuser in self._accusers:
            return False
        self._accusers.add(accuser)
        self.confirmations += 1
        self.deadline = self.start + remaining_suspicion_time(self.confirmations, self.k, 0.0, self.tmin, self.tmax)
        return True

    def expired(self, now: float) -> bool:
        return now >= self.deadline
