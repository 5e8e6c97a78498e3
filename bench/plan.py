"""``lbd plan`` on a large config, against the real daemon in a namespace lab; and, with
``--component``, one change through allocation, planning and the hooks' event diff alone.

Run (root): ``python bench/plan.py [--services 10000] [--runs 3]``.
Component (no root, no lab): ``python bench/plan.py --component [--sizes 10000,100000] [--changes 20]``.

Component figures (issue 9), N services in one BGP pool, then one service added or removed
at a time, median and max over ``--changes``: the from-scratch path the daemon used to run
on every change (``allocate`` + ``plan`` + ``observe``/``transitions``) against the
incremental one it runs now (``IncrementalAllocator`` + ``IncrementalPlanner`` + the same
event diff over the changed decisions). Not the daemon end to end: no event loop, netlink,
BGP speaker or state file (``bench/scale.py`` measures those).

The daemon runs with N static services allocated from a /18 pool, with an
L2 advertisement for the pool: the planner runs the whole election for every
VIP, but the pool lies outside every subnet of the node, so no address is
bound (binding N addresses would measure netlink, not the plan). Measured,
median of ``--runs``:

- ``lbd plan`` with no change (the file the daemon runs): wall time of the
  command, Python start-up of the client included;
- ``lbd plan --config NEW`` where NEW shrinks the pool by 100 addresses in use
  (100 services re-addressed), removes 100 services and adds 100 new ones.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lbd.hooks import observe, transitions  # noqa: E402
from lbd.ipam import IncrementalAllocator, allocate  # noqa: E402
from lbd.model import Member, ServiceSpec
from lbd.config.schema import AddressRange, BgpAdvertisementConfig, BgpPeerConfig, Config, NodeConfig, PoolConfig
from lbd.planner import PlannerInput, plan  # noqa: E402
from lbd.planner.incremental import IncrementalPlanner  # noqa: E402
from lbd.testing.netlab import Lab, LbdNode, wait_for  # noqa: E402


def config(services: range, first: str) -> str:
    body = f'[[pool]]\nname = "big"\naddresses = ["{first}-10.88.63.255"]\n\n[[l2_advertisement]]\npools = ["big"]\n\n'
    return body + "".join(f'[[service]]\nname = "s{i}"\n' for i in services)


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    return time.perf_counter() - start, result


def component_config() -> Config:
    first, last = ipaddress.ip_address("10.88.0.0"), ipaddress.ip_address("10.91.255.255")
    return Config(
        path=Path("/dev/null"), node=NodeConfig(name="n1"),
        pools=(PoolConfig("bgp", (AddressRange(first, last, f"{first}-{last}"),)),),
        bgp_peers=(BgpPeerConfig(name="r1", my_asn=64512, peer_address=ipaddress.ip_address("10.77.0.1")),),
        bgp_advertisements=(BgpAdvertisementConfig(name="b", pools=("bgp",)),),
    )


def component(n: int, changes: int) -> None:
    """One service added or removed with ``n`` present: from scratch against incremental."""
    cfg = component_config()
    members = [Member(name="n1")]
    present = {f"s{i}": ServiceSpec(name=f"s{i}", pool="bgp") for i in range(n)}
    extra = ServiceSpec(name="churn", pool="bgp")
    allocator, planner = IncrementalAllocator(), IncrementalPlanner()

    def inputs(allocations: dict, services: dict) -> PlannerInput:
        return PlannerInput(config=cfg, node="n1", allocations=allocations, services=services, members=members)

    start = time.perf_counter()
    allocations = allocator.allocate(cfg.pools, list(present.values()), {}).allocations
    decisions = planner.plan(inputs(allocations, present)).decisions
    seen = observe(decisions, [], members)
    first = time.perf_counter() - start
    full_times, incremental_times = [], []
    services = present
    for i in range(changes):
        services = {**present, "churn": extra} if i % 2 == 0 else present
        start = time.perf_counter()
        reference = allocate(cfg.pools, list(services.values()), allocations).allocations
        transitions(observe(plan(inputs(reference, services)).decisions, [], members), seen)
        full_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        allocations = allocator.allocate(cfg.pools, list(services.values()), allocations).allocations
        now = observe(planner.plan(inputs(allocations, services)).decisions, [], members)
        transitions(seen, now)
        seen = now
        incremental_times.append(time.perf_counter() - start)
        assert not allocator.full and not planner.full and allocations == reference

    def ms(values: list[float]) -> str:
        return f"p50 {statistics.median(values) * 1000:,.1f} ms, max {max(values) * 1000:,.1f} ms"

    print(f"component, {n:,} services in a BGP pool, one added or removed ({changes} changes):")
    print(f"  first pass (incremental path, everything new): {first:.2f} s")
    print(f"  from scratch (allocate + plan + hooks diff): {ms(full_times)}")
    print(f"  incremental (IncrementalAllocator + IncrementalPlanner + hooks diff): {ms(incremental_times)}")
    print(f"  ratio of medians: {statistics.median(full_times) / statistics.median(incremental_times):,.0f}x")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--component", action="store_true", help="allocation, planning and hooks alone")
    parser.add_argument("--sizes", default="10000,100000", help="with --component: services present")
    parser.add_argument("--changes", type=int, default=20, help="with --component: changes measured")
    args = parser.parse_args()
    if args.component:
        for size in args.sizes.split(","):
            component(int(size), args.changes)
        return 0
    n = args.services
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        host = lab.add_host("node", ["10.77.0.2/24"])
        lbd = LbdNode(host, tmp, config(range(n), "10.88.0.0"), name="node1").start(timeout=120)
        try:
            wait_for(lambda: len(lbd.status()["services"]) == n and all(
                s["addresses"] for s in lbd.status()["services"]), 300, interval=1.0, what="every service allocated")
            new = Path(tmp) / "new.toml"
            # The pool loses its first 100 addresses (s0..s99 re-addressed), s100..s199 go, n..n+99 come.
            text = lbd.config_path.read_text().split("[[pool]]")[0] + config(
                [*range(0, 100), *range(200, n + 100)], "10.88.0.100")
            new.write_text(text)
            base = [str(lbd.bindir / "lbd"), "plan", "--socket", str(lbd.socket), "--json"]
            same, changed = [], []
            for _ in range(args.runs):
                seconds, result = timed(base)
                assert result.returncode == 0, result.stderr
                same.append(seconds)
                seconds, result = timed(base + ["--config", str(new)])
                assert result.returncode == 2, result.stderr
                diff = json.loads(result.stdout)
                changed.append(seconds)
            print(f"services: {n}")
            print(f"lbd plan, no change: median {statistics.median(same):.2f} s over {args.runs} runs "
                  f"({', '.join(f'{s:.2f}' for s in same)})")
            print(f"lbd plan --config NEW: median {statistics.median(changed):.2f} s "
                  f"({', '.join(f'{s:.2f}' for s in changed)}): {len(diff['readdressed'])} re-addressed, "
                  f"{len(diff['released'])} released, {len(diff['allocated'])} allocated, "
                  f"{len(diff['vips_added'])} VIPs added, {len(diff['vips_withdrawn'])} withdrawn")
        finally:
            lbd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
