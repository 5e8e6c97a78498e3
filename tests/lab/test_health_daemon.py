"""Health checks in the real daemon: a VIP is announced only while its check passes.

One node in a namespace lab. The service's tcp check targets a listener that
the test starts and stops inside the node's namespace: the VIP is not bound
before the first successes (a check starts failing), is bound once the check
rises, and is removed after it falls; status says why.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lbd.testing.netlab import LbdNode, wait_for

pytestmark = pytest.mark.lab

CONFIG = """
[[pool]]
name = "lan"
addresses = ["10.77.0.48/29"]

[[l2_advertisement]]
pools = ["lan"]

[[service]]
name = "web"
ports = ["tcp/8080"]

[service.health_check]
type = "tcp"
port = 8080
interval = 0.2
timeout = 0.2
rise = 2
fall = 2
"""

LISTENER = (
    "import socket, time\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', 8080))\n"
    "s.listen(64)\n"
    "print('listening', flush=True)\n"
    "time.sleep(120)\n"
)


def addresses_on(host, ifname: str = "eth0") -> set[str]:  # type: ignore[no-untyped-def]
    out = host.run(["ip", "-j", "addr", "show", "dev", ifname]).stdout
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])}


@pytest.mark.timeout(120)
def test_vip_follows_the_health_check(lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    node = lab.add_host("node", ["10.77.0.2/24"])
    lbd = LbdNode(node, tmp_path, CONFIG, name="node1").start()
    try:
        # No listener: the check never rises, the VIP stays unannounced and status says why.
        row = wait_for(lambda: (r := lbd.service("static/web"))["reason"] and r, 15, what="a decision for web")
        health = wait_for(lambda: lbd.status()["health"].get("static/web", {}).get("runs", 0) >= 3 and
                          lbd.status()["health"]["static/web"], 15, what="three check runs")
        assert health["healthy"] is False and health["state"] == "down"
        row = lbd.service("static/web")
        assert row["state"] != "announced" and "health check" in row["reason"]
        assert "10.77.0.48" not in addresses_on(node)

        listener = node.popen([sys.executable, "-c", LISTENER], stdout=subprocess.PIPE)
        assert listener.stdout is not None and listener.stdout.readline().startswith(b"listening")
        wait_for(lambda: "10.77.0.48" in addresses_on(node), 20, what="VIP bound once the check rises")
        assert lbd.service("static/web")["state"] == "announced"
        assert lbd.status()["health"]["static/web"]["state"] == "up"

        lab.stop(listener)
        wait_for(lambda: "10.77.0.48" not in addresses_on(node), 20, what="VIP removed once the check falls")
        health = lbd.status()["health"]["static/web"]
        assert health["healthy"] is False and "8080" in health["last_output"]
    finally:
        lbd.stop()
