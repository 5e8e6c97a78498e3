"""A small network-namespace lab: hosts on a shared bridge.

Used by the demo (``make demo``), the lab and interop tests, and the
benchmarks. It shells out to iproute2 on purpose: this is test tooling, not the
daemon (which speaks netlink through pyroute2).

Every lab gets a unique prefix so labs run side by side; every namespace and
process it makes is removed by ``close()`` (processes are ended by PID, only the
ones the lab started). Only addresses the caller hands in are configured; use
10.77.0.0/16, 10.88.0.0/16 and fd77::/48.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@dataclass
class Host:
    lab: "Lab"
    name: str
    netns: str
    ifname: str = "eth0"
    addresses: list[str] = field(default_factory=list)
    switch_ports: dict[str, str] = field(default_factory=dict)  # ifname -> bridge port

    def cmd(self, argv: Sequence[str] | str) -> list[str]:
        if isinstance(argv, str):
            argv = shlex.split(argv)
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self,
        argv: Sequence[str] | str,
        check: bool = True,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in this host's namespace and wait for it."""
        result = subprocess.run(
            self.cmd(argv), capture_output=True, text=True, timeout=timeout, env=env, input=input
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode, result.args, result.stdout, result.stderr
            )
        return result

    def popen(self, argv: Sequence[str] | str, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a long-running process in this namespace; the lab ends it on close."""
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.cmd(argv), **kwargs)  # type: ignore[call-overload]
        self.lab.processes.append(proc)
        return proc

    @property
    def mac(self) -> str:
        out = self.run(["cat", f"/sys/class/net/{self.ifname}/address"]).stdout
        return out.strip()

    def arping(self, address: str, timeout: float = 3.0) -> str | None:
        """Resolve ``address`` by one ARP request (arping); the replying MAC, or None."""
        import re

        out = self.run(["arping", "-c1", f"-w{timeout:g}", "-I", self.ifname, address], check=False,
                       timeout=timeout + 10).stdout
        found = re.search(r"bytes from ([0-9a-f:]{17}) ", out)
        return found.group(1) if found else None

    def ndisc(self, address: str) -> str | None:
        """Resolve ``address`` by Neighbor Solicitation (ndisc6); the advertised MAC, or None."""
        import re

        out = self.run(["ndisc6", "-n", "-r2", "-w", "1000", address, self.ifname], check=False, timeout=15).stdout
        found = re.search(r"Target link-layer address: ([0-9A-F:]{17})", out)
        return found.group(1).lower() if found else None

    def add_address(self, address: str) -> None:
        flags = ["nodad"] if ":" in address else []
        self.run(["ip", "addr", "add", address, "dev", self.ifname, *flags])
        self.addresses.append(address)


class Lab:
    """Namespaces joined by veth pairs to a bridge that lives in its own namespace."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"lbd{secrets.token_hex(3)}"
        self.switch_ns = f"{self.prefix}-sw"
        self.hosts: dict[str, Host] = {}
        self.processes: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []
        self._veth_seq = 0
        self._add_netns(self.switch_ns)
        self._in(self.switch_ns, "ip link add br0 type bridge")
        # No STP delay and no multicast snooping surprises: a plain learning switch.
        self._in(self.switch_ns, "ip link set br0 type bridge forward_delay 0 stp_state 0 mcast_snooping 0")
        self._in(self.switch_ns, "ip link set br0 up")

    # -- building -----------------------------------------------------------

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        self._in(name, "ip link set lo up")
        # Addresses usable at once (no IPv6 duplicate address detection delay).
        for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
            self._in(name, f"sysctl -qw {key}=0", check=False)

    def _in(self, netns: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", netns, *shlex.split(command)],
            check=check,
            capture_output=True,
            text=True,
        )

    def add_host(self, name: str, addresses: Iterable[str] = (), ifname: str = "eth0") -> Host:
        """A namespace with one interface on the bridge, carrying ``addresses``."""
        netns = f"{self.prefix}-{name}"
        self._add_netns(netns)
        host = Host(lab=self, name=name, netns=netns, ifname=ifname)
        self.hosts[name] = host
        self.connect(host, ifname)
        for address in addresses:
            host.add_address(address)
        return host

    def connect(self, host: Host, ifname: str) -> None:
        """Add another interface ``ifname`` on ``host``, plugged into the bridge."""
        self._veth_seq += 1
        # Temporary names in the root namespace must be unique across labs.
        tmp_host = f"v{secrets.token_hex(5)}"
        tmp_sw = f"v{secrets.token_hex(5)}"
        _ip("link", "add", tmp_host, "type", "veth", "peer", "name", tmp_sw)
        try:
            _ip("link", "set", tmp_host, "netns", host.netns)
            _ip("link", "set", tmp_sw, "netns", self.switch_ns)
        except subprocess.CalledProcessError:
            _ip("link", "del", tmp_host, check=False)
            raise
        self._in(host.netns, f"ip link set {tmp_host} name {ifname}")
        self._in(host.netns, f"ip link set {ifname} up")
        port = f"p{self._veth_seq}-{host.name}"[:15]
        self._in(self.switch_ns, f"ip link set {tmp_sw} name {port}")
        self._in(self.switch_ns, f"ip link set {port} master br0 up")
        host.switch_ports[ifname] = port

    def set_link(self, host: Host, up: bool, ifname: str | None = None) -> None:
        """Cut a host off the switch (or plug it back), as a dead host or a pulled cable."""
        port = host.switch_ports[ifname or host.ifname]
        self._in(self.switch_ns, f"ip link set {port} {'up' if up else 'down'}")

    # -- teardown -----------------------------------------------------------

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """End a process this lab started, and its process group, by PID."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        return proc.returncode

    def close(self) -> None:
        for proc in reversed(self.processes):
            try:
                self.stop(proc, timeout=5)
            except Exception:  # noqa: BLE001 - teardown must go on
                pass
        self.processes.clear()
        for netns in reversed(self._namespaces):
            # Any process left inside (a daemon that forked) is ours: end it by PID.
            out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
            for pid in out.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", netns, check=False)
        self._namespaces.clear()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def require_binary(*names: str) -> None:
    """In a test: skip unless every named program is installed; fail instead under
    ``make test`` or CI (LBD_REQUIRE_ALL / CI set), where they must all be there."""
    import shutil

    import pytest

    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        if os.environ.get("CI") or os.environ.get("LBD_REQUIRE_ALL"):
            pytest.fail(f"not installed (make test installs them): {', '.join(missing)}")
        pytest.skip(f"not installed: {', '.join(missing)}")


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value, bounded in time."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class LbdNode:
    """The real lbd daemon running in a lab host, with its own config, state and socket.

    ``config`` is the TOML text without ``[node]`` paths: ``state_dir`` and
    ``control_socket`` are filled in (in ``workdir``) unless the text sets them.
    """

    def __init__(self, host: Host, workdir: "os.PathLike[str] | str", config: str, name: str | None = None) -> None:
        import sys
        from pathlib import Path

        self.host = host
        self.name = name or host.name
        self.workdir = Path(workdir) / f"lbd-{self.name}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket = self.workdir / "lbd.sock"
        self.state_dir = self.workdir / "state"
        self.config_path = self.workdir / "lbd.toml"
        self.log_path = self.workdir / "lbd.log"
        self.bindir = Path(sys.executable).parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(config)

    def write_config(self, config: str) -> None:
        if "[node]" not in config:
            config = f'[node]\nname = "{self.name}"\n' + config
        head, sep, rest = config.partition("[node]\n")
        extra = ""
        if "state_dir" not in config:
            extra += f'state_dir = "{self.state_dir}"\n'
        if "control_socket" not in config:
            extra += f'control_socket = "{self.socket}"\n'
        if "name =" not in rest.split("[", 1)[0]:
            extra += f'name = "{self.name}"\n'
        text = head + sep + extra + rest
        if "[log]" not in text:
            text += '\n[log]\nformat = "json"\nlevel = "debug"\n'
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def start(self, wait: bool = True, timeout: float = 20.0, env: dict[str, str] | None = None) -> "LbdNode":
        log = open(self.log_path, "ab")
        self.proc = self.host.popen(
            [str(self.bindir / "lbd"), "--config", str(self.config_path), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )
        log.close()
        if wait:
            wait_for(lambda: self.running() and self.ctl_ok("status"), timeout, what=f"lbd on {self.name} to answer")
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bindir / "lbd-ctl"), "--socket", str(self.socket), *args],
            capture_output=True, text=True, timeout=30,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"lbd-ctl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def ctl_ok(self, *args: str) -> bool:
        try:
            return self.ctl(*args, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def status(self) -> dict:
        import json

        return json.loads(self.ctl("--json", "status").stdout)

    def service(self, name: str) -> dict:
        for row in self.status()["services"]:
            if row["name"] == name:
                return row
        raise KeyError(name)

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        code = self.host.lab.stop(self.proc, sig=sig, timeout=timeout)
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
