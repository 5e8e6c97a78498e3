"""Live mode's decision step, component only: N MetalLB IPAddressPools (each with an
L2Advertisement) from the cluster converted, merged into a file and validated as one
(``cluster_document`` + ``merged_config``), and the same with one overlapping pool added
(rejected, then ``attribute`` finds the resource to post the Event on). This is what the
daemon does on every change of the cluster's MetalLB resources before the reload path
(diff, refusal, apply), which ``bench/plan.py`` measures.

Run: ``python bench/metallb_live.py [--sizes 10,100,1000] [--runs 5]`` (no root, no lab).
Prints the median and max per size. Anchor, same run: ``parse_config`` of the same tables
written in the file (what a file reload of the same config costs to validate).
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lbd.config import ConfigError, parse_config  # noqa: E402
from lbd.liveconfig import merged_config  # noqa: E402
from lbd.metallb.live import attribute, changed_resources, cluster_document  # noqa: E402

FILE = '[node]\nname = "n1"\n[[source]]\ntype = "kubernetes"\nname = "k8s"\nmetallb_resources = true\n'
PATH = Path("/etc/lbd.toml")


def resources(n: int) -> list[dict]:
    out = []
    for i in range(n):
        net = ipaddress.ip_network(f"10.{77 + i // 4096}.{(i // 16) % 256}.{(i % 16) * 16}/28")
        meta = {"namespace": "metallb-system", "uid": f"u{i}", "resourceVersion": str(i + 1)}
        out.append({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                    "metadata": {"name": f"pool-{i}", **meta}, "spec": {"addresses": [str(net)]}})
        out.append({"apiVersion": "metallb.io/v1beta1", "kind": "L2Advertisement",
                    "metadata": {"name": f"l2-{i}", **meta, "uid": f"l{i}"}, "spec": {"ipAddressPools": [f"pool-{i}"]}})
    return out


def as_toml(n: int) -> str:
    lines = [FILE]
    for i in range(n):
        net = ipaddress.ip_network(f"10.{77 + i // 4096}.{(i // 16) % 256}.{(i % 16) * 16}/28")
        lines.append(f'[[pool]]\nname = "pool-{i}"\naddresses = ["{net}"]\n'
                     f'[[l2_advertisement]]\nname = "l2-{i}"\npools = ["pool-{i}"]\n')
    return "".join(lines)


def timed(fn, runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), max(samples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10,100,1000")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    print(f"{'pools':>6} {'valid: convert+merge+check':>28} {'invalid: +attribute':>22} {'anchor: parse_config':>22}")
    for n in (int(x) for x in args.sizes.split(",")):
        objs = resources(n)
        bad = [*objs, {"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                       "metadata": {"name": "dup", "namespace": "metallb-system", "uid": "dup", "resourceVersion": "x"},
                       "spec": {"addresses": ["10.77.0.0/30"]}}]
        before = cluster_document("k8s", objs, "metallb-system")

        def valid() -> None:
            merged_config(FILE, PATH, [cluster_document("k8s", objs, "metallb-system")])

        def invalid() -> None:
            doc = cluster_document("k8s", bad, "metallb-system")
            try:
                merged_config(FILE, PATH, [doc])
            except ConfigError as exc:
                found = attribute(exc.errors, [doc], changed_resources([before], [doc]))
                assert [r.name for r in found] == ["dup"], found
            else:
                raise AssertionError("the overlap was not rejected")

        text = as_toml(n)
        v, i, a = timed(valid, args.runs), timed(invalid, args.runs), timed(lambda: parse_config(text, PATH), args.runs)
        fmt = lambda m: f"{m[0] * 1000:9.1f} ms (max {m[1] * 1000:.1f})"  # noqa: E731
        print(f"{n:>6} {fmt(v):>28} {fmt(i):>22} {fmt(a):>22}")


if __name__ == "__main__":
    main()
