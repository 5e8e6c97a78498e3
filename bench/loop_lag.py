"""How long one reconcile pass blocks the daemon's event loop (issue 9).

Run: ``python bench/loop_lag.py [--services 10000] [--passes 3]`` (no root, no kernel
changes). Builds the real ``Daemon`` from a config of N services in one BGP pool
(``accept = "address"``, the plan's per-VIP path), with the kernel-facing announcers
(BGP speaker, layer-2 binder, route exporter) replaced by recorders that only keep what
they are given, so what is measured is the daemon's own work on the event loop:
allocation, planning, the state file, status write-back, metrics, hooks. A probe task
asks to wake every millisecond; its largest wake-up delay is the longest loop stall.
Printed per pass: its wall time, the longest stall, the 99th percentile stall, and
how many probe wake-ups the loop served during the pass.

A gossip probe timeout is 500 ms (memberlist LAN): a stall longer than that gets the
node suspected by its peers. The machine may be loaded: figures are for comparison
before/after in the same run, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lbd.config import load_config
from lbd.daemon import Daemon
from lbd.looplag import LoopLagProbe
from lbd.testing.configs import bgp_services_config


class Recorder:
    """Stands in for an announcer: keeps what it is given, touches no kernel and no socket."""

    def __init__(self) -> None:
        self.routes: list[object] = []

    def set_rate(self, rate: float) -> None:
        pass

    async def set_peers(self, peers: Any, profiles: Any = ()) -> None:
        pass

    def apply(self, routes: Any) -> Any:
        self.routes = list(routes)
        return _done()

    def reannounce(self, vips: Any) -> None:
        pass

    def withdraw_all(self) -> None:
        self.routes = []

    async def close(self, graceful_restart: bool = False) -> None:
        self.routes = []

    async def cleanup_stale(self) -> int:
        return 0

    def status(self) -> list[dict[str, object]]:
        return []

    def bfd_status(self) -> list[dict[str, object]]:
        return []


class _done:  # apply() is sync for BGP and awaited for layer 2: be both
    def __await__(self):  # type: ignore[no-untyped-def]
        return iter(())


async def measure(services: int, passes: int) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="lbd-looplag-") as tmp:
        d = Daemon(load_config(bgp_services_config(Path(tmp), services, pool="10.88.0.0/15")))
        d.l2 = Recorder()  # type: ignore[assignment]
        d.bgp = Recorder()  # type: ignore[assignment]
        probe = LoopLagProbe(interval=0.001)
        probe.keep = True
        task = asyncio.ensure_future(probe.run())
        rows = []
        try:
            await d.apply_config()
            deadline = time.monotonic() + 60
            while len(d.services_now()) < services and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for n in range(passes):
                await asyncio.sleep(0.05)
                probe.reset()
                started = time.perf_counter()
                await d.reconcile()
                wall = time.perf_counter() - started
                await asyncio.sleep(0.01)  # the probe's wake-up after the pass counts too
                lags = sorted(probe.lags)
                rows.append({"pass": n + 1, "wall": wall, "max": probe.max_lag,
                             "p99": lags[int(len(lags) * 0.99)] if lags else 0.0,
                             "median": statistics.median(lags) if lags else 0.0, "wakeups": len(lags),
                             "bgp_routes": len(d.bgp.routes)})  # type: ignore[union-attr]
            await d.state_writer.flush()
        finally:
            task.cancel()
            await d.sources.close()
            await d.hook_runner.close()
            await d.netlink.aclose()
        return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    rows = asyncio.run(measure(args.services, args.passes))
    print(f"command: {' '.join(sys.argv)}")
    print(f"{'pass':>4} {'wall s':>8} {'longest stall ms':>17} {'p99 ms':>8} {'median ms':>9} {'wake-ups':>8} {'routes':>7}")
    for r in rows:
        print(f"{r['pass']:>4} {r['wall']:8.3f} {r['max'] * 1000:17.1f} {r['p99'] * 1000:8.1f} "
              f"{r['median'] * 1000:9.2f} {r['wakeups']:8d} {r['bgp_routes']:7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
