"""Notify hooks: events from the state diff (pure), the runner (real subprocesses), the config."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import stat
import time
from pathlib import Path

import pytest

from lbd.config import ConfigError, parse_config
from lbd.hooks import (
    HookDispatcher,
    HookEvent,
    HookRunner,
    Observation,
    VipHere,
    environment,
    observe,
    transitions,
)
from lbd.metrics import REGISTRY
from lbd.config.schema import HookConfig
from lbd.model import Member, MemberState, VipDecision

FILE = Path("/etc/lbd.toml")
A, B = "10.77.0.48", "10.77.0.49"


def here(*services: str) -> VipHere:
    return VipHere(services=services, interface="eth0", modes=("l2",), pool="lan")


def obs(vips: dict | None = None, owners: dict | None = None, bgp: dict | None = None,
        members: dict | None = None) -> Observation:
    return Observation(vips_here=vips or {}, owners=owners or {}, vip_services={v: ("static/web",) for v in owners or {}},
                       bgp=bgp or {}, members=members or {})


def names(events: list[HookEvent]) -> list[tuple[str, str]]:
    return [(e.event, str(e.fields.get("vip") or e.fields.get("peer") or e.fields.get("member"))) for e in events]


# -- transitions (pure) -------------------------------------------------------


def test_first_observation_fires_vip_up_and_sessions_up_only() -> None:
    first = obs({A: here("static/web")}, owners={A: "n1", B: "n2"}, bgp={"gw": (True, "10.77.0.1")},
                members={"n1": ("alive", "10.77.0.2:7946"), "n2": ("alive", "10.77.0.3:7946")})
    events = transitions(None, first)
    assert names(events) == [("vip_up", A), ("bgp_session_up", "gw")]
    assert events[0].fields == {"vip": A, "services": ["static/web"], "interface": "eth0", "modes": ["l2"],
                                "pool": "lan"}
    assert events[1].fields == {"peer": "gw", "peer_address": "10.77.0.1"}


def test_each_transition_fires_once() -> None:
    s0 = obs({A: here("static/web")}, owners={A: "n1"})
    s1 = obs({B: here("static/api")}, owners={A: "n2", B: "n1"})
    events = transitions(s0, s1)
    assert names(events) == [("vip_down", A), ("vip_up", B), ("owner_changed", A)]
    assert events[2].fields == {"vip": A, "services": ["static/web"], "old_owner": "n1", "new_owner": "n2"}
    assert transitions(s1, s1) == []  # the same state again: nothing


def test_owner_lost_and_found() -> None:
    assert names(transitions(obs(owners={A: "n1"}), obs(owners={A: None}))) == [("owner_changed", A)]
    # A VIP that appears or goes away is vip_up/vip_down's business (or nothing on other nodes).
    assert transitions(obs(owners={A: "n1"}), obs(owners={})) == []


def test_bgp_sessions() -> None:
    up = obs(bgp={"gw": (True, "10.77.0.1")})
    down = obs(bgp={"gw": (False, "10.77.0.1")})
    assert [e.event for e in transitions(down, up)] == ["bgp_session_up"]
    assert [e.event for e in transitions(up, down)] == ["bgp_session_down"]
    gone = transitions(up, obs())  # the peer was removed from the config while up
    assert [(e.event, e.fields["peer_address"]) for e in gone] == [("bgp_session_down", "10.77.0.1")]
    assert transitions(down, obs(bgp={"gw": (False, "10.77.0.1"), "gw2": (False, "")})) == []


def test_members_join_and_leave_and_suspect_is_not_leaving() -> None:
    one = obs(members={"n1": ("alive", "a1")})
    two = obs(members={"n1": ("alive", "a1"), "n2": ("alive", "a2")})
    suspect = obs(members={"n1": ("alive", "a1"), "n2": ("suspect", "a2")})
    dead = obs(members={"n1": ("alive", "a1"), "n2": ("dead", "a2")})
    assert [(e.event, e.fields) for e in transitions(one, two)] == [
        ("member_joined", {"member": "n2", "member_address": "a2", "member_state": "alive"})]
    assert transitions(two, suspect) == []
    assert [(e.event, e.fields["member_state"]) for e in transitions(suspect, dead)] == [("member_left", "dead")]
    assert [e.event for e in transitions(dead, two)] == ["member_joined"]
    assert [(e.event, e.fields["member_state"]) for e in transitions(two, one)] == [("member_left", "left")]


def test_observe_reads_the_plan_bgp_status_and_members() -> None:
    decisions = [
        VipDecision(vip=ipaddress.ip_address(A), services=("static/web",), owner="n1", interface="eth0", reason="",
                    pool="lan", modes=("l2",), announced_here=True),
        VipDecision(vip=ipaddress.ip_address(B), services=("static/api",), owner="n2", interface=None, reason="",
                    pool="lan", modes=("l2",), announced_here=False),
    ]
    o = observe(decisions, [{"name": "gw", "state": "established", "address": "10.77.0.1"},
                            {"name": "gw2", "state": "active", "address": "10.77.0.5"}],
                [Member(name="n1", address="x"), Member(name="n2", state=MemberState.DEAD)])
    assert set(o.vips_here) == {A} and o.owners == {A: "n1", B: "n2"}
    assert o.bgp == {"gw": (True, "10.77.0.1"), "gw2": (False, "10.77.0.5")}
    assert o.members == {"n1": ("alive", "x"), "n2": ("dead", "")}


# -- dispatch at the decision point (fake runner) ------------------------------


def hook(name: str, *events: str, timeout: float = 10.0, argv: tuple[str, ...] = ("/bin/true",)) -> HookConfig:
    return HookConfig(name=name, on=events, exec=argv, timeout=timeout)


def test_dispatcher_gives_each_event_to_its_subscribers_once_per_transition() -> None:
    runs: list[tuple[str, dict]] = []
    d = HookDispatcher([hook("up", "vip_up"), hook("all", "vip_up", "vip_down", "owner_changed")], "n1",
                       lambda h, body: runs.append((h.name, body)) or True)
    s0 = obs({A: here("static/web")}, owners={A: "n1"})
    d.observe(s0, now=100.0)
    d.observe(s0, now=101.0)  # no transition: no run
    d.observe(obs(owners={A: "n2"}), now=102.0)
    assert [(n, b["event"]) for n, b in runs] == [("up", "vip_up"), ("all", "vip_up"), ("all", "vip_down"),
                                                  ("all", "owner_changed")]
    assert runs[0][1] == {"event": "vip_up", "node": "n1", "time": 100.0, "vip": A, "services": ["static/web"],
                          "interface": "eth0", "modes": ["l2"], "pool": "lan"}
    assert runs[3][1]["old_owner"] == "n1" and runs[3][1]["new_owner"] == "n2"
    d.set_hooks([hook("reload", "reload")])
    d.emit(HookEvent("reload", {"result": "refused", "errors": ["x"]}), now=103.0)
    assert runs[-1] == ("reload", {"event": "reload", "node": "n1", "time": 103.0, "result": "refused", "errors": ["x"]})


def test_withdraw_all_at_stop() -> None:
    runs: list[dict] = []
    d = HookDispatcher([hook("h", "vip_down", "bgp_session_down", "member_left")], "n1",
                       lambda h, body: runs.append(body) or True)
    assert d.withdraw_all(1.0) == []
    d.observe(obs({A: here("static/web")}, owners={A: "n1"}, bgp={"gw": (True, "10.77.0.1")},
                  members={"n1": ("alive", ""), "n2": ("alive", "")}), 0.0)
    d.withdraw_all(1.0)
    assert [(b["event"], b.get("vip") or b.get("peer")) for b in runs] == [("vip_down", A), ("bgp_session_down", "gw")]


def test_environment() -> None:
    env = environment({"event": "vip_up", "node": "n1", "vip": A, "services": ["static/a", "static/b"],
                       "interface": None, "time": 1.5})
    assert env["LBD_EVENT"] == "vip_up" and env["LBD_VIP"] == A and env["LBD_NODE"] == "n1"
    assert env["LBD_SERVICE"] == env["LBD_SERVICES"] == "static/a,static/b"
    assert env["LBD_INTERFACE"] == "" and env["LBD_TIME"] == "1.5" and env["PATH"].startswith("/usr/local/sbin")
    assert "HOME" not in env


# -- the runner (real subprocesses) ---------------------------------------------


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def sample(name: str, labels: dict) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_hook_gets_the_event_on_stdin_and_in_its_environment(tmp_path) -> None:
    out = tmp_path / "out"
    argv = (script(tmp_path, "h", f'cat > {out}.json\nenv > {out}.env\necho "$1" > {out}.arg\n'), "a b;$(x)")
    runner = HookRunner()
    ok = sample("lbd_hook_runs_total", {"hook": "stdin", "result": "ok"})
    body = {"event": "vip_up", "node": "n1", "time": 1.0, "vip": A, "services": ["static/web"]}
    assert await runner.run(hook("stdin", "vip_up", argv=argv), body) == "ok"
    assert json.loads(Path(f"{out}.json").read_text()) == body
    env = dict(line.split("=", 1) for line in Path(f"{out}.env").read_text().splitlines() if "=" in line)
    assert env["LBD_EVENT"] == "vip_up" and env["LBD_VIP"] == A and env["LBD_SERVICE"] == "static/web"
    assert Path(f"{out}.arg").read_text() == "a b;$(x)\n"  # an argument, never a shell line
    assert sample("lbd_hook_runs_total", {"hook": "stdin", "result": "ok"}) == ok + 1


async def test_a_failing_hook_is_counted(tmp_path) -> None:
    runner = HookRunner()
    before = sample("lbd_hook_runs_total", {"hook": "fails", "result": "failed"})
    argv = (script(tmp_path, "f", "echo broken >&2\nexit 3\n"),)
    assert await runner.run(hook("fails", "vip_up", argv=argv), {"event": "vip_up"}) == "failed"
    assert sample("lbd_hook_runs_total", {"hook": "fails", "result": "failed"}) == before + 1
    gone = (str(tmp_path / "removed-since-check"),)
    assert await runner.run(hook("gone", "vip_up", argv=gone), {"event": "vip_up"}) == "error"
    assert sample("lbd_hook_runs_total", {"hook": "gone", "result": "error"}) >= 1


async def test_a_hook_that_hangs_is_killed_at_its_time_limit_with_its_children(tmp_path) -> None:
    pids = tmp_path / "pids"
    argv = (script(tmp_path, "hang", f"sleep 60 &\necho $! > {pids}\nexec sleep 60\n"),)
    runner = HookRunner()
    started = time.monotonic()
    assert await runner.run(hook("hangs", "vip_up", timeout=0.5, argv=argv), {"event": "vip_up"}) == "timeout"
    assert time.monotonic() - started < 5
    child = int(pids.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the hook's background child survived its time limit")
    assert sample("lbd_hook_runs_total", {"hook": "hangs", "result": "timeout"}) >= 1


async def test_concurrency_is_capped_and_overflow_is_dropped_and_counted(tmp_path) -> None:
    log = tmp_path / "log"
    argv = (script(tmp_path, "slow", f"echo start >> {log}\nsleep 0.3\necho end >> {log}\n"),)
    runner = HookRunner(max_running=2, max_queued=3)
    h = hook("slow", "vip_up", argv=argv)
    dropped = sample("lbd_hook_dropped_total", {"hook": "slow"})
    started = time.monotonic()
    accepted = [runner.submit(h, {"event": "vip_up"}) for _ in range(5)]
    assert time.monotonic() - started < 0.1, "submit must never wait"
    assert accepted == [True, True, True, False, False]
    assert sample("lbd_hook_dropped_total", {"hook": "slow"}) == dropped + 2
    # Sample the running count while they run: never more than 2 at once.
    peak = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = log.read_text().split() if log.exists() else []
        peak = max(peak, lines.count("start") - lines.count("end"))
        if lines.count("end") == 3:
            break
        await asyncio.sleep(0.02)
    assert log.read_text().split().count("end") == 3 and peak <= 2
    await runner.close()


async def test_close_kills_what_outlives_the_grace(tmp_path) -> None:
    argv = (script(tmp_path, "long", "exec sleep 60\n"),)
    runner = HookRunner()
    runner.submit(hook("long", "vip_up", timeout=60, argv=argv), {"event": "vip_up"})
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await runner.close(grace=0.3)
    assert time.monotonic() - started < 5


# -- config --------------------------------------------------------------------


def test_config_hooks(tmp_path) -> None:
    config = parse_config('[node]\nname = "n"\n[[hook]]\nname = "page"\non = ["vip_up", "reload"]\n'
                          'exec = ["/bin/true", "--x"]\ntimeout = 2.5\n', FILE)
    assert config.hooks == (HookConfig(name="page", on=("vip_up", "reload"), exec=("/bin/true", "--x"), timeout=2.5),)
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(ConfigError) as info:
        parse_config(f'[node]\nname = "n"\n[[hook]]\non = ["vip_upp"]\nexec = ["true"]\n'
                     f'[[hook]]\non = []\nexec = ["{plain}"]\ntimeout = 0\n[[hook]]\nexec = ["{tmp_path}"]\n'
                     '[[hook]]\non = ["reload"]\nexec = []\nshell = "x"\n', FILE)
    errors = "\n".join(info.value.errors)
    assert "hook[0]: on[0]: unknown event \"vip_upp\" (did you mean 'vip_up'?)" in errors
    assert "hook[0]: exec[0]: \"true\" must be an absolute path" in errors
    assert "hook[1]: on: must list at least one event" in errors
    assert "is not executable" in errors and "timeout: 0 must be more than 0 seconds" in errors
    assert "hook[2]: missing required key 'on'" in errors and "is not a regular file" in errors
    assert "hook[3]: exec: must hold at least the command" in errors and "unknown key 'shell'" in errors
