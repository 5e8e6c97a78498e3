"""Ethernet + ARP frames (RFC 826), sans-IO.

Only what lbd needs: IPv4-over-Ethernet requests and replies, gratuitous ARP
(RFC 5227 §3 "ARP Announcement": sender IP = target IP = the VIP), and a
precomputed replier for the userspace responder's hot path.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from lbd.l2.frame import BROADCAST_MAC, ETH_P_ARP, FrameError, mac_to_bytes, pad

OP_REQUEST = 1
OP_REPLY = 2

ARP_FRAME_LEN = 42  # 14 Ethernet + 28 ARP
_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
# htype Ethernet (1), ptype IPv4, hlen 6, plen 4: the fixed part lbd accepts.
_ARP_FIXED = b"\x00\x01\x08\x00\x06\x04"
_ZERO_MAC = b"\x00" * 6


@dataclass(frozen=True)
class ArpPacket:
    eth_dst: bytes
    eth_src: bytes
    op: int
    sender_mac: bytes
    sender_ip: ipaddress.IPv4Address
    target_mac: bytes
    target_ip: ipaddress.IPv4Address

    @property
    def is_gratuitous(self) -> bool:
        return self.sender_ip == self.target_ip


def parse_arp(frame: bytes) -> ArpPacket:
    """Decode an Ethernet frame carrying an IPv4 ARP request or reply."""
    if len(frame) < ARP_FRAME_LEN:
        raise FrameError(f"ARP frame too short: {len(frame)} bytes, need {ARP_FRAME_LEN}")
    eth_dst, eth_src, ethertype = _ETH.unpack_from(frame, 0)
    if ethertype != ETH_P_ARP:
        raise FrameError(f"not ARP: ethertype 0x{ethertype:04x}")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, 14)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
        raise FrameError(f"not IPv4-over-Ethernet ARP: htype {htype} ptype 0x{ptype:04x} hlen {hlen} plen {plen}")
    if op not in (OP_REQUEST, OP_REPLY):
        raise FrameError(f"unsupported ARP operation {op}")
    return ArpPacket(
        eth_dst=eth_dst,
        eth_src=eth_src,
        op=op,
        sender_mac=sha,
        sender_ip=ipaddress.IPv4Address(spa),
        target_mac=tha,
        target_ip=ipaddress.IPv4Address(tpa),
    )


def build_arp(
    *,
    op: int,
    eth_src: str | bytes,
    eth_dst: str | bytes,
    sender_mac: str | bytes,
    sender_ip: ipaddress.IPv4Address,
    target_mac: str | bytes,
    target_ip: ipaddress.IPv4Address,
) -> bytes:
    if op not in (OP_REQUEST, OP_REPLY):
        raise ValueError(f"unsupported ARP operation {op}")
    return pad(
        _ETH.pack(mac_to_bytes(eth_dst), mac_to_bytes(eth_src), ETH_P_ARP)
        + _ARP.pack(
            1, 0x0800, 6, 4, op,
            mac_to_bytes(sender_mac), sender_ip.packed,
            mac_to_bytes(target_mac), target_ip.packed,
        )
    )


def build_request(src_mac: str | bytes, src_ip: ipaddress.IPv4Address, target_ip: ipaddress.IPv4Address) -> bytes:
    """A broadcast who-has ``target_ip``."""
    return build_arp(
        op=OP_REQUEST, eth_src=src_mac, eth_dst=BROADCAST_MAC,
        sender_mac=src_mac, sender_ip=src_ip, target_mac=_ZERO_MAC, target_ip=target_ip,
    )


def build_reply(
    src_mac: str | bytes, src_ip: ipaddress.IPv4Address, dst_mac: str | bytes, dst_ip: ipaddress.IPv4Address
) -> bytes:
    """A unicast is-at: ``src_ip`` is at ``src_mac``, sent to the asker."""
    return build_arp(
        op=OP_REPLY, eth_src=src_mac, eth_dst=dst_mac,
        sender_mac=src_mac, sender_ip=src_ip, target_mac=dst_mac, target_ip=dst_ip,
    )


def build_gratuitous(mac: str | bytes, vip: ipaddress.IPv4Address, op: int) -> bytes:
    """A broadcast gratuitous ARP for ``vip``: sender IP = target IP = VIP.

    Both forms are sent on takeover (as MetalLB and keepalived do): some hosts
    only update their caches from requests (RFC 5227 §3 announcements), others
    only from replies. The request carries a zero target MAC (RFC 5227 §2.1.1);
    the reply names our MAC as target too, which is what receivers expect.
    """
    target_mac = _ZERO_MAC if op == OP_REQUEST else mac
    return build_arp(
        op=op, eth_src=mac, eth_dst=BROADCAST_MAC,
        sender_mac=mac, sender_ip=vip, target_mac=target_mac, target_ip=vip,
    )


class ArpReplier:
    """The responder's hot path: answers requests for owned VIPs from templates.

    Per VIP the reply's constant middle (our MAC, the ARP fixed part, op reply,
    our MAC, the VIP) is precomputed; a reply is three slices of the request
    joined around it, with no parsing beyond a few byte compares.
    """

    def __init__(self, mac: str | bytes) -> None:
        self.mac = mac_to_bytes(mac)
        self._templates: dict[bytes, bytes] = {}

    def add(self, vip: ipaddress.IPv4Address) -> None:
        self._templates[vip.packed] = (
            self.mac + b"\x08\x06" + _ARP_FIXED + b"\x00\x02" + self.mac + vip.packed
        )

    def remove(self, vip: ipaddress.IPv4Address) -> None:
        self._templates.pop(vip.packed, None)

    def __len__(self) -> int:
        return len(self._templates)

    def reply(self, frame: bytes) -> bytes | None:
        """The reply to ``frame`` if it asks for an owned VIP, else None.

        Like MetalLB, only requests sent to broadcast or to our own MAC are
        answered (a unicast request for another host is not ours to answer).
        A request with sender IP = target IP is someone's announcement
        (RFC 5227 §3), not a question, and gets no reply; a probe (sender
        0.0.0.0, RFC 5227 §2.1.1) does, which tells the prober the address is
        taken, as the kernel does for bound addresses.
        """
        if len(frame) < ARP_FRAME_LEN or frame[12:14] != b"\x08\x06" or frame[14:22] != b"\x00\x01\x08\x00\x06\x04\x00\x01":
            return None
        template = self._templates.get(frame[38:42])
        if template is None:
            return None
        dst = frame[0:6]
        if dst != BROADCAST_MAC and dst != self.mac:
            return None
        if frame[28:32] == frame[38:42]:
            return None
        asker = frame[22:28]
        # Ethernet dst, then the template, then target MAC + IP = the asker's.
        return asker + template + frame[22:32] + b"\x00" * 18
