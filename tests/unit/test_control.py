"""The control socket: request parsing is hostile-input safe; the server answers errors, never dies."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, strategies as st

from lbd.control import ControlError, ControlServer, parse_request, request
from lbd.ctl import main as ctl_main, render_status


@given(st.binary(max_size=300))
def test_parse_request_rejects_garbage_precisely(data):
    try:
        command, args = parse_request(data)
    except ControlError:
        return
    assert isinstance(command, str) and command and isinstance(args, dict)


@pytest.mark.parametrize("line, message", [
    (b"not json", "request is not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"args": {}}', 'needs a "command"'),
    (b'{"command": "status", "args": 3}', '"args" must be an object'),
])
def test_parse_request_messages(line, message):
    with pytest.raises(ControlError, match=message):
        parse_request(line)


async def test_server_round_trip_and_errors(tmp_path):
    calls = []

    async def status(args):
        calls.append(args)
        return {"node": "n1"}

    async def broken(args):
        raise RuntimeError("boom")

    path = tmp_path / "run" / "lbd.sock"
    server = ControlServer(path, {"status": status, "broken": broken})
    await server.start()
    try:
        assert path.stat().st_mode & 0o777 == 0o660
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, request, path, "status", {"x": 1}) == {"node": "n1"}
        assert calls == [{"x": 1}]
        with pytest.raises(ControlError, match="unknown command 'nope'"):
            await loop.run_in_executor(None, request, path, "nope")
        with pytest.raises(ControlError, match="internal error: boom"):
            await loop.run_in_executor(None, request, path, "broken")
        # A second daemon on the same socket is refused; the first keeps serving.
        with pytest.raises(OSError, match="already listening"):
            await ControlServer(path, {}).start()
        # Raw garbage on the wire gets an error line back.
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"\xff\xfe garbage\n")
        await writer.drain()
        answer = json.loads(await reader.readline())
        assert answer["ok"] is False and "not JSON" in answer["error"]
        writer.close()
    finally:
        await server.close()
    assert not path.exists()


async def test_stale_socket_is_replaced(tmp_path):
    import socket

    path = tmp_path / "lbd.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a crashed daemon's leftover: nobody listens
    server = ControlServer(path, {})
    await server.start()
    await server.close()


def test_ctl_says_when_daemon_is_not_running(tmp_path, capsys):
    assert ctl_main(["--socket", str(tmp_path / "none.sock"), "status"]) == 3
    assert "lbd is not running" in capsys.readouterr().err


def test_render_status_shows_reasons():
    text = render_status({
        "node": "n1", "version": "0", "config": "/etc/lbd.toml", "drained": False,
        "pools": [{"name": "lan", "ipv4": {"used": 1, "total": 16}, "ipv6": {"used": 0, "total": 0}}],
        "services": [{"name": "static/a", "addresses": [], "state": "pending", "owner": None, "interface": None,
                      "reason": 'pool "lan" is exhausted'}],
    })
    assert "lan   1/16" in text and 'pool "lan" is exhausted' in text and "pending" in text
