"""The ``static`` source: the ``[[service]]`` tables of the main config.

It is a source like the others so the manager treats every service the same
way (namespacing, status, metrics). The daemon configures it with
``static_source_config(config.services)``; the services arrive already
validated by ``lbd.config`` as ``ServiceSpec`` objects in the ``services``
option, so ``validate`` only checks their type; they are named ``static/<name>``
already, and published as they are (``publishes_full_names``: no copy). On reload the manager sees
changed options and restarts it; the old snapshot stays until the new one is
published, so nothing is withdrawn in between.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Sequence

from lbd.config.schema import SourceConfig
from lbd.model import ServiceSpec
from lbd.sources.base import Publish, Source

STATIC_NAME = "static"


def static_source_config(services: Sequence[ServiceSpec], name: str = STATIC_NAME) -> SourceConfig:
    """The ``SourceConfig`` for the main config's ``[[service]]`` tables."""
    return SourceConfig(type="static", name=name, options={"services": tuple(services)})


class StaticSource(Source):
    # The config names these specs "static/<name>" already: the manager takes them as they
    # are, with no copy of 100,000 specs to rename them (issue 9).
    publishes_full_names = True

    @classmethod
    def validate(cls, options: Mapping[str, Any]) -> list[str]:
        errors = [f"unknown key {k!r}: the static source takes the main config's [[service]] tables"
                  for k in options if k != "services"]
        services = options.get("services", ())
        if not isinstance(services, (tuple, list)) or not all(isinstance(s, ServiceSpec) for s in services):
            errors.append("services: expected ServiceSpec objects from the main config")
        return errors

    async def run(self, publish: Publish) -> None:
        prefix = self.config.name + "/"
        specs: Sequence[ServiceSpec] = self.config.options.get("services", ())  # type: ignore[assignment]
        if not all(spec.name.startswith(prefix) for spec in specs):
            # Specs named without the prefix (built by hand, or another source name): add it.
            specs = [spec if spec.name.startswith(prefix) else replace(spec, name=prefix + spec.name)
                     for spec in specs]
        publish(specs)
        self.log.info("static_services_published", count=len(specs))
