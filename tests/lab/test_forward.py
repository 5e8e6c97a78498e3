"""L4 forwarding in the kernel (issue 14), with the real daemon in namespaces.

A client, one or two lbd nodes and three backends (``lbd.testing.forward_lab``).
Assertions are about behaviour with generous bounds; speeds belong in
bench/forward.py.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from lbd.testing.forward_lab import (
    BACKENDS, NODE_BACK, VIP, backend_entries, backend_rows, build, holds_vip, node_config, vip_holder, wait_healthy,
)
from lbd.testing.netlab import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(150)]

SMALL_TABLE = "\n[forwarding]\ntable_size = 1021\n"  # >= 100 x 3 backends: 1 % balance, fast changes


def chi_square(observed: dict[str, int], weights: dict[str, int]) -> float:
    total = sum(observed.values())
    wsum = sum(weights.values())
    return sum((observed.get(b, 0) - total * w / wsum) ** 2 / (total * w / wsum) for b, w in weights.items())


def nft_tables(host) -> set[str]:  # type: ignore[no-untyped-def]
    out = json.loads(host.run(["nft", "-j", "list", "tables"]).stdout)
    return {f'{o["table"]["family"]} {o["table"]["name"]}' for o in out["nftables"] if "table" in o}


def test_nat_spreads_by_weight_counts_and_removes_only_its_table(lab, tmp_path):
    weights = {"b1": 1, "b2": 1, "b3": 2}
    cfg = node_config("n1", backends=backend_entries(weights, 8080), extra=SMALL_TABLE)
    fl = build(lab, tmp_path, nodes=("n1",), route="node", port=8080, configs={"n1": cfg}, start=False)
    node = fl.nodes["n1"]
    # A second nftables user on the node: lbd must never touch its table.
    node.run(["nft", "add table inet other; add chain inet other c { type filter hook input priority 0; }; "
                     "add rule inet other c tcp dport 9 counter"])
    fl.lbd["n1"].start()
    wait_healthy(fl.lbd["n1"], 3)
    wait_for(lambda: vip_holder(fl) == "n1", 15, what="n1 to hold the VIP")
    assert nft_tables(node) == {"inet other", "inet lbd"}

    result = fl.spread(200)
    assert result["errors"] == 0, result
    names = {BACKENDS[b]: n for b, n in result["names"].items()}
    assert set(result["names"]) == {"b1", "b2", "b3"}, result
    # Without SNAT the backends see the client's own address.
    assert set(result["peers"]) == {"10.77.0.3"}, result
    # chi-square with 2 degrees of freedom: 13.8 is p = 0.001; a generous bound for 200 draws.
    stat = chi_square(result["names"], weights)
    print(f"spread {result['names']} chi2={stat:.2f}")
    assert stat < 13.8, (result, stat)

    rows = {r["backend"]: r for r in backend_rows(fl.lbd["n1"])}
    assert {r["share"] for r in rows.values()} == {0.25, 0.5} or abs(rows["10.88.1.12:8080"]["share"] - 0.5) < 0.01
    for address, count in names.items():
        # nat counts the first packet of each new flow: one per connection.
        assert rows[f"{address}:8080"]["packets"] >= count, rows
    status_text = fl.lbd["n1"].ctl("status").stdout
    assert "BACKEND" in status_text and "10.88.1.12:8080" in status_text and "50.0%" in status_text

    metrics = node.run(["python3", "-c", "import urllib.request;print(urllib.request.urlopen("
                                         "'http://127.0.0.1:9120/metrics').read().decode())"], check=False).stdout
    if metrics:  # only when a metrics listener is configured
        assert "lbd_backend_up" in metrics

    assert fl.lbd["n1"].stop() == 0
    assert nft_tables(node) == {"inet other"}
    rules = node.run(["nft", "list", "table", "inet", "other"]).stdout
    assert "tcp dport 9 counter" in rules


def test_killed_backend_is_out_within_its_interval_and_drain_keeps_flows(lab, tmp_path):
    weights = {"b1": 1, "b2": 1, "b3": 1}
    cfg = node_config("n1", backends=backend_entries(weights, 8080), extra=SMALL_TABLE)
    fl = build(lab, tmp_path, nodes=("n1",), route="node", port=8080, configs={"n1": cfg})
    lbd = fl.lbd["n1"]
    wait_healthy(lbd, 3)
    wait_for(lambda: vip_holder(fl) == "n1", 15, what="n1 to hold the VIP")

    # A killed backend: out after fall (2) x interval (0.5 s) + timeout, then one transaction.
    killed = time.monotonic()
    fl.kill_backend("b2")
    wait_for(lambda: any(r["backend"] == "10.88.1.11:8080" and r["health"] == "down" and r["share"] == 0
                         for r in backend_rows(lbd)), 10, interval=0.05, what="b2 out of the table")
    took = time.monotonic() - killed
    print(f"backend out of the table {took:.2f}s after it died")
    assert took < 0.5 * 2 + 0.4 + 2.0  # generous: a loaded machine
    result = fl.spread(60)
    assert result["errors"] == 0 and "b2" not in result["names"] and set(result["names"]) == {"b1", "b3"}, result
    # b2's first failed check (fall = 2) had the table without it built ahead (lbd.forward.prefetch).
    assert "forward_tables_prefetched" in lbd.log(), lbd.log()[-3000:]

    # Drain b3: hold connections open, some on b3; weight 0 by a reload.
    hold = fl.hold(12, 6.0)
    assert hold.stdout is not None
    ready = json.loads(hold.stdout.readline())["ready"]
    assert "b3" in ready, ready  # 12 flows over two backends: b3 has some (p of none = 2^-12)
    lbd.write_config(node_config("n1", backends=backend_entries({"b1": 1, "b2": 1, "b3": 0}, 8080),
                                 extra=SMALL_TABLE))
    lbd.ctl("reload")
    wait_for(lambda: any(r["backend"] == "10.88.1.12:8080" and r["share"] == 0 for r in backend_rows(lbd)), 10,
             what="b3 drained")
    after = fl.spread(40)
    assert after["errors"] == 0 and set(after["names"]) == {"b1"}, after  # b2 dead, b3 drained
    final = json.loads(hold.communicate(timeout=30)[0].splitlines()[-1])
    assert all(f is None for f in final["failed"]), final
    on_b3 = [ok for name, ok in zip(final["names"], final["ok"]) if name == "b3"]
    assert on_b3 and min(on_b3) >= 20, final  # established flows to the drained backend kept working


def test_nat_with_snat_for_backends_that_do_not_route_back(lab, tmp_path):
    cfg = node_config("n1", backends=backend_entries({"b1": 1, "b2": 1, "b3": 1}, 8080), snat=True,
                      extra=SMALL_TABLE)
    fl = build(lab, tmp_path, nodes=("n1",), route="none", port=8080, configs={"n1": cfg})
    wait_healthy(fl.lbd["n1"], 3)
    wait_for(lambda: vip_holder(fl) == "n1", 15, what="n1 to hold the VIP")
    result = fl.spread(60)
    assert result["errors"] == 0 and set(result["names"]) == {"b1", "b2", "b3"}, result
    assert set(result["peers"]) == {NODE_BACK["n1"]}, result  # the backends saw the node's address

    # No healthy backend left: the VIP is withdrawn from the node, and status says why.
    for name in BACKENDS:
        fl.kill_backend(name)
    wait_for(lambda: vip_holder(fl) is None, 15, interval=0.1, what="the VIP withdrawn")
    row = fl.lbd["n1"].service("static/web")
    assert "no healthy backend (0 of 3 up on this node): VIP withdrawn from this node" in row["reason"], row


def test_dsr_backends_answer_directly_and_flows_survive_a_failover(lab, tmp_path):
    nodes = ("n1", "n2")
    backends = backend_entries({"b1": 1, "b2": 1, "b3": 1}, 80)
    configs = {n: node_config(n, backends=backends, forward="dsr", cluster=nodes, extra=SMALL_TABLE)
               for n in nodes}
    fl = build(lab, tmp_path, nodes=nodes, route="direct", port=80, configs=configs)
    for n in nodes:
        wait_healthy(fl.lbd[n], 3)
    owner = wait_for(lambda: vip_holder(fl), 20, what="a node to hold the VIP")
    other = next(n for n in nodes if n != owner)

    # The client counts packets from the VIP by source MAC: from the backends, never from a node.
    node_macs = ", ".join(fl.nodes[n].mac for n in nodes)
    backend_macs = ", ".join(h.mac for h in fl.backends.values())
    fl.client.run(["nft", f"add table netdev watch; add chain netdev watch in {{ type filter hook ingress device "
                          f"eth0 priority 0; }}; add rule netdev watch in ip saddr {VIP} ether saddr "
                          f"{{ {node_macs} }} counter; add rule netdev watch in ip saddr {VIP} ether saddr "
                          f"{{ {backend_macs} }} counter"])
    result = fl.spread(30)
    assert result["errors"] == 0 and len(result["names"]) >= 2, result
    assert set(result["peers"]) == {"10.77.0.3"}, result
    rules = json.loads(fl.client.run(["nft", "-j", "list", "chain", "netdev", "watch", "in"]).stdout)["nftables"]
    counts = [next(e["counter"]["packets"] for e in o["rule"]["expr"] if "counter" in e)
              for o in rules if "rule" in o]
    assert counts[0] == 0 and counts[1] > 0, counts
    # dsr counts every packet from the client, per backend (the sum of its map entries' counters).
    assert sum(r["packets"] for r in backend_rows(fl.lbd[owner])) >= 3 * 30

    # Long-lived connections, then the owner crashes (link down, SIGKILL).
    hold = fl.hold(16, 8.0)
    assert hold.stdout is not None
    ready = json.loads(hold.stdout.readline())["ready"]
    time.sleep(1.5)
    fl.lab.set_link(fl.nodes[owner], False)
    fl.lbd[owner].stop(sig=signal.SIGKILL)
    wait_for(lambda: holds_vip(fl.nodes[other]), 15, interval=0.1, what=f"{other} to take the VIP")
    final = json.loads(hold.communicate(timeout=40)[0].splitlines()[-1])
    print(f"dsr failover {owner} -> {other}: {final['ok']}")
    assert final["names"] == ready
    assert all(f is None for f in final["failed"]), final  # every established connection survived
    assert min(final["ok"]) >= 25, final  # and kept exchanging after the failover


def test_dsr_drain_keeps_established_connections_and_sends_no_new_ones(lab, tmp_path):
    weights = {"b1": 1, "b2": 1, "b3": 1}
    cfg = node_config("n1", backends=backend_entries(weights, 80), forward="dsr", extra=SMALL_TABLE)
    fl = build(lab, tmp_path, nodes=("n1",), route="direct", port=80, configs={"n1": cfg})
    lbd = fl.lbd["n1"]
    wait_healthy(lbd, 3)
    wait_for(lambda: vip_holder(fl) == "n1", 15, what="n1 to hold the VIP")

    hold = fl.hold(12, 6.0)
    assert hold.stdout is not None
    ready = json.loads(hold.stdout.readline())["ready"]
    assert "b3" in ready, ready  # 12 flows over three backends: b3 has some (p of none = (2/3)^12)
    lbd.write_config(node_config("n1", backends=backend_entries({"b1": 1, "b2": 1, "b3": 0}, 80), forward="dsr",
                                 extra=SMALL_TABLE))
    lbd.ctl("reload")
    wait_for(lambda: any(r["backend"] == "10.88.1.12:80" and r["share"] == 0 for r in backend_rows(lbd)), 10,
             what="b3 drained")
    after = fl.spread(40)
    assert after["errors"] == 0 and set(after["names"]) == {"b1", "b2"}, after  # no new connection to b3
    final = json.loads(hold.communicate(timeout=30)[0].splitlines()[-1])
    assert all(f is None for f in final["failed"]), final
    on_b3 = [ok for name, ok in zip(final["names"], final["ok"]) if name == "b3"]
    assert on_b3 and min(on_b3) >= 20, final  # established connections to the drained backend kept working
