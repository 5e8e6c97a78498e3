"""An example lbd source: services from a JSON file, results written back to another.

The JSON file has the same shape as a drop-in TOML file, ``{"service": [...]}``,
so it is validated by lbd's own ``[[service]]`` rules and messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from lbd.config import parse_services_document
from lbd.model import ServiceSpec
from lbd.sources.base import Publish, ServiceResult, Source
from lbd.sources.options import options_table


class JsonFileSource(Source):
    @classmethod
    def validate(cls, options: Mapping[str, Any]) -> list[str]:
        # Same readers, same messages as the rest of lbd's config; no I/O here.
        t, errors = options_table(options, ("path", "status_path", "interval"))
        for key in ("path", "status_path"):
            value = t.string(key, required=(key == "path"))
            if value is not None and not os.path.isabs(value):
                t.error(key, f"{value!r} must be an absolute path")
        t.seconds("interval", 2.0, positive=True, hi=3600)
        return errors.messages()

    async def run(self, publish: Publish) -> None:
        path = Path(str(self.config.options["path"]))
        interval = float(self.config.options.get("interval", 2.0))  # type: ignore[arg-type]
        seen: tuple[int, int] | None = None
        while True:
            try:
                st = path.stat()
                signature: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                signature = None
            if signature != seen:
                seen = signature
                services = self._read(path) if signature is not None else []
                if services is not None:  # None: unreadable; keep the last snapshot
                    publish(services)
            await asyncio.sleep(interval)

    def _read(self, path: Path) -> list[ServiceSpec] | None:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            self.context.set_error(f"{path}: {exc}")
            return None
        services, errors = parse_services_document(doc, str(path), "")
        if errors:
            self.context.set_error("; ".join(errors))
            return None
        self.context.set_error(None)
        return services

    async def report(self, results: Mapping[str, ServiceResult]) -> None:
        # Only one node (the writer) publishes results, and only when they change.
        target = self.config.options.get("status_path")
        if not self.is_writer or not target:
            return
        doc = {name: {"addresses": [str(a) for a in r.addresses], "pool": r.pool,
                      "pending": r.pending, "nodes": list(r.nodes)}
               for name, r in sorted(results.items())}
        if doc == getattr(self, "_last_report", None):
            return
        self._last_report = doc
        target_path = Path(str(target))
        fd, tmp = tempfile.mkstemp(dir=target_path.parent, prefix=".status-")
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True)
        os.replace(tmp, target_path)  # atomic: readers never see half a file
