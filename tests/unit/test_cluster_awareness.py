"""Lifeguard's local health score (lbd.cluster.awareness), with memberlist's own test cases."""

from __future__ import annotations

from lbd.cluster.awareness import Awareness


def test_score_is_clamped_to_zero_and_max_minus_one() -> None:
    # memberlist TestAwareness: max 8, a sequence of deltas, the score after each and 1 s scaled.
    a = Awareness(8)
    steps = [(0, 0), (-1, 0), (-10, 0), (1, 1), (-1, 0), (10, 7), (-1, 6), (-1, 5), (-1, 4), (-1, 3),
             (-1, 2), (-1, 1), (-1, 0), (-1, 0)]
    for i, (delta, want) in enumerate(steps):
        a.apply_delta(delta)
        assert a.score == want, i
        assert a.scale(1.0) == want + 1, i


def test_timeouts_stretch_by_score_plus_one() -> None:
    a = Awareness(8)
    assert a.scale(1.0) == 1.0  # healthy: unchanged
    a.apply_delta(2)
    assert a.scale(1.0) == 3.0
    a.apply_delta(100)
    assert a.scale(0.5) == 4.0  # at most max_multiplier times


def test_a_multiplier_of_one_never_scales() -> None:
    a = Awareness(1)
    a.apply_delta(5)
    assert a.score == 0 and a.scale(2.0) == 2.0
