"""Write the regression corpus: one binary file per malformed input, with
``expected.json`` (surface, the one exception type, what it is) and README.md.

    python tests/unit/corpus/make_corpus.py      # rewrites tests/unit/corpus/{bgp,gossip}

Deterministic (fixed nonces), so re-running changes nothing unless a case
changes. Findings of fuzz_campaign.py are added to CASES below once triaged.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import sys
from pathlib import Path

import msgpack

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/unit: hostile-input builders

import hostile  # noqa: E402

from lbd.bgp import codec  # noqa: E402
from lbd.bgp.attributes import AFI_IPV4, SAFI_UNICAST  # noqa: E402
from lbd.bgp.codec import MARKER  # noqa: E402
from lbd.cluster import crypto, facts, lzw, wire  # noqa: E402
from lbd.cluster.replication import AllocationTable, TableEntry  # noqa: E402

KEY = bytes(range(32))  # the corpus key for the encrypted cases
NONCE = bytes(12)
V4 = bytes([10, 77, 0, 9])


def bgp(msg_type: int, body: bytes, length: int | None = None) -> bytes:
    return MARKER + struct.pack("!HB", 19 + len(body) if length is None else length, msg_type) + body


def open_body(version: int = 4, hold: int = 90, params: bytes = b"", plen: int | None = None) -> bytes:
    return struct.pack("!BHH4sB", version, 64513, hold, bytes([10, 77, 0, 2]),
                       len(params) if plen is None else plen) + params


def update_body(withdrawn: bytes = b"", attrs: bytes = b"", nlri: bytes = b"", wlen: int | None = None,
                alen: int | None = None) -> bytes:
    return (struct.pack("!H", len(withdrawn) if wlen is None else wlen) + withdrawn
            + struct.pack("!H", len(attrs) if alen is None else alen) + attrs + nlri)


def oversized_withdrawal() -> bytes:
    """What packing with the Withdrawn Routes room off by 4 would send: 4,100 octets."""
    prefixes = b"".join(b"\x20" + bytes([10, 88, i >> 8, i & 255]) for i in range(815))
    return bgp(2, update_body(withdrawn=prefixes))


def attribute(flags: int, code: int, value: bytes) -> bytes:
    """One path attribute (RFC 4271 §4.3), extended length when it needs it."""
    if len(value) > 255:
        return bytes([flags | 0x10, code]) + struct.pack("!H", len(value)) + value
    return bytes([flags, code, len(value)]) + value


FD77_1 = ipaddress.IPv6Address("fd77::1").packed
MP_REACH_V6 = attribute(0x80, 14, struct.pack("!HBB", 2, 1, 16) + FD77_1 + b"\x00")  # no NLRI
ORIGIN_IGP = attribute(0x40, 1, b"\x00")
EBGP_PATH = attribute(0x40, 2, b"\x02\x01" + struct.pack("!I", 64513))
NEXT_HOP = attribute(0x40, 3, bytes([10, 77, 0, 2]))
NLRI_24 = b"\x18\x0a\x58\x00"


def update_with(*replace: tuple[int, bytes], extra: bytes = b"") -> bytes:
    """An eBGP UPDATE announcing 10.88.0.0/24 whose ORIGIN, AS_PATH or NEXT_HOP
    (by type code) is replaced; ``extra`` attributes follow them."""
    attrs = {1: ORIGIN_IGP, 2: EBGP_PATH, 3: NEXT_HOP}
    attrs.update(dict(replace))
    return bgp(2, update_body(attrs=b"".join(attrs.values()) + extra, nlri=NLRI_24))


BGP: dict[str, tuple[bytes, str]] = {
    "header-bad-marker": (b"\x00" * 16 + b"\x00\x13\x04", "marker not all ones (RFC 4271 §6.1)"),
    "header-length-short": (bgp(4, b"", length=18), "length field below 19"),
    "header-length-huge": (bgp(4, b"", length=65535), "length field above 4,096"),
    "header-length-mismatch": (bgp(4, b"", length=20), "length field says more than was sent"),
    "header-type-unknown": (bgp(99, b""), "message type 99"),
    "keepalive-with-body": (bgp(4, b"\x00"), "KEEPALIVE longer than 19 octets"),
    "open-too-short": (bgp(1, b"\x04\x00"), "OPEN body under 10 octets"),
    "open-version-3": (bgp(1, open_body(version=3)), "BGP version 3"),
    "open-params-overrun": (bgp(1, open_body(params=b"\x02\x06\x01\x04", plen=8)), "optional parameters length says 8, 4 follow"),
    "open-param-truncated": (bgp(1, open_body(params=b"\x02")), "one octet of an optional parameter"),
    "open-param-unknown": (bgp(1, open_body(params=b"\x07\x00")), "optional parameter type 7 (only capabilities exist)"),
    "open-capability-overrun": (bgp(1, open_body(params=b"\x02\x04\x01\x08\x00\x01")), "capability length 8 in a 4-octet parameter"),
    "open-extended-params-truncated": (bgp(1, open_body(params=b"\xff\x00", plen=255)), "RFC 9072 extended parameters cut short"),
    "update-withdrawn-overrun": (bgp(2, update_body(withdrawn=b"\x18\x0a\x58\x00", wlen=40)), "withdrawn length beyond the message"),
    "update-withdrawn-bad-prefix-length": (bgp(2, update_body(withdrawn=b"\x21\x0a\x58\x00\x00\x00")), "a /33 in IPv4 withdrawn routes"),
    "update-withdrawn-truncated-prefix": (bgp(2, update_body(withdrawn=b"\x18\x0a")), "a /24 with one octet"),
    "update-attrs-overrun": (bgp(2, update_body(attrs=b"\x40\x01\x01\x00", alen=200)), "path attribute length beyond the message"),
    "update-too-short": (bgp(2, b"\x00"), "UPDATE body of one octet"),
    "update-withdrawal-packed-past-4096": (oversized_withdrawal(), "815 /32 withdrawals in one UPDATE: 4,100 octets (the packing mutation)"),
    "notification-too-short": (bgp(3, b"\x06"), "NOTIFICATION without a subcode"),
    "route-refresh-short": (bgp(5, b"\x00\x01\x00"), "ROUTE-REFRESH of 3 octets"),
    "route-refresh-long": (bgp(5, b"\x00\x01\x00\x01\x00"), "ROUTE-REFRESH of 5 octets (RFC 7313 §5)"),
    "open-capability-mp-short": (bgp(1, open_body(params=b"\x02\x04\x01\x02\x00\x01")), "multiprotocol capability of 2 octets (4 expected)"),
    "open-capability-4octet-short": (bgp(1, open_body(params=b"\x02\x04\x41\x02\x00\x01")), "four-octet AS capability of 2 octets"),
    "open-capability-gr-odd": (bgp(1, open_body(params=b"\x02\x05\x40\x03\x00\x78\x00")), "graceful restart capability with a partial family tuple"),
    "update-nlri-bad-prefix-length": (bgp(2, update_body(attrs=ORIGIN_IGP + EBGP_PATH + NEXT_HOP, nlri=b"\x21\x0a\x58\x00\x00\x00")), "a /33 in the NLRI field"),
    "update-nlri-truncated-prefix": (bgp(2, update_body(attrs=ORIGIN_IGP + EBGP_PATH + NEXT_HOP, nlri=b"\x18\x0a")), "a /24 with one octet in the NLRI field"),
    "update-unrecognized-well-known": (update_with(extra=attribute(0x40, 99, b"\x01")), "well-known attribute type 99 (RFC 4271 §6.3: still a reset)"),
    "update-mp-reach-repeated": (bgp(2, update_body(attrs=MP_REACH_V6 * 2)), "MP_REACH_NLRI twice (RFC 7606 §3 g)"),
    "update-mp-reach-too-short": (bgp(2, update_body(attrs=attribute(0x80, 14, b"\x00\x02\x01\x10"))), "MP_REACH_NLRI of 4 octets"),
    "update-mp-reach-next-hop-overrun": (bgp(2, update_body(attrs=attribute(0x80, 14, struct.pack("!HBB", 2, 1, 32) + bytes(16) + b"\x00"))),
                                         "MP_REACH_NLRI next hop length 32 with 17 octets left"),
    "update-mp-reach-next-hop-length-5": (bgp(2, update_body(attrs=attribute(0x80, 14, struct.pack("!HBB", 2, 1, 5) + bytes(5) + b"\x00"))),
                                          "IPv6 MP_REACH_NLRI with a 5-octet next hop"),
    "update-mp-reach-bad-prefix": (bgp(2, update_body(attrs=attribute(0x80, 14, struct.pack("!HBB", 2, 1, 16) + FD77_1 + b"\x00\x81" + bytes(17)))),
                                   "a /129 inside MP_REACH_NLRI (RFC 7606 §7.11: reset)"),
    "update-mp-reach-bad-flags": (bgp(2, update_body(attrs=attribute(0x40, 14, MP_REACH_V6[3:]))), "MP_REACH_NLRI flagged well-known"),
    "update-mp-unreach-too-short": (bgp(2, update_body(attrs=attribute(0x80, 15, b"\x00\x02"))), "MP_UNREACH_NLRI of 2 octets"),
    "update-mp-unreach-empty": (bgp(2, update_body(attrs=attribute(0x80, 15, b""))), "MP_UNREACH_NLRI of length 0 (RFC 7606 §3 e)"),
    "update-mp-unreach-truncated-prefix": (bgp(2, update_body(attrs=attribute(0x80, 15, b"\x00\x02\x01\x40\xfd\x77"))),
                                           "a /64 with two octets inside MP_UNREACH_NLRI"),
}

# RFC 7606 downgrades most attribute faults: the UPDATE decodes, its routes are
# withdrawn ("treat-as-withdraw") or the attribute dropped ("attribute-discard").
# Replayed as: decode_message returns an Update whose strongest problem is that.
BGP_HANDLED: dict[str, tuple[bytes, str, str]] = {
    "update-origin-value-3": (update_with((1, attribute(0x40, 1, b"\x03"))), "treat-as-withdraw", "ORIGIN 3 (RFC 7606 §7.1)"),
    "update-origin-bad-flags": (update_with((1, attribute(0xC0, 1, b"\x00"))), "treat-as-withdraw", "ORIGIN flagged optional (RFC 7606 §3 c)"),
    "update-as-path-bad-segment": (update_with((2, attribute(0x40, 2, b"\x07\x01" + struct.pack("!I", 64513)))), "treat-as-withdraw",
                                   "AS_PATH segment type 7 (RFC 7606 §7.2)"),
    "update-as-path-leftmost-not-peer": (update_with((2, attribute(0x40, 2, b"\x02\x01" + struct.pack("!I", 64999)))), "treat-as-withdraw",
                                         "eBGP AS_PATH not starting with the peer's AS (checked only with a peer AS: here 64513)"),
    "update-next-hop-zero": (update_with((3, attribute(0x40, 3, bytes(4)))), "treat-as-withdraw", "NEXT_HOP 0.0.0.0 (RFC 7606 §7.3)"),
    "update-med-length-2": (update_with(extra=attribute(0x80, 4, b"\x00\x01")), "treat-as-withdraw", "MULTI_EXIT_DISC of 2 octets (RFC 7606 §7.4)"),
    "update-communities-length-5": (update_with(extra=attribute(0xC0, 8, bytes(5))), "treat-as-withdraw", "COMMUNITIES of 5 octets (RFC 7606 §7.8)"),
    "update-large-community-length-8": (update_with(extra=attribute(0xC0, 32, bytes(8))), "treat-as-withdraw", "LARGE_COMMUNITY of 8 octets (RFC 8092 §6)"),
    "update-cluster-list-length-3": (update_with(extra=attribute(0x80, 10, bytes(3))), "treat-as-withdraw", "CLUSTER_LIST of 3 octets (RFC 7606 §7.10)"),
    "update-attribute-header-truncated": (update_with(extra=b"\x40\x05"), "treat-as-withdraw", "two octets of an attribute header (RFC 7606 §4)"),
    "update-aggregator-length-5": (update_with(extra=attribute(0xC0, 7, bytes(5))), "attribute-discard", "AGGREGATOR of 5 octets (RFC 7606 §7.7)"),
    "update-as4-path-bad-segment": (update_with(extra=attribute(0xC0, 17, b"\x02\x00")), "attribute-discard", "AS4_PATH with an empty segment (RFC 6793 §6)"),
    "update-atomic-aggregate-length-1": (update_with(extra=attribute(0x40, 6, b"\x00")), "attribute-discard", "ATOMIC_AGGREGATE of 1 octet (RFC 7606 §7.6)"),
}


def sealed(plain: bytes) -> bytes:
    return crypto.encrypt(KEY, plain, b"", 1, NONCE)


def stream_sealed(message: bytes, length: int | None = None) -> bytes:
    real = crypto.VERSION_SIZE + crypto.NONCE_SIZE + len(message) + crypto.TAG_SIZE
    header = bytes([wire.MsgType.ENCRYPT]) + struct.pack(">I", real if length is None else length)
    return header + crypto.encrypt(KEY, message, header, 1, NONCE)


def packed(mtype: int, obj: object) -> bytes:
    return bytes([mtype]) + msgpack.packb(obj, use_bin_type=False)


def poisoned_table() -> bytes:
    t = AllocationTable("evil")
    t.entries["web"] = TableEntry("web", "p", (ipaddress.ip_address("10.77.0.66"),), 2**63 - 2, 2**63 - 2, "evil")
    t.clock = 2**63 - 2
    return t.encode()


def facts_record(item: bytes) -> bytes:
    """One node facts record (node "n", version 1) whose holds are the one address ``item``."""
    return b"\x01\x01" + struct.pack("!IH", 1, 1) + b"n" + struct.pack("!QI", 1, 1) + item + bytes(4)


def crc_nest(depth: int) -> bytes:
    inner = wire.encode(wire.Ping(1, "n"))
    for _ in range(depth):
        inner = wire.add_crc(inner)
    return inner


PP_HEADER_HUGE = packed(wire.MsgType.PUSH_PULL, {"Join": False, "Nodes": 10**8, "UserStateLen": 0})
GOSSIP: dict[str, tuple[bytes, str, str, str]] = {
    # name: (data, surface, exception or refusal, what)
    "packet-empty-compound": (b"\x07", "packet", "GossipError", "compound without a part count"),
    "packet-type-unknown": (b"\x63\x80", "packet", "GossipError", "message type 99"),
    "packet-compound-truncated": (b"\x07\x02\x00\x05", "packet", "GossipError", "compound length table cut short"),
    "packet-crc-mismatch": (b"\x0c\x00\x00\x00\x00" + wire.encode(wire.Ping(1, "n")), "packet", "GossipError", "hasCrc with a wrong checksum"),
    "packet-crc-nested-too-deep": (crc_nest(12), "packet", "GossipError", "hasCrc nested 12 times (limit 8)"),
    "packet-bad-msgpack": (b"\x00\xc1", "packet", "GossipError", "ping whose body is the reserved msgpack byte 0xc1"),
    "packet-ping-seqno-string": (packed(0, {"SeqNo": "x", "Node": "n"}), "packet", "GossipError", "ping with a string SeqNo"),
    "packet-alive-meta-too-big": (packed(4, {"Incarnation": 1, "Node": "n", "Addr": V4, "Port": 7946, "Meta": b"m" * 600, "Vsn": bytes([1, 5, 2, 2, 5, 5])}),
                                  "packet", "GossipError", "alive with 600 bytes of meta (limit 512)"),
    "packet-compress-unknown-algo": (packed(9, {"Algo": 7, "Buf": b"x"}), "packet", "GossipError", "compress with Algo 7"),
    "packet-compress-no-eof": (hostile.compress_part(lzw.compress(b"hello")[:-2]), "packet", "GossipError", "LZW data without its EOF code"),
    "packet-lzw-bomb": (hostile.bomb_packet(), "packet", "InflateLimitError",
                        "8 compressed parts in one 49 kB datagram, 74 MB inflated (each under the old per-part cap)"),
    "packet-lzw-bomb-nested": (wire.make_compound([hostile.compress_part(lzw.compress(wire.make_compound([hostile.compress_part(hostile.lzw_bomb(40))] * 2)))] * 30),
                               "packet", "InflateLimitError", "compressed compounds of compressed bombs"),
    "packet-lzw-many-small-parts": (wire.make_compound([hostile.compress_part(lzw.compress(b"\x00" * 200_000))] * 60),
                                    "packet", "InflateLimitError", "60 compressed parts of 200 kB each (under 256 KiB), 12 MB together"),
    "packet-alive-empty-name": (wire.encode(wire.Alive(1, "", V4, 7946)), "packet", "refused-name", "alive for a member named \"\""),
    "packet-alive-nul-name": (wire.encode(wire.Alive(1, "evil\x00", V4, 7946)), "packet", "refused-name", "alive for a name holding NUL"),
    "packet-alive-escape-name": (wire.encode(wire.Alive(1, "\x1b]0;owned\x07", V4, 7946)), "packet", "refused-name", "alive for a name holding terminal escapes"),
    "packet-indirect-ping-port-too-big": (packed(1, {"SeqNo": 1, "Target": V4, "Port": 70000, "Node": "b", "Nack": False}), "packet", "GossipError",
                                          "indirect ping with Port 70000 (u16)"),
    "packet-indirect-ping-nack-string": (packed(1, {"SeqNo": 1, "Target": V4, "Port": 7946, "Node": "b", "Nack": "yes"}), "packet", "GossipError",
                                         "indirect ping whose Nack is a string"),
    "packet-ack-seqno-negative": (packed(2, {"SeqNo": -1, "Payload": b""}), "packet", "GossipError", "ack with SeqNo -1 (u32)"),
    "packet-nack-seqno-too-big": (packed(11, {"SeqNo": 2**33}), "packet", "GossipError", "nack with SeqNo 2^33 (u32)"),
    "packet-suspect-node-int": (packed(3, {"Incarnation": 1, "Node": 5, "From": "a"}), "packet", "GossipError", "suspect whose Node is a number"),
    "packet-dead-incarnation-bytes": (packed(5, {"Incarnation": b"1", "Node": "b", "From": "a"}), "packet", "GossipError", "dead whose Incarnation is bytes"),
    "packet-err-not-a-map": (bytes([wire.MsgType.ERR]) + msgpack.packb([1, 2, 3]), "packet", "GossipError", "err whose body is an array, not a map"),
    "packet-user-empty": (bytes([wire.MsgType.USER]), "packet", "GossipError", "user message without a payload"),
    "packet-has-label": (bytes([wire.MsgType.HAS_LABEL, 3]) + b"abc" + wire.encode(wire.Ping(1, "n")), "packet", "GossipError",
                         "hasLabel (244) packet: labels are not supported"),
    "packet-crc-truncated": (b"\x0c\x00\x00", "packet", "GossipError", "hasCrc with two octets of checksum"),
    "stream-err-error-int": (packed(wire.MsgType.ERR, {"Error": 7}), "stream", "GossipError", "stream err whose Error is a number"),
    "encrypted-truncated": (sealed(wire.encode(wire.Ping(1, "n")))[:20], "encrypted", "GossipError", "ciphertext shorter than nonce + tag"),
    "encrypted-version-9": (b"\x09" + sealed(wire.encode(wire.Ping(1, "n")))[1:], "encrypted", "GossipError", "encryption version byte 9"),
    "encrypted-bad-tag": (sealed(wire.encode(wire.Ping(1, "n")))[:-1] + b"\x00", "encrypted", "GossipError", "authentication tag altered"),
    "encrypted-plaintext": (wire.encode(wire.Ping(1, "n")), "encrypted", "GossipError", "plaintext ping to a node with keys"),
    "encrypted-lzw-bomb": (sealed(hostile.bomb_packet()), "encrypted", "InflateLimitError", "the LZW bomb sealed with the key (a key holder)"),
    "stream-type-unknown": (b"\x63\x80", "stream", "GossipError", "stream message type 99"),
    "stream-push-pull-header-huge": (PP_HEADER_HUGE, "stream", "GossipError", "push-pull header announcing 10^8 nodes"),
    "stream-push-pull-truncated": (wire.encode_push_pull(wire.PushPull(False, (wire.PushNode("a", V4, 7946, b"", 1, 0),), b"state"))[:-3], "stream", "GossipError", "push-pull whose user state is cut short"),
    "stream-push-pull-meta-too-big": (PP_HEADER_HUGE[:1] + msgpack.packb({"Join": False, "Nodes": 1, "UserStateLen": 0}, use_bin_type=False)
                                      + msgpack.packb({"Name": "a", "Addr": V4, "Port": 1, "Meta": b"m" * 600, "Incarnation": 1, "State": 0, "Vsn": bytes([1, 5, 2, 2, 5, 5])}, use_bin_type=False),
                                      "stream", "GossipError", "push-pull node with 600 bytes of meta"),
    "stream-user-empty": (packed(8, {"UserMsgLen": 0}), "stream", "GossipError", "user stream of length 0"),
    "stream-compress-in-compress": (wire.compress_message(wire.compress_message(wire.encode_user_stream(b"x"))), "stream", "GossipError", "compressed stream inside a compressed stream"),
    "stream-bad-msgpack": (b"\x06\xc1", "stream", "GossipError", "push-pull header is the reserved msgpack byte"),
    "estream-length-huge": (b"\x0a" + struct.pack(">I", 30 << 20), "estream", "GossipError", "encrypted stream announcing 30 MiB"),
    "estream-bad-tag": (stream_sealed(wire.encode_user_stream(b"x"))[:-1] + b"\x01", "estream", "GossipError", "encrypted stream with an altered tag"),
    "estream-plaintext": (wire.encode_user_stream(b"x"), "estream", "GossipError", "plaintext stream to a node with keys"),
    "lzw-no-eof": (lzw.compress(b"abcabcabc")[:-2], "lzw", "GossipError", "LZW stream that ends before the EOF code"),
    "lzw-invalid-code": (hostile.lzw_codes([256, 65, 300, 257]), "lzw", "GossipError", "code 300 before it is defined"),
    "lzw-bomb": (hostile.lzw_bomb(500), "lzw", "OutputLimitError", "one LZW part of 6.6 kB inflating to 9.3 MB (over the 256 KiB packet budget)"),
    "table-clock-past-decoder": (b'{"v":1,"clock":9223372036854775808,"e":[]}', "table", "TableError", "table clock 2^63 (what a poisoned node used to write)"),
    "table-stamp-negative": (b'{"v":1,"clock":1,"e":[{"s":"a","p":"p","a":[],"c":-1,"u":1,"o":"x"}]}', "table", "TableError", "entry created -1"),
    "table-not-json": (b'{"v":1,"clock":', "table", "TableError", "truncated JSON"),
    "table-poisoned-clock": (poisoned_table(), "table", "refused-stamp", "a user-message table stamped 2^63-2 (adopted before the fix)"),
    "facts-format-2": (b"\x02\x01" + struct.pack("!I", 0), "facts", "FactsError", "node facts in format version 2"),
    "facts-kind-unknown": (b"\x01\x09", "facts", "FactsError", "node facts message kind 9"),
    "facts-count-huge": (b"\x01\x01" + struct.pack("!I", 2**32 - 1), "facts", "FactsError", "2^32-1 records announced in 4 bytes"),
    "facts-range-past-end": (facts_record(b"\x14\xff\xff\xff\xfe" + struct.pack("!I", 5)), "facts", "FactsError",
                             "an IPv4 range from 255.255.255.254 over 6 addresses"),
    "facts-range-bomb": (facts_record(b"\x14\x0a\x00\x00\x00" + struct.pack("!I", 2**32 - 2)), "facts", "FactsError",
                         "one 9-byte range item of 4 billion addresses (a memory bomb)"),
    "facts-range-of-one": (facts_record(b"\x14\x0a\x00\x00\x00" + struct.pack("!I", 0)), "facts", "FactsError",
                           "a range item of one address (singles have their own tag)"),
    "facts-version-past-2-63": (b"\x01\x01" + struct.pack("!IH", 1, 1) + b"n" + b"\xff" * 8 + bytes(8), "facts", "FactsError",
                                "a record at version 2^64-1 (the decoder stops at 2^63-1)"),
    "facts-delta-not-later": (b"\x01\x02" + struct.pack("!H", 1) + b"n" + struct.pack("!QQ", 9, 9) + bytes(16), "facts", "FactsError",
                              "a delta from version 9 to version 9"),
    "facts-name-not-utf8": (b"\x01\x03" + struct.pack("!H", 2) + b"\xc3\x28" + bytes(4), "facts", "FactsError",
                            "a request from a name that is not UTF-8"),
    "facts-trailing": (facts.encode_records([facts.NodeFacts("n", 1)]) + b"\x00", "facts", "FactsError",
                       "a record followed by a stray byte"),
}


# Findings of fuzz_campaign.py (random mutations, so kept as the files they are):
# name: (surface, exception or refusal, what). The code before the issue-10
# fixes spent 0.1-0.4 s of CPU on each bomb; the tables made the saved table unloadable.
FINDINGS: dict[str, tuple[str, str, str]] = {
    "packet-fuzz-bomb-1": ("packet", "InflateLimitError", "campaign: a mutated LZW bomb datagram (0.37 s of CPU before)"),
    "packet-fuzz-bomb-2": ("packet", "InflateLimitError", "campaign: another mutation of it"),
    "encrypted-fuzz-bomb-1": ("encrypted", "InflateLimitError", "campaign: a mutated bomb sealed with the key"),
    "encrypted-fuzz-bomb-2": ("encrypted", "InflateLimitError", "campaign: sealed packets spliced into a whole sealed bomb"),
    "table-fuzz-1": ("table", "refused-stamp:1", "campaign: one entry stamped 2^63-1; the next write made the table unloadable"),
    "table-fuzz-2": ("table", "refused-stamp:2", "campaign: both entries stamped far in the future"),
    "table-fuzz-3": ("table", "refused-stamp:2", "campaign: future created and updated stamps"),
}


def write(directory: Path, cases: dict[str, tuple], title: str, intro: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    expected = {}
    lines = [f"# {title}", "", intro, "", "| file | surface | rejected by | what it is |", "|---|---|---|---|"]
    for name, case in sorted(cases.items()):
        if len(case) == 2:
            data, what = case
            surface, error = "message", "BgpError"
        else:
            data, surface, error, what = case
        (directory / f"{name}.bin").write_bytes(data)
        expected[f"{name}.bin"] = {"surface": surface, "error": error, "what": what}
        lines.append(f"| `{name}.bin` | {surface} | `{error}` | {what} |")
    for name, (surface, error, what) in sorted(FINDINGS.items()) if directory.name == "gossip" else ():
        assert (directory / f"{name}.bin").exists(), name
        expected[f"{name}.bin"] = {"surface": surface, "error": error, "what": what}
        lines.append(f"| `{name}.bin` | {surface} | `{error}` | {what} |")
    (directory / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    lines += ["", "Regenerate with `python tests/unit/corpus/make_corpus.py`; `tests/unit/test_corpus.py` replays it.", ""]
    (directory / "README.md").write_text("\n".join(lines))


def main() -> None:
    bgp_cases: dict[str, tuple] = {**BGP, **{name: (data, "message", action, what) for name, (data, action, what) in BGP_HANDLED.items()}}
    write(HERE / "bgp", bgp_cases, "BGP regression corpus",
          "Whole BGP messages (header included), fed to `codec.decode_message` with 4-octet AS on and off "
          "(eBGP from AS 64513 when off). `BgpError`: it must raise that and nothing else (a session reset). "
          "`treat-as-withdraw` / `attribute-discard`: RFC 7606 keeps the session; the message decodes and its "
          "strongest problem is that action.")
    write(HERE / "gossip", GOSSIP, "Gossip regression corpus",
          "Surfaces: `packet` is a UDP datagram to a plaintext node (`Swim.handle_packet`); `encrypted` the same "
          "to a node holding the corpus key `bytes(range(32))`; `stream` / `estream` a TCP stream "
          "(`wire.decode_stream`, without / with the key); `lzw` raw LZW data (`lzw.decompress` with the "
          "per-packet budget); `table` an allocation-table payload (`AllocationTable.decode`); `facts` a node "
          "facts message after its `lbd1F` prefix (`facts.decode`). "
          "`refused-name`: the packet is accepted but the member is not added (counted in `bad_names`); "
          "`refused-stamp[:n]`: the table decodes but `merge` refuses its far-future entries (all, or n) and the "
          "clock stays near now. The 4 MiB push-pull that used to cost seconds of re-parsing is not stored here "
          "(4 MB): `tests/unit/test_gossip_hostile.py` builds it.")


if __name__ == "__main__":
    main()
