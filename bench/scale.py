"""The real daemon end to end at 10,000 and 100,000 services (issue 9).

Run as root: ``python bench/scale.py {bgp,l2,failover,all} [--quick] [options]``.

Every part runs the real ``lbd --config FILE run`` process (what ``systemctl
start lbd`` runs: a config file, real netlink, real sockets) in a namespace
lab (``lbd.testing.netlab.Lab``), and measures it from outside: a real BIRD router's
control socket, kernel address notifications, packets on the wire.

- ``bgp``: N services in one BGP pool (default 10,000 and 100,000), as static
  ``[[service]]`` tables in the config file and as ``directory`` source drop-in
  files. Start -> first route and -> all N routes at the router, the router's
  Established -> all, the daemon's CPU seconds (utime + stime) at that moment,
  and its peak RSS (VmHWM) once the first pass is done (its ``ready`` line; with
  churn, after the churn). With the directory source, churn: one drop-in file
  added or removed with N present -> the router holds N+1 / N routes, p50 and
  p99 over ``--churn`` changes. Then SIGTERM -> every route withdrawn at the
  router, and -> the process gone. ExaBGP announcing the same number of /32s
  from its static config (``bench/bgp.py``'s harness) to the same kind of BIRD
  router in the same run is the anchor.
- ``l2``: N layer-2 VIPs (default 2,000 and 10,000) on one veth. From kernel
  address notifications (an ``RTM_NEWADDR`` listener in the node's namespace)
  and gratuitous ARPs seen by a client: first VIP bound -> all bound, -> all
  announced (one gratuitous ARP seen for each), process start -> all bound,
  SIGTERM -> all withdrawn; then ``ip -batch`` adding and deleting the same
  addresses on the same interface, timed from the same notifications, and
  the ratios.
- ``failover``: ``--nodes`` lbd nodes (default 3) and ``--failover-vips`` L2
  VIPs (default 10,000), a UDP responder on every node. The node holding the
  most VIPs is cut off the switch and SIGKILLed; measured: fault -> every VIP
  it held bound on a survivor (address notifications), and fault -> each of a
  sample of 100 of them answering a client's UDP probe from a new owner (the
  client's ARP cache warm from a probe before the fault, so the gratuitous
  ARPs must move it).

``--quick`` runs every part at small sizes (well under 2 minutes): it proves
the script works; its figures mean nothing. Speeds are not asserted anywhere
in tests/.

Lab addresses only (10.77.0.0/16, 10.88.0.0/16); every loop is bounded; the
lab ends the processes it started, by PID, and removes its namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import random
import re
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()

# ---------------------------------------------------------------------------
# Helpers run inside a namespace (``scale.py _addr-monitor`` etc.): stdlib only,
# so they start fast and import nothing of lbd or the lab.
# ---------------------------------------------------------------------------

RTMGRP_IPV4_IFADDR = 0x10
RTM_NEWADDR, RTM_DELADDR = 20, 21
IFA_ADDRESS, IFA_LOCAL = 1, 2
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
ETH_P_ARP = 0x0806


def _in_nets(nets: Sequence[ipaddress.IPv4Network]) -> Callable[[bytes], bool]:
    ranges = [(int(n.network_address), int(n.broadcast_address)) for n in nets]

    def inside(raw: bytes) -> bool:
        value = int.from_bytes(raw, "big")
        return any(lo <= value <= hi for lo, hi in ranges)

    return inside


def _readable(sock: socket.socket, address: object, max_seconds: float) -> Iterator[None]:
    """Bind ``sock`` with a 64 MiB receive buffer (SO_RCVBUFFORCE, root: a burst of 100,000
    messages is not lost), print ``ready``, then yield whenever it is readable, for ``max_seconds``."""
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    sock.bind(address)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.5)
        if ready:
            yield


def addr_monitor(nets: Sequence[ipaddress.IPv4Network], max_seconds: float) -> int:
    """Print ``<unix time> +|- <address>`` for every IPv4 address added or removed in ``nets``.

    One rtnetlink socket subscribed to RTMGRP_IPV4_IFADDR; the time is when
    this process read the batch (a few ms after the kernel at most, on a loaded
    machine more). Prints ``overflow`` if the kernel dropped notifications
    anyway (ENOBUFS): the caller then knows the counts are incomplete.
    """
    inside = _in_nets(nets)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    out = sys.stdout
    for _ in _readable(sock, (0, RTMGRP_IPV4_IFADDR), max_seconds):
        try:
            data = sock.recv(1 << 20)
        except OSError:  # ENOBUFS: the kernel dropped notifications
            out.write("overflow\n")
            out.flush()
            continue
        now = f"{time.time():.6f}"
        lines = []
        off = 0
        while off + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if kind in (RTM_NEWADDR, RTM_DELADDR) and data[off + 16] == socket.AF_INET:
                attr = off + 24
                local = None
                while attr + 4 <= off + length:
                    rta_len, rta_type = struct.unpack_from("=HH", data, attr)
                    if rta_len < 4:
                        break
                    if rta_type in (IFA_LOCAL, IFA_ADDRESS) and rta_len >= 8:
                        local = data[attr + 4:attr + 8]
                        if rta_type == IFA_LOCAL:
                            break
                    attr += (rta_len + 3) & ~3
                if local is not None and inside(local):
                    lines.append(f"{now} {'+' if kind == RTM_NEWADDR else '-'} {socket.inet_ntoa(local)}\n")
            off += (length + 3) & ~3
        if lines:
            out.write("".join(lines))
            out.flush()
    return 0


def arp_monitor(ifname: str, nets: Sequence[ipaddress.IPv4Network], max_seconds: float, every: bool = False) -> int:
    """Print ``<unix time> g <address>`` for the first gratuitous ARP seen for each address in ``nets``
    (``every``: ``<unix time> g <address> <sender MAC>`` for each one)."""
    inside = _in_nets(nets)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    seen: set[bytes] = set()
    out = sys.stdout
    for _ in _readable(sock, (ifname, ETH_P_ARP), max_seconds):
        lines = []
        while True:  # drain what is queued, then one write
            try:
                frame = sock.recv(128, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if len(frame) < 42 or frame[12:14] != b"\x08\x06":
                continue
            sender, target = frame[28:32], frame[38:42]
            if sender == target and (every or sender not in seen) and inside(sender):
                seen.add(sender)
                mac = f" {frame[22:28].hex(':')}" if every else ""
                lines.append(f"{time.time():.6f} g {socket.inet_ntoa(sender)}{mac}\n")
        if lines:
            out.write("".join(lines))
            out.flush()
    return 0


def udp_probe(vips: Sequence[str], port: int, exclude: str, max_seconds: float, interval: float) -> int:
    """Probe every VIP over UDP until each has answered from a node other than ``exclude``.

    Prints ``<unix time> <vip> <node>`` for each VIP's first such answer, then
    ``done``; the responders answer ``<payload> <node name>`` from the VIP.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    pending = set(vips)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    deadline = time.monotonic() + max_seconds
    while pending and time.monotonic() < deadline:
        for vip in pending:
            try:
                sock.sendto(b"p", (vip, port))
            except OSError:
                pass  # no ARP answer yet (EHOSTUNREACH): try again next round
        round_end = time.monotonic() + interval
        while True:
            left = round_end - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            try:
                data, (vip, _port) = sock.recvfrom(256)
            except OSError:
                continue
            node = data.split()[-1].decode(errors="replace") if data.split() else "?"
            if vip in pending and node != exclude:
                pending.discard(vip)
                out.write(f"{time.time():.6f} {vip} {node}\n")
        out.flush()
    out.write("done\n")
    out.flush()
    return 0


def _helper_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("helper", choices=["_addr-monitor", "_arp-monitor", "_udp-probe"])
    ap.add_argument("--net", action="append", default=[])
    ap.add_argument("--ifname", default="eth0")
    ap.add_argument("--vips-file")
    ap.add_argument("--exclude", default="")
    ap.add_argument("--port", type=int, default=9999)
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--every", action="store_true", help="_arp-monitor: every gratuitous ARP, with its sender MAC")
    a = ap.parse_args(argv)
    nets = [ipaddress.IPv4Network(n) for n in a.net]
    if a.helper == "_addr-monitor":
        return addr_monitor(nets, a.max_seconds)
    if a.helper == "_arp-monitor":
        return arp_monitor(a.ifname, nets, a.max_seconds, a.every)
    return udp_probe(Path(a.vips_file).read_text().split(), a.port, a.exclude, a.max_seconds, a.interval)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1].startswith("_"):
    sys.exit(_helper_main(sys.argv[1:]))

# ---------------------------------------------------------------------------
# The benchmark proper (the lab, the daemon, BIRD, ExaBGP).
# ---------------------------------------------------------------------------

sys.path.insert(0, str(ROOT))

from bench.bgp import (  # noqa: E402  (bench/bgp.py also puts tests/ on sys.path for interop.*)
    ROUTER,
    ROUTER_AS,
    SPEAKER,
    SPEAKER_AS,
    prefixes,
    router_established,
    tree_usage,
)
from bench.bgp import measure as measure_speaker  # noqa: E402
from bench.failover import percentile  # noqa: E402
from bench.l2_bind import ip_batch_adds, ip_batch_deletes, ip_batch_seconds  # noqa: E402
from interop.bgp_peers import BirdPeer, Neighbor, PeerSpec  # noqa: E402

from lbd.testing.netlab import Host, Lab, LbdNode  # noqa: E402

# The BGP pool: the same blocks, in the same order, as bench/bgp.py's prefixes (114,688 addresses).
BGP_POOL = ("10.88.0.0/16", "10.77.128.0/17", "10.77.64.0/18")
# Layer 2: VIPs in the node's connected /16, away from the hosts' own addresses (10.77.0.x).
L2_POOL = ("10.77.64.0/18", "10.77.128.0/17")
L2_PREFIXLEN = 16
GOSSIP_PORT = 7946
CHANGE_TIMEOUT = 60.0  # one churn change not at the router by then counts as failed
RESPONDER = ROOT / "bench" / "failover_responder.py"
RESPONDER_PORT = 9999

GOALS = {  # issue 9
    "bgp_start_to_all_100000": 3.0,
    "bgp_start_to_all_10000": 0.6,
    "rss_mib_100000": 300.0,
    "churn_p50_ms": 20.0,
    "churn_p99_ms": 100.0,
    "l2_ratio": 2.0,
    "sigterm_withdrawn_100000": 2.0,
    "failover_3": 1.5,
    "failover_20": 2.0,
}


def say(text: str) -> None:
    print(text, flush=True)


def fmt(value: float | None, unit: str = "s", digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}"


def goal(value: float | None, limit: float) -> str:
    if value is None:
        return f"(goal <= {limit:g}: not measured)"
    return f"(goal <= {limit:g}: {'met' if value <= limit else 'MISSED'})"


def services_text(names: Iterable[str], pool: str, ports: str = "") -> str:
    port_line = f'ports = ["{ports}"]\n' if ports else ""
    return "".join(f'[[service]]\nname = "{n}"\npool = "{pool}"\n{port_line}' for n in names)


def write_atomic(path: Path, text: str) -> None:
    """Write then rename: the directory source reads the file whole, at IN_MOVED_TO."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class EventStream:
    """Lines from a helper running in a namespace, read by a thread; ``ready`` awaited."""

    def __init__(self, host: Host, argv: Sequence[str], what: str) -> None:
        self.what = what
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.proc = host.popen([sys.executable, str(HERE), *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
        self.lab = host.lab
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(15):
            raise RuntimeError(f"{what} did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode().strip()
            if line == "ready":
                self._ready.set()
                continue
            with self.lock:
                self.lines.append(line)

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.lines)

    def close(self) -> None:
        self.lab.stop(self.proc, timeout=2)


class AddressEvents(EventStream):
    """Which watched addresses a namespace holds, and when each was first added / last removed."""

    def __init__(self, host: Host, nets: Sequence[str], max_seconds: float = 900) -> None:
        argv = ["_addr-monitor", "--max-seconds", str(max_seconds)]
        for net in nets:
            argv += ["--net", net]
        super().__init__(host, argv, f"address monitor in {host.name}")

    def events(self) -> list[tuple[float, str, str]]:
        out = []
        for line in self.snapshot():
            if line == "overflow":
                raise RuntimeError(f"{self.what}: the kernel dropped address notifications (ENOBUFS)")
            t, kind, addr = line.split()
            out.append((float(t), kind, addr))
        return out

    def added(self, since: float = 0.0) -> dict[str, float]:
        """Address -> time of its first addition after ``since`` (repeats are lifetime refreshes)."""
        first: dict[str, float] = {}
        for t, kind, addr in self.events():
            if kind == "+" and t >= since and addr not in first:
                first[addr] = t
        return first

    def removed(self, since: float = 0.0) -> dict[str, float]:
        last: dict[str, float] = {}
        for t, kind, addr in self.events():
            if kind == "-" and t >= since:
                last[addr] = t
        return last


def wait_until(predicate, timeout: float, interval: float = 0.02):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` (bounded in time); its last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def nth_time(times: Iterable[float], n: int) -> float | None:
    ordered = sorted(times)
    return ordered[n - 1] if 0 < n <= len(ordered) else None


# ---------------------------------------------------------------------------
# BGP
# ---------------------------------------------------------------------------


class BirdControl:
    """One persistent connection to BIRD's control socket (what birdc speaks).

    Polling through it costs well under a millisecond, against ~5 ms to start a
    ``birdc`` process, so a change's latency is seen to about a millisecond.
    Replies are lines ``DDDD-text`` (more follow) or ``DDDD text`` (the last).
    """

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = b""
        self._reply()  # the greeting

    def _reply(self) -> str:
        lines: list[str] = []
        while True:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("BIRD closed the control socket")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\n", 1)
            line = raw.decode(errors="replace")
            lines.append(line)
            if re.match(r"^\d{4} ", line):
                return "\n".join(lines)

    def command(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n")
        return self._reply()

    def imported(self, proto: str) -> tuple[str, int]:
        """The session's BGP state and the routes imported from it (no table walk)."""
        out = self.command(f"show protocols all {proto}")
        state = re.search(r"BGP state:\s+(\S+)", out)
        routes = re.search(r"Routes:\s+(\d+) imported", out)
        return (state.group(1) if state else "?"), (int(routes.group(1)) if routes else 0)

    def close(self) -> None:
        self.sock.close()


@dataclass
class BgpResult:
    n: int
    source: str
    start_to_first: float | None = None
    start_to_all: float | None = None
    established_to_all: float | None = None
    cpu_s: float | None = None
    rss_mib: float | None = None
    churn_ms: list[float] = field(default_factory=list)
    churn_failed: int = 0
    sigterm_to_withdrawn: float | None = None
    sigterm_to_exit: float | None = None
    log_lines: int = 0
    note: str = ""


def bgp_config(n: int, source: str, dropins: Path, per_file: int) -> str:
    """The node's config (lbd.testing.netlab.LbdNode adds the [node] paths); drop-ins written for ``directory``."""
    pools = ", ".join(f'"{p}"' for p in BGP_POOL)
    text = (f'[node]\nname = "node1"\n\n[[pool]]\nname = "routed"\naddresses = [{pools}]\n\n'
            f'[[bgp_peer]]\nname = "router"\nmy_asn = {SPEAKER_AS}\npeer_asn = {ROUTER_AS}\n'
            f'peer_address = "{ROUTER}"\nhold_time = 90\n\n'
            '[[bgp_advertisement]]\npools = ["routed"]\n\n[log]\nlevel = "info"\nformat = "json"\n\n')
    names = [f"s{i}" for i in range(n)]
    if source == "static":
        return text + services_text(names, "routed")
    dropins.mkdir(parents=True, exist_ok=True)
    for j in range(0, n, per_file):
        (dropins / f"bulk-{j // per_file:05}.toml").write_text(services_text(names[j:j + per_file], "routed"))
    return text + f'[[source]]\ntype = "directory"\nname = "dropins"\npath = "{dropins}"\nsettle = 0\n\n'


def bgp_run(lab: Lab, n: int, source: str, churn: int, timeout: float, scratch: Path, per_file: int,
            profile: bool = False, churn_budget: float = 120.0, stop_early: bool = False,
            profile_churn: bool = False) -> BgpResult:
    """One daemon start with N services to a fresh BIRD router; churn (directory); SIGTERM
    (``stop_early``: as soon as the router holds the first routes, in the middle of the first pass)."""
    result = BgpResult(n=n, source=source)
    router_host, node_host = lab.hosts["router"], lab.hosts["node"]
    spec = PeerSpec(asn=ROUTER_AS, router_id=ROUTER,
                    neighbors=[Neighbor(SPEAKER, SPEAKER_AS, hold_time=90, graceful_restart=False)])
    router = BirdPeer(router_host, spec, extra_config="timeformat protocol iso long us;").start()
    proto = router.protocol_name(SPEAKER)
    bird = BirdControl(router.sock)
    workdir = scratch / f"bgp-{source}-{n}"
    dropins = workdir / "services.d"
    lbd = LbdNode(node_host, workdir, bgp_config(n, source, dropins, per_file), name="node1")
    profiler: subprocess.Popen[bytes] | None = None
    try:
        t0 = time.monotonic()
        lbd.start(wait=False)
        assert lbd.proc is not None
        if profile and not profile_churn:
            profiler = start_profiler(lbd.proc.pid, workdir / "py-spy.txt")
        deadline = t0 + timeout
        count = 0
        wall_all = None
        while time.monotonic() < deadline:
            _state, count = bird.imported(proto)
            now = time.monotonic()
            if count and result.start_to_first is None:
                result.start_to_first = now - t0
                if stop_early:
                    result.note = f"SIGTERM with {count} of {n} routes at the router"
                    break
            if count >= n:
                result.start_to_all = now - t0
                wall_all = time.time()
                result.cpu_s, result.rss_mib = tree_usage(lbd.proc.pid)
                break
            if not lbd.running():
                result.note = f"lbd exited with {lbd.proc.returncode}: {lbd.log()[-400:]}"
                return result
            time.sleep(0.002)
        else:
            result.note = f"router held {count} of {n} after {timeout:.0f} s"
        established = router_established(router, proto)
        if wall_all is not None and established is not None:
            result.established_to_all = wall_all - established
        if result.start_to_all is not None and not stop_early:
            # The peak of the whole first pass (status, metrics and hooks follow the routes):
            # wait for the daemon's "ready" line (bounded) before reading VmHWM again below.
            wait_until(lambda: '"ready"' in lbd.log() or not lbd.running(), 120)
        if result.start_to_all is not None and churn and source == "directory":
            if profile and profile_churn:  # the churn alone, not the start-up before it
                profiler = start_profiler(lbd.proc.pid, workdir / "py-spy.txt")
            result.churn_ms, result.churn_failed = bgp_churn(bird, proto, dropins, n, churn, churn_budget)
        if result.start_to_all is not None:
            _cpu, result.rss_mib = tree_usage(lbd.proc.pid)  # the peak, churn included
        t_sig = time.monotonic()
        lbd.send_signal(signal.SIGTERM)
        while time.monotonic() < t_sig + 30:
            _state, count = bird.imported(proto)
            if count == 0 and result.sigterm_to_withdrawn is None:
                result.sigterm_to_withdrawn = time.monotonic() - t_sig
            if not lbd.running() and result.sigterm_to_exit is None:
                result.sigterm_to_exit = time.monotonic() - t_sig
            if result.sigterm_to_withdrawn is not None and result.sigterm_to_exit is not None:
                break
            time.sleep(0.002)
        result.log_lines = len(lbd.log().splitlines())
        if profiler is not None:
            result.note += f" profile: {workdir / 'py-spy.txt'}"
        return result
    finally:
        lbd.stop()
        if profiler is not None:
            try:
                profiler.wait(timeout=30)  # py-spy writes its file when the daemon exits
            except subprocess.TimeoutExpired:
                lab.stop(profiler)
        bird.close()
        router.stop()


def start_profiler(pid: int, out: Path, duration: float | None = None) -> subprocess.Popen[bytes]:
    """``py-spy record`` on the daemon (collapsed stacks, 100 Hz, not pausing it), until it exits
    (or for ``duration`` seconds).

    Read the result with ``python bench/scale.py profile-summary FILE``.
    """
    py_spy = Path(sys.executable).parent / "py-spy"
    proc = subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "--rate", "100", "--nonblocking",
                             "--format", "raw", "-o", str(out),
                             *(["--duration", str(int(duration))] if duration else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    return proc


def profile_summary(path: Path, top: int = 25) -> str:
    """Inclusive and self sample counts per function from py-spy's collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        # "func (/path/to/file.py:123)" -> "func (file.py)": one entry per function, not per line.
        frames = [re.sub(r" \((?:[^)]*/)?([^/:)]+)(?::\d+)?\)$", r" (\1)", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    lines = [f"{total} samples (100 Hz)", "inclusive:"]
    lines += [f"  {c / total:6.1%}  {f}" for f, c in sorted(inclusive.items(), key=lambda x: -x[1])[:top]]
    lines.append("self:")
    lines += [f"  {c / total:6.1%}  {f}" for f, c in sorted(own.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines)


def bgp_churn(bird: BirdControl, proto: str, dropins: Path, n: int, changes: int,
              budget: float) -> tuple[list[float], int]:
    """Add then remove a one-service drop-in file, ``changes`` times in all; ms until the router agrees.

    Stops early once ``budget`` seconds have gone (a change that costs seconds
    at 100,000 services would otherwise take an hour for 200 changes); the
    report says how many changes were measured.
    """
    took: list[float] = []
    failed = 0
    stop_at = time.monotonic() + budget
    for i in range(changes):
        if time.monotonic() > stop_at and i % 2 == 0:
            break
        adding = i % 2 == 0
        path = dropins / f"churn-{i // 2:05}.toml"
        want = n + 1 if adding else n
        t = time.monotonic()
        if adding:
            write_atomic(path, services_text([f"c{i // 2}"], "routed"))
        else:
            path.unlink()
        deadline = t + CHANGE_TIMEOUT
        while time.monotonic() < deadline:
            if bird.imported(proto)[1] == want:
                took.append((time.monotonic() - t) * 1000)
                break
            time.sleep(0.0005)
        else:
            failed += 1
            # Resynchronise: wait for the router to settle before the next change.
            wait_until(lambda: bird.imported(proto)[1] == want, CHANGE_TIMEOUT)
    return took, failed


def bgp_part(args: argparse.Namespace, scratch: Path) -> list[str]:
    report: list[str] = []
    with Lab() as lab:
        lab.add_host("router", [f"{ROUTER}/24"])
        lab.add_host("node", [f"{SPEAKER}/24"])
        results: list[BgpResult] = []
        for n in args.bgp_n:
            for source in args.sources:
                say(f"# bgp: N={n} source={source} ...")
                r = bgp_run(lab, n, source, args.churn, args.timeout, scratch, args.per_file, args.py_spy,
                            args.churn_seconds, stop_early=args.sigterm_first,
                            profile_churn=args.py_spy_churn)
                results.append(r)
                say(f"#   {r}" if not r.churn_ms else f"#   start->all {r.start_to_all} churn p50 "
                    f"{statistics.median(r.churn_ms):.1f} ms")
        anchors = {}
        if not args.no_exabgp:
            n_anchor = max(args.bgp_n)
            say(f"# bgp: ExaBGP anchor, {n_anchor} routes ...")
            anchors[n_anchor] = measure_speaker(lab, "exabgp", n_anchor, prefixes(n_anchor), args.timeout,
                                                str(scratch))
    report.append("BGP: the daemon end to end (lbd --config FILE run, one BGP peer, a BIRD router), "
                  "and ExaBGP's speaker alone as the anchor")
    report.append(f"{'N':>7} {'source':9} {'start->1st':>10} {'start->all':>10} {'estab->all':>10} "
                  f"{'CPU s':>6} {'RSS MiB':>7} {'SIGTERM->0 routes':>17} {'->exit':>7} {'log lines':>9}  note")
    for r in results:
        report.append(f"{r.n:>7} {r.source:9} {fmt(r.start_to_first):>10} {fmt(r.start_to_all):>10} "
                      f"{fmt(r.established_to_all):>10} {fmt(r.cpu_s, '', 2):>6} {fmt(r.rss_mib, '', 1):>7} "
                      f"{fmt(r.sigterm_to_withdrawn):>17} {fmt(r.sigterm_to_exit):>7} {r.log_lines:>9}  {r.note}")
    for n, a in anchors.items():
        report.append(f"{n:>7} {'ExaBGP':9} {'-':>10} {fmt(a.from_start):>10} {fmt(a.from_established):>10} "
                      f"{fmt(a.cpu_s, '', 2):>6} {fmt(a.rss_mib, '', 1):>7} {'':>17} {'':>7} {'':>9}  "
                      f"static config, {a.note or 'ok'}")
    report.append("")
    for r in results:
        limit = GOALS.get(f"bgp_start_to_all_{r.n}")
        line = f"N={r.n} {r.source}:"
        if limit is not None:
            line += f" start->all {fmt(r.start_to_all)} {goal(r.start_to_all, limit)};"
        if r.n == 100_000:
            line += (f" RSS {fmt(r.rss_mib, 'MiB', 1)} {goal(r.rss_mib, GOALS['rss_mib_100000'])};"
                     f" SIGTERM->withdrawn {fmt(r.sigterm_to_withdrawn)} "
                     f"{goal(r.sigterm_to_withdrawn, GOALS['sigterm_withdrawn_100000'])};")
        a = anchors.get(r.n)
        if a is not None and a.from_start and r.start_to_all:
            line += f" lbd/ExaBGP start->all {r.start_to_all / a.from_start:.2f}x;"
        if r.churn_ms:
            p50, p99 = statistics.median(r.churn_ms), percentile(r.churn_ms, 99)
            line += (f" churn ({len(r.churn_ms)} changes measured, {r.churn_failed} not at the router within "
                     f"{CHANGE_TIMEOUT:g} s): "
                     f"p50 {p50:.1f} ms {goal(p50, GOALS['churn_p50_ms'])}, "
                     f"p99 {p99:.1f} ms {goal(p99, GOALS['churn_p99_ms'])}, max {max(r.churn_ms):.1f} ms;")
        report.append(line)
    return report


# ---------------------------------------------------------------------------
# Layer 2
# ---------------------------------------------------------------------------


@dataclass
class L2Result:
    n: int
    start_to_first: float | None = None
    first_to_all: float | None = None
    start_to_all: float | None = None
    first_to_announced: float | None = None
    announced: int = 0
    sigterm_to_withdrawn: float | None = None
    ip_add: float | None = None  # first -> last notification of ip -batch's adds
    ip_add_wall: float | None = None  # the ip -batch process, start to exit
    ip_del: float | None = None
    ip_del_wall: float | None = None
    note: str = ""


def l2_vips(n: int) -> list[ipaddress.IPv4Address]:
    out: list[ipaddress.IPv4Address] = []
    for block in L2_POOL:
        net = ipaddress.IPv4Network(block)
        out += [net.network_address + i for i in range(min(n - len(out), net.num_addresses))]
    if len(out) < n:
        raise SystemExit(f"at most {len(out)} L2 VIPs fit the lab ranges")
    return out


def l2_config(n: int, name: str, announce_rate: int, cluster: str = "") -> str:
    pools = ", ".join(f'"{p}"' for p in L2_POOL)
    return (f'[node]\nname = "{name}"\n{cluster}\n[[pool]]\nname = "lan"\naddresses = [{pools}]\n\n'
            f'[[l2_advertisement]]\npools = ["lan"]\nannounce_rate = {announce_rate}\n\n'
            '[log]\nlevel = "info"\nformat = "json"\n\n'
            + services_text((f"s{i}" for i in range(n)), "lan", f"udp/{RESPONDER_PORT}"))


def l2_run(lab: Lab, n: int, timeout: float, scratch: Path, announce_rate: int) -> L2Result:
    result = L2Result(n=n)
    node, client = lab.hosts["node"], lab.hosts["client"]
    addrs = AddressEvents(node, L2_POOL)
    garps = EventStream(client, ["_arp-monitor", "--ifname", client.ifname, *sum((["--net", p] for p in L2_POOL), [])],
                        "ARP monitor")
    lbd = LbdNode(node, scratch, l2_config(n, "node1", announce_rate), name=f"l2-{n}")
    try:
        t0 = time.time()
        lbd.start(wait=False)
        added = wait_until(lambda: len(a := addrs.added(t0)) >= n and a, timeout, 0.05) or addrs.added(t0)
        if len(added) < n:
            result.note = f"{len(added)} of {n} bound after {timeout:.0f} s"
        first = min(added.values()) if added else None
        last = nth_time(added.values(), n)
        if first is not None:
            result.start_to_first = first - t0
            if last is not None:
                result.first_to_all, result.start_to_all = last - first, last - t0

        def announced() -> list[float]:
            return [float(line.split()[0]) for line in garps.snapshot()]

        # Gratuitous ARPs are paced (announce_rate per second): allow for it.
        wait_until(lambda: len(announced()) >= n, n / announce_rate * 1.5 + 10, 0.05)
        seen = announced()
        result.announced = len(seen)
        if first is not None and len(seen) >= n:
            result.first_to_announced = max(seen) - first
        t_sig = time.time()
        lbd.send_signal(signal.SIGTERM)
        gone = wait_until(lambda: len(r := addrs.removed(t_sig)) >= n and r, 30, 0.05) or addrs.removed(t_sig)
        if len(gone) >= n:
            result.sigterm_to_withdrawn = max(gone.values()) - t_sig
        else:
            result.note += f" {len(gone)} of {n} withdrawn 30 s after SIGTERM"
        lbd.stop()
        # The kernel's fastest path for the same work: ip -batch, same namespace, same interface.
        vips = l2_vips(n)
        prefix = ["ip", "netns", "exec", node.netns]
        t_ip = time.time()
        result.ip_add_wall = ip_batch_seconds(ip_batch_adds(vips, node.ifname), prefix)
        ip_added = wait_until(lambda: len(a := addrs.added(t_ip)) >= n and a, 30, 0.05) or {}
        if len(ip_added) >= n:
            result.ip_add = max(ip_added.values()) - min(ip_added.values())
        t_ip = time.time()
        result.ip_del_wall = ip_batch_seconds(ip_batch_deletes(vips, node.ifname), prefix)
        ip_gone = wait_until(lambda: len(r := addrs.removed(t_ip)) >= n and r, 30, 0.05) or {}
        if len(ip_gone) >= n:
            result.ip_del = max(ip_gone.values()) - min(ip_gone.values())
        return result
    finally:
        lbd.stop()
        addrs.close()
        garps.close()


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def l2_part(args: argparse.Namespace, scratch: Path) -> list[str]:
    results: list[L2Result] = []
    with Lab() as lab:
        lab.add_host("node", [f"10.77.0.2/{L2_PREFIXLEN}"])
        lab.add_host("client", [f"10.77.0.3/{L2_PREFIXLEN}"])
        for n in args.l2_n:
            say(f"# l2: N={n} ...")
            r = l2_run(lab, n, args.timeout, scratch, args.announce_rate)
            results.append(r)
            say(f"#   {r}")
    report = [f"L2: the daemon end to end (N services in one L2 pool on one veth, announce_rate "
              f"{args.announce_rate}/s), against ip -batch on the same interface in the same run",
              f"{'N':>6} {'start->1st':>10} {'1st->all bound':>14} {'ip -batch add':>13} {'ratio':>6} "
              f"{'start->all':>10} {'1st->all GARP':>13} {'SIGTERM->none':>13} {'ip -batch del':>13} {'ratio':>6}  note"]
    for r in results:
        report.append(f"{r.n:>6} {fmt(r.start_to_first):>10} {fmt(r.first_to_all):>14} {fmt(r.ip_add):>13} "
                      f"{ratio(r.first_to_all, r.ip_add):>6} {fmt(r.start_to_all):>10} "
                      f"{fmt(r.first_to_announced):>13} {fmt(r.sigterm_to_withdrawn):>13} {fmt(r.ip_del):>13} "
                      f"{ratio(r.sigterm_to_withdrawn, r.ip_del):>6}  {r.note.strip()}")
    report.append("(ip -batch from its first notification to its last; the ip process start to exit: "
                  + ", ".join(f"N={r.n} add {fmt(r.ip_add_wall)} del {fmt(r.ip_del_wall)}" for r in results)
                  + f"; goal: lbd within {GOALS['l2_ratio']:g}x of ip -batch)")
    return report


# ---------------------------------------------------------------------------
# Failover
# ---------------------------------------------------------------------------


@dataclass
class FailoverResult:
    nodes: int
    vips: int
    victim: str = ""
    victim_vips: int = 0
    settle_s: float | None = None
    all_rebound: float | None = None  # fault -> every victim VIP bound on a survivor
    rebound: int = 0
    sample: int = 0
    sample_answered: int = 0
    sample_p50: float | None = None
    sample_max: float | None = None
    duplicates: int = 0
    detected: float | None = None  # fault -> the first survivor declares the victim dead (its log)
    garp_p50: float | None = None  # fault -> each moved VIP's first gratuitous ARP at the client
    garp_all: float | None = None
    garps: int = 0
    note: str = ""


def node_vips(host: Host) -> set[str]:
    out = host.run(["ip", "-j", "-4", "addr", "show", "dev", host.ifname], timeout=60).stdout
    nets = [ipaddress.IPv4Network(p) for p in L2_POOL]
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])
            if any(ipaddress.IPv4Address(a["local"]) in net for net in nets)}


def first_death(daemons: dict[str, LbdNode], survivors: list[str], victim: str, since: float) -> float | None:
    """Seconds from ``since`` to the first survivor's ``member_dead`` line about ``victim``."""
    times = []
    for name in survivors:
        for line in daemons[name].log().splitlines():
            if '"member_dead"' not in line or f'"member": "{victim}"' not in line:
                continue
            try:
                stamp = json.loads(line)["timestamp"]
            except (ValueError, KeyError):
                continue
            t = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            if t >= since:
                times.append(t - since)
                break
    return min(times) if times else None


def failover_run(lab: Lab, nodes: int, n: int, scratch: Path, timeout: float, announce_rate: int,
                 sample_size: int = 100, py_spy: bool = False) -> FailoverResult:
    result = FailoverResult(nodes=nodes, vips=n)
    addresses = {f"n{i}": f"10.77.0.{10 + i}" for i in range(1, nodes + 1)}
    hosts = {name: lab.add_host(name, [f"{addr}/{L2_PREFIXLEN}"]) for name, addr in addresses.items()}
    client = lab.add_host("client", [f"10.77.0.250/{L2_PREFIXLEN}"])
    for name, host in hosts.items():
        proc = host.popen([sys.executable, str(RESPONDER), "--node", name, "--port", str(RESPONDER_PORT),
                           "--max-seconds", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        del proc
    daemons: dict[str, LbdNode] = {}
    monitors: dict[str, AddressEvents] = {}
    try:
        t_start = time.monotonic()
        for name, host in hosts.items():
            join = ", ".join(f'"{a}:{GOSSIP_PORT}"' for other, a in addresses.items() if other != name)
            cluster = (f'\n[cluster]\nbind = "{addresses[name]}:{GOSSIP_PORT}"\njoin = [{join}]\n'
                       'failback_delay = 0\nallow_plaintext = true\n')
            daemons[name] = LbdNode(host, scratch / f"failover-{nodes}", l2_config(n, name, announce_rate, cluster),
                                    name=name).start(wait=False)
        # Settled: every VIP bound on exactly one node, the same holders twice in a row 2 s apart,
        # and no member declared dead by anyone meanwhile (a loaded machine makes the cluster
        # flap: a fault in the middle of a flap measures the flap, not the failover).
        held: dict[str, set[str]] = {}
        previous: dict[str, set[str]] | None = None
        deaths_before = -1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, d in daemons.items():
                if not d.running():
                    raise RuntimeError(f"lbd on {name} exited: {d.log()[-600:]}")
            held = {name: node_vips(host) for name, host in hosts.items()}
            deaths = sum(d.log().count('"member_dead"') for d in daemons.values())
            total = sum(len(v) for v in held.values())
            distinct = len(set().union(*held.values()))
            if total == n and distinct == n and held == previous and deaths == deaths_before:
                break
            previous = held if distinct == n and total == n else None
            deaths_before = deaths
            time.sleep(2)
        else:
            result.note = f"not settled after {timeout:.0f} s: {sum(len(v) for v in held.values())} bound"
            return result
        result.settle_s = time.monotonic() - t_start
        victim = max(held, key=lambda name: len(held[name]))
        result.victim, result.victim_vips = victim, len(held[victim])
        moving = held[victim]
        survivors = [name for name in hosts if name != victim]
        for name in survivors:
            monitors[name] = AddressEvents(hosts[name], L2_POOL)
        sample = random.Random(9).sample(sorted(moving), min(sample_size, len(moving)))
        result.sample = len(sample)
        vips_file = scratch / f"sample-{nodes}.txt"
        vips_file.write_text("\n".join(sample))
        # Warm the client's ARP cache: every sampled VIP answers from the victim first.
        warm = EventStream(client, ["_udp-probe", "--vips-file", str(vips_file), "--max-seconds", "20"],
                           "warm-up probe")
        wait_until(lambda: "done" in warm.snapshot(), 25, 0.05)
        warm.close()
        answered_by = {line.split()[1]: line.split()[2] for line in warm.snapshot() if line != "done"}
        wrong = {v: node for v, node in answered_by.items() if node != victim}
        if len(answered_by) < len(sample) or wrong:
            result.note += f"before the fault {len(answered_by)} of {len(sample)} sampled VIPs answered " \
                           f"({len(wrong)} from a node other than {victim}); "
        probe = EventStream(client, ["_udp-probe", "--vips-file", str(vips_file), "--exclude", victim,
                                     "--interval", "0.005", "--max-seconds", "30"], "failover probe")
        # The fault: a dead host sends nothing, not even a last packet; then its daemon dies.
        garps = EventStream(client, ["_arp-monitor", "--every", "--ifname", client.ifname,
                                     *sum((["--net", p] for p in L2_POOL), []), "--max-seconds", "120"], "ARP monitor")
        victim_mac = hosts[victim].mac.lower()
        profiles = {}
        if py_spy:  # the survivors, from just before the fault, for 10 s
            for name in survivors[:2]:
                out = scratch / f"py-spy-{nodes}-{name}.txt"
                profiles[name] = (start_profiler(daemons[name].proc.pid, out, 10), out)  # type: ignore[union-attr]
            time.sleep(1.0)
        t_fault = time.time()
        lab.set_link(hosts[victim], up=False)
        daemons[victim].send_signal(signal.SIGKILL)

        def survivors_garps() -> dict[str, float]:
            first: dict[str, float] = {}
            for line in garps.snapshot():
                t, _, addr, mac = line.split()
                if float(t) >= t_fault and mac != victim_mac and addr in moving:
                    first.setdefault(addr, float(t) - t_fault)
            return first

        def rebound() -> dict[str, float]:
            first: dict[str, float] = {}
            for mon in monitors.values():
                for addr, t in mon.added(t_fault).items():
                    if addr in moving and (addr not in first or t < first[addr]):
                        first[addr] = t
            return first

        got = wait_until(lambda: len(r := rebound()) >= len(moving) and r, 60, 0.05) or rebound()
        result.rebound = len(got)
        if len(got) >= len(moving):
            result.all_rebound = max(got.values()) - t_fault
        wait_until(lambda: "done" in probe.snapshot(), 35, 0.05)
        probe.close()
        wait_until(lambda: len(survivors_garps()) >= len(moving), 10, 0.1)
        garps.close()
        firsts = list(survivors_garps().values())
        result.garps = len(firsts)
        if firsts:
            result.garp_p50 = statistics.median(firsts)
            if len(firsts) >= len(moving):
                result.garp_all = max(firsts)
        result.detected = first_death(daemons, survivors, victim, t_fault)
        for name, (proc, out) in profiles.items():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if out.exists():
                say(f"# py-spy of survivor {name} (1 s before the fault to 9 s after): {out}\n"
                    + profile_summary(out))
        answers = [float(line.split()[0]) - t_fault for line in probe.snapshot() if line != "done"]
        result.sample_answered = len(answers)
        if answers:
            result.sample_p50, result.sample_max = statistics.median(answers), max(answers)
        time.sleep(1)
        final = {name: node_vips(hosts[name]) for name in survivors}
        result.duplicates = sum(len(v) for v in final.values()) - len(set().union(*final.values()))
        return result
    finally:
        for mon in monitors.values():
            mon.close()
        for d in daemons.values():  # all stop at once, then each is waited for (20 nodes)
            if d.running():
                with contextlib.suppress(ProcessLookupError):
                    d.send_signal(signal.SIGTERM)
        for d in daemons.values():
            d.stop(timeout=30)


def failover_part(args: argparse.Namespace, scratch: Path) -> list[str]:
    results = []
    for nodes in args.nodes:
        say(f"# failover: {nodes} nodes, {args.failover_vips} VIPs ...")
        with Lab() as lab:
            r = failover_run(lab, nodes, args.failover_vips, scratch, args.timeout, args.announce_rate,
                             py_spy=args.py_spy)
        results.append(r)
        say(f"#   {r}")
    report = ["Failover: the daemons end to end (lbd on every node, gossip, a client probing over UDP); "
              "the victim's link cut and its daemon SIGKILLed",
              f"{'nodes':>5} {'VIPs':>6} {'victim held':>11} {'fault->dead':>11} {'fault->all rebound':>18} "
              f"{'GARP p50':>9} {'GARP all':>9} {'sample answered':>15} "
              f"{'sample p50':>10} {'sample max':>10} {'duplicates':>10} {'settle':>8}  note"]
    for r in results:
        report.append(f"{r.nodes:>5} {r.vips:>6} {r.victim_vips:>11} {fmt(r.detected):>11} {fmt(r.all_rebound):>18} "
                      f"{fmt(r.garp_p50):>9} {fmt(r.garp_all):>9} "
                      f"{f'{r.sample_answered}/{r.sample}':>15} {fmt(r.sample_p50):>10} {fmt(r.sample_max):>10} "
                      f"{r.duplicates:>10} {fmt(r.settle_s, 's', 1):>8}  {r.note}")
        limit = GOALS.get(f"failover_{r.nodes}")
        if limit is not None:
            report.append(f"  {r.nodes} nodes: every VIP of the victim served elsewhere (bound, and the sample "
                          f"answering) {fmt(max(filter(None, [r.all_rebound, r.sample_max]), default=None))} "
                          f"{goal(max(filter(None, [r.all_rebound, r.sample_max]), default=None), limit)}")
    return report


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["bgp", "l2", "failover", "all"])
    ap.add_argument("--quick", action="store_true", help="small sizes: proves the script works, figures mean nothing")
    ap.add_argument("--bgp-n", type=int, action="append", help="BGP service counts (default 10000 and 100000)")
    ap.add_argument("--sources", default="static,directory", help="static, directory or both")
    ap.add_argument("--per-file", type=int, default=1000, help="services per drop-in file (directory source)")
    ap.add_argument("--churn", type=int, help="changes for the churn figure (default 200)")
    ap.add_argument("--churn-seconds", type=float, default=120.0,
                    help="stop churning after this long (slow changes at 100,000 services)")
    ap.add_argument("--no-exabgp", action="store_true", help="skip the ExaBGP anchor")
    ap.add_argument("--sigterm-first", action="store_true",
                    help="bgp: SIGTERM as soon as the router holds the first routes (mid first pass)")
    ap.add_argument("--py-spy", action="store_true", help="record each BGP run's daemon with py-spy (venv's)")
    ap.add_argument("--py-spy-churn", action="store_true",
                    help="with --py-spy: record the churn alone (from the first change to SIGTERM)")
    ap.add_argument("--l2-n", type=int, action="append", help="L2 VIP counts (default 2000 and 10000)")
    ap.add_argument("--announce-rate", type=int, default=1000, help="[[l2_advertisement]] announce_rate (lbd's default)")
    ap.add_argument("--nodes", type=int, action="append", help="failover cluster sizes (default 3; 20 as well if asked)")
    ap.add_argument("--failover-vips", type=int, help="L2 VIPs in the failover cluster (default 10000)")
    ap.add_argument("--timeout", type=float, default=180.0)
    ap.add_argument("--workdir", type=Path, help="keep configs and daemon logs here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces)")

    def interrupted(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM as ^C: the labs' finally blocks end what they started

    signal.signal(signal.SIGTERM, interrupted)
    quick = args.quick
    args.bgp_n = args.bgp_n or ([1000] if quick else [10_000, 100_000])
    args.sources = [s for s in args.sources.split(",") if s]
    args.churn = args.churn if args.churn is not None else (20 if quick else 200)
    args.l2_n = args.l2_n or ([300] if quick else [2000, 10_000])
    args.nodes = args.nodes or [3]
    args.failover_vips = args.failover_vips or (300 if quick else 10_000)
    if quick:
        args.timeout = min(args.timeout, 60.0)
        args.per_file = min(args.per_file, 100)
    parts = ["bgp", "l2", "failover"] if args.part == "all" else [args.part]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lbd-bench-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: list[str] = []
    started = time.monotonic()
    load_at_start = os.getloadavg()
    for part in parts:
        scratch = workdir / part
        scratch.mkdir(exist_ok=True)
        report += {"bgp": bgp_part, "l2": l2_part, "failover": failover_part}[part](args, scratch)
        report.append("")
    say("")
    say("\n".join(report))
    if quick:
        say("(--quick: sizes too small for the figures to mean anything)")
    # Figures on a shared machine are upper bounds: say how loaded it was.
    load_before = ", ".join(f"{x:.1f}" for x in load_at_start)
    load_after = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    say(f"(load average at start {load_before}, at the end {load_after}; {os.cpu_count()} CPUs)")
    say(f"(took {time.monotonic() - started:.0f} s; configs and daemon logs: {workdir})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "profile-summary":
        print(profile_summary(Path(sys.argv[2])))
        sys.exit(0)
    sys.exit(main())
