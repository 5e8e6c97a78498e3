"""A three-node lbd cluster plus a client in network namespaces (issue 5's lab cases).

Each node runs the real daemon with the ``default`` timing profile and a UDP
responder bound to 0.0.0.0 that answers with the node's name, so the client
can tell who serves a VIP. Assertions are about behaviour, with generous
timeouts; the times seen (failover, handover gaps) are printed for the report,
never asserted tightly (speeds belong in bench/failover.py).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lbd.testing.netlab import Host, Lab, LbdNode, require_binary, wait_for

# Each test is bounded: a few cluster starts, waits of at most tens of seconds.
pytestmark = [pytest.mark.lab, pytest.mark.timeout(150)]

GOSSIP_PORT = 7946
ECHO_PORT = 9999
NODES = ("n1", "n2", "n3")
ADDR = {"n1": "10.77.0.11", "n2": "10.77.0.12", "n3": "10.77.0.13"}
CLIENT = "10.77.0.3"
POOL = ["10.77.0.100-10.77.0.119"]

# Answers "<node name> <request>" to every datagram; bound to 0.0.0.0 so it
# serves whichever VIP the node holds.
RESPONDER = r"""
import socket, sys
name = sys.argv[1].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(256)
    s.sendto(name + b" " + data, peer)
"""

# Probes a VIP every ``interval`` seconds for ``duration`` seconds; prints the
# answers as JSON: [[wall-clock time, node name], ...]. The socket is not
# connected: replies come from the node's own address (the responder is bound
# to 0.0.0.0), and the request carries a sequence number to match them.
PROBE = r"""
import json, select, socket, sys, time
vip, port, duration, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
answers, seq, end = [], 0, time.monotonic() + duration
next_send = time.monotonic()
while time.monotonic() < end:
    now = time.monotonic()
    if now >= next_send:
        seq += 1
        try:
            s.sendto(str(seq).encode(), (vip, port))
        except OSError:
            pass
        next_send = now + interval
    ready, _, _ = select.select([s], [], [], max(0.0, min(next_send, end) - time.monotonic()))
    while ready:
        try:
            data, _ = s.recvfrom(256)
        except BlockingIOError:
            break
        answers.append([time.time(), data.split()[0].decode()])
print(json.dumps({"sent": seq, "answers": answers}))
"""


def node_config(name: str, services: list[str], *, failback: str = "30", cluster_extra: str = "",
                extra: str = "", announce_interval: str | None = None) -> str:
    join = ", ".join(f'"{ADDR[n]}:{GOSSIP_PORT}"' for n in NODES)
    text = f"""
[node]
name = "{name}"

[cluster]
bind = "{ADDR[name]}:{GOSSIP_PORT}"
join = [{join}]
profile = "default"
failback_delay = {failback}
{cluster_extra or "allow_plaintext = true  # lab namespaces: plaintext on purpose"}

[metrics]
listen = "127.0.0.1:9120"

[[pool]]
name = "p"
addresses = {json.dumps(POOL)}

[[l2_advertisement]]
pools = ["p"]
"""
    if announce_interval is not None:
        text += f"announce_interval = {announce_interval}\n"
    for service in services:
        text += f'\n[[service]]\nname = "{service}"\n'
    return text + extra


@dataclass
class Cluster:
    lab: Lab
    hosts: dict[str, Host]
    nodes: dict[str, LbdNode]
    client: Host
    services: list[str]

    def by_mac(self, mac: str) -> str | None:
        return next((n for n, h in self.hosts.items() if h.mac == mac), None)


def start_cluster(lab: Lab, tmp_path: Path, services: list[str], names: tuple[str, ...] = NODES,
                  converge: bool = True, **kw: object) -> Cluster:
    hosts = {n: lab.add_host(n, [f"{ADDR[n]}/24"]) for n in NODES}
    client = lab.add_host("client", [f"{CLIENT}/24"])
    for n, host in hosts.items():
        host.popen([sys.executable, "-c", RESPONDER, n, str(ECHO_PORT)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodes = {n: LbdNode(hosts[n], tmp_path, node_config(n, services, **kw), name=n) for n in NODES}  # type: ignore[arg-type]
    cluster = Cluster(lab, hosts, nodes, client, services)
    for n in names:
        nodes[n].start(wait=False)
    for n in names:
        wait_for(lambda: nodes[n].ctl_ok("status"), 20, what=f"lbd on {n} to answer")
    if converge:
        wait_for(lambda: agreement(cluster, names), 20, interval=0.2, what="every node to agree on every owner")
    return cluster


def owners_seen(node: LbdNode) -> dict[str, tuple[tuple[str, ...], str | None]]:
    return {row["name"]: (tuple(row["addresses"]), row["owner"]) for row in node.status()["services"]}


def agreement(cluster: Cluster, names: tuple[str, ...] = NODES,
              services: list[str] | None = None) -> dict[str, tuple[tuple[str, ...], str]] | None:
    """service -> (addresses, owner) when every named node sees the same, all allocated and owned."""
    wanted = [f"static/{s}" for s in (services if services is not None else cluster.services)]
    views = [owners_seen(cluster.nodes[n]) for n in names]
    first = views[0]
    if any(view != first for view in views[1:]):
        return None
    if any(s not in first or not first[s][0] or first[s][1] not in names for s in wanted):
        return None
    # The owner really announces it (bound on its interface).
    for s in wanted:
        addresses, owner = first[s]
        if not set(addresses) <= addresses_on(cluster.hosts[owner]):  # type: ignore[index]
            return None
    return {s: first[s] for s in wanted}  # type: ignore[misc]


def addresses_on(host: Host) -> set[str]:
    out = host.run(["ip", "-j", "addr", "show", "dev", host.ifname]).stdout
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])}


def vip_holders(cluster: Cluster, vip: str, names: tuple[str, ...] = NODES) -> list[str]:
    return [n for n in names if vip in addresses_on(cluster.hosts[n])]


def neigh_mac(client: Host, vip: str) -> str | None:
    out = json.loads(client.run(["ip", "-j", "neigh", "show", vip, "dev", client.ifname]).stdout or "[]")
    for entry in out:
        if entry.get("lladdr") and entry.get("state", [""])[0] not in ("FAILED", "INCOMPLETE"):
            return entry["lladdr"]
    return None


def ask(client: Host, vip: str, duration: float = 0.6) -> str | None:
    """The name of the node answering on ``vip`` now (the last answer of a short probe), or None."""
    answers = run_probe(client, vip, duration, 0.1)["answers"]
    return answers[-1][1] if answers else None


def run_probe(client: Host, vip: str, duration: float, interval: float) -> dict:
    out = client.run([sys.executable, "-c", PROBE, vip, str(ECHO_PORT), str(duration), str(interval)],
                     timeout=duration + 20).stdout
    return json.loads(out)


def start_probe(client: Host, vip: str, duration: float, interval: float = 0.005) -> subprocess.Popen[bytes]:
    return client.popen([sys.executable, "-c", PROBE, vip, str(ECHO_PORT), str(duration), str(interval)],
                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def probe_result(proc: subprocess.Popen[bytes], timeout: float = 30) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out)


def max_gap(answers: list[list], start: float, end: float) -> float:
    times = [start] + [t for t, _ in answers if start <= t <= end] + [end]
    return max(b - a for a, b in zip(times, times[1:]))


def log_events(node: LbdNode, event: str) -> list[dict]:
    out = []
    for line in node.log().splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def metric(node: LbdNode, name: str) -> float:
    text = node.host.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:9120/metrics"]).stdout
    total = 0.0
    for line in text.splitlines():
        found = re.match(rf"^{re.escape(name)}(?:_total)?(?:{{[^}}]*}})? ([0-9.e+-]+)$", line)
        if found:
            total += float(found.group(1))
    return total


def nft(host: Host, script: str) -> None:
    host.run(["nft", "-f", "-"], input=script)


def stop_all(cluster: Cluster) -> None:
    for node in cluster.nodes.values():
        if node.running():
            node.stop()
    for name, node in cluster.nodes.items():
        log = node.log()
        assert "Traceback" not in log, f"{name} logged a traceback:\n{log[-4000:]}"


def report(what: str, **figures: object) -> None:
    print(f"[cluster-lab] {what}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


SIX = [f"s{i}" for i in range(6)]


# -- 1. spread and agreement ----------------------------------------------------

def test_vips_spread_and_every_node_agrees(lab, tmp_path):
    cluster = start_cluster(lab, tmp_path, SIX)
    try:
        seen = agreement(cluster)
        assert seen is not None
        owners = {owner for _, owner in seen.values()}
        assert len(owners) > 1, f"every VIP on one node: {seen}"
        addresses = [a for addrs, _ in seen.values() for a in addrs]
        assert len(addresses) == len(set(addresses)) == len(SIX)
        for name, host in cluster.hosts.items():
            mine = {a for addrs, owner in seen.values() if owner == name for a in addrs}
            others = {a for addrs, owner in seen.values() if owner != name for a in addrs}
            held = addresses_on(host)
            assert mine <= held and not others & held, (name, held, seen)
        # One table everywhere, persisted on every node.
        def persisted(node: LbdNode) -> tuple[dict, dict]:
            doc = json.loads((node.state_dir / "allocations.json").read_text())
            table = {e["s"]: (e["a"], e["c"], e["u"], e["o"]) for e in doc["extra"]["cluster_table"]["e"]}
            return doc["allocations"], table
        wait_for(lambda: len({json.dumps(persisted(n), sort_keys=True) for n in cluster.nodes.values()}) == 1, 10,
                 what="the same persisted table on every node")
        allocations, _ = persisted(cluster.nodes["n1"])
        assert {k: tuple(v["addresses"]) if isinstance(v, dict) else tuple(v) for k, v in allocations.items()} \
            == {s: addrs for s, (addrs, _) in seen.items()}
        # The client reaches each VIP at its owner.
        for s, (addrs, owner) in seen.items():
            assert wait_for(lambda: ask(cluster.client, addrs[0]) == owner, 10, what=f"{owner} to answer on {addrs[0]}")
            assert neigh_mac(cluster.client, addrs[0]) == cluster.hosts[owner].mac
        members = cluster.nodes["n2"].ctl("members").stdout
        assert all(re.search(rf"^{n}\s+{ADDR[n]}:7946\s+alive", members, re.M) for n in NODES), members
    finally:
        stop_all(cluster)


# -- 2. a dead host ------------------------------------------------------------

def test_crashed_owner_vips_move_and_client_follows(lab, tmp_path):
    cluster = start_cluster(lab, tmp_path, SIX)
    try:
        seen = agreement(cluster)
        assert seen is not None
        vip_owner = {addrs[0]: owner for addrs, owner in seen.values()}
        # The allocator (n1, the lowest name) when it owns a VIP, so the allocator changes too.
        victim = "n1" if "n1" in vip_owner.values() else seen["static/s0"][1]
        lost = [vip for vip, owner in vip_owner.items() if owner == victim]
        survivors = tuple(n for n in NODES if n != victim)
        vip = lost[0]
        assert wait_for(lambda: ask(cluster.client, vip) == victim, 10, what=f"{victim} to answer")
        probe = start_probe(cluster.client, vip, duration=6.0, interval=0.01)
        time.sleep(1.0)
        killed_at = time.time()
        cluster.nodes[victim].stop(sig=signal.SIGKILL)
        cluster.lab.set_link(cluster.hosts[victim], up=False)
        result = probe_result(probe)
        after = [(t, who) for t, who in result["answers"] if t > killed_at and who != victim]
        assert after, f"no other node answered on {vip} within 5 s of the crash: {result['answers'][-5:]}"
        report("crash failover seen by the client", vip=vip, seconds=round(after[0][0] - killed_at, 3))
        new_owner = after[-1][1]
        assert new_owner in survivors
        assert neigh_mac(cluster.client, vip) == cluster.hosts[new_owner].mac
        # Every VIP the dead host held moved, and the survivors agree.
        moved = wait_for(lambda: agreement(cluster, survivors), 10, what="survivors to agree")
        for s, (addrs, owner) in moved.items():
            assert addrs == seen[s][0], "a failover changed an allocation"
            assert owner in survivors
            assert wait_for(lambda: ask(cluster.client, addrs[0]) == owner, 10, what=f"{owner} to answer on {addrs[0]}")
        # One info summary per pass names the first changes (all of them here: a handful of VIPs).
        summaries = [e for n in survivors for e in log_events(cluster.nodes[n], "vip_owners_changed")]
        changes = [c for e in summaries for c in e["first"]]
        assert all(len(e["first"]) == e["failover"] + e["move"] for e in summaries)
        assert {e["vip"] for e in changes if e["kind"] == "failover"} == set(lost)
        # The next allocator (lowest surviving name) allocates a new service and moves none.
        for n in survivors:
            reload_with(cluster.nodes[n], SIX + ["late"])
        grown = wait_for(lambda: agreement(cluster, survivors, SIX + ["late"]), 15, what="late allocated")
        assert {s: a for s, (a, _) in grown.items() if s != "static/late"} == {s: a for s, (a, _) in seen.items()}
        assert grown["static/late"][0][0] not in {a for addrs, _ in seen.values() for a in addrs}
    finally:
        stop_all(cluster)


# -- 3. graceful handover: SIGTERM, drain, undrain -------------------------------

class ArpWatch:
    """Samples the client's neighbour entry for ``vip`` and which nodes hold it, until stopped.

    A violation is a sample where the entry points at a node that held the
    address neither in a read taken just before the neighbour read nor in one
    just after (so a takeover or a release between the reads is not mistaken
    for one).
    """

    def __init__(self, cluster: Cluster, vip: str) -> None:
        self.cluster, self.vip = cluster, vip
        self.macs = {h.mac: n for n, h in cluster.hosts.items()}
        self.violations: list[tuple[float, str, list[str]]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ArpWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            before = self._holders()
            mac = neigh_mac(self.cluster.client, self.vip)
            after = self._holders()
            self.samples += 1
            node = self.macs.get(mac) if mac is not None else None
            if mac is not None and node not in before and node not in after:
                self.violations.append((time.time(), str(node), before, after))
            time.sleep(0.02)

    def _holders(self) -> list[str]:
        return [n for n, h in self.cluster.hosts.items() if self.cluster.nodes[n].running() and self.vip in addresses_on(h)]


def test_graceful_stop_hands_over_before_release(lab, tmp_path):
    cluster = start_cluster(lab, tmp_path, SIX)
    try:
        seen = agreement(cluster)
        assert seen is not None
        addrs, leaver = seen["static/s1"]
        vip = addrs[0]
        assert wait_for(lambda: ask(cluster.client, vip) == leaver, 10, what=f"{leaver} to answer")
        with ArpWatch(cluster, vip) as watch:
            probe = start_probe(cluster.client, vip, duration=5.0, interval=0.005)
            time.sleep(1.0)
            stopped_at = time.time()
            assert cluster.nodes[leaver].stop(sig=signal.SIGTERM) == 0
            stopped = time.time()
            result = probe_result(probe)
        gap = max_gap(result["answers"], stopped_at - 0.5, stopped + 1.0)
        takers = [(t, who) for t, who in result["answers"] if who != leaver]
        assert takers, "nobody served the VIP after the graceful stop"
        report("graceful stop", vip=vip, longest_gap_s=round(gap, 3), stop_took_s=round(stopped - stopped_at, 3),
               arp_samples=watch.samples)
        assert gap < 3.0, f"the client went {gap:.2f}s without an answer"
        assert not watch.violations, f"the client's ARP entry pointed at a node without {vip}: {watch.violations[:5]}"
        survivors = tuple(n for n in NODES if n != leaver)
        moved = wait_for(lambda: agreement(cluster, survivors), 10, what="survivors to agree")
        assert {s: a for s, (a, _) in moved.items()} == {s: a for s, (a, _) in seen.items()}
        every_vip = {a for addrs, _ in seen.values() for a in addrs}
        assert not every_vip & addresses_on(cluster.hosts[leaver]), "the stopped node kept a VIP"
        handing = log_events(cluster.nodes[leaver], "handing_over")
        assert handing and not log_events(cluster.nodes[leaver], "handover_incomplete")
    finally:
        stop_all(cluster)


def test_drain_moves_every_vip_and_undrain_takes_them_back(lab, tmp_path):
    cluster = start_cluster(lab, tmp_path, SIX, failback="0")
    try:
        seen = agreement(cluster)
        assert seen is not None
        target = seen["static/s2"][1]
        node = cluster.nodes[target]
        mine = sorted(a for addrs, owner in seen.values() if owner == target for a in addrs)
        with ArpWatch(cluster, mine[0]) as watch:
            probe = start_probe(cluster.client, mine[0], duration=4.0, interval=0.005)
            time.sleep(1.0)
            t0 = time.time()
            answer = node.ctl("drain").stdout
            t1 = time.time()
            result = probe_result(probe)
        assert "every VIP handed over" in answer, answer
        report("drain", vips=len(mine), took_s=round(t1 - t0, 3),
               longest_gap_s=round(max_gap(result["answers"], t0 - 0.5, t1 + 1.0), 3))
        assert not watch.violations, watch.violations[:5]
        assert not set(mine) & addresses_on(cluster.hosts[target])
        drained = wait_for(lambda: agreement(cluster), 10, what="agreement after drain")
        assert target not in {owner for _, owner in drained.values()}
        assert {s: a for s, (a, _) in drained.items()} == {s: a for s, (a, _) in seen.items()}
        assert re.search(rf"^{target}\s.*\byes$", cluster.nodes["n1" if target != "n1" else "n2"].ctl("members").stdout,
                         re.M)
        assert "undrained" in node.ctl("undrain").stdout
        # failback_delay = 0: it takes its VIPs back at once (make-before-break again).
        back = wait_for(lambda: (a := agreement(cluster)) and a == seen and a, 15, what="VIPs back on undrain")
        assert back == seen
    finally:
        stop_all(cluster)


# -- 4. partition and heal -----------------------------------------------------

def isolate(host: Host) -> None:
    """Drop gossip (UDP and TCP, port 7946, either direction) on ``host``."""
    nft(host, f"""
table inet lbdpart {{
  chain in {{ type filter hook input priority 0; meta l4proto {{ tcp, udp }} th dport {GOSSIP_PORT} drop;
             meta l4proto {{ tcp, udp }} th sport {GOSSIP_PORT} drop; }}
  chain out {{ type filter hook output priority 0; meta l4proto {{ tcp, udp }} th dport {GOSSIP_PORT} drop;
              meta l4proto {{ tcp, udp }} th sport {GOSSIP_PORT} drop; }}
}}
""")


def heal(host: Host) -> None:
    host.run(["nft", "delete", "table", "inet", "lbdpart"])


def reload_with(node: LbdNode, services: list[str], **kw: object) -> None:
    node.write_config(node_config(node.name, services, **kw))  # type: ignore[arg-type]
    node.ctl("reload")


def allocated(node: LbdNode, service: str) -> str | None:
    row = owners_seen(node).get(f"static/{service}")
    return row[0][0] if row and row[0] else None


def members_alive(node: LbdNode) -> set[str]:
    return {m["name"] for m in json.loads(node.ctl("--json", "members").stdout) if m["state"] == "alive"}


@pytest.mark.slow
def test_partition_both_sides_announce_then_heal_keeps_one_owner(lab, tmp_path):
    require_binary("nft", "curl")
    cluster = start_cluster(lab, tmp_path, SIX)
    try:
        seen = agreement(cluster)
        assert seen is not None
        vips = sorted(addrs[0] for addrs, _ in seen.values())
        for vip in vips:  # the client has a neighbour entry for every VIP
            assert wait_for(lambda: ask(cluster.client, vip), 10, what=f"an answer on {vip}")
        lone, pair = "n3", ("n1", "n2")
        isolate(cluster.hosts[lone])
        t0 = time.monotonic()
        # Both sides announce every VIP: the lone node all of them, the pair each one once.
        wait_for(lambda: set(vips) <= addresses_on(cluster.hosts[lone]), 15, what=f"{lone} to announce every VIP")
        wait_for(lambda: all(len(vip_holders(cluster, v, pair)) == 1 for v in vips), 15,
                 what="the pair to announce every VIP once")
        report("partition: both sides announce", seconds=round(time.monotonic() - t0, 3))

        # Each side adds a service and its allocator gives it the same (lowest free) address;
        # the pair's one is older.
        for n in pair:
            reload_with(cluster.nodes[n], SIX + ["new-a"])
        x = wait_for(lambda: allocated(cluster.nodes["n1"], "new-a"), 10, what="new-a allocated by n1")
        time.sleep(0.1)
        reload_with(cluster.nodes[lone], SIX + ["new-b"])
        assert wait_for(lambda: allocated(cluster.nodes[lone], "new-b"), 10, what="new-b allocated by n3") == x
        before_conflicts = sum(metric(cluster.nodes[n], "lbd_allocation_conflicts_resolved") for n in NODES)

        # Outlast memberlist's gossip_to_the_dead_time (10 s in the default profile): only a
        # reconnect brings the two sides together after that.
        time.sleep(max(0.0, 11.0 - (time.monotonic() - t0)))
        heal(cluster.hosts[lone])
        healed_at = time.monotonic()
        wait_for(lambda: all(members_alive(cluster.nodes[n]) == set(NODES) for n in NODES), 20, interval=0.2,
                 what="the cluster to re-form after heal")
        report("partition healed: members alive again", seconds=round(time.monotonic() - healed_at, 3))
        every = SIX + ["new-a", "new-b"]
        for node in cluster.nodes.values():
            reload_with(node, every)
        final = wait_for(lambda: agreement(cluster, services=every), 30, interval=0.2,
                         what="one owner per VIP after heal")
        report("partition healed: one owner per VIP", seconds=round(time.monotonic() - healed_at, 3))
        for s in SIX:
            assert final[f"static/{s}"][0] == seen[f"static/{s}"][0], f"{s} moved across the partition"
        assert final["static/new-a"][0] == (x,), "the older allocation must keep the address"
        assert final["static/new-b"][0] != (x,) and final["static/new-b"][0]
        for addrs, owner in final.values():
            assert vip_holders(cluster, addrs[0]) == [owner], (addrs, owner)
        # The client re-learns every VIP at its owner (the winner re-announces when the other
        # holder lets go), without having to send anything first, and well before the next
        # periodic announcement (10 s).
        for s in SIX:
            addrs, owner = final[f"static/{s}"]
            wait_for(lambda: neigh_mac(cluster.client, addrs[0]) == cluster.hosts[owner].mac, 5,
                     what=f"client to re-learn {addrs[0]} at {owner}")
        report("partition healed: client neighbour entries at the owners",
               seconds=round(time.monotonic() - healed_at, 3))
        for addrs, owner in final.values():
            assert wait_for(lambda: ask(cluster.client, addrs[0]) == owner, 10, what=f"{owner} to answer")
        after_conflicts = sum(metric(cluster.nodes[n], "lbd_allocation_conflicts_resolved") for n in NODES)
        assert after_conflicts > before_conflicts
        notes = [e for n in NODES for e in log_events(cluster.nodes[n], "allocation_note")]
        assert any(x in e["detail"] and "new-b" in e["detail"] for e in notes), notes
    finally:
        stop_all(cluster)


# -- 5. lossy gossip -----------------------------------------------------------

LOSS_SECONDS = 30


@pytest.mark.slow
def test_twenty_percent_gossip_loss_causes_no_failover(lab, tmp_path):
    require_binary("nft", "curl")
    cluster = start_cluster(lab, tmp_path, SIX)
    try:
        seen = agreement(cluster)
        assert seen is not None
        changes_before = {n: metric(node, "lbd_vip_owner_changes") for n, node in cluster.nodes.items()}
        logged_before = {n: len(log_events(node, "vip_owners_changed")) for n, node in cluster.nodes.items()}
        for host in cluster.hosts.values():
            nft(host, f"""
table inet lbdloss {{
  chain in {{ type filter hook input priority 0;
             meta l4proto {{ tcp, udp }} th dport {GOSSIP_PORT} numgen random mod 100 < 20 drop; }}
}}
""")
        deadline = time.monotonic() + LOSS_SECONDS
        while time.monotonic() < deadline:
            assert agreement(cluster) == seen
            time.sleep(2.0)
        for host in cluster.hosts.values():
            host.run(["nft", "delete", "table", "inet", "lbdloss"])
        assert agreement(cluster) == seen
        for n, node in cluster.nodes.items():
            assert metric(node, "lbd_vip_owner_changes") == changes_before[n]
            assert len(log_events(node, "vip_owners_changed")) == logged_before[n]
        suspicions = sum(metric(node, "lbd_gossip_suspicions") for node in cluster.nodes.values())
        refutes = sum(metric(node, "lbd_gossip_refutes") for node in cluster.nodes.values())
        report("20% loss", seconds=LOSS_SECONDS, suspicions=suspicions, refutes=refutes)
    finally:
        stop_all(cluster)


# -- 6. encryption -------------------------------------------------------------

@pytest.mark.parametrize("intruder", ["wrong-key", "plaintext"])
def test_encrypted_cluster_keeps_out_a_wrong_key(lab, tmp_path, intruder):
    lbd_bin = Path(sys.executable).parent / "lbd"
    good = subprocess.run([str(lbd_bin), "keygen"], capture_output=True, text=True, check=True).stdout.strip()
    bad = subprocess.run([str(lbd_bin), "keygen"], capture_output=True, text=True, check=True).stdout.strip()
    assert good != bad
    (tmp_path / "good.json").write_text(json.dumps([good]))
    (tmp_path / "bad.json").write_text(json.dumps([bad]))
    pair = ("n1", "n2")
    hosts = {n: lab.add_host(n, [f"{ADDR[n]}/24"]) for n in NODES}
    client = lab.add_host("client", [f"{CLIENT}/24"])
    nodes = {
        n: LbdNode(hosts[n], tmp_path, node_config(
            n, SIX, cluster_extra="" if (n == "n3" and intruder == "plaintext") else
            f'keys_file = "{tmp_path / ("bad.json" if n == "n3" else "good.json")}"'), name=n)
        for n in NODES
    }
    cluster = Cluster(lab, hosts, nodes, client, SIX)
    try:
        for node in nodes.values():
            node.start(wait=False)
        for node in nodes.values():
            wait_for(lambda: node.ctl_ok("status"), 20, what=f"lbd on {node.name}")
        seen = wait_for(lambda: agreement(cluster, pair), 20, interval=0.2, what="the pair to form")
        assert {owner for _, owner in seen.values()} == set(pair)
        taken = {a for addrs, _ in seen.values() for a in addrs}
        deadline = time.monotonic() + 6.0  # longer than a lone node's initial join wait
        while time.monotonic() < deadline:
            for n in pair:
                names = {m["name"] for m in json.loads(nodes[n].ctl("--json", "members").stdout)}
                assert "n3" not in names
            assert not taken & addresses_on(hosts["n3"]), "the node with the wrong key announces the cluster's VIPs"
            time.sleep(0.5)
        assert agreement(cluster, pair) == seen
        assert log_events(nodes["n3"], "cluster_key_mismatch")
        assert all(row["state"] == "pending" for row in nodes["n3"].status()["services"])
        assert metric(nodes["n1"], "lbd_gossip_decrypt_failures") + metric(nodes["n2"], "lbd_gossip_decrypt_failures") > 0
    finally:
        stop_all(cluster)


# -- 7. restarts ---------------------------------------------------------------

def test_lone_restart_serves_the_persisted_table(lab, tmp_path):
    cluster = start_cluster(lab, tmp_path, SIX)
    try:
        seen = agreement(cluster)
        assert seen is not None
        for node in cluster.nodes.values():
            node.stop()
        cluster.nodes["n2"].start()
        alone = wait_for(lambda: agreement(cluster, ("n2",)), 20, what="n2 alone to serve every VIP")
        assert {s: a for s, (a, _) in alone.items()} == {s: a for s, (a, _) in seen.items()}
        for addrs, _ in alone.values():
            assert wait_for(lambda: ask(cluster.client, addrs[0]) == "n2", 10, what=f"n2 to answer on {addrs[0]}")
    finally:
        stop_all(cluster)


@pytest.mark.parametrize("failback", ["30", "0"])
def test_restart_in_running_cluster_respects_failback(lab, tmp_path, failback):
    cluster = start_cluster(lab, tmp_path, SIX, failback=failback)
    try:
        seen = agreement(cluster)
        assert seen is not None
        comer = seen["static/s0"][1]
        node = cluster.nodes[comer]
        vips = {addrs[0] for addrs in (a for a, _ in seen.values())}
        mine = {addrs[0] for addrs, owner in seen.values() if owner == comer}
        node.stop(sig=signal.SIGKILL)
        for vip in mine:  # a crash leaves the addresses; a rebooted host would have lost them
            cluster.hosts[comer].run(["ip", "addr", "del", f"{vip}/32", "dev", "eth0"], check=False)
        others = tuple(n for n in NODES if n != comer)
        wait_for(lambda: agreement(cluster, others), 15, what="the others to take over")
        node.start(wait=False)
        t0 = time.monotonic()
        held_early: set[str] = set()
        while time.monotonic() - t0 < 8.0:
            held_early |= vips & addresses_on(cluster.hosts[comer])
            if failback == "0" and held_early:
                break
            time.sleep(0.05)
        if failback == "30":
            assert not held_early, f"{comer} took VIPs back before failback_delay: {held_early}"
            assert agreement(cluster) is not None
            assert comer not in {owner for _, owner in agreement(cluster).values()}
        else:
            back = wait_for(lambda: agreement(cluster) == seen, 15, what=f"{comer} to take its VIPs back")
            assert back
        for s, (addrs, _) in agreement(cluster).items():
            assert addrs == seen[s][0]
    finally:
        stop_all(cluster)
