"""lbd.reloadplan: what a new config would change, the re-address refusal, apply-or-roll-back."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from lbd.config import parse_config
from lbd.ipam import allocate
from lbd.config.schema import Config
from lbd.model import Member, ServiceSpec
from lbd.planner.election import rank
from lbd.reloadplan import RunningState, apply_or_rollback, diff_configs, readdress_refusal

FILE = Path("/etc/lbd.toml")
HEAD = """
[node]
name = "n1"

[[pool]]
name = "lan"
addresses = ["10.77.0.48/28"]

[[l2_advertisement]]
pools = ["lan"]
"""
TWO = '[[service]]\nname = "a"\n[[service]]\nname = "b"\n'
IF = {"eth0": (ipaddress.ip_interface("10.77.0.2/24"),)}


def cfg(text: str, head: str = HEAD) -> Config:
    return parse_config(head + text, FILE)


def running(config: Config, extra: dict[str, ServiceSpec] | None = None,
            members: list[Member] | None = None) -> RunningState:
    """A daemon that converged under ``config``."""
    services = {s.name: s for s in config.services}
    services.update(extra or {})
    allocations = allocate(config.pools, list(services.values()), {}).allocations
    members = members or [Member(name="n1", interfaces=IF)]
    return RunningState(config=config, node="n1", services=services, allocations=allocations, members=members)


def addrs(*values: str) -> tuple:
    return tuple(ipaddress.ip_address(v) for v in values)


def test_the_same_config_changes_nothing() -> None:
    config = cfg(TWO)
    diff = diff_configs(running(config), cfg(TWO))
    assert not diff.changed and diff.to_dict()["changed"] is False
    assert readdress_refusal(diff, allowed=False) is None


def test_a_comment_or_order_changes_nothing() -> None:
    config = cfg(TWO)
    swapped = cfg('# reordered\n[[service]]\nname = "b"\n[[service]]\nname = "a"\n')
    assert not diff_configs(running(config), swapped).changed


def test_addition() -> None:
    config = cfg(TWO)
    diff = diff_configs(running(config), cfg(TWO + '[[service]]\nname = "c"\n'))
    assert diff.changed
    assert diff.allocated == [("static/c", addrs("10.77.0.50"))]
    assert diff.vips_added == list(addrs("10.77.0.50")) and diff.announced_here == list(addrs("10.77.0.50"))
    assert not diff.readdressed and not diff.vips_withdrawn and not diff.released
    assert readdress_refusal(diff, allowed=False) is None


def test_removal_is_not_a_readdress() -> None:
    config = cfg(TWO)
    diff = diff_configs(running(config), cfg('[[service]]\nname = "b"\n'))
    assert diff.released == [("static/a", addrs("10.77.0.48"))]
    assert diff.vips_withdrawn == list(addrs("10.77.0.48")) and diff.unannounced_here == list(addrs("10.77.0.48"))
    assert not diff.readdressed and readdress_refusal(diff, allowed=False) is None


def test_pool_shrink_readdresses_only_the_service_that_loses_its_address() -> None:
    config = cfg(TWO)
    shrunk = cfg(TWO, head=HEAD.replace('"10.77.0.48/28"', '"10.77.0.49-10.77.0.63"'))
    diff = diff_configs(running(config), shrunk)
    assert [(r.service, r.old, r.new) for r in diff.readdressed] == [
        ("static/a", addrs("10.77.0.48"), addrs("10.77.0.50"))]
    assert "left pool" in diff.readdressed[0].reason
    assert diff.vips_added == list(addrs("10.77.0.50")) and diff.vips_withdrawn == list(addrs("10.77.0.48"))
    refusal = readdress_refusal(diff, allowed=False)
    assert refusal is not None and "static/a" in refusal and "static/b" not in refusal
    assert "10.77.0.48 -> 10.77.0.50" in refusal and "--allow-readdress" in refusal
    assert readdress_refusal(diff, allowed=True) is None


def test_a_pool_too_small_leaves_a_service_without_address() -> None:
    config = cfg(TWO)
    tiny = cfg(TWO, head=HEAD.replace('"10.77.0.48/28"', '"10.77.0.49/32"'))
    diff = diff_configs(running(config), tiny)
    [change] = diff.readdressed
    assert change.service == "static/a" and change.new == () and "exhausted" in change.reason
    assert "no address (pending)" in readdress_refusal(diff, allowed=False)


def test_a_service_that_changes_pool_is_readdressed() -> None:
    head = HEAD + '[[pool]]\nname = "other"\naddresses = ["10.77.1.0/24"]\nauto_assign = false\n'
    config = cfg(TWO, head=head)
    diff = diff_configs(running(config), cfg('[[service]]\nname = "a"\npool = "other"\n[[service]]\nname = "b"\n',
                                             head=head))
    assert [(r.service, r.new) for r in diff.readdressed] == [("static/a", addrs("10.77.1.0"))]
    assert "asks for pool" in diff.readdressed[0].reason


def test_adding_a_family_is_not_a_readdress() -> None:
    head = HEAD.replace('["10.77.0.48/28"]', '["10.77.0.48/28", "fd77::48/125"]')
    config = cfg(TWO, head=head)
    dual = cfg('[[service]]\nname = "a"\nip_families = ["ipv4", "ipv6"]\n[[service]]\nname = "b"\n', head=head)
    diff = diff_configs(running(config), dual)
    assert not diff.readdressed and diff.allocated == [("static/a", addrs("fd77::48"))]


def test_owner_moves_when_the_advertisement_no_longer_selects_the_node() -> None:
    members = [Member(name="n1", interfaces=IF, labels={"rack": "a"}),
               Member(name="n2", interfaces=IF, labels={"rack": "b"})]
    head = HEAD.replace('name = "n1"', 'name = "n1"\nlabels = { rack = "a" }')
    config = cfg('[[service]]\nname = "a"\n', head=head)
    state = running(config, members=members)
    assert not diff_configs(state, config).changed
    # Only rack b may announce now: the VIP goes to n2 (or stays there).
    to_b = cfg('[[service]]\nname = "a"\n', head=head.replace('pools = ["lan"]', 'pools = ["lan"]\nnode_selector = { rack = "b" }'))
    # No rack may announce it: whoever owned it loses it.
    to_none = cfg('[[service]]\nname = "a"\n', head=head.replace('pools = ["lan"]', 'pools = ["lan"]\nnode_selector = { rack = "z" }'))
    vip = addrs("10.77.0.48")[0]
    assert rank(vip, ["n1", "n2"]) == ["n2", "n1"]  # n2 (rack b) owns it now
    assert diff_configs(state, to_none).owners_moved == [(vip, "n2", None)]
    unmoved = diff_configs(state, to_b)
    assert not unmoved.owners_moved and unmoved.notes == ["other settings change (no address, VIP or BGP session moves)"]
    # Only rack a: the VIP moves to this node, n1.
    to_a = cfg('[[service]]\nname = "a"\n', head=head.replace('pools = ["lan"]', 'pools = ["lan"]\nnode_selector = { rack = "a" }'))
    diff = diff_configs(state, to_a)
    assert diff.owners_moved == [(vip, "n2", "n1")] and diff.announced_here == [vip]


def test_bgp_sessions_opened_closed_and_reset() -> None:
    peer = '[[bgp_peer]]\nname = "{n}"\nmy_asn = 64512\npeer_asn = 64512\npeer_address = "{a}"\n'
    config = cfg(peer.format(n="gw1", a="10.77.0.1") + peer.format(n="gw2", a="10.77.0.5"))
    new = cfg(peer.format(n="gw1", a="10.77.0.1").replace("64512\npeer_asn", "64513\npeer_asn")
              + peer.format(n="gw3", a="10.77.0.6"))
    diff = diff_configs(running(config), new)
    assert (diff.bgp_opened, diff.bgp_closed, diff.bgp_reset) == (["gw3"], ["gw2"], ["gw1"])


def test_a_peer_that_stops_selecting_this_node_closes() -> None:
    peer = '[[bgp_peer]]\nname = "gw"\nmy_asn = 64512\npeer_asn = 64512\npeer_address = "10.77.0.1"\n'
    config = cfg(peer)
    diff = diff_configs(running(config), cfg(peer + 'node_selector = { rack = "z" }\n'))
    assert diff.bgp_closed == ["gw"]


def test_removed_source_releases_its_services_and_other_changes_are_noted() -> None:
    config = cfg('[[source]]\ntype = "directory"\nname = "drop"\npath = "/etc/lbd/services.d"\n')
    extra = {"drop/x": ServiceSpec(name="drop/x")}
    diff = diff_configs(running(config, extra), cfg('[metrics]\nlisten = "127.0.0.1:9120"\n'))
    assert diff.released == [("drop/x", addrs("10.77.0.48"))]
    assert any("'drop' is removed" in n for n in diff.notes)
    assert any("metrics listen changes: off -> 127.0.0.1:9120" in n for n in diff.notes)


def test_a_source_with_new_settings_is_assumed_to_keep_its_services() -> None:
    config = cfg('[[source]]\ntype = "directory"\nname = "drop"\npath = "/etc/lbd/services.d"\n')
    extra = {"drop/x": ServiceSpec(name="drop/x")}
    diff = diff_configs(running(config, extra), cfg('[[source]]\ntype = "directory"\nname = "drop"\npath = "/srv"\n'))
    assert not diff.released and not diff.readdressed
    assert any("re-lists" in n for n in diff.notes)


def test_any_other_setting_is_a_change() -> None:
    config = cfg(TWO)
    diff = diff_configs(running(config), cfg(TWO + '[log]\nlevel = "debug"\n'))
    assert diff.changed and diff.notes == ["other settings change (no address, VIP or BGP session moves)"]


def test_a_refusal_names_at_most_twenty_services_and_counts_the_rest() -> None:
    services = "".join(f'[[service]]\nname = "s{i}"\n' for i in range(30))
    head = HEAD.replace('"10.77.0.48/28"', '"10.77.0.0/24"')
    config = cfg(services, head=head)
    diff = diff_configs(running(config), cfg(services, head=head.replace('"10.77.0.0/24"', '"10.77.1.0/24"')))
    assert len(diff.readdressed) == 30
    refusal = readdress_refusal(diff, allowed=False)
    assert "30 service(s)" in refusal and "and 10 more" in refusal


# -- apply or roll back -------------------------------------------------------


async def test_apply_or_rollback_applies_the_new_config() -> None:
    old, new = cfg(TWO), cfg("")
    applied: list[Config] = []

    async def apply(config: Config) -> None:
        applied.append(config)

    assert await apply_or_rollback(old, new, apply) is None
    assert applied == [new]


async def test_a_failed_apply_reapplies_the_old_config() -> None:
    old, new = cfg(""), cfg('[metrics]\nlisten = "10.77.255.1:9120"\n')
    applied: list[Config] = []

    async def apply(config: Config) -> None:
        applied.append(config)
        if config.metrics.listen:
            raise OSError(99, "Cannot assign requested address")

    error = await apply_or_rollback(old, new, apply)
    assert error is not None and "Cannot assign requested address" in error
    assert applied == [new, old]  # the old config is what was applied last


async def test_a_failed_rollback_is_reported_too() -> None:
    old, new = cfg(""), cfg(TWO)

    async def apply(config: Config) -> None:
        raise RuntimeError(f"broken {len(config.services)}")

    error = await apply_or_rollback(old, new, apply)
    assert "broken 2" in error and "rolling back to the running config failed too: RuntimeError: broken 0" in error


def test_only_held_addresses_can_be_readdressed() -> None:
    """In a cluster the table may not hold a service this node knows yet (the allocator has not
    allocated it, or a conflict took its address): a reload cannot take from it what it lacks."""
    config = cfg('[[service]]\nname = "b"\n')
    state = running(config)
    state = RunningState(config=state.config, node="n1", services=state.services, allocations={},
                         members=state.members)
    diff = diff_configs(state, cfg('[[service]]\nname = "a"\n[[service]]\nname = "b"\n'))
    assert not diff.readdressed
    assert diff.allocated == [("static/a", addrs("10.77.0.48")), ("static/b", addrs("10.77.0.49"))]
