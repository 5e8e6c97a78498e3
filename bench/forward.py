"""Forwarding benchmark (issue 14), all in one run, with real lbd processes.

Sections (each in its own ``lbd.testing.forward_lab`` lab: client, lbd nodes, three backends):

1. ``path``: one lbd node, ``forward = "nat"``, then ``"dsr"``. The client uploads for
   ``--seconds`` through the VIP, then straight to a backend from an address
   on the backends' subnet (the same client, the same tool); then opens
   ``--connections`` short connections each way. Reports both and the ratios.
2. ``apply``: lbd's own forwarding code (``lbd.forward.ruleset``,
   ``lbd.forward.transaction`` and ``Forwarder``, what the daemon runs) in a fresh namespace with
   ``--backends`` backends (10,000 by default), twice: in one service with a
   65537-entry table, then spread over ``--services`` services (100) with
   8191-entry tables: the initial load, then one backend failing, coming
   back, and changing weight. Reports for each change the end-to-end time
   (from the change entering the forwarder, i.e. the desired state computed
   from services and health, to the kernel having committed it) and the
   kernel part (libnftables + commit). A failure announced by a first failed
   check (fall = 2, the default) has its table built ahead
   (``ruleset.prefetch``, timed apart as ``prefetch_before_the_failure``); an
   unannounced failure and a weight change (a reload) build it on the way.
   Driven directly rather than through a daemon: 10,000 live health-checked
   backends do not fit this machine.
3. ``failover``: two lbd nodes in a cluster, ``--flows`` long-lived TCP
   connections through the VIP exchanging a line every 0.2 s; the VIP's owner
   crashes (link down, SIGKILL); the share of connections that still work
   afterwards, in ``dsr`` mode and in ``nat`` mode (the backends route the
   client's subnet via the VIP, so replies follow the VIP; see
   docs/forwarding.md for what survives and why).

Usage::

    sudo .venv/bin/python bench/forward.py                      # everything, short
    sudo .venv/bin/python bench/forward.py --sections apply --backends 2000
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lbd.testing.forward_lab import (  # noqa: E402
    BACKENDS, CLIENT_TOOL, backend_entries, build, holds_vip, node_config, vip_holder, wait_healthy,
)
from lbd.testing.netlab import Lab, wait_for  # noqa: E402

TABLE = "\n[forwarding]\ntable_size = 1021\n"


def _client(fl, *args: str, timeout: float = 120) -> dict:  # type: ignore[no-untyped-def]
    out = fl.client.run([sys.executable, "-c", CLIENT_TOOL, *args], timeout=timeout).stdout
    return json.loads(out.splitlines()[-1])


def bench_path(workdir: Path, mode: str, seconds: int, connections: int, rounds: int) -> dict:
    port = 8080 if mode == "nat" else 80
    with Lab() as lab:
        cfg = node_config("n1", backends=backend_entries({"b1": 1}, port), forward=mode, extra=TABLE)
        fl = build(lab, workdir / f"path-{mode}", nodes=("n1",), route="node" if mode == "nat" else "direct",
                   port=port, configs={"n1": cfg})
        fl.client.add_address("10.88.1.50/24")  # the direct path: on the backends' subnet
        wait_healthy(fl.lbd["n1"], 1)
        wait_for(lambda: vip_holder(fl) == "n1", 15, what="n1 to hold the VIP")
        via, direct, rate_via, rate_direct = [], [], [], []
        for _ in range(rounds):  # interleaved, so that load from others hits both alike
            r = _client(fl, "bulk", "10.77.0.100", "80", str(seconds))
            via.append(r["bytes"] * 8 / r["seconds"] / 1e9)
            r = _client(fl, "bulk", BACKENDS["b1"], str(port), str(seconds))
            direct.append(r["bytes"] * 8 / r["seconds"] / 1e9)
            t = time.monotonic()
            r = _client(fl, "spread", "10.77.0.100", "80", str(connections))
            rate_via.append((connections - r["errors"]) / (time.monotonic() - t))
            t = time.monotonic()
            r = _client(fl, "spread", BACKENDS["b1"], str(port), str(connections))
            rate_direct.append((connections - r["errors"]) / (time.monotonic() - t))
        out = {
            "mode": mode,
            "throughput_gbit_via_vip": round(statistics.median(via), 3),
            "throughput_gbit_direct": round(statistics.median(direct), 3),
            "throughput_ratio": round(statistics.median(via) / statistics.median(direct), 3),
            "connections_per_s_via_vip": round(statistics.median(rate_via), 1),
            "connections_per_s_direct": round(statistics.median(rate_direct), 1),
            "connection_rate_ratio": round(statistics.median(rate_via) / statistics.median(rate_direct), 3),
            "samples": {"via": via, "direct": direct, "rate_via": rate_via, "rate_direct": rate_direct},
        }
        fl.lbd["n1"].stop()
        return out


APPLY = r"""
import asyncio, ipaddress, json, sys, time
from dataclasses import replace
from lbd.forward import ruleset, transaction
from lbd.forward.forwarder import Forwarder
from lbd.config.schema import ForwardingConfig
from lbd.model import Allocation, Backend, PortSpec, ServiceSpec
n, services_n, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
per = n // services_n
base = int(ipaddress.IPv4Address("10.88.0.0"))
specs, alloc = {}, {}
for s in range(services_n):
    port = PortSpec("tcp", 80)
    name = f"bench/s{s}"
    specs[name] = ServiceSpec(name=name, ports=(port,), backends=tuple(
        Backend(port, ipaddress.IPv4Address(base + 10 + s * per + i), 8080) for i in range(per)))
    alloc[name] = Allocation(name, "p", (ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.77.0.0")) + 10 + s),))
fwd = ForwardingConfig(seed=1, table_size=size)
ifs = {"eth0": (ipaddress.ip_interface("10.88.0.1/16"),)}
down = set()
def health(s, b):  # what the daemon asks its BackendChecker: a lookup
    return b not in down
versions = dict.fromkeys(specs, 0)  # BackendChecker.version: bumped when a backend of the service flips
target = "bench/s0"
async def main():
    f = Forwarder()
    out = {}
    async def step(label):
        # End to end: from the change entering lbd's forwarder (the desired state computed from
        # services + health) to the kernel having committed it.
        t0 = time.perf_counter()
        d = ruleset.desired(specs, alloc, health, fwd, ifs, previous=f.desired, versions=versions.__getitem__)
        t1 = time.perf_counter()
        before = f.applied
        ops = transaction.plan_transaction(before, d.ruleset)  # only to count; apply plans it again
        t_plan = time.perf_counter()
        await f.apply(d)
        t2 = time.perf_counter()
        kernel = f.last_apply["seconds"]
        out[label] = {"end_to_end_s": round((t2 - t0) - (t_plan - t1), 4), "kernel_s": round(kernel, 4),
                      "desired_s": round(t1 - t0, 4), "commands": len(ops),
                      "elements": sum(len(o.get("add", o.get("delete", {})).get("element", {}).get("elem", []))
                                      for o in ops)}
    await step("initial")
    victim = specs[target].backends[1234 % per]
    # What the daemon does when the victim's first check fails (fall = 2): the table after
    # the flip is built ahead in a worker thread (lbd.forward.prefetch). Timed on its own: it
    # runs an interval before the change, not on the change's way to the kernel.
    t = time.perf_counter()
    built = ruleset.prefetch(f.desired, {target}, lambda s, b: False if b == victim else None)
    out["prefetch_before_the_failure"] = {"seconds": round(time.perf_counter() - t, 4), "tables": sum(built.values())}
    down.add(victim); versions[target] += 1; await step("one_backend_fails")
    down.clear(); versions[target] += 1; await step("it_comes_back")
    # A failure nobody saw coming (fall = 1, or several backends at once): no table ahead.
    down.add(specs[target].backends[4321 % per]); versions[target] += 1; await step("unannounced_failure")
    down.clear(); versions[target] += 1; await step("it_comes_back_too")
    specs[target] = replace(specs[target], backends=tuple(
        b if i != 77 % per else replace(b, weight=3) for i, b in enumerate(specs[target].backends)))
    await step("weight_change")
    await f.close()
    print(json.dumps(out))
asyncio.run(main())
"""


def bench_apply(n: int, services: int, size: int) -> dict:
    with Lab() as lab:
        host = lab.add_host("lb", ["10.88.0.1/16"])
        result = host.run([sys.executable, "-c", APPLY, str(n), str(services), str(size)], timeout=600, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"apply benchmark failed: {result.stderr[-2000:]}")
        return {"backends": n, "services": services, "table_size": size,
                **json.loads(result.stdout.splitlines()[-1])}


def bench_failover(workdir: Path, mode: str, flows: int) -> dict:
    nodes = ("n1", "n2")
    with Lab() as lab:
        port = 80 if mode == "dsr" else 8080
        backends = backend_entries({"b1": 1, "b2": 1, "b3": 1}, port)
        configs = {n: node_config(n, backends=backends, forward=mode, cluster=nodes, extra=TABLE) for n in nodes}
        fl = build(lab, workdir / f"failover-{mode}", nodes=nodes, route="direct" if mode == "dsr" else "vip",
                   port=port, configs=configs)
        for n in nodes:
            wait_healthy(fl.lbd[n], 3)
        owner = wait_for(lambda: vip_holder(fl), 20, what="a node to hold the VIP")
        other = next(n for n in nodes if n != owner)
        hold = fl.hold(flows, 8.0)
        assert hold.stdout is not None
        json.loads(hold.stdout.readline())
        time.sleep(2.0)
        t = time.monotonic()
        fl.lab.set_link(fl.nodes[owner], False)
        fl.lbd[owner].stop(sig=signal.SIGKILL)
        wait_for(lambda: holds_vip(fl.nodes[other]), 15, interval=0.05, what=f"{other} to take the VIP")
        took = time.monotonic() - t
        out, _ = hold.communicate(timeout=60)
        final = json.loads(out.splitlines()[-1])
        survived = sum(1 for f in final["failed"] if f is None)
        fl.lbd[other].stop()
        return {"mode": mode, "flows": flows, "survived": survived, "share": round(survived / flows, 4),
                "vip_moved_s": round(took, 2), "failures": sorted({str(f)[:60] for f in final["failed"] if f})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="path,apply,failover")
    parser.add_argument("--seconds", type=int, default=3, help="each bulk upload")
    parser.add_argument("--connections", type=int, default=300, help="short connections per rate sample")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", type=int, default=10000)
    parser.add_argument("--table-size", type=int, default=65537, help="apply: one service of --backends")
    parser.add_argument("--services", type=int, default=100, help="apply: then --backends over this many services")
    parser.add_argument("--small-table-size", type=int, default=8191, help="... each with a table of this size")
    parser.add_argument("--flows", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sections = args.sections.split(",")
    results: dict[str, object] = {"machine": "shared, loaded VM (2 cores, 8 engineers)"}
    with tempfile.TemporaryDirectory(prefix="lbd-bench-forward-") as tmp:
        workdir = Path(tmp)
        if "path" in sections:
            results["path"] = [bench_path(workdir, mode, args.seconds, args.connections, args.rounds)
                               for mode in ("nat", "dsr")]
            print(json.dumps({"path": results["path"]}), flush=True)
        if "apply" in sections:
            results["apply"] = [bench_apply(args.backends, 1, args.table_size),
                                bench_apply(args.backends, args.services, args.small_table_size)]
            print(json.dumps({"apply": results["apply"]}), flush=True)
        if "failover" in sections:
            results["failover"] = [bench_failover(workdir, mode, args.flows) for mode in ("dsr", "nat")]
            print(json.dumps({"failover": results["failover"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
