"""L2 announcement in the namespace lab: an L2Announcer on a node, a client next to it.

The announcer runs in the node's namespace through ``lbd.testing.l2_driver``; the
client resolves the VIPs with arping / ndisc6 and connects through them.
"""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from lbd.testing.l2_driver import DriverClient
from lbd.testing.netlab import Host, wait_for
from lbd.testing.netlab import require_binary

pytestmark = pytest.mark.lab

VIP4, VIP6 = "10.77.0.10", "fd77::10"


def addresses(host: Host) -> dict[str, dict]:
    """Address -> iproute2's JSON record for the host's interface."""
    out = json.loads(host.run(["ip", "-j", "addr", "show", "dev", host.ifname]).stdout)
    return {a["local"]: a for a in out[0]["addr_info"]}


def arping_mac(client: Host, vip: str) -> str | None:
    out = client.run(["arping", "-c1", "-w3", "-I", client.ifname, vip], check=False, timeout=10).stdout
    found = re.search(r"bytes from ([0-9a-f:]{17}) ", out)
    return found.group(1) if found else None


def ndisc_mac(client: Host, vip: str) -> str | None:
    out = client.run(["ndisc6", "-n", "-r2", "-w", "1000", vip, client.ifname], check=False, timeout=10).stdout
    found = re.search(r"Target link-layer address: ([0-9A-F:]{17})", out)
    return found.group(1).lower() if found else None


def neigh_mac(client: Host, vip: str) -> str | None:
    out = json.loads(client.run(["ip", "-j", "neigh", "show", vip, "dev", client.ifname]).stdout)
    return out[0].get("lladdr") if out else None


SERVER = (
    "import http.server, socket\n"
    "class S(http.server.ThreadingHTTPServer):\n"
    "    address_family = socket.AF_INET6\n"
    "    def server_bind(self):\n"
    "        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
    "        super().server_bind()\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = b'served by node'\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "S(('::', 8080), H).serve_forever()\n"
)


@pytest.fixture
def net(lab):  # type: ignore[no-untyped-def]
    require_binary("arping", "ndisc6", "curl")
    node = lab.add_host("node", ["10.77.0.2/24", "fd77::2/64"])
    client = lab.add_host("client", ["10.77.0.3/24", "fd77::3/64"])
    return lab, node, client


def test_bind_mode_client_resolves_and_reaches_server(net) -> None:  # type: ignore[no-untyped-def]
    lab, node, client = net
    driver = DriverClient(node, refresh=0.3)
    answer = driver.apply({"vip": VIP4, "mode": "bind"}, {"vip": VIP6, "mode": "bind"})
    assert [r["state"] for r in answer["status"]] == ["announced", "announced"], answer

    bound = addresses(node)
    for vip, plen in ((VIP4, 32), (VIP6, 128)):
        assert bound[vip]["prefixlen"] == plen
        assert bound[vip].get("noprefixroute") is True
        assert bound[vip]["valid_life_time"] <= 120  # finite, not "forever"
    assert bound[VIP6].get("nodad") is True
    # No connected route for the VIPs: only the interface's own subnets are routed.
    routes = node.run(["ip", "route", "show", "dev", node.ifname]).stdout
    assert "10.77.0.10" not in routes

    assert arping_mac(client, VIP4) == node.mac
    assert ndisc_mac(client, VIP6) == node.mac
    node.popen([sys.executable, "-c", SERVER])
    for url in (f"http://{VIP4}:8080/", f"http://[{VIP6}]:8080/"):
        body = wait_for(
            lambda: client.run(["curl", "-s", "-m", "2", url], check=False).stdout,
            timeout=15, what=f"GET {url}",
        )
        assert body == "served by node"

    # The lifetime is refreshed (every 0.3 s here): still at its full value later.
    time.sleep(1.6)
    now = addresses(node)
    assert now[VIP4]["valid_life_time"] >= 119 and now[VIP6]["valid_life_time"] >= 119

    # Withdrawing one VIP removes exactly that address; close removes the rest.
    driver.apply({"vip": VIP6, "mode": "bind"})
    assert VIP4 not in addresses(node) and VIP6 in addresses(node)
    driver.close()
    left = addresses(node)
    assert VIP4 not in left and VIP6 not in left
    assert "10.77.0.2" in left and "fd77::2" in left  # what lbd did not add stays


@pytest.mark.parametrize("mode", ["bind", "responder"])
def test_gratuitous_announcements_move_client_neighbour_entry(lab, mode: str) -> None:  # type: ignore[no-untyped-def]
    a = lab.add_host("a", ["10.77.0.2/24", "fd77::2/64"])
    b = lab.add_host("b", ["10.77.0.4/24", "fd77::4/64"])
    client = lab.add_host("client", ["10.77.0.3/24", "fd77::3/64"])
    first = DriverClient(a)
    first.apply({"vip": VIP4, "mode": "bind", "interval": 0}, {"vip": VIP6, "mode": "bind", "interval": 0})
    client.run(["ping", "-c1", "-W2", VIP4])
    client.run(["ping", "-c1", "-W2", VIP6])
    assert neigh_mac(client, VIP4) == a.mac and neigh_mac(client, VIP6) == a.mac
    first.close()
    # Linux ignores ARP updates within locktime (1 s) of the last one.
    time.sleep(1.2)
    second = DriverClient(b)
    # In responder mode nothing is bound: only lbd's packets can move the entries.
    answer = second.apply({"vip": VIP4, "mode": mode, "burst": 3, "interval": 0}, {"vip": VIP6, "mode": mode, "burst": 3, "interval": 0})
    assert all(r["state"] == "announced" for r in answer["status"]), answer
    # The client sends nothing: its entries move because of b's announcements.
    wait_for(lambda: neigh_mac(client, VIP4) == b.mac, timeout=5, what="IPv4 neighbour entry to move to b")
    wait_for(lambda: neigh_mac(client, VIP6) == b.mac, timeout=5, what="IPv6 neighbour entry to move to b")
    # The whole burst goes out (3 x request + reply for IPv4, 3 NA for IPv6), then nothing (interval 0).
    wait_for(lambda: second.status(VIP4)["gratuitous_sent"] == 6, timeout=5, what="the IPv4 burst")
    wait_for(lambda: second.status(VIP6)["gratuitous_sent"] == 3, timeout=5, what="the IPv6 burst")
    time.sleep(0.3)
    assert second.status(VIP4)["gratuitous_sent"] == 6
    second.close()


def test_responder_answers_without_binding(net) -> None:  # type: ignore[no-untyped-def]
    lab, node, client = net
    driver = DriverClient(node)
    answer = driver.apply({"vip": "10.77.0.11", "mode": "responder"}, {"vip": "fd77::11", "mode": "responder"})
    assert [r["state"] for r in answer["status"]] == ["announced", "announced"], answer
    bound = addresses(node)
    assert "10.77.0.11" not in bound and "fd77::11" not in bound
    assert arping_mac(client, "10.77.0.11") == node.mac
    assert ndisc_mac(client, "fd77::11") == node.mac
    # Nothing for an address it does not own.
    assert arping_mac(client, "10.77.0.12") is None
    # Withdrawn: the responder stops answering.
    driver.apply()
    assert arping_mac(client, "10.77.0.11") is None
    driver.close()


def test_vip_outside_every_subnet_is_not_bound(net) -> None:  # type: ignore[no-untyped-def]
    lab, node, client = net
    driver = DriverClient(node)
    answer = driver.apply({"vip": "10.99.0.5"}, {"vip": "10.99.0.6", "interface": "eth0"})
    assert answer["skipped"] == {"10.99.0.5": "no interface has a subnet holding 10.99.0.5 (eth0: 10.77.0.0/24)"}
    (row,) = answer["status"]
    assert row["state"] == "error"
    assert row["last_error"] == "10.99.0.6 does not fit any subnet of eth0 (10.77.0.0/24)"
    assert not {"10.99.0.5", "10.99.0.6"} & set(addresses(node))
    driver.close()


def test_stale_marked_addresses_are_cleaned_up_after_a_crash(net) -> None:  # type: ignore[no-untyped-def]
    lab, node, client = net
    crashed = DriverClient(node)
    crashed.apply({"vip": "10.77.0.12", "mode": "bind"}, {"vip": "fd77::12", "mode": "bind"})
    crashed.kill()
    assert {"10.77.0.12", "fd77::12"} <= set(addresses(node))  # left behind by the crash
    node.run(["ip", "addr", "add", "10.77.0.50/32", "dev", "eth0"])  # someone else's, unmarked

    restarted = DriverClient(node)
    restarted.apply({"vip": "10.77.0.13", "mode": "bind"})
    assert restarted.send({"cleanup": True}) == {"removed": 2}
    left = set(addresses(node))
    assert "10.77.0.12" not in left and "fd77::12" not in left
    assert "10.77.0.13" in left  # desired: kept
    assert "10.77.0.50" in left  # not lbd's: never touched
    restarted.close()
    assert "10.77.0.13" not in set(addresses(node))
