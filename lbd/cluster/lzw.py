"""LZW exactly as Go's ``compress/lzw`` with LSB bit order and literal width 8.

memberlist (``util.go`` compressPayload/decompressBuffer) compresses with
``lzw.NewWriter(w, lzw.LSB, 8)``: codes 0-255 are literals, 256 is clear, 257 is
end of data, new dictionary entries start at 258, codes start 9 bits wide and
grow to at most 12 bits, packed least-significant bit first. serf compresses
every stream and any UDP packet that shrinks, so the decoder is mandatory
(memberlist-wire.md section 3).
"""

from __future__ import annotations

from .errors import GossipError

_LIT_WIDTH = 8
_CLEAR = 1 << _LIT_WIDTH  # 256
_EOF = _CLEAR + 1  # 257
_MAX_WIDTH = 12
_MAX_CODE = (1 << _MAX_WIDTH) - 1  # 4095: the writer clears before using it
_MAX_OUTPUT = 64 * 1024 * 1024  # hard cap against decompression bombs


class OutputLimitError(GossipError):
    """The stream inflates past the caller's limit."""


def decompress(data: bytes, max_output: int = _MAX_OUTPUT) -> bytes:
    """Inflate a Go LSB/8 LZW stream; a stream without the EOF code is an error."""
    # Each dictionary entry is (prefix code, suffix byte); expansions are built
    # by walking prefixes, like Go's reader, but cached as bytes for speed.
    table: list[bytes] = [bytes([i]) for i in range(256)] + [b"", b""]
    out = bytearray()
    width = _LIT_WIDTH + 1
    hi = _EOF
    overflow = 1 << width
    last: bytes | None = None  # expansion of the previous code; None after a clear
    bits = 0
    nbits = 0
    pos = 0
    n = len(data)
    while True:
        while nbits < width:
            if pos >= n:
                raise GossipError("lzw: stream ended before the EOF code")
            bits |= data[pos] << nbits
            pos += 1
            nbits += 8
        code = bits & ((1 << width) - 1)
        bits >>= width
        nbits -= width
        if code == _CLEAR:
            width = _LIT_WIDTH + 1
            hi = _EOF
            overflow = 1 << width
            last = None
            del table[258:]
            continue
        if code == _EOF:
            return bytes(out)
        if code < _CLEAR or code < hi:
            entry = table[code]
        elif code == hi and last is not None:
            # KwKwK: the code being defined right now (Go reader.go decode).
            entry = last + last[:1]
        else:
            raise GossipError(f"lzw: invalid code {code} (next free code {hi})")
        out += entry
        if len(out) > max_output:
            raise OutputLimitError("lzw: output exceeds the size limit")
        if last is not None and hi <= _MAX_CODE:
            # Define entry hi = previous expansion + first byte of this one.
            if len(table) <= hi:
                table.append(last + entry[:1])
            else:
                table[hi] = last + entry[:1]
        last = entry
        hi += 1
        if hi >= overflow:
            if width == _MAX_WIDTH:
                # Go stops defining entries until the next clear code.
                last = None
                hi -= 1
            else:
                width += 1
                overflow = 1 << width


def compress(data: bytes) -> bytes:
    """Deflate like Go's lzw.Writer (LSB, 8): leading clear, clear at 4095, EOF."""
    out = bytearray()
    bits = 0
    nbits = 0
    width = _LIT_WIDTH + 1

    def emit(code: int) -> None:
        nonlocal bits, nbits
        bits |= code << nbits
        nbits += width
        while nbits >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8

    hi = _EOF
    overflow = 1 << width
    table: dict[int, int] = {}

    def inc_hi() -> bool:
        """Go writer.incHi: False when the code space ran out and was cleared."""
        nonlocal hi, overflow, width
        hi += 1
        if hi == overflow:
            width += 1
            overflow <<= 1
        if hi == _MAX_CODE:
            emit(_CLEAR)
            width = _LIT_WIDTH + 1
            hi = _EOF
            overflow = _CLEAR << 1
            table.clear()
            return False
        return True

    if not data:
        emit(_CLEAR)
    else:
        # Go >= 1.17 sends a clear code first (GIF89a appendix F advice).
        emit(_CLEAR)
        code = data[0]
        for literal in data[1:]:
            key = (code << 8) | literal
            found = table.get(key)
            if found is not None:
                code = found
                continue
            emit(code)
            code = literal
            if inc_hi():
                table[key] = hi
        emit(code)
        inc_hi()
    emit(_EOF)
    if nbits > 0:
        out.append(bits & 0xFF)
    return bytes(out)
