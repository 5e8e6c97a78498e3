"""Ethernet helpers shared by the ARP and NDP codecs (sans-IO)."""

from __future__ import annotations

import re

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_HEADER_LEN = 14
ETH_MIN_FRAME = 60  # 64 on the wire minus the FCS the NIC appends (IEEE 802.3 §3.2.8)
BROADCAST_MAC = b"\xff" * 6

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-]?)[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")


class FrameError(ValueError):
    """A frame that is truncated, malformed or not the ARP/NDP message expected."""


def mac_to_bytes(mac: str | bytes) -> bytes:
    """``"02:00:00:00:00:01"`` (or 6 raw bytes) -> 6 bytes."""
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise ValueError(f"a MAC address has 6 bytes, got {len(mac)}")
        return bytes(mac)
    if not _MAC_RE.match(mac):
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes.fromhex(mac.replace(":", "").replace("-", ""))


def mac_to_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def pad(frame: bytes) -> bytes:
    """Pad to the Ethernet minimum: AF_PACKET sends exactly what it is given."""
    if len(frame) < ETH_MIN_FRAME:
        return frame + b"\x00" * (ETH_MIN_FRAME - len(frame))
    return frame
