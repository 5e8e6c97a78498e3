"""Shared by the tests/k8s suites: a KubernetesSource run the way the daemon runs it."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

from lbd.config.schema import SourceConfig
from lbd.model import ServiceSpec
from lbd.sources.base import ServiceResult, SourceContext
from lbd.sources.kubernetes import KubernetesSource

MANIFESTS = Path(__file__).parent / "manifests"


class Runner:
    """Runs one KubernetesSource and plays the daemon: allocate, report."""

    def __init__(self, emu, kubeconfig: Path | None, **opts) -> None:
        self.emu = emu
        self.snapshots: list[dict[str, ServiceSpec]] = []
        self.error: str | None = None
        self.errors_seen: list[str] = []
        options = {"watch_timeout": 2.0, **opts}
        if kubeconfig is not None:
            options["kubeconfig"] = str(kubeconfig)
        cfg = SourceConfig("kubernetes", "k8s", options)
        assert KubernetesSource.validate(cfg.options) == []
        self.source = KubernetesSource(cfg, SourceContext(node_name="node-a", set_error=self._set_error))
        self.task: asyncio.Task | None = None
        self.allocated: dict[str, tuple] = {}
        self.owners: tuple[str, ...] = ("node-a",)  # the nodes announcing every Service
        self._next = 10

    def _set_error(self, error: str | None) -> None:
        self.error = error
        if error:
            self.errors_seen.append(error)

    def start(self) -> None:
        self.task = asyncio.create_task(self.source.run(
            lambda snap: self.snapshots.append({s.name: s for s in snap})))

    @property
    def last(self) -> dict[str, ServiceSpec]:
        return self.snapshots[-1] if self.snapshots else {}

    async def until(self, pred, timeout: float = 8.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not pred():
            if self.task is not None and self.task.done():
                self.task.result()
            if loop.time() > deadline:
                raise AssertionError(f"not met in time; last snapshot={sorted(self.last)} error={self.error}")
            await asyncio.sleep(0.02)

    def results(self, pending: dict[str, str] | None = None) -> dict[str, ServiceResult]:
        """A toy allocator: requested addresses, else the next free 10.77.100.x; sticky."""
        out = {}
        for name, spec in sorted(self.last.items()):
            if pending and name in pending:
                out[name] = ServiceResult(pending=pending[name])
                continue
            if name not in self.allocated:
                if spec.addresses:
                    self.allocated[name] = spec.addresses
                else:
                    self.allocated[name] = (ipaddress.ip_address(f"10.77.100.{self._next}"),)
                    self._next += 1
            out[name] = ServiceResult(addresses=self.allocated[name], pool="p", nodes=self.owners)
        return out

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)



    async def reporting(self, interval: float = 0.2) -> None:
        """Play the daemon's reconcile loop: report results every ``interval`` (cancel to stop)."""
        while True:
            if self.snapshots:
                await self.source.report(self.results())
            await asyncio.sleep(interval)
