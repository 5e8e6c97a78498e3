"""Issue 9: with no hook configured the dispatcher keeps its baseline without working out
events (a vip_up per VIP at start-up); hooks configured later hear what changes from then on."""

from __future__ import annotations

import ipaddress

from lbd.config.schema import HookConfig
from lbd.hooks import HookDispatcher, observe
from lbd.model import VipDecision

A = "10.77.0.100"
B = "10.77.0.101"


def decision(vip: str, here: bool) -> VipDecision:
    return VipDecision(vip=ipaddress.ip_address(vip), services=(f"static/{vip}",), owner="n1" if here else "n2",
                       interface="eth0" if here else None, reason="", pool="lan", modes=("l2",), announced_here=here)


def test_no_hook_no_events_and_a_later_hook_hears_changes_from_the_baseline() -> None:
    runs: list[dict] = []
    d = HookDispatcher([], "n1", lambda h, body: runs.append(body) or True)
    first = observe([decision(A, True), decision(B, False)], [], [])
    assert d.observe(first, 1.0) == []
    d.set_hooks([HookConfig(name="h", on=("vip_up", "vip_down"), exec=("/bin/true",), timeout=5.0)])
    # A was up already (the baseline): only B coming up here (and moving to n1) are events.
    events = d.observe(observe([decision(A, True), decision(B, True)], [], []), 2.0)
    assert sorted((e.event, e.fields["vip"]) for e in events) == [("owner_changed", B), ("vip_up", B)]
    assert [(b["event"], b["vip"]) for b in runs] == [("vip_up", B)]
