"""Issue 9, where the failover is decided in the daemon: when a member dies, the layer-2 VIPs
it owned that fall to this node are applied before the full re-decision of every VIP.

The layer-2 announcer is a recorder; the members are given to the pass's first steps
directly (no gossip): the decision is ``IncrementalPlanner.takeovers``, tested on its own in
test_planner_incremental.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace
from pathlib import Path
from typing import Any

from lbd.config import load_config
from lbd.daemon import Daemon
from lbd.model import Member, MemberState

LAN = {"eth0": (ipaddress.ip_interface("10.77.0.11/16"),)}
SERVICES = 60


def config_file(tmp: Path) -> Path:
    path = tmp / "lbd.toml"
    path.write_text(
        f'[node]\nname = "n1"\nstate_dir = "{tmp}/state"\ncontrol_socket = "{tmp}/lbd.sock"\n'
        '[[pool]]\nname = "lan"\naddresses = ["10.77.64.0/24"]\n[[l2_advertisement]]\npools = ["lan"]\n'
        + "".join(f'[[service]]\nname = "s{i}"\npool = "lan"\n' for i in range(SERVICES)))
    return path


class RecordingL2:
    def __init__(self) -> None:
        self.applied: list[list[Any]] = []

    async def apply(self, intents: Any) -> None:
        self.applied.append(list(intents))

    async def takeovers_sent(self, timeout: float) -> bool:
        self.applied.append(["sent"])
        return True


async def test_a_dead_members_vips_are_applied_before_the_full_replan(tmp_path: Path) -> None:
    d = Daemon(load_config(config_file(tmp_path)))
    try:
        await d.apply_config()
        config = d.config
        for _ in range(500):  # the static source publishes on the loop
            if len(d.services_now()) == SERVICES:
                break
            await asyncio.sleep(0.01)
        d._allocate(config)
        members = [Member(name=n, interfaces=LAN) for n in ("n1", "n2", "n3")]
        d._replan(config, members)
        before = d.plan
        mine = {i.vip for i in before.l2}
        n2s = {dec.vip for dec in before.decisions if dec.owner == "n2"}
        assert len(d.allocations) == SERVICES
        assert mine and n2s and not mine & n2s
        l2 = RecordingL2()
        d.l2 = l2  # type: ignore[assignment]

        calls: list[object] = []
        real = d.planner.takeovers
        d.planner.takeovers = lambda inp: calls.append(inp) or real(inp)  # type: ignore[method-assign]
        await d._take_over(config, members)  # nobody died: nothing to do early
        assert l2.applied == [] and calls == []  # not even a thread hand-off (every change's pass)
        assert d.planner.lost_members(members, "n1") == set()
        assert d.planner.lost_members([replace(m, state=MemberState.DEAD) if m.name == "n3" else m
                                       for m in members], "n1") == {"n3"}

        dead = [replace(m, state=MemberState.DEAD) if m.name == "n2" else m for m in members]
        await d._take_over(config, dead)
        assert len(calls) == 1
        assert len(l2.applied) == 2 and l2.applied[1] == ["sent"]  # then waits for their first packets
        early = {i.vip for i in l2.applied[0]}
        # What it held, plus its share of n2's VIPs, before any full re-decision...
        assert d.plan is before and mine < early and early - mine <= n2s
        # ... and exactly the share the full re-decision gives it.
        d._replan(config, dead)
        assert early == {i.vip for i in d.plan.l2}
        assert set(l2.applied[0]) == set(d.plan.l2)
    finally:
        await d.sources.close()
        await d.hook_runner.close()
        await d.netlink.aclose()
