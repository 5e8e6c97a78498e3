"""Real BGP routers from Debian packages, run inside a lab namespace.

Each peer is configured with lbd as its neighbour(s) and read back through the
router's own CLI (JSON where the CLI offers it), so the tests see what the
router really holds:

* BIRD 2       ``bird -f -c conf -s sock``; ``birdc -s sock show route all`` (text only)
* FRR 8        ``zebra`` + ``bgpd`` with a private pathspace/vty dir; ``vtysh ... json``
* GoBGP 3      ``gobgpd -f conf.toml``; ``gobgp global rib -j``
* OpenBGPD 7   ``bgpd -d -f conf``; ``bgpctl -j -s sock show rib detail``

Processes are started with ``host.popen`` so the lab ends them; configs live in
a temporary directory. ``routes()`` returns one ``PeerRoute`` per prefix: the
attributes of the best path and the next hops of every path (ECMP view).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lbd.testing.netlab import Host, wait_for


@dataclass(frozen=True)
class PeerRoute:
    prefix: str
    next_hops: tuple[str, ...]
    communities: tuple[str, ...] = ()  # "A:B"
    large_communities: tuple[str, ...] = ()  # "A:B:C"
    local_pref: int | None = None


@dataclass(frozen=True)
class Neighbor:
    """lbd (or another speaker) as the router sees it."""

    address: str
    asn: int
    password: str | None = None
    hold_time: int = 9
    graceful_restart: bool = True
    passive: bool = True  # the router waits for the neighbour to connect


@dataclass
class PeerSpec:
    asn: int
    router_id: str  # the router's IPv4 address (also its IPv4 session address)
    address6: str | None = None  # its IPv6 session address, for IPv6 neighbours
    neighbors: list[Neighbor] = field(default_factory=list)
    multipath: bool = False
    install_kernel: bool = False  # put received routes into the router's kernel (BIRD, FRR)
    restart_time: int = 60  # how long the router keeps a restarting speaker's routes (GR)


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def _norm_prefix(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def _pick_next_hop(candidates: Sequence[str]) -> str | None:
    """The global next hop: an IPv6 MP_REACH may carry a link-local one too (RFC 2545)."""
    for c in candidates:
        try:
            if not ipaddress.ip_address(c).is_link_local:
                return str(ipaddress.ip_address(c))
        except ValueError:
            continue
    return None


def scratch_dir(owner: object, prefix: str, host: Host | None = None) -> str:
    """A temporary directory removed when ``owner`` is garbage-collected (or at exit).

    With ``host``, its lab keeps ``owner`` alive: the directory (configs, control
    sockets) then lasts as long as the lab's processes, even if the caller drops
    its reference.
    """
    path = tempfile.mkdtemp(prefix=prefix)
    weakref.finalize(owner, shutil.rmtree, path, True)
    if host is not None:
        keep = host.lab.__dict__.setdefault("_interop_keep", [])
        keep.append(owner)
    return path


class Peer:
    name = "peer"
    binaries: tuple[str, ...] = ()

    def __init__(self, host: Host, spec: PeerSpec) -> None:
        self.host = host
        self.spec = spec
        self.dir = scratch_dir(self, f"lbd-{self.name}-", host)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_path = os.path.join(self.dir, "daemon.log")

    # -- lifecycle -------------------------------------------------------

    def start(self) -> Peer:
        raise NotImplementedError

    def _popen(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            proc = self.host.popen(list(argv), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            self.host.lab.stop(proc)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def freeze(self) -> None:
        """SIGSTOP the BGP process: it stops sending KEEPALIVEs without closing TCP."""
        for pid in self._bgp_pids():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._bgp_pids():
            os.kill(pid, signal.SIGCONT)

    def _bgp_pids(self) -> list[int]:
        """PIDs of the processes that run BGP sessions (children of our popen included)."""
        pids: list[int] = []
        for proc in self.procs:
            pids.extend(_process_tree(proc.pid))
        return pids

    def _wait(self, predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
        try:
            wait_for(predicate, timeout=timeout, what=what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; {self.name} log:\n{self.log()}") from None

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    # -- readback ----------------------------------------------------------

    def routes(self) -> dict[str, PeerRoute]:
        raise NotImplementedError

    def session_state(self, neighbor: str) -> str:
        """'established' or the router's own word for any other state."""
        raise NotImplementedError

    def wait_established(self, neighbor: str, timeout: float = 30.0) -> None:
        self._wait(lambda: self.session_state(neighbor) == "established",
                   f"{self.name} session with {neighbor} established", timeout=timeout)

    def wait_routes(self, predicate: Callable[[dict[str, PeerRoute]], bool], timeout: float = 20.0,
                    what: str = "routes") -> dict[str, PeerRoute]:
        last: dict[str, PeerRoute] = {}

        def check() -> bool:
            nonlocal last
            last = self.routes()
            return predicate(last)

        try:
            wait_for(check, timeout=timeout, interval=0.2, what=what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; {self.name} holds {last}") from None
        return last

    def cli(self, argv: Sequence[str], timeout: float = 10.0) -> str:
        return self.host.run(list(argv), timeout=timeout).stdout


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc (our processes only)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


# ---------------------------------------------------------------------------
# BIRD 2
# ---------------------------------------------------------------------------


class BirdPeer(Peer):
    name = "bird"
    binaries = ("bird", "birdc")

    def __init__(self, host: Host, spec: PeerSpec, extra_config: str = "") -> None:
        super().__init__(host, spec)
        self.sock = os.path.join(self.dir, "bird.ctl")
        self.conf = os.path.join(self.dir, "bird.conf")
        self.extra_config = extra_config

    def protocol_name(self, neighbor: str) -> str:
        return "n_" + re.sub(r"[^0-9a-zA-Z]", "_", neighbor)

    def config(self) -> str:
        s = self.spec
        merge = "merge paths on;" if s.multipath else ""
        lines = [
            f"router id {s.router_id};",
            "protocol device { scan time 10; }",
            # Connected networks, so that iBGP next hops resolve (gateway direct below anyway).
            # Not lo: a VIP bound there would shadow the same VIP learnt from a kernel
            # table (direct routes have preference 240, kernel ones 10).
            'protocol direct { ipv4; ipv6; interface -"lo", "*"; }',
        ]
        if s.install_kernel:
            lines += [
                f"protocol kernel k4 {{ ipv4 {{ import none; export where source = RTS_BGP; }}; {merge} }}",
                f"protocol kernel k6 {{ ipv6 {{ import none; export where source = RTS_BGP; }}; {merge} }}",
            ]
        for n in s.neighbors:
            fam = "ipv4" if _family(n.address) == 4 else "ipv6"
            local = s.router_id if fam == "ipv4" else s.address6
            ibgp = n.asn == s.asn
            opts = [
                f"local {local} as {s.asn};",
                f"neighbor {n.address} as {n.asn};",
                f"hold time {n.hold_time};",
                "connect retry time 1;",
                "error wait time 1, 2;",
            ]
            if n.password:
                opts.append(f'password "{n.password}";')
            if n.graceful_restart:
                opts.append(f"graceful restart on; graceful restart time {s.restart_time};")
            # lbd connects: the router waiting avoids connection collisions and makes
            # "lbd restarted" the only way a session comes back.
            if n.passive:
                opts.append("passive on;")
            chan = "import all; export none;"
            if ibgp:
                # BIRD treats iBGP as multihop by default; the lab's routers are on-link.
                opts.append("direct;")
            lines.append(f"protocol bgp {self.protocol_name(n.address)} {{ " + " ".join(opts) + f" {fam} {{ {chan} }}; }}")
        lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def start(self) -> BirdPeer:
        with open(self.conf, "w") as f:
            f.write(self.config())
        self._popen(["bird", "-f", "-c", self.conf, "-s", self.sock])
        self._wait(lambda: self._birdc_ok(), "bird control socket", timeout=10)
        return self

    def _birdc_ok(self) -> bool:
        return os.path.exists(self.sock) and self.host.run(["birdc", "-s", self.sock, "show", "status"], check=False).returncode == 0

    def birdc(self, *args: str) -> str:
        return self.cli(["birdc", "-s", self.sock, *args])

    def session_state(self, neighbor: str) -> str:
        out = self.birdc("show", "protocols", "all", self.protocol_name(neighbor))
        m = re.search(r"BGP state:\s+(\S+)", out)
        return (m.group(1).lower() if m else "unknown")

    def route_count(self) -> int:
        """Cheap: ``show route count`` (what the benchmark polls)."""
        out = self.birdc("show", "route", "count")
        m = re.search(r"(\d+) of (\d+) routes for (\d+) networks", out)
        return int(m.group(3)) if m else 0

    def routes(self) -> dict[str, PeerRoute]:
        out = self.birdc("show", "route", "all")
        return parse_bird_routes(out)


_BIRD_ROUTE = re.compile(r"^(\S+)?\s+(unicast|blackhole|unreachable|prohibit)\s+\[(\S+)")


def parse_bird_routes(text: str) -> dict[str, PeerRoute]:
    """``birdc show route all`` text into routes (BIRD 2 prints no JSON)."""
    prefixes: dict[str, list[dict[str, object]]] = {}
    current: dict[str, object] | None = None
    prefix: str | None = None
    for raw in text.splitlines():
        if not raw.strip() or raw.startswith(("Table ", "BIRD ", "Access restricted")):
            continue
        m = _BIRD_ROUTE.match(raw)
        if m:
            if m.group(1):
                try:
                    prefix = _norm_prefix(m.group(1))
                except ValueError:
                    prefix = None
                    continue
            if prefix is None:
                continue
            current = {"best": " * " in raw, "vias": [], "attrs": {}}
            prefixes.setdefault(prefix, []).append(current)
            continue
        if current is None:
            continue
        line = raw.strip()
        if line.startswith("via "):
            current["vias"].append(line.split()[1])  # type: ignore[union-attr]
        elif ":" in line and line.startswith("BGP."):
            key, _, value = line.partition(":")
            current["attrs"][key.strip()] = value.strip()  # type: ignore[index]
    result: dict[str, PeerRoute] = {}
    for prefix, paths in prefixes.items():
        paths = [p for p in paths if p["attrs"]]  # BGP paths only (not direct/static)
        if not paths:
            continue
        best = next((p for p in paths if p["best"]), paths[0])
        hops: set[str] = set()
        for p in paths:
            attrs = p["attrs"]
            nh = attrs.get("BGP.next_hop")  # type: ignore[union-attr]
            if nh:
                picked = _pick_next_hop(str(nh).split())
                if picked:
                    hops.add(picked)
            else:
                hops.update(str(v) for v in p["vias"])  # type: ignore[union-attr]
        attrs = best["attrs"]
        comms = tuple(f"{a}:{b}" for a, b in re.findall(r"\((\d+),\s*(\d+)\)", attrs.get("BGP.community", "")))  # type: ignore[union-attr]
        large = tuple(
            f"{a}:{b}:{c}" for a, b, c in re.findall(r"\((\d+),\s*(\d+),\s*(\d+)\)", attrs.get("BGP.large_community", ""))  # type: ignore[union-attr]
        )
        lp = attrs.get("BGP.local_pref")  # type: ignore[union-attr]
        result[prefix] = PeerRoute(prefix, tuple(sorted(hops)), comms, large, int(lp) if lp else None)
    return result


# ---------------------------------------------------------------------------
# FRR
# ---------------------------------------------------------------------------


class FrrPeer(Peer):
    name = "frr"
    binaries = ("/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "vtysh")

    def __init__(self, host: Host, spec: PeerSpec, extra_bgp: str = "", extra_zebra: str = "") -> None:
        super().__init__(host, spec)
        self.vty = os.path.join(self.dir, "vty")
        os.makedirs(self.vty)
        # FRR drops to user frr: it must be able to write its sockets and pid files.
        shutil.chown(self.dir, "frr", "frr")
        shutil.chown(self.vty, "frr", "frr")
        self.zsock = os.path.join(self.vty, "zserv.api")
        self.extra_bgp = extra_bgp
        self.extra_zebra = extra_zebra

    def config(self) -> str:
        s = self.spec
        lines = [
            "frr defaults traditional",
            "log stdout debugging" if os.environ.get("LBD_FRR_DEBUG") else "log stdout informational",
            f"router bgp {s.asn}",
            f" bgp router-id {s.router_id}",
            " no bgp ebgp-requires-policy",
            " no bgp network import-check",
            " bgp graceful-restart",
            f" bgp graceful-restart restart-time {s.restart_time}",
            f" bgp graceful-restart stalepath-time {s.restart_time}",
        ]
        if s.multipath:
            lines += [" bgp bestpath as-path multipath-relax"]
        for n in s.neighbors:
            lines.append(f" neighbor {n.address} remote-as {n.asn}")
            lines.append(f" neighbor {n.address} timers {max(1, n.hold_time // 3)} {n.hold_time}")
            lines.append(f" neighbor {n.address} timers connect 1")
            if n.passive:
                lines.append(f" neighbor {n.address} passive")
            if n.password:
                lines.append(f" neighbor {n.address} password {n.password}")
        for fam in ("ipv4", "ipv6"):
            lines.append(f" address-family {fam} unicast")
            if s.multipath:
                lines += ["  maximum-paths 8", "  maximum-paths ibgp 8"]
            for n in s.neighbors:
                if _family(n.address) == (4 if fam == "ipv4" else 6):
                    lines.append(f"  neighbor {n.address} activate")
                    lines.append(f"  neighbor {n.address} soft-reconfiguration inbound")
                else:
                    lines.append(f"  no neighbor {n.address} activate")
            lines.append(" exit-address-family")
        lines.append(self.extra_bgp)
        return "\n".join(lines) + "\n"

    def start(self) -> FrrPeer:
        zconf = os.path.join(self.dir, "zebra.conf")
        bconf = os.path.join(self.dir, "bgpd.conf")
        with open(zconf, "w") as f:
            f.write("log stdout informational\n" + self.extra_zebra + "\n")
        with open(bconf, "w") as f:
            f.write(self.config())
        for path in (zconf, bconf):
            shutil.chown(path, "frr", "frr")
        common = ["--vty_socket", self.vty, "-z", self.zsock, "-P", "0"]
        self._popen(["/usr/lib/frr/zebra", "-f", zconf, "-i", os.path.join(self.dir, "zebra.pid"), *common]
                    + ([] if self.spec.install_kernel else ["-r"]))
        self._wait(lambda: os.path.exists(self.zsock), "zebra socket", timeout=10)
        self._popen(["/usr/lib/frr/bgpd", "-f", bconf, "-i", os.path.join(self.dir, "bgpd.pid"), *common]
                    + ([] if self.spec.install_kernel else ["-n"]))
        self._wait(lambda: os.path.exists(os.path.join(self.vty, "bgpd.vty")), "bgpd vty", timeout=10)
        return self

    def vtysh(self, command: str) -> str:
        return self.cli(["vtysh", "--vty_socket", self.vty, "-c", command])

    def vtysh_json(self, command: str) -> object:
        out = self.vtysh(command)
        return json.loads(out) if out.strip() else {}

    def _bgp_pids(self) -> list[int]:
        # bgpd only (procs[1]); zebra does not run sessions.
        return [pid for p in self.procs[1:] for pid in _process_tree(p.pid)]

    def session_state(self, neighbor: str) -> str:
        data = self.vtysh_json(f"show bgp neighbors {neighbor} json")
        info = data.get(neighbor, {}) if isinstance(data, dict) else {}
        return str(info.get("bgpState", "unknown")).lower()

    def routes(self) -> dict[str, PeerRoute]:
        result: dict[str, PeerRoute] = {}
        for fam in ("ipv4", "ipv6"):
            table = self.vtysh_json(f"show bgp {fam} unicast json")
            for prefix in (table.get("routes") or {}) if isinstance(table, dict) else {}:
                # The table view has no communities: ask per prefix (few in tests).
                detail = self.vtysh_json(f"show bgp {fam} unicast {prefix} json")
                route = _frr_route(_norm_prefix(prefix), detail)
                if route is not None:
                    result[route.prefix] = route
        return result


def _frr_route(prefix: str, detail: object) -> PeerRoute | None:
    if not isinstance(detail, dict):
        return None
    paths = detail.get("paths") or []
    if not paths:
        return None
    best = next((p for p in paths if (p.get("bestpath") or {}).get("overall")), paths[0])
    hops: set[str] = set()
    for p in paths:
        picked = _pick_next_hop([nh.get("ip", "") for nh in p.get("nexthops", [])])
        if picked:
            hops.add(picked)
    comms = tuple((best.get("community") or {}).get("string", "").split())
    large = tuple((best.get("largeCommunity") or {}).get("string", "").split())
    lp = best.get("locPrf", best.get("localpref"))
    return PeerRoute(prefix, tuple(sorted(hops)), comms, large, int(lp) if lp is not None else None)


# ---------------------------------------------------------------------------
# GoBGP
# ---------------------------------------------------------------------------


class GoBgpPeer(Peer):
    name = "gobgp"
    binaries = ("gobgpd", "gobgp")
    api_port = 50051

    def config(self) -> str:
        s = self.spec
        out = [
            "[global.config]",
            f"  as = {s.asn}",
            f'  router-id = "{s.router_id}"',
            "  port = 179",
        ]
        if s.multipath:
            out += ["[global.use-multiple-paths.config]", "  enabled = true"]
        for n in s.neighbors:
            afi = "ipv4-unicast" if _family(n.address) == 4 else "ipv6-unicast"
            out += [
                "[[neighbors]]",
                "  [neighbors.config]",
                f'    neighbor-address = "{n.address}"',
                f"    peer-as = {n.asn}",
            ]
            if n.password:
                out.append(f'    auth-password = "{n.password}"')
            out += [
                "  [neighbors.timers.config]",
                f"    hold-time = {n.hold_time}",
                f"    keepalive-interval = {max(1, n.hold_time // 3)}",
                "    connect-retry = 1",
                "  [neighbors.transport.config]",
                f"    passive-mode = {'true' if n.passive else 'false'}",
            ]
            if n.graceful_restart:
                out += [
                    "  [neighbors.graceful-restart.config]",
                    "    enabled = true",
                    f"    restart-time = {s.restart_time}",
                ]
            out += [
                "  [[neighbors.afi-safis]]",
                "    [neighbors.afi-safis.config]",
                f'      afi-safi-name = "{afi}"',
            ]
            if n.graceful_restart:
                out += ["    [neighbors.afi-safis.mp-graceful-restart.config]", "      enabled = true"]
        return "\n".join(out) + "\n"

    def start(self) -> GoBgpPeer:
        conf = os.path.join(self.dir, "gobgpd.toml")
        with open(conf, "w") as f:
            f.write(self.config())
        self._popen(["gobgpd", "-f", conf, "-t", "toml", "--api-hosts", f"127.0.0.1:{self.api_port}"])
        self._wait(lambda: self.host.run(self._gobgp("global"), check=False).returncode == 0, "gobgpd API", timeout=15)
        return self

    def _gobgp(self, *args: str) -> list[str]:
        return ["gobgp", "-u", "127.0.0.1", "-p", str(self.api_port), *args]

    def session_state(self, neighbor: str) -> str:
        res = self.host.run(self._gobgp("neighbor", neighbor, "-j"), check=False)
        if res.returncode != 0:
            return "unknown"
        data = json.loads(res.stdout)
        state = data.get("state", {})
        st = state.get("session_state", state.get("session-state", "unknown"))
        # gobgp prints the enum as a number (6 = established) or a name.
        names = {1: "idle", 2: "connect", 3: "active", 4: "opensent", 5: "openconfirm", 6: "established"}
        return names.get(st, str(st)).lower() if isinstance(st, int) else str(st).lower()

    def routes(self) -> dict[str, PeerRoute]:
        result: dict[str, PeerRoute] = {}
        for fam in ("ipv4", "ipv6"):
            out = self.cli(self._gobgp("global", "rib", "-a", fam, "-j"))
            data = json.loads(out) if out.strip() else {}
            for prefix, paths in (data or {}).items():
                route = _gobgp_route(_norm_prefix(prefix), paths)
                if route is not None:
                    result[route.prefix] = route
        return result


def _gobgp_route(prefix: str, paths: list[dict[str, object]]) -> PeerRoute | None:
    if not paths:
        return None
    best = next((p for p in paths if p.get("best")), paths[0])
    hops: set[str] = set()
    comms: tuple[str, ...] = ()
    large: tuple[str, ...] = ()
    lp: int | None = None
    for p in paths:
        for attr in p.get("attrs", []):  # type: ignore[union-attr]
            t = attr.get("type")
            if t == 3:  # NEXT_HOP
                hops.add(attr["nexthop"])
            elif t == 14:  # MP_REACH_NLRI (IPv6)
                nh = attr.get("nexthop")
                picked = _pick_next_hop([nh] if isinstance(nh, str) else list(nh or []))
                if picked:
                    hops.add(picked)
            if p is best:
                if t == 8:  # COMMUNITIES, as 32-bit integers
                    comms = tuple(f"{c >> 16}:{c & 0xFFFF}" for c in attr.get("communities", []))
                elif t == 32:  # LARGE_COMMUNITY
                    large = tuple(
                        f"{v['ASN']}:{v['LocalData1']}:{v['LocalData2']}" if "ASN" in v
                        else f"{v['asn']}:{v['local_data1']}:{v['local_data2']}"
                        for v in attr.get("value", [])
                    )
                elif t == 5:  # LOCAL_PREF
                    lp = int(attr["value"])
    return PeerRoute(prefix, tuple(sorted(hops)), comms, large, lp)


# ---------------------------------------------------------------------------
# OpenBGPD
# ---------------------------------------------------------------------------


class OpenBgpdPeer(Peer):
    name = "openbgpd"
    binaries = ("bgpd", "bgpctl")

    def __init__(self, host: Host, spec: PeerSpec) -> None:
        super().__init__(host, spec)
        self.sock = os.path.join(self.dir, "bgpd.sock")

    def config(self) -> str:
        s = self.spec
        out = [
            f"AS {s.asn}",
            f"router-id {s.router_id}",
            f'socket "{self.sock}"',
            "fib-update no",
            "listen on 0.0.0.0",
        ]
        if s.address6:
            out.append("listen on ::")
        if s.multipath:
            out += ["rde evaluate all"]
        for n in s.neighbors:
            lines = [
                f"neighbor {n.address} {{",
                f"  remote-as {n.asn}",
                f"  holdtime {n.hold_time}",
                "  holdtime min 3",
                "  passive" if n.passive else "",
                "  announce IPv4 unicast" if _family(n.address) == 4 else "  announce IPv6 unicast",
            ]
            if n.password:
                lines.append(f'  tcp md5sig password "{n.password}"')
            lines.append("  announce restart yes" if n.graceful_restart else "  announce restart no")
            lines.append("}")
            out += lines
        out += ["allow from any", "allow to any"]
        return "\n".join(out) + "\n"

    def start(self) -> OpenBgpdPeer:
        # bgpd chroots into its user's home; the Debian unit creates it at boot.
        os.makedirs("/run/openbgpd", exist_ok=True)
        conf = os.path.join(self.dir, "bgpd.conf")
        with open(conf, "w") as f:
            f.write(self.config())
        os.chmod(conf, 0o600)
        self._popen(["bgpd", "-d", "-f", conf])
        self._wait(lambda: os.path.exists(self.sock) and self.host.run(self._bgpctl("show"), check=False).returncode == 0, "bgpd control socket", timeout=10)
        return self

    def _bgpctl(self, *args: str) -> list[str]:
        return ["bgpctl", "-s", self.sock, *args]

    def session_state(self, neighbor: str) -> str:
        res = self.host.run(self._bgpctl("-j", "show", "neighbor", neighbor), check=False)
        if res.returncode != 0 or not res.stdout.strip():
            return "unknown"
        data = json.loads(res.stdout)
        for n in data.get("neighbors", []):
            return str(n.get("state", "unknown")).lower()
        return "unknown"

    def routes(self) -> dict[str, PeerRoute]:
        out = self.cli(self._bgpctl("-j", "show", "rib", "detail"))
        data = json.loads(out) if out.strip() else {}
        grouped: dict[str, list[dict[str, object]]] = {}
        for r in data.get("rib", []):
            grouped.setdefault(_norm_prefix(r["prefix"]), []).append(r)
        result: dict[str, PeerRoute] = {}
        for prefix, paths in grouped.items():
            best = next((p for p in paths if p.get("best")), paths[0])
            # exit_nexthop is the NEXT_HOP attribute as received; true_nexthop the
            # address it resolved to through the router's own table.
            hops = {str(ipaddress.ip_address(p["exit_nexthop"])) for p in paths if p.get("exit_nexthop")}
            comms = tuple(c for c in best.get("communities", []) if isinstance(c, str))
            large = tuple(best.get("large_communities", []))  # type: ignore[arg-type]
            lp = best.get("localpref")
            result[prefix] = PeerRoute(prefix, tuple(sorted(hops)), comms, large, int(lp) if lp is not None else None)  # type: ignore[arg-type]
        return result


PEERS: dict[str, type[Peer]] = {
    "bird": BirdPeer,
    "frr": FrrPeer,
    "gobgp": GoBgpPeer,
    "openbgpd": OpenBgpdPeer,
}


def missing_binaries(kind: type[Peer]) -> list[str]:
    return [b for b in kind.binaries if (shutil.which(b) if not b.startswith("/") else (b if os.path.exists(b) else None)) is None]


def settle(seconds: float) -> None:
    """A bounded pause (used to prove that something did NOT happen for a while)."""
    time.sleep(seconds)
