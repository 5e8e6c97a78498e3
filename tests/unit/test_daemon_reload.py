"""Daemon.reload, where the decision is made: apply fully or keep the running config, always READY=1.

The daemon is built but not run (no announcer touches the host): the reload
path only rebinds the metrics listener and restarts the static source.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from lbd.config import load_config
from lbd.configfile import may_read, read_config_text
from lbd.daemon import Daemon
from lbd.config import ConfigError
from lbd.sdnotify import Notifier

MISSING_ADDRESS = "10.77.255.1"  # in the lab range, on no interface of this host: binding it fails


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(path: Path, tmp: Path, body: str) -> None:
    path.write_text(f'[node]\nname = "n1"\nstate_dir = "{tmp}/state"\ncontrol_socket = "{tmp}/lbd.sock"\n'
                    '[[pool]]\nname = "lan"\naddresses = ["10.77.0.48/28"]\n' + body)


@pytest.fixture
async def daemon(tmp_path):
    path = tmp_path / "lbd.toml"
    port = free_port()
    write(path, tmp_path, f'[[service]]\nname = "a"\n[[service]]\nname = "b"\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(tmp_path / "notify.sock"))
    sink.setblocking(False)
    d = Daemon(load_config(path))
    d.notifier = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    d.test_port, d.test_sink, d.test_path, d.test_tmp = port, sink, path, tmp_path  # type: ignore[attr-defined]
    await d.apply_config()
    deadline = time.monotonic() + 10
    while len(d.services_now()) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    from lbd.ipam import allocate

    d.allocations = allocate(d.config.pools, list(d.services_now().values()), {}).allocations
    try:
        yield d
    finally:
        if d._metrics_server is not None:
            d._metrics_server.close()
        await d.sources.close()
        await d.hook_runner.close()
        await d.netlink.aclose()
        sink.close()


def notifications(sink: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sink.recv(4096).decode())
        except BlockingIOError:
            return out


def serving(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_a_valid_config_that_cannot_be_applied_keeps_the_running_one(daemon) -> None:
    old = daemon.config
    write(daemon.test_path, daemon.test_tmp, f'[[service]]\nname = "a"\n[[service]]\nname = "b"\n'
                                              f'[metrics]\nlisten = "{MISSING_ADDRESS}:9120"\n')
    assert await daemon.reload() is False
    assert daemon.last_reload == "rolled_back"
    assert daemon.config is old and daemon.config.metrics.listen == f"127.0.0.1:{daemon.test_port}"
    assert serving(daemon.test_port), "the running metrics listener must keep serving"
    assert "could not be applied" in daemon.reload_error[0] and MISSING_ADDRESS in daemon.reload_error[0]
    sent = notifications(daemon.test_sink)
    assert sent[0].startswith("RELOADING=1") and sent[-1].startswith("READY=1") and "rolled back" in sent[-1]
    # The next reload of a good file applies and says so: nothing stays stuck.
    port = free_port()
    write(daemon.test_path, daemon.test_tmp, f'[[service]]\nname = "a"\n[[service]]\nname = "b"\n'
                                              f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    assert await daemon.reload() is True
    assert daemon.reload_error is None and serving(port) and not serving(daemon.test_port)
    assert notifications(daemon.test_sink)[-1] == "READY=1\nSTATUS=reloaded"


async def test_an_invalid_config_is_rejected_with_ready(daemon) -> None:
    daemon.test_path.write_text(daemon.test_path.read_text() + "portz = 1\n")
    assert await daemon.reload() is False and daemon.last_reload == "rejected"
    assert notifications(daemon.test_sink)[-1].startswith("READY=1")


async def test_an_internal_error_still_ends_with_ready(daemon, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("planner bug")

    monkeypatch.setattr("lbd.daemon.diff_configs", boom)
    assert await daemon.reload() is False and daemon.last_reload == "refused"
    assert "planner bug" in daemon.reload_error[0] and "--allow-readdress" in daemon.reload_error[0]
    assert notifications(daemon.test_sink)[-1].startswith("READY=1")
    assert await daemon.reload(allow_readdress=True) is True  # the operator can still apply

    async def broken(config):
        raise RuntimeError("apply bug")

    monkeypatch.setattr(daemon, "_apply", broken)
    assert await daemon.reload(allow_readdress=True) is False and daemon.last_reload == "rolled_back"
    assert "apply bug" in daemon.reload_error[0]
    assert notifications(daemon.test_sink)[-1].startswith("READY=1")


async def test_a_readdress_is_refused_unless_allowed(daemon) -> None:
    before = dict(daemon.allocations)
    assert [str(a) for a in before["static/a"].addresses] == ["10.77.0.48"]
    body = f'[[service]]\nname = "a"\n[[service]]\nname = "b"\n[metrics]\nlisten = "127.0.0.1:{daemon.test_port}"\n'
    daemon.test_path.write_text(daemon.test_path.read_text().replace('"10.77.0.48/28"', '"10.77.0.49-10.77.0.63"'))
    assert await daemon.reload() is False and daemon.last_reload == "refused"
    assert "static/a: 10.77.0.48 -> 10.77.0.50" in daemon.reload_error[0] and "static/b" not in daemon.reload_error[0]
    assert daemon.config.pools[0].addresses[0].text == "10.77.0.48/28"
    with pytest.raises(Exception, match="re-address 1 service"):
        await daemon._cmd_reload({})
    assert await daemon._cmd_reload({"allow_readdress": True}) == "reloaded"
    assert daemon.config.pools[0].addresses[0].text == "10.77.0.49-10.77.0.63"
    # [node] allow_readdress = true in the file does the same.
    write(daemon.test_path, daemon.test_tmp, body.replace("[metrics]", '[[pool]]\nname = "x"\naddresses = ["10.77.1.0/24"]\n[metrics]')
          .replace('name = "a"\n', 'name = "a"\npool = "x"\n'))
    daemon.allocations = before
    assert await daemon.reload() is False and daemon.last_reload == "refused"
    daemon.test_path.write_text(daemon.test_path.read_text().replace('name = "n1"\n', 'name = "n1"\nallow_readdress = true\n'))
    assert await daemon.reload() is True


async def test_plan_request(daemon, tmp_path) -> None:
    same = await daemon._cmd_plan({})
    assert same["valid"] and same["changed"] is False
    other = tmp_path / "new.toml"
    write(other, daemon.test_tmp, '[[service]]\nname = "b"\n[[service]]\nname = "c"\n')
    result = await daemon._cmd_plan({"config": str(other)})
    assert result["released"] == [{"service": "static/a", "addresses": ["10.77.0.48"]}]
    assert result["allocated"] == [{"service": "static/c", "addresses": ["10.77.0.48"]}]
    assert result["reload_refused"] is False and any("metrics listen" in n for n in result["notes"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\n")
    invalid = await daemon._cmd_plan({"config": str(bad)})
    assert invalid["valid"] is False and "line 1" in invalid["errors"][0]
    with pytest.raises(Exception, match="absolute"):
        await daemon._cmd_plan({"config": "relative.toml"})


def test_read_config_text_refuses_what_is_not_a_regular_file(tmp_path) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_config_text(fifo)  # must not block
    with pytest.raises(ConfigError, match="cannot read"):
        read_config_text(tmp_path / "absent.toml")


def test_may_read_follows_the_mode_bits_of_the_asker(tmp_path) -> None:
    import os

    path = tmp_path / "secret.toml"
    path.write_text("")
    os.chmod(path, 0o600)
    st = os.stat(path)
    assert may_read(st, 0, 0)
    assert may_read(st, st.st_uid, None)
    assert not may_read(st, 12345, 12345) and not may_read(st, None, None)
    os.chmod(path, 0o640)
    assert may_read(os.stat(path), 12345, st.st_gid) if st.st_uid != 12345 else True
    os.chmod(path, 0o644)
    assert may_read(os.stat(path), 12345, 12345)
    with pytest.raises(ConfigError, match="may not read"):
        os.chmod(path, 0o600)
        read_config_text(path, 12345, 12345)


async def test_handlers_see_the_peer_credentials(tmp_path) -> None:
    """lbd plan reads another file only as the asker could: the server passes SO_PEERCRED on."""
    import os

    from lbd.control import ControlServer, peer_credentials, request

    async def whoami(args):
        return peer_credentials.get()

    server = ControlServer(tmp_path / "c.sock", {"whoami": whoami})
    await server.start()
    try:
        creds = await asyncio.to_thread(request, tmp_path / "c.sock", "whoami")
    finally:
        await server.close()
    assert creds == [os.getpid(), os.getuid(), os.getgid()]
    assert peer_credentials.get() is None  # only inside the request's task


async def test_a_session_reaching_or_leaving_established_runs_a_pass(daemon) -> None:
    """So bgp_session_up/down hooks (and status) follow at once, not at the next resync."""
    from lbd.bgp.events import State, StateChanged

    daemon._wake.clear()
    daemon._bgp_event("gw", StateChanged(State.CONNECT, State.ACTIVE))
    assert not daemon._wake.is_set()
    daemon._bgp_event("gw", StateChanged(State.OPENCONFIRM, State.ESTABLISHED))
    assert daemon._wake.is_set()
    daemon._wake.clear()
    daemon._bgp_event("gw", StateChanged(State.ESTABLISHED, State.IDLE))
    assert daemon._wake.is_set()


async def test_a_pass_fires_hooks_from_the_converged_state(daemon) -> None:
    """The decision point: _observe_hooks after a pass hands each transition to the runner once."""
    import ipaddress

    from lbd.config.schema import HookConfig
    from lbd.model import Plan, VipDecision

    runs: list[dict] = []
    daemon.hooks._submit = lambda hook, body: runs.append(body) or True
    daemon.hooks.set_hooks([HookConfig(name="h", on=("vip_up", "vip_down", "bgp_session_up"), exec=("/bin/true",))])
    decision = VipDecision(vip=ipaddress.ip_address("10.77.0.48"), services=("static/a",), owner="n1",
                           interface="eth0", reason="", pool="lan", modes=("l2",), announced_here=True)
    daemon.plan = Plan(decisions=(decision,))
    members = daemon.coordinator.members()
    daemon._observe_hooks(members)
    daemon._observe_hooks(members)
    daemon.plan = Plan()
    daemon._observe_hooks(members)
    assert [(r["event"], r["vip"], r["node"]) for r in runs] == [("vip_up", "10.77.0.48", "n1"),
                                                                 ("vip_down", "10.77.0.48", "n1")]
