"""Binding VIPs to interfaces as host addresses, over netlink (pyroute2).

A VIP is added as ``/32`` or ``/128`` with IFA_F_NOPREFIXROUTE (no connected
route appears for it) and, for IPv6, IFA_F_NODAD (the VIP moves between
nodes; duplicate address detection would hold it tentative for a second and
fail it while the previous owner's neighbour entries are still cached).

It gets a finite lifetime (valid = preferred = ``lifetime``) that lbd
refreshes well before expiry: if lbd dies without cleaning up, the kernel
removes the address itself, and tools looking for the "primary" address
(DHCP clients, flannel) do not pick a dynamic one (peers.md, PureLB; kube-vip
#1385).

Every address is marked with IFA_PROTO = ``LBD_ADDR_PROTO`` (kernel >= 5.18)
so a restarted lbd finds and removes what it added before a crash. On older
kernels the attribute is ignored and such addresses are only recognised by
their finite lifetime expiring; lbd does not guess by other means.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

from lbd.kernel.interfaces import LBD_ADDR_PROTO
from lbd.kernel.netlink import AddrRequest, Netlink
from lbd.model import IPAddress

IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200

DEFAULT_LIFETIME = 120.0


@dataclass(frozen=True)
class MarkedAddress:
    ifindex: int
    address: IPAddress
    prefixlen: int


class AddressBinder:
    """Add, refresh and remove lbd's addresses through a ``Netlink`` worker."""

    def __init__(self, nl: Netlink, lifetime: float = DEFAULT_LIFETIME, proto: int = LBD_ADDR_PROTO) -> None:
        self._nl = nl
        self.lifetime = int(lifetime)
        self.proto = proto

    async def bind(self, ifindex: int, vip: IPAddress) -> None:
        """Add ``vip``, or refresh its lifetime if present (NLM_F_REPLACE: idempotent)."""
        flags = IFA_F_NOPREFIXROUTE | (IFA_F_NODAD if vip.version == 6 else 0)
        await self._nl.call(
            "addr",
            "replace",
            index=ifindex,
            address=str(vip),
            prefixlen=vip.max_prefixlen,
            flags=flags,
            proto=self.proto,
            valid_lft=self.lifetime,
            preferred_lft=self.lifetime,
        )

    def _flags(self, vip: IPAddress) -> int:
        return IFA_F_NOPREFIXROUTE | (IFA_F_NODAD if vip.version == 6 else 0)

    async def bind_many(self, items: list[tuple[int, IPAddress]]) -> list[str | None]:
        """``bind`` for many (ifindex, vip) at once, pipelined: an error text per item, None when bound."""
        requests = [
            AddrRequest("replace", ifindex, vip, vip.max_prefixlen, self._flags(vip), self.proto, self.lifetime)
            for ifindex, vip in items
        ]
        return [None if e == 0 else f"[Errno {e}] {errno.errorcode.get(e, e)}: {os.strerror(e)}"
                for e in await self._nl.addr_batch(requests)]

    async def unbind_many(self, items: list[tuple[int, IPAddress]]) -> list[str | None]:
        """``unbind`` for many at once: None when removed or already gone, else the error text."""
        requests = [AddrRequest("del", ifindex, vip, vip.max_prefixlen) for ifindex, vip in items]
        return [None if e in (0, errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV)
                else f"[Errno {e}] {errno.errorcode.get(e, e)}: {os.strerror(e)}"
                for e in await self._nl.addr_batch(requests)]

    async def unbind(self, ifindex: int, vip: IPAddress) -> bool:
        """Remove ``vip``; False when it was not there (already gone is fine)."""
        try:
            await self._nl.call("addr", "del", index=ifindex, address=str(vip), prefixlen=vip.max_prefixlen)
        except Exception as exc:  # pyroute2 raises NetlinkError(code, ...)
            if getattr(exc, "code", None) in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                return False
            raise
        return True

    async def marked(self) -> list[MarkedAddress]:
        """Every address in this namespace carrying lbd's IFA_PROTO mark."""
        import ipaddress

        found = []
        for msg in await self._nl.call("get_addr"):
            if msg.get("IFA_PROTO") != self.proto:
                continue
            key = "IFA_LOCAL" if msg["family"] == socket.AF_INET else "IFA_ADDRESS"
            text = msg.get(key) or msg.get("IFA_ADDRESS")
            if text is None:
                continue
            found.append(MarkedAddress(msg["index"], ipaddress.ip_address(text), msg["prefixlen"]))
        return found

    async def remove(self, marked: MarkedAddress) -> bool:
        try:
            await self._nl.call("addr", "del", index=marked.ifindex, address=str(marked.address), prefixlen=marked.prefixlen)
        except Exception as exc:
            if getattr(exc, "code", None) in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                return False
            raise
        return True
