"""ECMP: two lbd nodes announce one VIP to BIRD with multipath; the router's
kernel holds both next hops and a client's connections reach both nodes.

    client 10.88.0.10 --(gw 10.88.0.1)--> router (BIRD, merge paths, L4 hash)
                                             |-- nodeA 10.77.0.2 (VIP on lo, HTTP server "nodeA")
                                             `-- nodeB 10.77.0.3 (VIP on lo, HTTP server "nodeB")
All on the lab's one bridge; the client is on another subnet so that its
traffic to the VIP is routed by the router.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from interop.bgp_peers import BirdPeer, Neighbor, PeerSpec
from interop.bgp_speakers import LbdSpeaker, SessionSpec

from lbd.testing.netlab import require_binary, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.interop]

ROUTER_AS, NODE_AS = 4200000002, 4200000001
VIP = "10.77.100.1"
PORT = 8080


def test_two_nodes_one_vip_ecmp(lab, tmp_path):  # type: ignore[no-untyped-def]
    require_binary("bird", "birdc", "curl")
    router = lab.add_host("router", ["10.77.0.1/24", "10.88.0.1/24"])
    for key, value in (
        ("net.ipv4.ip_forward", 1),
        ("net.ipv4.fib_multipath_hash_policy", 1),  # L4 hash: different source ports spread
        ("net.ipv4.conf.all.send_redirects", 0),
        ("net.ipv4.conf.eth0.send_redirects", 0),
    ):
        router.run(f"sysctl -qw {key}={value}")
    client = lab.add_host("client", ["10.88.0.10/24"])
    client.run("ip route add default via 10.88.0.1")

    spec = PeerSpec(asn=ROUTER_AS, router_id="10.77.0.1", multipath=True, install_kernel=True,
                    neighbors=[Neighbor("10.77.0.2", NODE_AS, graceful_restart=False),
                               Neighbor("10.77.0.3", NODE_AS, graceful_restart=False)])
    bird = BirdPeer(router, spec).start()

    speakers = []
    for name, addr in (("nodeA", "10.77.0.2"), ("nodeB", "10.77.0.3")):
        node = lab.add_host(name, [f"{addr}/24"])
        node.run("ip route add 10.88.0.0/24 via 10.77.0.1")
        node.run(f"ip addr add {VIP}/32 dev lo")
        docroot = str(tmp_path / name)
        os.makedirs(docroot)
        with open(os.path.join(docroot, "who"), "w") as f:
            f.write(name)
        node.popen(["python3", "-m", "http.server", str(PORT), "--bind", VIP, "--directory", docroot],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sess = SessionSpec(peer_address="10.77.0.1", peer_asn=ROUTER_AS, my_asn=NODE_AS,
                           local_address=addr, router_id=addr)
        speakers.append(LbdSpeaker(node, sess, [f"{VIP}/32"]).start())
    for spk in speakers:
        spk.wait_event("established", timeout=30)

    routes = bird.wait_routes(lambda rs: f"{VIP}/32" in rs and len(rs[f"{VIP}/32"].next_hops) == 2,
                              what="both paths at BIRD")
    assert routes[f"{VIP}/32"].next_hops == ("10.77.0.2", "10.77.0.3")

    def kernel_hops() -> set[str]:
        out = router.run(f"ip route show {VIP}").stdout
        return {w for line in out.splitlines() for w in line.split() if w.startswith("10.77.0.")}

    wait_for(lambda: kernel_hops() == {"10.77.0.2", "10.77.0.3"}, timeout=15, what="ECMP route in the router's kernel")

    # Each server answers on its own node (asked from inside the node, where the VIP is local).
    for spk in speakers:
        wait_for(lambda h=spk.host: h.run(["curl", "-s", "-m", "2", f"http://{VIP}:{PORT}/who"], check=False).returncode == 0,
                 timeout=15, what=f"HTTP server on {spk.host.name}")

    seen: dict[str, int] = {}
    for i in range(32):  # bounded: 32 connections, each from its own source port
        res = client.run(["curl", "-s", "-m", "3", "--local-port", str(40000 + i), f"http://{VIP}:{PORT}/who"], check=False)
        if res.returncode == 0:
            seen[res.stdout.strip()] = seen.get(res.stdout.strip(), 0) + 1
        if len(seen) == 2 and i >= 7:
            break
    assert set(seen) == {"nodeA", "nodeB"}, seen

    # One node withdraws: the router falls back to the other alone.
    speakers[0].set_prefixes([])
    wait_for(lambda: kernel_hops() == {"10.77.0.3"}, timeout=15, what="single path after a withdrawal")
    res = client.run(["curl", "-s", "-m", "3", f"http://{VIP}:{PORT}/who"])
    assert res.stdout.strip() == "nodeB"
