"""The announcement scheduler, with a simulated clock."""

from __future__ import annotations

from collections import Counter, deque

import pytest

from lbd.l2.pacer import AnnounceScheduler


def run(s: AnnounceScheduler[int], start: float, until: float, log: list[tuple[float, int]]) -> float:
    """Drive the scheduler as the asyncio loop does: poll, sleep until next_wake."""
    now = start
    for _ in range(1_000_000):
        for key in s.poll(now):
            log.append((now, key))
        wake = s.next_wake(now)
        if wake is None or wake > until:
            return until
        assert wake >= now
        now = max(wake, now + 1e-9) if wake <= now else wake
    raise AssertionError("did not settle")


def max_per_second(times: list[float]) -> int:
    window: deque[float] = deque()
    worst = 0
    for t in times:
        window.append(t)
        while window[0] <= t - 1.0:
            window.popleft()
        worst = max(worst, len(window))
    return worst


def test_ten_thousand_takeovers_first_packets_have_their_own_cap() -> None:
    rate, takeover, n = 1000, 10_000, 10_000
    s: AnnounceScheduler[int] = AnnounceScheduler(rate, burst_spacing=0.1, takeover_rate=takeover)
    log: list[tuple[float, int]] = []
    for vip in range(n):
        s.schedule(vip, 0.0, burst=3, interval=10.0)
    run(s, 0.0, 60.0, log)
    first: dict[int, float] = {}
    repeats: list[float] = []
    for t, vip in log:
        if vip in first:
            repeats.append(t)
        else:
            first[vip] = t
    assert len(first) == n
    # Every VIP's first packet within n / takeover_rate, under its own cap...
    assert max(first.values()) <= n / takeover + 1e-6
    assert max_per_second(sorted(first.values())) <= takeover
    # ... and the rest of the bursts and the repeats under announce_rate.
    assert max_per_second(repeats) <= rate
    counts = Counter(vip for _, vip in log)
    assert all(c >= 3 for c in counts.values())  # the burst of 3 reached every VIP (then periodic)


def test_a_low_takeover_rate_holds() -> None:
    s: AnnounceScheduler[int] = AnnounceScheduler(1000, burst_spacing=0.1, takeover_rate=100)
    log: list[tuple[float, int]] = []
    for vip in range(1000):
        s.schedule(vip, 0.0, burst=1, interval=0.0)
    run(s, 0.0, 60.0, log)
    assert len(log) == 1000 and max_per_second([t for t, _ in log]) <= 100
    assert max(t for t, _ in log) >= 9.0  # 1,000 first packets at 100/s: about 10 s


def test_takeovers_do_not_wait_behind_a_backlog_of_repeats() -> None:
    rate = 100
    s: AnnounceScheduler[int] = AnnounceScheduler(rate, burst_spacing=0.1, takeover_rate=1000)
    log: list[tuple[float, int]] = []
    for vip in range(500):  # old VIPs, periodic every second: more than the cap can carry
        s.schedule(vip, 0.0, burst=1, interval=1.0)
    now = run(s, 0.0, 20.0, log)
    log.clear()
    for vip in range(1000, 1050):
        s.schedule(vip, now, burst=1, interval=0.0)
    run(s, now, now + 5.0, log)
    new = [t for t, vip in log if vip >= 1000]
    assert len(new) == 50 and max(new) <= now + 0.05  # all at once: their own budget (50/s-slice of 1000/s)
    assert max_per_second([t for t, vip in log if vip < 1000]) <= rate


def test_withdrawal_cancels_pending_packets() -> None:
    s: AnnounceScheduler[int] = AnnounceScheduler(10, burst_spacing=0.1)
    for vip in range(100):
        s.schedule(vip, 0.0, burst=3, interval=1.0)
    log: list[tuple[float, int]] = []
    run(s, 0.0, 0.5, log)
    for vip in range(0, 100, 2):
        s.cancel(vip)
    later: list[tuple[float, int]] = []
    run(s, 0.5, 100.0, later)
    assert later and all(vip % 2 == 1 for _, vip in later)
    for vip in range(1, 100, 2):
        s.cancel(vip)
    assert s.next_wake(100.0) is None


def test_burst_then_interval_and_interval_changes() -> None:
    s: AnnounceScheduler[str] = AnnounceScheduler(1000, burst_spacing=0.1)
    s.schedule("a", 0.0, burst=3, interval=10.0)
    log: list[tuple[float, str]] = []
    run(s, 0.0, 25.0, log)
    assert [round(t, 3) for t, _ in log] == [0.0, 0.1, 0.2, 10.2, 20.2]
    s.set_interval("a", 25.0, 0.0)  # periodic off: the pending repeat is dropped
    log.clear()
    run(s, 25.0, 100.0, log)
    assert log == []
    s.set_interval("a", 100.0, 5.0)  # on again: periodic only, no new burst
    run(s, 100.0, 111.0, log)
    assert [round(t, 3) for t, _ in log] == [105.0, 110.0]
    s.schedule("a", 111.0, burst=2, interval=0.0)  # reannounce: a new burst at once, nothing after
    log.clear()
    run(s, 111.0, 200.0, log)
    assert [round(t, 3) for t, _ in log] == [111.0, 111.1]


def test_rates_must_be_positive_and_can_change() -> None:
    with pytest.raises(ValueError):
        AnnounceScheduler(0)
    with pytest.raises(ValueError):
        AnnounceScheduler(1000, takeover_rate=0)
    s: AnnounceScheduler[int] = AnnounceScheduler(1000)
    with pytest.raises(ValueError):
        s.set_rate(-1)
    with pytest.raises(ValueError):
        s.set_takeover_rate(0)
    s.set_rate(10)
    s.set_takeover_rate(20)
    assert (s.rate, s.takeover_rate) == (10, 20)
    for vip in range(100):
        s.schedule(vip, 0.0, burst=2, interval=0.0)
    log: list[tuple[float, int]] = []
    run(s, 0.0, 20.0, log)
    seen: set[int] = set()
    firsts, seconds = [], []
    for t, vip in log:
        (seconds if vip in seen else firsts).append(t)
        seen.add(vip)
    assert len(firsts) == len(seconds) == 100
    assert max_per_second(firsts) <= 20 and max_per_second(seconds) <= 10


def test_takeovers_pending_until_every_first_packet_is_out() -> None:
    s: AnnounceScheduler[int] = AnnounceScheduler(1000, burst_spacing=0.1, takeover_rate=100)
    assert not s.takeovers_pending()
    for vip in range(20):
        s.schedule(vip, 0.0, burst=3, interval=10.0)
    s.cancel(19)  # withdrawn: not waited for
    log: list[tuple[float, int]] = []
    run(s, 0.0, 0.05, log)
    assert s.takeovers_pending()  # 100/s: 5 or 6 of 19 in 50 ms
    run(s, 0.05, 0.5, log)
    assert not s.takeovers_pending()  # repeats and periodic ones do not count
    assert {vip for _, vip in log} == set(range(19))
