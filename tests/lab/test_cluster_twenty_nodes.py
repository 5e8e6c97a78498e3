"""Twenty lbd nodes on one bridge (issue 9, "Many nodes"): they converge on one owner per
layer-2 VIP, and when one node dies every VIP it held is served by exactly one survivor.

Twenty real daemons (about 60 MiB each) in namespaces, a small VIP count so that they fit a
shared machine; the failover's speed is measured by ``bench/scale.py failover --nodes 20``,
this test asserts the behaviour with generous timeouts.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbd.testing.netlab import Host, Lab, LbdNode, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(240)]

NODES = 20
VIPS = 200
GOSSIP_PORT = 7946
ECHO_PORT = 9999
FIRST_VIP = ipaddress.IPv4Address("10.77.64.0")

# Answers "<node name> <request>" to every datagram (bound to 0.0.0.0: it serves whichever VIP
# the node holds, and answers from the node's own address, so the request names the VIP).
RESPONDER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(256)
    s.sendto(sys.argv[1].encode() + b" " + data, peer)
"""

# Asks each VIP (argv) until one answers, for at most 20 s; prints {vip: node} as JSON.
PROBE = r"""
import json, socket, sys, time
port, vips = int(sys.argv[1]), sys.argv[2:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
out, end = {}, time.monotonic() + 20
while len(out) < len(vips) and time.monotonic() < end:
    for vip in vips:
        if vip not in out:
            s.sendto(vip.encode(), (vip, port))
    try:
        while True:
            node, _, vip = s.recvfrom(256)[0].decode().partition(" ")
            out.setdefault(vip, node)
    except socket.timeout:
        pass
print(json.dumps(out))
"""


def address(i: int) -> str:
    return f"10.77.0.{10 + i}"


def config(name: str, i: int) -> str:
    join = ", ".join(f'"{address(j)}:{GOSSIP_PORT}"' for j in range(1, 4) if j != i)  # three seeds
    last = FIRST_VIP + VIPS - 1
    return (f'[node]\nname = "{name}"\n\n[cluster]\nbind = "{address(i)}:{GOSSIP_PORT}"\njoin = [{join}]\n'
            'failback_delay = 0\nallow_plaintext = true  # lab namespaces: plaintext on purpose\n\n'
            f'[[pool]]\nname = "lan"\naddresses = ["{FIRST_VIP}-{last}"]\n\n'
            '[[l2_advertisement]]\npools = ["lan"]\n\n'
            + "".join(f'[[service]]\nname = "s{k}"\npool = "lan"\n' for k in range(VIPS)))


def bound(host: Host) -> set[str]:
    out = host.run(["ip", "-j", "-4", "addr", "show", "dev", host.ifname], timeout=30).stdout
    net = ipaddress.IPv4Network("10.77.64.0/18")
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])
            if ipaddress.IPv4Address(a["local"]) in net}


def test_twenty_nodes_converge_and_a_dead_nodes_vips_are_served_by_one_survivor(lab: Lab, tmp_path: Path) -> None:
    names = [f"n{i}" for i in range(1, NODES + 1)]
    hosts = {name: lab.add_host(name, [f"{address(i)}/16"]) for i, name in enumerate(names, 1)}
    client = lab.add_host("client", ["10.77.0.250/16"])
    for name, host in hosts.items():
        host.popen([sys.executable, "-c", RESPONDER, name, str(ECHO_PORT)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemons = {name: LbdNode(hosts[name], tmp_path, config(name, i), name=name) for i, name in enumerate(names, 1)}
    try:
        for d in daemons.values():
            d.start(wait=False)
        every = {str(FIRST_VIP + k) for k in range(VIPS)}
        held: dict[str, set[str]] = {}

        def converged() -> bool:
            nonlocal held
            now = {name: bound(host) for name, host in hosts.items()}
            ok = sum(len(v) for v in now.values()) == VIPS and set().union(*now.values()) == every and now == held
            held = now
            return ok

        wait_for(converged, 150, interval=2.0, what="one owner for every VIP, twice in a row")
        assert all(d.running() for d in daemons.values())
        victim = max(held, key=lambda name: len(held[name]))
        moving = held[victim]
        assert moving
        survivors = [name for name in names if name != victim]

        lab.set_link(hosts[victim], up=False)  # a dead host sends nothing, then its daemon dies
        daemons[victim].send_signal(signal.SIGKILL)
        t_fault = time.monotonic()

        def taken_over() -> bool:
            now = {name: bound(hosts[name]) for name in survivors}
            counts = [sum(vip in vips for vips in now.values()) for vip in moving]
            return all(c == 1 for c in counts)

        wait_for(taken_over, 60, interval=0.5, what=f"every VIP of {victim} on exactly one survivor")
        took = time.monotonic() - t_fault
        sample = sorted(moving)[:10]
        out = client.run([sys.executable, "-c", PROBE, str(ECHO_PORT), *sample], timeout=40).stdout
        answered = json.loads(out)
        assert set(answered) == set(sample)
        assert all(node in survivors for node in answered.values())
        print(f"\n20 nodes, {VIPS} VIPs: {victim} held {len(moving)}; all on one survivor within {took:.1f} s "
              f"(polled every 0.5 s); the sample answered from {sorted(set(answered.values()))}")
    finally:
        for d in daemons.values():
            if d.running():
                d.send_signal(signal.SIGTERM)
        for d in daemons.values():
            d.stop(timeout=30)
