"""Serve the Prometheus registry over HTTP on ``[metrics] listen`` (asyncio, no thread).

Every request is hostile input from the network: the whole exchange (request
line, headers, response) has one deadline, ``REQUEST_DEADLINE`` seconds from
the accept, after which the connection is aborted whatever it is doing (a
slowloris client trickling header bytes, or one that never reads the answer);
at most ``MAX_CONNECTIONS`` are served at a time (more are closed at once), and
the request head is bounded in size (``MAX_HEAD``) and header count.
"""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lbd import aio
from lbd.metrics import REGISTRY

log = structlog.get_logger(__name__)

REQUEST_DEADLINE = 5.0  # seconds from accept to the last byte of the response
MAX_CONNECTIONS = 32
MAX_HEAD = 16 * 1024  # request line + headers
MAX_HEADERS = 100


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsServer:
    def __init__(self, listen: str, *, deadline: float = REQUEST_DEADLINE,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.listen = listen
        self.deadline = deadline
        self.max_connections = max_connections
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def connections(self) -> int:
        """Connections being served right now."""
        return len(self._connections)

    async def start(self) -> None:
        host, port = split_listen(self.listen)
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        log.info("metrics_listening", listen=self.listen)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._connections):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            writer.transport.abort()  # no answer: a flood gets nothing but a reset
            return
        self._connections.add(writer)
        writer.transport.set_write_buffer_limits(high=0)  # drain() = the whole answer is with the kernel
        try:
            await aio.wait_for(self._exchange(reader, writer), self.deadline)
        except (asyncio.TimeoutError, ConnectionError, ValueError):
            writer.transport.abort()
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readline()
        for _ in range(MAX_HEADERS):  # skip headers
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
        else:
            raise ValueError("too many headers")
        parts = request.split()
        if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] in (b"/metrics", b"/"):
            body = generate_latest(REGISTRY)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_LATEST}\r\n"
        else:
            body = b"not found\n"
            head = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
        writer.write(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
