"""BGP failover benchmark: how long clients lose service when a node announcing a VIP fails or stops.

The lab (``lbd.testing.netlab.Lab``, one bridge)::

    client 10.88.0.10 --(gw 10.88.0.1)--> router (BIRD: ECMP "merge paths", kernel export, protocol bfd)
                                            |-- n1 10.77.0.2  (VIP on lo, TCP server on :8080 answering "n1")
                                            `-- n2 10.77.0.3  (VIP on lo, TCP server on :8080 answering "n2")

The client opens a NEW TCP connection to the VIP every ``--interval`` (10 ms), each from its own
source port, so the router's L4 hash spreads them over both nodes; a probe fails when it has no
answer within ``--probe-timeout`` (0.5 s). The router's kernel routing table is watched with
``ip -t monitor route`` inside its namespace, so "route gone at the router" is the kernel's own
timestamp of the first route message for the VIP without n1 as a next hop.

Systems on the nodes, in the same lab and the same run:

- ``lbd``: the real daemon (``lbd --config FILE run``, as the systemd unit starts it), the two
  nodes clustered over gossip, one ``[[bgp_peer]]`` to the router with ``bfd_profile``;
- ``bird``: BIRD 2 as the speaker (static VIP route exported over eBGP, ``bfd on``, same profile).

Faults on n1: ``crash`` (its link down on the switch, then SIGKILL) and ``graceful`` (SIGTERM).
Per run it records the outage (first failed probe start to last failed probe start, plus one
interval; 0 without failures), the failed probe count, and the time from the fault to the route
leaving the router's kernel. Usage (root)::

    python bench/bgp_failover.py --runs 10                         # profiles 100x3 and 300x3, both systems
    python bench/bgp_failover.py --runs 3 --profiles 100x3 --systems lbd

This file is also the probe and the server (``--role probe|server``, run inside the namespaces).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

VIP = "10.77.100.1"
PORT = 8080
ROUTER, CLIENT, GW = "10.77.0.1", "10.88.0.10", "10.88.0.1"
NODES = {"n1": "10.77.0.2", "n2": "10.77.0.3"}
ROUTER_AS, NODE_AS = 4200000002, 4200000001
GOSSIP_PORT = 7946


# ---------------------------------------------------------------------------
# In-namespace roles: the TCP server on the nodes, the probing client
# ---------------------------------------------------------------------------


def serve(name: str, port: int, max_seconds: float) -> None:
    """Answer every connection with the node's name, then close (bounded in time)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(512)
    srv.settimeout(1.0)
    print("ready", flush=True)
    end = time.monotonic() + max_seconds
    while time.monotonic() < end:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        try:
            conn.sendall(name.encode())
        except OSError:
            pass
        conn.close()


def probe(vip: str, port: int, interval: float, timeout: float, max_seconds: float) -> None:
    """A new TCP connection every ``interval``; stops on 'stop' on stdin or after max_seconds.
    Prints one JSON line: [[start_wall, end_wall, node_or_null(, why it failed)], ...]."""
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    pending: dict[socket.socket, tuple[float, float, bytes]] = {}
    results: list[list[object]] = []
    start = time.monotonic()
    next_at = start
    stopping = False
    while time.monotonic() - start < max_seconds:
        now = time.monotonic()
        if not stopping and now >= next_at:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((vip, port))
            pending[s] = (time.time(), now + timeout, b"")
            sel.register(s, selectors.EVENT_READ)
            next_at += interval
        if stopping and not pending:
            break
        wait = max(0.0, min([next_at - now] + [d - now for _, d, _ in pending.values()]))
        for key, _ in sel.select(wait):
            if key.data == "stdin":
                sys.stdin.readline()
                stopping = True
                sel.unregister(sys.stdin)
                continue
            s = key.fileobj  # type: ignore[assignment]
            t0, deadline, got = pending[s]  # type: ignore[index]
            why = "closed without an answer"
            try:
                data = s.recv(64)  # type: ignore[union-attr]
            except OSError as exc:
                # A reset even after the answer fails the probe: the client saw an error.
                data = b""
                got = b""
                why = errno.errorcode.get(exc.errno or 0, str(exc))
            if data:
                pending[s] = (t0, deadline, got + data)  # type: ignore[index]
                continue
            sel.unregister(s)
            del pending[s]  # type: ignore[arg-type]
            s.close()  # type: ignore[union-attr]
            results.append([t0, time.time(), got.decode() or None] + ([] if got else [why]))
        now = time.monotonic()
        for s, (t0, deadline, got) in list(pending.items()):
            if now >= deadline:
                sel.unregister(s)
                del pending[s]
                s.close()
                results.append([t0, time.time(), None, "timeout"])
    print(json.dumps(results), flush=True)


# ---------------------------------------------------------------------------
# The lab and the systems
# ---------------------------------------------------------------------------


@dataclass
class Profile:
    interval_ms: int
    multiplier: int

    @property
    def name(self) -> str:
        return f"{self.interval_ms}ms x{self.multiplier}"


class RouteWatch:
    """``ip -t monitor route`` in the router's namespace: kernel timestamps of VIP route changes."""

    def __init__(self, host) -> None:  # type: ignore[no-untyped-def]
        self.proc = host.popen(["stdbuf", "-oL", "ip", "-t", "monitor", "route"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.events: list[tuple[float, str]] = []  # (wall time, route text)
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("Timestamp:"):
                parts = line.split()
                try:  # "Timestamp: Wed Dec  2 03:10:00 2026 123456 usec" (local time)
                    stamp = time.mktime(time.strptime(" ".join(parts[1:6]), "%a %b %d %H:%M:%S %Y"))
                    stamp += int(parts[6]) / 1e6
                except (ValueError, IndexError):
                    stamp = time.time()
                with self._lock:
                    self.events.append((stamp, ""))
            elif self.events:
                with self._lock:
                    stamp, text = self.events[-1]
                    self.events[-1] = (stamp, text + line + "\n")

    def gone_after(self, t_fault: float, node_addr: str) -> float | None:
        """The first VIP route change after t_fault without node_addr as a next hop."""
        with self._lock:
            for stamp, text in self.events:
                if stamp >= t_fault - 0.001 and VIP in text and node_addr not in text:
                    return stamp
        return None

    def close(self, lab) -> None:  # type: ignore[no-untyped-def]
        lab.stop(self.proc, timeout=2)


@dataclass
class RunResult:
    system: str
    profile: str
    fault: str
    outage: float
    failed: int
    probes: int
    route_gone: float | None  # seconds from the fault to the route leaving the router's kernel
    failures: list = field(default_factory=list)  # [start - fault, duration, why] of each failed probe


class BgpLab:
    def __init__(self, lab, workdir: Path, profile: Profile) -> None:  # type: ignore[no-untyped-def]
        from interop.bfd_peers import BfdSpec, BirdBfd
        from interop.bgp_peers import Neighbor, PeerSpec

        self.lab = lab
        self.workdir = workdir
        self.profile = profile
        self.router = lab.add_host("router", [f"{ROUTER}/24", f"{GW}/24"])
        for key, value in (("net.ipv4.ip_forward", 1), ("net.ipv4.fib_multipath_hash_policy", 1),
                           ("net.ipv4.conf.all.send_redirects", 0), ("net.ipv4.conf.eth0.send_redirects", 0)):
            self.router.run(f"sysctl -qw {key}={value}")
        self.client = lab.add_host("client", [f"{CLIENT}/24"])
        self.client.run(f"ip route add default via {GW}")
        self.nodes = {}
        for name, addr in NODES.items():
            host = lab.add_host(name, [f"{addr}/24"])
            host.run(f"ip route add 10.88.0.0/24 via {ROUTER}")
            server = host.popen([sys.executable, __file__, "--role", "server", "--name", name],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert server.stdout is not None and server.stdout.readline().startswith(b"ready")
            self.nodes[name] = host
        spec = PeerSpec(asn=ROUTER_AS, router_id=ROUTER, multipath=True, install_kernel=True,
                        neighbors=[Neighbor(a, NODE_AS, graceful_restart=False, hold_time=90) for a in NODES.values()])
        self.bird = BirdBfd(self.router, spec, BfdSpec(interval_ms=profile.interval_ms,
                                                       multiplier=profile.multiplier)).start()
        self.watch = RouteWatch(self.router)

    def router_realtime(self) -> None:
        """SCHED_RR for the router's BIRD (all its threads): in reality the router is another
        machine; in a load test on this one it must not be what falls behind."""
        for proc in self.bird.procs:
            subprocess.run(["chrt", "-a", "-r", "-p", "1", str(proc.pid)], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def router_send_gaps(self) -> dict[str, float]:
        """From BIRD's BFD trace: the longest gap between two packets sent to each node, seconds."""
        last: dict[str, float] = {}
        worst: dict[str, float] = {}
        for line in self.bird.log().splitlines():
            m = re.match(r"(\S+ \S+) <TRACE> bfd1: Sending CTL to (\S+)", line)
            if not m:
                continue
            t = time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%d %H:%M:%S")) + float("0" + m.group(1)[19:])
            if m.group(2) in last:
                worst[m.group(2)] = max(worst.get(m.group(2), 0.0), t - last[m.group(2)])
            last[m.group(2)] = t
        return worst

    def kernel_hops(self) -> set[str]:
        out = self.router.run(f"ip route show {VIP}").stdout
        return {w for w in out.split() if w in NODES.values()}

    def close(self) -> None:
        self.watch.close(self.lab)
        self.bird.stop()


class LbdSystem:
    name = "lbd"

    def __init__(self, blab: BgpLab) -> None:
        from lbd.testing.netlab import LbdNode

        self.blab = blab
        self.nodes = {}
        p = blab.profile
        for name, addr in NODES.items():
            others = [f'"{a}:{GOSSIP_PORT}"' for n, a in NODES.items() if n != name]
            config = (
                f'[node]\nname = "{name}"\n\n[cluster]\nbind = "{addr}:{GOSSIP_PORT}"\njoin = [{", ".join(others)}]\nallow_plaintext = true\n\n'
                f'[log]\nformat = "json"\nlevel = "info"\n\n'
                f'[[pool]]\nname = "p"\naddresses = ["{VIP}/32"]\n\n[[bgp_advertisement]]\npools = ["p"]\n\n'
                f'[[service]]\nname = "vip"\npool = "p"\nports = ["tcp/{PORT}"]\n\n'
                f'[[bfd_profile]]\nname = "bench"\nreceive_interval = {p.interval_ms}\n'
                f"transmit_interval = {p.interval_ms}\ndetect_multiplier = {p.multiplier}\n\n"
                f'[[bgp_peer]]\nname = "router"\nmy_asn = {NODE_AS}\npeer_asn = {ROUTER_AS}\n'
                f'peer_address = "{ROUTER}"\nconnect_time = 1\nbfd_profile = "bench"\n'
            )
            self.nodes[name] = LbdNode(blab.nodes[name], blab.workdir / "lbd", config, name=name)

    def start(self, name: str) -> None:
        self.nodes[name].start()

    def fault(self, name: str, fault: str) -> float:
        node = self.nodes[name]
        if fault == "crash":
            self.blab.lab.set_link(node.host, False)
            t = time.time()
            node.send_signal(signal.SIGKILL)
            return t
        t = time.time()
        node.send_signal(signal.SIGTERM)
        return t

    def restore(self, name: str, fault: str) -> None:
        node = self.nodes[name]
        if node.proc is not None:
            self.blab.lab.stop(node.proc, timeout=10)
        if fault == "crash":
            self.blab.lab.set_link(node.host, True)
        node.start()

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()


class BirdSpeakerSystem:
    """BIRD 2 as the nodes' speaker: a static VIP route exported over eBGP with the same BFD profile."""

    name = "bird"

    def __init__(self, blab: BgpLab) -> None:
        self.blab = blab
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        p = blab.profile
        self.confs = {}
        for name, addr in NODES.items():
            d = blab.workdir / "bird" / name
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "bird.conf"
            conf.write_text(
                f"router id {addr};\nprotocol device {{ }}\n"
                f"protocol static {{ ipv4; route {VIP}/32 unreachable; }}\n"
                f'protocol bfd {{ interface "*" {{ min rx interval {p.interval_ms} ms; min tx interval '
                f"{p.interval_ms} ms; multiplier {p.multiplier}; }}; }}\n"
                f"protocol bgp r {{ local {addr} as {NODE_AS}; neighbor {ROUTER} as {ROUTER_AS}; hold time 90; "
                f"connect retry time 1; bfd on; ipv4 {{ import none; export where proto = \"static1\"; "
                f"next hop self; }}; }}\n"
            )
            self.confs[name] = (conf, d / "bird.ctl")
            blab.nodes[name].run(f"ip addr add {VIP}/32 dev lo")

    def start(self, name: str) -> None:
        conf, ctl = self.confs[name]
        self.procs[name] = self.blab.nodes[name].popen(["bird", "-f", "-c", str(conf), "-s", str(ctl)],
                                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def fault(self, name: str, fault: str) -> float:
        proc = self.procs[name]
        if fault == "crash":
            self.blab.lab.set_link(self.blab.nodes[name], False)
            t = time.time()
            os.kill(proc.pid, signal.SIGKILL)
            return t
        t = time.time()
        os.kill(proc.pid, signal.SIGTERM)
        return t

    def restore(self, name: str, fault: str) -> None:
        self.blab.lab.stop(self.procs[name], timeout=10)
        if fault == "crash":
            self.blab.lab.set_link(self.blab.nodes[name], True)
        self.start(name)

    def close(self) -> None:
        for proc in self.procs.values():
            self.blab.lab.stop(proc, timeout=5)
        for name in NODES:
            self.blab.nodes[name].run(f"ip addr del {VIP}/32 dev lo", check=False)


def settle(blab: BgpLab, timeout: float = 60.0) -> None:
    """Both next hops in the router's kernel, and the router's BFD sessions to both nodes Up."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if blab.kernel_hops() == set(NODES.values()):
            sessions = blab.bird.bfd_sessions()
            if all(re.search(rf"{re.escape(a)}\s+\S+\s+Up", sessions) for a in NODES.values()):
                return
        time.sleep(0.1)
    raise RuntimeError(f"not settled: hops {blab.kernel_hops()}\n{blab.bird.bfd_sessions()}")


def run_once(blab: BgpLab, system, fault: str, interval: float, probe_timeout: float) -> RunResult:  # type: ignore[no-untyped-def]
    settle(blab)
    time.sleep(0.5)
    proc = blab.client.popen([sys.executable, __file__, "--role", "probe", "--interval", str(interval),
                              "--probe-timeout", str(probe_timeout)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    t_fault = system.fault("n1", fault)
    end = time.monotonic() + 10.0
    while time.monotonic() < end and blab.kernel_hops() != {NODES["n2"]}:
        time.sleep(0.01)
    time.sleep(1.5)  # probes after the convergence, and the last ones' timeouts
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"stop\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    blab.lab.stop(proc, timeout=5)
    results = json.loads(line) if line else []
    failed = [r for r in results if r[2] is None]
    outage = 0.0
    if failed:
        outage = max(r[0] for r in failed) - min(r[0] for r in failed) + interval
    gone = blab.watch.gone_after(t_fault, NODES["n1"])
    result = RunResult(system.name, blab.profile.name, fault, outage, len(failed), len(results),
                       None if gone is None else max(0.0, gone - t_fault),
                       [[round(r[0] - t_fault, 4), round(r[1] - r[0], 4), r[3] if len(r) > 3 else "?"]
                        for r in failed])
    system.restore("n1", fault)
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def summarize(rows: list[RunResult]) -> dict[str, object]:
    outages = [r.outage for r in rows]
    gone = [r.route_gone for r in rows if r.route_gone is not None]
    return {
        "runs": len(rows), "median": statistics.median(outages), "p90": percentile(outages, 90), "max": max(outages),
        "failed_probes": sum(r.failed for r in rows), "probes": sum(r.probes for r in rows),
        "route_gone_median_ms": statistics.median(gone) * 1000 if gone else None,
        "route_gone_max_ms": max(gone) * 1000 if gone else None,
    }


def bench(args: argparse.Namespace) -> int:
    from lbd.testing.netlab import Lab

    all_rows: list[RunResult] = []
    workroot = Path(args.workdir or tempfile.mkdtemp(prefix="lbd-bgp-failover-"))
    for text in args.profiles.split(","):
        ms, mult = text.split("x")
        profile = Profile(int(ms), int(mult))
        for sysname in args.systems.split(","):
            with Lab() as lab:
                blab = BgpLab(lab, workroot / f"{sysname}-{text}", profile)
                system = LbdSystem(blab) if sysname == "lbd" else BirdSpeakerSystem(blab)
                try:
                    for name in NODES:
                        system.start(name)
                    for fault in args.faults.split(","):
                        for i in range(args.runs):
                            row = run_once(blab, system, fault, args.interval, args.probe_timeout)
                            all_rows.append(row)
                            print(f"{row.system:5} {row.profile:10} {row.fault:8} run {i + 1}: outage "
                                  f"{row.outage * 1000:7.1f} ms, failed {row.failed:3}/{row.probes}, route gone "
                                  + (f"{row.route_gone * 1000:7.1f} ms" if row.route_gone is not None else "   n/a")
                                  + (f"  (failed probes, start after fault / duration s / why: {row.failures})"
                                     if fault == "graceful" and row.failures else ""),
                                  flush=True)
                finally:
                    system.close()
                    blab.close()
    print()
    print(f"{'system':6} {'profile':10} {'fault':8} {'runs':>4} {'median s':>9} {'p90 s':>7} {'max s':>7} "
          f"{'failed':>7} {'probes':>7} {'route gone med/max ms':>22}")
    summary = {}
    for key in dict.fromkeys((r.system, r.profile, r.fault) for r in all_rows):
        s = summarize([r for r in all_rows if (r.system, r.profile, r.fault) == key])
        summary[" ".join(key)] = s
        gone = (f"{s['route_gone_median_ms']:.1f}/{s['route_gone_max_ms']:.1f}"
                if s["route_gone_median_ms"] is not None else "n/a")
        print(f"{key[0]:6} {key[1]:10} {key[2]:8} {s['runs']:>4} {s['median']:9.3f} {s['p90']:7.3f} {s['max']:7.3f} "
              f"{s['failed_probes']:>7} {s['probes']:>7} {gone:>22}")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": [r.__dict__ for r in all_rows]}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=("bench", "probe", "server"), default="bench")
    parser.add_argument("--name", default="node")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--profiles", default="100x3,300x3", help="BFD profiles, INTERVALxMULT, comma-separated")
    parser.add_argument("--systems", default="lbd,bird")
    parser.add_argument("--faults", default="crash,graceful")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between new client connections")
    parser.add_argument("--probe-timeout", type=float, default=0.5)
    parser.add_argument("--workdir")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.role == "server":
        serve(args.name, PORT, 7200)
        return 0
    if args.role == "probe":
        probe(VIP, PORT, args.interval, args.probe_timeout, 600)
        return 0
    if os.geteuid() != 0:
        print("run as root (network namespaces)", file=sys.stderr)
        return 2
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
