"""Plugin discovery through entry points, config validation, and the example plugin end to end."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from lbd.config.schema import SourceConfig
from lbd.sources.base import ServiceResult, Source
from lbd.sources.directory import DirectorySource
from lbd.sources.manager import SourceManager
from lbd.sources.registry import discover, validate_source
from lbd.sources.static import StaticSource

EXAMPLE_INSTALL = "pip install -e examples/lbd-example-source"


def example_plugin() -> type[Source]:
    plugins = discover()
    if "example-json" not in plugins:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install the example plugin: {EXAMPLE_INSTALL}")
        pytest.skip(f"example plugin not installed ({EXAMPLE_INSTALL})")
    return plugins["example-json"]


def test_builtin_sources_are_entry_points():
    plugins = discover()
    assert plugins["static"] is StaticSource
    assert plugins["directory"] is DirectorySource
    assert plugins["kubernetes"].__name__ == "KubernetesSource"


def test_validate_source_messages():
    assert validate_source(SourceConfig("directory", "d", {"path": "/etc/lbd/services.d"})) == []
    (msg,) = validate_source(SourceConfig("directroy", "d", {}))
    assert msg.startswith('source "d": type: unknown source type "directroy"')
    assert "did you mean 'directory'?" in msg
    msgs = validate_source(SourceConfig("directory", "d", {"path": 5}))
    assert msgs == ['source "d": path: expected a string, got an integer (5)']


def test_validate_source_contains_plugin_bugs():
    class Broken(Source):
        @classmethod
        def validate(cls, options):
            raise KeyError("oops")

        async def run(self, publish):
            pass

    class Liar(Broken):
        @classmethod
        def validate(cls, options):
            return "not a list"

    (msg,) = validate_source(SourceConfig("broken", "b", {}), {"broken": Broken})
    assert msg.startswith('source "b": the broken plugin failed validating its options')
    (msg,) = validate_source(SourceConfig("liar", "l", {}), {"liar": Liar})
    assert "not a list of str" in msg


def test_example_plugin_validation():
    cls = example_plugin()
    assert validate_source(SourceConfig("example-json", "inv", {"path": "/srv/x.json"})) == []
    msgs = validate_source(SourceConfig("example-json", "inv", {"path": "x.json", "intervall": 1}))
    assert any("path: " in m and "absolute" in m for m in msgs)
    assert any("did you mean 'interval'" in m for m in msgs)
    assert cls.validate({}) == ["missing required key 'path'"]


async def test_example_plugin_runs_under_the_manager(tmp_path: Path):
    example_plugin()
    services = tmp_path / "services.json"
    status = tmp_path / "status.json"
    services.write_text(json.dumps({"service": [{"name": "web", "pool": "public", "ports": ["tcp/80"]}]}))
    mgr = SourceManager(node_name="n1", backoff_initial=0.05)  # real discovery through entry points
    await mgr.reconfigure([SourceConfig("example-json", "inv", {"path": str(services),
                                                                "status_path": str(status), "interval": 0.05})])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while [s.name for s in mgr.services()] != ["inv/web"]:
        assert loop.time() < deadline, mgr.status()
        await asyncio.sleep(0.02)
    assert mgr.services()[0].pool == "public"
    # An invalid edit degrades the source and keeps the last good snapshot.
    services.write_text(json.dumps({"service": [{"name": "web", "ports": ["tcp/0"]}]}))
    while mgr.status()[0]["state"] != "degraded":
        assert loop.time() < deadline + 5, mgr.status()
        await asyncio.sleep(0.02)
    assert [s.name for s in mgr.services()] == ["inv/web"]
    assert "ports[0]" in mgr.status()[0]["last_error"]
    mgr.set_writer(True)
    import ipaddress
    await mgr.report({"inv/web": ServiceResult(addresses=(ipaddress.ip_address("10.77.100.1"),), pool="public",
                                               nodes=("n1",))})
    assert json.loads(status.read_text())["web"]["addresses"] == ["10.77.100.1"]
    await mgr.close()
