"""The real lbd daemon in a namespace lab: a node and a client on a bridge.

Issue 2's lab cases: the client resolves the VIP (ARP and NDP) to the node's MAC
and reaches a server on the node through it; the responder mode answers
without the address bound; reload adds and removes a service (and a bad
reload keeps the running config); stop removes every address it added; a
restart keeps every allocation; a VIP outside every subnet is not announced
and status says why.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from lbd.testing.netlab import LbdNode, wait_for
from lbd.testing.netlab import require_binary

pytestmark = pytest.mark.lab

POOL = """
[[pool]]
name = "lan"
addresses = ["10.77.0.48/28", "fd77::48-fd77::4f"]
"""

L2 = """
[[l2_advertisement]]
pools = ["lan"]
"""


def addresses_on(host, ifname: str = "eth0") -> set[str]:
    out = host.run(["ip", "-j", "addr", "show", "dev", ifname]).stdout
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])}


@pytest.fixture
def net(lab):
    node = lab.add_host("node", ["10.77.0.2/24", "fd77::2/64"])
    client = lab.add_host("client", ["10.77.0.3/24", "fd77::3/64"])
    return lab, node, client


def start(node_host, tmp_path, body: str) -> LbdNode:
    return LbdNode(node_host, tmp_path, POOL + body, name="node1").start()


def announced(lbd: LbdNode, name: str) -> dict | None:
    row = lbd.service(name)
    return row if row["state"] == "announced" else None


def test_client_reaches_vip_by_arp_and_ndp(net, tmp_path):
    require_binary("arping", "ndisc6", "curl")
    lab, node, client = net
    node.popen([sys.executable, "-m", "http.server", "--bind", "::", "8080", "--directory", str(tmp_path)],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (tmp_path / "index.html").write_text("served by node1\n")
    lbd = start(node, tmp_path, L2 + """
[[service]]
name = "web"
ports = ["tcp/8080"]
ip_families = ["ipv4", "ipv6"]
""")
    try:
        row = wait_for(lambda: announced(lbd, "static/web"), 15, what="web announced")
        assert row["addresses"] == ["10.77.0.48", "fd77::48"]  # lowest free of each family
        assert row["owner"] == "node1" and row["interface"] == "eth0"
        assert client.arping("10.77.0.48") == node.mac
        assert client.ndisc("fd77::48") == node.mac
        for url in ("http://10.77.0.48:8080/", "http://[fd77::48]:8080/"):
            out = wait_for(lambda: client.run(["curl", "-sS", "--max-time", "3", url], check=False).stdout, 10,
                           what=f"GET {url}")
            assert "served by node1" in out
        # The VIP is bound as a host address with no prefix route and a finite lifetime.
        info = json.loads(node.run("ip -j addr show dev eth0").stdout)[0]["addr_info"]
        vip = next(a for a in info if a["local"] == "10.77.0.48")
        assert vip["prefixlen"] == 32 and vip.get("noprefixroute") and vip["valid_life_time"] < 10**6
    finally:
        lbd.stop()


def test_responder_answers_without_binding(net, tmp_path):
    require_binary("arping", "ndisc6")
    lab, node, client = net
    lbd = start(node, tmp_path, """
[[l2_advertisement]]
pools = ["lan"]
mode = "responder"

[[service]]
name = "dns"
ports = ["udp/53"]
ip_families = ["ipv4", "ipv6"]
""")
    try:
        wait_for(lambda: announced(lbd, "static/dns"), 15, what="dns announced")
        assert client.arping("10.77.0.48") == node.mac
        assert client.ndisc("fd77::48") == node.mac
        assert not {"10.77.0.48", "fd77::48"} & addresses_on(node)
    finally:
        lbd.stop()


def test_reload_adds_and_removes_and_rejects_bad_config(net, tmp_path):
    lab, node, client = net
    lbd = start(node, tmp_path, L2 + '[[service]]\nname = "a"\n')
    try:
        wait_for(lambda: announced(lbd, "static/a"), 15, what="a announced")
        assert "10.77.0.48" in addresses_on(node)
        # Add b, remove a.
        lbd.write_config(POOL + L2 + '[[service]]\nname = "b"\naddresses = ["10.77.0.50"]\n')
        lbd.send_signal(signal.SIGHUP)
        wait_for(lambda: "10.77.0.50" in addresses_on(node) and "10.77.0.48" not in addresses_on(node), 15,
                 what="b bound and a removed")
        assert [s["name"] for s in lbd.status()["services"]] == ["static/b"]
        # A broken config is rejected; the running one stays, and status says why.
        lbd.write_config(POOL + L2 + '[[service]]\nname = "b"\naddresses = ["10.99.0.1"]\nportz = 1\n')
        lbd.send_signal(signal.SIGHUP)
        status = wait_for(lambda: (s := lbd.status())["reload_error"] and s, 15, what="reload rejected")
        errors = "\n".join(status["reload_error"])
        assert "portz" in errors and "did you mean 'ports'" in errors
        assert "10.99.0.1" in errors
        assert lbd.running() and "10.77.0.50" in addresses_on(node)
        assert "REJECTED" in lbd.ctl("status").stdout
        # lbd-ctl reload reports the same rejection.
        result = lbd.ctl("reload", check=False)
        assert result.returncode != 0 and "portz" in result.stderr
    finally:
        lbd.stop()


def test_stop_removes_every_address_and_restart_keeps_allocations(net, tmp_path):
    lab, node, client = net
    before = addresses_on(node)
    services = "".join(f'[[service]]\nname = "s{i}"\nip_families = ["ipv4", "ipv6"]\n' for i in range(5))
    lbd = start(node, tmp_path, L2 + services)
    wait_for(lambda: all(s["state"] == "announced" for s in lbd.status()["services"]), 15, what="all announced")
    first = {s["name"]: s["addresses"] for s in lbd.status()["services"]}
    assert len({a for addrs in first.values() for a in addrs}) == 10
    assert lbd.stop() == 0
    assert addresses_on(node) == before, "stop must withdraw every address lbd added"
    # Restart with the services listed in another order and a new one first: nobody moves.
    reordered = '[[service]]\nname = "new"\n' + "".join(
        f'[[service]]\nname = "s{i}"\nip_families = ["ipv4", "ipv6"]\n' for i in reversed(range(5)))
    lbd.write_config(POOL + L2 + reordered)
    lbd.start()
    wait_for(lambda: all(s["state"] == "announced" for s in lbd.status()["services"]), 15, what="all announced")
    second = {s["name"]: s["addresses"] for s in lbd.status()["services"]}
    assert {k: second[k] for k in first} == first
    assert second["static/new"][0] not in {a for addrs in first.values() for a in addrs}
    # A crash (SIGKILL) leaves the state file valid too, and the next start cleans up.
    lbd.stop(sig=signal.SIGKILL)
    lbd.start()
    wait_for(lambda: all(s["state"] == "announced" for s in lbd.status()["services"]), 15, what="all announced")
    assert {s["name"]: s["addresses"] for s in lbd.status()["services"]} == second
    lbd.stop()
    assert addresses_on(node) == before


def test_vip_outside_every_subnet_is_not_announced(net, tmp_path):
    lab, node, client = net
    lbd = LbdNode(node, tmp_path, """
[[pool]]
name = "far"
addresses = ["10.88.5.0/30"]

[[l2_advertisement]]
pools = ["far"]

[[service]]
name = "x"
""", name="node1").start()
    try:
        row = wait_for(lambda: (r := lbd.service("static/x"))["reason"] and r, 15, what="a decision for x")
        assert row["state"] == "not-announced" and row["addresses"] == ["10.88.5.0"]
        assert "no interface has a subnet holding 10.88.5.0" in row["reason"]
        assert "eth0: 10.77.0.0/24" in row["reason"]
        assert "10.88.5.0" not in addresses_on(node)
        assert "no interface has a subnet holding" in lbd.ctl("status").stdout
    finally:
        lbd.stop()


def test_exhausted_pool_leaves_service_pending(net, tmp_path):
    lab, node, client = net
    lbd = LbdNode(node, tmp_path, """
[[pool]]
name = "tiny"
addresses = ["10.77.0.200/31"]

[[l2_advertisement]]
""" + "".join(f'[[service]]\nname = "s{i}"\n' for i in range(3)), name="node1").start()
    try:
        row = wait_for(lambda: (r := lbd.service("static/s2"))["reason"] and r, 15, what="s2 decided")
        assert row["state"] == "pending" and "exhausted" in row["reason"]
        status = lbd.status()
        assert status["pools"] == [{"name": "tiny", "ipv4": {"used": 2, "total": 2}, "ipv6": {"used": 0, "total": 0}}]
        assert lbd.running()
    finally:
        lbd.stop()


def test_control_socket_and_ctl_errors(net, tmp_path):
    lab, node, client = net
    lbd = start(node, tmp_path, L2)
    try:
        mode = lbd.socket.stat().st_mode & 0o777
        assert mode == 0o660
        assert lbd.ctl("--json", "bgp").stdout.strip() == "[]"
        assert json.loads(lbd.ctl("--json", "members").stdout)[0]["name"] == "node1"
        bad = lbd.ctl("frobnicate", check=False)
        assert bad.returncode != 0
    finally:
        lbd.stop()
    gone = lbd.ctl("status", check=False)
    assert gone.returncode == 3 and "lbd is not running" in gone.stderr


def test_metrics_endpoint(net, tmp_path):
    lab, node, client = net
    lbd = start(node, tmp_path, L2 + '[[service]]\nname = "m"\n\n[metrics]\nlisten = "127.0.0.1:9120"\n')
    try:
        wait_for(lambda: announced(lbd, "static/m"), 15, what="m announced")

        def scrape() -> str:
            out = node.run(["curl", "-sS", "--max-time", "3", "http://127.0.0.1:9120/metrics"], check=False)
            return out.stdout if "lbd_pool_addresses" in out.stdout else ""

        text = wait_for(scrape, 10, what="metrics")
        assert 'lbd_pool_addresses{family="ipv4",pool="lan"} 16.0' in text
        assert 'lbd_pool_addresses_in_use{family="ipv4",pool="lan"} 1.0' in text
        assert "lbd_vips_announced" in text and "lbd_config_reloads" in text
        assert re.search(r'lbd_l2_gratuitous_sent_total\{[^}]*vip="10.77.0.48"[^}]*\} [1-9]', text)
    finally:
        lbd.stop()


def test_systemd_notify_protocol(net, tmp_path):
    import socket as socketlib

    lab, node, client = net
    sink_path = tmp_path / "notify.sock"
    sink = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM)
    sink.bind(str(sink_path))
    sink.settimeout(15)
    lbd = LbdNode(node, tmp_path, POOL + L2 + '[[service]]\nname = "a"\n', name="node1")
    lbd.start(env={"NOTIFY_SOCKET": str(sink_path), "WATCHDOG_USEC": "2000000"})
    try:
        def next_message() -> str:
            return sink.recv(4096).decode()

        first = next_message()
        assert first.startswith("READY=1"), first
        # The watchdog is fed at half the interval while the loop lives.
        assert any(next_message() == "WATCHDOG=1" for _ in range(10))
        lbd.send_signal(signal.SIGHUP)
        seen = [next_message() for _ in range(12)]
        assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in seen), seen
        assert any(m.startswith("READY=1") for m in seen), seen
    finally:
        lbd.stop()
    rest = []
    sink.settimeout(0.5)
    try:
        while True:
            rest.append(sink.recv(4096).decode())
    except OSError:
        pass
    assert "STOPPING=1" in rest
    sink.close()


def test_route_export_installs_and_removes_kernel_routes(net, tmp_path):
    """The Calico case: VIP routes go to a kernel table (lbd's protocol) for the node's BIRD/FRR."""
    lab, node, client = net
    config = """
[[pool]]
name = "routed"
addresses = ["10.88.0.0/24"]

[[route_export]]
name = "bird"
pools = ["routed"]
table = 100
"""

    def table() -> str:
        return node.run("ip route show table 100", check=False).stdout

    lbd = LbdNode(node, tmp_path, config + '[[service]]\nname = "a"\npool = "routed"\n', name="node1").start()
    try:
        wait_for(lambda: "10.88.0.0 dev lo proto 252" in table(), 15, what="the VIP route in table 100")
        assert "10.88.0.0/32" in node.run("ip -br addr show dev lo").stdout  # the node accepts the traffic
        assert lbd.service("static/a")["modes"] == ["export"]
        # Another protocol's route in the same table is never touched.
        node.run("ip route add 10.88.0.200/32 dev lo table 100 proto static")
        lbd.write_config(config + '[[service]]\nname = "b"\npool = "routed"\naddresses = ["10.88.0.7"]\n')
        lbd.send_signal(signal.SIGHUP)
        wait_for(lambda: "10.88.0.7 dev lo proto 252" in table() and "10.88.0.0 dev" not in table(), 15,
                 what="a withdrawn, b installed")
    finally:
        lbd.stop()
    assert "proto 252" not in table()
    assert "10.88.0.200" in table()


def test_pool_edit_reallocates_with_a_warning(net, tmp_path):
    lab, node, client = net
    services = '[[service]]\nname = "a"\n[[service]]\nname = "b"\n'
    lbd = start(node, tmp_path, L2 + services)
    try:
        wait_for(lambda: all(s["state"] == "announced" for s in lbd.status()["services"]), 15, what="announced")
        before = {s["name"]: s["addresses"] for s in lbd.status()["services"]}
        assert before == {"static/a": ["10.77.0.48"], "static/b": ["10.77.0.49"]}
        # The pool loses .48: only a moves, b keeps its address (once the operator allows it).
        lbd.write_config(POOL.replace('"10.77.0.48/28"', '"10.77.0.49-10.77.0.63"') + L2 + services)
        lbd.ctl("reload", "--allow-readdress")
        after = wait_for(lambda: (s := {r["name"]: r["addresses"] for r in lbd.status()["services"]})
                         ["static/a"] != ["10.77.0.48"] and s, 15, what="a re-allocated")
        assert after["static/b"] == ["10.77.0.49"] and after["static/a"] == ["10.77.0.50"]
        wait_for(lambda: "10.77.0.50" in addresses_on(node) and "10.77.0.48" not in addresses_on(node), 15,
                 what="addresses follow")
        warnings = [json.loads(line) for line in lbd.log().splitlines() if '"allocation_changed"' in line]
        assert warnings and warnings[0]["level"] == "warning" and "10.77.0.48" in warnings[0]["change"]
    finally:
        lbd.stop()


def test_route_export_with_local_route_accepts_traffic_without_an_address(net, tmp_path):
    """accept = "local-route" (for FRR): the node takes the VIP's traffic through a local route."""
    lab, node, client = net
    client.run("ip route add 10.88.0.0/24 via 10.77.0.2")  # what the gateway would learn by BGP
    lbd = LbdNode(node, tmp_path, """
[[pool]]
name = "routed"
addresses = ["10.88.0.0/24"]

[[route_export]]
name = "frr"
pools = ["routed"]
table = 200
accept = "local-route"

[[service]]
name = "a"
pool = "routed"
addresses = ["10.88.0.5"]
""", name="node1").start()
    try:
        wait_for(lambda: "10.88.0.5 dev lo proto 252" in node.run("ip route show table 200", check=False).stdout, 15,
                 what="the exported route")
        assert "local 10.88.0.5 dev lo proto 252 scope host" in node.run("ip route show table local").stdout
        assert "10.88.0.5" not in node.run("ip -br addr show dev lo").stdout
        client.run("ping -c1 -W3 10.88.0.5")  # the node answers for the VIP
    finally:
        lbd.stop()
    assert "proto 252" not in node.run("ip route show table local").stdout
    assert client.run("ping -c1 -W1 10.88.0.5", check=False).returncode != 0
