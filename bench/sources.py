"""The kubernetes source at scale, against the API-server emulator.

Run: ``python bench/sources.py [--services 5000] [--runs 1]``.

The emulator runs in its own process (``python -m tests.kubeapi_emulator
--services N``) so its memory and CPU do not count against lbd's. This process
plays the daemon: a ``SourceManager`` runs the kubernetes source (writer), and
on every snapshot change the services are allocated with ``lbd.ipam.allocate``
from a /16 pool and the results reported back (status written through the
status subresource). Measured:

- time from the source's start until all N Services have addresses (allocated
  by ipam) and until all have ``status.loadBalancer.ingress`` written (checked
  by listing them from the API server);
- this process's peak RSS, and its growth over the baseline after imports;
- with the N Services in place, the time for one new Service (created through
  the API) to get its address written into its status (median of 5).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from lbd.ipam import allocate  # noqa: E402
from lbd.config.schema import AddressRange, PoolConfig, SourceConfig  # noqa: E402
from lbd.model import Allocation  # noqa: E402
from lbd.sources.base import ServiceResult  # noqa: E402
from lbd.sources.kubernetes import KubernetesSource  # noqa: E402
from lbd.sources.manager import SourceManager  # noqa: E402

TOKEN = "bench-token"
POOL = PoolConfig("bench", (AddressRange(ipaddress.ip_address("10.77.0.0"), ipaddress.ip_address("10.77.255.255"),
                                         "10.77.0.0/16"),))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Daemonish:
    """The reconcile loop the daemon runs, reduced to sources -> ipam -> report."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.mgr = SourceManager(node_name="bench-node", on_change=self.wake.set)
        self.allocations: dict[str, Allocation] = {}
        self.allocated_at: dict[str, float] = {}
        self.passes = 0

    async def loop(self) -> None:
        while True:
            # Like the daemon's loop, also on a timer (RESYNC_INTERVAL there): a report
            # the manager timed out on a loaded machine is retried instead of stalling the run.
            try:
                await asyncio.wait_for(self.wake.wait(), 2.0)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            services = self.mgr.services()
            result = allocate([POOL], services, self.allocations)
            self.allocations = result.allocations
            now = time.perf_counter()
            for name in result.allocations:
                self.allocated_at.setdefault(name, now)
            results = {name: ServiceResult(addresses=a.addresses, pool=a.pool, nodes=("bench-node",))
                       for name, a in result.allocations.items()}
            results.update({name: ServiceResult(pending=why) for name, why in result.pending.items()})
            await self.mgr.report(results)
            self.passes += 1


async def count_ingress(session: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    async with session.get(f"{url}/api/v1/namespaces/bench/services",
                           headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        doc = await resp.json()
    items = doc["items"]
    return sum(1 for s in items if s.get("status", {}).get("loadBalancer", {}).get("ingress")), len(items)


async def run_once(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        emu = subprocess.Popen(
            [sys.executable, "-m", "tests.kubeapi_emulator", "--services", str(n), "--token", TOKEN,
             "--kubeconfig", str(kubeconfig), "--bookmark-interval", "5"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            assert emu.stdout is not None
            url = json.loads(emu.stdout.readline())["url"]
            # The daemon validates the source's options when it loads its config (which
            # imports the client library); that happens before any source starts.
            options = {"kubeconfig": str(kubeconfig)}
            assert KubernetesSource.validate(options) == []
            baseline = rss_mib()
            d = Daemonish()
            loop_task = asyncio.create_task(d.loop())
            t0 = time.perf_counter()
            await d.mgr.reconfigure([SourceConfig("kubernetes", "k8s", options)])
            d.mgr.set_writer(True)
            out: dict[str, float] = {}
            async with aiohttp.ClientSession() as session:
                deadline = t0 + 600
                while len(d.allocated_at) < n:
                    assert time.perf_counter() < deadline, "timed out waiting for allocations"
                    await asyncio.sleep(0.01)
                out["all_allocated_s"] = max(d.allocated_at.values()) - t0
                source = d.mgr._running["k8s"].source
                # Poll the source's own counter (listing 5,000 objects every few
                # ms would load the emulator and skew the figure), then verify.
                while source.status_writes < n:  # type: ignore[union-attr]
                    assert time.perf_counter() < deadline, f"timed out: {source.status_writes}/{n} written"
                    await asyncio.sleep(0.01)
                out["all_status_written_s"] = time.perf_counter() - t0
                written, total = await count_ingress(session, url)
                assert written == total == n, f"the API server shows {written}/{total} with an address"
                out["peak_rss_mib"] = rss_mib()
                out["rss_growth_mib"] = rss_mib() - baseline
                await asyncio.sleep(1.0)  # settle: the watch catches up with our writes
                writes_before = d.mgr._running["k8s"].source.status_writes  # type: ignore[union-attr]
                one: list[float] = []
                for i in range(5):
                    name = f"new-{i}"
                    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "bench"},
                            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}}
                    t1 = time.perf_counter()
                    async with session.post(f"{url}/api/v1/namespaces/bench/services", json=body,
                                            headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                        assert resp.status == 201, await resp.text()
                    while True:
                        async with session.get(f"{url}/api/v1/namespaces/bench/services/{name}",
                                               headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                            svc = await resp.json()
                        if svc.get("status", {}).get("loadBalancer", {}).get("ingress"):
                            break
                        assert time.perf_counter() - t1 < 60, "new service never got an address"
                        await asyncio.sleep(0.005)
                    one.append(time.perf_counter() - t1)
                out["one_new_service_ms_median"] = statistics.median(one) * 1000
                out["one_new_service_ms_max"] = max(one) * 1000
                out["extra_status_writes"] = (d.mgr._running["k8s"].source.status_writes  # type: ignore[union-attr]
                                              - writes_before - len(one))
                out["reconcile_passes"] = d.passes
            loop_task.cancel()
            await d.mgr.close()
            return out
        finally:
            emu.terminate()
            emu.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    for run in range(args.runs):
        figures = asyncio.run(run_once(args.services))
        if run:  # ru_maxrss is the process's peak: only the first run's growth means anything
            figures.pop("rss_growth_mib")
        print(json.dumps({"run": run, "services": args.services,
                          **{k: round(v, 2) for k, v in figures.items()}}), flush=True)


if __name__ == "__main__":
    main()
