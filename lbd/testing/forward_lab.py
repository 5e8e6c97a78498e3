"""A forwarding lab (test tooling, like ``lbd.testing.netlab``): a client, lbd nodes, backends.

Shared by ``tests/lab/test_forward.py`` and ``bench/forward.py``. Everything
lives in network namespaces on one bridge, in 10.77.0.0/16 and 10.88.0.0/16:

- client ``10.77.0.3/24``;
- nodes ``n1``, ``n2``: ``10.77.0.11+i/24`` (VIPs, gossip) and ``10.88.1.1+i/24``
  (towards the backends), ``ip_forward = 1``, no ICMP redirects (a one-armed
  load balancer forwards out of the interface it received on);
- backends ``b1``..``b3``: ``10.88.1.10+i/24`` running ``BACKEND`` below, a TCP
  server that sends its name on connect and echoes lines after it, and (with
  ``udp_port``) ``UDP_BACKEND``, a UDP echo server answering "<name> <client>";
- with ``ipv6=True`` the same layout in fd77::/48 as well: client ``fd77::3/64``,
  VIP ``fd77::100``, nodes ``fd77::11+i/64`` and ``fd77:0:0:1::1+i/64``, backends
  ``fd77:0:0:1::10+i/64``, IPv6 forwarding on the nodes, no IPv6 redirects accepted.

Return paths (``route``): ``"vip"`` routes the client's subnet via the VIP
itself (on-link: the backends resolve it by ARP to whichever node holds it);
``"node"`` routes the client's subnet via n1 (nat
without SNAT); ``"none"`` gives no route at all (nat with SNAT: replies go to
the node's address); ``"direct"`` puts the VIP on the backends' ``lo`` with
``arp_ignore = 1`` / ``arp_announce = 2`` and routes the client's subnet
on-link (dsr: the backends answer the client themselves).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lbd.testing.netlab import Host, Lab, LbdNode, wait_for

CLIENT = "10.77.0.3"
VIP = "10.77.0.100"
NODE_ADDR = {"n1": "10.77.0.11", "n2": "10.77.0.12"}
NODE_BACK = {"n1": "10.88.1.1", "n2": "10.88.1.2"}
BACKENDS = {"b1": "10.88.1.10", "b2": "10.88.1.11", "b3": "10.88.1.12"}
GOSSIP_PORT = 7946
CLIENT6 = "fd77::3"
VIP6 = "fd77::100"
NODE_ADDR6 = {"n1": "fd77::11", "n2": "fd77::12"}
NODE_BACK6 = {"n1": "fd77:0:0:1::1", "n2": "fd77:0:0:1::2"}
BACKENDS6 = {"b1": "fd77:0:0:1::10", "b2": "fd77:0:0:1::11", "b3": "fd77:0:0:1::12"}

# Sends "<name> <client address as seen>\n" on connect, then answers every line with "<name> <line>".
BACKEND = r"""
import socket, socketserver, sys
name, port = sys.argv[1], int(sys.argv[2])
class H(socketserver.StreamRequestHandler):
    def handle(self):
        peer = self.client_address[0].removeprefix("::ffff:")  # an IPv4 client on the dual-stack socket
        self.wfile.write(("%s %s\n" % (name, peer)).encode())
        for line in self.rfile:
            if line == b"SINK\n":  # bulk mode (bench): count the bytes until EOF, answer the count
                total = 0
                while True:
                    chunk = self.rfile.read1(1 << 18)
                    if not chunk:
                        break
                    total += len(chunk)
                self.wfile.write(b"%d\n" % total)
                return
            self.wfile.write(name.encode() + b" " + line)
class S(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    def server_bind(self):  # IPv4 and IPv6 clients alike
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
S(("::", port), H).serve_forever()
"""

# Answers each datagram with "<name> <client address as seen> <datagram>", IPv4 and IPv6, from
# the address the datagram was sent to (IPV6_PKTINFO, as a UDP server behind dsr must: the
# client expects its answer from the VIP, which lives on the backend's lo).
UDP_BACKEND = r"""
import socket, struct, sys
name, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
s.bind(("::", port))
while True:
    data, ancillary, _flags, peer = s.recvmsg(2048, 256)
    info = [d for level, kind, d in ancillary if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO]
    reply = b"%s %s %s" % (name.encode(), peer[0].removeprefix("::ffff:").encode(), data)
    # the destination address, interface 0: the route decides the way out
    cmsg = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info[0][:16] + struct.pack("@I", 0))] if info else []
    s.sendmsg([reply], cmsg, 0, peer)
"""

# spread VIP PORT N: N short connections; {"names": {...}, "errors": k}
# hold VIP PORT N SECONDS: N long-lived connections, a line on each every 0.2 s;
#   {"names": [...], "ok": [exchanges per connection], "failed": [first error or null]}
CLIENT_TOOL = r"""
import json, socket, sys, time
mode, vip, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def connect():
    s = socket.create_connection((vip, port), timeout=5)
    f = s.makefile("rb")
    return s, f, f.readline().decode().split()
if mode == "udp":  # udp VIP PORT N: N datagrams, each from its own socket (a new source port)
    names, peers, errors = {}, {}, 0
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    for i in range(n):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(2)
        try:
            # connected: only an answer from the VIP itself is received (nat must undo its DNAT)
            s.connect((vip, port))
            s.send(b"q%d" % i)
            name, peer, echo = s.recv(2048).decode().split()
            if echo != "q%d" % i:
                raise ValueError(echo)
            names[name] = names.get(name, 0) + 1
            peers[peer] = peers.get(peer, 0) + 1
        except (OSError, ValueError):
            errors += 1
        finally:
            s.close()
    print(json.dumps({"names": names, "peers": peers, "errors": errors}))
elif mode == "bulk":  # bulk VIP PORT SECONDS: bytes/s of one upload
    s, f, _ = connect()
    s.sendall(b"SINK\n")
    chunk, sent, start = b"\0" * (1 << 18), 0, time.monotonic()
    while time.monotonic() - start < n:
        s.sendall(chunk)
        sent += len(chunk)
    s.shutdown(socket.SHUT_WR)
    got = int(f.readline())
    print(json.dumps({"bytes": got, "seconds": time.monotonic() - start}))
elif mode == "spread":
    names, peers, errors = {}, {}, 0
    for _ in range(n):
        try:
            s, f, (name, peer) = connect()
            names[name] = names.get(name, 0) + 1
            peers[peer] = peers.get(peer, 0) + 1
            s.close()
        except (OSError, ValueError):
            errors += 1
    print(json.dumps({"names": names, "peers": peers, "errors": errors}))
else:
    seconds = float(sys.argv[5])
    conns, names = [], []
    for _ in range(n):
        s, f, (name, _peer) = connect()
        s.settimeout(10)
        conns.append((s, f)); names.append(name)
    print(json.dumps({"ready": names}), flush=True)
    ok, failed = [0] * n, [None] * n
    end = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < end:
        seq += 1
        for i, (s, f) in enumerate(conns):
            if failed[i]:
                continue
            try:
                s.sendall(b"%d\n" % seq)
                line = f.readline()
                if line.strip() != (names[i] + " %d" % seq).encode():
                    failed[i] = "bad answer %r" % line
                else:
                    ok[i] += 1
            except OSError as exc:
                failed[i] = repr(exc)
        time.sleep(0.2)
    print(json.dumps({"names": names, "ok": ok, "failed": failed}), flush=True)
"""


def backend_entries(weights: dict[str, int], port: int, addresses: dict[str, str] = BACKENDS) -> str:
    items = [f'{{ address = "{addresses[b]}", port = {port}, weight = {w} }}' for b, w in weights.items()]
    return "[" + ", ".join(items) + "]"


def node_config(name: str, *, backends: str, forward: str = "nat", snat: bool = False, cluster: tuple[str, ...] = (),
                check: str = "interval = 0.5\ntimeout = 0.4\nrise = 1\nfall = 2", vip_port: int = 80,
                extra: str = "", vip: str = VIP, protocol: str = "tcp") -> str:
    text = f'[node]\nname = "{name}"\n'
    if cluster:
        join = ", ".join(f'"{NODE_ADDR[n]}:{GOSSIP_PORT}"' for n in cluster)
        text += (f'\n[cluster]\nbind = "{NODE_ADDR[name]}:{GOSSIP_PORT}"\njoin = [{join}]\n'
                 'profile = "fast"\nfailback_delay = "never"\nallow_plaintext = true\n')
    text += f"""
[[pool]]
name = "p"
addresses = ["{VIP}-10.77.0.109", "{VIP6}-fd77::109"]

[[l2_advertisement]]
pools = ["p"]

[[service]]
name = "web"
addresses = ["{vip}"]
ports = ["{protocol}/{vip_port}"]
forward = "{forward}"
snat = {str(snat).lower()}
backends = {backends}

[service.backend_check]
{check}
"""
    return text + extra


@dataclass
class ForwardLab:
    lab: Lab
    client: Host
    nodes: dict[str, Host]
    backends: dict[str, Host]
    servers: dict[str, subprocess.Popen[bytes]]
    lbd: dict[str, LbdNode]
    port: int
    udp_port: int | None = None

    def spread(self, n: int, port: int | None = None, vip: str = VIP) -> dict:
        out = self.client.run([sys.executable, "-c", CLIENT_TOOL, "spread", vip, str(port or 80), str(n)],
                              timeout=120).stdout
        return json.loads(out)

    def udp(self, n: int, port: int, vip: str = VIP) -> dict:
        """``n`` UDP requests to ``vip``:``port``, each from a new source port: which backends answered."""
        out = self.client.run([sys.executable, "-c", CLIENT_TOOL, "udp", vip, str(port), str(n)],
                              timeout=120).stdout
        return json.loads(out)

    def hold(self, n: int, seconds: float, port: int | None = None, vip: str = VIP) -> subprocess.Popen[str]:
        return self.client.popen([sys.executable, "-c", CLIENT_TOOL, "hold", vip, str(port or 80), str(n),
                                  str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def kill_backend(self, name: str) -> None:
        self.lab.stop(self.servers[name])

    def start_backend(self, name: str) -> None:
        self.servers[name] = self.backends[name].popen(
            [sys.executable, "-c", BACKEND, name, str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.udp_port is not None:
            self.backends[name].popen([sys.executable, "-c", UDP_BACKEND, name, str(self.udp_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def build(lab: Lab, workdir: Path, *, nodes: tuple[str, ...], route: str, port: int, configs: dict[str, str],
          start: bool = True, ipv6: bool = False, udp_port: int | None = None) -> ForwardLab:
    client = lab.add_host("client", [f"{CLIENT}/24"] + ([f"{CLIENT6}/64"] if ipv6 else []))
    if ipv6:
        client.run(["sysctl", "-qw", "net.ipv6.conf.all.accept_redirects=0"])
    hosts: dict[str, Host] = {}
    for name in nodes:
        v6 = [f"{NODE_ADDR6[name]}/64", f"{NODE_BACK6[name]}/64"] if ipv6 else []
        host = lab.add_host(name, [f"{NODE_ADDR[name]}/24", f"{NODE_BACK[name]}/24", *v6])
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                    "net.ipv4.conf.eth0.send_redirects=0") + (("net.ipv6.conf.all.forwarding=1",) if ipv6 else ()):
            host.run(["sysctl", "-qw", key])
        hosts[name] = host
    backends: dict[str, Host] = {}
    for name, address in BACKENDS.items():
        host = lab.add_host(name, [f"{address}/24"] + ([f"{BACKENDS6[name]}/64"] if ipv6 else []))
        host.run(["sysctl", "-qw", "net.ipv4.conf.all.accept_redirects=0"])
        if ipv6:  # a node forwarding out of the interface it received on sends redirects: ignore them
            for key in ("net.ipv6.conf.all.accept_redirects=0", "net.ipv6.conf.eth0.accept_redirects=0"):
                host.run(["sysctl", "-qw", key])
        if route == "node":
            host.run(["ip", "route", "add", "10.77.0.0/24", "via", NODE_BACK[nodes[0]]])
            if ipv6:
                host.run(["ip", "-6", "route", "add", "fd77::/64", "via", NODE_BACK6[nodes[0]]])
        elif route == "vip":
            # nat with a gateway that follows the VIP: replies reach whichever node holds it.
            host.run(["ip", "route", "add", "10.77.0.0/24", "via", VIP, "dev", "eth0", "onlink"])
            if ipv6:
                host.run(["ip", "-6", "route", "add", "fd77::/64", "via", VIP6, "dev", "eth0", "onlink"])
        elif route == "direct":
            # DSR backends (docs/forwarding.md): the VIP on lo, never answered for by ARP.
            for key in ("net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
                        "net.ipv4.conf.eth0.arp_ignore=1", "net.ipv4.conf.eth0.arp_announce=2"):
                host.run(["sysctl", "-qw", key])
            host.run(["ip", "addr", "add", f"{VIP}/32", "dev", "lo"])
            host.run(["ip", "route", "add", "10.77.0.0/24", "dev", "eth0"])
            if ipv6:  # Linux answers Neighbor Solicitations only for the receiving interface's addresses
                host.run(["ip", "addr", "add", f"{VIP6}/128", "dev", "lo", "nodad"])
                host.run(["ip", "-6", "route", "add", "fd77::/64", "dev", "eth0"])
        backends[name] = host
    fl = ForwardLab(lab, client, hosts, backends, {}, {}, port, udp_port)
    for name in BACKENDS:
        fl.start_backend(name)
    for name in nodes:
        fl.lbd[name] = LbdNode(hosts[name], workdir, configs[name], name=name)
    if start:
        for name in nodes:
            fl.lbd[name].start()
    return fl


def backend_rows(node: LbdNode) -> list[dict]:
    for row in node.status()["services"]:
        if row["name"] == "static/web":
            return row.get("backends") or []
    return []


def wait_healthy(node: LbdNode, count: int, timeout: float = 20.0) -> list[dict]:
    return wait_for(lambda: (rows := backend_rows(node)) and sum(r["health"] == "up" for r in rows) == count
                    and rows, timeout, interval=0.1, what=f"{count} backends up on {node.name}")


def holds_vip(host: Host, vip: str = VIP) -> bool:
    out = host.run(["ip", "-j", "addr", "show", "dev", "eth0"]).stdout
    return any(a.get("local") == vip for link in json.loads(out) for a in link.get("addr_info", []))


def vip_holder(fl: ForwardLab, vip: str = VIP) -> str | None:
    """The node holding the VIP, when exactly one does."""
    holders = [name for name, host in fl.nodes.items() if holds_vip(host, vip)]
    return holders[0] if len(holders) == 1 else None
