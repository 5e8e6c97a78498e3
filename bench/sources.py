"""The kubernetes source at scale, against the API-server emulator.

Run: ``python bench/sources.py [--services 5000] [--runs 1]``.

A/B against another tree of lbd (the pre-library code, say), in one run so that
the machine's load falls on both alike::

    git worktree add --detach /tmp/lbd-prelib 6f27615   # the last commit before lightkube
    python bench/sources.py --services 5000 --baseline-tree /tmp/lbd-prelib --runs 3

Each pair runs this tree (A) and the baseline (B) one after the other, each
in a fresh process (peak RSS is per process), alternating which goes first
(A B, B A, A B, ...); both use this tree's emulator and harness. It prints
every run, then per figure the range of A, of B, and of the per-pair ratio
A/B.

The emulator runs in its own process (``python -m tests.kubeapi_emulator
--services N``) so its memory and CPU do not count against lbd's. Like an
API server it serves lists at ``resourceVersion=0`` whole from its "watch
cache"; ``--no-watch-cache`` makes it page them (a server with the cache off). This process
plays the daemon: a ``SourceManager`` runs the kubernetes source (writer), and
on every snapshot change the services are allocated with ``lbd.ipam.allocate``
from a /16 pool and the results reported back (status written through the
status subresource). Measured:

- time from the source's start until all N Services have addresses (allocated
  by ipam) and until all have ``status.loadBalancer.ingress`` written (checked
  by listing them from the API server);
- with who-announces (issue 12), until every Service's annotation is written
  (its nodeAssigned Event is written just before);
- this process's peak RSS, and its growth over the baseline after imports
  (taken after the announcements: their burst is part of the peak);
- the CPU seconds this process and the emulator spent until all statuses
  were written (a load-independent view of the same work);
- with the N Services in place (and announced), the time for one new Service
  (created through the API) to get its address written into its status
  (median of 5).
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

from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

import aiohttp  # noqa: E402

TOKEN = "bench-token"
FIGURES = ("all_allocated_s", "all_status_written_s", "cpu_to_all_written_s", "emulator_cpu_to_all_written_s",
           "all_announced_s", "peak_rss_mib", "rss_growth_mib", "one_new_service_ms_median", "one_new_service_ms_max")
L: Any = SimpleNamespace()  # the lbd names the harness uses, from the tree under test (import_lbd)


def import_lbd(tree: Path) -> None:
    """Import lbd from ``tree`` (this checkout or an older one: the names moved over time)."""
    sys.path.insert(0, str(tree))
    import lbd

    assert Path(lbd.__file__).resolve().is_relative_to(tree.resolve()), f"lbd came from {lbd.__file__}"
    from lbd.ipam import allocate
    from lbd.model import Allocation
    from lbd.sources.base import ServiceResult
    from lbd.sources.kubernetes import KubernetesSource
    from lbd.sources.manager import SourceManager

    try:
        from lbd.config.schema import AddressRange, PoolConfig, SourceConfig
    except ImportError:  # before lbd/config/schema.py
        from lbd.model import AddressRange, PoolConfig, SourceConfig  # type: ignore[no-redef]
    L.__dict__.update(allocate=allocate, Allocation=Allocation, ServiceResult=ServiceResult,
                      KubernetesSource=KubernetesSource, SourceManager=SourceManager, SourceConfig=SourceConfig)
    L.POOL = PoolConfig("bench", (AddressRange(ipaddress.ip_address("10.77.0.0"),
                                               ipaddress.ip_address("10.77.255.255"), "10.77.0.0/16"),))


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, or of ``pid``: unlike wall time, barely moved by load."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Daemonish:
    """The reconcile loop the daemon runs, reduced to sources -> ipam -> report."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.mgr = L.SourceManager(node_name="bench-node", on_change=self.wake.set)
        self.allocations: dict[str, Any] = {}
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
            result = L.allocate([L.POOL], services, self.allocations)
            self.allocations = result.allocations
            now = time.perf_counter()
            for name in result.allocations:
                self.allocated_at.setdefault(name, now)
            results = {name: L.ServiceResult(addresses=a.addresses, pool=a.pool, nodes=("bench-node",))
                       for name, a in result.allocations.items()}
            results.update({name: L.ServiceResult(pending=why) for name, why in result.pending.items()})
            await self.mgr.report(results)
            self.passes += 1


async def count_ingress(session: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    async with session.get(f"{url}/api/v1/namespaces/bench/services",
                           headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        doc = await resp.json()
    items = doc["items"]
    return sum(1 for s in items if s.get("status", {}).get("loadBalancer", {}).get("ingress")), len(items)


async def run_once(n: int, watch_cache: bool = True) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        emu = subprocess.Popen(
            [sys.executable, "-m", "tests.kubeapi_emulator", "--services", str(n), "--token", TOKEN,
             "--kubeconfig", str(kubeconfig), "--bookmark-interval", "5",
             *([] if watch_cache else ["--no-watch-cache"])],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            assert emu.stdout is not None
            url = json.loads(emu.stdout.readline())["url"]
            # The daemon validates the source's options when it loads its config (which
            # imports the client library); that happens before any source starts.
            options = {"kubeconfig": str(kubeconfig)}
            assert L.KubernetesSource.validate(options) == []
            baseline = rss_mib()
            cpu0, emu_cpu0 = cpu_s(), cpu_s(emu.pid)
            d = Daemonish()
            loop_task = asyncio.create_task(d.loop())
            t0 = time.perf_counter()
            await d.mgr.reconfigure([L.SourceConfig("kubernetes", "k8s", options)])
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
                # CPU to get there, ours (lbd + this harness's allocate) and the emulator's: how
                # much work the writes took, which load does not stretch the way it stretches time.
                out["cpu_to_all_written_s"] = cpu_s() - cpu0
                out["emulator_cpu_to_all_written_s"] = cpu_s(emu.pid) - emu_cpu0
                out["status_409s"] = getattr(source, "conflicts", -1)  # -1: a tree that does not count them
                written, total = await count_ingress(session, url)
                assert written == total == n, f"the API server shows {written}/{total} with an address"
                # Who announces (a tree with it): the nodeAssigned Event and the annotation per
                # Service, written in the background after the statuses. The new-Service figure
                # below is for a settled source, so wait for them (a figure of their own).
                while getattr(source, "announce_writes", n) < n:
                    assert time.perf_counter() < deadline, f"timed out: {source.announce_writes}/{n} announced"
                    await asyncio.sleep(0.05)
                if hasattr(source, "announce_writes"):
                    out["all_announced_s"] = time.perf_counter() - t0
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


def run_child(tree: Path, n: int, watch_cache: bool = True) -> dict[str, float]:
    """One run in a fresh process importing lbd from ``tree``."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--services", str(n), "--tree", str(tree),
                           *([] if watch_cache else ["--no-watch-cache"])],
                          capture_output=True, text=True, timeout=1200)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"run of {tree} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def ab(n: int, pairs: int, tree: Path, baseline: Path, watch_cache: bool = True) -> None:
    rows: list[tuple[dict, dict]] = []
    for pair in range(pairs):
        order = [("A", tree), ("B", baseline)]
        if pair % 2:
            order.reverse()  # A B, B A, ...: neither side always runs on the warmer (or busier) machine
        got = {}
        for label, side_tree in order:
            got[label] = run_child(side_tree, n, watch_cache)
            print(json.dumps({"pair": pair, "side": label, "tree": str(side_tree), **got[label]}), flush=True)
        rows.append((got["A"], got["B"]))
    summary: dict[str, Any] = {"services": n, "pairs": pairs, "A": str(tree), "B": str(baseline), "watch_cache": watch_cache}
    for key in FIGURES:
        a = [r[0][key] for r in rows if key in r[0]]
        b = [r[1][key] for r in rows if key in r[1]]
        ratios = [x / y for x, y in zip(a, b) if y]
        if a and b:
            summary[key] = {"A": [min(a), max(a)], "B": [min(b), max(b)],
                            "A/B": [round(min(ratios), 2), round(max(ratios), 2)],
                            "A/B median": round(statistics.median(ratios), 2)}
    print(json.dumps(summary, indent=1), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=1, help="runs (with --baseline-tree: A/B pairs)")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="import lbd from this checkout (default: this one); with --baseline-tree, side A")
    parser.add_argument("--baseline-tree", type=Path, help="run A/B pairs: this tree against that one")
    parser.add_argument("--no-watch-cache", action="store_true",
                        help="the emulator pages lists at resourceVersion=0 too (an API server without its watch cache)")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.baseline_tree is not None:
        ab(args.services, args.runs, args.tree.resolve(), args.baseline_tree.resolve(), not args.no_watch_cache)
        return
    import logging

    import structlog

    import_lbd(args.tree.resolve())
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    for run in range(args.runs):
        figures = asyncio.run(run_once(args.services, not args.no_watch_cache))
        if run:  # ru_maxrss is the process's peak: only the first run's growth means anything
            figures.pop("rss_growth_mib")
        print(json.dumps({"run": run, "services": args.services,
                          **{k: round(v, 2) for k, v in figures.items()}}), flush=True)


if __name__ == "__main__":
    main()
