"""One service added or removed with N present, step by step through the daemon's per-change
path, as components (issue 9). No root, no lab, no event loop; ``bench/scale.py`` measures the
daemon end to end.

Run: ``python bench/churn_steps.py [--sizes 10000,100000] [--changes 40]``.

The steps, in the daemon's order, each timed on its own (median and max over ``--changes``):

- ``source``: the directory source's delta (one service) applied by the source manager
  (``Publisher.changes``), and the daemon's copy of the merged services (``services_now``);
- ``allocate``: ``IncrementalAllocator``;
- ``plan``: ``IncrementalPlanner``;
- ``bgp``: ``BgpAnnouncer.apply`` of the plan's table to one peer whose Adj-RIB-Out is
  Established (a packer, no socket): the UPDATE's bytes are built;
- (after the first pass the live objects are frozen out of the cyclic collector, as the
  daemon does);
- then, after the UPDATE (off its critical path): ``write-back`` (``ResultBook`` and the
  manager's fan-out), ``state`` (``StateEncoder``: the file's bytes; the write and fsync are
  in a worker thread and not timed), ``metrics`` (``lbd.metrics.update``) and ``hooks``
  (``observe`` + ``transitions``).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import asyncio
import gc
import ipaddress
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lbd import metrics  # noqa: E402
from lbd.bgp.announcer import BgpAnnouncer  # noqa: E402
from lbd.bgp.packing import EncodeContext, UpdatePacker  # noqa: E402
from lbd.bgp.rib import AdjRibOut  # noqa: E402
from lbd.config.schema import (AddressRange, BgpAdvertisementConfig, BgpPeerConfig, Config, NodeConfig,  # noqa: E402
                               PoolConfig, SourceConfig)
from lbd.bgp.settings import IPV4_UNICAST  # noqa: E402
from lbd.hooks import observe, transitions  # noqa: E402
from lbd.ipam import IncrementalAllocator  # noqa: E402
from lbd.model import Member, ServiceSpec  # noqa: E402
from lbd.planner import PlannerInput  # noqa: E402
from lbd.planner.incremental import IncrementalPlanner  # noqa: E402
from lbd.sources.manager import Publisher, SourceManager, _Running  # noqa: E402
from lbd.state import PersistedState, StateEncoder  # noqa: E402
from lbd.writeback import ResultBook  # noqa: E402

CRITICAL = ("source", "allocate", "plan", "bgp")
AFTER = ("write-back", "state", "metrics", "hooks")


def config() -> Config:
    first, last = ipaddress.ip_address("10.88.0.0"), ipaddress.ip_address("10.91.255.255")
    return Config(
        path=Path("/dev/null"), node=NodeConfig(name="n1"),
        pools=(PoolConfig("bgp", (AddressRange(first, last, f"{first}-{last}"),)),),
        bgp_peers=(BgpPeerConfig(name="r1", my_asn=64512, peer_address=ipaddress.ip_address("10.77.0.1")),),
        bgp_advertisements=(BgpAdvertisementConfig(name="b", pools=("bgp",)),),
    )


class OneRib:
    """A peer's speaker reduced to its Adj-RIB-Out, Established: the diff is packed into UPDATEs."""

    def __init__(self) -> None:
        self.rib = AdjRibOut()
        ctx = EncodeContext(local_as=64512, ibgp=False, four_octet=True,
                            next_hop_v4=ipaddress.IPv4Address("10.77.0.2"), next_hop_v6=None)
        self.packer = UpdatePacker(ctx)
        self.sent = 0

    def set_routes(self, routes) -> None:  # type: ignore[no-untyped-def]
        self.rib.set_desired(routes)
        if not self.rib.is_open:
            self.rib.open(self.packer, (IPV4_UNICAST,))
            batch, _ = self.rib.initial()
        else:
            batch = self.rib.diff()
        self.sent += len(batch.messages) if batch is not None else 0

    def update_routes(self, changes) -> None:  # type: ignore[no-untyped-def]
        self.rib.update_desired(changes)
        batch = self.rib.diff()
        self.sent += len(batch.messages) if batch is not None else 0

    @property
    def session(self):  # type: ignore[no-untyped-def]
        from types import SimpleNamespace
        from lbd.bgp.events import State
        return SimpleNamespace(state=State.ESTABLISHED, advertised=self.rib.advertised)


def run(n: int, changes: int, profiler: "cProfile.Profile | None" = None) -> dict[str, list[float]]:
    cfg = config()
    members = [Member(name="n1")]
    manager = SourceManager(node_name="n1")
    entry = _Running(config=SourceConfig("directory", "dropins"))
    manager._running["dropins"] = entry
    publisher = Publisher(manager, entry)
    publisher([ServiceSpec(name=f"s{i}", pool="bgp") for i in range(n)])
    allocator, planner, book, encoder = IncrementalAllocator(), IncrementalPlanner(), ResultBook(), StateEncoder()
    announcer = BgpAnnouncer("n1")
    peer = OneRib()
    announcer._speakers = {"r1": peer}  # type: ignore[dict-item]
    allocations: dict = {}
    seen = None
    times: dict[str, list[float]] = {step: [] for step in CRITICAL + AFTER}

    def step(name: str, fn: Callable[[], object], record: bool) -> object:
        if record and profiler is not None and name in CRITICAL:
            profiler.enable()
        start = time.perf_counter()
        out = fn()
        if record:
            times[name].append(time.perf_counter() - start)
        if profiler is not None:
            profiler.disable()
        return out

    async def report(results, changed) -> None:  # type: ignore[no-untyped-def]
        await manager.report(results, changed)

    loop = asyncio.new_event_loop()
    try:
        for i in range(-1, changes):
            record = i >= 0
            if i >= 0:
                adding = i % 2 == 0
                delta = (([ServiceSpec(name=f"c{i // 2}", pool="bgp")], []) if adding else ([], [f"c{i // 2}"]))
            else:
                delta = ([], [])
            services, hint = step("source", lambda: (publisher.changes(*delta), manager.services_copy(),
                                                     manager.take_changes())[1:], record)
            # By name, with the sources' changed names as the hint, as the daemon does.
            result = step("allocate", lambda: allocator.allocate(cfg.pools, services, allocations, changed=hint),
                          record)
            allocations = result.allocations
            inp = PlannerInput(config=cfg, node="n1", allocations=allocations, services=services, members=members,
                               now=float(i + 1))
            plan_hint = None if hint is None or allocator.touched is None else hint | allocator.touched
            the_plan = step("plan", lambda: planner.plan(inp, hint=plan_hint), record)
            step("bgp", lambda: announcer.apply(the_plan.bgp), record)
            touched = None if planner.full else planner.touched_services()
            step("write-back", lambda: loop.run_until_complete(report(book.results, book.update(
                services, allocations, result.pending, the_plan.decisions, planner.decision, touched,
                plan_hint))), record)
            step("state", lambda: encoder.encode(PersistedState(allocations=dict(allocations))), record)
            step("metrics", lambda: metrics.update(pools=cfg.pools, allocations=allocations, pending=result.pending,
                                                   plan=the_plan, drained=False), record)
            now = step("hooks", lambda: observe(the_plan.decisions, [], members), record)
            if seen is not None:
                start = time.perf_counter()
                transitions(seen, now)
                if record:
                    times["hooks"][-1] += time.perf_counter() - start
            seen = now
            if i < 0:
                gc.freeze()  # as the daemon does after a full pass (Daemon._settle_garbage)
            if record:
                assert not allocator.full and not planner.full, "a change took the full path"
                assert len(peer.rib.advertised) == len(services), "the router would not hold every route"
    finally:
        loop.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the steps to the UPDATE of the measured changes (slower: times inflate)")
    args = parser.parse_args()
    for size in map(int, args.sizes.split(",")):
        start = time.perf_counter()
        profiler = cProfile.Profile() if args.profile else None
        times = run(size, args.changes, profiler)
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        print(f"{size:,} services, one added or removed ({args.changes} changes; setup and first pass "
              f"{time.perf_counter() - start - sum(map(sum, times.values())):.1f} s):")
        for group, steps in (("to the UPDATE", CRITICAL), ("after it", AFTER)):
            total = [sum(times[s][k] for s in steps) for k in range(args.changes)]
            parts = ", ".join(f"{s} {statistics.median(times[s]) * 1000:.2f}" for s in steps)
            print(f"  {group}: p50 {statistics.median(total) * 1000:.1f} ms, max {max(total) * 1000:.1f} ms "
                  f"(p50 per step, ms: {parts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
