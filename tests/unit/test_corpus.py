"""Replay the regression corpus (tests/unit/corpus): every malformed input is
rejected by its one precise exception type and nothing else.

The corpus holds what the issue-10 fuzz campaign and hand-built hostile inputs
found (LZW bombs, the poisoned hybrid clock, oversized withdrawals, bad member
names ...); ``corpus/make_corpus.py`` rebuilds it, ``corpus/fuzz_campaign.py``
searches for more.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbd.bgp import codec
from lbd.bgp.attributes import Action, strongest
from lbd.bgp.errors import BgpError
from lbd.cluster import facts, lzw, wire
from lbd.cluster.errors import GossipError
from lbd.cluster.replication import MAX_CLOCK_SKEW_MS, AllocationTable, TableError
from lbd.cluster.swim import Swim

CORPUS = Path(__file__).parent / "corpus"
KEY = bytes(range(32))
PEER = ("10.77.0.9", 7946)
NOW_MS = 1_780_000_000_000
ERRORS: dict[str, type[ValueError]] = {
    "BgpError": BgpError, "GossipError": GossipError, "InflateLimitError": wire.InflateLimitError,
    "OutputLimitError": lzw.OutputLimitError, "TableError": TableError, "FactsError": facts.FactsError,
}
# BGP attribute faults RFC 7606 answers without a reset: the UPDATE decodes with this strongest problem.
HANDLED = {"treat-as-withdraw": Action.TREAT_AS_WITHDRAW, "attribute-discard": Action.ATTRIBUTE_DISCARD}
CORPUS_PEER_AS = 64513  # the eBGP peer the handled UPDATEs come from


def _cases(kind: str) -> list[tuple[str, dict[str, str]]]:
    expected = json.loads((CORPUS / kind / "expected.json").read_text())
    return sorted(expected.items())


def _swim(keys: list[bytes]) -> Swim:
    return Swim("a", "10.77.0.1", 7946, now=0.0, keys=keys)


def _run(surface: str, data: bytes) -> Any:
    """Feed ``data`` to ``surface``; return what it gives (Swim or decoded value)."""
    if surface == "message":
        for four, ibgp in ((True, True), (False, False)):
            codec.decode_message(data, four_octet=four, ibgp=ibgp)
        return None
    if surface in ("packet", "encrypted"):
        core = _swim([KEY] if surface == "encrypted" else [])
        core.handle_packet(data, PEER, 1.0)
        return core
    if surface in ("stream", "estream"):
        return wire.decode_stream(data, [KEY] if surface == "estream" else [])
    if surface == "lzw":
        return lzw.decompress(data, wire.MAX_PACKET_INFLATE)
    if surface == "table":
        return AllocationTable.decode(data)
    if surface == "facts":
        return facts.decode(data)
    raise AssertionError(f"unknown surface {surface}")


def test_every_corpus_file_is_described() -> None:
    for kind in ("bgp", "gossip"):
        files = {p.name for p in (CORPUS / kind).glob("*.bin")}
        assert files == {name for name, _ in _cases(kind)}, kind
        readme = (CORPUS / kind / "README.md").read_text()
        assert all(f"`{name}`" in readme for name in files)


@pytest.mark.parametrize(("name", "case"), _cases("bgp") + _cases("gossip"), ids=lambda v: v if isinstance(v, str) else "")
def test_corpus_input_is_rejected_precisely(name: str, case: dict[str, str]) -> None:
    kind = "bgp" if case["surface"] == "message" else "gossip"
    data = (CORPUS / kind / name).read_bytes()
    error = case["error"]
    if error in HANDLED:
        assert _run(case["surface"], data) is None  # decodes either way, raising nothing
        length, msg_type = codec.check_header(data[: codec.HEADER_LEN])
        assert (length, msg_type) == (len(data), codec.MsgType.UPDATE)
        update = codec.decode_update(data[codec.HEADER_LEN :], four_octet=True, ibgp=False, peer_as=CORPUS_PEER_AS)
        assert strongest(update.problems) == HANDLED[error], f"{name}: {update.problems}"
        return
    if error == "refused-name":
        core = _run(case["surface"], data)
        assert [m.name for m in core.members()] == ["a"] and core.stats.bad_names == 1
        return
    if error.startswith("refused-stamp"):
        _, entries = _run("table", data)
        table = AllocationTable("b")
        adopted = table.merge(entries, now_ms=NOW_MS)
        refused = int(error.partition(":")[2] or len(entries))
        assert table.rejected == refused and len(adopted) <= len(entries) - refused
        assert table.clock <= NOW_MS + MAX_CLOCK_SKEW_MS
        # The replica goes on writing, and what it saves loads again.
        table.record({}, {}, now_ms=NOW_MS)
        AllocationTable.from_state("b", table.to_state(), now_ms=NOW_MS)
        return
    with pytest.raises(ValueError) as info:
        _run(case["surface"], data)
    assert type(info.value) is ERRORS[error], f"{name}: {type(info.value).__name__}: {info.value}"


_FAMILY: dict[str, type[ValueError]] = {"message": BgpError, "packet": GossipError, "encrypted": GossipError,
                                         "stream": GossipError, "estream": GossipError, "lzw": GossipError,
                                         "table": TableError, "facts": facts.FactsError}
_ALL = [(k, n, c) for k in ("bgp", "gossip") for n, c in _cases(k)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from(_ALL), st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 8), st.binary(max_size=8)),
                                       max_size=5))
def test_mutated_corpus_raises_only_the_surface_error(case: tuple[str, str, dict[str, str]],
                                                       edits: list[tuple[int, int, bytes]]) -> None:
    kind, name, meta = case
    b = bytearray((CORPUS / kind / name).read_bytes())
    for pos, cut, ins in edits:
        p = pos % (len(b) + 1)
        b[p:p + cut] = ins
    surface = meta["surface"]
    try:
        _run(surface, bytes(b))
    except _FAMILY[surface]:
        pass
