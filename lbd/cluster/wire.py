"""memberlist wire codecs (sans-IO): messages, packets and streams.

Follows ``/work/shared/notes/memberlist-wire.md`` (memberlist 0.2.2, go-msgpack
0.5.5 as built into Debian's serf):

* every body except compound, user and hasCrc is one msgpack map keyed by the
  Go field names; go-msgpack writes strings and ``[]byte`` with the old raw/str
  family, so we pack with ``use_bin_type=False`` and unpack with ``raw=True``,
  decoding string fields ourselves (``Addr``/``Meta``/``Vsn`` are not UTF-8);
* UDP packets are ``[type][body]``, possibly wrapped in compound (7), compress
  (9) and hasCrc (12), then encrypted without a type byte;
* TCP streams carry one message, possibly compressed (9) then encrypted as
  ``[10][len:u32][sealed]`` with the 5 header bytes as additional data.

Every decoder raises :class:`GossipError` and nothing else on bad input.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import msgpack

from . import crypto, lzw
from .errors import GossipError

MAX_STREAM_SIZE = 20 * 1024 * 1024  # memberlist maxPushStateBytes / stream limit
# What one UDP packet may inflate to, over ALL its compressed parts together.
# A datagram is at most 64 KiB and memberlist compresses what it would have
# sent plain, so a genuine packet inflates to far less; LZW expands up to
# ~2,700x, and a per-part cap let one 52 kB datagram inflate to 128 MiB.
MAX_PACKET_INFLATE = 256 * 1024
UDP_BUFFER_SIZE = 1400  # memberlist UDPBufferSize: what one gossip packet may hold
COMPOUND_HEADER_OVERHEAD = 2  # [7][n]
COMPOUND_OVERHEAD = 2  # u16 length per part
USER_MSG_OVERHEAD = 1
MAX_COMPOUND_PARTS = 255
META_MAX_SIZE = 512
VSN_LEN = 6
# What lbd advertises: memberlist protocol 1..5 speaking 2, delegate 2..5 speaking 5,
# which is exactly what serf's agent sends (section 2) so verifyProtocol accepts us.
DEFAULT_VSN = bytes([1, 5, 2, 2, 5, 5])


class MsgType(enum.IntEnum):
    PING = 0
    INDIRECT_PING = 1
    ACK = 2
    SUSPECT = 3
    ALIVE = 4
    DEAD = 5
    PUSH_PULL = 6
    COMPOUND = 7
    USER = 8
    COMPRESS = 9
    ENCRYPT = 10
    NACK = 11
    HAS_CRC = 12
    ERR = 13
    HAS_LABEL = 244


class NodeStateCode(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


# -- messages -----------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    seq_no: int
    node: str  # the target's name; "" means anyone
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""


@dataclass(frozen=True)
class IndirectPing:
    seq_no: int
    target: bytes
    port: int
    node: str
    nack: bool = False
    source_addr: bytes = b""
    source_port: int = 0
    source_node: str = ""


@dataclass(frozen=True)
class Ack:
    seq_no: int
    payload: bytes = b""


@dataclass(frozen=True)
class Nack:
    seq_no: int


@dataclass(frozen=True)
class Suspect:
    incarnation: int
    node: str
    from_: str


@dataclass(frozen=True)
class Alive:
    incarnation: int
    node: str
    addr: bytes
    port: int
    meta: bytes = b""
    vsn: bytes = DEFAULT_VSN


@dataclass(frozen=True)
class Dead:
    incarnation: int
    node: str
    from_: str


@dataclass(frozen=True)
class User:
    """A user message (UDP: raw payload after the type byte; TCP: length-prefixed)."""

    payload: bytes


@dataclass(frozen=True)
class Err:
    error: str


@dataclass(frozen=True)
class PushNode:
    name: str
    addr: bytes
    port: int
    meta: bytes
    incarnation: int
    state: int
    vsn: bytes = DEFAULT_VSN


@dataclass(frozen=True)
class PushPull:
    join: bool
    nodes: tuple[PushNode, ...] = ()
    user_state: bytes = b""


Message = Union[Ping, IndirectPing, Ack, Nack, Suspect, Alive, Dead, User, Err, PushPull]

# Go field layout per message: (Go name, attribute, kind, omitempty). Kinds check
# ranges on decode and pick the msgpack shape on encode.
_Field = tuple[str, str, str, bool]
_FIELDS: dict[type, tuple[MsgType, tuple[_Field, ...]]] = {
    Ping: (
        MsgType.PING,
        (
            ("SeqNo", "seq_no", "u32", False),
            ("Node", "node", "str", False),
            ("SourceAddr", "source_addr", "bytes", True),
            ("SourcePort", "source_port", "u16", True),
            ("SourceNode", "source_node", "str", True),
        ),
    ),
    IndirectPing: (
        MsgType.INDIRECT_PING,
        (
            ("SeqNo", "seq_no", "u32", False),
            ("Target", "target", "bytes", False),
            ("Port", "port", "u16", False),
            ("Node", "node", "str", False),
            ("Nack", "nack", "bool", False),
            ("SourceAddr", "source_addr", "bytes", True),
            ("SourcePort", "source_port", "u16", True),
            ("SourceNode", "source_node", "str", True),
        ),
    ),
    Ack: (MsgType.ACK, (("SeqNo", "seq_no", "u32", False), ("Payload", "payload", "bytes", False))),
    Nack: (MsgType.NACK, (("SeqNo", "seq_no", "u32", False),)),
    Suspect: (
        MsgType.SUSPECT,
        (("Incarnation", "incarnation", "u32", False), ("Node", "node", "str", False), ("From", "from_", "str", False)),
    ),
    Alive: (
        MsgType.ALIVE,
        (
            ("Incarnation", "incarnation", "u32", False),
            ("Node", "node", "str", False),
            ("Addr", "addr", "bytes", False),
            ("Port", "port", "u16", False),
            ("Meta", "meta", "bytes", False),
            ("Vsn", "vsn", "vsn", False),
        ),
    ),
    Dead: (
        MsgType.DEAD,
        (("Incarnation", "incarnation", "u32", False), ("Node", "node", "str", False), ("From", "from_", "str", False)),
    ),
    Err: (MsgType.ERR, (("Error", "error", "str", False),)),
}
_PUSH_NODE_FIELDS: tuple[_Field, ...] = (
    ("Name", "name", "str", False),
    ("Addr", "addr", "bytes", False),
    ("Port", "port", "u16", False),
    ("Meta", "meta", "bytes", False),
    ("Incarnation", "incarnation", "u32", False),
    ("State", "state", "int", False),
    ("Vsn", "vsn", "vsn", False),
)
_PUSH_HEADER_FIELDS: tuple[_Field, ...] = (
    ("Nodes", "nodes", "int", False),
    ("UserStateLen", "user_state_len", "int", False),
    ("Join", "join", "bool", False),
)
_USER_HEADER_FIELDS: tuple[_Field, ...] = (("UserMsgLen", "length", "int", False),)
_COMPRESS_FIELDS: tuple[_Field, ...] = (("Algo", "algo", "int", False), ("Buf", "buf", "bytes", False))
_BY_TYPE: dict[int, type] = {int(t): cls for cls, (t, _) in _FIELDS.items()}

_ZERO = {"u32": 0, "u16": 0, "int": 0, "bool": False, "bytes": b"", "str": "", "vsn": b""}
_LIMIT = {"u16": 0xFFFF, "u32": 0xFFFFFFFF, "int": 0x7FFFFFFF}


# -- msgpack helpers ----------------------------------------------------------


def _pack_map(fields: Sequence[_Field], values: dict[str, Any]) -> bytes:
    out: dict[str, Any] = {}
    for go, attr, kind, omitempty in fields:
        v = values[attr]
        if kind == "vsn":
            if len(v) != VSN_LEN:
                raise GossipError(f"Vsn must be {VSN_LEN} bytes, got {len(v)}")  # serf panics otherwise
            out[go] = bytes(v)
            continue
        if omitempty and not v:
            continue
        if kind == "bytes":
            out[go] = bytes(v) if v else None  # a nil []byte is msgpack nil (0xc0)
        elif kind == "str":
            out[go] = v
        elif kind == "bool":
            out[go] = bool(v)
        else:
            if not 0 <= v <= _LIMIT[kind]:
                raise GossipError(f"{go}={v} out of range for {kind}")
            out[go] = int(v)
    # go-msgpack writes struct fields as a map with sorted keys.
    return msgpack.packb(dict(sorted(out.items())), use_bin_type=False)


def _field_value(go: str, kind: str, raw: Any) -> Any:
    if raw is None:
        return _ZERO[kind]
    if kind in ("u16", "u32", "int"):
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= _LIMIT[kind]:
            raise GossipError(f"{go}: expected {kind}, got {raw!r:.40}")
        return raw
    if kind == "bool":
        if not isinstance(raw, bool):
            raise GossipError(f"{go}: expected bool")
        return raw
    if kind == "bytes":
        if not isinstance(raw, bytes):
            raise GossipError(f"{go}: expected bytes")
        return raw
    if kind == "str":
        if not isinstance(raw, bytes):
            raise GossipError(f"{go}: expected string")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GossipError(f"{go}: string is not UTF-8") from None
    # vsn: a 6-byte raw string, or (Go accepts it) an array of small ints.
    if isinstance(raw, bytes):
        vsn = raw
    elif isinstance(raw, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in raw):
        vsn = bytes(raw)
    else:
        raise GossipError(f"{go}: expected a byte string")
    if len(vsn) not in (0, VSN_LEN):
        raise GossipError(f"{go}: must be {VSN_LEN} bytes, got {len(vsn)}")
    return vsn


def _unpack_fields(fields: Sequence[_Field], obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise GossipError("expected a msgpack map")
    values: dict[str, Any] = {}
    for go, attr, kind, _ in fields:
        values[attr] = _field_value(go, kind, obj.get(go.encode()))
    return values


def _unpackb(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=True, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise GossipError(f"bad msgpack: {type(exc).__name__}") from None


# -- single messages ----------------------------------------------------------


def encode(msg: Message) -> bytes:
    """``[type][body]`` for one message (UDP user messages: ``[8][payload]``)."""
    if isinstance(msg, User):
        if not msg.payload:
            raise GossipError("refusing to send an empty user message")  # serf panics on it
        return bytes([MsgType.USER]) + msg.payload
    if isinstance(msg, PushPull):
        return encode_push_pull(msg)
    try:
        mtype, fields = _FIELDS[type(msg)]
    except KeyError:
        raise GossipError(f"cannot encode {type(msg).__name__}") from None
    if isinstance(msg, Alive) and len(msg.meta) > META_MAX_SIZE:
        raise GossipError(f"meta is {len(msg.meta)} bytes, at most {META_MAX_SIZE}")
    return bytes([mtype]) + _pack_map(fields, msg.__dict__)


def decode(data: bytes) -> Message:
    """Decode one ``[type][body]`` message of the UDP kinds (and err)."""
    if not data:
        raise GossipError("empty message")
    mtype = data[0]
    if mtype == MsgType.USER:
        if len(data) < 2:
            raise GossipError("empty user message")
        return User(bytes(data[1:]))
    cls = _BY_TYPE.get(mtype)
    if cls is None:
        raise GossipError(f"message type {mtype} not supported here")
    _, fields = _FIELDS[cls]
    values = _unpack_fields(fields, _unpackb(bytes(data[1:])))
    if cls is Alive:
        if len(values["vsn"]) != VSN_LEN:
            values["vsn"] = b""
        if len(values["meta"]) > META_MAX_SIZE:
            raise GossipError("alive meta larger than 512 bytes")
    return cls(**values)  # type: ignore[no-any-return]


# -- packet wrappers: compound, compress, CRC ----------------------------------


def make_compound(parts: Sequence[bytes]) -> bytes:
    """``[7][n][n x u16 lengths][parts]``; at most 255 non-empty parts."""
    if not parts:
        raise GossipError("empty compound")
    if len(parts) > MAX_COMPOUND_PARTS:
        raise GossipError("more than 255 compound parts")
    out = bytearray([MsgType.COMPOUND, len(parts)])
    for p in parts:
        if not p or len(p) > 0xFFFF:
            raise GossipError("compound part empty or larger than 65535 bytes")
        out += struct.pack(">H", len(p))
    for p in parts:
        out += p
    return bytes(out)


def split_compound(body: bytes) -> tuple[list[bytes], int]:
    """Parts of a compound body (after the type byte) and how many were truncated."""
    if len(body) < 1:
        raise GossipError("compound without part count")
    n = body[0]
    if len(body) < 1 + 2 * n:
        raise GossipError("compound: truncated length table")
    lengths = struct.unpack(f">{n}H", body[1 : 1 + 2 * n])
    pos = 1 + 2 * n
    parts: list[bytes] = []
    for i, length in enumerate(lengths):
        if len(body) - pos < length:
            return parts, n - i  # memberlist keeps the complete earlier parts
        parts.append(bytes(body[pos : pos + length]))
        pos += length
    return parts, 0


def add_crc(msg: bytes) -> bytes:
    return bytes([MsgType.HAS_CRC]) + struct.pack(">I", zlib.crc32(msg)) + msg


def compress_message(msg: bytes) -> bytes:
    """``[9]{Algo: 0, Buf: lzw(msg)}`` (Buf inflates to the full framed message)."""
    values = {"algo": 0, "buf": lzw.compress(msg)}
    return bytes([MsgType.COMPRESS]) + _pack_map(_COMPRESS_FIELDS, values)


class InflateLimitError(GossipError):
    """A packet's compressed parts inflate past MAX_PACKET_INFLATE (the whole packet is dropped)."""


def _decompress_body(obj: Any, max_output: int) -> bytes:
    values = _unpack_fields(_COMPRESS_FIELDS, obj)
    if values["algo"] != 0:
        raise GossipError(f"unknown compression algorithm {values['algo']}")
    if max_output <= 0:
        raise InflateLimitError("compressed data exceeds the packet's inflate budget")
    try:
        out = lzw.decompress(values["buf"], max_output)
    except lzw.OutputLimitError:
        raise InflateLimitError(f"compressed data inflates past {max_output} bytes") from None
    if not out:
        raise GossipError("compressed message inflates to nothing")
    return out


@dataclass
class DecodedPacket:
    messages: list[Message] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # bad parts skipped, memberlist style
    types: list[int] = field(default_factory=list)  # every type byte seen, wrappers too
    inflated: int = 0  # bytes decompressed so far, over every part (MAX_PACKET_INFLATE)


def decode_packet(plain: bytes, _depth: int = 0, _out: DecodedPacket | None = None) -> DecodedPacket:
    """Unwrap a decrypted UDP packet into its messages.

    compound, compress and hasCrc re-enter the dispatcher (memberlist
    handleCommand), so parts may nest; a bad part is skipped and recorded while
    the good ones are kept. A bad outer packet raises :class:`GossipError`.
    """
    out = _out if _out is not None else DecodedPacket()
    if _depth > 8:
        raise GossipError("packet nested too deeply")
    if not plain:
        raise GossipError("empty packet")
    mtype = plain[0]
    out.types.append(mtype)
    if mtype == MsgType.COMPOUND:
        parts, truncated = split_compound(plain[1:])
        if truncated:
            out.errors.append(f"compound: {truncated} truncated parts")
        for part in parts:
            try:
                decode_packet(part, _depth + 1, out)
            except InflateLimitError:
                raise  # the budget is per packet: no part after it gets a fresh one
            except GossipError as exc:
                out.errors.append(str(exc))
        return out
    if mtype == MsgType.HAS_CRC:
        if len(plain) < 5:
            raise GossipError("hasCrc: truncated")
        (crc,) = struct.unpack(">I", plain[1:5])
        if zlib.crc32(plain[5:]) != crc:
            raise GossipError("hasCrc: checksum mismatch")
        return decode_packet(plain[5:], _depth + 1, out)
    if mtype == MsgType.COMPRESS:
        inner = _decompress_body(_unpackb(plain[1:]), MAX_PACKET_INFLATE - out.inflated)
        out.inflated += len(inner)
        return decode_packet(inner, _depth + 1, out)
    out.messages.append(decode(plain))
    return out


def seal_packet(plain: bytes, keys: Sequence[bytes], version: int = 1) -> bytes:
    """Encrypt a UDP packet with the primary key (no type byte, empty AAD)."""
    if not keys:
        return plain
    return crypto.encrypt(keys[0], plain, b"", version)


def open_packet(data: bytes, keys: Sequence[bytes], verify_incoming: bool = True) -> bytes:
    """Decrypt a UDP packet; with ``verify_incoming`` off a failure means plaintext."""
    if not data:
        raise GossipError("empty packet")
    if not keys:
        return data
    try:
        plain = crypto.decrypt(keys, data)
    except GossipError:
        if verify_incoming:
            raise
        return data
    if not plain:
        raise GossipError("decrypted payload is empty")
    return plain


# -- streams ------------------------------------------------------------------


def encode_push_pull(pp: PushPull) -> bytes:
    header = {"nodes": len(pp.nodes), "user_state_len": len(pp.user_state), "join": pp.join}
    out = bytearray([MsgType.PUSH_PULL])
    out += _pack_map(_PUSH_HEADER_FIELDS, header)
    for node in pp.nodes:
        if len(node.meta) > META_MAX_SIZE:
            raise GossipError(f"meta of {node.name} larger than {META_MAX_SIZE} bytes")
        out += _pack_map(_PUSH_NODE_FIELDS, node.__dict__)
    out += pp.user_state
    return bytes(out)


def encode_user_stream(payload: bytes) -> bytes:
    if not payload:
        raise GossipError("refusing to send an empty user message")
    return bytes([MsgType.USER]) + _pack_map(_USER_HEADER_FIELDS, {"length": len(payload)}) + payload


def frame_stream(
    message: bytes, keys: Sequence[bytes] = (), compress: bool = False, version: int = 1
) -> bytes:
    """Wrap a stream message: compress first, then encrypt (memberlist rawSendMsgStream)."""
    if not message:
        raise GossipError("refusing to send an empty stream message")
    if compress:
        message = compress_message(message)
    if not keys:
        return message
    # Sealed length = version byte + nonce + ciphertext (+ v0 padding) + tag.
    pad = (16 - len(message) % 16) if version == 0 else 0
    length = crypto.VERSION_SIZE + crypto.NONCE_SIZE + len(message) + pad + crypto.TAG_SIZE
    header = bytes([MsgType.ENCRYPT]) + struct.pack(">I", length)
    sealed = crypto.encrypt(keys[0], message, header, version)
    return header + sealed


class _Incomplete(Exception):
    """More stream bytes are needed (internal: never escapes this module)."""


@dataclass(frozen=True)
class StreamMessage:
    message: Message
    encrypted: bool
    compressed: bool
    size: int


class _PlainParser:
    """Incremental parser of one plaintext stream message ``[type][...]``.

    Every byte is handed to msgpack once: a 4 MiB push-pull read in 64 KiB
    chunks costs linear work (it used to be re-parsed from its first byte on
    every read). ``feed`` returns the message once whole; ``finish`` says the
    input is complete (a short message is then an error).
    """

    def __init__(self, allow_compress: bool = True) -> None:
        self.allow_compress = allow_compress
        self.mtype: int | None = None
        self.compressed = False
        self.examined = 0  # bytes handed to msgpack or sliced out: linear in the input
        self._u = msgpack.Unpacker(raw=True, strict_map_key=False, max_buffer_size=MAX_STREAM_SIZE + 1024)
        self._stage = "head"  # head -> nodes -> tail (raw bytes after the msgpack part) -> done
        self._hdr: dict[str, Any] = {}
        self._nodes: list[PushNode] = []
        self._tail = bytearray()
        self._tail_len = 0
        self._msg: Message | None = None

    def feed(self, data: bytes) -> Message | None:
        if self._msg is not None:
            return self._msg
        if self.mtype is None:
            if not data:
                return None
            self.mtype = data[0]
            data = data[1:]
            if self.mtype not in (MsgType.PUSH_PULL, MsgType.USER, MsgType.PING, MsgType.ACK, MsgType.ERR) \
                    and not (self.mtype == MsgType.COMPRESS and self.allow_compress):
                raise GossipError(f"stream message type {self.mtype} not supported")
        if self._stage == "tail":
            self._tail += data
            self.examined += len(data)
        elif data:
            self._u.feed(data)
            self.examined += len(data)
        self._advance()
        return self._msg

    def finish(self) -> Message:
        if self._msg is None:
            raise GossipError("stream message truncated")
        return self._msg

    def _next(self) -> Any:
        try:
            return self._u.unpack()
        except msgpack.OutOfData:
            raise _Incomplete() from None
        except Exception as exc:  # garbage: several unrelated exception types
            raise GossipError(f"bad msgpack in stream: {type(exc).__name__}") from None

    def _start_tail(self, length: int) -> None:
        # The raw bytes after the msgpack part are already in the unpacker's buffer.
        self._tail_len = length
        self._tail = bytearray(self._u.read_bytes(length)) if length else bytearray()
        self._stage = "tail"

    def _advance(self) -> None:
        mtype = self.mtype
        try:
            if self._stage == "head":
                obj = self._next()
                if mtype == MsgType.COMPRESS:
                    inner = _decompress_body(obj, MAX_STREAM_SIZE)
                    sub = _PlainParser(allow_compress=False)
                    sub.feed(inner)
                    self.examined += sub.examined
                    self._msg = sub.finish()
                    self.compressed = True
                    self._stage = "done"
                    return
                if mtype == MsgType.PUSH_PULL:
                    hdr = _unpack_fields(_PUSH_HEADER_FIELDS, obj)
                    if hdr["nodes"] > MAX_STREAM_SIZE // 8 or hdr["user_state_len"] > MAX_STREAM_SIZE:
                        raise GossipError("pushPull header exceeds the stream size limit")
                    self._hdr = hdr
                    self._stage = "nodes"
                elif mtype == MsgType.USER:
                    hdr = _unpack_fields(_USER_HEADER_FIELDS, obj)
                    if hdr["length"] > MAX_STREAM_SIZE:
                        raise GossipError("user message exceeds the stream size limit")
                    if hdr["length"] == 0:
                        raise GossipError("empty user message")
                    self._hdr = hdr
                    self._start_tail(hdr["length"])
                else:
                    cls = _BY_TYPE[mtype]  # type: ignore[index]
                    self._msg = cls(**_unpack_fields(_FIELDS[cls][1], obj))
                    self._stage = "done"
                    return
            if self._stage == "nodes":
                while len(self._nodes) < self._hdr["nodes"]:
                    values = _unpack_fields(_PUSH_NODE_FIELDS, self._next())
                    if len(values["meta"]) > META_MAX_SIZE:
                        raise GossipError("pushPull node meta larger than 512 bytes")
                    self._nodes.append(PushNode(**values))
                self._start_tail(self._hdr["user_state_len"])
            if self._stage == "tail" and len(self._tail) >= self._tail_len:
                payload = bytes(self._tail[: self._tail_len])
                if mtype == MsgType.USER:
                    self._msg = User(payload)
                else:
                    self._msg = PushPull(self._hdr["join"], tuple(self._nodes), payload)
                self._stage = "done"
        except _Incomplete:
            return


def _parse_plain_stream(buf: bytes, complete: bool, allow_compress: bool = True) -> tuple[Message, bool]:
    """Parse a whole ``[type][...]``; raises _Incomplete when ``buf`` ends early and not ``complete``."""
    parser = _PlainParser(allow_compress)
    msg = parser.feed(buf)
    if msg is None:
        if complete:
            raise GossipError("stream message truncated")
        raise _Incomplete()
    return msg, parser.compressed


class StreamDecoder:
    """Incremental decoder for one TCP stream message (request or reply).

    ``feed()`` returns the message once complete, else ``None``; ``eof()`` says
    the peer closed. With keys and ``verify_incoming``, plaintext is refused
    (memberlist replies "Encryption is configured but remote state is not encrypted").
    Work is linear in the bytes received: plaintext is parsed as it arrives,
    an encrypted message is opened once, when all of it is there.
    """

    def __init__(self, keys: Sequence[bytes] = (), verify_incoming: bool = True, max_size: int = MAX_STREAM_SIZE) -> None:
        self.keys = list(keys)
        self.verify_incoming = verify_incoming
        self.max_size = max_size
        self._buf = bytearray()
        self._plain: _PlainParser | None = None
        self.done: StreamMessage | None = None

    @property
    def examined(self) -> int:
        """Bytes the plaintext parser has looked at (tests check it stays linear)."""
        return self._plain.examined if self._plain is not None else 0

    def feed(self, data: bytes) -> StreamMessage | None:
        if self.done is not None:
            return self.done
        self._buf += data
        if len(self._buf) > self.max_size + 5:
            raise GossipError("stream exceeds the 20 MiB limit")
        return self._try(bytes(data), complete=False)

    def raw(self) -> bytes:
        """The bytes received so far (for diagnostics)."""
        return bytes(self._buf)

    def eof(self) -> StreamMessage:
        """The peer closed: return the message or raise for a truncated one."""
        if self.done is not None:
            return self.done
        msg = self._try(b"", complete=True)
        assert msg is not None
        return msg

    def _try(self, data: bytes, complete: bool) -> StreamMessage | None:
        buf = self._buf
        if not buf:
            if complete:
                raise GossipError("stream closed before any message")
            return None
        if buf[0] == MsgType.ENCRYPT:
            if not self.keys:
                raise GossipError("remote state is encrypted but no keys are configured")
            if len(buf) < 5 or len(buf) < 5 + int.from_bytes(buf[1:5], "big"):
                if len(buf) >= 5 and int.from_bytes(buf[1:5], "big") > self.max_size:
                    raise GossipError("encrypted stream exceeds the 20 MiB limit")
                if complete:
                    raise GossipError("stream message truncated")
                return None
            (length,) = struct.unpack(">I", buf[1:5])
            if length > self.max_size:
                raise GossipError("encrypted stream exceeds the 20 MiB limit")
            header = bytes(buf[:5])
            plain = crypto.decrypt(self.keys, bytes(buf[5 : 5 + length]), header)
            msg, compressed = _parse_plain_stream(plain, True)
            self.done = StreamMessage(msg, True, compressed, 5 + length)
            return self.done
        if self.keys and self.verify_incoming:
            raise GossipError("Encryption is configured but remote state is not encrypted")
        if self._plain is None:
            self._plain = _PlainParser()
            data = bytes(buf)  # everything so far (the first feed)
        got = self._plain.feed(data)
        if got is None:
            if complete:
                raise GossipError("stream message truncated")
            return None
        self.done = StreamMessage(got, False, self._plain.compressed, len(buf))
        return self.done


def decode_stream(data: bytes, keys: Sequence[bytes] = (), verify_incoming: bool = True) -> StreamMessage:
    """Decode a complete stream message (convenience for tests and small replies)."""
    dec = StreamDecoder(keys, verify_incoming)
    msg = dec.feed(data)
    return msg if msg is not None else dec.eof()


def parse_host_port(text: str, default_port: int = 7946, allow_zero: bool = False) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare host (pure: no resolution); port 0 only to bind."""
    text = text.strip()
    if not text:
        raise GossipError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise GossipError(f"bad address {text!r}")
        port_s = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise GossipError(f"bad address {text!r}")
    elif text.count(":") == 1:
        host, _, port_s = text.partition(":")
    else:
        host, port_s = text, ""
    if not port_s:
        return host, default_port
    if not port_s.isdigit() or not (0 if allow_zero else 1) <= int(port_s) < 65536:
        raise GossipError(f"bad port in {text!r}")
    return host, int(port_s)


