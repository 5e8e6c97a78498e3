"""A bounded fuzz campaign over lbd's hostile-input surfaces (run by hand, not by pytest).

    python tests/unit/corpus/fuzz_campaign.py --seconds 20 --out /tmp/findings

Per surface, valid seed messages are mutated (bit flips, byte edits, splices,
length fields, truncation, duplication) and fed to the decoder; the oracle is
the project rule: a decoder returns, or raises its ONE precise ValueError
subclass (BgpError, GossipError, TableError). Anything else is a crash; a case
that takes more than --slow seconds of CPU is a hang. Streams are also
checked differentially: fed whole and fed in random chunks, the answer must be
the same. Every finding is written to --out as <surface>-<n>.bin with a .txt
saying what happened; triaged findings go into tests/unit/corpus/.
Prints one JSON line per surface: cases, crashes, hangs.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

if os.environ.get("LBD_FUZZ_ROOT"):
    # Fuzz another checkout (the code before the fixes): bypass this venv's editable install.
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, os.environ["LBD_FUZZ_ROOT"])

from lbd.bgp import codec  # noqa: E402
from lbd.bgp.attributes import AFI_IPV4, AFI_IPV6, SAFI_UNICAST
from lbd.bgp.errors import BgpError
from lbd.bgp.packing import EncodeContext, RouteAttrs, UpdatePacker
from lbd.cluster import facts, lzw, wire
from lbd.cluster.errors import GossipError
from lbd.cluster.replication import AllocationTable, TableEntry, TableError
from lbd.model import Allocation

KEY = bytes(range(32))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/unit: the hostile-input builders
import hostile  # noqa: E402


# -- seeds -------------------------------------------------------------------------

def bgp_seeds() -> list[bytes]:
    caps = (codec.MultiprotocolCap(AFI_IPV4, SAFI_UNICAST), codec.MultiprotocolCap(AFI_IPV6, SAFI_UNICAST),
            codec.RouteRefreshCap(), codec.EnhancedRouteRefreshCap(),
            codec.GracefulRestartCap(0x8, 120, ((1, 1, 0x80), (2, 1, 0))))
    seeds = [codec.encode_open(codec.Open.for_asn(64513, 90, ipaddress.IPv4Address("10.77.0.2"), caps)),
             codec.encode_open(codec.Open.for_asn(4_200_000_000, 3, ipaddress.IPv4Address("10.77.0.3"), caps)),
             codec.encode_keepalive(), codec.encode_notification(codec.Notification(6, 2, b"shutdown")),
             codec.encode_route_refresh(codec.RouteRefresh(1, 1, 0)), codec.end_of_rib(AFI_IPV6)]
    ctx = EncodeContext(64512, False, True, ipaddress.IPv4Address("10.77.0.1"), ipaddress.IPv6Address("fd77::1"),
                        ipaddress.IPv6Address("fe80::1"))
    packer = UpdatePacker(ctx)
    attrs = RouteAttrs(communities=((64512, 7),), large_communities=((64512, 1, 2),), med=10)
    seeds += packer.announce([(ipaddress.ip_network("10.88.0.0/24"), attrs), (ipaddress.ip_network("10.88.1.1/32"), attrs)])
    seeds += packer.announce([(ipaddress.ip_network("fd77:1::/64"), RouteAttrs())])
    seeds += packer.withdraw([ipaddress.ip_network("10.88.0.0/24"), ipaddress.ip_network("fd77:1::/64")])
    ctx2 = EncodeContext(64512, False, False, ipaddress.IPv4Address("10.77.0.1"), None)
    seeds += UpdatePacker(ctx2).announce([(ipaddress.ip_network("10.88.2.0/24"), attrs)])  # AS4_PATH
    return seeds


def gossip_messages() -> list[bytes]:
    v4, v6 = bytes([10, 77, 0, 1]), ipaddress.IPv6Address("fd77::1").packed
    msgs = [wire.Ping(1, "n1", v4, 7946, "n2"), wire.IndirectPing(2, v6, 7946, "n3", True, v4, 7946, "n2"),
            wire.Ack(3, b"payload"), wire.Nack(4), wire.Suspect(5, "n1", "n2"),
            wire.Alive(6, "n4", v4, 7946, b"\x81\xa1k\xa1v"), wire.Dead(7, "n4", "n2"), wire.User(b"\x01table"),
            wire.Err("boom")]
    return [wire.encode(m) for m in msgs]


def packet_seeds() -> list[bytes]:
    msgs = gossip_messages()
    return msgs + [wire.make_compound(msgs[:5]), wire.compress_message(wire.make_compound(msgs)),
                   wire.add_crc(msgs[5]), wire.make_compound([wire.compress_message(msgs[0]), wire.add_crc(msgs[2])]),
                   hostile.bomb_packet()]  # one datagram of LZW parts, each under the old per-part cap


def stream_seeds() -> list[bytes]:
    nodes = tuple(wire.PushNode(f"n{i}", bytes([10, 77, 0, i]), 7946, b"meta", i, i % 4) for i in range(6))
    pp = wire.encode_push_pull(wire.PushPull(True, nodes, b"\x01state-bytes"))
    plain = [pp, wire.encode_user_stream(b"user payload"), wire.encode(wire.Ping(9, "n1")),
             wire.encode(wire.Ack(9, b"")), wire.encode(wire.Err("no"))]
    return plain + [wire.frame_stream(m, compress=True) for m in plain[:2]]


def large_stream_seeds() -> list[bytes]:
    nodes = tuple(wire.PushNode(f"node-{i:05d}", bytes([10, 77, i >> 8 & 255, i & 255]), 7946, b"meta" * 8, i, 0)
                  for i in range(20_000))
    return [wire.encode_push_pull(wire.PushPull(False, nodes, b"s" * (2 << 20)))]


def large_stream_oracle(data: bytes) -> None:
    """A push-pull of ~4 MiB read as the transport reads it: 64 KiB at a time."""
    dec = wire.StreamDecoder()
    try:
        for i in range(0, len(data), 65536):
            if dec.feed(data[i:i + 65536]) is not None:
                return
        dec.eof()
    except GossipError:
        pass


def table_seeds() -> list[bytes]:
    t = AllocationTable("a")
    t.record({"web": Allocation("web", "p", (ipaddress.ip_address("10.77.0.1"),)),
              "v6": Allocation("v6", "p", (ipaddress.ip_address("fd77::1"), ipaddress.ip_address("10.77.0.2")))},
             {}, now_ms=1_780_000_000_000)
    return [t.encode()]


def facts_seeds() -> list[bytes]:
    v4 = [ipaddress.ip_address("10.77.0.0") + i for i in (0, 1, 2, 9, 40)]
    v6 = [ipaddress.ip_address("fd77::1"), ipaddress.ip_address("fd77::2")]
    return [
        facts.encode_records([facts.NodeFacts("a", 5, frozenset(v4 + v6), frozenset({"static/web"})),
                              facts.NodeFacts("b", 1)]),
        facts.encode_delta(facts.FactsDelta("a", 5, 6, frozenset(v4[:2]), frozenset(v6), frozenset({"x"}))),
        facts.encode_request(facts.FactsRequest("b", ("a",))),
    ]


def facts_oracle(data: bytes) -> None:
    """A peer's facts message: decode, then merge into a replica that goes on publishing."""
    try:
        message = facts.decode(data)
    except facts.FactsError:
        return
    replica = facts.FactsReplica("a")
    replica.publish([ipaddress.ip_address("10.77.9.9")], {"mine"}, NOW_MS, ["b"])
    replica.receive(message, NOW_MS, 1.0, ["b"])
    replica.repair({"b": 9}, 5.0)
    facts.decode(replica.state())  # what it sends in push-pull reads back


def lzw_seeds() -> list[bytes]:
    return [lzw.compress(b"hello hello hello hello"), lzw.compress(bytes(range(256)) * 20), lzw.compress(b""),
            lzw.compress(b"a" * 5000)]


# -- mutation ------------------------------------------------------------------------

def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        op = rng.randrange(10)
        if op == 0 and b:
            i = rng.randrange(len(b)); b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        elif op == 3 and b:
            del b[rng.randrange(len(b))]
        elif op == 4 and b:
            b = b[: rng.randrange(len(b) + 1)]
        elif op == 5 and len(b) >= 2:  # a 16-bit length field
            i = rng.randrange(len(b) - 1)
            b[i:i + 2] = struct.pack("!H", rng.choice((0, 1, 0xFFFF, len(b), len(b) + 1, rng.randrange(65536))) & 0xFFFF)
        elif op == 6 and len(b) >= 4:
            i = rng.randrange(len(b) - 3)
            b[i:i + 4] = struct.pack("!I", rng.choice((0, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(1 << 32))))
        elif op == 7:
            other = rng.choice(pool)
            i, j = rng.randrange(len(b) + 1), rng.randrange(len(other) + 1)
            b = b[:i] + other[j:]
        elif op == 8 and b:
            i = rng.randrange(len(b)); j = min(len(b), i + rng.randrange(1, 16))
            b[i:i] = b[i:j] * rng.randrange(1, 8)
        else:
            b += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
    return bytes(b)


# -- oracles (raise AssertionError-free; return None when fine) -----------------------

def bgp_oracle(data: bytes) -> None:
    for four, ibgp in ((True, True), (False, False)):
        try:
            codec.decode_message(data, four_octet=four, ibgp=ibgp)
        except BgpError:
            pass


def packet_oracle(data: bytes) -> None:
    try:
        wire.decode_packet(data)
    except GossipError:
        pass


def encrypted_oracle(data: bytes) -> None:
    try:
        wire.decode_packet(wire.open_packet(data, [KEY]))
    except GossipError:
        pass


def lzw_oracle(data: bytes) -> None:
    try:
        lzw.decompress(data, 1 << 20)
    except GossipError:
        pass


def stream_oracle_factory(rng: random.Random) -> Callable[[bytes], None]:
    def oracle(data: bytes) -> None:
        whole: object
        try:
            whole = wire.decode_stream(data)
        except GossipError as exc:
            whole = GossipError
        dec = wire.StreamDecoder()
        chunked: object = None
        try:
            i = 0
            while i < len(data) and chunked is None:
                n = rng.randrange(1, 64)
                chunked = dec.feed(data[i:i + n])
                i += n
            if chunked is None:
                chunked = dec.eof()
        except GossipError:
            chunked = GossipError
        a = whole.message if isinstance(whole, wire.StreamMessage) else whole
        b = chunked.message if isinstance(chunked, wire.StreamMessage) else chunked
        if a != b:
            raise AssertionError(f"whole {a!r:.80} != chunked {b!r:.80}")
    return oracle


NOW_MS = 1_780_000_000_000


def table_oracle(data: bytes) -> None:
    """A peer's table: decode, merge, write once more; the result must still load."""
    try:
        _, entries = AllocationTable.decode(data)
    except TableError:
        return
    t = AllocationTable("b")
    try:
        t.merge(entries, now_ms=NOW_MS)
    except TypeError:  # before the fix merge took no time
        t.merge(entries)
    t.record({"mine": Allocation("mine", "p", (ipaddress.ip_address("10.77.9.9"),))}, {}, now_ms=NOW_MS)
    t.record({}, {}, now_ms=NOW_MS)
    AllocationTable.from_state("b", json.loads(t.encode()), now_ms=NOW_MS)  # the saved table loads


_BOUNDARY = (0, -1, 1, 2**31, 2**32, 2**53 + 1, 2**63 - 2, 2**63 - 1, 2**63, 2**64, NOW_MS + 61_000, NOW_MS * 10)


def table_transform(rng: random.Random) -> Callable[[bytes], bytes]:
    """Also put boundary integers where the JSON holds numbers (stamps, clock)."""
    import re

    def t(data: bytes) -> bytes:
        if rng.random() < 0.5:
            return re.sub(rb"\d{6,}", lambda m: str(rng.choice(_BOUNDARY)).encode() if rng.random() < 0.5
                          else m.group(0), data)
        return data
    return t


# -- driver --------------------------------------------------------------------------

def run(surface: str, seeds: list[bytes], oracle: Callable[[bytes], None], seconds: float, slow: float,
        rng: random.Random, out: Path | None, transform: Callable[[bytes], bytes] = lambda d: d) -> dict:
    cases = crashes = hangs = 0
    kinds: dict[str, int] = {}
    end = time.process_time() + seconds
    while time.process_time() < end:
        data = transform(mutate(rng, rng.choice(seeds), seeds))
        cases += 1
        t0 = time.process_time()
        problem = None
        try:
            oracle(data)
        except Exception as exc:  # noqa: BLE001 - that is the finding
            problem = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            crashes += 1
            kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
        spent = time.process_time() - t0
        if spent > slow:
            hangs += 1
            problem = (problem or "") + f"\nslow: {spent:.2f}s CPU"
        if problem and out is not None:
            n = crashes + hangs
            if n <= 50:
                (out / f"{surface}-{n}.bin").write_bytes(data)
                (out / f"{surface}-{n}.txt").write_text(problem)
    return {"surface": surface, "cases": cases, "crashes": crashes, "hangs": hangs, "kinds": kinds}


def hypothesis_run(surface: str, seeds: list[bytes], oracle: Callable[[bytes], None], examples: int,
                   out: Path | None, transform: Callable[[bytes], bytes], seconds: float) -> dict:
    """Structured edits of the seeds chosen by hypothesis (shrinks what it finds)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    count = {"cases": 0}
    end = time.process_time() + seconds
    edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 8), st.binary(max_size=8)), max_size=6)

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(seeds), edits)
    def case(seed: bytes, eds: list[tuple[int, int, bytes]]) -> None:
        if time.process_time() > end:
            return  # CPU budget spent: let hypothesis run out its examples for free
        b = bytearray(seed)
        for pos, cut, ins in eds:
            p = pos % (len(b) + 1)
            b[p:p + cut] = ins
        count["cases"] += 1
        oracle(transform(bytes(b)))

    crashes = 0
    kinds: dict[str, int] = {}
    try:
        case()
    except Exception as exc:  # noqa: BLE001 - hypothesis re-raises the shrunk failure
        crashes = 1
        kinds[type(exc).__name__] = 1
        if out is not None:
            (out / f"{surface}-hypothesis.txt").write_text(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    return {"surface": surface, "engine": "hypothesis", "cases": count["cases"], "crashes": crashes, "kinds": kinds}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0, help="CPU seconds per surface")
    ap.add_argument("--slow", type=float, default=0.5, help="CPU seconds that make a case a hang")
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--only", default="")
    ap.add_argument("--hypothesis", type=int, default=2000, help="hypothesis examples per surface (0: none)")
    args = ap.parse_args()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    surfaces = [
        ("bgp", bgp_seeds(), bgp_oracle, lambda d: d),
        ("gossip-plain", packet_seeds(), packet_oracle, lambda d: d),
        # ciphertext mutated as is (what an outsider can send) ...
        ("gossip-encrypted-outer", [wire.seal_packet(p, [KEY]) for p in packet_seeds()], encrypted_oracle, lambda d: d),
        # ... and plaintext mutated then sealed (what a key holder can send)
        ("gossip-encrypted-inner", packet_seeds(), encrypted_oracle, lambda d: wire.seal_packet(d, [KEY]) if d else d),
        ("lzw", lzw_seeds(), lzw_oracle, lambda d: d),
        ("stream", stream_seeds(), stream_oracle_factory(rng), lambda d: d),
        ("table", table_seeds(), table_oracle, table_transform(rng)),
        ("facts", facts_seeds(), facts_oracle, lambda d: d),
        ("stream-large", large_stream_seeds(), large_stream_oracle, lambda d: d),
    ]
    for name, seeds, oracle, transform in surfaces:
        if args.only and name not in args.only.split(","):
            continue
        budget = min(args.seconds, 20.0) if name == "stream-large" else args.seconds
        print(json.dumps(run(name, seeds, oracle, budget, args.slow, rng, args.out, transform)), flush=True)
        if args.hypothesis and name != "stream-large":
            print(json.dumps(hypothesis_run(name, seeds, oracle, args.hypothesis, args.out, transform, budget)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
