"""Lifeguard's local health awareness, as memberlist ``awareness.go`` keeps it, sans-IO.

A node that misses acks and nacks, or has to refute suspicions about itself, may
be the slow one (a loaded CPU, a lossy link of its own). Its health score rises,
and its probe interval stretches by ``score + 1``, so it accuses others less
readily; each successful probe lowers the score again (Dadgar et al.,
"Lifeguard", 2018: "LHA-Probe").
"""

from __future__ import annotations


class Awareness:
    """A health score in ``[0, max_multiplier)``; 0 is healthy."""

    def __init__(self, max_multiplier: int) -> None:
        self.max_multiplier = max_multiplier
        self._score = 0

    @property
    def score(self) -> int:
        return self._score

    def apply_delta(self, delta: int) -> None:
        """Raise (missed ack or nack, a refutation) or lower (a probe answered) the score, clamped."""
        self._score = min(max(self._score + delta, 0), self.max_multiplier - 1)

    def scale(self, timeout: float) -> float:
        """``timeout`` stretched by the score: unchanged while healthy."""
        return timeout * (self._score + 1)
