"""Start-up cost at scale (issue 9): reading the config and the persisted state.

Run: ``python bench/startup.py [--services 100000] [--runs 3]``.

Generates a config with N ``[[service]]`` tables (name, pool, one port) in a
/15 pool and prints, median of ``--runs``, in one process:

- ``tomllib.loads`` of the file alone (the floor: lbd cannot parse faster);
- ``lbd.config.load_config`` of the same file (read, parse, validate, cross-check);
- their ratio;
- ``StateStore.load`` of a persisted state holding N allocations (one read, one
  ``json.loads``, the checks), and ``StateStore.save`` of it for scale.

A component alone, not the daemon end to end.
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lbd.config import load_config  # noqa: E402
from lbd.model import Allocation  # noqa: E402
from lbd.state import PersistedState, StateStore  # noqa: E402


def config_text(n: int, state_dir: Path) -> str:
    head = (f'[node]\nname = "n1"\nstate_dir = "{state_dir}"\ncontrol_socket = "{state_dir}/lbd.sock"\n'
            '[[pool]]\nname = "routed"\naddresses = ["10.88.0.0/15"]\n')
    return head + "".join(f'[[service]]\nname = "s{i}"\npool = "routed"\nports = ["tcp/443"]\n' for i in range(n))


def timed(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    n = args.services
    with tempfile.TemporaryDirectory(prefix="lbd-bench-startup-") as tmp:
        state_dir = Path(tmp) / "state"
        path = Path(tmp) / "lbd.toml"
        path.write_text(config_text(n, state_dir))
        text = path.read_text()
        toml_s = timed(lambda: tomllib.loads(text), args.runs)
        config_s = timed(lambda: load_config(path), args.runs)
        base = int(ipaddress.IPv4Address("10.88.0.0"))
        allocations = {f"static/s{i}": Allocation(service=f"static/s{i}", pool="routed",
                                                  addresses=(ipaddress.IPv4Address(base + i),))
                       for i in range(n)}
        store = StateStore(state_dir)
        state = PersistedState(allocations=allocations)
        save_s = timed(lambda: store.save(state), args.runs)
        load_s = timed(lambda: store.load(), args.runs)
        assert len(store.load().allocations) == n
        print(f"services={n} runs={args.runs} (median)")
        print(f"tomllib.loads        {toml_s:8.3f} s")
        print(f"lbd load_config      {config_s:8.3f} s")
        print(f"ratio                {config_s / toml_s:8.2f} x tomllib")
        print(f"state load ({n} allocations) {load_s:8.3f} s")
        print(f"state save ({n} allocations) {save_s:8.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
