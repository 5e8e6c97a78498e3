"""Capped exponential backoff that stays finite for any number of failures.

``initial * 2 ** (failures - 1)`` overflows a float after 1,024 doublings
(``OverflowError``), which once killed retry loops that had been failing for
hours. The exponent is clamped before the power, so the result is the cap
from the first failure that reaches it on, for ever. Pure: the caller passes
its own random source for jitter.
"""

from __future__ import annotations

import math
import random as _random

# 2**62 is far past any cap a config can hold and still an exact float.
_MAX_EXPONENT = 62


def capped_backoff(failures: int, initial: float, maximum: float, *, jitter: float = 0.0,
                   rng: _random.Random | None = None) -> float:
    """Delay before the next attempt after ``failures`` consecutive failures.

    0 failures: 0. Then ``initial``, ``2*initial``, ... up to ``maximum``.
    ``jitter`` (0..1) spreads the result over ``[d*(1-jitter), d*(1+jitter)]``
    so that many nodes do not retry in lockstep. Always finite and >= 0.
    """
    if failures <= 0 or initial <= 0 or maximum <= 0:
        return 0.0
    exponent = min(failures - 1, _MAX_EXPONENT)
    delay = min(float(maximum), float(initial) * math.ldexp(1.0, exponent))
    if jitter > 0:
        r = (rng or _random).uniform(1.0 - jitter, 1.0 + jitter)
        delay *= r
    return delay
