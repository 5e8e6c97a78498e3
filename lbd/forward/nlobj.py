"""Reading lbd's nftables counters and tables straight from nfnetlink.

libnftables answers any ``list`` command by first loading its whole cache,
set elements included, and formatting it: with a 65537-entry Maglev map per
service port that takes a second or more per call. The entries' counters
(``NFT_MSG_GETSETELEM``) and the table list (``NFT_MSG_GETTABLE``) are
netlink dumps, read here directly.
``parse_*`` are pure (bytes in, values out) and unit-tested; ``dump()`` does
the socket I/O.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Iterator

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE = 1
NFT_MSG_GETSETELEM = 13
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_EXPR, NFTA_SET_ELEM_EXPRESSIONS = 1, 7, 11
NFTA_DATA_VALUE = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFTA_TABLE_NAME = 1
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
FAMILIES = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}
NLA_TYPE_MASK = 0x3FFF


class NetlinkFormatError(ValueError):
    """A netlink answer that does not parse."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink attribute in ``data``."""
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4 or offset + length > len(data):
            raise NetlinkFormatError(f"attribute length {length} at {offset} overruns {len(data)} bytes")
        yield kind & NLA_TYPE_MASK, data[offset + 4:offset + length]
        offset += _align(length)


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def request(msg_type: int, family: int, seq: int, payload: bytes = b"") -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + payload
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | msg_type,
                       NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload after the netlink header) of each message; raises on NLMSG_ERROR != 0."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16 or offset + length > len(data):
            raise NetlinkFormatError(f"message length {length} at {offset} overruns {len(data)} bytes")
        payload = data[offset + 16:offset + length]
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else -1
            if code != 0:
                raise OSError(-code, os.strerror(-code))
        yield kind, payload
        offset += _align(length)


def _counter_expr(data: bytes) -> tuple[int, int] | None:
    name, values = None, None
    for kind, value in attrs(data):
        if kind == NFTA_EXPR_NAME:
            name = value.rstrip(b"\0")
        elif kind == NFTA_EXPR_DATA:
            packets = octets = 0
            for inner, raw in attrs(value):
                if inner == NFTA_COUNTER_BYTES and len(raw) == 8:
                    octets = struct.unpack(">Q", raw)[0]
                elif inner == NFTA_COUNTER_PACKETS and len(raw) == 8:
                    packets = struct.unpack(">Q", raw)[0]
            values = (packets, octets)
    return values if name == b"counter" else None


def parse_element_counters(payload: bytes) -> list[tuple[int, int, int]]:
    """(key, packets, bytes) of each element in one NFT_MSG_NEWSETELEM payload.

    The key is a 32-bit integer in host byte order (a ``jhash`` result); an
    element without a counter is skipped. Written as flat loops over offsets
    (no nested generators): a 65537-entry map is 5 MB of attributes, read on
    every ``lbd-ctl status``.
    """
    out: list[tuple[int, int, int]] = []
    unpack = struct.unpack_from
    end = len(payload)
    offset = 4
    while offset + 4 <= end:
        length, kind = unpack("=HH", payload, offset)
        if length < 4 or offset + length > end:
            raise NetlinkFormatError(f"attribute length {length} at {offset} overruns {end} bytes")
        if kind & NLA_TYPE_MASK == NFTA_SET_ELEM_LIST_ELEMENTS:
            _elements(payload, offset + 4, offset + length, out)
        offset += _align(length)
    return out


def _elements(buf: bytes, start: int, stop: int, out: list[tuple[int, int, int]]) -> None:
    unpack = struct.unpack_from
    pos = start
    while pos + 4 <= stop:
        length, _kind = unpack("=HH", buf, pos)
        if length < 4 or pos + length > stop:
            raise NetlinkFormatError(f"element length {length} at {pos} overruns {stop} bytes")
        key = counted = None
        inner, inner_stop = pos + 4, pos + length
        while inner + 4 <= inner_stop:
            alen, akind = unpack("=HH", buf, inner)
            if alen < 4 or inner + alen > inner_stop:
                raise NetlinkFormatError(f"attribute length {alen} at {inner} overruns {inner_stop} bytes")
            akind &= NLA_TYPE_MASK
            body = buf[inner + 4:inner + alen]
            if akind == NFTA_SET_ELEM_KEY:
                for data_kind, raw in attrs(body):
                    if data_kind == NFTA_DATA_VALUE and len(raw) == 4:
                        key = unpack("=I", raw)[0]
            elif akind == NFTA_SET_ELEM_EXPR:
                counted = _counter_expr(body) or counted
            elif akind == NFTA_SET_ELEM_EXPRESSIONS:
                for expr_kind, expr in attrs(body):
                    if expr_kind == NFTA_LIST_ELEM:
                        counted = _counter_expr(expr) or counted
            inner += _align(alen)
        if key is not None and counted is not None:
            out.append((key, counted[0], counted[1]))
        pos += _align(length)


def parse_table(payload: bytes) -> tuple[int, str] | None:
    family = payload[0] if payload else 0
    for kind, value in attrs(payload[4:]):
        if kind == NFTA_TABLE_NAME:
            return family, value.rstrip(b"\0").decode(errors="replace")
    return None


def dump(msg_type: int, family: int, payload: bytes = b"", timeout: float = 2.0) -> list[tuple[int, bytes]]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        sock.sendall(request(msg_type, family, 1, payload))
        out: list[tuple[int, bytes]] = []
        while True:
            data = sock.recv(1 << 20)
            for kind, body in messages(data):
                if kind == NLMSG_DONE:
                    return out
                if kind != NLMSG_ERROR:
                    out.append((kind & 0xFF, body))


def element_counters(family: str, table: str, name: str) -> dict[int, tuple[int, int]]:
    """key -> (packets, bytes) of every element of map ``name`` in ``family table``."""
    payload = attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0") + attr(NFTA_SET_ELEM_LIST_SET,
                                                                            name.encode() + b"\0")
    out: dict[int, tuple[int, int]] = {}
    for _kind, body in dump(NFT_MSG_GETSETELEM, FAMILIES[family], payload):
        for key, packets, octets in parse_element_counters(body):
            out[key] = (packets, octets)
    return out


def tables() -> set[tuple[str, str]]:
    """Every (family, name) table in this network namespace."""
    names = {v: k for k, v in FAMILIES.items()}
    out: set[tuple[str, str]] = set()
    for _kind, body in dump(NFT_MSG_GETTABLE, 0):
        parsed = parse_table(body)
        if parsed is not None:
            out.add((names.get(parsed[0], str(parsed[0])), parsed[1]))
    return out
