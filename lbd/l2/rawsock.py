"""AF_PACKET sockets for sending announcements and receiving ARP/NS (Linux only).

The listening socket gets a classic BPF filter so that only ARP requests and
ICMPv6 Neighbor Solicitations, and never our own outgoing frames, are copied
to userspace: everything else on the wire costs the responder nothing.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_MR_MULTICAST = 0
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # SKF_AD_OFF (-0x1000) + SKF_AD_PKTTYPE, as u32

# Classic BPF opcodes (linux/filter.h).
_LDB_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS
_LDH_ABS = 0x28  # BPF_LD | BPF_H | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K

# (code, jt, jf, k); jumps count instructions skipped after the current one.
ARP_NS_FILTER: tuple[tuple[int, int, int, int], ...] = (
    (_LDB_ABS, 0, 0, SKF_AD_PKTTYPE),  # 0: pkttype
    (_JEQ_K, 11, 0, PACKET_OUTGOING),  # 1: our own transmissions -> drop
    (_LDH_ABS, 0, 0, 12),  # 2: ethertype
    (_JEQ_K, 0, 3, 0x0806),  # 3: ARP? else -> 7
    (_LDH_ABS, 0, 0, 20),  # 4: ARP op
    (_JEQ_K, 0, 7, 1),  # 5: request? else -> drop
    (_RET_K, 0, 0, 0xFFFF),  # 6: accept
    (_JEQ_K, 0, 5, 0x86DD),  # 7: IPv6? else -> drop
    (_LDB_ABS, 0, 0, 20),  # 8: next header
    (_JEQ_K, 0, 3, 58),  # 9: ICMPv6? else -> drop
    (_LDB_ABS, 0, 0, 54),  # 10: ICMPv6 type
    (_JEQ_K, 0, 1, 135),  # 11: NS? else -> drop
    (_RET_K, 0, 0, 0xFFFF),  # 12: accept
    (_RET_K, 0, 0, 0),  # 13: drop
)


def _attach_filter(sock: socket.socket, program: tuple[tuple[int, int, int, int], ...]) -> None:
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code)
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_sender(ifname: str) -> socket.socket:
    """A raw socket that only sends on ``ifname`` (protocol 0: it receives nothing)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.bind((ifname, 0))
    except OSError:
        sock.close()
        raise
    return sock


def open_listener(ifname: str) -> socket.socket:
    """A non-blocking raw socket receiving ARP requests and NS on ``ifname``.

    Created with protocol 0 (nothing queued), filtered, and only then bound to
    ETH_P_ALL, so no unfiltered frame is ever queued on it.
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        _attach_filter(sock, ARP_NS_FILTER)
        sock.bind((ifname, ETH_P_ALL))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _mreq(ifindex: int, mac: bytes) -> bytes:
    # struct packet_mreq { int ifindex; u16 type; u16 alen; u8 address[8]; }
    return struct.pack("iHH8s", ifindex, PACKET_MR_MULTICAST, len(mac), mac)


def add_link_membership(sock: socket.socket, ifindex: int, mac: bytes) -> None:
    """Accept frames sent to multicast ``mac`` on the interface (the NIC's filter)."""
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, _mreq(ifindex, mac))


def drop_link_membership(sock: socket.socket, ifindex: int, mac: bytes) -> None:
    sock.setsockopt(SOL_PACKET, PACKET_DROP_MEMBERSHIP, _mreq(ifindex, mac))


def ipv6_group_request(group: ipaddress.IPv6Address, ifindex: int) -> bytes:
    # struct ipv6_mreq { struct in6_addr; unsigned int ifindex; }
    return group.packed + struct.pack("@I", ifindex)
