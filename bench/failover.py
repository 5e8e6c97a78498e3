"""Failover benchmark: how long a client goes without service when a VIP's owner fails.

The lab (``lbd.testing.netlab.Lab``): three nodes ``n1``..``n3`` (10.77.0.11-13/24) and a
client (10.77.0.50/24) on one bridge. The VIP 10.77.0.100 is held by whichever
node owns it; every node runs ``failover_responder.py`` (UDP port 9999) that
answers with the node's name. The client runs ``failover_probe.py``: a request
every 2 ms, each answer timestamped with its node.

Per run: wait until the system has settled (every daemon up, exactly one node
holds the VIP, and it is the node the system prefers when all are healthy), start
the probe, inject a fault on the owner, wait until another node answers, stop
the probe, restore the faulty node. Faults:

- ``crash``: the owner's link is set down on the switch (a dead host sends
  nothing, not even a last packet) and its daemon gets ``SIGKILL``. On restore
  the VIP the dead daemon left on eth0 is removed (a rebooted host comes back
  clean), the link goes up and the daemon starts again.
- ``graceful``: the owner's daemon gets ``SIGTERM``; on restore it starts again.

The outage is measured at the client: the largest gap between consecutive
answers from the last answer before the fault to the first answer from the new
owner (``outage()``). Nothing is inferred from daemon logs.

Systems: keepalived VRRP (``advert_int`` 1 and 0.1) and lbd (``lbd run``), in
the same lab and the same run. Usage::

    sudo /work/venv/bin/python bench/failover.py --systems keepalived,lbd,lbd-fast --runs 20

This module is also a library for lab tests: ``build_lab``, ``KeepalivedSystem``,
``LbdSystem``, ``run_once`` measure one failover cheaply.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from lbd.testing.netlab import Host, Lab
from lbd.planner.election import rank

BENCH = Path(__file__).resolve().parent
PROBE = BENCH / "failover_probe.py"
RESPONDER = BENCH / "failover_responder.py"

VIP = "10.77.0.100"
PORT = 9999
NODES = {"n1": "10.77.0.11", "n2": "10.77.0.12", "n3": "10.77.0.13"}
CLIENT = "10.77.0.50"
PREFIXLEN = 24
GOSSIP_PORT = 7946
FAULTS = ("crash", "graceful")


class NotReady(RuntimeError):
    """A system cannot run in this lab (not installed, not implemented yet, fails to start)."""


class RunFailed(RuntimeError):
    """One measurement did not complete (no failover within the timeout, probe trouble)."""


# ---------------------------------------------------------------------------
# The lab
# ---------------------------------------------------------------------------


@dataclass
class FailoverLab:
    lab: Lab
    workdir: Path
    nodes: dict[str, Host]
    client: Host
    python: str = sys.executable

    def has_vip(self, node: str) -> bool:
        out = self.nodes[node].run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"], check=False).stdout
        return f" {VIP}/" in out

    def vip_holders(self) -> list[str]:
        return [name for name in self.nodes if self.has_vip(name)]

    def drop_vip(self, node: str) -> None:
        """Remove a VIP a killed daemon left behind (a rebooted host comes back without it)."""
        self.nodes[node].run(["ip", "addr", "del", f"{VIP}/32", "dev", "eth0"], check=False)


def build_lab(lab: Lab, workdir: Path, python: str = sys.executable) -> FailoverLab:
    """Three nodes with a responder each and a client, on the lab's bridge."""
    workdir.mkdir(parents=True, exist_ok=True)
    nodes = {name: lab.add_host(name, [f"{addr}/{PREFIXLEN}"]) for name, addr in NODES.items()}
    client = lab.add_host("client", [f"{CLIENT}/{PREFIXLEN}"])
    flab = FailoverLab(lab=lab, workdir=workdir, nodes=nodes, client=client, python=python)
    for name, host in nodes.items():
        proc = host.popen(
            [python, str(RESPONDER), "--node", name, "--port", str(PORT), "--max-seconds", "7200"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        line = _readline_with_timeout(proc, 10.0)
        if not line.startswith(b"ready"):
            raise RuntimeError(f"responder on {name} did not start: {line!r}")
    return flab


def _readline_with_timeout(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return box[0] if box else b""


# ---------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------


class Probe:
    """``failover_probe.py`` running in the client namespace, read by a thread."""

    def __init__(self, flab: FailoverLab, interval: float = 0.002, max_seconds: float = 60.0, vip: str = VIP,
                 max_count: int = 100_000) -> None:
        self.vip = vip
        self.proc = flab.client.popen(
            [flab.python, str(PROBE), "--vip", vip, "--port", str(PORT), "--interval", str(interval),
             "--max-seconds", str(max_seconds), "--max-count", str(max_count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lab = flab.lab
        self.events: queue.Queue[dict] = queue.Queue()
        self.node_events: list[dict] = []
        self.result: dict | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            self.events.put(event)

    def wait(self, predicate: Callable[[dict], bool], timeout: float) -> dict | None:
        """The first ``node`` event matching ``predicate`` within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for event in self.node_events:
            if predicate(event):
                return event
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                event = self.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    return None
                continue
            if event.get("ev") == "done":
                self.result = event
                return None
            self.node_events.append(event)
            if predicate(event):
                return event

    def stop(self, timeout: float = 10.0) -> dict:
        """Stop the probe and return its ``done`` record (every answer it got)."""
        if self.result is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"stop\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            self._reader.join(timeout)
            while True:
                try:
                    event = self.events.get_nowait()
                except queue.Empty:
                    break
                if event.get("ev") == "done":
                    self.result = event
                else:
                    self.node_events.append(event)
        self.lab.stop(self.proc, timeout=2)
        if self.result is None:
            err = self.proc.stderr.read().decode(errors="replace")[-500:] if self.proc.stderr else ""
            raise RunFailed(f"the probe gave no result: {err}")
        return self.result


def outage(responses: Sequence[Sequence[object]], t_fault: float, old_owner: str) -> tuple[float, str] | None:
    """The client's time without service across a failover, and the new owner.

    ``responses`` are ``[t, node, seq]`` in arrival order. The outage is the
    largest gap between consecutive answers from the last answer at or before
    ``t_fault`` up to the first answer from a node other than ``old_owner``
    after it. (Measured between answers, so it includes up to one probe
    interval of granularity.) ``None`` when there was no answer before the
    fault or no new owner answered after it.
    """
    times = [float(r[0]) for r in responses]  # type: ignore[arg-type]
    before = [i for i, t in enumerate(times) if t <= t_fault]
    if not before:
        return None
    start = before[-1]
    end = None
    for i in range(start + 1, len(responses)):
        if responses[i][1] != old_owner:
            end = i
            break
    if end is None:
        return None
    gap = max(times[i + 1] - times[i] for i in range(start, end))
    return gap, str(responses[end][1])


# ---------------------------------------------------------------------------
# Systems under test
# ---------------------------------------------------------------------------


class System:
    """One failover implementation running on the three nodes."""

    name = "system"

    def __init__(self) -> None:
        self.flab: FailoverLab | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    # Subclasses: write configs in setup(), return argv in command().
    def setup(self, flab: FailoverLab) -> None:
        self.flab = flab

    def command(self, node: str) -> list[str]:
        raise NotImplementedError

    def preferred_owner(self) -> str | None:
        """The node that owns the VIP once everyone is up, when the system has one."""
        return None

    def start(self, flab: FailoverLab) -> None:
        self.setup(flab)
        for node in flab.nodes:
            self.start_node(node)

    def start_node(self, node: str) -> None:
        assert self.flab is not None
        log = self.flab.workdir / self.name / f"{node}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self.logs[node] = log
        with open(log, "ab") as out:
            out.write(f"--- start {time.time():.3f}\n".encode())
            out.flush()
            self.procs[node] = self.flab.nodes[node].popen(
                self.command(node), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def signal_node(self, node: str, sig: int) -> None:
        """Send ``sig`` to the node's daemon (its whole process group: keepalived forks)."""
        proc = self.procs[node]
        if sig == signal.SIGKILL:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        else:
            # A clean stop goes to the main process only, as systemd's KillMode=mixed would.
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass

    def wait_stopped(self, node: str, timeout: float = 15.0) -> None:
        assert self.flab is not None
        proc = self.procs[node]
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.flab.lab.stop(proc, sig=signal.SIGKILL)
        # Children (keepalived's VRRP process) share the process group: make sure
        # they are gone (bounded wait: init reaps the orphans).
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.02)

    def check_running(self) -> None:
        for node, proc in self.procs.items():
            if proc.poll() is not None:
                raise NotReady(f"{self.name}: daemon on {node} exited with {proc.returncode}: {self.log_tail(node)}")

    def log_tail(self, node: str, chars: int = 600) -> str:
        log = self.logs.get(node)
        if log is None or not log.exists():
            return ""
        return log.read_text(errors="replace")[-chars:].strip()

    def cluster_ready(self) -> bool:
        """Extra readiness the system can report (lbd: every node sees every member alive)."""
        return True

    def wait_settled(self, timeout: float, stable: float = 0.5) -> str:
        """Wait until exactly one node holds the VIP, the preferred one if any, for ``stable`` s."""
        assert self.flab is not None
        want = self.preferred_owner()
        deadline = time.monotonic() + timeout
        since: float | None = None
        holder: str | None = None
        holders: list[str] = []
        while time.monotonic() < deadline:
            self.check_running()
            holders = self.flab.vip_holders()
            ok = len(holders) == 1 and (want is None or holders[0] == want)
            now = time.monotonic()
            if ok and holders[0] == holder and since is not None:
                if now - since >= stable and self.cluster_ready():
                    return holder
            elif ok:
                holder, since = holders[0], now
            else:
                holder, since = None, None
            time.sleep(0.05)
        raise RunFailed(f"{self.name}: not settled after {timeout}s (VIP holders {holders}, want {want})")

    def close(self) -> None:
        if self.flab is None:
            return
        for node, proc in self.procs.items():
            self.flab.lab.stop(proc, timeout=5)
            self.wait_stopped(node, timeout=1)
            self.flab.drop_vip(node)
        self.procs.clear()


class KeepalivedSystem(System):
    """keepalived VRRP, one ``vrrp_instance`` holding the VIP on eth0.

    Defaults are the usual MASTER/BACKUP layout: priorities 100/99/98, preemption
    on (keepalived's default), no authentication, keepalived's gratuitous ARP
    defaults (5 on takeover, 5 more after ``garp_master_delay`` 5 s). VRRPv2
    (keepalived's default) for ``advert_int`` >= 1 s, VRRPv3 for sub-second
    intervals (v2 counts the interval in whole seconds; RFC 5798 section 5.2.7
    counts it in centiseconds).

    Expected: on a crash the backups take over after Master_Down_Interval =
    3 x advert_int + Skew_Time with Skew_Time = (256 - priority) x advert_int / 256
    (RFC 5798 section 6.1), counted from the last advert heard, so uniformly
    2.6-3.6 s after the fault for priority 99 and advert_int 1; on a clean stop
    the master sends priority 0 and the backup takes over after Skew_Time alone
    (RFC 5798 section 6.4.3), about 0.61 s.
    """

    def __init__(self, advert_int: float = 1.0, priorities: Sequence[int] = (100, 99, 98),
                 vrrp_version: int | None = None) -> None:
        super().__init__()
        self.advert_int = advert_int
        self.priorities = tuple(priorities)
        self.vrrp_version = vrrp_version or (2 if advert_int >= 1 and float(advert_int).is_integer() else 3)
        self.name = f"keepalived-{advert_int:g}"
        self.binary = shutil.which("keepalived")

    def preferred_owner(self) -> str | None:
        names = list(NODES)
        if len(set(self.priorities)) != len(self.priorities):
            return None  # equal priorities: whoever won stays (no preemption on ties)
        return names[max(range(len(names)), key=lambda i: self.priorities[i])]

    def setup(self, flab: FailoverLab) -> None:
        super().setup(flab)
        if self.binary is None:
            raise NotReady("keepalived is not installed")
        base = flab.workdir / self.name
        base.mkdir(parents=True, exist_ok=True)
        for (node, _addr), priority in zip(NODES.items(), self.priorities):
            conf = base / f"{node}.conf"
            conf.write_text(
                "global_defs {\n"
                f"    router_id {node}\n"
                f"    vrrp_version {self.vrrp_version}\n"
                "}\n"
                "vrrp_instance VI_1 {\n"
                "    state BACKUP\n"
                "    interface eth0\n"
                "    virtual_router_id 77\n"
                f"    priority {priority}\n"
                f"    advert_int {self.advert_int:g}\n"
                "    virtual_ipaddress {\n"
                f"        {VIP}/32 dev eth0\n"
                "    }\n"
                "}\n"
            )
            check = flab.nodes[node].run([self.binary, "-t", "-f", str(conf)], check=False)
            if check.returncode != 0:
                raise NotReady(f"keepalived rejects its config: {check.stdout}{check.stderr}")

    def command(self, node: str) -> list[str]:
        assert self.flab is not None and self.binary is not None
        base = self.flab.workdir / self.name
        # A SIGKILLed keepalived leaves its pid files; a stale pid that is still
        # a zombie (or reused) makes keepalived refuse to start.
        for suffix in ("pid", "vrrp.pid", "checkers.pid"):
            (base / f"{node}.{suffix}").unlink(missing_ok=True)
        # Foreground (-n), log to the console (-l, -D) and not to syslog (-G),
        # VRRP only (-P), private pid files so instances in other namespaces
        # (and a host keepalived) are not mistaken for "already running".
        return [
            self.binary, "-n", "-l", "-D", "-G", "-P",
            "-f", str(base / f"{node}.conf"),
            "-p", str(base / f"{node}.pid"),
            "-r", str(base / f"{node}.vrrp.pid"),
            "-c", str(base / f"{node}.checkers.pid"),
        ]


class LbdSystem(System):
    """The lbd daemon, clustered over gossip, announcing the VIP by binding it on eth0.

    ``failback_delay = 0`` so that between runs the restored node takes its VIP
    back at once and every run starts from the same owner (the first in
    ``lbd.planner.election.rank``); failback is not what this benchmark measures.
    """

    def __init__(self, profile: str = "default", failback_delay: float = 0.0) -> None:
        super().__init__()
        self.profile = profile
        self.failback_delay = failback_delay
        self.name = "lbd" if profile == "default" else f"lbd-{profile}"

    def preferred_owner(self) -> str | None:
        return rank(ipaddress.ip_address(VIP), NODES)[0] if self.failback_delay == 0 else None

    def preflight(self, flab: FailoverLab) -> None:
        """Raise ``NotReady`` unless ``python -m lbd run --config`` exists."""
        try:
            result = subprocess.run(
                [flab.python, "-m", "lbd", "run", "--help"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NotReady(f"`python -m lbd run --help` failed: {exc}") from exc
        text = result.stdout + result.stderr
        if result.returncode != 0 or "--config" not in text:
            raise NotReady(f"`python -m lbd run --help` exited {result.returncode}: {text.strip()[-300:]}")

    def cluster_text(self, node: str, base: Path, log_level: str = "info") -> str:
        """The [node], [cluster] and [log] sections of ``node``'s config."""
        others = [f'"{addr}:{GOSSIP_PORT}"' for name, addr in NODES.items() if name != node]
        return (
            "[node]\n"
            f'name = "{node}"\n'
            f'state_dir = "{base / node / "state"}"\n'
            f'control_socket = "{self.socket(node)}"\n'
            "\n[cluster]\n"
            f'bind = "{NODES[node]}:{GOSSIP_PORT}"\n'
            f"join = [{', '.join(others)}]\n"
            f'profile = "{self.profile}"\n'
            f"failback_delay = {self.failback_delay:g}\n"
            "allow_plaintext = true\n"  # lab namespaces: measured without encryption
            "\n[log]\n"
            f'level = "{log_level}"\n'
            'format = "json"\n'
        )

    def config_text(self, node: str, base: Path) -> str:
        return (
            self.cluster_text(node, base)
            + "\n[[pool]]\n"
            'name = "p"\n'
            f'addresses = ["{VIP}/32"]\n'
            "\n[[l2_advertisement]]\n"
            'pools = ["p"]\n'
            "\n[[service]]\n"
            'name = "vip"\n'
            'pool = "p"\n'
            f'ports = ["udp/{PORT}"]\n'
        )

    def socket(self, node: str) -> Path:
        assert self.flab is not None
        return self.flab.workdir / self.name / node / "lbd.sock"

    def setup(self, flab: FailoverLab) -> None:
        super().setup(flab)
        self.preflight(flab)
        base = flab.workdir / self.name
        for node in NODES:
            (base / node / "state").mkdir(parents=True, exist_ok=True)
            (base / f"{node}.toml").write_text(self.config_text(node, base))

    def command(self, node: str) -> list[str]:
        assert self.flab is not None
        return [self.flab.python, "-m", "lbd", "run", "--config", str(self.flab.workdir / self.name / f"{node}.toml")]

    def ctl_json(self, node: str, command: str) -> object | None:
        """``lbd-ctl --json COMMAND`` on ``node``, or None if it does not answer (yet)."""
        assert self.flab is not None
        result = self.flab.nodes[node].run(
            [self.flab.python, "-m", "lbd.ctl", "--socket", str(self.socket(node)), "--json", command],
            check=False, timeout=10,
        )
        if result.returncode != 0:
            return None
        try:
            return json.loads(result.stdout)
        except ValueError:
            return None

    def owner(self, node: str) -> str | None:
        """The VIP's owner as ``node`` sees it (``lbd-ctl status``), if it says."""
        status = self.ctl_json(node, "status")
        if isinstance(status, dict):
            for row in status.get("vips", []):
                if isinstance(row, dict) and row.get("vip") == VIP:
                    return row.get("owner")
        return None

    def cluster_ready(self) -> bool:
        """Every node answers ``lbd-ctl members`` and sees all three members alive."""
        for node in NODES:
            members = self.ctl_json(node, "members")
            if not isinstance(members, list):
                return False
            alive = {m.get("name") for m in members if isinstance(m, dict) and m.get("state") == "alive"}
            if alive != set(NODES):
                return False
        return True

    def wait_settled(self, timeout: float, stable: float = 0.5) -> str:
        try:
            return super().wait_settled(timeout, stable)
        except RunFailed as exc:
            raise NotReady(f"lbd not ready: {exc}; n1 log: {self.log_tail('n1')}") from exc


# ---------------------------------------------------------------------------
# One measurement
# ---------------------------------------------------------------------------


@dataclass
class RunResult:
    system: str
    fault: str
    old_owner: str
    new_owner: str | None = None
    outage: float | None = None  # seconds without service at the client
    error: str | None = None
    extra: dict = field(default_factory=dict)


def inject(system: System, node: str, fault: str) -> float:
    """Inject ``fault`` on ``node``; returns the CLOCK_MONOTONIC time of the fault."""
    assert system.flab is not None
    if fault == "crash":
        t = time.monotonic()
        system.flab.lab.set_link(system.flab.nodes[node], up=False)
        system.signal_node(node, signal.SIGKILL)
        return t
    if fault == "graceful":
        t = time.monotonic()
        system.signal_node(node, signal.SIGTERM)
        return t
    raise ValueError(f"unknown fault {fault!r}; choose from {FAULTS}")


def restore(system: System, node: str, fault: str) -> None:
    """Bring a faulted node back: a crashed host reboots clean, a stopped daemon restarts."""
    assert system.flab is not None
    system.wait_stopped(node)
    if fault == "crash":
        system.flab.drop_vip(node)
        system.flab.lab.set_link(system.flab.nodes[node], up=True)
    system.start_node(node)


def run_once(system: System, fault: str, settle_timeout: float = 30.0, failover_timeout: float = 15.0,
             interval: float = 0.002, phase: float | None = None) -> RunResult:
    """Measure one failover of ``system`` (already started) under ``fault``, then restore.

    The fault comes 0.3 s + ``phase`` after steady service (``phase`` drawn
    uniformly from [0, 1) s by default). Without it every run would hit the
    same point of the system's timer cycle (VRRP adverts, gossip probes),
    since a run starts a fixed time after the previous takeover, and the
    distribution would be that of one phase instead of a random crash.
    """
    assert system.flab is not None
    if phase is None:
        phase = random.random()
    owner = system.wait_settled(settle_timeout)
    probe = Probe(system.flab, interval=interval, max_seconds=settle_timeout + failover_timeout + 10)
    faulted = False
    try:
        first = probe.wait(lambda e: True, timeout=5.0)
        if first is None:
            raise RunFailed(f"{system.name}: the client gets no answer from the VIP (owner {owner})")
        # Steady service from the owner for a moment before the fault.
        if probe.wait(lambda e: e is not first, timeout=0.3 + phase) is not None or first["node"] != owner:
            raise RunFailed(f"{system.name}: service not steady before the fault ({probe.node_events})")
        t_fault = inject(system, owner, fault)
        faulted = True
        moved = probe.wait(lambda e: e["t"] > t_fault and e["node"] != owner, timeout=failover_timeout)
        time.sleep(0.05)  # a few answers after the move, for the record
        done = probe.stop()
        result = RunResult(system.name, fault, owner, extra={"sent": done["sent"], "answers": len(done["responses"])})
        if moved is None:
            result.error = f"no other node answered within {failover_timeout}s"
            return result
        measured = outage(done["responses"], t_fault, owner)
        if measured is None:
            result.error = "no answer before the fault or none from a new owner"
        else:
            result.outage, result.new_owner = measured
        return result
    finally:
        if probe.result is None:
            try:
                probe.stop()
            except RunFailed:
                pass
        if faulted:
            restore(system, owner, fault)


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(results: Sequence[RunResult]) -> dict[str, float | int]:
    """Median, p90 and max over the runs that measured an outage; ``failed`` counts the others.

    A failed run is not in the percentiles: it is either a failover that did not
    happen within the timeout (``no_failover``: an outage longer than the timeout,
    the worst case of all) or a run that could not be measured. The table prints
    the count next to every row so a clean-looking median cannot hide them.
    """
    values = [r.outage for r in results if r.outage is not None]
    summary: dict[str, float | int] = {
        "runs": len(results), "failed": len(results) - len(values),
        "no_failover": sum(1 for r in results if r.outage is None and (r.error or "").startswith("no other node")),
    }
    if values:
        summary.update(median=statistics.median(values), p90=percentile(values, 90), max=max(values),
                       min=min(values))
    return summary


def make_systems(names: Iterable[str], advert_ints: Sequence[float]) -> list[System]:
    systems: list[System] = []
    for name in names:
        if name == "keepalived":
            systems += [KeepalivedSystem(advert_int=a) for a in advert_ints]
        elif name == "lbd":
            systems.append(LbdSystem())
        elif name.startswith("lbd-"):
            systems.append(LbdSystem(profile=name[4:]))
        else:
            raise SystemExit(f"unknown system {name!r}: keepalived, lbd, lbd-<profile>")
    return systems


def bench(systems: Sequence[System], faults: Sequence[str], runs: int, workdir: Path,
          log: Callable[[str], None] = print) -> tuple[dict[tuple[str, str], dict], dict[str, str]]:
    """Run every system in one lab; returns summaries by (system, fault) and reasons for systems that could not run."""
    summaries: dict[tuple[str, str], dict] = {}
    skipped: dict[str, str] = {}
    with Lab() as lab:
        flab = build_lab(lab, workdir)
        for system in systems:
            try:
                system.start(flab)
                system.wait_settled(60.0)
            except NotReady as exc:
                skipped[system.name] = str(exc)
                log(f"{system.name}: not ready: {exc}")
                system.close()
                continue
            try:
                for fault in faults:
                    results: list[RunResult] = []
                    for i in range(runs):
                        try:
                            result = run_once(system, fault)
                        except (RunFailed, NotReady) as exc:
                            result = RunResult(system.name, fault, "?", error=str(exc))
                        results.append(result)
                        shown = f"{result.outage * 1000:8.1f} ms" if result.outage is not None else f"FAILED {result.error}"
                        log(f"{system.name:16} {fault:8} run {i + 1:2}/{runs}: {result.old_owner}->{result.new_owner} {shown}")
                    summaries[(system.name, fault)] = summarize(results) | {
                        "outages": [r.outage for r in results if r.outage is not None]
                    }
            finally:
                system.close()
    return summaries, skipped


def format_table(summaries: dict[tuple[str, str], dict], skipped: dict[str, str]) -> str:
    lines = [f"{'system':18} {'fault':9} {'runs':>4} {'failed':>6} {'median':>10} {'p90':>10} {'max':>10}"]
    for (name, fault), s in summaries.items():
        if "median" in s:
            lines.append(f"{name:18} {fault:9} {s['runs']:4} {s['failed']:6} {s['median'] * 1000:8.1f}ms "
                         f"{s['p90'] * 1000:8.1f}ms {s['max'] * 1000:8.1f}ms")
        else:
            lines.append(f"{name:18} {fault:9} {s['runs']:4} {s['failed']:6} {'-':>10} {'-':>10} {'-':>10}")
    for name, reason in skipped.items():
        lines.append(f"{name:18} not ready: {' '.join(reason.split())[-240:]}")
    total = sum(int(s["runs"]) for s in summaries.values())
    failed = sum(int(s["failed"]) for s in summaries.values())
    lines.append("")
    lines.append(f"failed runs: {failed} of {total} (not in median/p90/max; each is listed above as FAILED)")
    for (name, fault), s in summaries.items():
        if s["failed"]:
            lines.append(f"  {name} {fault}: {s['failed']} of {s['runs']} failed, {s.get('no_failover', 0)} of "
                         f"them with no failover at all (outage longer than the timeout)")
    lbds = sorted({n for n, _ in summaries if n.startswith("lbd")})
    kas = sorted({n for n, _ in summaries if n.startswith("keepalived")})
    if lbds and kas:
        lines.append("")
        lines.append("ratios (lbd / keepalived, median and p90; < 1 means lbd is faster)")
        for lb in lbds:
            for ka in kas:
                for fault in FAULTS:
                    a, b = summaries.get((lb, fault), {}), summaries.get((ka, fault), {})
                    if "median" in a and "median" in b:
                        lines.append(f"  {lb} / {ka} {fault:9}: median {a['median'] / b['median']:.3f}  "
                                     f"p90 {a['p90'] / b['p90']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Failover outage at the client: lbd against keepalived VRRP.")
    parser.add_argument("--systems", default="keepalived,lbd,lbd-fast",
                        help="comma list: keepalived (advert_int 1 and 0.1), lbd (default profile), lbd-<profile>")
    parser.add_argument("--faults", default="crash,graceful")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--advert-ints", default="1,0.1", help="keepalived advert_int values to run")
    parser.add_argument("--json", type=Path, help="also write the summaries here")
    parser.add_argument("--workdir", type=Path, help="keep configs and daemon logs here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    faults = [f for f in args.faults.split(",") if f]
    for fault in faults:
        if fault not in FAULTS:
            parser.error(f"unknown fault {fault!r}")
    systems = make_systems([s for s in args.systems.split(",") if s],
                           [float(a) for a in args.advert_ints.split(",") if a])
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lbd-failover-"))
    summaries, skipped = bench(systems, faults, args.runs, workdir)
    print()
    print(format_table(summaries, skipped))
    print(f"\n(logs and configs: {workdir})")
    if args.json:
        args.json.write_text(json.dumps(
            {"summaries": [{"system": n, "fault": f, **s} for (n, f), s in summaries.items()], "skipped": skipped},
            indent=2,
        ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
