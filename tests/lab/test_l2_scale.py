"""2,048 layer-2 VIPs through the real daemon: bound in pipelined netlink batches,
announced (a sample resolved by arping from a client), withdrawn on stop."""

from __future__ import annotations

import json

import pytest

from lbd.testing.netlab import LbdNode, require_binary, wait_for

pytestmark = pytest.mark.lab

COUNT = 2048
CONFIG = """
[[pool]]
name = "lan"
addresses = ["10.77.8.0/21"]

[[l2_advertisement]]
pools = ["lan"]
announce_burst = 1
"""


def vips_on(host, ifname: str = "eth0") -> set[str]:  # type: ignore[no-untyped-def]
    out = host.run(["ip", "-j", "addr", "show", "dev", ifname]).stdout
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])
            if a["local"].startswith("10.77.") and int(a["local"].split(".")[2]) >= 8}


def test_two_thousand_l2_vips_bound_announced_withdrawn(lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    require_binary("arping")
    node = lab.add_host("node", ["10.77.0.2/20"])
    client = lab.add_host("client", ["10.77.0.3/20"])
    services = "".join(f'[[service]]\nname = "s{i}"\npool = "lan"\n' for i in range(COUNT))
    lbd = LbdNode(node, tmp_path, CONFIG + services, name="node1").start()
    try:
        wait_for(lambda: len(vips_on(node)) == COUNT, 120, what=f"{COUNT} VIPs bound")
        for vip in ("10.77.8.0", "10.77.11.200", "10.77.15.254"):
            out = client.run(["arping", "-c1", "-w3", "-I", client.ifname, vip], check=False, timeout=10).stdout
            assert node.mac.lower() in out.lower(), (vip, out)
        lbd.stop()
        assert vips_on(node) == set()
        # Per-VIP lines are debug: the info log holds summaries, not 2,048 vip_announced lines.
        lines = [json.loads(line) for line in lbd.log().splitlines() if line.startswith("{")]
        assert not [x for x in lines if x.get("event") == "vip_announced" and x.get("level") == "info"]
        assert any(x.get("event") == "l2_withdrawn" and x.get("withdrawn") == COUNT for x in lines)
    finally:
        lbd.stop()
