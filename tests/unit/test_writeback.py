"""``ResultBook`` (results kept per change) equals ``service_results`` (from scratch), and the
source manager's per-change fan-out equals its full one (issue 9)."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from lbd.config.schema import SourceConfig
from lbd.model import Allocation, IPAddress, ServiceSpec, VipDecision
from lbd.sources.base import ServiceResult, Source
from lbd.sources.manager import SourceManager
from lbd.writeback import ResultBook, service_results

A = ipaddress.ip_address
NAMES = ["src/s0", "src/s1", "other/x", "noslash"]  # few: events often meet the same service
VIPS = [A("10.77.0.2"), A("10.77.0.1"), A("fd77::1")]
NODES = [None, "n1", "n2", "n3"]


def spec(name: str, version: int) -> ServiceSpec:
    return ServiceSpec(name=name, pool="p", ports=(("tcp", 80 + version),))


# One event: a service spec set/changed/removed, an allocation set/removed, a pending reason,
# a VIP re-decided (owner, services listed).
EVENT = st.one_of(
    st.tuples(st.just("spec"), st.sampled_from(NAMES), st.integers(0, 2)),
    st.tuples(st.just("unspec"), st.sampled_from(NAMES)),
    st.tuples(st.just("alloc"), st.sampled_from(NAMES), st.lists(st.sampled_from(VIPS), min_size=1, max_size=3)),
    st.tuples(st.just("unalloc"), st.sampled_from(NAMES)),
    st.tuples(st.just("pending"), st.sampled_from(NAMES), st.sampled_from(["pool exhausted", "no pool"])),
    st.tuples(st.just("unpending"), st.sampled_from(NAMES)),
    st.tuples(st.just("decide"), st.sampled_from(VIPS), st.sampled_from(NODES),
              st.lists(st.sampled_from(NAMES), max_size=3, unique=True)),
    st.tuples(st.just("undecide"), st.sampled_from(VIPS)),
    st.tuples(st.just("full"),),
)


class World:
    """The inputs as a daemon holds them; ``finish`` decides the VIPs like the planner would (a
    decision lists only services allocated its VIP) and collects the services of the decisions
    that changed (what the planner's re-decided VIPs list)."""

    def __init__(self) -> None:
        self.services: dict[str, ServiceSpec] = {}
        self.allocations: dict[str, Allocation] = {}
        self.pending: dict[str, str] = {}
        self.choices: dict[IPAddress, tuple[str | None, list[str]]] = {}
        self.decisions: dict[IPAddress, VipDecision] = {}
        self.touched: set[str] | None = None  # the first pass computes everything
        self.hint: set[str] = set()  # the services whose spec or allocation an event set (the daemon's hint)

    def apply(self, event: tuple) -> None:
        kind = event[0]
        if kind in ("spec", "unspec", "alloc", "unalloc"):
            self.hint.add(event[1])
        # New mappings each pass, as the daemon's steps hand them over (unchanged values are the same objects).
        self.services, self.allocations, self.pending = dict(self.services), dict(self.allocations), dict(self.pending)
        if kind == "spec":
            self.services[event[1]] = spec(event[1], event[2])
        elif kind == "unspec":
            self.services.pop(event[1], None)
        elif kind == "alloc":
            self.allocations[event[1]] = Allocation(event[1], "p", tuple(dict.fromkeys(event[2])))
        elif kind == "unalloc":
            self.allocations.pop(event[1], None)
        elif kind == "pending":
            self.pending[event[1]] = event[2]
        elif kind == "unpending":
            self.pending.pop(event[1], None)
        elif kind == "decide":
            self.choices[event[1]] = (event[2], event[3])
        elif kind == "undecide":
            self.choices.pop(event[1], None)
        elif kind == "full":
            self.touched = None

    def finish(self) -> set[str] | None:
        decisions = {}
        for vip, (owner, subset) in self.choices.items():
            listed = tuple(n for n in sorted(subset) if n in self.allocations and vip in self.allocations[n].addresses)
            if listed:
                decisions[vip] = VipDecision(vip=vip, services=listed, owner=owner, interface=None, reason="test")
        for vip in decisions.keys() | self.decisions.keys():
            before, after = self.decisions.get(vip), decisions.get(vip)
            if before != after and self.touched is not None:
                for decision in (before, after):
                    if decision is not None:
                        self.touched.update(decision.services)
        self.decisions = decisions
        touched, self.touched = self.touched, set()
        return touched

    def ordered(self) -> list[VipDecision]:
        return [self.decisions[v] for v in sorted(self.decisions, key=lambda v: (v.version, int(v)))]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(EVENT, min_size=1, max_size=4), min_size=1, max_size=15), st.booleans())
def test_result_book_equals_from_scratch_after_every_pass(passes: list[list[tuple]], hinted: bool) -> None:
    book = ResultBook()
    world = World()
    previous: dict[str, ServiceResult] = {}
    for events in passes:
        for event in events:
            world.apply(event)
        touched = world.finish()
        hint, world.hint = (world.hint if hinted else None), set()
        changed = book.update(world.services, world.allocations, world.pending, world.ordered(),
                              world.decisions.get, touched, hint)
        expected = service_results(world.services, world.allocations, world.pending, world.ordered())
        assert book.results == expected
        if changed is not None:  # exactly the names whose result differs from the last pass
            assert changed == {n for n in expected.keys() | previous.keys() if expected.get(n) != previous.get(n)}
        previous = dict(expected)


class Recorder(Source):
    reports: list[dict[str, ServiceResult]]

    @classmethod
    def validate(cls, options: Mapping[str, object]) -> list[str]:
        return []

    async def run(self, publish) -> None:  # type: ignore[no-untyped-def]
        Recorder.seen[self.config.name] = self
        self.reports = []
        publish([])
        await asyncio.Event().wait()

    async def report(self, results: Mapping[str, ServiceResult]) -> None:
        self.reports.append(dict(results))

    seen: dict[str, "Recorder"] = {}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(NAMES), st.sampled_from(["a", "b", None]), max_size=6),
                min_size=1, max_size=6))
def test_manager_fan_out_of_changes_equals_the_full_fan_out(steps: list[dict[str, str | None]]) -> None:
    async def main() -> None:
        Recorder.seen = {}
        manager = SourceManager(node_name="n1", plugins={"rec": Recorder})
        await manager.reconfigure([SourceConfig(type="rec", name="src", options={}),
                                   SourceConfig(type="rec", name="other", options={})])
        for _ in range(100):
            if len(Recorder.seen) == 2:
                break
            await asyncio.sleep(0.01)
        results: dict[str, ServiceResult] = {}
        try:
            await manager.report(results, None)
            for step in steps:
                changed = set()
                for name, pool in step.items():
                    changed.add(name)
                    if pool is None:
                        results.pop(name, None)
                    else:
                        results[name] = ServiceResult(pool=pool)
                await manager.report(results, changed)
                for source in ("src", "other"):
                    want = {n.partition("/")[2]: r for n, r in results.items() if n.partition("/")[0] == source}
                    assert Recorder.seen[source].reports[-1] == want
        finally:
            await manager.close()

    asyncio.run(main())
