"""A node holding hundreds of VIPs: the other node sees every one of them (issue 9, "Cluster facts").

Before the node facts records, the VIPs a node held travelled in memberlist's
512-byte node metadata and became "unknown" past about a hundred. Two real
daemons in namespaces: n1 starts alone and takes all 300 VIPs; n2 joins with a
long failback delay, so n1 keeps them, and n2's ``lbd-ctl members`` must list
all 300 as held by n1, with the same list n1 reports about itself.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from lbd.testing.netlab import Lab, LbdNode, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(150)]

ADDR = {"n1": "10.77.0.11", "n2": "10.77.0.12"}
FIRST_VIP = ipaddress.ip_address("10.77.2.0")
SERVICES = 300


def node_config(name: str) -> str:
    join = ", ".join(f'"{a}:7946"' for a in ADDR.values())
    text = f"""
[node]
name = "{name}"

[cluster]
bind = "{ADDR[name]}:7946"
join = [{join}]
profile = "default"
failback_delay = 600  # n1 keeps what it holds when n2 arrives
allow_plaintext = true  # lab namespaces: plaintext on purpose

[[pool]]
name = "p"
addresses = ["{FIRST_VIP}-{FIRST_VIP + SERVICES - 1}"]

[[l2_advertisement]]
pools = ["p"]
"""
    return text + "".join(f'\n[[service]]\nname = "s{i:03d}"\n' for i in range(SERVICES))


def members(node: LbdNode) -> dict[str, dict]:
    return {m["name"]: m for m in json.loads(node.ctl("--json", "members").stdout)}


def held_by_n1(node: LbdNode) -> list[str]:
    return members(node).get("n1", {}).get("holds", [])


def test_the_other_node_sees_every_vip_a_node_holds(lab: Lab, tmp_path: Path) -> None:
    hosts = {n: lab.add_host(n, [f"{a}/16"]) for n, a in ADDR.items()}
    nodes = {n: LbdNode(hosts[n], tmp_path, node_config(n), name=n) for n in ADDR}
    nodes["n1"].start()
    wait_for(lambda: len(held_by_n1(nodes["n1"])) == SERVICES, 60, interval=0.5, what="n1 to hold every VIP alone")
    nodes["n2"].start()
    wait_for(lambda: members(nodes["n2"]).get("n1", {}).get("state") == "alive", 30, interval=0.2,
             what="n2 to see n1")
    expected = held_by_n1(nodes["n1"])
    try:
        wait_for(lambda: held_by_n1(nodes["n2"]) == expected, 30, interval=0.2, what="n2 to see all that n1 holds")
    except TimeoutError:
        print(json.dumps(members(nodes["n2"]))[:2000])
        raise
    seen = members(nodes["n2"])["n1"]
    assert len(seen["holds"]) == SERVICES > 200 and seen["holds_known"] is True
    # And in the plain table the operator reads, and in n2's status: n1 owns them and n2 none.
    assert nodes["n2"].ctl("members").returncode == 0
    owners = {row["owner"] for row in nodes["n2"].status()["services"]}
    assert owners == {"n1"}, owners
    # Nothing was trimmed for want of room any more.
    assert "node_metadata_too_large" not in nodes["n1"].log()
