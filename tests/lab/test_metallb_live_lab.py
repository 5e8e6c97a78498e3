"""Live mode through the real daemon: MetalLB's resources applied with kubectl to the API-server
emulator become lbd's pools (issue 13).

- an IPAddressPool and an L2Advertisement -> a Service gets an address from the pool, announced;
- an overlapping pool -> the running config stays, the source is degraded, ``lbd-ctl status``
  says the reload was rejected, and ``kubectl get events`` shows a Warning on that pool;
- a pool selecting namespaces by label -> a label change on a namespace moves no Service, and a
  new Service in that namespace gets the selected pool;
- a restart while the API server is down keeps the cluster's pools and every address.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lbd.testing.netlab import LbdNode, require_binary, wait_for

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]

POOLS = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: lan, namespace: metallb-system}
spec:
  addresses: [10.77.0.48/29]
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: lan, namespace: metallb-system}
spec:
  ipAddressPools: [lan]
"""

OVERLAP = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: dup, namespace: metallb-system}
spec:
  addresses: [10.77.0.52/30]
"""

TEAM = """
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: team, namespace: metallb-system}
spec:
  addresses: [10.77.0.64/29]
  serviceAllocation:
    namespaceSelectors:
    - matchLabels: {team: a}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: team, namespace: metallb-system}
spec:
  ipAddressPools: [team]
"""


def service(ns: str, name: str) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                       "spec": {"type": "LoadBalancer", "ports": [{"port": 8080, "protocol": "TCP"}]}})


def row(lbd: LbdNode, name: str) -> dict | None:
    return next((r for r in lbd.status()["services"] if r["name"] == name), None)


def announced(lbd: LbdNode, name: str) -> dict | None:
    r = row(lbd, name)
    return r if r and r["state"] == "announced" else None


def test_metallb_resources_from_the_cluster(lab, tmp_path):
    pytest.importorskip("aiohttp")
    require_binary("kubectl")
    node = lab.add_host("node", ["10.77.0.2/24"])
    kubeconfig = tmp_path / "kubeconfig"
    empty = tmp_path / "manifests"
    empty.mkdir()
    emulator = node.popen([sys.executable, "-m", "tests.kubeapi_emulator", "--port", "16443", "--manifests", str(empty),
                "--token", "t0k", "--tls", "--kubeconfig", str(kubeconfig)], cwd=ROOT,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(kubeconfig.exists, 15, what="emulator up")

    def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
        proc = node.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], input=stdin, check=False)
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    # The file has no pool: every pool comes from the cluster.
    lbd = LbdNode(node, tmp_path, f"""
[[source]]
type = "kubernetes"
name = "k8s"
kubeconfig = "{kubeconfig}"
metallb_resources = true
""", name="node1").start()
    try:
        kubectl("apply", "-f", "-", stdin=POOLS)
        for ns, labels in (("team-a", {"team": "b"}), ("team-b", {})):
            kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                         "metadata": {"name": ns, "labels": labels}}))
        kubectl("apply", "-f", "-", stdin=service("team-a", "web"))
        web = wait_for(lambda: announced(lbd, "k8s/team-a/web"), 20, what="web announced from the cluster's pool")
        assert web["pool"] == "lan" and ipaddress.ip_address(web["addresses"][0]) in ipaddress.ip_network("10.77.0.48/29")
        assert [p["name"] for p in lbd.status()["pools"]] == ["lan"]

        # An overlapping pool: rejected, the running config and the address stay, an Event on the pool.
        kubectl("apply", "-f", "-", stdin=OVERLAP)
        events = wait_for(lambda: "InvalidConfiguration" in (out := kubectl("get", "events", "-n", "metallb-system"))
                          and out, 20, what="InvalidConfiguration Event")
        line = next(x for x in events.splitlines() if "InvalidConfiguration" in x)
        assert "Warning" in line and "ipaddresspool/dup" in line and "overlaps" in line
        status = lbd.status()
        assert status["last_reload"] == "rejected" and any("overlaps" in e for e in status["reload_error"])
        assert next(s for s in status["sources"] if s["name"] == "k8s")["state"] == "degraded"
        assert [p["name"] for p in status["pools"]] == ["lan"]
        assert announced(lbd, "k8s/team-a/web")["addresses"] == web["addresses"]
        ctl = lbd.ctl("status", check=False).stdout
        assert "REJECTED" in ctl and "IPAddressPool metallb-system/dup" in ctl
        kubectl("delete", "ipaddresspool", "dup", "-n", "metallb-system")
        wait_for(lambda: lbd.status()["last_reload"] == "applied", 20, what="the cluster's config current again")

        # A pool selecting namespaces by label: team-b relabelled moves nothing; a new Service there gets it.
        kubectl("apply", "-f", "-", stdin=service("team-b", "api"))
        api = wait_for(lambda: announced(lbd, "k8s/team-b/api"), 20, what="api announced")
        kubectl("apply", "-f", "-", stdin=TEAM)
        wait_for(lambda: [p["name"] for p in lbd.status()["pools"]] == ["lan", "team"], 20, what="pool team applied")
        kubectl("label", "namespace", "team-b", "team=a")
        kubectl("apply", "-f", "-", stdin=service("team-b", "new"))
        new = wait_for(lambda: announced(lbd, "k8s/team-b/new"), 20, what="new announced")
        assert new["pool"] == "team"
        assert ipaddress.ip_address(new["addresses"][0]) in ipaddress.ip_network("10.77.0.64/29")
        assert announced(lbd, "k8s/team-b/api")["addresses"] == api["addresses"], "a label change moves nothing"
        assert announced(lbd, "k8s/team-a/web")["addresses"] == web["addresses"]

        # A restart while the API server is gone: the cluster's pools come from the state dir,
        # and every Service keeps its address (nothing is re-addressed for want of a pool).
        lbd.stop()
        lab.stop(emulator)
        lbd.start()
        wait_for(lambda: [p["name"] for p in lbd.status()["pools"]] == ["lan", "team"], 20, what="pools restored")
        for name, before in (("k8s/team-a/web", web), ("k8s/team-b/api", api), ("k8s/team-b/new", new)):
            again = wait_for(lambda n=name: announced(lbd, n), 20, what=f"{name} announced after the restart")
            assert again["addresses"] == before["addresses"] and again["pool"] == before["pool"], name
    finally:
        lbd.stop()
