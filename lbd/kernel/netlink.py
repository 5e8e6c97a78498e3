"""pyroute2 netlink calls for asyncio code, uvloop included.

pyroute2's ``AsyncIPRoute`` opens its socket with ``create_datagram_endpoint``,
which uvloop refuses for AF_NETLINK ("invalid family 16"), and the
synchronous ``IPRoute`` cannot run inside a running loop. So lbd keeps one
synchronous ``IPRoute`` on a dedicated worker thread, driving its own plain
selector event loop, and awaits its calls from the daemon's loop. Netlink
calls are short (well under a millisecond), one thread serialises them, and
the daemon's loop never blocks on them.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Netlink:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lbd-netlink")
        self._ipr: Any = None
        self._batcher: Any = None  # AddrBatcher, opened on first use

    def _run(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            # An explicit SelectorEventLoop: a uvloop policy would hand out a uvloop one.
            self._ipr = IPRoute(use_event_loop=asyncio.SelectorEventLoop())
        result = getattr(self._ipr, method)(*args, **kwargs)
        if method.startswith("get_") or method in ("link", "addr", "route") and args and args[0] == "dump":
            return list(result)
        return result

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``IPRoute.<method>(*args, **kwargs)`` on the netlink thread; dumps come back as lists."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, method, args, kwargs)

    def _batch(self, requests: list[Any]) -> list[int]:
        if self._batcher is None:
            self._batcher = AddrBatcher()
        try:
            return self._batcher.run(requests)
        except OSError:
            # A broken exchange (timeout, overrun) leaves acks unread: start afresh next time.
            self._batcher.close()
            self._batcher = None
            raise

    async def addr_batch(self, requests: list[Any]) -> list[int]:
        """Pipelined address adds/deletes (``AddrRequest``); errno per request, 0 when applied."""
        if not requests:
            return []
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._batch, requests)

    def _close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._close)
        self._pool.shutdown(wait=False)


# -- pipelined address changes ------------------------------------------------
# One RTM_NEWADDR/RTM_DELADDR per VIP, many in flight on one raw netlink socket,
# each with NLM_F_ACK and its own sequence number; the acks (NLMSG_ERROR, error 0
# on success, RFC 3549 section 2.3.2.2) are gathered and matched back by sequence,
# so a failure is reported for exactly the address it concerns.

import ipaddress as _ipaddress
import os as _os
import socket as _socket
import struct as _struct
from dataclasses import dataclass as _dataclass

RTM_NEWADDR, RTM_DELADDR = 20, 21
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
IFA_ADDRESS, IFA_LOCAL, IFA_CACHEINFO, IFA_FLAGS, IFA_PROTO = 1, 2, 6, 8, 11
# Requests per sendmsg: a netlink sendmsg must fit the socket's send buffer
# (~200 KiB by default); 512 requests of ~60 bytes do with room to spare.
WINDOW = 512


@_dataclass(frozen=True)
class AddrRequest:
    """Add (or refresh, NLM_F_REPLACE) or delete one address."""

    op: str  # "replace" or "del"
    ifindex: int
    address: _ipaddress.IPv4Address | _ipaddress.IPv6Address
    prefixlen: int
    flags: int = 0
    proto: int = 0
    lifetime: int = 0  # valid = preferred, seconds (0xFFFFFFFF: forever)


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def encode_addr_request(req: AddrRequest, seq: int) -> bytes:
    """One rtnetlink address message (include/uapi/linux/if_addr.h) with NLM_F_ACK."""
    family = _socket.AF_INET if req.address.version == 4 else _socket.AF_INET6
    packed = req.address.packed
    body = _struct.pack("=BBBBI", family, req.prefixlen, req.flags & 0xFF, 0, req.ifindex)
    attrs = _attr(IFA_LOCAL, packed) if family == _socket.AF_INET else b""
    attrs += _attr(IFA_ADDRESS, packed)
    if req.op == "replace":
        kind, flags = RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        attrs += _attr(IFA_FLAGS, _struct.pack("=I", req.flags))
        attrs += _attr(IFA_CACHEINFO, _struct.pack("=IIII", req.lifetime, req.lifetime, 0, 0))
        if req.proto:
            attrs += _attr(IFA_PROTO, _struct.pack("=B", req.proto))
    elif req.op == "del":
        kind, flags = RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK
    else:
        raise ValueError(f"unknown address op {req.op!r}")
    payload = body + attrs
    return _struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def parse_acks(data: bytes) -> list[tuple[int, int]]:
    """(sequence, errno) for every NLMSG_ERROR in a datagram (errno 0: done)."""
    out = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, seq, _pid = _struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            break
        if kind == NLMSG_ERROR and length >= 20:
            (error,) = _struct.unpack_from("=i", data, offset + 16)
            out.append((seq, -error))
        offset += (length + 3) & ~3
    return out


class AddrBatcher:
    """Sends address requests WINDOW at a time and gathers every ack (blocking; netlink thread)."""

    def __init__(self) -> None:
        self._sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, _socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        try:  # room for a full window of acks (each costs far more than its 36 bytes)
            self._sock.setsockopt(_socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE
        except OSError:
            self._sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 4 << 20)
        self._sock.settimeout(10.0)
        self._seq = 0

    def run(self, requests: list[AddrRequest]) -> list[int]:
        """errno per request, in order (0: applied)."""
        results = [0] * len(requests)
        for start in range(0, len(requests), WINDOW):
            chunk = requests[start:start + WINDOW]
            pending: dict[int, int] = {}
            buf = bytearray()
            for i, req in enumerate(chunk):
                self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
                pending[self._seq] = start + i
                buf += encode_addr_request(req, self._seq)
            self._sock.sendto(bytes(buf), (0, 0))
            while pending:
                data = self._sock.recv(1 << 20)
                for seq, err in parse_acks(data):
                    index = pending.pop(seq, None)
                    if index is not None:
                        results[index] = err
        return results

    def close(self) -> None:
        self._sock.close()


def _batch_errors(results: list[int]) -> list[str | None]:
    return [None if e == 0 else f"[Errno {e}] {_os.strerror(e)}" for e in results]
