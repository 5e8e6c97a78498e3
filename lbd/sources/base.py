"""The source plugin API: what a source is, what it is given, what it returns.

A source is a class registered under the entry-point group ``lbd.sources``
and configured by a ``[[source]]`` table::

    [[source]]
    type = "directory"        # the entry-point name
    name = "dropins"          # namespaces its services: "dropins/<name>"
    path = "/etc/lbd/services.d"

Its life: ``validate(options)`` at config load (no I/O), then
``__init__(config, context)``, then ``run(publish)`` as a task for as long as
the source is configured. ``run`` calls ``publish`` with the COMPLETE set of
services it knows whenever that set changes (a snapshot): the manager is
level-triggered and keeps each source's last good snapshot when the source
fails. Once it has published a complete snapshot, a source that knows what
changed may call ``publish.changes(upserts, removed)`` instead: the services
added or changed and the names removed, applied to its last snapshot in work
proportional to the delta (issue 9; the directory source does). A plain
callable without ``changes`` (a test) gets complete snapshots only.

Names in a snapshot are local to the source (``web``, ``default/web``); the
manager prefixes ``<source name>/`` so that two sources can never collide.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence

import structlog

from lbd.config.schema import SourceConfig
from lbd.model import IPAddress, ServiceSpec

Publish = Callable[[Sequence[ServiceSpec]], None]


def _no_health(error: str | None) -> None:
    return None


def _no_namespace_selectors() -> bool:
    return False


@dataclass(frozen=True)
class ConfigOutcome:
    """What became of configuration a source read from its backend (``ApplyConfig``).

    ``result`` is the reload's: ``applied``, ``rejected`` (invalid), ``refused`` (it would
    re-address services) or ``rolled_back``. ``by_resource`` says which of the source's
    objects each error is about (``lbd.metallb.live.attribute``), for the source to
    report on them (the kubernetes source posts an Event on each).
    """

    result: str
    errors: tuple[str, ...] = ()
    by_resource: Mapping[Any, Sequence[str]] = field(default_factory=dict)
    # What was converted with a loss (a field with no lbd equivalent), per resource, whatever the result.
    warnings: Mapping[Any, Sequence[str]] = field(default_factory=dict)


# (objects, namespace) -> outcome: MetalLB's resources as the cluster has them now (a complete set,
# like a snapshot), merged into the file's configuration and applied through the reload path.
ApplyConfig = Callable[[Sequence[Mapping[str, Any]], str], Awaitable[ConfigOutcome]]


@dataclass
class SourceContext:
    """What the daemon gives a source.

    ``set_error`` lets a source say it is degraded without crashing (a drop-in
    file does not parse, the API server is unreachable); ``None`` clears it.
    The last published snapshot stays in effect either way.

    ``apply_config`` (None when the daemon does not take configuration from
    sources) applies configuration read from the backend; ``pools_select_namespaces``
    says whether a pool of the running config has ``namespace_selectors``, so that a
    source able to read namespaces' labels does so only then.
    """

    node_name: str
    log: Any = field(default_factory=lambda: structlog.get_logger("lbd.sources"))
    state_dir: Path = Path("/var/lib/lbd")
    set_error: Callable[[str | None], None] = _no_health
    apply_config: ApplyConfig | None = None
    pools_select_namespaces: Callable[[], bool] = _no_namespace_selectors


@dataclass(frozen=True)
class ServiceResult:
    """What became of one service, reported back to its source.

    ``addresses`` empty and ``pending`` set: the service got no address and
    ``pending`` says why ("pool \"web\" is exhausted"). ``nodes`` are the nodes
    announcing the addresses (for L2: the elected owner; for BGP: every
    speaker).
    """

    addresses: tuple[IPAddress, ...] = ()
    pool: str | None = None
    pending: str | None = None
    nodes: tuple[str, ...] = ()


class Source(abc.ABC):
    """Base class of every source plugin."""

    # True: the specs a snapshot carries are named ``<source name>/<name>`` already, and the
    # manager takes them without copying (the static source: the config names them so).
    publishes_full_names = False

    def __init__(self, config: SourceConfig, context: SourceContext) -> None:
        self.config = config
        self.context = context
        self.log = context.log.bind(source=config.name, source_type=config.type)
        self.is_writer = False

    @classmethod
    @abc.abstractmethod
    def validate(cls, options: Mapping[str, Any]) -> list[str]:
        """Check the ``[[source]]`` keys other than ``type`` and ``name``.

        Returns messages ``<key path>: <what is wrong>`` (the registry adds
        which source, the config loader adds the file). No I/O: a path that does
        not exist yet is the source's runtime problem, not a config error.
        """

    @abc.abstractmethod
    async def run(self, publish: Publish) -> None:
        """Deliver snapshots until cancelled.

        Raising restarts the source with backoff (its last snapshot stays in
        effect). Returning normally means the source has nothing more to say
        (its last snapshot stays in effect and it is not restarted).
        """

    async def report(self, results: Mapping[str, ServiceResult]) -> None:
        """Allocation results for this source's services, by local name.

        Called after every reconcile; must be cheap when nothing changed.
        """
        return None

    def set_writer(self, is_writer: bool) -> None:
        """Whether this node is the one that writes results back (one per cluster)."""
        self.is_writer = is_writer


@dataclass(frozen=True)
class SnapshotDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def diff_snapshots(old: Sequence[ServiceSpec] | Mapping[str, ServiceSpec],
                   new: Sequence[ServiceSpec] | Mapping[str, ServiceSpec]) -> SnapshotDiff:
    """Names added, removed and changed between two snapshots, each sorted."""
    before = old if isinstance(old, Mapping) else {s.name: s for s in old}
    after = new if isinstance(new, Mapping) else {s.name: s for s in new}
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(n for n in after.keys() & before.keys() if after[n] != before[n])
    return SnapshotDiff(tuple(added), tuple(removed), tuple(changed))
