"""Builders of hostile inputs shared by the regression tests and the corpus generator."""

from __future__ import annotations

import msgpack

from lbd.cluster import lzw, wire


def lzw_codes(codes: list[int]) -> bytes:
    """Pack LZW codes LSB first at the widths Go's reader (and ours) expects."""
    out = bytearray()
    bits = nbits = 0
    width, hi, overflow, defined = 9, 257, 512, False
    for code in codes:
        bits |= code << nbits
        nbits += width
        while nbits >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8
        if code == 256:
            width, hi, overflow, defined = 9, 257, 512, False
            continue
        if code == 257:
            break
        # mirror lzw.decompress: a code after a clear defines nothing
        hi += 1
        if hi >= overflow:
            if width == 12:
                hi -= 1
                defined = False
                continue
            width += 1
            overflow <<= 1
        defined = True
    if nbits:
        out.append(bits & 0xFF)
    return bytes(out)


def lzw_bomb(repeats: int) -> bytes:
    """A stream that grows the dictionary by one byte per code up to 3,838 bytes
    (a run of zeros), then repeats that longest code: ~2,500x expansion."""
    codes = [256, 0] + list(range(258, 4096))
    codes += [4094] * repeats + [257]
    return lzw_codes(codes)


def compress_part(lzw_data: bytes) -> bytes:
    body = msgpack.packb({"Algo": 0, "Buf": lzw_data}, use_bin_type=False)
    return bytes([wire.MsgType.COMPRESS]) + body


def bomb_packet(parts: int = 8, repeats: int = 500) -> bytes:
    """A compound of compressed parts, each under any per-part cap, together a bomb."""
    part = compress_part(lzw_bomb(repeats))
    return wire.make_compound([part] * parts)


def inflated_size(repeats: int) -> int:
    return len(lzw.decompress(lzw_bomb(repeats), 1 << 30))
