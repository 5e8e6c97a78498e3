"""How this node works with the others: who is in the cluster, who allocates, the handover.

A ``Coordinator`` gives the planner its members (and since when each is eligible),
runs or receives the round's allocations (one node allocates for all), says what
to persist with them, and hands this node's VIPs over before it leaves. It gets
from the daemon only values and callables (``Handover``, ``HeldVips``), never the
daemon itself.

``LocalCoordinator`` is a cluster of one: this node. ``lbd.cluster.coordination``
implements the same interface over gossip.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import AbstractSet, Any, Awaitable, Callable, Mapping, Sequence

from lbd.ipam import AllocationResult, IncrementalAllocator
from lbd.config.schema import Config
from lbd.model import Allocation, Member, ServiceSpec


HeldVips = Callable[[], Sequence[str]]
"""The layer-2 VIPs this node holds right now (``lbd.planner.held_vips`` of the current plan).

A callable, not a value: each reconcile pass changes the answer while a handover runs."""


@dataclass(frozen=True)
class Handover:
    """What a graceful leave needs from the daemon, and nothing more.

    The cluster layer must not reach into the daemon (its plan, its flags): it gets the
    held VIPs as a function, a way to run one reconcile pass (so peers' takeovers are
    answered by releasing), and whether this stop is for a restart (logged only).
    """

    held: HeldVips
    reconcile: Callable[[], Awaitable[None]]
    restarting: bool = False


class Coordinator(abc.ABC):
    """Membership, allocation and handover for this node; a single node by default."""

    _allocator: IncrementalAllocator  # each coordinator's own: it keeps the last round's book

    @abc.abstractmethod
    def update_local(self, me: Member) -> None:
        """This node's own view of itself (labels, interfaces, health, drain, holds)."""

    @abc.abstractmethod
    def members(self) -> list[Member]:
        """Every known member, this node included."""

    @abc.abstractmethod
    def eligible_since(self) -> dict[str, float]:
        """When each member last became alive (monotonic seconds), for failback."""

    def restore(self, allocations: Mapping[str, Allocation], extra: Mapping[str, object]) -> None:
        """The persisted state at start."""

    def allocate(self, config: Config, services: Sequence[ServiceSpec] | Mapping[str, ServiceSpec],
                 previous: Mapping[str, Allocation],
                 changed: AbstractSet[str] | None = None) -> tuple[AllocationResult, list[str]]:
        """This round's allocations (and notes worth a warning). A single node allocates alone.
        ``services``: a sequence, or a mapping by name (each key its spec's name): the
        allocator then takes it as it is, with no copy or re-index (issue 9). ``changed``:
        the services whose spec may differ from the last call's (None: unknown)."""
        if not isinstance(services, Mapping):
            services = list(services)
        return self._allocator.allocate(config.pools, services, previous, namespaces=config.namespaces,
                                        changed=changed), []

    def touched(self) -> set[str] | None:
        """The services whose allocation the last ``allocate`` changed (None: unknown)."""
        return self._allocator.touched

    def allocator(self) -> str:
        """The node that allocates (and writes results back to sources)."""
        return min(m.name for m in self.members())

    def persisted_extra(self) -> dict[str, object]:
        """What this membership wants persisted with the allocations."""
        return {}

    def state_dirty(self) -> bool:
        """Whether ``persisted_extra`` changed since it was last taken."""
        return False

    async def configure(self, config: Config) -> None:
        """A (re)loaded config."""

    async def start(self, on_change: Callable[[], None]) -> None:
        """Begin; call ``on_change`` whenever membership or a member's state changes."""

    async def wait_handover(self, held: HeldVips) -> str:
        """After this node was drained: wait until others hold its VIPs (``held()`` is empty)."""
        return "no other node to hand over to" if len(self.members()) <= 1 else "done"

    async def leave(self, handover: Handover) -> None:
        """Hand over and leave the cluster gracefully (before announcements are withdrawn)."""

    async def close(self) -> None:
        """Release resources."""

    def status(self) -> list[dict[str, Any]]:
        return [
            {"name": m.name, "address": m.address, "state": m.state.value, "incarnation": m.incarnation,
             "drained": m.drained, "holds": list(m.holds), "holds_known": m.holds_known,
             "failing": sorted(m.failing)}
            for m in self.members()
        ]


class LocalCoordinator(Coordinator):
    """A cluster of one: this node is every member and the allocator."""

    def __init__(self, name: str) -> None:
        self._me = Member(name=name)
        self._allocator = IncrementalAllocator()  # allocate(), in work proportional to the change (issue 9)
        self._since = time.monotonic()

    def update_local(self, me: Member) -> None:
        self._me = me

    def members(self) -> list[Member]:
        return [self._me]

    def eligible_since(self) -> dict[str, float]:
        return {self._me.name: self._since}
