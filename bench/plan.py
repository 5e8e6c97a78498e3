"""``lbd plan`` on a large config, against the real daemon in a namespace lab.

Run (root): ``python bench/plan.py [--services 10000] [--runs 3]``.

The daemon runs with N static services allocated from a /18 pool, with an
L2 advertisement for the pool: the planner runs the whole election for every
VIP, but the pool lies outside every subnet of the node, so no address is
bound (binding N addresses would measure netlink, not the plan). Measured,
median of ``--runs``:

- ``lbd plan`` with no change (the file the daemon runs): wall time of the
  command, Python start-up of the client included;
- ``lbd plan --config NEW`` where NEW shrinks the pool by 100 addresses in use
  (100 services re-addressed), removes 100 services and adds 100 new ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lbd.testing.netlab import Lab, LbdNode, wait_for  # noqa: E402


def config(services: range, first: str) -> str:
    body = f'[[pool]]\nname = "big"\naddresses = ["{first}-10.88.63.255"]\n\n[[l2_advertisement]]\npools = ["big"]\n\n'
    return body + "".join(f'[[service]]\nname = "s{i}"\n' for i in services)


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    n = args.services
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        host = lab.add_host("node", ["10.77.0.2/24"])
        lbd = LbdNode(host, tmp, config(range(n), "10.88.0.0"), name="node1").start(timeout=120)
        try:
            wait_for(lambda: len(lbd.status()["services"]) == n and all(
                s["addresses"] for s in lbd.status()["services"]), 300, interval=1.0, what="every service allocated")
            new = Path(tmp) / "new.toml"
            # The pool loses its first 100 addresses (s0..s99 re-addressed), s100..s199 go, n..n+99 come.
            text = lbd.config_path.read_text().split("[[pool]]")[0] + config(
                [*range(0, 100), *range(200, n + 100)], "10.88.0.100")
            new.write_text(text)
            base = [str(lbd.bindir / "lbd"), "plan", "--socket", str(lbd.socket), "--json"]
            same, changed = [], []
            for _ in range(args.runs):
                seconds, result = timed(base)
                assert result.returncode == 0, result.stderr
                same.append(seconds)
                seconds, result = timed(base + ["--config", str(new)])
                assert result.returncode == 2, result.stderr
                diff = json.loads(result.stdout)
                changed.append(seconds)
            print(f"services: {n}")
            print(f"lbd plan, no change: median {statistics.median(same):.2f} s over {args.runs} runs "
                  f"({', '.join(f'{s:.2f}' for s in same)})")
            print(f"lbd plan --config NEW: median {statistics.median(changed):.2f} s "
                  f"({', '.join(f'{s:.2f}' for s in changed)}): {len(diff['readdressed'])} re-addressed, "
                  f"{len(diff['released'])} released, {len(diff['allocated'])} allocated, "
                  f"{len(diff['vips_added'])} VIPs added, {len(diff['vips_withdrawn'])} withdrawn")
        finally:
            lbd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
