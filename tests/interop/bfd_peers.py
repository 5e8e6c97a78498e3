"""BFD-capable routers for the interop tests and ``bench/bgp_failover.py``:
BIRD 2 (``protocol bfd``, ``bfd on`` per BGP neighbour) and FRR (``bfdd``,
``neighbor X bfd profile P``), and the lbd config that peers with them."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

from interop.bgp_peers import BirdPeer, FrrPeer, PeerSpec

from lbd.testing.netlab import Host


@dataclass(frozen=True)
class BfdSpec:
    interval_ms: int = 100
    multiplier: int = 3
    auth: str | None = None  # "keyed-sha1" / "meticulous-keyed-sha1" (BIRD only)
    password: str = "s3cret"
    key_id: int = 1
    multihop: bool = False  # BGP and BFD between loopback addresses (RFC 5883)
    local: str | None = None  # the router's session address when multihop (on its lo)
    minimum_ttl: int | None = None  # lbd's profile (multi-hop); None: MetalLB's default 254


BIRD_AUTH = {"keyed-sha1": "keyed sha1", "meticulous-keyed-sha1": "meticulous keyed sha1"}


class BirdBfd(BirdPeer):
    """BIRD with a BFD protocol; every BGP neighbour has ``bfd on``."""

    def __init__(self, host: Host, spec: PeerSpec, bfd: BfdSpec) -> None:
        self.bfd = bfd
        super().__init__(host, spec, extra_config=self._bfd_config())

    def _bfd_config(self) -> str:
        b = self.bfd
        opts = f"min rx interval {b.interval_ms} ms; min tx interval {b.interval_ms} ms; multiplier {b.multiplier};"
        if b.auth:
            opts += f' authentication {BIRD_AUTH[b.auth]}; password "{b.password}" {{ id {b.key_id}; }};'
        return f'protocol bfd bfd1 {{ debug all; interface "*" {{ {opts} }}; multihop {{ {opts} }}; }}'

    def config(self) -> str:
        text = super().config()
        extra = "bfd on;"
        if self.bfd.multihop:
            extra += " multihop 2;"
            text = re.sub(r"local \S+ as", f"local {self.bfd.local} as", text)
        return "log stderr all;\n" + text.replace("connect retry time 1;", f"connect retry time 1; {extra}")

    def bfd_sessions(self) -> str:
        return self.birdc("show", "bfd", "sessions")

    def protocol_info(self, neighbor: str) -> str:
        return self.birdc("show", "protocols", "all", self.protocol_name(neighbor))


class FrrBfd(FrrPeer):
    """FRR with bfdd; every BGP neighbour uses BFD profile ``lbd``.
    FRR 8.4's bfdd has no authentication (no such command in its YANG model)."""

    binaries = ("/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "/usr/lib/frr/bfdd", "vtysh")

    def __init__(self, host: Host, spec: PeerSpec, bfd: BfdSpec) -> None:
        lines = []
        for n in spec.neighbors:
            lines += [f" neighbor {n.address} bfd", f" neighbor {n.address} bfd profile lbd"]
            if bfd.multihop:
                lines += [f" neighbor {n.address} ebgp-multihop 2", f" neighbor {n.address} update-source {bfd.local}"]
        super().__init__(host, spec, extra_bgp="\n".join(lines))
        self.bfd = bfd
        self.bfd_pid = os.path.join(self.dir, "bfdd.pid")

    def start(self) -> "FrrBfd":
        b = self.bfd
        conf = os.path.join(self.dir, "bfdd.conf")
        with open(conf, "w") as f:
            f.write(f"bfd\n profile lbd\n  receive-interval {b.interval_ms}\n  transmit-interval {b.interval_ms}\n"
                    f"  detect-multiplier {b.multiplier}\n !\n!\n")
        shutil.chown(conf, "frr", "frr")
        # zebra, then bfdd (bgpd registers its peers with bfdd through zebra), then bgpd.
        zconf = os.path.join(self.dir, "zebra.conf")
        bconf = os.path.join(self.dir, "bgpd.conf")
        with open(zconf, "w") as f:
            f.write("log stdout informational\n")
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
        self.start_bfdd()
        return self

    def start_bfdd(self) -> None:
        conf = os.path.join(self.dir, "bfdd.conf")
        common = ["--vty_socket", self.vty, "-z", self.zsock, "-P", "0"]
        self.bfdd = self._popen(["/usr/lib/frr/bfdd", "-f", conf, "-i", self.bfd_pid,
                                 "--bfdctl", os.path.join(self.dir, "bfdd.sock"), *common])
        self._wait(lambda: os.path.exists(os.path.join(self.vty, "bfdd.vty")), "bfdd vty", timeout=10)

    def _bgp_pids(self) -> list[int]:
        return [self.procs[1].pid]

    def bfd_peers(self) -> list[dict]:  # type: ignore[type-arg]
        data = self.vtysh_json("show bfd peers json")
        return data if isinstance(data, list) else []

    def neighbor_info(self, neighbor: str) -> dict:  # type: ignore[type-arg]
        data = self.vtysh_json(f"show bgp neighbors {neighbor} json")
        return data.get(neighbor, {}) if isinstance(data, dict) else {}


def lbd_config(*, vip: str, my_asn: int, peer_asn: int, peer_address: str, bfd: BfdSpec | None,
               key_file: str | None = None, hold_time: int = 30, extra: str = "") -> str:
    """An lbd config (without [node] paths) announcing ``vip`` to one router."""
    text = (
        f'[[pool]]\nname = "p"\naddresses = ["{vip}/32"]\n\n'
        f'[[bgp_advertisement]]\npools = ["p"]\n\n'
        f'[[service]]\nname = "vip"\npool = "p"\nports = ["tcp/8080"]\n\n'
        f'[[bgp_peer]]\nname = "router"\nmy_asn = {my_asn}\npeer_asn = {peer_asn}\n'
        f'peer_address = "{peer_address}"\nhold_time = {hold_time}\nconnect_time = 1\n'
    )
    if bfd is not None:
        text += 'bfd_profile = "fast"\n'
        if bfd.multihop:
            text += "ebgp_multihop = 2\n"
        text += (f'\n[[bfd_profile]]\nname = "fast"\nreceive_interval = {bfd.interval_ms}\n'
                 f"transmit_interval = {bfd.interval_ms}\ndetect_multiplier = {bfd.multiplier}\n")
        if bfd.minimum_ttl is not None:
            text += f"minimum_ttl = {bfd.minimum_ttl}\n"
        if bfd.auth:
            text += f'auth_type = "{bfd.auth}"\nauth_key_id = {bfd.key_id}\nauth_key_file = "{key_file}"\n'
    return text + extra
