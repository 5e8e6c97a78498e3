"""Forwarding over IPv6 and UDP (issue 14), with real traffic through the VIP.

The same lab as tests/lab/test_forward.py (``lbd.testing.forward_lab``), with
fd77::/48 addresses beside the IPv4 ones and a UDP echo server on every backend.
"""

from __future__ import annotations

import pytest

from lbd.testing.forward_lab import (
    BACKENDS, BACKENDS6, CLIENT, CLIENT6, NODE_BACK6, VIP, VIP6, backend_entries, backend_rows, build, node_config, vip_holder,
    wait_healthy,
)
from lbd.testing.netlab import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(150)]

SMALL_TABLE = "\n[forwarding]\ntable_size = 1021\n"
# The backends' UDP echo server has no TCP side: their check is the lab's TCP server on 8080.
UDP_CHECK = "port = 8080\ninterval = 0.5\ntimeout = 0.4\nrise = 1\nfall = 2"


def test_nat_ipv6_spreads_over_backends_and_a_dead_one_is_out(lab, tmp_path):
    backends = backend_entries({"b1": 1, "b2": 1, "b3": 1}, 8080, BACKENDS6)
    cfg = node_config("n1", backends=backends, vip=VIP6, extra=SMALL_TABLE)
    fl = build(lab, tmp_path, nodes=("n1",), route="node", port=8080, configs={"n1": cfg}, ipv6=True)
    lbd = fl.lbd["n1"]
    wait_healthy(lbd, 3)
    wait_for(lambda: vip_holder(fl, VIP6) == "n1", 15, what="n1 to hold the IPv6 VIP")
    assert {r["backend"] for r in backend_rows(lbd)} == {f"[{a}]:8080" for a in BACKENDS6.values()}

    result = fl.spread(90, vip=VIP6)
    assert result["errors"] == 0 and set(result["names"]) == {"b1", "b2", "b3"}, result
    assert set(result["peers"]) == {CLIENT6}, result  # DNAT only: the backends see the client

    fl.kill_backend("b1")
    wait_for(lambda: any(r["backend"] == f"[{BACKENDS6['b1']}]:8080" and r["share"] == 0
                         for r in backend_rows(lbd)), 10, interval=0.05, what="b1 out of the table")
    after = fl.spread(40, vip=VIP6)
    assert after["errors"] == 0 and set(after["names"]) == {"b2", "b3"}, after


def test_nat_ipv6_with_snat_for_backends_that_do_not_route_back(lab, tmp_path):
    backends = backend_entries({"b1": 1, "b2": 1, "b3": 1}, 8080, BACKENDS6)
    cfg = node_config("n1", backends=backends, vip=VIP6, snat=True, extra=SMALL_TABLE)
    fl = build(lab, tmp_path, nodes=("n1",), route="none", port=8080, configs={"n1": cfg}, ipv6=True)
    wait_healthy(fl.lbd["n1"], 3)
    wait_for(lambda: vip_holder(fl, VIP6) == "n1", 15, what="n1 to hold the IPv6 VIP")
    result = fl.spread(60, vip=VIP6)
    assert result["errors"] == 0 and set(result["names"]) == {"b1", "b2", "b3"}, result
    assert set(result["peers"]) == {NODE_BACK6["n1"]}, result  # masqueraded to the node's address


@pytest.mark.parametrize("family", [4, 6])
def test_nat_udp_answers_come_back_from_the_vip(lab, tmp_path, family):
    addresses, vip, client = (BACKENDS, VIP, CLIENT) if family == 4 else (BACKENDS6, VIP6, CLIENT6)
    backends = backend_entries({"b1": 1, "b2": 1, "b3": 1}, 5353, addresses)
    cfg = node_config("n1", backends=backends, vip=vip, protocol="udp", vip_port=53, check=UDP_CHECK,
                      extra=SMALL_TABLE)
    fl = build(lab, tmp_path, nodes=("n1",), route="node", port=8080, configs={"n1": cfg}, ipv6=family == 6,
               udp_port=5353)
    wait_healthy(fl.lbd["n1"], 3)
    wait_for(lambda: vip_holder(fl, vip) == "n1", 15, what="n1 to hold the VIP")
    # Each request from a new source port is a new flow: they spread. The client's sockets are
    # connected to the VIP, so an answer counts only if nat turned its source back into the VIP.
    result = fl.udp(90, 53, vip=vip)
    assert result["errors"] == 0 and set(result["names"]) == {"b1", "b2", "b3"}, result
    assert set(result["peers"]) == {client}, result
    rows = {r["backend"]: r for r in backend_rows(fl.lbd["n1"])}
    assert all(r["port"] == "udp/53" for r in rows.values()), rows


def test_dsr_ipv6_backends_answer_the_client_directly(lab, tmp_path):
    backends = backend_entries({"b1": 1, "b2": 1, "b3": 1}, 80, BACKENDS6)
    cfg = node_config("n1", backends=backends, vip=VIP6, forward="dsr", extra=SMALL_TABLE)
    fl = build(lab, tmp_path, nodes=("n1",), route="direct", port=80, configs={"n1": cfg}, ipv6=True)
    lbd = fl.lbd["n1"]
    wait_healthy(lbd, 3)
    wait_for(lambda: vip_holder(fl, VIP6) == "n1", 15, what="n1 to hold the IPv6 VIP")
    assert all(not r["note"] for r in backend_rows(lbd)), backend_rows(lbd)
    node = fl.nodes["n1"]
    before = int(node.run(["cat", "/sys/class/net/eth0/statistics/tx_packets"]).stdout)

    result = fl.spread(60, vip=VIP6)
    assert result["errors"] == 0 and set(result["names"]) == {"b1", "b2", "b3"}, result
    assert set(result["peers"]) == {CLIENT6}, result
    # dsr: the node only turns packets towards a backend; the replies (the backends' banners and
    # handshakes, about 3 packets a connection) do not pass through it.
    sent = int(node.run(["cat", "/sys/class/net/eth0/statistics/tx_packets"]).stdout) - before
    received = sum(int(b.run(["cat", "/sys/class/net/eth0/statistics/tx_packets"]).stdout)
                   for b in fl.backends.values())
    print(f"node sent {sent} packets, the backends {received}")
    assert received > 60 * 3 and sent < received * 2, (sent, received)


@pytest.mark.parametrize("family", [4, 6])
def test_dsr_udp_backends_answer_from_the_vip(lab, tmp_path, family):
    addresses, vip, client = (BACKENDS, VIP, CLIENT) if family == 4 else (BACKENDS6, VIP6, CLIENT6)
    backends = backend_entries({"b1": 1, "b2": 1, "b3": 1}, 53, addresses)  # dsr: the VIP's port
    cfg = node_config("n1", backends=backends, vip=vip, forward="dsr", protocol="udp", vip_port=53,
                      check=UDP_CHECK, extra=SMALL_TABLE)
    fl = build(lab, tmp_path, nodes=("n1",), route="direct", port=8080, configs={"n1": cfg}, ipv6=family == 6,
               udp_port=53)
    wait_healthy(fl.lbd["n1"], 3)
    wait_for(lambda: vip_holder(fl, vip) == "n1", 15, what="n1 to hold the VIP")
    assert all(not r["note"] for r in backend_rows(fl.lbd["n1"])), backend_rows(fl.lbd["n1"])
    result = fl.udp(90, 53, vip=vip)
    assert result["errors"] == 0 and set(result["names"]) == {"b1", "b2", "b3"}, result
    assert set(result["peers"]) == {client}, result
