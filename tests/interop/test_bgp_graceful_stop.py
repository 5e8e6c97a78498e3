"""Graceful stop of a BGP node, with the real daemon: the router drops the
node's path right after SIGTERM (withdrawal first, before leaving the cluster
and before the VIP goes) and a client opening a new TCP connection every 10 ms
through the router's ECMP route loses none. The lab and the client are
bench/bgp_failover.py's (two clustered lbd nodes, BIRD router with BFD)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lbd.testing.netlab import require_binary

pytestmark = [pytest.mark.lab, pytest.mark.interop]

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.xfail(strict=False, reason="known defect (issue 11, open): about 1 run in 4 loses one probe "
                   "~2.6 ms after SIGTERM (CI run at b2d6810: 1 of 243); cause not found yet")
def test_sigterm_withdraws_first_and_loses_no_connection(lab, tmp_path):  # type: ignore[no-untyped-def]
    require_binary("bird", "birdc", "stdbuf")
    sys.path.insert(0, str(BENCH))
    try:
        import bgp_failover as bf
    finally:
        sys.path.remove(str(BENCH))
    blab = bf.BgpLab(lab, tmp_path, bf.Profile(100, 3))
    system = bf.LbdSystem(blab)
    try:
        for name in bf.NODES:
            system.start(name)
        results = [bf.run_once(blab, system, "graceful", interval=0.01, probe_timeout=0.5) for _ in range(2)]
    finally:
        system.close()
        blab.close()
    for r in results:
        assert r.probes > 100, r
        assert r.failed == 0, r
        # Generous (tests assert behaviour, bench/ measures speed): the withdrawal does not wait
        # for leaving the cluster or for the hold time; the benchmark sees a few milliseconds.
        assert r.route_gone is not None and r.route_gone < 1.0, r
