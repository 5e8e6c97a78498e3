"""Sources through the real daemon in a namespace lab.

- directory: a drop-in file saved with an atomic rename makes a VIP the client
  reaches; deleting the file withdraws it.
- kubernetes: the API-server emulator runs in the node's namespace; a Service
  created through the API becomes reachable through its VIP from the client.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbd.testing.netlab import LbdNode, require_binary, wait_for

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
[[pool]]
name = "lan"
addresses = ["10.77.0.48/28"]

[[l2_advertisement]]
pools = ["lan"]
"""


@pytest.fixture
def net(lab, tmp_path):
    require_binary("curl")
    node = lab.add_host("node", ["10.77.0.2/24"])
    client = lab.add_host("client", ["10.77.0.3/24"])
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("served by node1\n")
    node.popen([sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "8080", "--directory",
                str(tmp_path / "www")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return lab, node, client


def row(lbd: LbdNode, name: str) -> dict | None:
    for r in lbd.status()["services"]:
        if r["name"] == name:
            return r
    return None


def reachable(client, vip: str) -> bool:
    out = client.run(["curl", "-sS", "--max-time", "2", f"http://{vip}:8080/"], check=False).stdout
    return "served by node1" in out


def test_directory_dropin_end_to_end(net, tmp_path):
    lab, node, client = net
    dropins = tmp_path / "services.d"
    dropins.mkdir()
    lbd = LbdNode(node, tmp_path, CONFIG + f"""
[[source]]
type = "directory"
name = "dropins"
path = "{dropins}"
""", name="node1").start()
    try:
        tmp = dropins / ".web.toml.tmp"
        tmp.write_text('[[service]]\nname = "web"\naddresses = ["10.77.0.50"]\nports = ["tcp/8080"]\n')
        os.replace(tmp, dropins / "web.toml")
        r = wait_for(lambda: (x := row(lbd, "dropins/web")) and x["state"] == "announced" and x, 15,
                     what="dropins/web announced")
        assert r["addresses"] == ["10.77.0.50"]
        assert wait_for(lambda: reachable(client, "10.77.0.50"), 10, what="VIP reachable")
        (dropins / "web.toml").unlink()
        wait_for(lambda: row(lbd, "dropins/web") is None, 15, what="dropins/web withdrawn")
    finally:
        lbd.stop()


def test_kubernetes_service_reachable_through_vip(net, tmp_path):
    pytest.importorskip("aiohttp")
    lab, node, client = net
    kubeconfig = tmp_path / "kubeconfig"
    empty = tmp_path / "manifests"
    empty.mkdir()
    node.popen([sys.executable, "-m", "tests.kubeapi_emulator", "--port", "16443", "--manifests", str(empty),
                "--token", "t0k", "--kubeconfig", str(kubeconfig)], cwd=ROOT,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(kubeconfig.exists, 15, what="emulator up")
    lbd = LbdNode(node, tmp_path, CONFIG + f"""
[[source]]
type = "kubernetes"
name = "k8s"
kubeconfig = "{kubeconfig}"
""", name="node1").start()
    try:
        service = {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": "default",
                                "annotations": {"metallb.io/loadBalancerIPs": "10.77.0.52"}},
                   "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                            "ports": [{"port": 8080, "protocol": "TCP"}]}}
        node.run(["curl", "-sS", "--fail", "-X", "POST", "-H", "Authorization: Bearer t0k",
                  "-H", "Content-Type: application/json", "--data", json.dumps(service),
                  "http://127.0.0.1:16443/api/v1/namespaces/default/services"])
        r = wait_for(lambda: (x := row(lbd, "k8s/default/web")) and x["state"] == "announced" and x, 15,
                     what="k8s/default/web announced")
        assert r["addresses"] == ["10.77.0.52"]
        assert wait_for(lambda: reachable(client, "10.77.0.52"), 10, what="VIP reachable")
        src = next(s for s in lbd.status()["sources"] if s["name"] == "k8s")
        assert src["state"] == "ok" and src["services"] == 1

        # The daemon (the single node is the cluster's writer) writes the address back.
        def ingress() -> list:
            out = node.run(["curl", "-sS", "-H", "Authorization: Bearer t0k",
                            "http://127.0.0.1:16443/api/v1/namespaces/default/services/web"], check=False).stdout
            try:
                return json.loads(out).get("status", {}).get("loadBalancer", {}).get("ingress") or []
            except json.JSONDecodeError:
                return []

        # ipMode: VIP is the API server's default (the emulator defaults like it).
        assert wait_for(ingress, 15, what="status.loadBalancer.ingress written") == [{"ip": "10.77.0.52", "ipMode": "VIP"}]

        # Who announces, from the real daemon's layer-2 owner: the annotation and MetalLB's Event.
        def get(path: str) -> dict:
            out = node.run(["curl", "-sS", "-H", "Authorization: Bearer t0k", f"http://127.0.0.1:16443{path}"],
                           check=False).stdout
            try:
                return json.loads(out)
            except json.JSONDecodeError:
                return {}

        assert wait_for(lambda: get("/api/v1/namespaces/default/services/web").get("metadata", {}).get(
            "annotations", {}).get("lbd.io/announcing-nodes"), 15, what="announcing-nodes annotation") == "node1"
        events = wait_for(lambda: [e for e in get("/api/v1/namespaces/default/events").get("items", [])
                                   if e.get("reason") == "nodeAssigned"], 15, what="nodeAssigned Event")
        assert events[0]["message"] == 'announcing from node "node1" with protocol "layer2"'
    finally:
        lbd.stop()
