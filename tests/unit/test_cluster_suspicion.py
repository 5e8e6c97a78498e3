"""Lifeguard's suspicion timer (lbd.cluster.suspicion) on a simulated clock, with memberlist's own test cases."""

from __future__ import annotations

import pytest

from lbd.cluster.suspicion import Suspicion, remaining_suspicion_time

T0 = 1000.0


def test_remaining_time_shrinks_logarithmically_from_max_to_min() -> None:
    # memberlist's remainingSuspicionTime cases: k = 3, min 2 s, max 30 s, (n, elapsed) -> remaining.
    cases = [(0, 0.0, 30.0), (1, 2.0, 14.0), (2, 3.0, 4.810), (3, 4.0, -2.0), (4, 5.0, -3.0), (5, 10.0, -8.0)]
    for n, elapsed, want in cases:
        assert remaining_suspicion_time(n, 3, elapsed, 2.0, 30.0) == pytest.approx(want, abs=1e-9), n


def test_a_lone_accuser_waits_the_full_maximum() -> None:
    s = Suspicion("a", k=3, tmin=2.0, tmax=30.0, now=T0)
    assert s.deadline == T0 + 30.0
    assert not s.expired(T0 + 29.999)
    assert s.expired(T0 + 30.0)


def test_each_independent_confirmation_shortens_the_timer_down_to_the_minimum() -> None:
    # memberlist TestSuspicion: k = 3, min 0.5 s, max 2 s; 1250 ms after one witness, ~810 after two.
    s = Suspicion("me", k=3, tmin=0.5, tmax=2.0, now=T0)
    assert s.deadline == T0 + 2.0
    assert s.confirm("foo") and s.confirmations == 1
    assert s.deadline == pytest.approx(T0 + 1.25)
    assert s.confirm("bar") and s.deadline == pytest.approx(T0 + 0.811)  # floored to the millisecond
    assert s.confirm("baz") and s.deadline == pytest.approx(T0 + 0.5)
    # k reached: a fourth witness changes nothing (and is not re-gossiped).
    assert not s.confirm("zoo") and s.confirmations == 3 and s.deadline == pytest.approx(T0 + 0.5)


def test_the_accuser_and_repeats_do_not_count() -> None:
    s = Suspicion("a", k=3, tmin=2.0, tmax=30.0, now=T0)
    assert not s.confirm("a")  # the first accuser is not its own witness
    assert s.confirm("b")
    assert not s.confirm("b")  # nor is a witness twice
    assert s.confirmations == 1


def test_the_timer_runs_from_the_start_not_from_the_confirmation() -> None:
    s = Suspicion("a", k=1, tmin=4.0, tmax=24.0, now=T0)
    assert s.confirm("b")  # confirmed later: the deadline is still start + min
    assert s.deadline == pytest.approx(T0 + 4.0)
    assert s.expired(T0 + 4.0)


def test_with_no_witnesses_to_wait_for_the_minimum_applies_at_once() -> None:
    # k = 0: too few members for confirmations (memberlist: timeout = min).
    s = Suspicion("a", k=0, tmin=4.0, tmax=24.0, now=T0)
    assert s.deadline == T0 + 4.0
    assert not s.confirm("b")
