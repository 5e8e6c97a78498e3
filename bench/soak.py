"""Soak benchmark: no VIP changes owner while the CPU is saturated (issue 5, "Timing").

Lifeguard (awareness, suspicion timeouts stretched until others confirm,
refutation by incarnation) is what keeps a slow node from being declared dead.
This harness checks it end to end: a healthy cluster whose nodes are merely
starved of CPU must not move a single VIP.

The lab is ``bench/failover.py``'s: three nodes ``n1``..``n3`` and a client on
one bridge, a UDP responder on every node. ``lbd run`` runs on every node with
the chosen timing profile and ``--services`` services, each pinned to its own
VIP chosen so that every node owns some (``lbd.planner.election.rank``). Once the
cluster has converged (every VIP on exactly its first-ranked node, every node
sees three alive members), the harness:

- starts ``--hogs`` busy-loop processes (niced 0, root namespace, ended by
  PID) that keep both cores saturated for ``--duration`` seconds;
- runs one client probe per VIP (``failover_probe.py``, one request every
  ``--interval`` seconds, so a bounded rate);
- polls, every second, which node holds each VIP (``ip addr`` on every node);
- optionally drops ``--loss`` percent of gossip packets (UDP and TCP port
  7946) at the input of every node with nftables ``numgen random``;
- optionally (``--stall S``, the control experiment) freezes n1's daemon with
  SIGSTOP for S seconds halfway through: longer than the suspicion timeout,
  that is a false failover by construction, and the run must FAIL.

At the end it prints the measured CPU utilisation (``/proc/stat``) and each
daemon's own CPU share, owner changes (the ``lbd_vip_owner_changes_total``
counters and the ``vip_owners_changed`` log summaries of every node, and the
changes the harness itself saw), suspicions raised and refuted (gossip
counters), membership events logged, the client's largest gap per VIP, and
``PASS`` when no VIP changed owner, ``FAIL`` otherwise. Usage::

    sudo /work/venv/bin/python bench/soak.py --duration 600
    sudo /work/venv/bin/python bench/soak.py --profile fast --duration 180
    sudo /work/venv/bin/python bench/soak.py --duration 300 --loss 20
    sudo /work/venv/bin/python bench/soak.py --duration 60 --stall 2     # control: must FAIL

Exit status: 0 on PASS, 1 on FAIL, 2 when the lab cannot run.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(BENCH))

from failover import (
    GOSSIP_PORT,
    NODES,
    PORT,
    FailoverLab,
    LbdSystem,
    NotReady,
    Probe,
    RunFailed,
    build_lab,
)

from lbd.testing.netlab import Lab
from lbd.planner.election import rank

METRICS_PORT = 9120
# Candidate VIPs: the lab's /24 above the nodes and the client.
CANDIDATES = [f"10.77.0.{i}" for i in range(100, 200)]
# Counters the verdict rests on: a missing one is an error, not a zero.
REQUIRED_METRICS = ("lbd_vip_owner_changes_total", "lbd_gossip_suspicions_total", "lbd_gossip_refutes_total",
                    "lbd_gossip_messages_sent_total")
# Membership events worth showing (the daemon logs them at info level).
MEMBER_EVENTS = ("member_dead", "member_alive", "member_left", "member_join", "suspect_timeout", "probe_failed",
                 "refuting_suspect", "refuting_dead", "refuting_alive")


def pick_vips(count: int) -> list[str]:
    """``count`` VIPs spread so every node is first-ranked for some (round robin over the nodes)."""
    by_node: dict[str, list[str]] = {n: [] for n in NODES}
    for vip in CANDIDATES:
        by_node[rank(ipaddress.ip_address(vip), NODES)[0]].append(vip)
    chosen: list[str] = []
    while len(chosen) < count:
        progressed = False
        for node in NODES:
            if by_node[node] and len(chosen) < count:
                chosen.append(by_node[node].pop(0))
                progressed = True
        if not progressed:
            raise ValueError(f"cannot pick {count} VIPs from {len(CANDIDATES)} candidates")
    return chosen


def expected_owner(vip: str) -> str:
    return rank(ipaddress.ip_address(vip), NODES)[0]


class SoakLbd(LbdSystem):
    """``LbdSystem`` with one pinned VIP per service and metrics on the node's loopback."""

    def __init__(self, vips: list[str], profile: str = "default", log_level: str = "info",
                 failback_delay: float = 0.0) -> None:
        # failback_delay 0 by default: a false failover, if any, moves back at once
        # and shows up as two changes rather than hiding behind the 30 s default.
        super().__init__(profile=profile, failback_delay=failback_delay)
        self.vips = vips
        self.log_level = log_level
        self.name = f"soak-{self.name}"

    def config_text(self, node: str, base: Path) -> str:
        text = (
            self.cluster_text(node, base, self.log_level)
            + "\n[metrics]\n"
            f'listen = "127.0.0.1:{METRICS_PORT}"\n'
            "\n[[pool]]\n"
            'name = "p"\n'
            f"addresses = {json.dumps([f'{v}/32' for v in self.vips])}\n"
            "\n[[l2_advertisement]]\n"
            'pools = ["p"]\n'
        )
        for i, vip in enumerate(self.vips):
            text += f'\n[[service]]\nname = "s{i}"\npool = "p"\naddresses = ["{vip}"]\nports = ["udp/{PORT}"]\n'
        return text

    def preferred_owner(self) -> str | None:
        return None  # several VIPs: see holders()

    def holders(self) -> dict[str, list[str]]:
        """For each VIP, the nodes that have it on eth0."""
        assert self.flab is not None
        out: dict[str, list[str]] = {vip: [] for vip in self.vips}
        for node, host in self.flab.nodes.items():
            text = host.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"], check=False, timeout=10).stdout
            for vip in self.vips:
                if f" {vip}/" in text:
                    out[vip].append(node)
        return out

    def wait_converged(self, timeout: float, stable: float = 2.0) -> None:
        """Every VIP on exactly its first-ranked node, every node sees three alive members, for ``stable`` s."""
        want = {vip: [expected_owner(vip)] for vip in self.vips}
        deadline = time.monotonic() + timeout
        since: float | None = None
        seen: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            self.check_running()
            seen = self.holders()
            if seen == want and self.cluster_ready():
                since = since or time.monotonic()
                if time.monotonic() - since >= stable:
                    return
            else:
                since = None
            time.sleep(0.2)
        raise NotReady(f"not converged after {timeout}s: holders {seen}, want {want}; n1 log: {self.log_tail('n1')}")

    def metrics(self, node: str) -> dict[str, float]:
        """The node's Prometheus samples (name with labels -> value)."""
        assert self.flab is not None
        result = self.flab.nodes[node].run(
            ["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{METRICS_PORT}/metrics"], check=False, timeout=15
        )
        samples: dict[str, float] = {}
        for line in result.stdout.splitlines():
            # A labelled counter no label set has touched yet exports no sample, only its
            # HELP and TYPE lines: record the family so that it reads as present (and zero).
            typed = re.match(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) ", line)
            if typed:
                samples.setdefault(f"{typed.group(1)}{{}}", 0.0)
                continue
            found = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) ([0-9.eE+-]+|NaN|\+Inf|-Inf)$", line)
            if found:
                samples[found.group(1)] = float(found.group(2))
        return samples


def metric_sum(samples: dict[str, float], name: str, label: str | None = None) -> float:
    """Sum of ``name`` samples (every label set, or those containing ``label``)."""
    total = 0.0
    for key, value in samples.items():
        base = key.split("{", 1)[0]
        if base == name and (label is None or label in key):
            total += value
    return total


# ---------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------

HOG = (
    "import time\n"
    "end = time.monotonic() + {seconds}\n"
    "x = 0\n"
    "while time.monotonic() < end:\n"
    "    for i in range(10000):\n"
    "        x = (x * 31 + i) & 0xFFFFFFFF\n"
)


class Hogs:
    """Busy-loop processes (root namespace, the harness's niceness: run it at nice 0), each bounded by its
    own deadline, ended by PID."""

    def __init__(self, count: int, seconds: float, python: str) -> None:
        self.procs = [
            subprocess.Popen([python, "-c", HOG.format(seconds=seconds + 60)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(count)
        ]

    def nice(self) -> list[int]:
        """The niceness of each busy loop (field 19 of /proc/PID/stat)."""
        out = []
        for proc in self.procs:
            try:
                out.append(int(Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[16]))
            except (OSError, IndexError, ValueError):
                pass
        return out

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------

LOSS_TABLE = "lbdsoak"


def set_loss(flab: FailoverLab, pct: float) -> None:
    """Drop ``pct`` % of gossip packets (UDP and TCP) arriving at every node."""
    script = (
        f"table inet {LOSS_TABLE} {{\n"
        "  chain in { type filter hook input priority 0;\n"
        f"    meta l4proto {{ tcp, udp }} th dport {GOSSIP_PORT} numgen random mod 100 < {int(pct)} drop;\n"
        "  }\n"
        "}\n"
    )
    for host in flab.nodes.values():
        host.run(["nft", "-f", "-"], input=script)


def clear_loss(flab: FailoverLab) -> None:
    for host in flab.nodes.values():
        host.run(["nft", "delete", "table", "inet", LOSS_TABLE], check=False)


# ---------------------------------------------------------------------------
# The soak
# ---------------------------------------------------------------------------


@dataclass
class SoakResult:
    profile: str
    duration: float
    hogs: int
    loss: float
    vips: dict[str, str]  # vip -> owner at the start
    hog_nice: list[int] = field(default_factory=list)
    stall: float = 0.0  # seconds n1's daemon was frozen (control experiment)
    cpu_util: float = 0.0  # all CPUs, over the soak
    daemon_cpu: dict[str, float] = field(default_factory=dict)  # node -> share of one core
    counter_changes: dict[str, dict[str, float]] = field(default_factory=dict)  # node -> kind -> delta
    logged_changes: list[dict] = field(default_factory=list)  # the changes the summaries name (the first few)
    logged_total: int = 0  # the changes the ``vip_owners_changed`` summaries count
    polled_changes: list[dict] = field(default_factory=list)
    suspicions: float = 0.0
    refutes: float = 0.0
    gossip_sent: float = 0.0  # messages, all nodes, over the soak
    reconciles: float = 0.0  # reconcile passes, all nodes, over the soak
    member_events: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, dict] = field(default_factory=dict)  # vip -> max gap, answers, node switches
    errors: list[str] = field(default_factory=list)

    @property
    def owner_changes(self) -> int:
        counted = sum(sum(kinds.values()) for kinds in self.counter_changes.values())
        return int(max(counted, self.logged_total, len(self.logged_changes), len(self.polled_changes)))

    @property
    def passed(self) -> bool:
        return self.owner_changes == 0 and not self.errors


def log_events_since(path: Path, offset: int) -> list[dict]:
    events = []
    with open(path, "rb") as f:
        f.seek(offset)
        for raw in f:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events


def gap_stats(responses: list, start: float, end: float) -> dict:
    """The client's view of one VIP over [start, end]: largest gap between answers, answers, node switches."""
    times = [float(r[0]) for r in responses if start <= float(r[0]) <= end]
    nodes = [str(r[1]) for r in responses if start <= float(r[0]) <= end]
    if not times:
        return {"answers": 0, "max_gap": end - start, "switches": 0, "nodes": []}
    edges = [times[0] - start] + [b - a for a, b in itertools.pairwise(times)] + [end - times[-1]]
    switches = sum(1 for a, b in itertools.pairwise(nodes) if a != b)
    return {"answers": len(times), "max_gap": max(edges), "switches": switches, "nodes": sorted(set(nodes)),
            "gaps_over_100ms": sum(1 for g in edges if g > 0.1)}


def soak(profile: str, duration: float, hogs: int, loss: float, services: int, interval: float,
         workdir: Path, stall: float = 0.0, failback_delay: float = 0.0,
         log=print) -> SoakResult:  # type: ignore[no-untyped-def]
    """One soak run. ``stall`` > 0 is the control experiment: halfway through, the daemon of the
    first node is frozen (SIGSTOP) for that many seconds, which Lifeguard cannot tell from a
    crash once it lasts longer than the suspicion timeout, so the harness must report FAIL."""
    vips = pick_vips(services)
    system = SoakLbd(vips, profile=profile, failback_delay=failback_delay)
    result = SoakResult(profile=profile, duration=duration, hogs=hogs, loss=loss,
                        vips={v: expected_owner(v) for v in vips})
    with Lab() as lab:
        flab = build_lab(lab, workdir)
        load: Hogs | None = None
        probes: list[Probe] = []
        stall_pid: int | None = None
        try:
            system.start(flab)
            system.wait_converged(90.0)
            log(f"converged: {result.vips}")
            before = {n: system.metrics(n) for n in NODES}
            offsets = {n: system.logs[n].stat().st_size for n in NODES}
            if loss > 0:
                set_loss(flab, loss)
            probes = [Probe(flab, interval=interval, max_seconds=duration + 120, vip=vip,
                            max_count=int((duration + 120) / interval) + 10) for vip in vips]
            for probe in probes:
                if probe.wait(lambda e: True, timeout=10.0) is None:
                    raise RunFailed(f"the client gets no answer from {probe.vip}")
            cpu0, daemon0 = cpu_times(), {n: proc_cpu_seconds(p.pid) for n, p in system.procs.items()}
            t0 = time.monotonic()
            load = Hogs(hogs, duration, flab.python)
            result.hog_nice = load.nice()
            log(f"load: {hogs} busy loops for {duration:g} s, loss {loss:g} %")
            last = {vip: [owner] for vip, owner in result.vips.items()}
            next_report = t0 + 60
            stall_at = t0 + duration / 2 if stall > 0 else None
            stalled = False
            stall_end = 0.0
            while (now := time.monotonic()) < t0 + duration:
                system.check_running()
                seen = system.holders()
                for vip, nodes in seen.items():
                    if nodes != last[vip]:
                        change = {"t": round(now - t0, 3), "vip": vip, "from": last[vip], "to": nodes}
                        result.polled_changes.append(change)
                        log(f"  holder change: {change}")
                        last[vip] = nodes
                if stall_at is not None and not stalled and now >= stall_at:
                    stalled = True
                    result.stall = stall
                    stall_pid = system.procs["n1"].pid
                    log(f"  {now - t0:5.0f} s: stalling n1's daemon (pid {stall_pid}) for {stall:g} s")
                    os.kill(stall_pid, signal.SIGSTOP)
                    stall_end = now + stall
                if stall_pid is not None and now >= stall_end:
                    os.kill(stall_pid, signal.SIGCONT)
                    stall_pid = None
                if now >= next_report:
                    busy, total = cpu_times()
                    log(f"  {now - t0:5.0f} s: cpu {(busy - cpu0[0]) / max(1, total - cpu0[1]):.1%}, "
                        f"holder changes {len(result.polled_changes)}")
                    next_report += 60
                wake = min(t0 + duration, stall_end if stall_pid is not None else now + 1.0, now + 1.0)
                time.sleep(max(0.0, wake - time.monotonic()))
            t1 = time.monotonic()
            cpu1 = cpu_times()
            result.cpu_util = (cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1])
            result.daemon_cpu = {n: (proc_cpu_seconds(p.pid) - daemon0[n]) / (t1 - t0)
                                 for n, p in system.procs.items()}
            load.stop()
            load = None
            for probe in probes:
                done = probe.stop(timeout=30)
                result.gaps[probe.vip] = gap_stats(done["responses"], t0, t1)
            probes = []
            if loss > 0:
                clear_loss(flab)
            after = {n: system.metrics(n) for n in NODES}
            for n in NODES:
                result.counter_changes[n] = {
                    kind: metric_sum(after[n], "lbd_vip_owner_changes_total", f'kind="{kind}"')
                    - metric_sum(before[n], "lbd_vip_owner_changes_total", f'kind="{kind}"')
                    for kind in ("failover", "move")
                }
                result.suspicions += (metric_sum(after[n], "lbd_gossip_suspicions_total")
                                      - metric_sum(before[n], "lbd_gossip_suspicions_total"))
                result.refutes += (metric_sum(after[n], "lbd_gossip_refutes_total")
                                   - metric_sum(before[n], "lbd_gossip_refutes_total"))
                result.gossip_sent += (metric_sum(after[n], "lbd_gossip_messages_sent_total")
                                       - metric_sum(before[n], "lbd_gossip_messages_sent_total"))
                result.reconciles += (metric_sum(after[n], "lbd_reconciles_total")
                                      - metric_sum(before[n], "lbd_reconciles_total"))
                for event in log_events_since(system.logs[n], offsets[n]):
                    name = event.get("event")
                    if name == "vip_owners_changed":  # one info summary per pass (per VIP: debug)
                        result.logged_total += int(event.get("failover", 0)) + int(event.get("move", 0))
                        result.logged_changes.extend({"node": n, **change} for change in event.get("first", ()))
                    if name in MEMBER_EVENTS:
                        key = f"{n}:{name}"
                        result.member_events[key] = result.member_events.get(key, 0) + 1
            for n in NODES:
                # A counter that is not exported would read as zero: never PASS on that.
                missing = [name for name in REQUIRED_METRICS if not any(k.split("{", 1)[0] == name for k in after[n])]
                if missing:
                    result.errors.append(f"{n} does not export {', '.join(missing)}")
        except (NotReady, RunFailed) as exc:
            result.errors.append(str(exc))
        finally:
            if stall_pid is not None:
                os.kill(stall_pid, signal.SIGCONT)
            if load is not None:
                load.stop()
            for probe in probes:
                try:
                    probe.stop(timeout=5)
                except RunFailed:
                    pass
            clear_loss(flab)
            system.close()
    return result


def report(result: SoakResult, argv: list[str]) -> str:
    lines = [
        f"command: {' '.join(argv)}",
        (f"profile: {result.profile}   duration: {result.duration:g} s   hogs: {result.hogs} (nice {result.hog_nice})"
         f"   gossip loss: {result.loss:g} %" + (f"   n1 stalled: {result.stall:g} s" if result.stall else "")),
        f"load: CPU utilisation {result.cpu_util:.1%} of {os.cpu_count()} CPUs; lbd daemons "
        + ", ".join(f"{n} {share:.1%}" for n, share in result.daemon_cpu.items()) + " of one core",
        f"VIPs and owners: {', '.join(f'{v}@{o}' for v, o in result.vips.items())}",
        "owner changes: counters "
        + ", ".join(f"{n} failover={k['failover']:g} move={k['move']:g}" for n, k in result.counter_changes.items())
        + f"; logged {result.logged_total}; seen by the harness {len(result.polled_changes)}",
        (f"suspicions raised: {result.suspicions:g}   refuted: {result.refutes:g}   "
        f"(gossip messages sent {result.gossip_sent:g}, reconcile passes {result.reconciles:g}, all nodes)"),
        f"membership events logged: {json.dumps(result.member_events, sort_keys=True) or '{}'}",
    ]
    for change in result.logged_changes:
        lines.append(f"  vip_owner_changed on {change['node']}: {change.get('vip')} {change.get('old')} -> "
                     f"{change.get('new')} ({change.get('kind')}, {change.get('reason')})")
    for change in result.polled_changes:
        lines.append(f"  holder change at {change['t']} s: {change['vip']} {change['from']} -> {change['to']}")
    lines.append("client probe (per VIP): answers, max gap, gaps > 100 ms, node switches")
    for vip, g in result.gaps.items():
        lines.append(f"  {vip}: {g['answers']:7d} answers  max gap {g['max_gap'] * 1000:7.1f} ms  "
                     f"gaps>100ms {g.get('gaps_over_100ms', 0):3d}  switches {g['switches']}  nodes {g['nodes']}")
    for error in result.errors:
        lines.append(f"error: {' '.join(error.split())[-400:]}")
    lines.append(f"{'PASS' if result.passed else 'FAIL'}: {result.owner_changes} VIP owner change(s)"
                 + (" (the run did not complete)" if result.errors else ""))
    return "\n".join(lines)


def late_when(row: dict[str, object], load_start: float) -> str:
    """When lbd's worst BFD transmit delay happened, relative to the start of the load."""
    at = row.get("max_transmit_late_at")
    if not isinstance(at, (int, float)):
        return "time unknown"
    return f"at {at - load_start:+.1f} s from the start of the load"


def soak_bfd(profile_text: str, duration: float, hogs: int, workdir: Path) -> int:
    """Zero false BFD Down under CPU load: two lbd nodes and a BIRD router (bench/bgp_failover.py's lab;
    the router's BIRD runs SCHED_RR, standing for a router on its own machine),
    ``hogs`` busy loops for ``duration`` seconds; counts Up->Down on lbd (lbd-ctl bfd: flaps) and on
    BIRD (its BFD trace), and lbd's worst transmit delay past a packet's deadline."""
    import bgp_failover as bf

    from lbd.testing.netlab import Lab

    ms, mult = profile_text.split("x")
    profile = bf.Profile(int(ms), int(mult))
    with Lab() as lab:
        blab = bf.BgpLab(lab, workdir, profile)
        system = bf.LbdSystem(blab)
        try:
            blab.router_realtime()
            for name in bf.NODES:
                system.start(name)
            bf.settle(blab)
            time.sleep(2.0)  # past the poll sequence to the fast intervals
            before = {n: node.ctl("--json", "bfd").stdout for n, node in system.nodes.items()}
            router_downs_before = blab.bird.log().count("changed state from Up to Down")
            busy0, t0 = cpu_times()
            load_start = time.time()
            load = Hogs(hogs, duration, sys.executable)
            try:
                time.sleep(duration)
            finally:
                load.stop()
            busy1, t1 = cpu_times()
            rows = {n: json.loads(node.ctl("--json", "bfd").stdout)[0] for n, node in system.nodes.items()}
            first = {n: json.loads(text)[0] for n, text in before.items()}
            router_downs = blab.bird.log().count("changed state from Up to Down") - router_downs_before
            router_gaps = blab.router_send_gaps()
        finally:
            system.close()
            blab.close()
    cpu = 100.0 * (busy1 - busy0) / max(1, t1 - t0)
    downs = sum(rows[n]["flaps"] - first[n]["flaps"] for n in rows)
    print(f"BFD soak: profile {profile.name}, {duration:g} s, {hogs} busy loops, CPU {cpu:.0f}% busy")
    for n, row in rows.items():
        print(f"  {n}: state {row['state']}, Up->Down during the soak {row['flaps'] - first[n]['flaps']}, "
              f"packets sent {row['packets_sent'] - first[n]['packets_sent']}, received "
              f"{row['packets_received'] - first[n]['packets_received']}, worst transmit delay past deadline "
              f"{row['max_transmit_late_ms']} ms (while Up, since start; {late_when(row, load_start)}), "
              f"before the load {first[n]['max_transmit_late_ms']} ms, scheduling {row.get('scheduling')}")
    print(f"  router (BIRD, SCHED_RR): BFD Up->Down during the soak {router_downs}, longest gap between its "
          f"packets to each node (whole run): "
          + ", ".join(f"{addr} {gap * 1000:.0f} ms" for addr, gap in sorted(router_gaps.items())))
    passed = downs == 0 and router_downs == 0
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="No false failover under CPU load (and gossip loss).")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--profile", default="default", help="cluster timing profile (default, fast, lan)")
    parser.add_argument("--hogs", type=int, default=4, help="busy-loop processes (default 4: two per core on 2 cores)")
    parser.add_argument("--loss", type=float, default=0.0, help="percent of gossip packets dropped at every node")
    parser.add_argument("--services", type=int, default=6, help="services, one VIP each, spread over the nodes")
    parser.add_argument("--interval", type=float, default=0.01, help="client probe interval per VIP, seconds")
    parser.add_argument("--stall", type=float, default=0.0,
                        help="control: freeze n1's daemon (SIGSTOP) this many seconds halfway through (expect FAIL)")
    parser.add_argument("--failback-delay", type=float, default=0.0,
                        help="[cluster] failback_delay of the nodes (default 0: a false failover moves back at once)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--workdir", type=Path, help="keep configs and daemon logs here")
    parser.add_argument("--bfd", metavar="MSxMULT",
                        help="instead: BGP lab of bench/bgp_failover.py (two lbd nodes, BIRD router) with this BFD "
                             "profile, e.g. 100x3; PASS when no BFD session went Down on either side")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if not 0 <= args.loss < 100:
        parser.error("--loss must be in [0, 100)")
    if args.duration <= 0 or args.duration > 24 * 3600 or args.interval < 0.001 or args.hogs < 0:
        parser.error("--duration in (0, 86400], --interval >= 0.001, --hogs >= 0")
    if not 0 <= args.stall <= min(60.0, args.duration / 2):
        parser.error("--stall in [0, min(60, duration / 2)] seconds")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lbd-soak-"))
    if args.bfd:
        return soak_bfd(args.bfd, args.duration, args.hogs, workdir)
    result = soak(args.profile, args.duration, args.hogs, args.loss, args.services, args.interval, workdir,
                  stall=args.stall, failback_delay=args.failback_delay)
    print()
    print(report(result, [Path(sys.executable).name, *sys.argv] if argv is None else ["soak.py", *argv]))
    print(f"(logs and configs: {workdir})")
    if args.json:
        args.json.write_text(json.dumps(result.__dict__ | {"owner_changes": result.owner_changes,
                                                          "passed": result.passed}, indent=2, default=str))
    if result.errors:
        return 2 if not result.gaps else 1
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
