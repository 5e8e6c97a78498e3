"""Operations that never surprise, with the real daemon in a namespace lab.

- a reload that validates but cannot be applied (a metrics address the node
  lacks) keeps the running config and its listener, says why, and ends with
  READY=1; the next good reload applies;
- a reload that would re-address a service is refused (SIGHUP: a log line;
  lbd-ctl: printed) until `lbd-ctl reload --allow-readdress`; `lbd plan`
  shows it first;
- notify hooks run on vip_up, vip_down and reload with the event's payload,
  and on bgp_session_up/down with a real BIRD peer.
"""

from __future__ import annotations

import json
import signal
import socket as socketlib
import stat
import subprocess

import pytest

from lbd.testing.netlab import LbdNode, wait_for

pytestmark = pytest.mark.lab

POOL = """
[[pool]]
name = "lan"
addresses = ["10.77.0.48/28"]

[[l2_advertisement]]
pools = ["lan"]
"""
TWO = '[[service]]\nname = "a"\n[[service]]\nname = "b"\n'
ABSENT = "10.77.0.99"  # in the lab subnet, on no interface of the node


@pytest.fixture
def node(lab):
    host = lab.add_host("node", ["10.77.0.2/24"])
    lab.add_host("client", ["10.77.0.3/24"])
    return host


def addresses_on(host) -> set[str]:
    out = host.run(["ip", "-j", "addr", "show", "dev", "eth0"]).stdout
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])}


def plan(lbd: LbdNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(lbd.bindir / "lbd"), "plan", "--socket", str(lbd.socket), *args],
                          capture_output=True, text=True, timeout=60)


def scrape(host, address: str) -> bool:
    out = host.run(["curl", "-sS", "--max-time", "3", f"http://{address}:9120/metrics"], check=False)
    return "lbd_config_reloads" in out.stdout


def test_reload_that_cannot_be_applied_rolls_back_and_ends_ready(node, tmp_path):
    sink_path = tmp_path / "notify.sock"
    sink = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
    sink.bind(str(sink_path))
    sink.settimeout(15)
    good = POOL + TWO + '[metrics]\nlisten = "127.0.0.1:9120"\n'
    lbd = LbdNode(node, tmp_path, good, name="node1")
    lbd.start(env={"NOTIFY_SOCKET": str(sink_path)})
    try:
        assert sink.recv(4096).decode().startswith("READY=1")
        wait_for(lambda: scrape(node, "127.0.0.1"), 10, what="metrics on 127.0.0.1")
        lbd.write_config(POOL + TWO + f'[metrics]\nlisten = "{ABSENT}:9120"\n')
        for attempt in ("ctl", "sighup"):
            if attempt == "ctl":
                result = lbd.ctl("reload", check=False)
                assert result.returncode == 1 and "could not be applied" in result.stderr
                assert ABSENT in result.stderr and "running config" in result.stderr
            else:
                lbd.send_signal(signal.SIGHUP)
            seen = []
            while not (seen and seen[-1].startswith("READY=1")):
                seen.append(sink.recv(4096).decode())
            assert seen[0].startswith("RELOADING=1") and "rolled back" in seen[-1], seen
            assert scrape(node, "127.0.0.1"), "the running metrics listener must keep serving"
            status = lbd.status()
            assert status["reload_error"] and "could not be applied" in status["reload_error"][0]
            assert lbd.running()
        assert "last reload ROLLED BACK, running config kept" in lbd.ctl("status").stdout
        # Once the address exists, the same file applies.
        node.run(["ip", "addr", "add", f"{ABSENT}/32", "dev", "eth0"])
        assert lbd.ctl("reload").stdout.strip() == "reloaded"
        wait_for(lambda: scrape(node, ABSENT), 10, what=f"metrics on {ABSENT}")
        assert not scrape(node, "127.0.0.1") and lbd.status()["reload_error"] is None
    finally:
        lbd.stop()
        sink.close()


def test_readdress_is_refused_until_allowed_and_plan_shows_it(node, tmp_path):
    lbd = LbdNode(node, tmp_path, POOL + TWO, name="node1").start()
    try:
        wait_for(lambda: {"10.77.0.48", "10.77.0.49"} <= addresses_on(node), 15, what="a and b bound")
        same = plan(lbd)
        assert same.returncode == 0 and "no change" in same.stdout
        # Additions and removals: a plan, not a refusal.
        other = tmp_path / "other.toml"
        other.write_text(lbd.config_path.read_text().replace('name = "a"', 'name = "c"'))
        result = plan(lbd, "--config", str(other), "--json")
        assert result.returncode == 2, result.stderr
        diff = json.loads(result.stdout)
        assert diff["released"] == [{"service": "static/a", "addresses": ["10.77.0.48"]}]
        assert diff["allocated"] == [{"service": "static/c", "addresses": ["10.77.0.48"]}]
        assert diff["readdressed"] == [] and diff["reload_refused"] is False
        # A pool shrink that drops a's address.
        lbd.write_config(POOL.replace('"10.77.0.48/28"', '"10.77.0.49-10.77.0.63"') + TWO)
        shown = plan(lbd)
        assert shown.returncode == 2
        assert "static/a: 10.77.0.48 -> 10.77.0.50" in shown.stdout and "static/b" not in shown.stdout
        assert "VIPs withdrawn:\n  10.77.0.48" in shown.stdout
        lbd.send_signal(signal.SIGHUP)
        line = wait_for(lambda: next((json.loads(x) for x in lbd.log().splitlines() if '"reload_refused"' in x), None),
                        15, what="the refusal in the log")
        assert "static/a" in line["error"] and "static/b" not in line["error"]
        refused = lbd.ctl("reload", check=False)
        assert refused.returncode == 1 and "static/a: 10.77.0.48 -> 10.77.0.50" in refused.stderr
        assert "--allow-readdress" in refused.stderr
        assert lbd.service("static/a")["addresses"] == ["10.77.0.48"] and "10.77.0.48" in addresses_on(node)
        assert lbd.ctl("reload", "--allow-readdress").stdout.strip() == "reloaded"
        wait_for(lambda: "10.77.0.50" in addresses_on(node) and "10.77.0.48" not in addresses_on(node), 15,
                 what="a re-addressed")
        assert lbd.service("static/b")["addresses"] == ["10.77.0.49"]
        assert plan(lbd).returncode == 0
        # An invalid file: exit 1 and the errors; lbd not running: exit 3.
        bad = tmp_path / "bad.toml"
        bad.write_text('[node]\nname = "node1"\nportz = 1\n')
        invalid = plan(lbd, "--config", str(bad))
        assert invalid.returncode == 1 and "portz" in invalid.stderr
    finally:
        lbd.stop()
    assert plan(lbd).returncode == 3


def test_hooks_run_on_vip_up_vip_down_and_reload(node, tmp_path):
    record = tmp_path / "events.jsonl"
    hook = tmp_path / "hook.sh"
    # One write per run (O_APPEND): hooks run concurrently (reload and vip_down here).
    hook.write_text(f'#!/bin/sh\nbody=$(cat)\nprintf "%s %s %s\\n" "$body" "$LBD_EVENT" "$LBD_VIP" >> {record}\n')
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    hooks = f'[[hook]]\nname = "rec"\non = ["vip_up", "vip_down", "reload"]\nexec = ["{hook}"]\ntimeout = 5\n'

    def events() -> list[tuple[dict, str]]:
        out = []
        for line in record.read_text().splitlines() if record.exists() else []:
            body, _, tail = line.rpartition("}")
            out.append((json.loads(body + "}"), tail.strip()))
        return out

    lbd = LbdNode(node, tmp_path, POOL + hooks + '[[service]]\nname = "a"\n', name="node1").start()
    try:
        got = wait_for(lambda: events(), 15, what="vip_up")
        assert got == [({"event": "vip_up", "node": "node1", "time": got[0][0]["time"], "vip": "10.77.0.48",
                         "services": ["static/a"], "interface": "eth0", "modes": ["l2"], "pool": "lan"},
                        "vip_up 10.77.0.48")]
        lbd.write_config(POOL + hooks)
        lbd.send_signal(signal.SIGHUP)
        got = wait_for(lambda: e if len(e := events()) >= 3 else None, 15, what="reload and vip_down")
        kinds = sorted(e[0]["event"] for e in got[1:])
        assert kinds == ["reload", "vip_down"]
        reload = next(e[0] for e in got if e[0]["event"] == "reload")
        assert reload["result"] == "applied" and reload["errors"] == []
        assert next(e for e in got if e[0]["event"] == "vip_down")[1] == "vip_down 10.77.0.48"
    finally:
        lbd.stop()
    assert len(events()) == 3  # no vip_down at stop: nothing was announced any more


@pytest.mark.interop
def test_hooks_run_on_bgp_session_up_and_down(lab, tmp_path):
    from lbd.testing.netlab import require_binary
    from interop.bgp_peers import BirdPeer, Neighbor, PeerSpec

    class DirectBird(BirdPeer):  # as in test_daemon_bgp: iBGP to a directly connected neighbour
        def config(self) -> str:
            text = super().config()
            return text if " direct; hold time" in text else text.replace(" hold time", " direct; hold time")

    require_binary("bird", "birdc")
    router_host = lab.add_host("router", ["10.77.0.1/24"])
    node = lab.add_host("node", ["10.77.0.2/24"])
    record = tmp_path / "events.txt"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\ncat > /dev/null\nprintf "%s %s %s\\n" "$LBD_EVENT" "$LBD_PEER" "$LBD_PEER_ADDRESS" >> {record}\n')
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    hooks = f'[[hook]]\non = ["bgp_session_up", "bgp_session_down"]\nexec = ["{hook}"]\n'
    router = DirectBird(router_host, PeerSpec(asn=64512, router_id="10.77.0.1",
                                              neighbors=[Neighbor(address="10.77.0.2", asn=64512, hold_time=9)])).start()
    config = ('[[pool]]\nname = "routed"\naddresses = ["10.88.0.0/24"]\n'
              '[[bgp_peer]]\nname = "gateway"\nmy_asn = 64512\npeer_asn = 64512\npeer_address = "10.77.0.1"\n'
              'hold_time = 9\n[[bgp_advertisement]]\npools = ["routed"]\n'
              '[[service]]\nname = "api"\npool = "routed"\n')
    lbd = LbdNode(node, tmp_path, config + hooks, name="node1").start()

    def lines() -> list[str]:
        return record.read_text().splitlines() if record.exists() else []

    try:
        wait_for(lambda: lines() == ["bgp_session_up gateway 10.77.0.1"], 30, what="bgp_session_up")
        router.stop()
        wait_for(lambda: lines()[1:] == ["bgp_session_down gateway 10.77.0.1"], 30, what="bgp_session_down")
    finally:
        lbd.stop()
        router.stop()
    assert len(lines()) == 2  # the session was already down at stop: nothing more
