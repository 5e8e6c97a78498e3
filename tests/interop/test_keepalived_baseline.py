"""The failover harness against keepalived VRRP: proves bench/failover.py works.

One crash (link down + SIGKILL of the master) and one graceful stop (SIGTERM)
with ``advert_int 0.1``: the VIP moves to another node, the client is served
again, and the faulty node is restored. Behaviour only; the timing figures are
the benchmark's job (``bench/failover.py``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from lbd.testing.netlab import require_binary

pytestmark = [pytest.mark.lab, pytest.mark.interop]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "failover.py"


def load_failover():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_failover", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_failover", module)
    spec.loader.exec_module(module)
    return module


def test_outage_is_the_largest_gap_up_to_the_new_owner() -> None:
    fo = load_failover()
    answers = [[0.0, "n1", 0], [0.002, "n1", 1], [0.004, "n1", 2], [0.5, "n2", 3], [0.502, "n2", 4]]
    assert fo.outage(answers, 0.003, "n1") == pytest.approx((0.496, "n2"))
    # Overlapping handover (the old owner still answers after the fault): the
    # client never waited longer than the largest gap.
    overlap = [[0.0, "n1", 0], [0.01, "n1", 1], [0.03, "n1", 2], [0.031, "n2", 3]]
    assert fo.outage(overlap, 0.005, "n1") == pytest.approx((0.02, "n2"))
    assert fo.outage(answers, -1.0, "n1") is None  # nothing before the fault
    assert fo.outage(answers[:3], 0.003, "n1") is None  # nobody took over
    assert fo.percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 90) == 9.0


@pytest.mark.timeout(180)
def test_keepalived_crash_and_graceful_failover(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    require_binary("keepalived")
    fo = load_failover()
    flab = fo.build_lab(lab, tmp_path)
    system = fo.KeepalivedSystem(advert_int=0.1)
    system.start(flab)
    try:
        assert system.wait_settled(30.0) == "n1"  # the highest priority
        for fault in ("crash", "graceful"):
            result = fo.run_once(system, fault, settle_timeout=30.0, failover_timeout=20.0)
            assert result.error is None, result
            assert result.old_owner == "n1"
            assert result.new_owner in ("n2", "n3")
            assert result.outage is not None and 0.0 < result.outage < 20.0
        # Restored: n1 is back and preempts, the client is served by it again.
        assert system.wait_settled(30.0) == "n1"
        probe = fo.Probe(flab)
        try:
            assert probe.wait(lambda e: e["node"] == "n1", timeout=10.0) is not None
        finally:
            probe.stop()
    finally:
        system.close()
