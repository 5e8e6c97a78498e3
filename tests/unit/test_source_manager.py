"""SourceManager: merging, namespacing, backoff, last-good retention, reconfigure."""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

import pytest

from lbd.metrics import REGISTRY
from lbd.config.schema import SourceConfig
from lbd.model import ServiceSpec
from lbd.sources.base import ServiceResult, Source, diff_snapshots
from lbd.sources.manager import SourceManager
from lbd.sources.static import StaticSource, static_source_config

# A controllable fake: each instance pops its behaviour from a class-level script.
SCRIPT: dict[str, list[Any]] = {}
REPORTS: list[tuple[str, dict]] = []
INSTANCES: list["Scripted"] = []


class Scripted(Source):
    @classmethod
    def validate(cls, options: Mapping[str, Any]) -> list[str]:
        return []

    async def run(self, publish) -> None:
        INSTANCES.append(self)
        steps = SCRIPT[self.config.name]
        step = steps.pop(0) if steps else ("wait",)
        for action in step if isinstance(step, list) else [step]:
            kind = action[0]
            if kind == "publish":
                publish([ServiceSpec(name=n) for n in action[1]])
            elif kind == "crash":
                raise RuntimeError(action[1])
            elif kind == "error":
                self.context.set_error(action[1])
            elif kind == "sleep":
                await asyncio.sleep(action[1])
            elif kind == "wait":
                await asyncio.Event().wait()
            elif kind == "raw":
                publish(action[1])
        await asyncio.Event().wait()

    async def report(self, results) -> None:
        if self.config.options.get("report_crash"):
            raise RuntimeError("report bug")
        REPORTS.append((self.config.name, dict(results)))


class BadInit(Source):
    @classmethod
    def validate(cls, options):
        return []

    def __init__(self, config, context):
        raise RuntimeError("constructor bug")

    async def run(self, publish):
        raise AssertionError("unreachable")


PLUGINS = {"scripted": Scripted, "static": StaticSource, "badinit": BadInit}


@pytest.fixture(autouse=True)
def _reset():
    SCRIPT.clear()
    REPORTS.clear()
    INSTANCES.clear()


async def until(pred, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def names(mgr: SourceManager) -> list[str]:
    return [s.name for s in mgr.services()]


def metric(name: str, source: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"source": source})


def manager(**kw) -> SourceManager:
    return SourceManager(node_name="n1", plugins=PLUGINS, backoff_initial=0.05, backoff_max=0.2, **kw)


async def test_merge_namespacing_and_order():
    SCRIPT["b"] = [("publish", ["web", "api"])]
    SCRIPT["a"] = [("publish", ["web", "default/x"])]
    mgr = manager()
    await mgr.reconfigure([SourceConfig("scripted", "b"), SourceConfig("scripted", "a")])
    await until(lambda: len(mgr.services()) == 4)
    assert names(mgr) == ["a/default/x", "a/web", "b/api", "b/web"]
    st = {s["name"]: s for s in mgr.status()}
    assert st["a"]["state"] == "ok" and st["a"]["services"] == 2 and st["a"]["type"] == "scripted"
    assert metric("lbd_source_services", "a") == 2
    assert metric("lbd_source_up", "b") == 1
    await mgr.close()


async def test_crash_keeps_last_good_and_restarts_with_backoff():
    SCRIPT["s"] = [[("publish", ["web"]), ("sleep", 0.05), ("crash", "boom")],
                   ("crash", "boom again"), [("publish", ["web", "api"])]]
    changes: list[int] = []
    mgr = manager(on_change=lambda: changes.append(1))
    await mgr.reconfigure([SourceConfig("scripted", "s")])
    await until(lambda: names(mgr) == ["s/web"])
    await until(lambda: mgr.status()[0]["state"] == "degraded")
    assert "boom" in mgr.status()[0]["last_error"]
    assert names(mgr) == ["s/web"], "a crashed source's last good snapshot stays"
    assert metric("lbd_source_up", "s") == 0
    await until(lambda: names(mgr) == ["s/api", "s/web"])
    assert len(INSTANCES) == 3
    assert mgr.status()[0]["state"] == "ok" and mgr.status()[0]["last_error"] is None
    assert metric("lbd_source_errors_total", "s") >= 2
    assert len(changes) == 2
    await mgr.close()


async def test_unchanged_publish_does_not_signal():
    SCRIPT["s"] = [[("publish", ["web"]), ("publish", ["web"]), ("publish", ["web"])]]
    mgr = manager()
    await mgr.reconfigure([SourceConfig("scripted", "s")])
    await until(lambda: names(mgr) == ["s/web"])
    mgr.changed.clear()
    await asyncio.sleep(0.1)
    assert not mgr.changed.is_set()
    await mgr.close()


async def test_bad_snapshots_rejected_whole():
    SCRIPT["s"] = [[("publish", ["web"]), ("publish", ["x", "x"]), ("raw", ["not a spec"]),
                    ("publish", ["/bad"])]]
    mgr = manager()
    await mgr.reconfigure([SourceConfig("scripted", "s")])
    await until(lambda: mgr.status()[0]["last_error"] is not None and "bad" in mgr.status()[0]["last_error"])
    assert names(mgr) == ["s/web"]
    assert mgr.status()[0]["state"] == "degraded"
    await mgr.close()


async def test_crashing_plugins_never_kill_the_manager():
    SCRIPT["good"] = [("publish", ["a"])]
    mgr = manager()
    await mgr.reconfigure([SourceConfig("badinit", "bad"), SourceConfig("nosuchtype", "ghost"),
                           SourceConfig("scripted", "good", {"report_crash": True})])
    await until(lambda: names(mgr) == ["good/a"])
    await asyncio.sleep(0.3)  # several restart rounds of the broken ones
    st = {s["name"]: s for s in mgr.status()}
    # Never published: still "starting" (the daemon keeps their persisted
    # allocations), with the reason in last_error and lbd_source_up 0.
    assert st["bad"]["state"] == "starting" and "constructor bug" in st["bad"]["last_error"]
    assert st["ghost"]["state"] == "starting" and "nosuchtype" in st["ghost"]["last_error"]
    assert metric("lbd_source_up", "bad") == 0 and metric("lbd_source_errors_total", "bad") >= 2
    await mgr.report({"good/a": ServiceResult()})  # report raising is contained too
    assert st["good"]["state"] == "ok"
    await mgr.close()


async def test_reported_error_degrades_without_restart():
    SCRIPT["s"] = [[("publish", ["a"]), ("error", "file x.toml: bad"), ("sleep", 0.1), ("error", None)]]
    mgr = manager()
    await mgr.reconfigure([SourceConfig("scripted", "s")])
    await until(lambda: mgr.status()[0]["state"] == "degraded")
    assert mgr.status()[0]["last_error"] == "file x.toml: bad"
    await until(lambda: mgr.status()[0]["state"] == "ok")
    assert len(INSTANCES) == 1 and names(mgr) == ["s/a"]
    await mgr.close()


async def test_reconfigure_is_level_triggered():
    SCRIPT["a"] = [("publish", ["one"]), [("sleep", 0.2), ("publish", ["two"])]]
    SCRIPT["b"] = [("publish", ["b1"])]
    mgr = manager()
    cfg_a, cfg_b = SourceConfig("scripted", "a", {"v": 1}), SourceConfig("scripted", "b")
    await mgr.reconfigure([cfg_a, cfg_b])
    await until(lambda: names(mgr) == ["a/one", "b/b1"])
    await mgr.reconfigure([cfg_a, cfg_b])  # unchanged: nothing restarts
    assert len(INSTANCES) == 2
    # Changed options: restarted, and the old snapshot holds until the new one publishes.
    await mgr.reconfigure([SourceConfig("scripted", "a", {"v": 2})])
    assert names(mgr) == ["a/one"], "removed source b withdrawn, a's old snapshot kept"
    await until(lambda: names(mgr) == ["a/two"])
    assert metric("lbd_source_up", "b") is None
    with pytest.raises(ValueError):
        await mgr.reconfigure([cfg_b, cfg_b])
    await mgr.close()


async def test_report_fanout_by_source_and_writer():
    SCRIPT["a"] = [("publish", ["x"])]
    SCRIPT["b"] = [("publish", ["default/y"])]
    mgr = manager()
    await mgr.reconfigure([SourceConfig("scripted", "a"), SourceConfig("scripted", "b")])
    await until(lambda: len(mgr.services()) == 2)
    mgr.set_writer(True)
    assert all(i.is_writer for i in INSTANCES)
    r = ServiceResult(pending="no pool")
    await mgr.report({"a/x": r, "b/default/y": r, "zzz/unknown": r})
    assert sorted(REPORTS, key=lambda t: t[0]) == [("a", {"x": r}), ("b", {"default/y": r})]
    await mgr.close()


async def test_static_source_strips_own_prefix():
    services = (ServiceSpec(name="static/web", pool="p"), ServiceSpec(name="db"))
    assert StaticSource.validate(static_source_config(services).options) == []
    assert StaticSource.validate({"services": ["x"], "path": 1}) != []
    mgr = manager()
    await mgr.reconfigure([static_source_config(services)])
    await until(lambda: len(mgr.services()) == 2)
    assert names(mgr) == ["static/db", "static/web"]
    assert mgr.services()[1].pool == "p"
    assert mgr.status()[0]["state"] == "ok"
    await mgr.close()


def test_diff_snapshots():
    a = [ServiceSpec("x"), ServiceSpec("y", pool="p"), ServiceSpec("z")]
    b = [ServiceSpec("y", pool="q"), ServiceSpec("z"), ServiceSpec("w")]
    d = diff_snapshots(a, b)
    assert d.added == ("w",) and d.removed == ("x",) and d.changed == ("y",)
    assert not diff_snapshots(a, list(reversed(a)))
    assert diff_snapshots({}, {s.name: s for s in a}).added == ("x", "y", "z")


async def test_crash_loop_backoff_keeps_growing_even_when_it_publishes():
    SCRIPT["s"] = [[("publish", ["a"]), ("crash", f"boom {i}")] for i in range(4)] + [("publish", ["a"])]
    mgr = manager()
    await mgr.reconfigure([SourceConfig("scripted", "s")])
    await until(lambda: len(INSTANCES) == 5)
    entry = mgr._running["s"]
    assert entry.failures == 4, "publishing before each crash does not reset the backoff"
    assert names(mgr) == ["s/a"] and mgr.status()[0]["state"] == "ok"  # the 5th instance published
    d = [mgr._delay(n) for n in (1, 2, 3, 4, 5)]
    assert 0.04 <= d[0] <= 0.06 and 0.08 <= d[1] <= 0.12 and all(0.16 <= x <= 0.24 for x in d[2:])
    await mgr.close()


from hypothesis import given, strategies as st  # noqa: E402

_specs = st.dictionaries(st.sampled_from("abcdefgh"), st.sampled_from([None, "p", "q"]), max_size=8).map(
    lambda d: [ServiceSpec(name=k, pool=v) for k, v in d.items()])


@given(_specs, _specs)
def test_diff_snapshots_property(old, new):
    d = diff_snapshots(old, new)
    before = {s.name: s for s in old}
    after = {s.name: s for s in new}
    rebuilt = {k: v for k, v in before.items() if k not in d.removed}
    for name in d.added + d.changed:
        rebuilt[name] = after[name]
    assert rebuilt == after
    assert not set(d.added) & set(d.removed) and not set(d.changed) & (set(d.added) | set(d.removed))
    assert bool(d) == (before != after)
