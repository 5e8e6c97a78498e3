"""What the daemon starts from: the persisted allocations, and stand-ins that keep a service's
addresses until its source speaks again after a restart."""

from __future__ import annotations

from lbd.config.schema import Config
from lbd.model import Allocation, Family, ServiceSpec
from lbd.state import PersistedState


def ghost_spec(allocation: Allocation) -> ServiceSpec:
    """A stand-in for a service whose source has not spoken yet since start.

    It keeps the service's addresses (sticky, announced, not given to anyone
    else) until the source publishes its first snapshot.
    """
    families = tuple(dict.fromkeys(Family.of(a) for a in allocation.addresses)) or (Family.IPV4,)
    return ServiceSpec(
        name=allocation.service,
        pool=allocation.pool,
        addresses=allocation.addresses,
        ip_families=families,
        share_key="lbd-restored:" + ",".join(map(str, allocation.addresses)),
        placeholder=True,
    )


def restored_state(persisted: PersistedState, config: Config) -> tuple[dict[str, Allocation], bool, dict[str, object]]:
    """What the daemon starts from: ``(allocations, drained, extra)``.

    The persisted allocations are the allocator's ``previous`` on the first pass:
    forgetting them would let every service get a new address at each restart
    (the first free one of its pool) instead of keeping its own. Drained by
    ``lbd-ctl drain`` (persisted) or by ``[node] drained = true`` in the config.
    """
    return dict(persisted.allocations), persisted.drained or config.node.drained, dict(persisted.extra)
