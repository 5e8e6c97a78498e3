"""Issue 9, the daemon's event loop at scale: owner changes summarised per pass, the state
file written off the loop, the interface inventory kept by notifications, and the loop
staying responsive during a big pass."""

from __future__ import annotations

import ipaddress

from structlog.testing import capture_logs

from lbd import daemon_metrics as m
from lbd.daemon import OWNER_CHANGES_SHOWN, report_owner_changes
from lbd.model import Member, MemberState, VipDecision


def decision(i: int, owner: str | None) -> VipDecision:
    return VipDecision(vip=ipaddress.ip_address(f"10.77.{i // 250}.{i % 250 + 1}"), services=(f"s{i}",),
                       owner=owner, interface=None, reason="elected")


def test_owner_changes_are_one_info_summary_per_pass_and_debug_lines_per_vip() -> None:
    members = [Member(name="n1"), Member(name="n2"), Member(name="n3", state=MemberState.DEAD)]
    previous = {decision(i, "").vip: ("n3" if i < 3000 else "n1") for i in range(5000)}
    now = [decision(i, "n1" if i < 3000 else ("n2" if i < 3500 else "n1")) for i in range(5000)]
    now.append(decision(6000, "n1"))  # new: not a change
    before = {k: m.OWNER_CHANGES.labels(k)._value.get() for k in ("failover", "move")}
    with capture_logs() as logs:
        counts = report_owner_changes(previous, now, members)
    assert counts == {"failover": 3000, "move": 500}
    info = [e for e in logs if e["log_level"] == "info"]
    assert [e["event"] for e in info] == ["vip_owners_changed"]
    assert info[0]["failover"] == 3000 and info[0]["move"] == 500
    assert len(info[0]["first"]) == OWNER_CHANGES_SHOWN
    assert info[0]["first"][0] == {"vip": "10.77.0.1", "old": "n3", "new": "n1", "kind": "failover",
                                   "reason": "elected"}
    assert sum(1 for e in logs if e["event"] == "vip_owner_changed" and e["log_level"] == "debug") == 3500
    assert m.OWNER_CHANGES.labels("failover")._value.get() - before["failover"] == 3000
    assert m.OWNER_CHANGES.labels("move")._value.get() - before["move"] == 500


def test_no_owner_change_logs_nothing() -> None:
    d = decision(1, "n1")
    with capture_logs() as logs:
        assert report_owner_changes({d.vip: "n1"}, [d], [Member(name="n1")]) == {"failover": 0, "move": 0}
    assert logs == []
