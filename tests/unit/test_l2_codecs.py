"""ARP and NDP codecs, cross-checked against scapy and fuzzed with hypothesis."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether

from lbd.l2 import arp, ndp
from lbd.l2.frame import FrameError, mac_to_bytes, mac_to_str

MAC = "02:00:00:00:00:01"
PEER = "02:00:00:00:00:02"
V4 = ipaddress.IPv4Address("10.77.0.10")
PEER4 = ipaddress.IPv4Address("10.77.0.2")
V6 = ipaddress.IPv6Address("fd77::10")
PEER6 = ipaddress.IPv6Address("fd77::2")


# -- ARP --------------------------------------------------------------------


def test_arp_parses_scapy_request() -> None:
    frame = bytes(Ether(src=PEER, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=PEER, psrc=str(PEER4), pdst=str(V4)))
    packet = arp.parse_arp(frame)
    assert packet.op == arp.OP_REQUEST
    assert packet.sender_mac == mac_to_bytes(PEER)
    assert packet.sender_ip == PEER4 and packet.target_ip == V4
    assert not packet.is_gratuitous


def test_arp_reply_decodes_in_scapy() -> None:
    frame = arp.build_reply(MAC, V4, PEER, PEER4)
    assert len(frame) == 60
    decoded = Ether(frame)
    assert decoded[Ether].dst == PEER and decoded[Ether].src == MAC
    assert decoded[ARP].op == 2
    assert decoded[ARP].hwsrc == MAC and decoded[ARP].psrc == str(V4)
    assert decoded[ARP].hwdst == PEER and decoded[ARP].pdst == str(PEER4)


@pytest.mark.parametrize("op", [arp.OP_REQUEST, arp.OP_REPLY])
def test_gratuitous_arp_sender_is_target(op: int) -> None:
    decoded = Ether(arp.build_gratuitous(MAC, V4, op))
    assert decoded[Ether].dst == "ff:ff:ff:ff:ff:ff"
    assert decoded[ARP].op == op
    assert decoded[ARP].psrc == decoded[ARP].pdst == str(V4)
    assert decoded[ARP].hwsrc == MAC
    assert arp.parse_arp(arp.build_gratuitous(MAC, V4, op)).is_gratuitous


def test_arp_roundtrip_request() -> None:
    packet = arp.parse_arp(arp.build_request(PEER, PEER4, V4))
    assert (packet.op, packet.sender_ip, packet.target_ip, packet.eth_dst) == (1, PEER4, V4, b"\xff" * 6)


@pytest.mark.parametrize(
    "frame, message",
    [
        (b"\x00" * 41, "too short"),
        (bytes(Ether(type=0x0800) / (b"\x00" * 40)), "not ARP"),
        (bytes(Ether() / ARP(ptype=0x86DD, plen=4)), "not IPv4-over-Ethernet"),
        (bytes(Ether() / ARP(op=3)), "unsupported ARP operation"),
    ],
)
def test_arp_rejects(frame: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        arp.parse_arp(frame)


def test_arp_replier_answers_only_owned_vips() -> None:
    replier = arp.ArpReplier(MAC)
    replier.add(V4)
    request = bytes(Ether(src=PEER, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=PEER, psrc=str(PEER4), pdst=str(V4)))
    reply = replier.reply(request)
    assert reply is not None and reply == arp.build_reply(MAC, V4, PEER, PEER4)
    # Unicast to our MAC is answered too (a neighbour re-validating its cache).
    assert replier.reply(bytes(Ether(src=PEER, dst=MAC) / ARP(op=1, hwsrc=PEER, psrc=str(PEER4), pdst=str(V4))))
    # Not for us: another VIP, another host's unicast, a reply, an announcement.
    assert replier.reply(bytes(Ether(src=PEER, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=PEER, psrc=str(PEER4), pdst="10.77.0.11"))) is None
    assert replier.reply(bytes(Ether(src=PEER, dst="02:00:00:00:00:09") / ARP(op=1, hwsrc=PEER, psrc=str(PEER4), pdst=str(V4)))) is None
    assert replier.reply(arp.build_reply(PEER, PEER4, MAC, V4)) is None
    assert replier.reply(arp.build_gratuitous(PEER, V4, arp.OP_REQUEST)) is None
    replier.remove(V4)
    assert replier.reply(request) is None and len(replier) == 0


# -- NDP --------------------------------------------------------------------


def _scapy_ns(src: str = str(PEER6), target: ipaddress.IPv6Address = V6, hlim: int = 255, slla: bool = True) -> bytes:
    dst = str(ndp.solicited_node(target))
    packet = Ether(src=PEER, dst=mac_to_str(ndp.multicast_mac(ndp.solicited_node(target)))) / IPv6(src=src, dst=dst, hlim=hlim) / ICMPv6ND_NS(tgt=str(target))
    if slla:
        packet = packet / ICMPv6NDOptSrcLLAddr(lladdr=PEER)
    return bytes(packet)


def test_solicited_node_and_mac() -> None:
    assert ndp.solicited_node(ipaddress.IPv6Address("fd77::12:3456")) == ipaddress.IPv6Address("ff02::1:ff12:3456")
    assert mac_to_str(ndp.multicast_mac(ipaddress.IPv6Address("ff02::1:ff12:3456"))) == "33:33:ff:12:34:56"


def test_ndp_parses_scapy_ns() -> None:
    ns = ndp.parse_ndp(_scapy_ns())
    assert isinstance(ns, ndp.NeighborSolicitation)
    assert ns.src == PEER6 and ns.target == V6 and ns.source_lladdr == mac_to_bytes(PEER)
    assert ns.dst == ndp.solicited_node(V6)


def test_ndp_parses_scapy_na() -> None:
    frame = bytes(Ether(src=PEER, dst=MAC) / IPv6(src=str(PEER6), dst=str(V6), hlim=255) / ICMPv6ND_NA(tgt=str(PEER6), S=1, O=0, R=1) / ICMPv6NDOptDstLLAddr(lladdr=PEER))
    na = ndp.parse_ndp(frame)
    assert isinstance(na, ndp.NeighborAdvertisement)
    assert (na.solicited, na.override, na.router) == (True, False, True)
    assert na.target_lladdr == mac_to_bytes(PEER)


def _scapy_checksum_ok(frame: bytes) -> Ether:
    decoded = Ether(frame)
    layer = decoded[IPv6].payload
    sent = layer.cksum
    del layer.cksum
    recomputed = Ether(bytes(decoded))[IPv6].payload.cksum
    assert sent == recomputed
    return decoded


def test_solicited_na_decodes_in_scapy() -> None:
    frame = ndp.build_na(MAC, V6, PEER, PEER6, V6, solicited=True, override=True)
    decoded = _scapy_checksum_ok(frame)
    na = decoded[ICMPv6ND_NA]
    assert (na.S, na.O, na.R) == (1, 1, 0)
    assert na.tgt == str(V6)
    assert decoded[IPv6].hlim == 255 and decoded[IPv6].dst == str(PEER6)
    assert decoded[ICMPv6NDOptDstLLAddr].lladdr == MAC


def test_unsolicited_na_goes_to_all_nodes_with_override() -> None:
    frame = ndp.build_unsolicited_na(MAC, V6)
    decoded = _scapy_checksum_ok(frame)
    assert decoded[Ether].dst == "33:33:00:00:00:01"
    assert decoded[IPv6].dst == "ff02::1"
    assert (decoded[ICMPv6ND_NA].S, decoded[ICMPv6ND_NA].O) == (0, 1)
    parsed = ndp.parse_ndp(frame)
    assert isinstance(parsed, ndp.NeighborAdvertisement) and parsed.override and not parsed.solicited


def test_ns_decodes_in_scapy() -> None:
    frame = ndp.build_ns(PEER, PEER6, V6)
    decoded = _scapy_checksum_ok(frame)
    assert decoded[Ether].dst == mac_to_str(ndp.multicast_mac(ndp.solicited_node(V6)))
    assert decoded[ICMPv6ND_NS].tgt == str(V6)
    assert decoded[ICMPv6NDOptSrcLLAddr].lladdr == PEER


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f[:60], "too short"),
        (lambda f: f[:21] + bytes([64]) + f[22:], "hop limit 64"),
        (lambda f: f[:56] + bytes([f[56] ^ 0xFF]) + f[57:], "checksum"),
        (lambda f: f[:55] + b"\x01" + f[56:], "code 1"),
    ],
)
def test_ndp_rejects(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FrameError, match=message):
        ndp.parse_ndp(mutate(_scapy_ns()))


def test_ndp_rejects_dad_probe_with_slla_and_multicast_solicited_na() -> None:
    with pytest.raises(FrameError, match="source link-layer"):
        ndp.parse_ndp(_scapy_ns(src="::", slla=True))
    assert isinstance(ndp.parse_ndp(_scapy_ns(src="::", slla=False)), ndp.NeighborSolicitation)
    bad = bytes(Ether() / IPv6(src=str(PEER6), dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt=str(PEER6), S=1))
    with pytest.raises(FrameError, match="Solicited"):
        ndp.parse_ndp(bad)


def test_ndp_replier() -> None:
    replier = ndp.NdpReplier(MAC)
    replier.add(V6)
    reply = replier.reply(_scapy_ns())
    assert reply == ndp.build_na(MAC, V6, PEER, PEER6, V6, solicited=True, override=True)
    _scapy_checksum_ok(reply)
    assert replier.reply(_scapy_ns(hlim=64)) is None  # §7.1.1: off-link, dropped
    assert replier.reply(_scapy_ns(target=ipaddress.IPv6Address("fd77::99"))) is None
    probe = replier.reply(_scapy_ns(src="::", slla=False))
    assert probe is not None
    answer = ndp.parse_ndp(probe)
    assert isinstance(answer, ndp.NeighborAdvertisement) and answer.dst == ndp.ALL_NODES and not answer.solicited


# -- fuzzing: FrameError and nothing else -----------------------------------


def _check(parser, data: bytes) -> None:  # type: ignore[no-untyped-def]
    try:
        parser(data)
    except FrameError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check(arp.parse_arp, data)
    _check(ndp.parse_ndp, data)
    arp.ArpReplier(MAC).reply(data)
    replier = ndp.NdpReplier(MAC)
    replier.add(V6)
    replier.reply(data)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_mutated_valid_frames(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from([
        arp.build_gratuitous(MAC, V4, 1),
        _scapy_ns(),
        ndp.build_unsolicited_na(MAC, V6),
        ndp.build_na(MAC, V6, PEER, PEER6, V6, solicited=True, override=True),
    ]))
    frame = bytearray(base)
    for _ in range(data.draw(st.integers(0, 4))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    mutated = bytes(frame[:cut]) + data.draw(st.binary(max_size=24))
    _check(arp.parse_arp, mutated)
    _check(ndp.parse_ndp, mutated)
    replier = ndp.NdpReplier(MAC)
    replier.add(V6)
    replier.reply(mutated)


def test_mac_helpers() -> None:
    assert mac_to_str(mac_to_bytes(MAC)) == MAC
    with pytest.raises(ValueError):
        mac_to_bytes("02:00:00:00:00")
