"""Unauthenticated CPU amplification (issue 10 finding 3).

LZW was capped per compressed part, so one datagram of many parts inflated
to tens of MiB; a TCP stream was re-parsed from its first byte on every
64 KiB read. Both are counted here in bytes of work, never in seconds.
"""

from __future__ import annotations

import msgpack
import pytest

from lbd.cluster import lzw, wire
from lbd.cluster.errors import GossipError

from hostile import bomb_packet, compress_part, lzw_bomb


@pytest.fixture
def inflate_meter(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the bytes LZW produces, including those of an attempt that fails."""
    meter = {"bytes": 0}
    real = lzw.decompress

    def counting(data: bytes, max_output: int = lzw._MAX_OUTPUT) -> bytes:  # noqa: SLF001
        try:
            out = real(data, max_output)
        except lzw.OutputLimitError:
            meter["bytes"] += max_output
            raise
        meter["bytes"] += len(out)
        return out

    monkeypatch.setattr(wire.lzw, "decompress", counting)
    return meter


def test_lzw_budget_is_per_packet_not_per_part(inflate_meter: dict[str, int]) -> None:
    packet = bomb_packet()
    assert len(packet) < 65_507  # one UDP datagram
    with pytest.raises(wire.InflateLimitError):
        wire.decode_packet(packet)
    assert inflate_meter["bytes"] <= 2 * wire.MAX_PACKET_INFLATE


def test_many_parts_each_under_the_budget_share_it(inflate_meter: dict[str, int]) -> None:
    # 60 parts of ~1 kB, each inflating to 200 kB (under 256 KiB): 12 MB together.
    part = compress_part(lzw.compress(b"\x00" * 200_000))
    packet = wire.make_compound([part] * 60)
    assert len(packet) < 65_507
    with pytest.raises(wire.InflateLimitError):
        wire.decode_packet(packet)
    assert inflate_meter["bytes"] <= 2 * wire.MAX_PACKET_INFLATE


def test_nested_compression_shares_the_budget(inflate_meter: dict[str, int]) -> None:
    # compress(compound(compress(bomb) x 2)): every level draws from one budget.
    inner = wire.make_compound([compress_part(lzw_bomb(40))] * 2)
    outer = compress_part(lzw.compress(inner))
    with pytest.raises(GossipError):
        wire.decode_packet(wire.make_compound([outer] * 30))
    assert inflate_meter["bytes"] <= 2 * wire.MAX_PACKET_INFLATE


def test_genuine_compressed_packets_still_decode() -> None:
    msgs = [wire.encode(wire.Alive(i, f"node-{i}", bytes([10, 77, 0, i]), 7946, b"m" * 100)) for i in range(40)]
    packet = wire.compress_message(wire.make_compound(msgs))
    decoded = wire.decode_packet(packet)
    assert len(decoded.messages) == 40 and not decoded.errors
    assert decoded.inflated == len(wire.make_compound(msgs))


def test_swim_drops_a_bomb_and_counts_it() -> None:
    from lbd.cluster.swim import Swim

    core = Swim("a", "10.77.0.1", 7946, now=0.0)
    with pytest.raises(wire.InflateLimitError):
        core.handle_packet(bomb_packet(), ("10.77.0.9", 7946), 1.0)
    assert core.stats.malformed == 1
    assert [m.name for m in core.members()] == ["a"]


# -- streams: linear work ------------------------------------------------------

class _CountingUnpacker(msgpack.Unpacker):  # type: ignore[misc]
    fed = 0
    unpacks = 0

    def feed(self, data: bytes) -> None:
        _CountingUnpacker.fed += len(data)
        super().feed(data)

    def unpack(self):  # type: ignore[no-untyped-def]
        _CountingUnpacker.unpacks += 1
        return super().unpack()


def _big_push_pull(nodes: int = 20_000, state: int = 2 * 1024 * 1024) -> bytes:
    members = tuple(wire.PushNode(f"node-{i:05d}", bytes([10, 77, i >> 8 & 255, i & 255]), 7946, b"meta" * 8, i, 0)
                    for i in range(nodes))
    return wire.encode_push_pull(wire.PushPull(False, members, b"s" * state))


@pytest.mark.parametrize("compress", [False, True])
def test_a_4mib_push_pull_is_parsed_in_linear_work(monkeypatch: pytest.MonkeyPatch, compress: bool) -> None:
    data = wire.frame_stream(_big_push_pull(), compress=compress)
    assert len(data) >= (4 * 1024 * 1024 if not compress else 1)
    monkeypatch.setattr(wire.msgpack, "Unpacker", _CountingUnpacker)
    _CountingUnpacker.fed = _CountingUnpacker.unpacks = 0
    dec = wire.StreamDecoder()
    got = None
    chunks = 0
    for i in range(0, len(data), 65536):
        chunks += 1
        got = dec.feed(data[i:i + 65536])
        if got is not None:
            assert i + 65536 >= len(data), "complete only at the end"
    assert got is not None and isinstance(got.message, wire.PushPull) and len(got.message.nodes) == 20_000
    assert got.compressed == compress
    total = len(data) if not compress else len(_big_push_pull())
    # Each byte goes to msgpack once (a re-parse per read would be ~chunks/2 times the size).
    assert _CountingUnpacker.fed <= len(data) + total
    # One unpack per object, plus at most one that runs out of data per read.
    assert _CountingUnpacker.unpacks <= 20_000 + 2 + chunks


def test_encrypted_4mib_stream_is_opened_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from lbd.cluster import crypto

    key = bytes(range(32))
    data = wire.frame_stream(_big_push_pull(), [key])
    calls = {"n": 0}
    real = crypto.decrypt

    def counting(*args, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(wire.crypto, "decrypt", counting)
    dec = wire.StreamDecoder([key])
    got = None
    for i in range(0, len(data), 65536):
        got = dec.feed(data[i:i + 65536])
    assert got is not None and got.encrypted and calls["n"] == 1


def test_byte_by_byte_feed_of_every_stream_kind() -> None:
    for raw in (wire.encode_user_stream(b"hello"), wire.encode(wire.Err("x")),
                wire.encode(wire.Ping(3, "n")), wire.encode(wire.Ack(4, b"p")),
                wire.frame_stream(wire.encode_user_stream(b"z" * 300), compress=True)):
        dec = wire.StreamDecoder()
        got = None
        for b in raw:
            got = dec.feed(bytes([b])) or got
        assert got is not None and got.message == wire.decode_stream(raw).message
