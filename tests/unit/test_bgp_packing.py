"""UPDATE packing with many thousand prefixes (issue 10: "tests that let bugs through").

Withdrawals were only tested one prefix at a time, so a withdrawal packed past
the 4,096-octet limit went unnoticed. Every message here is decoded back: it
must fit, and the union of what the messages carry must be exactly the input,
each prefix once, in both the IPv4 Withdrawn Routes field and MP_UNREACH_NLRI.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import Counter

import pytest

from lbd.bgp import codec
from lbd.bgp.codec import HEADER_LEN, MAX_MESSAGE_LEN, MsgType
from lbd.bgp.packing import EncodeContext, RouteAttrs, UpdatePacker

CTX = EncodeContext(local_as=64512, ibgp=False, four_octet=True,
                    next_hop_v4=ipaddress.IPv4Address("10.77.0.1"), next_hop_v6=ipaddress.IPv6Address("fd77::1"))


def _v4(n: int, seed: int = 4) -> list[ipaddress.IPv4Network]:
    rng = random.Random(seed)
    out: set[ipaddress.IPv4Network] = set()
    while len(out) < n:
        plen = rng.choice((32, 32, 32, 24, 23, 17, 16, 9, 8, 1))
        out.add(ipaddress.IPv4Network((rng.getrandbits(32), plen), strict=False))
    return sorted(out)


def _v6(n: int, seed: int = 6) -> list[ipaddress.IPv6Network]:
    rng = random.Random(seed)
    out: set[ipaddress.IPv6Network] = set()
    while len(out) < n:
        plen = rng.choice((128, 128, 64, 56, 48, 127, 65, 7))
        out.add(ipaddress.IPv6Network(((0xFD77 << 112) | rng.getrandbits(112), plen), strict=False))
    return sorted(out)


def _decode_all(msgs: list[bytes], ibgp: bool = False) -> list[codec.Update]:
    updates = []
    for msg in msgs:
        assert len(msg) <= MAX_MESSAGE_LEN, f"UPDATE of {len(msg)} octets exceeds {MAX_MESSAGE_LEN}"
        assert struct.unpack("!H", msg[16:18])[0] == len(msg) and msg[18] == MsgType.UPDATE
        upd = codec.decode_update(msg[HEADER_LEN:], four_octet=True, ibgp=ibgp, peer_as=64512, strict=True)
        assert not upd.problems
        updates.append(upd)
    return updates


def _assert_full(msgs: list[bytes], prefix_max: int) -> None:
    # Greedy packing: every message but the last had no room for one more prefix.
    for msg in msgs[:-1]:
        assert len(msg) > MAX_MESSAGE_LEN - prefix_max, f"UPDATE of {len(msg)} octets left room unused"


@pytest.mark.parametrize("count", [1, 818, 819, 820, 5_000, 20_000])
def test_ipv4_withdrawals_fit_and_carry_every_prefix_once(count: int) -> None:
    prefixes = _v4(count)
    msgs = UpdatePacker(CTX).withdraw(prefixes)
    updates = _decode_all(msgs)
    got = [p for u in updates for p in u.withdrawn]
    assert all(u.attributes.mp_unreach is None and not u.nlri for u in updates)
    assert Counter(got) == Counter(prefixes), "a prefix was dropped or sent twice"
    _assert_full(msgs, 5)


@pytest.mark.parametrize("count", [1, 5_000, 20_000])
def test_ipv6_withdrawals_fit_in_mp_unreach_and_carry_every_prefix_once(count: int) -> None:
    prefixes = _v6(count)
    msgs = UpdatePacker(CTX).withdraw(prefixes)
    updates = _decode_all(msgs)
    got = [p for u in updates for p in u.withdrawn_all()]
    assert all(not u.withdrawn for u in updates)
    assert Counter(got) == Counter(prefixes)
    _assert_full(msgs, 17)


def test_mixed_withdrawal_of_thousands() -> None:
    v4, v6 = _v4(7_000, 1), _v6(3_000, 2)
    mixed = [p for pair in zip(v4, v6) for p in pair] + v4[len(v6):]
    updates = _decode_all(UpdatePacker(CTX).withdraw(mixed))
    assert Counter(p for u in updates for p in u.withdrawn_all()) == Counter(v4 + v6)


@pytest.mark.parametrize("ibgp", [False, True])
def test_announcements_of_thousands_fit_and_carry_every_prefix_once(ibgp: bool) -> None:
    ctx = EncodeContext(local_as=64512, ibgp=ibgp, four_octet=True, next_hop_v4=CTX.next_hop_v4,
                        next_hop_v6=CTX.next_hop_v6, next_hop_v6_link_local=ipaddress.IPv6Address("fe80::1"))
    a, b = RouteAttrs(), RouteAttrs(communities=((64512, 1),), large_communities=((64512, 1, 2),), med=5)
    routes = [(p, a if i % 3 else b) for i, p in enumerate(_v4(6_000) + _v6(4_000))]
    msgs = UpdatePacker(ctx).announce(routes)
    got = []
    for upd in _decode_all(msgs, ibgp):
        got.extend(upd.announced())
    assert Counter(got) == Counter(p for p, _ in routes)
