"""The control socket: a Unix socket speaking JSON lines.

One request per line, ``{"command": "status", "args": {}}``; one response per
line, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
Requests are hostile input: size-limited, time-limited, and a malformed one
gets an error response, never an exception in the daemon.

Limits (every client of the socket is in lbd's group, but a stuck or buggy one
must not hold the daemon's memory or file descriptors):

- ``MAX_CONNECTIONS`` connections at a time; the next one gets an error line
  and is closed at once;
- ``MAX_REQUEST`` bytes per request line, ``MAX_DEPTH`` levels of JSON nesting
  (checked before parsing: a nesting bomb is one ``ControlError``, never a
  ``RecursionError``);
- ``REQUEST_TIMEOUT`` seconds to send a whole request line (and to send the
  next one: an idle connection is closed);
- ``SEND_TIMEOUT`` seconds for the client to take the whole response; a client
  that does not read is cut off (the connection aborted, its buffer dropped).
  Handlers themselves are not timed here: they bound their own waits (``drain``
  waits for the handover).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

import structlog

from lbd import aio

log = structlog.get_logger(__name__)

MAX_REQUEST = 64 * 1024
MAX_DEPTH = 32  # lbd's own requests nest 2 levels; json.loads recurses once per level
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 10.0
SEND_TIMEOUT = 10.0

# (pid, uid, gid) of the client whose request is being handled (SO_PEERCRED); None when unknown.
peer_credentials: contextvars.ContextVar[tuple[int, int, int] | None] = contextvars.ContextVar(
    "lbd_control_peer", default=None)

Handler = Callable[[Mapping[str, Any]], Awaitable[Any]]


class ControlError(ValueError):
    """A request the daemon refuses, with the reason sent back to the client."""


def json_depth(data: bytes) -> int:
    """How deeply arrays and objects nest in ``data`` (brackets inside strings do not count).

    Linear, no recursion: it runs before ``json.loads``, whose recursion a
    nesting bomb would otherwise exhaust.
    """
    if data.count(b"[") + data.count(b"{") <= 1:
        return data.count(b"[") + data.count(b"{")
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def parse_request(line: bytes, max_depth: int = MAX_DEPTH) -> tuple[str, Mapping[str, Any]]:
    if not isinstance(line, (bytes, bytearray)):
        raise ControlError("request must be bytes")
    if line.count(b"[") + line.count(b"{") > max_depth and json_depth(line) > max_depth:
        raise ControlError(f"request nested deeper than {max_depth} levels")
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"request is not JSON: {exc}") from None
    except ValueError as exc:  # an integer of more than 4,300 digits (CPython's int limit)
        raise ControlError(f"request is not usable JSON: {exc}") from None
    except RecursionError:  # belt and braces: the depth check above should make this unreachable
        raise ControlError(f"request nested deeper than {max_depth} levels") from None
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
    def __init__(self, path: Path, handlers: Mapping[str, Handler], mode: int = 0o660, *,
                 max_connections: int = MAX_CONNECTIONS, request_timeout: float = REQUEST_TIMEOUT,
                 send_timeout: float = SEND_TIMEOUT) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.mode = mode
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.send_timeout = send_timeout
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._refused = 0  # refused since the last log line
        self._refused_logged = -1e9

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

    @property
    def connections(self) -> int:
        """Connections being served right now."""
        return len(self._connections)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.transport.abort()  # wait_closed (3.12+) waits for every connection
            await self._server.wait_closed()
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            # One log line per 10 s at most: a flood must not flood the journal too.
            self._refused += 1
            now = time.monotonic()
            if now - self._refused_logged >= 10.0:
                log.warning("control_connection_refused", reason="too many connections", limit=self.max_connections,
                            refused=self._refused)
                self._refused_logged, self._refused = now, 0
            # A short line fits the socket's buffer: written at once, so close() frees the fd now.
            writer.write(_encode({"ok": False, "error": f"too many control connections (limit {self.max_connections})"}))
            writer.close()
            return
        self._connections.add(writer)
        # drain() returns only once the whole response is with the kernel: when the client
        # goes idle afterwards, nothing is left in our buffer to keep the connection alive.
        writer.transport.set_write_buffer_limits(high=0)
        try:
            creds = writer.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            peer_credentials.set(struct.unpack("3i", creds))
        except (AttributeError, OSError, struct.error):
            peer_credentials.set(None)
        try:
            while True:
                try:
                    line = await aio.wait_for(reader.readline(), self.request_timeout)
                except (asyncio.TimeoutError, ConnectionError):
                    return
                except (asyncio.LimitOverrunError, ValueError):
                    await self._send(writer, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})
                    return
                if not line:
                    return
                response = await self.dispatch(line)
                if not await self._send(writer, response):
                    return
        finally:
            self._connections.discard(writer)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a client that does not read: drop what it did not take
            else:
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

    async def _send(self, writer: asyncio.StreamWriter, response: Mapping[str, Any]) -> bool:
        """Write one response; False when the client is gone or did not take it within ``send_timeout``."""
        try:
            writer.write(_encode(response))
            await aio.wait_for(writer.drain(), self.send_timeout)
        except asyncio.TimeoutError:
            log.warning("control_client_not_reading", timeout=self.send_timeout,
                        unsent=writer.transport.get_write_buffer_size())
            writer.transport.abort()
            return False
        except ConnectionError:
            return False
        return True


def _encode(response: Mapping[str, Any]) -> bytes:
    return json.dumps(response, default=str).encode() + b"\n"


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
