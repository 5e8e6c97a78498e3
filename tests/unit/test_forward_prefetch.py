"""Tables built ahead of a health flip (lbd.forward.prefetch, ruleset.prefetch, health.near_flip):
the flip's pass finds its table in the cache, and the result is the one computed from scratch."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from lbd.config import parse_config
from lbd.forward import maglev, ruleset
from lbd.forward.health import near_flip
from lbd.forward.prefetch import TablePrefetcher
from lbd.forward.ruleset import desired, prefetch
from lbd.health import HealthState
from lbd.model import Allocation

CONFIG = """
[node]
name = "n1"
[[pool]]
name = "p"
addresses = ["10.77.0.100-10.77.0.110"]
[forwarding]
table_size = 1021
[[service]]
name = "web"
ports = ["tcp/80", "tcp/81"]
[service.backends]
"tcp/80" = ["10.88.1.10:8080", "10.88.1.11:8080", { address = "10.88.1.12", port = 8080, weight = 2 }]
"tcp/81" = ["10.88.1.10:8080", "10.88.1.11:8080", { address = "10.88.1.12", port = 8080, weight = 2 }]
[[service]]
name = "other"
ports = ["udp/53"]
backends = ["10.88.1.20:53", "10.88.1.21:53"]
"""
IFS = {"eth0": (ipaddress.ip_interface("10.88.1.1/24"),)}


@pytest.fixture
def setup():  # type: ignore[no-untyped-def]
    cfg = parse_config(CONFIG, Path("/etc/lbd.toml"))
    services = {s.name: s for s in cfg.services}
    allocations = {name: Allocation(name, "p", (ipaddress.ip_address(f"10.77.0.{100 + i}"),))
                   for i, name in enumerate(sorted(services))}
    return cfg, services, allocations


@pytest.fixture
def builds(monkeypatch):  # type: ignore[no-untyped-def]
    """The Maglev populations run (each a list of the backends it was for)."""
    ruleset._table_sorted.cache_clear()
    ruleset._table.cache_clear()
    calls: list[tuple[str, ...]] = []
    real = maglev.build_sorted

    def counting(names, weights, size):  # type: ignore[no-untyped-def]
        calls.append(tuple(n for n, w in zip(names, weights) if w))
        return real(names, weights, size)

    monkeypatch.setattr(maglev, "build_sorted", counting)
    return calls


def test_near_flip_is_one_like_result_away() -> None:
    state = HealthState(rise=2, fall=2, since=0.0)
    assert near_flip(state) is None  # unknown, no success yet
    state.record(True, 1.0)
    assert near_flip(state) is True  # one more success: up
    state.record(True, 2.0)
    assert state.healthy and near_flip(state) is None
    state.record(False, 3.0)
    assert near_flip(state) is False  # one more failure: down
    state.record(True, 4.0)
    assert near_flip(state) is None  # the run of failures ended
    quick = HealthState(rise=1, fall=1, since=0.0)
    quick.record(True, 1.0)
    assert near_flip(quick) is None  # fall = 1: nothing to see coming
    slow = HealthState(rise=3, fall=3, since=0.0, state="up")
    slow.record(False, 1.0)
    assert near_flip(slow) is None
    slow.record(False, 2.0)
    assert near_flip(slow) is False


def test_the_flip_finds_its_tables_built_ahead(setup, builds) -> None:
    cfg, services, allocations = setup
    down: set[str] = set()

    def healthy(service, backend):  # type: ignore[no-untyped-def]
        return str(backend.address) not in down

    before = desired(services, allocations, healthy, cfg.forwarding, IFS)
    assert len(builds) == 2  # web's two ports share one backend set; other has its own
    builds.clear()
    ahead = {"10.88.1.11": False}
    built = prefetch(before, {"static/web"}, lambda s, b: ahead.get(str(b.address)))
    assert built == {"static/web": 2}  # each of web's two ports (the same table: built once, cached)
    assert builds == [("10.88.1.10:8080", "10.88.1.12:8080")]
    builds.clear()

    down.add("10.88.1.11")  # the flip came
    after = desired(services, allocations, healthy, cfg.forwarding, IFS, previous=before)
    assert builds == []  # no population on the way to the kernel
    ruleset._table_sorted.cache_clear()
    ruleset._STATIC.clear()  # no per-service cache either: computed from nothing
    assert after.ruleset == desired(services, allocations, healthy, cfg.forwarding, IFS).ruleset  # as from scratch
    assert builds  # (from scratch did build)


def test_prefetch_skips_what_cannot_flip_and_other_services(setup, builds) -> None:
    cfg, services, allocations = setup
    before = desired(services, allocations, lambda s, b: True, cfg.forwarding, IFS)
    builds.clear()
    # No backend near a flip, a "flip" to the health it already has, another service's backend.
    assert prefetch(before, {"static/web"}, lambda s, b: None) == {}
    assert prefetch(before, {"static/web"}, lambda s, b: True) == {}
    assert prefetch(before, {"static/other"}, lambda s, b: False if str(b.address) == "10.88.1.11" else None) == {}
    assert builds == []


async def test_prefetcher_builds_in_a_worker_thread(setup, builds) -> None:
    cfg, services, allocations = setup
    current = desired(services, allocations, lambda s, b: True, cfg.forwarding, IFS)
    builds.clear()
    loop_thread = []
    prefetcher = TablePrefetcher(lambda: current, lambda s, b: False if str(b.address) == "10.88.1.20" else None)
    real = ruleset.prefetch

    def spy(*args):  # type: ignore[no-untyped-def]
        import threading
        loop_thread.append(threading.current_thread() is threading.main_thread())
        return real(*args)

    import lbd.forward.prefetch as module
    module.prefetch = spy  # type: ignore[assignment]
    try:
        prefetcher.near_flip("static/other")
        prefetcher.near_flip("static/other")  # coalesced while pending
        for _ in range(200):
            if prefetcher.built:
                break
            await asyncio.sleep(0.01)
        assert prefetcher.built == 1 and builds == [("10.88.1.21:53",)]
        assert loop_thread and not any(loop_thread)  # never on the event loop's thread
    finally:
        module.prefetch = real  # type: ignore[assignment]
        await prefetcher.close()


async def test_a_second_failure_has_its_table_built_after_the_first_is_applied(setup, builds) -> None:
    """b1 and b2 both near a fall; b1 falls first. The table built ahead for b2 was "all but
    b2"; once the pass for b1 is applied, the one "all but b1 and b2" is built ahead too."""
    cfg, services, allocations = setup
    down: set[str] = set()
    near = {"10.88.1.10": False, "10.88.1.11": False}

    def healthy(service, backend):  # type: ignore[no-untyped-def]
        return str(backend.address) not in down

    state = {"current": desired(services, allocations, healthy, cfg.forwarding, IFS)}
    prefetcher = TablePrefetcher(lambda: state["current"],
                                 lambda s, b: None if str(b.address) in down else near.get(str(b.address)))

    async def settled(count: int) -> None:
        for _ in range(300):
            if prefetcher.built >= count and (prefetcher._task is None or prefetcher._task.done()):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(prefetcher.built)

    try:
        builds.clear()
        prefetcher.near_flip("static/web")
        await settled(4)  # two ports x (all but b1, all but b2)
        assert sorted(builds) == [("10.88.1.10:8080", "10.88.1.12:8080"), ("10.88.1.11:8080", "10.88.1.12:8080")]
        down.add("10.88.1.10")  # b1 falls: the pass finds its table, and is applied
        builds.clear()
        state["current"] = desired(services, allocations, healthy, cfg.forwarding, IFS, previous=state["current"])
        assert builds == []
        prefetcher.applied()
        await settled(6)
        assert builds == [("10.88.1.12:8080",)]  # all but b1 and b2, before b2 falls
        down.add("10.88.1.11")
        builds.clear()
        desired(services, allocations, healthy, cfg.forwarding, IFS, previous=state["current"])
        assert builds == []
        prefetcher.applied()  # nobody wavers any more: nothing to build
        await asyncio.sleep(0.05)
        assert prefetcher._wavering == set() and builds == []
    finally:
        await prefetcher.close()
