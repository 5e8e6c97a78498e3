"""Speakers that announce prefixes to the routers of ``bgp_peers``.

* ``LbdSpeaker``: lbd's standalone BGP runner (``python -m lbd.testing.bgp_speaker``), whose
  JSON event lines on stdout are collected for the tests.
* ``ExaBgpSpeaker``: ExaBGP with a static config (interop cross-check and the
  benchmark's reference).
* ``BirdSpeaker``: BIRD announcing a static protocol (benchmark reference).

All run inside a lab namespace through ``host.popen``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from interop.bgp_peers import scratch_dir

from lbd.testing.netlab import Host, wait_for


@dataclass(frozen=True)
class Announce:
    prefix: str
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()
    local_pref: int | None = None


@dataclass
class SessionSpec:
    peer_address: str
    peer_asn: int
    my_asn: int
    local_address: str  # also the next hop lbd announces
    router_id: str
    hold_time: int = 9
    password: str | None = None
    graceful_restart: bool = False
    connect_time: float = 1.0


def write_prefixes(path: str, prefixes: Sequence[str]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(prefixes) + ("\n" if prefixes else ""))
    os.replace(tmp, path)


class LbdSpeaker:
    """``python -m lbd.testing.bgp_speaker`` in a namespace; one session, one attribute set."""

    def __init__(self, host: Host, session: SessionSpec, prefixes: Sequence[str] = (),
                 communities: Sequence[str] = (), large_communities: Sequence[str] = (),
                 local_pref: int | None = None, workdir: str | None = None, restarting: bool = False,
                 name: str = "peer") -> None:
        self.host = host
        self.restarting = restarting
        self.name = name
        self.session = session
        self.communities = tuple(communities)
        self.large_communities = tuple(large_communities)
        self.local_pref = local_pref
        self.dir = workdir or scratch_dir(self, "lbd-speaker-", host)
        self.prefixes_file = os.path.join(self.dir, "prefixes")
        write_prefixes(self.prefixes_file, list(prefixes))
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: list[dict[str, object]] = []
        self.stderr_path = os.path.join(self.dir, "stderr")
        self._reader: threading.Thread | None = None

    def argv(self) -> list[str]:
        s = self.session
        argv = [
            sys.executable, "-m", "lbd.testing.bgp_speaker",
            "--peer-address", s.peer_address,
            "--peer-asn", str(s.peer_asn),
            "--my-asn", str(s.my_asn),
            "--router-id", s.router_id,
            "--hold-time", str(s.hold_time),
            "--connect-time", str(s.connect_time),
            "--source-address", s.local_address,
            "--prefixes-file", self.prefixes_file,
            "--name", self.name,
            "--log-level", "info",
        ]
        if self.restarting:
            argv += ["--restarting"]
        if s.password:
            argv += ["--password", s.password]
        if s.graceful_restart:
            argv += ["--graceful-restart"]
        for c in self.communities:
            argv += ["--community", c]
        for c in self.large_communities:
            argv += ["--large-community", c]
        if self.local_pref is not None:
            argv += ["--local-pref", str(self.local_pref)]
        return argv

    def start(self) -> LbdSpeaker:
        with open(self.stderr_path, "ab") as err:
            self.proc = self.host.popen(self.argv(), stdout=subprocess.PIPE, stderr=err)
        proc = self.proc
        self._reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._reader.start()
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)

    def set_prefixes(self, prefixes: Sequence[str]) -> None:
        """Rewrite the prefixes file and SIGHUP the runner."""
        write_prefixes(self.prefixes_file, list(prefixes))
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)

    def wait_event(self, name: str, timeout: float = 30.0, since: int = 0) -> dict[str, object]:
        def find() -> dict[str, object] | None:
            for e in self.events[since:]:
                if e.get("event") == name:
                    return e
            return None

        try:
            return wait_for(find, timeout=timeout, interval=0.05, what=f"lbd event {name!r}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; events: {self.events[-10:]}; stderr: {self.stderr()}") from None

    def stderr(self) -> str:
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        rc = self.host.lab.stop(self.proc, sig=sig, timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=2)
        return rc


class ExaBgpSpeaker:
    """ExaBGP 4 with every route in its static config."""

    def __init__(self, host: Host, session: SessionSpec, routes: Sequence[Announce], workdir: str | None = None) -> None:
        self.host = host
        self.session = session
        self.routes = list(routes)
        self.dir = workdir or scratch_dir(self, "lbd-exabgp-", host)
        self.conf = os.path.join(self.dir, "exabgp.conf")
        self.log_path = os.path.join(self.dir, "exabgp.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        s = self.session
        fam4 = any(ipaddress.ip_network(r.prefix).version == 4 for r in self.routes)
        fam6 = any(ipaddress.ip_network(r.prefix).version == 6 for r in self.routes)
        lines = [
            f"neighbor {s.peer_address} {{",
            f"  router-id {s.router_id};",
            f"  local-address {s.local_address};",
            f"  local-as {s.my_asn};",
            f"  peer-as {s.peer_asn};",
            f"  hold-time {s.hold_time};",
        ]
        if s.password:
            lines.append(f'  md5-password "{s.password}";')
        lines.append("  capability {")
        if s.graceful_restart:
            lines.append("    graceful-restart 60;")
        lines.append("  }")
        lines.append("  family {")
        if fam4 or not fam6:
            lines.append("    ipv4 unicast;")
        if fam6:
            lines.append("    ipv6 unicast;")
        lines.append("  }")
        lines.append("  static {")
        for r in self.routes:
            attrs = f"route {r.prefix} next-hop {s.local_address}"
            if r.communities:
                attrs += " community [" + " ".join(r.communities) + "]"
            if r.large_communities:
                attrs += " large-community [" + " ".join(r.large_communities) + "]"
            if r.local_pref is not None:
                attrs += f" local-preference {r.local_pref}"
            lines.append(f"    {attrs};")
        lines += ["  }", "}"]
        return "\n".join(lines) + "\n"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "exabgp_daemon_user": "root",
                "exabgp_daemon_drop": "false",
                "exabgp_log_destination": self.log_path,
                "exabgp_log_level": "INFO",
                "exabgp_api_cli": "false",
                "exabgp_tcp_bind": "",
            }
        )
        return env

    def prepare(self) -> None:
        """Write the config now (the benchmark does it before starting its clock)."""
        with open(self.conf, "w") as f:
            f.write(self.config())
        self._prepared = True

    def start(self) -> ExaBgpSpeaker:
        if not getattr(self, "_prepared", False):
            self.prepare()
        with open(os.path.join(self.dir, "stdout"), "ab") as out:
            self.proc = self.host.popen(["exabgp", self.conf], env=self.env(), stdout=out, stderr=subprocess.STDOUT)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return self.host.lab.stop(self.proc, sig=sig) if self.proc else None


class BirdSpeaker:
    """BIRD announcing a static protocol (blackhole routes) over one BGP session."""

    def __init__(self, host: Host, session: SessionSpec, prefixes: Sequence[str], workdir: str | None = None) -> None:
        self.host = host
        self.session = session
        self.prefixes = list(prefixes)
        self.dir = workdir or scratch_dir(self, "lbd-birdspk-", host)
        self.conf = os.path.join(self.dir, "bird.conf")
        self.sock = os.path.join(self.dir, "bird.ctl")
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        s = self.session
        with_v6 = any(":" in p for p in self.prefixes)
        lines = [f"router id {s.router_id};", "protocol device {}"]
        lines.append("protocol static st4 { ipv4; " + " ".join(f"route {p} blackhole;" for p in self.prefixes if ":" not in p) + " }")
        if with_v6:
            lines.append("protocol static st6 { ipv6; " + " ".join(f"route {p} blackhole;" for p in self.prefixes if ":" in p) + " }")
        opts = [f"local {s.local_address} as {s.my_asn};", f"neighbor {s.peer_address} as {s.peer_asn};",
                f"hold time {s.hold_time};", "connect delay time 1;", "connect retry time 1;"]
        if s.password:
            opts.append(f'password "{s.password}";')
        chan = f"ipv4 {{ import none; export all; next hop address {s.local_address}; }};"
        lines.append("protocol bgp up { " + " ".join(opts) + " " + chan + " }")
        return "\n".join(lines) + "\n"

    def prepare(self) -> None:
        with open(self.conf, "w") as f:
            f.write(self.config())
        self._prepared = True

    def start(self) -> BirdSpeaker:
        if not getattr(self, "_prepared", False):
            self.prepare()
        with open(os.path.join(self.dir, "log"), "ab") as out:
            self.proc = self.host.popen(["bird", "-f", "-c", self.conf, "-s", self.sock], stdout=out, stderr=subprocess.STDOUT)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return self.host.lab.stop(self.proc, sig=sig) if self.proc else None


def wait_process_gone(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
