"""``make demo``: run the real lbd in a throw-away network-namespace lab.

A node and a client on a bridge (10.77.0.0/24, fd77::/64). lbd runs on the
node with a demo config, allocates VIPs from a pool, binds and announces them;
a web server on the node answers on every address; the client reaches it
through the VIPs (ARP and NDP resolve to the node's MAC). Then
``lbd-ctl status`` and a clean stop (every VIP withdrawn). Everything is
removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lbd.testing.netlab import Lab, wait_for

DEMO_CONFIG = """\
# The demo's /etc/lbd.toml: one pool on the LAN, announced by ARP/NDP.
[node]
name = "node1"
labels = {{ rack = "demo" }}
state_dir = "{state}"
control_socket = "{socket}"

[[pool]]
name = "lan"
addresses = ["10.77.0.48/28", "fd77::48-fd77::4f"]

[[l2_advertisement]]
name = "lan"
pools = ["lan"]

[[service]]
name = "web"
ports = ["tcp/80"]
ip_families = ["ipv4", "ipv6"]

[[service]]
name = "api"
addresses = ["10.77.0.60"]
ports = ["tcp/8080"]

[log]
format = "console"
"""


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=float, default=0, help="seconds to keep the lab up before tearing down")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo builds network namespaces: run it as root (sudo make demo)", file=sys.stderr)
        return 1
    bindir = Path(sys.executable).parent
    lbd_bin, ctl_bin = str(bindir / "lbd"), str(bindir / "lbd-ctl")
    work = Path(tempfile.mkdtemp(prefix="lbd-demo-"))
    socket_path = work / "lbd.sock"
    config = work / "lbd.toml"
    config.write_text(DEMO_CONFIG.format(state=work / "state", socket=socket_path))
    with Lab() as lab:
        say("lab: a node (10.77.0.2, fd77::2) and a client (10.77.0.3, fd77::3) on a bridge")
        node = lab.add_host("node", ["10.77.0.2/24", "fd77::2/64"])
        client = lab.add_host("client", ["10.77.0.3/24", "fd77::3/64"])
        say(f"lbd check --config {config}")
        subprocess.run([lbd_bin, "--config", str(config), "check"], check=True)
        say("starting lbd on the node, and a web server on the node")
        node.popen([sys.executable, "-m", "http.server", "--bind", "::", "80", "--directory", str(work)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = open(work / "lbd.log", "w")
        daemon = node.popen([lbd_bin, "--config", str(config), "run"], stdout=log, stderr=subprocess.STDOUT)

        def status() -> dict | None:
            out = subprocess.run([ctl_bin, "--socket", str(socket_path), "--json", "status"],
                                 capture_output=True, text=True)
            return json.loads(out.stdout) if out.returncode == 0 else None

        wait_for(lambda: (s := status()) and all(x["state"] == "announced" for x in s["services"]),
                 timeout=20, what="lbd to announce every service")
        say("lbd-ctl status")
        subprocess.run([ctl_bin, "--socket", str(socket_path), "status"], check=True)
        (work / "index.html").write_text("hello from node1, through an lbd VIP\n")
        for service in status()["services"]:  # type: ignore[index]
            for address in service["addresses"]:
                host = f"[{address}]" if ":" in address else address
                say(f"client: curl http://{host}/  ({service['name']})")
                out = client.run(["curl", "-sS", "--max-time", "5", f"http://{host}:80/"], check=False)
                print(out.stdout.strip() or out.stderr.strip())
        say("client's neighbour table: the VIPs resolve to the node's MAC " + node.mac)
        print(client.run("ip neigh show dev eth0").stdout.strip())
        if args.keep:
            say(f"keeping the lab for {args.keep:g}s (namespaces: {', '.join(h.netns for h in lab.hosts.values())})")
            time.sleep(args.keep)
        say("stopping lbd (SIGTERM): every VIP is withdrawn")
        lab.stop(daemon)
        print(node.run("ip -br addr show dev eth0").stdout.strip())
        log.close()
        say("lbd's log")
        print((work / "lbd.log").read_text().strip())
    shutil.rmtree(work, ignore_errors=True)
    say("lab removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
