"""BGP initial table: lbd's speaker against ExaBGP and BIRD, in one lab, one run.

Run as root: ``python bench/bgp.py [--n 10000 --n 100000] [--json]``.

For each N (/32 prefixes) and each speaker (lbd's runner ``python -m lbd.testing.bgp_speaker
--prefixes-file``, ExaBGP 4 with a static config, BIRD 2 as a speaker with a
static protocol), a fresh BIRD router in a namespace (passive, eBGP, import
all, no kernel export) receives the table, and this script measures:

- start -> 99% and start -> 100%: from just before the speaker process is
  started until the router's BGP protocol reports 99% of the N routes
  (``ceil(0.99 N)``), and all N, imported. Both are reported for every
  speaker: a speaker can deliver nearly everything at once and the last few
  routes seconds later (BIRD-as-speaker: the last 16 of 10,000 routes wait
  ~3 s), so "all N" alone would compare tails, and "99%" alone would hide them;
- Established -> 99% and Established -> 100%: from the router's session going
  Established to the same moments;
- the speaker's CPU seconds (user + system, its process tree, from /proc) and
  peak RSS (VmHWM, summed over its process tree) at that moment.

The router is polled with one ``birdc`` call every 10 ms (``show protocols
all <p>``: state and imported count, no table walk), so "all N" is detected
within ~15 ms; Established is the router's own microsecond stamp. Goals for lbd (issue 3): at most 1.5 s from start, 0.3 s from
Established, 100 MiB.

Prefixes come from 10.88.0.0/16, then 10.77.128.0/17, then 10.77.64.0/18
(lab ranges; they are only routes in the router's BIRD table, never traffic).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from interop.bgp_peers import BirdPeer, Neighbor, PeerSpec, _process_tree
from interop.bgp_speakers import (
    Announce,
    BirdSpeaker,
    ExaBgpSpeaker,
    LbdSpeaker,
    SessionSpec,
)

from lbd.testing.netlab import Lab

ROUTER, SPEAKER = "10.77.0.1", "10.77.0.2"
ROUTER_AS, SPEAKER_AS = 4200000002, 4200000001
CLK_TCK = os.sysconf("SC_CLK_TCK")
GOALS = {"from_start": 1.5, "from_established": 0.3, "rss_mib": 100.0}


def prefixes(n: int) -> list[str]:
    out: list[str] = []
    for block in ("10.88.0.0/16", "10.77.128.0/17", "10.77.64.0/18"):
        net = ipaddress.ip_network(block)
        base = int(net.network_address)
        for i in range(net.num_addresses):
            if len(out) == n:
                return out
            out.append(f"{ipaddress.IPv4Address(base + i)}/32")
    if len(out) < n:
        raise SystemExit(f"at most {len(out)} prefixes fit the lab ranges")
    return out


@dataclass
class Result:
    speaker: str
    n: int
    from_start: float | None  # start -> 100% of the routes
    from_established: float | None  # Established -> 100%
    from_start_99: float | None  # start -> 99%
    from_established_99: float | None  # Established -> 99%
    cpu_s: float | None
    rss_mib: float | None
    note: str = ""


def tree_usage(pid: int) -> tuple[float, float]:
    """CPU seconds and summed peak RSS (MiB) of ``pid`` and its descendants."""
    cpu = 0.0
    rss_kib = 0
    for p in _process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
            with open(f"/proc/{p}/status") as f:
                m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
            if m:
                rss_kib += int(m.group(1))
        except (OSError, IndexError, ValueError):
            continue
    return cpu, rss_kib / 1024


def router_poll(router: BirdPeer, proto: str) -> tuple[str, int]:
    # birdc talks over a unix socket: no need to enter the namespace (cheaper).
    out = subprocess.run(["birdc", "-s", router.sock, "show", "protocols", "all", proto], check=False,
                         capture_output=True, text=True, timeout=10).stdout
    state = re.search(r"BGP state:\s+(\S+)", out)
    routes = re.search(r"Routes:\s+(\d+) imported", out)
    return (state.group(1) if state else "?"), (int(routes.group(1)) if routes else 0)


_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)")


def _wall(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def router_established(router: BirdPeer, proto: str) -> float | None:
    """When the router's session went Established, as a Unix time (BIRD's µs stamp).

    (Route stamps cannot give the arrival of the last route: BIRD updates them
    when a route is re-announced, and BIRD-as-speaker re-sends its table.)
    """
    out = subprocess.run(["birdc", "-s", router.sock, "show", "protocols", proto], check=False,
                         capture_output=True, text=True, timeout=10).stdout
    m = _STAMP.search(out)
    return _wall(m.group(1)) if m else None


def measure(lab: Lab, kind: str, n: int, plist: list[str], timeout: float, scratch: str) -> Result:
    router_host, node = lab.hosts["router"], lab.hosts["node"]
    spec = PeerSpec(asn=ROUTER_AS, router_id=ROUTER,
                    neighbors=[Neighbor(SPEAKER, SPEAKER_AS, hold_time=90, graceful_restart=False)])
    # Microsecond timestamps for the session's "since".
    router = BirdPeer(router_host, spec, extra_config="timeformat protocol iso long us;").start()
    proto = router.protocol_name(SPEAKER)
    session = SessionSpec(peer_address=ROUTER, peer_asn=ROUTER_AS, my_asn=SPEAKER_AS,
                          local_address=SPEAKER, router_id=SPEAKER, hold_time=90)
    workdir = tempfile.mkdtemp(prefix=f"{kind}-{n}-", dir=scratch)
    start: Callable[[], object]
    if kind == "lbd":
        spk = LbdSpeaker(node, session, plist, workdir=workdir)
        start = spk.start
    elif kind == "exabgp":
        spk = ExaBgpSpeaker(node, session, [Announce(p) for p in plist], workdir=workdir)
        spk.prepare()  # the config is written before the clock starts, like lbd's prefixes file
        start = spk.start
    else:
        spk = BirdSpeaker(node, session, plist, workdir=workdir)
        spk.prepare()
        start = spk.start
    t0 = time.monotonic()
    start()
    t_est: float | None = None
    t_all: float | None = None
    t_99: float | None = None
    wall_99 = 0.0
    n_99 = -(-n * 99 // 100)  # ceil(0.99 n)
    cpu = rss = None
    deadline = t0 + timeout
    note = ""
    while time.monotonic() < deadline:
        state, count = router_poll(router, proto)
        now = time.monotonic()
        if t_est is None and state == "Established":
            t_est = now
        if t_99 is None and count >= n_99:
            t_99, wall_99 = now, time.time()
        if count >= n:
            t_all = now
            wall_all = time.time()
            proc = spk.proc
            assert proc is not None
            cpu, rss = tree_usage(proc.pid)
            break
        if spk.proc is not None and spk.proc.poll() is not None:
            note = f"speaker exited with {spk.proc.returncode}"
            break
        time.sleep(0.01)
    else:
        note = f"router held {count} of {n} after {timeout:.0f} s"
    from_start = from_est = from_start_99 = from_est_99 = None
    # Established as the router stamped it (µs), so that a session that comes up
    # and delivers everything between two polls is still measured.
    est_wall = router_established(router, proto) if t_99 is not None else None
    if t_99 is not None:
        from_start_99 = t_99 - t0
        if est_wall is not None:
            from_est_99 = wall_99 - est_wall
        elif t_est is not None:
            from_est_99 = t_99 - t_est
    if t_all is not None:
        from_start = t_all - t0
        if est_wall is not None:
            from_est = wall_all - est_wall
        elif t_est is not None:
            from_est = t_all - t_est
    spk.stop()
    router.stop()
    return Result(
        speaker=kind,
        n=n,
        from_start=round(from_start, 3) if from_start is not None else None,
        from_established=round(from_est, 3) if from_est is not None else None,
        from_start_99=round(from_start_99, 3) if from_start_99 is not None else None,
        from_established_99=round(from_est_99, 3) if from_est_99 is not None else None,
        cpu_s=round(cpu, 2) if cpu is not None else None,
        rss_mib=round(rss, 1) if rss is not None else None,
        note=note,
    )


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, action="append", help="prefix counts (default 10000 and 100000)")
    ap.add_argument("--speakers", default="lbd,exabgp,bird")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces)")
    counts = args.n or [10_000, 100_000]
    kinds = [k for k in args.speakers.split(",") if k]
    results: list[Result] = []
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="lbd-bench-bgp-") as scratch:
        lab.add_host("router", [f"{ROUTER}/24"])
        lab.add_host("node", [f"{SPEAKER}/24"])
        for n in counts:
            plist = prefixes(n)
            for kind in kinds:
                r = measure(lab, kind, n, plist, args.timeout, scratch)
                results.append(r)
                print(f"# {kind:7} N={n:>7}: {r}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
        return 0
    print(f"{'speaker':8} {'N':>7} {'start->99% s':>12} {'start->100% s':>13} {'estab->99% s':>12} "
          f"{'estab->100% s':>13} {'CPU s':>7} {'peak RSS MiB':>12}  note")
    for r in results:
        def f(v: float | None) -> str:
            return "-" if v is None else f"{v:g}"
        print(f"{r.speaker:8} {r.n:>7} {f(r.from_start_99):>12} {f(r.from_start):>13} {f(r.from_established_99):>12} "
              f"{f(r.from_established):>13} {f(r.cpu_s):>7} {f(r.rss_mib):>12}  {r.note}")
    print()
    by = {(r.speaker, r.n): r for r in results}
    for n in counts:
        lbd = by.get(("lbd", n))
        if lbd is None:
            continue
        for other in ("exabgp", "bird"):
            o = by.get((other, n))
            if o is None:
                continue
            print(f"N={n}: lbd/{other}: start->99% {ratio(lbd.from_start_99, o.from_start_99)}, "
                  f"start->100% {ratio(lbd.from_start, o.from_start)}, "
                  f"estab->99% {ratio(lbd.from_established_99, o.from_established_99)}, "
                  f"estab->100% {ratio(lbd.from_established, o.from_established)}, "
                  f"CPU {ratio(lbd.cpu_s, o.cpu_s)}, RSS {ratio(lbd.rss_mib, o.rss_mib)}")
        verdict = []
        for key, goal in GOALS.items():
            v = getattr(lbd, key)
            verdict.append(f"{key} {v} {'<=' if v is not None and v <= goal else '>'} {goal}")
        print(f"N={n}: lbd goals: " + "; ".join(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
