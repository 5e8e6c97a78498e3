"""Userspace ARP/NDP responder: answers for owned VIPs without binding them.

One filtered AF_PACKET socket per interface (see ``rawsock``), read from the
asyncio loop with ``add_reader``: the process sleeps in epoll while nobody
asks, so an idle responder uses no CPU. When readable, frames are read in a
bounded batch until EAGAIN and each is answered from a precomputed template
(``ArpReplier``, ``NdpReplier``): no parsing of ARP beyond byte compares, no
allocation beyond the reply itself.

For IPv6 the responder joins each VIP's solicited-node group (RFC 4861
§7.2.1) twice over: on the packet socket (PACKET_ADD_MEMBERSHIP, which
programs the NIC's multicast filter so the NS frames are delivered at all)
and on an IPv6 socket (IPV6_JOIN_GROUP, which also makes the kernel send MLD
reports, so switches doing MLD snooping forward the NS to this port: the
failure in Cilium #44311).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import structlog

from lbd.l2 import metrics, rawsock
from lbd.l2.arp import ArpReplier
from lbd.l2.ndp import NdpReplier, multicast_mac, solicited_node
from lbd.model import IPAddress

log = structlog.get_logger(__name__)

BATCH = 64  # frames per wake-up; the rest wait for the next (level-triggered) wake-up


class Responder:
    """Answers ARP requests and NS for a set of VIPs on one interface."""

    def __init__(self, ifname: str, ifindex: int, mac: str | bytes, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.ifname = ifname
        self.ifindex = ifindex
        self.arp = ArpReplier(mac)
        self.ndp = NdpReplier(mac)
        self._loop = loop or asyncio.get_running_loop()
        self._sock = rawsock.open_listener(ifname)
        self._mld: socket.socket | None = None
        self._groups: dict[bytes, int] = {}  # solicited-node group -> VIPs using it
        self.requests = 0
        self.responses = 0
        self.errors = 0
        self._m_requests = metrics.REQUESTS_RECEIVED.labels(interface=ifname)
        self._m_responses = metrics.RESPONSES_SENT.labels(interface=ifname)
        self._loop.add_reader(self._sock.fileno(), self._readable)
        log.info("responder_started", interface=ifname)

    @property
    def vips(self) -> int:
        return len(self.arp) + len(self.ndp)

    def add(self, vip: IPAddress) -> None:
        if isinstance(vip, ipaddress.IPv4Address):
            self.arp.add(vip)
            return
        group = solicited_node(vip)
        if self._groups.get(group.packed, 0) == 0:
            self._join(group)
        self._groups[group.packed] = self._groups.get(group.packed, 0) + 1
        self.ndp.add(vip)

    def remove(self, vip: IPAddress) -> None:
        if isinstance(vip, ipaddress.IPv4Address):
            self.arp.remove(vip)
            return
        if vip not in self.ndp:
            return
        self.ndp.remove(vip)
        group = solicited_node(vip)
        count = self._groups.get(group.packed, 0) - 1
        if count <= 0:
            self._groups.pop(group.packed, None)
            self._leave(group)
        else:
            self._groups[group.packed] = count

    def _join(self, group: ipaddress.IPv6Address) -> None:
        rawsock.add_link_membership(self._sock, self.ifindex, multicast_mac(group))
        try:
            if self._mld is None:
                self._mld = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            self._mld.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, rawsock.ipv6_group_request(group, self.ifindex))
        except OSError as exc:
            # The packet-level membership above is what delivers the frames;
            # without the IPv6 join only MLD-snooping switches are a problem.
            log.warning("mld_join_failed", interface=self.ifname, group=str(group), error=str(exc))

    def _leave(self, group: ipaddress.IPv6Address) -> None:
        try:
            rawsock.drop_link_membership(self._sock, self.ifindex, multicast_mac(group))
            if self._mld is not None:
                self._mld.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_LEAVE_GROUP, rawsock.ipv6_group_request(group, self.ifindex))
        except OSError as exc:
            log.warning("multicast_leave_failed", interface=self.ifname, group=str(group), error=str(exc))

    def _readable(self) -> None:
        """The hot path: drain up to BATCH frames, answer those for owned VIPs."""
        recv = self._sock.recv
        send = self._sock.send
        arp_reply = self.arp.reply
        ndp_reply = self.ndp.reply
        seen = sent = 0
        for _ in range(BATCH):
            try:
                frame = recv(2048)
            except BlockingIOError:
                break
            except OSError as exc:
                self._error("responder_recv_failed", exc)
                break
            seen += 1
            reply = arp_reply(frame) if frame[12:14] == b"\x08\x06" else ndp_reply(frame)
            if reply is None:
                continue
            try:
                send(reply)
                sent += 1
            except OSError as exc:  # e.g. ENOBUFS under a flood: drop, count, go on
                self._error("responder_send_failed", exc)
        if seen:
            self.requests += seen
            self._m_requests.inc(seen)
        if sent:
            self.responses += sent
            self._m_responses.inc(sent)

    def _error(self, event: str, exc: OSError) -> None:
        self.errors += 1
        metrics.ERRORS.inc()
        if self.errors <= 10 or self.errors % 1000 == 0:  # a flood must not flood the log
            log.warning(event, interface=self.ifname, error=str(exc), errors=self.errors)

    def send(self, frame: bytes) -> None:
        self._sock.send(frame)

    def close(self) -> None:
        try:
            self._loop.remove_reader(self._sock.fileno())
        except (ValueError, RuntimeError):  # loop already closed
            pass
        self._sock.close()
        if self._mld is not None:
            self._mld.close()  # drops the IPv6 memberships with it
        log.info("responder_stopped", interface=self.ifname, requests=self.requests, responses=self.responses)
