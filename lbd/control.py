"""The control socket: a Unix socket speaking JSON lines.

One request per line, ``{"command": "status", "args": {}}``; one response per
line, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
Requests are hostile input: size-limited, time-limited, and a malformed one
gets an error response, never an exception in the daemon.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

import structlog

from lbd import aio

log = structlog.get_logger(__name__)

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 10.0

# (pid, uid, gid) of the client whose request is being handled (SO_PEERCRED); None when unknown.
peer_credentials: contextvars.ContextVar[tuple[int, int, int] | None] = contextvars.ContextVar(
    "lbd_control_peer", default=None)

Handler = Callable[[Mapping[str, Any]], Awaitable[Any]]


class ControlError(ValueError):
    """A request the daemon refuses, with the reason sent back to the client."""


def parse_request(line: bytes) -> tuple[str, Mapping[str, Any]]:
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ControlError("request must be a JSON object")
    command = request.get("command")
    if not isinstance(command, str) or not command:
        raise ControlError('request needs a "command" string')
    args = request.get("args", {})
    if not isinstance(args, dict):
        raise ControlError('"args" must be an object')
    return command, args


class ControlServer:
    def __init__(self, path: Path, handlers: Mapping[str, Handler], mode: int = 0o660) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.mode = mode
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise OSError(f"{self.path} exists and is not a socket")
            if _socket_alive(self.path):
                raise OSError(f"another lbd is already listening on {self.path}")
            self.path.unlink()  # stale socket of a crashed daemon
        # Create the socket with no access for others, then open it to the group.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        log.info("control_socket_listening", path=str(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            creds = writer.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            peer_credentials.set(struct.unpack("3i", creds))
        except (AttributeError, OSError, struct.error):
            peer_credentials.set(None)
        try:
            while True:
                try:
                    line = await aio.wait_for(reader.readline(), REQUEST_TIMEOUT)
                except (asyncio.TimeoutError, ConnectionError):
                    return
                except (asyncio.LimitOverrunError, ValueError):
                    await self._send(writer, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
                    return
                if not line:
                    return
                response = await self.dispatch(line)
                await self._send(writer, response)
        finally:
            writer.close()

    async def dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            command, args = parse_request(line)
            handler = self.handlers.get(command)
            if handler is None:
                known = ", ".join(sorted(self.handlers))
                raise ControlError(f"unknown command {command!r} (known: {known})")
            return {"ok": True, "result": await handler(args)}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the daemon
            log.exception("control_command_failed")
            return {"ok": False, "error": f"internal error: {exc}"}

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, response: Mapping[str, Any]) -> None:
        try:
            writer.write(json.dumps(response, default=str).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass


def _socket_alive(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def request(path: Path, command: str, args: Mapping[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """Blocking client call; raises ControlError with the daemon's message on failure."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps({"command": command, "args": dict(args or {})}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
    finally:
        sock.close()
    try:
        response = json.loads(buf)
    except json.JSONDecodeError:
        raise ControlError("the daemon sent a malformed response") from None
    if not response.get("ok"):
        raise ControlError(response.get("error", "unknown error"))
    return response.get("result")
