"""The kubernetes source's live mode against the API-server emulator: MetalLB's resources are read
and handed over before any Service, an invalid change becomes a Warning Event on the resource at
fault, and Services carry their namespace's labels once a pool selects namespaces."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("yaml")

from lbd.config import ConfigError  # noqa: E402
from lbd.config.schema import SourceConfig  # noqa: E402
from lbd.liveconfig import merged_config  # noqa: E402
from lbd.metallb.live import attribute, changed_resources, cluster_document  # noqa: E402
from lbd.sources.base import ConfigOutcome, SourceContext  # noqa: E402
from lbd.sources.kubernetes import KubernetesSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.kubeapi_emulator import ApiServerEmulator, write_kubeconfig  # noqa: E402

TOKEN = "live-token"
FILE = '[node]\nname = "node-a"\n[[source]]\ntype = "kubernetes"\nname = "k8s"\nmetallb_resources = true\n'


class Daemonish:
    """Plays the daemon's side: the real merge and validation, and what it applied."""

    def __init__(self) -> None:
        self.applied: list = []
        self.calls: list[str] = []  # "config" / "services", in order
        self.selects_namespaces = False

    async def apply(self, objects, namespace):
        self.calls.append("config")
        doc = cluster_document("k8s", objects, namespace)
        try:
            merged_config(FILE, Path("/etc/lbd.toml"), [doc])
        except ConfigError as exc:
            changed = changed_resources(self.applied, [doc])
            return ConfigOutcome("rejected", tuple(exc.errors), attribute(exc.errors, [doc], changed),
                                 warnings=doc.warnings_by)
        self.applied = [doc]
        return ConfigOutcome("applied", warnings=doc.warnings_by)


def pool(name: str, cidr: str, **spec) -> dict:
    return {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
            "metadata": {"name": name, "namespace": "metallb-system"}, "spec": {"addresses": [cidr], **spec}}


async def until(pred, what: str, timeout: float = 10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := pred()):
        if loop.time() > deadline:
            raise AssertionError(f"not met in time: {what}")
        await asyncio.sleep(0.02)
    return value


@pytest.fixture
async def emu():
    server = ApiServerEmulator(token=TOKEN, bookmark_interval=0.3)
    await server.start()
    yield server
    await server.stop()


async def test_live_mode_reads_applies_and_reports(emu, tmp_path):
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "labels": {"team": "a"}}})
    emu.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "team-a"},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}})
    emu.create(pool("lan", "10.77.3.0/28"))
    emu.create({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
                "metadata": {"name": "lan", "namespace": "metallb-system"},
                "spec": {"ipAddressPools": ["lan"], "serviceSelectors": [{"matchLabels": {"app": "web"}}]}})
    emu.create(pool("not-ours", "10.77.4.0/28") | {"metadata": {"name": "not-ours", "namespace": "default"}})
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emu.url, TOKEN)
    daemon = Daemonish()
    snapshots: list[dict] = []
    errors: list[str | None] = []
    ctx = SourceContext(node_name="node-a", set_error=errors.append, apply_config=daemon.apply,
                        pools_select_namespaces=lambda: daemon.selects_namespaces)
    cfg = SourceConfig("kubernetes", "k8s", {"kubeconfig": str(kubeconfig), "watch_timeout": 2.0,
                                             "metallb_resources": True})
    assert KubernetesSource.validate(cfg.options) == []
    source = KubernetesSource(cfg, ctx)
    source.set_writer(True)

    def publish(snap) -> None:
        daemon.calls.append("services")
        snapshots.append({s.name: s for s in snap})

    task = asyncio.create_task(source.run(publish))
    try:
        await until(lambda: snapshots, "first snapshot")
        assert daemon.calls[0] == "config", "the configuration is applied before any Service is published"
        (doc,) = daemon.applied
        assert [t["name"] for t in doc.document["pool"]] == ["lan"], "only MetalLB's namespace is read"
        assert snapshots[-1]["team-a/web"].namespace_labels is None, "no pool selects namespaces: not read"
        # What has no lbd equivalent is said on the resource, as the importer warns.
        lost = await until(lambda: [e for e in emu.events() if e["reason"] == "NotConverted"], "NotConverted Event")
        assert lost[0]["involvedObject"]["kind"] == "L2Advertisement" and lost[0]["type"] == "Warning"
        assert "serviceSelectors" in lost[0]["message"]

        # An overlapping pool: rejected, the running set stays, an Event on that pool, degraded.
        emu.create(pool("dup", "10.77.3.8/29"))
        await until(lambda: source.config_outcome and source.config_outcome.result == "rejected", "rejected")
        assert [t["name"] for t in daemon.applied[0].document["pool"]] == ["lan"]
        events = await until(lambda: [e for e in emu.events() if e["reason"] == "InvalidConfiguration"], "Event")
        assert len(events) == 1 and events[0]["type"] == "Warning"
        involved = events[0]["involvedObject"]
        assert (involved["kind"], involved["namespace"], involved["name"]) == ("IPAddressPool", "metallb-system", "dup")
        assert involved["uid"] == emu.get("IPAddressPool", "metallb-system", "dup")["metadata"]["uid"]
        assert "overlaps" in events[0]["message"]
        assert errors[-1] and "MetalLB resources not applied (rejected)" in errors[-1]
        emu.delete("IPAddressPool", "metallb-system", "dup")
        await until(lambda: source.config_outcome.result == "applied" and errors[-1] is None, "healthy again")

        # A pool selects namespaces: the source reads Namespaces and Services carry their labels.
        daemon.selects_namespaces = True
        await until(lambda: snapshots[-1]["team-a/web"].namespace_labels == {"team": "a"}, "namespace labels")
        emu.patch("Namespace", "", "team-a", {"metadata": {"labels": {"team": "b"}}})
        await until(lambda: snapshots[-1]["team-a/web"].namespace_labels == {"team": "b"}, "label change")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
