"""The daemon starts from its persisted allocations: each service keeps its address across a restart.

Before this test only a lab test noticed a daemon that forgot them at start
(issue 10). The decision is ``lbd.restore.restored_state``; the second test goes
through ``Daemon.__init__`` to the allocator's first pass, without touching the
network (no reconcile: nothing is bound or announced).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

from lbd.config import parse_config
from lbd.daemon import Daemon
from lbd.restore import restored_state
from lbd.model import Allocation
from lbd.state import PersistedState, StateStore

ip = ipaddress.ip_address


def config_in(tmp_path: Path, drained: bool = False):
    text = f"""
[node]
name = "n1"
state_dir = "{tmp_path / 'state'}"
control_socket = "{tmp_path / 'lbd.sock'}"
drained = {str(drained).lower()}

[[pool]]
name = "lan"
addresses = ["10.77.1.0/28"]

[[service]]
name = "web"
pool = "lan"

[[service]]
name = "api"
pool = "lan"
"""
    return parse_config(text, tmp_path / "lbd.toml")


def persisted() -> PersistedState:
    # Not the first free addresses of the pool: a forgetful daemon would hand out 10.77.1.0 and .1.
    return PersistedState(
        allocations={
            "static/web": Allocation(service="static/web", pool="lan", addresses=(ip("10.77.1.9"),)),
            "static/api": Allocation(service="static/api", pool="lan", addresses=(ip("10.77.1.4"),)),
        },
        drained=False,
        extra={"cluster": {"x": 1}},
    )


def test_restored_state_is_the_persisted_state(tmp_path: Path):
    config = config_in(tmp_path)
    allocations, drained, extra = restored_state(persisted(), config)
    assert allocations == persisted().allocations
    assert drained is False and extra == {"cluster": {"x": 1}}
    assert restored_state(replace(persisted(), drained=True), config)[1] is True
    assert restored_state(persisted(), config_in(tmp_path, drained=True))[1] is True  # [node] drained = true
    # A copy: the daemon's later changes do not write through into the loaded state.
    state = persisted()
    allocations, _, extra = restored_state(state, config)
    allocations.clear()
    extra.clear()
    assert state.allocations and state.extra


async def test_the_first_allocation_after_a_restart_keeps_every_persisted_address(tmp_path: Path):
    config = config_in(tmp_path)
    StateStore(config.node.state_dir).save(persisted())
    daemon = Daemon(config)
    try:
        assert daemon.allocations == persisted().allocations
        services = list(config.services)  # the static source's services, named static/<name>
        assert sorted(s.name for s in services) == ["static/api", "static/web"]
        result, _ = daemon.coordinator.allocate(config, services, daemon.allocations)
        assert {name: a.addresses for name, a in result.allocations.items()} == {
            "static/web": (ip("10.77.1.9"),),
            "static/api": (ip("10.77.1.4"),),
        }
        assert not result.changes
    finally:
        await daemon.netlink.aclose()
