"""Graceful stop of a BGP node, with the real daemon: the router drops the
node's path right after SIGTERM (withdrawal first, before leaving the cluster
and before the VIP goes, which stays [node] stop_linger longer) and a client
opening a new TCP connection every 10 ms through the router's ECMP route loses
none, except a connection caught by the router's rehash (see rehash_resets).
The lab and the client are bench/bgp_failover.py's (two clustered lbd nodes,
BIRD router with BFD)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lbd.testing.netlab import require_binary

pytestmark = [pytest.mark.lab, pytest.mark.interop]

BENCH = Path(__file__).resolve().parents[2] / "bench"


def rehash_resets(r) -> list:  # type: ignore[no-untyped-def]
    """The failed probes that are the router's ECMP rehash and nothing lbd decides: a connection
    opened to n1 just before the router's FIB moved n1's flows to n2, whose next segment then
    reached n2 and was reset there (traced with tcpdump, issue 11). Reset, not timed out, and
    started before the route left the router's kernel (1 ms of slack: the monitor's clock)."""
    return [f for f in r.failures
            if f[2] == "ECONNRESET" and r.route_gone is not None and f[0] <= r.route_gone + 0.001]


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
    rehashed = 0
    for r in results:
        assert r.probes > 100, r
        # Generous (tests assert behaviour, bench/ measures speed): the withdrawal does not wait
        # for leaving the cluster or for the hold time; the benchmark sees a few milliseconds.
        assert r.route_gone is not None and r.route_gone < 1.0, r
        # What lbd decides: no probe lost to a VIP removed too early or a route left behind
        # (those time out); only the rehash's resets, at most one per stop in practice.
        known = rehash_resets(r)
        assert len(r.failures) == len(known) <= 2, r
        rehashed += len(known)
    if rehashed:
        # Known limit (issue 11, docs/bfd.md "What no speaker can prevent"): about one probe in
        # 40 stops, with BIRD as the speaker too; it needs daisy chaining between the nodes.
        pytest.xfail(f"{rehashed} probe(s) reset by the router's ECMP rehash at the route change")
