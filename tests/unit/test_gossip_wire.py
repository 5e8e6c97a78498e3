"""memberlist wire codecs: shapes, round trips, rejection, fuzzing, serf vectors."""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbd.cluster import crypto, lzw, serf, wire
from lbd.cluster.errors import GossipError

FIXTURES = Path(__file__).parent / "fixtures"
KEY1 = bytes(range(32))
KEY2 = bytes(range(1, 17))

u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)
name = st.text(min_size=0, max_size=20)
addr = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))
vsn = st.binary(min_size=6, max_size=6)

messages = st.one_of(
    st.builds(wire.Ping, u32, name, st.binary(max_size=16), u16, name),
    st.builds(wire.IndirectPing, u32, addr, u16, name, st.booleans(), st.binary(max_size=16), u16, name),
    st.builds(wire.Ack, u32, st.binary(max_size=64)),
    st.builds(wire.Nack, u32),
    st.builds(wire.Suspect, u32, name, name),
    st.builds(wire.Alive, u32, name, addr, u16, st.binary(max_size=512), vsn),
    st.builds(wire.Dead, u32, name, name),
    st.builds(wire.User, st.binary(min_size=1, max_size=100)),
    st.builds(wire.Err, name),
)


# -- msgpack shapes (go-msgpack 0.5.5) -------------------------------------------


def test_alive_shape_matches_go_msgpack() -> None:
    data = wire.encode(wire.Alive(1, "py1", bytes([127, 0, 0, 1]), 7950, b"", wire.DEFAULT_VSN))
    assert data[0] == 4
    # Map of 6 with sorted keys; strings and []byte in the raw family; nil meta;
    # Vsn as a 6-byte raw string.
    assert data[1] == 0x86
    body = data[1:]
    assert b"\xa4Addr\xa4\x7f\x00\x00\x01" in body
    assert b"\xa4Meta\xc0" in body
    assert b"\xa3Vsn\xa6\x01\x05\x02\x02\x05\x05" in body
    assert b"\xa4Port\xcd\x1f\x0e" in body
    assert b"\xc4" not in body and b"\xd9" not in body  # never bin8 or str8
    keys = list(msgpack.unpackb(body, raw=True).keys())
    assert keys == sorted(keys)


def test_long_strings_use_str16_not_str8() -> None:
    data = wire.encode(wire.Suspect(1, "n" * 40, "x"))
    assert b"\xda\x00\x28" + b"n" * 40 in data


def test_ping_omits_empty_source_fields() -> None:
    body = msgpack.unpackb(wire.encode(wire.Ping(7, "a"))[1:], raw=True)
    assert body == {b"SeqNo": 7, b"Node": b"a"}
    full = msgpack.unpackb(wire.encode(wire.Ping(7, "a", b"\x7f\0\0\1", 9, "me"))[1:], raw=True)
    assert full[b"SourcePort"] == 9 and full[b"SourceNode"] == b"me"


def test_ack_empty_payload_is_nil() -> None:
    assert wire.encode(wire.Ack(5)) == b"\x02" + msgpack.packb({"Payload": None, "SeqNo": 5})


@given(messages)
def test_message_round_trip(msg: wire.Message) -> None:
    assert wire.decode(wire.encode(msg)) == msg


def test_decoder_accepts_bin_family_and_int_array_vsn_and_missing_keys() -> None:
    body = msgpack.packb(
        {"Incarnation": 3, "Node": "x", "Addr": b"\x0a\x00\x00\x01", "Port": 1, "Vsn": [1, 5, 2, 2, 5, 5]},
        use_bin_type=True,
    )
    msg = wire.decode(b"\x04" + body)
    assert msg == wire.Alive(3, "x", b"\x0a\x00\x00\x01", 1, b"", wire.DEFAULT_VSN)
    assert wire.decode(b"\x03" + msgpack.packb({"Node": "x"})) == wire.Suspect(0, "x", "")


def test_string_fields_require_utf8_but_bytes_fields_do_not() -> None:
    meta = b"\xff\x80\xfe"
    msg = wire.decode(wire.encode(wire.Alive(1, "x", b"\x01\x02\x03\x04", 1, meta)))
    assert isinstance(msg, wire.Alive) and msg.meta == meta
    with pytest.raises(GossipError):
        wire.decode(b"\x03" + msgpack.packb({"Node": b"\xff"}, use_bin_type=False))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x08",  # empty user message
        b"\x06\x80",  # pushPull is stream-only
        b"\xf4\x01a",  # label (memberlist >= 0.3.0)
        b"\x63",
        b"\x00\x01",  # not a map
        b"\x00" + msgpack.packb({"SeqNo": -1}),
        b"\x00" + msgpack.packb({"SeqNo": 1 << 32}),
        b"\x01" + msgpack.packb({"Port": 70000}),
        b"\x04" + msgpack.packb({"Vsn": b"\x01\x02\x03"}),  # serf panics on 1-5 entries
        b"\x04" + msgpack.packb({"Meta": b"x" * 513}),
        b"\x0b" + msgpack.packb({"SeqNo": True}),
        b"\x01" + msgpack.packb({"Nack": 1}),
        b"\x00\xc1",
    ],
)
def test_decode_rejects(data: bytes) -> None:
    with pytest.raises(GossipError):
        wire.decode(data)


def test_encoder_refuses_bad_vsn_empty_messages_and_big_meta() -> None:
    with pytest.raises(GossipError):
        wire.encode(wire.Alive(1, "x", b"\x01\x02\x03\x04", 1, b"", b"\x01\x05"))
    with pytest.raises(GossipError):
        wire.encode(wire.User(b""))
    with pytest.raises(GossipError):
        wire.make_compound([b"\x02ok", b""])
    with pytest.raises(GossipError):
        wire.make_compound([])
    with pytest.raises(GossipError):
        wire.encode(wire.Alive(1, "x", b"\x01\x02\x03\x04", 1, b"m" * 513))
    with pytest.raises(GossipError):
        wire.frame_stream(b"")


# -- compound, CRC, compress ---------------------------------------------------


def test_compound_round_trip_and_truncation() -> None:
    parts = [wire.encode(wire.Ack(i)) for i in range(3)]
    comp = wire.make_compound(parts)
    assert comp[:2] == b"\x07\x03"
    assert struct.unpack(">3H", comp[2:8]) == tuple(len(p) for p in parts)
    got = wire.decode_packet(comp)
    assert got.messages == [wire.Ack(0), wire.Ack(1), wire.Ack(2)] and not got.errors
    # Cut into the last part: the complete earlier ones survive.
    cut = wire.decode_packet(comp[:-2])
    assert cut.messages == [wire.Ack(0), wire.Ack(1)] and cut.errors
    with pytest.raises(GossipError):
        wire.decode_packet(b"\x07\x05\x00")  # truncated length table


def test_compound_keeps_good_parts_around_bad_ones() -> None:
    comp = wire.make_compound([wire.encode(wire.Nack(1)), b"\x63junk", wire.encode(wire.Nack(2))])
    got = wire.decode_packet(comp)
    assert got.messages == [wire.Nack(1), wire.Nack(2)] and len(got.errors) == 1


def test_crc_wrapping() -> None:
    msg = wire.encode(wire.Ping(1, "a"))
    wrapped = wire.add_crc(msg)
    assert wrapped[0] == 12 and struct.unpack(">I", wrapped[1:5])[0] == zlib.crc32(msg)
    assert wire.decode_packet(wrapped).messages == [wire.Ping(1, "a")]
    bad = wrapped[:5] + bytes([wrapped[5] ^ 1]) + wrapped[6:]
    with pytest.raises(GossipError, match="checksum"):
        wire.decode_packet(bad)


def test_nested_compress_crc_compound() -> None:
    inner = wire.make_compound([wire.encode(wire.Ack(1)), wire.encode(wire.User(b"hello"))])
    packet = wire.add_crc(wire.compress_message(inner))
    got = wire.decode_packet(packet)
    assert got.messages == [wire.Ack(1), wire.User(b"hello")]
    assert {12, 9, 7} <= set(got.types)


def test_compress_rejects_unknown_algo_and_empty_inflation() -> None:
    with pytest.raises(GossipError):
        wire.decode_packet(b"\x09" + msgpack.packb({"Algo": 1, "Buf": lzw.compress(b"\x02x")}))
    with pytest.raises(GossipError):
        wire.decode_packet(b"\x09" + msgpack.packb({"Algo": 0, "Buf": lzw.compress(b"")}))


# -- LZW -----------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"a", os.urandom(100_000), b"ab" * 50_000, bytes(range(256)) * 400])
def test_lzw_round_trip(data: bytes) -> None:
    assert lzw.decompress(lzw.compress(data)) == data


def test_lzw_known_go_outputs() -> None:
    # Go: lzw.NewWriter(LSB, 8) on empty input writes clear, EOF: 0x100 | 0x101 << 9.
    assert lzw.compress(b"") == bytes([0x00, 0x03, 0x02])


def test_lzw_rejects_missing_eof_and_bad_codes() -> None:
    good = lzw.compress(b"hello hello hello")
    with pytest.raises(GossipError, match="EOF"):
        lzw.decompress(good[:-2])
    with pytest.raises(GossipError):
        lzw.decompress(b"")
    # A clear code followed by code 300, which is not defined yet.
    bits = 256 | (300 << 9)
    with pytest.raises(GossipError, match="invalid code"):
        lzw.decompress(bits.to_bytes(3, "little"))


def test_lzw_go_vector_from_serf() -> None:
    """serf's reply to a join push-pull after 40 ``serf event`` of 400 characters.

    Captured from Debian's serf 0.9.4 (memberlist 0.2.2) on loopback: a plaintext
    push-pull with Join was written to its TCP port and the raw reply saved.
    """
    raw = (FIXTURES / "gossip_serf_pushpull.bin").read_bytes()
    assert raw[0] == wire.MsgType.COMPRESS
    obj = msgpack.unpackb(raw[1:], raw=True)
    inflated = lzw.decompress(obj[b"Buf"])
    assert inflated[0] == wire.MsgType.PUSH_PULL
    # Our encoder reproduces Go's bytes exactly.
    assert lzw.compress(inflated) == obj[b"Buf"]
    sm = wire.decode_stream(raw)
    assert sm.compressed and isinstance(sm.message, wire.PushPull)
    assert sm.message.join is True
    assert len(sm.message.user_state) > 16 * 1024
    assert sm.message.user_state[0] == serf.MSG_PUSH_PULL
    assert serf.ltime_of(sm.message.user_state) > 0
    (node,) = [n for n in sm.message.nodes if n.name == "serfcap"]
    assert node.vsn == bytes([1, 5, 2, 2, 5, 5]) and node.meta == b"\xff\x80" and node.port == 7946


# -- encryption ----------------------------------------------------------------


def test_encrypt_v1_layout_and_round_trip() -> None:
    sealed = crypto.encrypt(KEY1, b"hello")
    assert sealed[0] == 1 and len(sealed) == 1 + 12 + 5 + 16
    assert crypto.decrypt([KEY1], sealed) == b"hello"


def test_encrypt_v0_pads_pkcs7() -> None:
    sealed = crypto.encrypt(KEY1, b"x" * 16, version=0)
    assert sealed[0] == 0 and len(sealed) == 1 + 12 + 32 + 16  # a full block of padding
    assert crypto.decrypt([KEY1], sealed) == b"x" * 16
    assert crypto.decrypt([KEY1], crypto.encrypt(KEY1, b"abc", version=0)) == b"abc"


def test_keyring_tries_every_key() -> None:
    sealed = crypto.encrypt(KEY2, b"data")
    assert crypto.decrypt([KEY1, KEY2], sealed) == b"data"
    with pytest.raises(GossipError, match="no installed keys"):
        crypto.decrypt([KEY1], sealed)


def test_decrypt_rejects_version_above_1_and_short_payloads() -> None:
    sealed = bytearray(crypto.encrypt(KEY1, b"data"))
    sealed[0] = 2
    with pytest.raises(GossipError, match="version"):
        crypto.decrypt([KEY1], bytes(sealed))
    with pytest.raises(GossipError, match="short"):
        crypto.decrypt([KEY1], b"\x01" + b"\x00" * 27)
    with pytest.raises(GossipError, match="short"):
        crypto.decrypt([KEY1], b"\x00" + b"\x00" * 40)


def test_stream_encryption_uses_header_as_aad() -> None:
    msg = wire.encode(wire.Ping(9, "n"))
    framed = wire.frame_stream(msg, [KEY1])
    assert framed[0] == 10
    (length,) = struct.unpack(">I", framed[1:5])
    assert length == len(framed) - 5 == 1 + 12 + len(msg) + 16
    assert wire.decode_stream(framed, [KEY1]).message == wire.Ping(9, "n")
    # Sealed with the 5 header bytes as AAD: the same ciphertext sealed with the
    # empty UDP AAD does not authenticate as a stream.
    assert crypto.decrypt([KEY1], framed[5:], framed[:5]) == msg
    sealed_other_aad = bytes([10]) + struct.pack(">I", length) + crypto.encrypt(KEY1, msg, b"")
    with pytest.raises(GossipError):
        wire.decode_stream(sealed_other_aad, [KEY1])


def test_plaintext_refused_when_keys_set_and_verify_on() -> None:
    plain = wire.encode(wire.Ping(1, "n"))
    with pytest.raises(GossipError, match="not encrypted"):
        wire.decode_stream(plain, [KEY1], verify_incoming=True)
    assert wire.decode_stream(plain, [KEY1], verify_incoming=False).message == wire.Ping(1, "n")
    with pytest.raises(GossipError):
        wire.open_packet(plain, [KEY1], verify_incoming=True)
    assert wire.open_packet(plain, [KEY1], verify_incoming=False) == plain
    with pytest.raises(GossipError, match="no keys"):
        wire.decode_stream(wire.frame_stream(plain, [KEY1]), [])


def test_udp_packet_sealing_round_trip() -> None:
    packet = wire.seal_packet(wire.encode(wire.Nack(3)), [KEY1, KEY2])
    assert wire.decode_packet(wire.open_packet(packet, [KEY2, KEY1])).messages == [wire.Nack(3)]


def test_generate_and_load_keyring(tmp_path: Path) -> None:
    k1, k2 = crypto.generate_key(), crypto.generate_key()
    assert len(base64.b64decode(k1)) == 32 and k1 != k2
    f = tmp_path / "keys.json"
    f.write_text(json.dumps([k1, k2]))
    assert crypto.load_keyring(f) == [base64.b64decode(k1), base64.b64decode(k2)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ("{}", "JSON array"),
        ("[]", "empty"),
        ("[1]", r"key \[0\] must be a base64 string"),
        ('["!!!"]', r"key \[0\].*base64"),
        (json.dumps([base64.b64encode(b"x" * 10).decode()]), "16, 24 or 32"),
    ],
)
def test_load_keyring_errors(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "keys.json"
    f.write_text(content)
    with pytest.raises(GossipError, match=message):
        crypto.load_keyring(f)


def test_load_keyring_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GossipError, match="cannot read"):
        crypto.load_keyring(tmp_path / "absent.json")


# -- streams -------------------------------------------------------------------


def _pp() -> wire.PushPull:
    nodes = (
        wire.PushNode("a", b"\x0a\x4d\x00\x01", 7946, b"\xff\x80", 3, 0),
        wire.PushNode("b", b"\x0a\x4d\x00\x02", 7946, b"", 1, 2),
    )
    return wire.PushPull(False, nodes, b"\x02state")


def test_push_pull_round_trip_incremental() -> None:
    data = wire.encode_push_pull(_pp())
    for i in range(len(data)):
        dec = wire.StreamDecoder()
        assert dec.feed(data[:i]) is None
        with pytest.raises(GossipError):
            dec.eof()
    dec = wire.StreamDecoder()
    got = None
    for b in data:
        got = dec.feed(bytes([b])) or got
    assert got is not None and got.message == _pp()


@pytest.mark.parametrize("keys", [[], [KEY1]])
@pytest.mark.parametrize("compress", [False, True])
def test_stream_framings(keys: list[bytes], compress: bool) -> None:
    framed = wire.frame_stream(wire.encode_push_pull(_pp()), keys, compress=compress)
    sm = wire.decode_stream(framed, keys)
    assert sm.message == _pp() and sm.compressed == compress and sm.encrypted == bool(keys)


def test_user_stream_and_err() -> None:
    sm = wire.decode_stream(wire.encode_user_stream(b"payload"))
    assert sm.message == wire.User(b"payload")
    assert wire.decode_stream(wire.encode(wire.Err("boom"))).message == wire.Err("boom")


def test_stream_size_limit() -> None:
    dec = wire.StreamDecoder(max_size=1000)
    with pytest.raises(GossipError, match="limit"):
        dec.feed(b"\x06" + b"\x00" * 2000)
    huge = b"\x0a" + struct.pack(">I", 30 * 1024 * 1024)
    with pytest.raises(GossipError, match="limit"):
        wire.StreamDecoder([KEY1]).feed(huge)


def test_parse_host_port() -> None:
    assert wire.parse_host_port("10.0.0.1:7000") == ("10.0.0.1", 7000)
    assert wire.parse_host_port("[fd77::1]:7000") == ("fd77::1", 7000)
    assert wire.parse_host_port("node1") == ("node1", 7946)
    assert wire.parse_host_port("fd77::1") == ("fd77::1", 7946)
    for bad in ("", "h:0", "h:x", "[fd77::1"):
        with pytest.raises(GossipError):
            wire.parse_host_port(bad)


def test_serf_tags() -> None:
    assert serf.encode_tags({}) == b"\xff\x80"
    assert serf.decode_tags(serf.encode_tags({"role": "py"})) == {"role": "py"}
    assert serf.decode_tags(b"web") == {"role": "web"}
    with pytest.raises(GossipError):
        serf.decode_tags(b"\xff\xc1")


# -- fuzzing: nothing but GossipError escapes ----------------------------------

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_packet_decoder(data: bytes) -> None:
    try:
        wire.decode_packet(data)
    except GossipError:
        pass


@FUZZ
@given(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 13]), st.binary(max_size=200))
def test_fuzz_typed_packets(mtype: int, body: bytes) -> None:
    try:
        wire.decode_packet(bytes([mtype]) + body)
    except GossipError:
        pass


@FUZZ
@given(messages, st.integers(0, 200), st.integers(0, 255))
def test_fuzz_mutated_messages(msg: wire.Message, pos: int, xor: int) -> None:
    data = bytearray(wire.encode(msg))
    data[pos % len(data)] ^= xor
    try:
        wire.decode_packet(bytes(data))
    except GossipError:
        pass


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_stream_decoder(data: bytes, keys: bool) -> None:
    dec = wire.StreamDecoder([KEY1] if keys else [], verify_incoming=keys)
    try:
        if dec.feed(data) is None:
            dec.eof()
    except GossipError:
        pass


@FUZZ
@given(st.integers(0, 2000), st.integers(0, 255))
def test_fuzz_mutated_push_pull(pos: int, xor: int) -> None:
    data = bytearray(wire.frame_stream(wire.encode_push_pull(_pp()), compress=True))
    data[pos % len(data)] ^= xor
    try:
        wire.decode_stream(bytes(data))
    except GossipError:
        pass


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_lzw_and_crypto(data: bytes) -> None:
    for fn in (lambda: lzw.decompress(data), lambda: crypto.decrypt([KEY1, KEY2], data)):
        try:
            fn()
        except GossipError:
            pass


def test_serf_ltime_and_leave_intent() -> None:
    intent = serf.leave_intent(7, "py1")
    assert intent[0] == serf.MSG_LEAVE
    assert msgpack.unpackb(intent[1:], raw=True) == {b"LTime": 7, b"Node": b"py1", b"Prune": False}
    assert serf.ltime_of(intent) == 7
    assert serf.ltime_of(b"\x02" + msgpack.packb({"LTime": 3, "EventLTime": 9})) == 9
    assert serf.ltime_of(b"\x07junk") == 0 and serf.ltime_of(b"\x00\xc1") == 0
