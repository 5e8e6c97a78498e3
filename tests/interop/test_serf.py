"""lbd's gossip against Debian's serf agent (memberlist 0.2.2), memberlist-wire.md section 10.

Each test runs in its own network namespace (private loopback) with fresh serf
agents and unique node names, because serf keeps failed and left members for
24 hours and refuses address changes for them. lbd's side is the small driver
``python -m lbd.testing.gossip_node`` that prints member events as JSON lines, so it can be
SIGKILLed like a crashed daemon.
"""

from __future__ import annotations

import json
import random
import signal
import string
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from lbd.cluster.crypto import generate_key
from lbd.testing.netlab import Host, Lab, wait_for
from lbd.testing.netlab import require_binary

pytestmark = [pytest.mark.interop, pytest.mark.lab]

SERF_PORT = 7946
PY_PORT = 7950


class SerfAgent:
    def __init__(self, lab: Lab, host: Host, name: str, log: Path, port: int = SERF_PORT,
                 rpc: int = 7373, encrypt: str | None = None) -> None:
        self.lab, self.host, self.name, self.log, self.port = lab, host, name, log, port
        self.rpc = f"127.0.0.1:{rpc}"
        argv = ["serf", "agent", f"-node={name}", f"-bind=127.0.0.1:{port}", f"-rpc-addr={self.rpc}",
                "-log-level=debug"]
        if encrypt:
            argv.append(f"-encrypt={encrypt}")
        self._logf = open(log, "wb")
        self.proc = host.popen(argv, stdout=self._logf, stderr=subprocess.STDOUT)
        wait_for(self._members_or_none, timeout=15, interval=0.2, what=f"serf {name} RPC")

    def _members_or_none(self) -> list[dict[str, Any]] | None:
        r = self.host.run(["serf", "members", f"-rpc-addr={self.rpc}", "-format", "json"], check=False, timeout=10)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)["members"]  # type: ignore[no-any-return]

    def members(self) -> dict[str, dict[str, Any]]:
        return {mbr["name"]: mbr for mbr in self._members_or_none() or []}

    def status(self, name: str) -> str | None:
        mbr = self.members().get(name)
        return mbr["status"] if mbr else None

    def wait_status(self, name: str, status: str, timeout: float) -> dict[str, Any]:
        wait_for(lambda: self.status(name) == status, timeout=timeout, interval=0.5,
                 what=f"serf sees {name} {status} (log tail: {self.log_text()[-600:]!r})")
        return self.members()[name]

    def log_text(self) -> str:
        self._logf.flush()
        return self.log.read_text(errors="replace")

    def run(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.host.run(["serf", command, f"-rpc-addr={self.rpc}", *args], timeout=15)

    def kill(self) -> None:
        self.lab.stop(self.proc, signal.SIGKILL)


class PyNode:
    """The lbd gossip driver, its JSON-line events collected by a thread."""

    def __init__(self, lab: Lab, host: Host, name: str, log: Path, join: list[str] | None = None,
                 port: int = PY_PORT, keys_file: Path | None = None, extra: tuple[str, ...] = ()) -> None:
        self.lab, self.name = lab, name
        argv = [sys.executable, "-m", "lbd.testing.gossip_node", "--name", name, "--bind", f"127.0.0.1:{port}",
                "--tag", "role=py", "--log-level", "debug", *extra]
        for seed in join or []:
            argv += ["--join", seed]
        if keys_file:
            argv += ["--keys-file", str(keys_file)]
        self._errf = open(log, "wb")
        self.proc = host.popen(argv, stdout=subprocess.PIPE, stderr=self._errf)
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.events.append(ev)

    def find(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        with self._lock:
            for ev in self.events:
                if pred(ev):
                    return ev
        return None

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        return wait_for(lambda: self.find(pred), timeout=timeout, interval=0.1,  # type: ignore[no-any-return]
                        what=f"{what} (events: {self.events[-8:]})")

    def member_state(self, name: str) -> str | None:
        with self._lock:
            states = [ev["state"] for ev in self.events if ev.get("name") == name and "state" in ev]
        return states[-1] if states else None

    def kill(self) -> None:
        self.lab.stop(self.proc, signal.SIGKILL)

    def terminate(self) -> None:
        self.lab.stop(self.proc, signal.SIGTERM)


@pytest.fixture
def ns(lab: Lab) -> Host:
    require_binary("serf")
    return lab.add_host("ml")


def _keys_file(tmp_path: Path, *keys: str) -> Path:
    f = tmp_path / f"keys-{len(list(tmp_path.iterdir()))}.json"
    f.write_text(json.dumps(list(keys)))
    return f


def _joined(ev: dict[str, Any]) -> bool:
    return ev.get("event") == "joined"


def test_join_shows_alive_with_tags(lab: Lab, ns: Host, tmp_path: Path) -> None:
    serf = SerfAgent(lab, ns, "serf-a1", tmp_path / "serf.log")
    py = PyNode(lab, ns, "py-a1", tmp_path / "py.log", join=[f"127.0.0.1:{SERF_PORT}"])
    py.wait(_joined, 15, "join")
    mbr = serf.wait_status("py-a1", "alive", 10)
    assert mbr["tags"] == {"role": "py"}
    assert mbr["addr"] == f"127.0.0.1:{PY_PORT}"
    assert mbr["protocol"] == {"min": 2, "max": 5, "version": 5}
    seen = py.wait(lambda e: e.get("name") == "serf-a1" and e.get("event") == "join", 5, "python sees serf")
    assert seen["state"] == "alive" and seen["tags"] == {}
    # Probed by serf for a while without failures either way.
    time.sleep(4)
    assert serf.status("py-a1") == "alive"
    assert "Failed ping: py-a1" not in serf.log_text()
    assert "Suspect py-a1" not in serf.log_text()
    assert py.member_state("serf-a1") == "alive"


def test_encrypted_join_and_key_mismatches(lab: Lab, ns: Host, tmp_path: Path) -> None:
    key, wrong = generate_key(), generate_key()
    serf = SerfAgent(lab, ns, "serf-b1", tmp_path / "serf.log", encrypt=key)
    # The same key (as the second, non-primary key of a ring: every key decrypts,
    # but the primary encrypts, so it must be the shared one here).
    good = PyNode(lab, ns, "py-b1", tmp_path / "py1.log", join=[f"127.0.0.1:{SERF_PORT}"],
                  keys_file=_keys_file(tmp_path, key, wrong))
    good.wait(_joined, 15, "encrypted join")
    assert serf.wait_status("py-b1", "alive", 10)["tags"] == {"role": "py"}
    good.wait(lambda e: e.get("name") == "serf-b1" and e.get("state") == "alive", 5, "python sees serf")

    # A wrong key: the join fails and serf cannot decrypt our packets.
    bad = PyNode(lab, ns, "py-b2", tmp_path / "py2.log", join=[f"127.0.0.1:{SERF_PORT}"], port=7951,
                 keys_file=_keys_file(tmp_path, wrong))
    bad.wait(lambda e: e.get("event") == "join_failed", 15, "wrong key refused")
    wait_for(lambda: "No installed keys could decrypt the message" in serf.log_text(), timeout=10,
             what="serf decrypt failure logged")
    # Plaintext lbd against encrypted serf: refused.
    plain = PyNode(lab, ns, "py-b3", tmp_path / "py3.log", join=[f"127.0.0.1:{SERF_PORT}"], port=7952)
    plain.wait(lambda e: e.get("event") == "join_failed", 15, "plaintext refused")
    assert "py-b2" not in serf.members() and "py-b3" not in serf.members()


def test_encrypted_lbd_against_plaintext_serf_gets_err(lab: Lab, ns: Host, tmp_path: Path) -> None:
    SerfAgent(lab, ns, "serf-c1", tmp_path / "serf.log")
    py = PyNode(lab, ns, "py-c1", tmp_path / "py.log", join=[f"127.0.0.1:{SERF_PORT}"],
                keys_file=_keys_file(tmp_path, generate_key()))
    ev = py.wait(lambda e: e.get("event") == "join_failed", 15, "join refused")
    assert "join" in ev["error"]
    # serf answered our encrypted push-pull with a plaintext err message, which
    # we refuse (keys are set) but log.
    lines = [ln for ln in (tmp_path / "py.log").read_text().splitlines() if "stream_reply_bad" in ln]
    assert lines and "Remote state is encrypted and encryption is not configured" in lines[0], lines


def test_compressed_push_pull_over_16k_is_decoded(lab: Lab, ns: Host, tmp_path: Path) -> None:
    serf = SerfAgent(lab, ns, "serf-d1", tmp_path / "serf.log")
    rng = random.Random(3)
    for i in range(40):
        serf.run("event", f"ev{i}", "".join(rng.choice(string.ascii_letters) for _ in range(400)))
    py = PyNode(lab, ns, "py-d1", tmp_path / "py.log", join=[f"127.0.0.1:{SERF_PORT}"],
                extra=("--stats-interval", "1"))
    py.wait(_joined, 15, "join with a big compressed state")
    state = py.wait(lambda e: e.get("event") == "remote_state", 5, "serf user state merged")
    assert state["size"] > 16 * 1024 and state["join"] is True and state["ltime"] > 0
    serf.wait_status("py-d1", "alive", 10)
    stats = py.wait(lambda e: e.get("event") == "stats" and e["received"].get("has_crc", 0) > 0
                    and e["received"].get("compress", 0) > 0, 15, "compressed and CRC packets counted")
    assert stats["received"]["push_pull"] >= 1
    assert "serf-d1" in (tmp_path / "py.log").read_text()


def test_kill_marks_failed_then_restart_refutes(lab: Lab, ns: Host, tmp_path: Path) -> None:
    serf = SerfAgent(lab, ns, "serf-e1", tmp_path / "serf.log")
    py = PyNode(lab, ns, "py-e1", tmp_path / "py1.log", join=[f"127.0.0.1:{SERF_PORT}"])
    py.wait(_joined, 15, "join")
    serf.wait_status("py-e1", "alive", 10)
    py.kill()
    serf.wait_status("py-e1", "failed", 20)
    assert "Marking py-e1 as failed" in serf.log_text()
    # Restart at the same address with incarnation 1: serf's push-pull reply says
    # we are dead, we refute with a higher incarnation and serf shows us alive.
    py2 = PyNode(lab, ns, "py-e1", tmp_path / "py2.log", join=[f"127.0.0.1:{SERF_PORT}"])
    py2.wait(_joined, 15, "rejoin")
    serf.wait_status("py-e1", "alive", 15)
    assert "refuting" in (tmp_path / "py2.log").read_text()


def test_serf_leave_and_serf_crash_seen_by_lbd(lab: Lab, ns: Host, tmp_path: Path) -> None:
    serf1 = SerfAgent(lab, ns, "serf-f1", tmp_path / "serf1.log")
    serf2 = SerfAgent(lab, ns, "serf-f2", tmp_path / "serf2.log", port=7947, rpc=7374)
    serf2.run("join", f"127.0.0.1:{SERF_PORT}")
    py = PyNode(lab, ns, "py-f1", tmp_path / "py.log", join=[f"127.0.0.1:{SERF_PORT}"])
    py.wait(_joined, 15, "join")
    py.wait(lambda e: e.get("name") == "serf-f2" and e.get("state") == "alive", 10, "sees serf2")
    serf1.wait_status("py-f1", "alive", 10)
    t = time.monotonic()
    serf1.run("leave")
    py.wait(lambda e: e.get("name") == "serf-f1" and e.get("state") == "left", 3, "serf1 left")
    assert time.monotonic() - t < 5
    serf2.kill()
    py.wait(lambda e: e.get("name") == "serf-f2" and e.get("state") == "suspect", 10, "serf2 suspected")
    py.wait(lambda e: e.get("name") == "serf-f2" and e.get("state") == "dead", 10, "serf2 dead")


def test_lbd_leave_plain_is_failed_with_intent_is_left(lab: Lab, ns: Host, tmp_path: Path) -> None:
    serf = SerfAgent(lab, ns, "serf-g1", tmp_path / "serf.log")
    plain = PyNode(lab, ns, "py-g1", tmp_path / "py1.log", join=[f"127.0.0.1:{SERF_PORT}"])
    polite = PyNode(lab, ns, "py-g2", tmp_path / "py2.log", join=[f"127.0.0.1:{SERF_PORT}"], port=7951,
                    extra=("--serf-leave",))
    plain.wait(_joined, 15, "join 1")
    polite.wait(_joined, 15, "join 2")
    serf.wait_status("py-g1", "alive", 10)
    serf.wait_status("py-g2", "alive", 10)
    # A pure memberlist leave: serf never saw a leave intent, so it shows failed.
    plain.terminate()
    assert plain.find(lambda e: e.get("event") == "left")
    serf.wait_status("py-g1", "failed", 10)
    # With serf's leave intent first: left, and it stays left.
    polite.terminate()
    assert polite.find(lambda e: e.get("event") == "left" and e.get("ok"))
    serf.wait_status("py-g2", "left", 10)
    time.sleep(3)
    assert serf.status("py-g2") == "left"


def _nft(host: Host, *rules: str) -> None:
    host.run(["nft", "add", "table", "inet", "lbdtest"])
    host.run(["nft", "add", "chain", "inet", "lbdtest", "input",
              "{ type filter hook input priority 0 ; policy accept ; }"])
    host.run(["nft", "add", "chain", "inet", "lbdtest", "output",
              "{ type filter hook output priority 0 ; policy accept ; }"])
    for rule in rules:
        host.run(["nft", "add", "rule", "inet", "lbdtest", *rule.split()])


def test_compressed_lbd_is_understood(lab: Lab, ns: Host, tmp_path: Path) -> None:
    serf = SerfAgent(lab, ns, "serf-h1", tmp_path / "serf.log")
    py = PyNode(lab, ns, "py-h1", tmp_path / "py.log", join=[f"127.0.0.1:{SERF_PORT}"], extra=("--compress",))
    py.wait(_joined, 15, "compressed join")
    assert serf.wait_status("py-h1", "alive", 10)["tags"] == {"role": "py"}
    time.sleep(3)
    assert serf.status("py-h1") == "alive"
    assert "[ERR]" not in serf.log_text()


def test_tcp_fallback_keeps_node_alive_without_udp(lab: Lab, ns: Host, tmp_path: Path) -> None:
    require_binary("nft")
    serf = SerfAgent(lab, ns, "serf-i1", tmp_path / "serf.log")
    py = PyNode(lab, ns, "py-i1", tmp_path / "py.log", join=[f"127.0.0.1:{SERF_PORT}"])
    py.wait(_joined, 15, "join")
    serf.wait_status("py-i1", "alive", 10)
    _nft(ns, f"input udp dport {PY_PORT} drop")
    wait_for(lambda: "Was able to connect to py-i1 but other probes failed" in serf.log_text(), timeout=15,
             interval=0.5, what="serf's TCP fallback")
    assert serf.status("py-i1") == "alive"
    assert py.member_state("serf-i1") == "alive"
    assert "probe_tcp_only" in (tmp_path / "py.log").read_text()


def test_serf_relays_indirect_pings_and_nacks(lab: Lab, ns: Host, tmp_path: Path) -> None:
    import socket as _socket

    from lbd.cluster import wire

    serf1 = SerfAgent(lab, ns, "serf-j1", tmp_path / "serf1.log")
    serf2 = SerfAgent(lab, ns, "serf-j2", tmp_path / "serf2.log", port=7947, rpc=7374)
    serf2.run("join", f"127.0.0.1:{SERF_PORT}")
    serf1.wait_status("serf-j2", "alive", 10)
    # Raw codec check: a UDP socket in the namespace asks serf1 to probe serf2.
    script = (
        "import socket,sys\n"
        "from lbd.cluster import wire\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('127.0.0.1',7960)); s.settimeout(3)\n"
        "def ask(seq,port,node):\n"
        "    s.sendto(wire.encode(wire.IndirectPing(seq,bytes([127,0,0,1]),port,node,True)),('127.0.0.1',7946))\n"
        "    while True:\n"
        "        data,_=s.recvfrom(65536)\n"
        "        if data[0]==12: data=data[5:]\n"
        "        for m in wire.decode_packet(data).messages:\n"
        "            if getattr(m,'seq_no',None)==seq: return type(m).__name__\n"
        "print(ask(4242,7947,'serf-j2'), ask(4243,1,'nobody'))\n"
    )
    out = ns.run([sys.executable, "-c", script], timeout=20).stdout.split()
    assert out == ["Ack", "Nack"]
    # With serf1 -> serf2 UDP dropped, serf1 asks lbd to relay, and lbd's relay works.
    py = PyNode(lab, ns, "py-j1", tmp_path / "py.log", join=[f"127.0.0.1:{SERF_PORT}"],
                extra=("--stats-interval", "1"))
    py.wait(_joined, 15, "join")
    py.wait(lambda e: e.get("name") == "serf-j2" and e.get("state") == "alive", 10, "sees serf2")
    require_binary("nft")
    _nft(ns, f"output udp sport {SERF_PORT} udp dport 7947 drop")
    py.wait(lambda e: e.get("event") == "stats" and e["received"].get("indirect_ping", 0) > 0, 20,
            "serf1's indirect ping through lbd")
    time.sleep(2)
    assert serf1.status("serf-j2") == "alive"
    assert "Marking serf-j2 as failed" not in serf1.log_text()


def test_incompatible_delegate_version_is_refused(lab: Lab, ns: Host, tmp_path: Path) -> None:
    serf = SerfAgent(lab, ns, "serf-k1", tmp_path / "serf.log")
    py = PyNode(lab, ns, "py-k1", tmp_path / "py.log", join=[f"127.0.0.1:{SERF_PORT}"],
                extra=("--vsn", "1,5,2,0,0,0", "--stay"))
    py.wait(lambda e: e.get("event") in ("joined", "join_failed"), 15, "join attempt")
    wait_for(lambda: "incompatible" in serf.log_text(), timeout=10, what="serf refuses the versions")
    time.sleep(1)
    assert "py-k1" not in serf.members()
