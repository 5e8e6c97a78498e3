"""Many nodes, simulated: SWIM convergence, failure detection and gossip bandwidth at 200 nodes.

**A component figure, not the daemon end to end**: ``--nodes`` SWIM/Lifeguard cores
(``lbd.cluster.swim.Swim``, the code every lbd node runs) on the deterministic simulated
network ``lbd.testing.cluster_sim.SimNetwork``: one simulated clock, packet delay 0.2-1 ms,
optional random loss. No event loop, no allocation or planning, no node-facts records
(those travel only when a node's holds or failing services change). Each node's gossip
metadata is a realistic lbd node meta (``lbd.cluster.nodemeta``: labels, one interface,
a facts version).

For every timing profile asked (``lan`` is memberlist's DefaultLANConfig exactly, ``default``
is lbd's):

- **convergence**: every node joins through one seed at the same moment; the time until every
  node sees all ``--nodes`` members alive;
- **bandwidth**: over ``--window`` simulated seconds of steady state (nothing changing), the
  bytes each node sends (UDP payloads and TCP push-pull streams, without IP/UDP/TCP headers;
  ``+hdr``: with 28 bytes per UDP packet and 52 per TCP message, an estimate), mean and max
  over the nodes;
- **failure detection**: ``--crashes`` nodes crash one after another (a crashed node sends and
  answers nothing); detection is crash → the first node declaring it dead, convergence is
  crash → every live node holding it dead; median and max over the crashes.

The expected figure for memberlist's LAN profile is computed from its configuration and the
sizes of the messages it would send (encoded by ``lbd.cluster.wire``, byte-compatible with
memberlist 0.2.2): per probe interval (1 s) a node sends one ping and answers on average one
(an ack); gossip (every 200 ms to 3 nodes) sends nothing when no broadcast is queued, so
nothing in steady state; every push-pull interval (30 s, scaled by memberlist's
``pushPullScale``: x4 at 200 nodes, so 120 s) a node sends its full state to one peer and
answers one peer's on average, each a push-pull of ``n`` node entries.

    python bench/cluster_scale.py [--nodes 200] [--profiles lan,default] [--window SECONDS]
        [--crashes 5] [--loss 0.0] [--seed 1]

Needs no root and no network: it is all in one process.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field

import structlog

from lbd.cluster import nodemeta, wire
from lbd.cluster.profiles import Profile, get_profile
from lbd.model import MemberState
from lbd.testing.cluster_sim import SimNetwork

UDP_HEADERS = 28  # IPv4 20 + UDP 8
TCP_MESSAGE_HEADERS = 52  # IPv4 20 + TCP 32 (with timestamps), one segment per message: an estimate
STEP = 0.01  # seconds of simulated time between checks


def lbd_meta(index: int) -> bytes:
    """The gossip metadata of a typical lbd node (labels, one interface, a facts version)."""
    meta = nodemeta.NodeMeta(
        labels={"zone": f"z{index % 3}", "rack": f"r{index % 10}"},
        interfaces={"eth0": (ipaddress.ip_interface(f"10.77.{index // 250}.{index % 250 + 1}/16"),)},
        facts_version=1,
    )
    data, dropped = nodemeta.encode(meta)
    assert not dropped
    return data



@dataclass
class ProfileResult:
    profile: str
    nodes: int
    converge_s: float | None = None
    bytes_mean: float = 0.0
    bytes_max: float = 0.0
    bytes_hdr_mean: float = 0.0
    packets_mean: float = 0.0
    detect: list[float] = field(default_factory=list)
    converge_dead: list[float] = field(default_factory=list)
    missed: int = 0
    wall_s: float = 0.0


def build(n: int, profile: Profile, seed: int, loss: float) -> SimNetwork:
    net = SimNetwork(seed=seed, loss=loss)
    for i in range(n):
        name = f"n{i + 1}"
        net.add(name, profile=profile, index=i + 1, meta=lbd_meta(i))
        # add() numbers addresses 10.77.0.i: more than 254 nodes need their own scheme
        assert i + 1 < 255, "at most 254 simulated nodes"
    return net


def alive_everywhere(net: SimNetwork, n: int) -> bool:
    for node in net.nodes.values():
        if node.up and node.core.counts().get(MemberState.ALIVE, 0) < n:
            return False
    return True


def run_profile(name: str, n: int, window: float, crashes: int, seed: int, loss: float, limit: float) -> ProfileResult:
    wall = time.monotonic()
    profile = get_profile(name)
    result = ProfileResult(name, n)
    net = build(n, profile, seed, loss)
    t0 = net.now
    for i in range(2, n + 1):
        net.join(f"n{i}", ["n1"])
    while net.now - t0 < limit:
        net.run_for(STEP * 10)
        if alive_everywhere(net, n):
            result.converge_s = net.now - t0
            break
    if result.converge_s is None:
        result.wall_s = time.monotonic() - wall
        return result
    # Let the join's broadcasts drain before counting steady state.
    net.run_for(max(5.0, 20 * profile.gossip_interval))
    before = {k: (v.total_bytes, v.udp_packets, v.streams) for k, v in net.sent.items()}
    t_window = net.now
    net.run_for(window)
    span = net.now - t_window
    rates, hdr_rates, pkts = [], [], []
    for node, traffic in net.sent.items():
        b0, p0, s0 = before[node]
        sent = traffic.total_bytes - b0
        packets = traffic.udp_packets - p0
        streams = traffic.streams - s0
        rates.append(sent / span)
        hdr_rates.append((sent + packets * UDP_HEADERS + streams * TCP_MESSAGE_HEADERS) / span)
        pkts.append(packets / span)
    result.bytes_mean, result.bytes_max = statistics.mean(rates), max(rates)
    result.bytes_hdr_mean, result.packets_mean = statistics.mean(hdr_rates), statistics.mean(pkts)
    # Crashes, one after another, each after the cluster has settled again.
    rng = random.Random(seed)
    victims = rng.sample([f"n{i}" for i in range(2, n + 1)], crashes)
    for victim in victims:
        net.crash(victim)
        t_crash = net.now
        first: float | None = None
        while net.now - t_crash < limit:
            net.run_for(STEP)
            views = [net.state_of(o, victim) for o, node in net.nodes.items() if node.up]
            dead = [v for v in views if v in ("dead", "left")]
            if dead and first is None:
                first = net.now - t_crash
            if len(dead) == len(views):
                result.detect.append(first if first is not None else net.now - t_crash)
                result.converge_dead.append(net.now - t_crash)
                break
        else:
            result.missed += 1
        net.run_for(2 * profile.probe_interval)
    result.wall_s = time.monotonic() - wall
    return result


def expected_memberlist_lan(n: int) -> dict[str, float]:
    """memberlist DefaultLANConfig, steady state, bytes a node sends per second (payloads)."""
    lan = get_profile("lan")
    name = f"n{n}"
    ping = len(wire.encode(wire.Ping(12345, "n17", bytes([10, 77, 0, 17]), 7946, name)))
    ack = len(wire.encode(wire.Ack(12345)))
    nodes = tuple(wire.PushNode(f"n{i + 1}", bytes([10, 77, 0, (i % 250) + 1]), 7946, lbd_meta(i), 1, 0)
                  for i in range(n))
    push_pull = len(wire.encode_push_pull(wire.PushPull(False, nodes)))
    pp_interval = lan.push_pull_scale(n)
    probe = (ping + ack) / lan.probe_interval
    pp = 2 * push_pull / pp_interval  # one sent, one answered on average
    return {"ping": ping, "ack": ack, "push_pull": push_pull, "push_pull_interval": pp_interval,
            "probe_Bps": probe, "push_pull_Bps": pp, "total_Bps": probe + pp,
            "total_hdr_Bps": probe + pp + 2 * UDP_HEADERS / lan.probe_interval + 2 * TCP_MESSAGE_HEADERS / pp_interval}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--profiles", default="lan,default")
    ap.add_argument("--window", type=float, help="steady-state seconds (simulated) for bandwidth "
                    "(default: two push-pull intervals of the profile at this size, 240 s for lan at 200 nodes)")
    ap.add_argument("--crashes", type=int, default=5)
    ap.add_argument("--loss", type=float, default=0.0, help="random packet loss, 0..1")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=float, default=120.0, help="simulated seconds allowed to converge or detect")
    args = ap.parse_args(argv)
    # The cores log every failed push-pull and suspicion at info: 200 nodes' worth is noise here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if not 3 <= args.nodes <= 254:
        raise SystemExit("--nodes: 3 to 254")
    started = time.monotonic()
    results = []
    for name in [p for p in args.profiles.split(",") if p]:
        print(f"# {name}: {args.nodes} simulated nodes ...", flush=True)
        window = args.window or 2 * get_profile(name).push_pull_scale(args.nodes)
        r = run_profile(name, args.nodes, window, args.crashes, args.seed, args.loss, args.limit)
        results.append(r)
        print(f"#   done in {r.wall_s:.0f} s of wall time (window {window:.0f} s): {r}", flush=True)
    exp = expected_memberlist_lan(args.nodes)
    print()
    print(f"Simulated cluster (component: SWIM cores on lbd.testing.cluster_sim, no daemon), {args.nodes} nodes, "
          f"loss {args.loss:g}, seed {args.seed}")
    print(f"{'profile':>8} {'join->all alive':>15} {'B/s/node mean':>13} {'max':>7} {'+hdr mean':>9} "
          f"{'pkts/s':>7} {'detect p50':>10} {'max':>6} {'all agree p50':>13} {'max':>6} missed")
    for r in results:
        def pct(xs: list[float], f: str) -> str:
            if not xs:
                return "-"
            return f"{(statistics.median(xs) if f == 'p50' else max(xs)):.2f}s"
        conv = f"{r.converge_s:.2f}s" if r.converge_s is not None else "never"
        print(f"{r.profile:>8} {conv:>15} {r.bytes_mean:>13.0f} {r.bytes_max:>7.0f} {r.bytes_hdr_mean:>9.0f} "
              f"{r.packets_mean:>7.1f} {pct(r.detect, 'p50'):>10} {pct(r.detect, 'max'):>6} "
              f"{pct(r.converge_dead, 'p50'):>13} {pct(r.converge_dead, 'max'):>6} {r.missed}")
    print()
    print(f"memberlist DefaultLANConfig, expected from its config (steady state, {args.nodes} nodes): "
          f"ping {exp['ping']:.0f} B + ack {exp['ack']:.0f} B per 1 s probe = {exp['probe_Bps']:.0f} B/s; "
          f"push-pull {exp['push_pull']:.0f} B every {exp['push_pull_interval']:.0f} s (30 s x pushPullScale), "
          f"sent and answered = {exp['push_pull_Bps']:.0f} B/s; gossip 0 B/s (nothing queued); "
          f"total {exp['total_Bps']:.0f} B/s/node ({exp['total_hdr_Bps']:.0f} with headers)")
    for r in results:
        print(f"  {r.profile}: {r.bytes_mean:.0f} B/s/node simulated = {r.bytes_mean / exp['total_Bps']:.2f}x "
              f"memberlist LAN's expected figure")
    print(f"(took {time.monotonic() - started:.0f} s; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} CPUs; simulated time, so the load does not change the figures, only the wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
