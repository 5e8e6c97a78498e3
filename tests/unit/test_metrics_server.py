"""The metrics HTTP server: answers GET /metrics; slowloris and non-reading clients are cut at the deadline."""

from __future__ import annotations

import asyncio
import socket

import pytest

from lbd.metrics_server import MetricsServer, split_listen

pytestmark = pytest.mark.timeout(60)


def _port(server: MetricsServer) -> int:
    assert server._server is not None
    return server._server.sockets[0].getsockname()[1]


async def _get(port: int, path: str = "/metrics") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


def test_split_listen():
    assert split_listen("127.0.0.1:9120") == ("127.0.0.1", 9120)
    assert split_listen("[::1]:9120") == ("::1", 9120)
    assert split_listen(":9120") == ("0.0.0.0", 9120)


async def test_serves_metrics_and_404():
    server = MetricsServer("127.0.0.1:0")
    await server.start()
    try:
        answer = await _get(_port(server))
        assert answer.startswith(b"HTTP/1.1 200 OK") and b"Content-Type: text/plain" in answer
        assert (await _get(_port(server), "/nope")).startswith(b"HTTP/1.1 404")
    finally:
        server.close()


async def _connect(port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    return sock


async def test_slowloris_connections_are_all_released_within_the_deadline():
    deadline = 1.0
    server = MetricsServer("127.0.0.1:0", deadline=deadline)
    await server.start()
    port = _port(server)
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    opened: dict[socket.socket, float] = {}
    ended: dict[socket.socket, float] = {}
    try:
        for _ in range(300):
            sock = await _connect(port)
            socks.append(sock)
            opened[sock] = loop.time()
        # Short header lines, one byte per connection every 50 ms: each line completes well within
        # any per-line timeout, the head never ends. Only an overall deadline stops this.
        request = b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 500
        t0 = loop.time()
        for i in range(len(request)):
            if len(ended) == len(socks) or loop.time() - t0 > deadline + 3:
                break
            for sock in socks:
                if sock in ended:
                    continue
                try:
                    sock.send(request[i:i + 1])
                    # An aborted connection shows as a reset (or EOF) on the next read.
                    if sock.recv(1) == b"":
                        ended[sock] = loop.time()
                except BlockingIOError:
                    pass
                except OSError:
                    ended[sock] = loop.time()
            await asyncio.sleep(0.05)
        assert len(ended) == len(socks), f"{len(socks) - len(ended)} of {len(socks)} connections still held"
        late = [ended[s] - opened[s] for s in socks if ended[s] - opened[s] > deadline + 1.5]
        assert not late, f"held beyond the deadline: {sorted(late)[-3:]}"
        assert server.connections == 0
        # And the server still answers a normal scrape.
        assert (await _get(port)).startswith(b"HTTP/1.1 200 OK")
    finally:
        for sock in socks:
            sock.close()
        server.close()


async def test_a_client_that_never_reads_is_cut_at_the_deadline(monkeypatch):
    import lbd.metrics_server as ms

    monkeypatch.setattr(ms, "generate_latest", lambda registry: b"x" * (8 << 20))  # far beyond the socket buffers
    server = MetricsServer("127.0.0.1:0", deadline=1.0)
    await server.start()
    loop = asyncio.get_running_loop()
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", _port(server)))
        await loop.sock_sendall(sock, b"GET /metrics HTTP/1.1\r\n\r\n")
        t0 = loop.time()
        while server.connections and loop.time() - t0 < 5:
            await asyncio.sleep(0.05)
        assert server.connections == 0 and loop.time() - t0 < 3
        sock.close()
    finally:
        server.close()


async def test_too_many_headers_or_a_huge_line_is_dropped():
    server = MetricsServer("127.0.0.1:0", deadline=5.0)
    await server.start()
    try:
        for payload in (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200, b"GET /" + b"a" * 100_000):
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(server))
            writer.write(payload)
            try:
                await writer.drain()
                data = await asyncio.wait_for(reader.read(), 3)  # closed long before the 5 s deadline
            except ConnectionError:
                data = b""
            assert data == b""
            writer.close()
    finally:
        server.close()
