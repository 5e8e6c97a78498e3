"""Maglev tables built ahead of a health flip, in a worker thread (``ruleset.prefetch``).

A backend's check takes it out after ``fall`` failures in a row (2 by default, an
``interval`` of 2 s apart), and back in after ``rise`` successes. When one result
more would flip it, ``BackendChecker`` calls ``near_flip(service)``; the table that
service's VIP ports will need after the flip is then built in a worker thread, so the
pass that applies the flip finds it in the table cache instead of spending a whole
Maglev population (the largest part of a change at 10,000 backends) on the way to the
kernel. The table is a function of the backend set only, so building it early changes
nothing that any node computes. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Callable

import structlog

from lbd.forward.ruleset import Desired, prefetch
from lbd.model import Backend

log = structlog.get_logger(__name__)


class TablePrefetcher:
    def __init__(self, current: Callable[[], Desired | None],
                 ahead: Callable[[str, Backend], bool | None]) -> None:
        self._current = current  # the forwarder's last desired state
        self._ahead = ahead  # (service, backend) -> the health one more like result gives it, or None
        self._pending: set[str] = set()
        self._wavering: set[str] = set()  # services with a backend near a flip at the last build
        self._task: asyncio.Task[None] | None = None
        self.built = 0  # tables built ahead so far (tests, debugging)

    def near_flip(self, service: str) -> None:
        """``BackendChecker``'s callback: a backend of ``service`` is one result from flipping."""
        self._pending.add(service)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="forward-prefetch")

    def applied(self) -> None:
        """A pass applied a new desired state: the tables built ahead were for the sets of the
        one before. Build again for the services whose backends still waver (a second backend
        of the port failing after the first one: its table is then the set without both)."""
        for service in self._wavering:
            self.near_flip(service)

    async def _run(self) -> None:
        while self._pending:
            current = self._current()
            services, self._pending = self._pending, set()
            if current is None:
                return
            try:
                built = await asyncio.to_thread(prefetch, current, services, self._ahead)
                self._wavering = (self._wavering - services) | set(built)
                self.built += sum(built.values())
                if built:
                    log.info("forward_tables_prefetched", services=sorted(built), tables=sum(built.values()))
            except Exception:  # noqa: BLE001 - only an optimisation: the pass computes what it needs anyway
                log.exception("forward_prefetch_failed")

    async def close(self) -> None:
        self._pending.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
