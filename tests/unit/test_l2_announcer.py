"""L2Announcer's level-triggered logic against a fake netlink and fake sockets (no root)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest

from lbd.l2 import announcer as announcer_mod
from lbd.l2 import arp, metrics, ndp, rawsock
from lbd.l2.announcer import L2Announcer
from lbd.kernel.binding import IFA_F_NODAD, IFA_F_NOPREFIXROUTE
from lbd.kernel.interfaces import IFF_BROADCAST, IFF_UP, LBD_ADDR_PROTO
from lbd.model import L2Intent, L2Mode

MAC = "02:00:00:00:00:01"
V4 = ipaddress.ip_address("10.77.0.10")
V6 = ipaddress.ip_address("fd77::10")


class NetlinkError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code, "fake")
        self.code = code


class FakeNetlink:
    """Just enough of IPRoute: one interface eth0 (index 2), addresses in a dict."""

    def __init__(self) -> None:
        self.addrs: dict[tuple[int, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.fail_next_add: dict[str, int] = {}
        self.batches: list[int] = []  # size of each addr_batch exchange
        self.add("10.77.0.2", 24, None)
        self.add("fd77::2", 64, None)

    def add(self, address: str, prefixlen: int, proto: int | None, index: int = 2) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.addrs[(index, address)] = {
            "family": family, "index": index, "prefixlen": prefixlen, "IFA_PROTO": proto,
            "IFA_ADDRESS": address, "IFA_LOCAL": address if family == socket.AF_INET else None,
        }

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((method, args, kwargs))
        if method == "get_links":
            return [
                {"index": 1, "flags": 0x9, "IFLA_IFNAME": "lo", "IFLA_ADDRESS": "00:00:00:00:00:00"},
                {"index": 2, "flags": IFF_UP | IFF_BROADCAST, "IFLA_IFNAME": "eth0", "IFLA_ADDRESS": MAC},
            ]
        if method == "get_addr":
            return list(self.addrs.values())
        if method == "addr" and args[0] == "replace":
            address = kwargs["address"]
            if self.fail_next_add.get(address, 0) > 0:
                self.fail_next_add[address] -= 1
                raise NetlinkError(95)
            self.add(address, kwargs["prefixlen"], kwargs["proto"], kwargs["index"])
            self.addrs[(kwargs["index"], address)]["flags"] = kwargs["flags"]
            self.addrs[(kwargs["index"], address)]["valid_lft"] = kwargs["valid_lft"]
            return None
        if method == "addr" and args[0] == "del":
            if self.addrs.pop((kwargs["index"], kwargs["address"]), None) is None:
                raise NetlinkError(99)  # EADDRNOTAVAIL
            return None
        raise AssertionError(f"unexpected call {method} {args}")

    async def addr_batch(self, requests: list[Any]) -> list[int]:
        """The pipelined path: each request as the equivalent single call, errno per request."""
        self.batches.append(len(requests))
        out = []
        for req in requests:
            kwargs: dict[str, Any] = {"index": req.ifindex, "address": str(req.address), "prefixlen": req.prefixlen}
            if req.op == "replace":
                kwargs.update(flags=req.flags, proto=req.proto, valid_lft=req.lifetime, preferred_lft=req.lifetime)
            try:
                await self.call("addr", req.op, **kwargs)
                out.append(0)
            except NetlinkError as exc:
                out.append(exc.code)
        return out

    def replaces(self) -> int:
        return sum(1 for m, a, _ in self.calls if m == "addr" and a[0] == "replace")

    async def aclose(self) -> None:
        pass


class FakeSocket:
    def __init__(self, ifname: str, sent: list[bytes]) -> None:
        self.ifname, self.sent, self.closed = ifname, sent, False

    def send(self, frame: bytes) -> int:
        self.sent.append(frame)
        return len(frame)

    def close(self) -> None:
        self.closed = True


class FakeResponder:
    instances: list["FakeResponder"] = []

    def __init__(self, ifname: str, ifindex: int, mac: bytes) -> None:
        self.ifname, self.vips_set, self.closed = ifname, set(), False
        FakeResponder.instances.append(self)

    @property
    def vips(self) -> int:
        return len(self.vips_set)

    def add(self, vip: Any) -> None:
        self.vips_set.add(vip)

    def remove(self, vip: Any) -> None:
        self.vips_set.discard(vip)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    frames: list[bytes] = []
    monkeypatch.setattr(rawsock, "open_sender", lambda ifname: FakeSocket(ifname, frames))
    FakeResponder.instances = []
    monkeypatch.setattr(announcer_mod, "Responder", FakeResponder)
    return frames


def intent(vip: Any, mode: str = "bind", burst: int = 3, interval: float = 0.0, interface: str = "eth0") -> L2Intent:
    return L2Intent(vip=vip, interface=interface, mode=mode, services=("web",), announce_burst=burst, announce_interval=interval)


def make(nl: FakeNetlink, **kwargs: Any) -> L2Announcer:
    kwargs.setdefault("burst_spacing", 0.001)
    return L2Announcer(netlink=nl, wall_clock=lambda: 1000.0, **kwargs)  # type: ignore[arg-type]


async def settle() -> None:
    await asyncio.sleep(0.05)


async def test_bind_adds_marked_host_addresses_and_sends_the_burst(sent: list[bytes]) -> None:
    nl = FakeNetlink()
    ann = make(nl)
    await ann.apply([intent(V4), intent(V6)])
    await settle()
    a4, a6 = nl.addrs[(2, "10.77.0.10")], nl.addrs[(2, "fd77::10")]
    assert (a4["prefixlen"], a4["IFA_PROTO"], a4["flags"]) == (32, LBD_ADDR_PROTO, IFA_F_NOPREFIXROUTE)
    assert (a6["prefixlen"], a6["flags"]) == (128, IFA_F_NOPREFIXROUTE | IFA_F_NODAD)
    assert a4["valid_lft"] == 120
    garps = [arp.parse_arp(f) for f in sent if f[12:14] == b"\x08\x06"]
    assert [g.op for g in garps] == [1, 2, 1, 2, 1, 2]
    assert all(g.sender_ip == g.target_ip == V4 and g.eth_dst == b"\xff" * 6 for g in garps)
    nas = [ndp.parse_ndp(f) for f in sent if f[12:14] == b"\x86\xdd"]
    assert len(nas) == 3
    assert all(isinstance(n, ndp.NeighborAdvertisement) and n.override and not n.solicited and n.dst == ndp.ALL_NODES for n in nas)
    rows = {r["vip"]: r for r in ann.status()}
    assert rows["10.77.0.10"] == {
        "vip": "10.77.0.10", "interface": "eth0", "mode": "bind", "state": "announced", "since": 1000.0,
        "gratuitous_sent": 6, "last_error": None, "services": ["web"],
    }
    assert metrics.ANNOUNCED_VIPS._value.get() == 2  # noqa: SLF001
    await ann.close()


async def test_apply_is_idempotent_and_withdraws_what_is_no_longer_desired(sent: list[bytes]) -> None:
    nl = FakeNetlink()
    ann = make(nl)
    await ann.apply([intent(V4), intent(V6)])
    await settle()
    replaces, frames = nl.replaces(), len(sent)
    await ann.apply([intent(V4), intent(V6)])
    await settle()
    assert (nl.replaces(), len(sent)) == (replaces, frames)  # nothing redone, no second burst
    await ann.apply([intent(V6)])
    assert (2, "10.77.0.10") not in nl.addrs and (2, "fd77::10") in nl.addrs
    assert [r["vip"] for r in ann.status()] == ["fd77::10"]
    await ann.apply([])
    assert (2, "fd77::10") not in nl.addrs and ann.status() == []
    assert metrics.ANNOUNCED_VIPS._value.get() == 0  # noqa: SLF001
    await ann.close()


async def test_errors_are_per_vip_counted_and_retried(sent: list[bytes]) -> None:
    nl = FakeNetlink()
    nl.fail_next_add["10.77.0.10"] = 1
    ann = make(nl)
    errors = metrics.ERRORS._value.get()  # noqa: SLF001
    await ann.apply([intent(V4), intent(V6)])
    rows = {r["vip"]: r for r in ann.status()}
    assert rows["10.77.0.10"]["state"] == "error" and "95" in rows["10.77.0.10"]["last_error"]
    assert rows["fd77::10"]["state"] == "announced"  # the other VIP is unaffected
    assert metrics.ERRORS._value.get() == errors + 1  # noqa: SLF001
    await ann.apply([intent(V4), intent(V6)])  # the next apply retries
    assert {r["state"] for r in ann.status()} == {"announced"}
    assert ann.status()[0]["last_error"] is None
    await ann.close()


async def test_vip_that_does_not_fit_or_missing_interface_is_not_bound(sent: list[bytes]) -> None:
    nl = FakeNetlink()
    ann = make(nl)
    outside = ipaddress.ip_address("10.99.0.5")
    await ann.apply([intent(outside), intent(ipaddress.ip_address("10.77.0.11"), interface="eth9")])
    rows = {r["vip"]: r for r in ann.status()}
    assert rows["10.99.0.5"]["last_error"] == "10.99.0.5 does not fit any subnet of eth0 (10.77.0.0/24)"
    assert "eth9 is not present" in rows["10.77.0.11"]["last_error"]
    assert nl.replaces() == 0 and sent == []
    await ann.close()


def test_unknown_mode_is_refused_where_the_intent_is_made() -> None:
    # The mode is an enum (L2Mode): a bad word never reaches the announcer.
    with pytest.raises(ValueError, match="unknown mode 'bogus'"):
        intent(V4, mode="bogus")
    assert intent(V4, mode="responder").mode is L2Mode.RESPONDER


async def test_mode_change_moves_vip_from_address_to_responder(sent: list[bytes]) -> None:
    nl = FakeNetlink()
    ann = make(nl)
    await ann.apply([intent(V4)])
    await ann.apply([intent(V4, mode="responder")])
    assert (2, "10.77.0.10") not in nl.addrs
    (responder,) = FakeResponder.instances
    assert responder.vips_set == {V4}
    await ann.apply([])
    assert responder.closed  # the last VIP on the interface gone: the socket is closed
    await ann.close()


async def test_periodic_announcements_and_lifetime_refresh(sent: list[bytes]) -> None:
    nl = FakeNetlink()
    ann = make(nl, refresh_interval=0.01)
    await ann.apply([intent(V4, burst=1, interval=0.01)])
    await asyncio.sleep(0.2)
    assert len(sent) > 2 * 3  # the burst (2 frames), then a pair every 10 ms
    assert nl.replaces() > 3  # the address lifetime is renewed
    # Someone removed the address: the refresh puts it back.
    del nl.addrs[(2, "10.77.0.10")]
    await asyncio.sleep(0.1)
    assert (2, "10.77.0.10") in nl.addrs
    await ann.close()
    count = len(sent)
    await asyncio.sleep(0.05)
    assert len(sent) == count  # close stopped every timer
    assert (2, "10.77.0.10") not in nl.addrs


async def test_cleanup_stale_removes_only_lbd_marked_addresses_not_desired(sent: list[bytes]) -> None:
    nl = FakeNetlink()
    nl.add("10.77.0.12", 32, LBD_ADDR_PROTO)  # left behind by a crashed lbd
    nl.add("fd77::12", 128, LBD_ADDR_PROTO)
    nl.add("10.77.0.50", 32, None)  # someone else's
    ann = make(nl)
    await ann.apply([intent(V4)])
    assert await ann.cleanup_stale() == 2
    assert set(a for _, a in nl.addrs) == {"10.77.0.2", "fd77::2", "10.77.0.10", "10.77.0.50"}
    assert await ann.cleanup_stale() == 0
    await ann.close()


async def test_local_mode_binds_without_announcing(sent: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    nl = FakeNetlink()
    monkeypatch.setattr(announcer_mod.socket, "if_nametoindex", lambda name: 1 if name == "lo" else 2)
    ann = make(nl)
    await ann.apply([intent(ipaddress.ip_address("10.88.0.1"), mode="local", interface="lo")])
    await settle()
    assert (1, "10.88.0.1") in nl.addrs and sent == []
    assert ann.status()[0]["state"] == "announced"
    await ann.close()
    assert (1, "10.88.0.1") not in nl.addrs


async def test_failed_refresh_makes_the_next_apply_redo_the_takeover(sent: list[bytes]) -> None:
    nl = FakeNetlink()
    ann = make(nl, refresh_interval=0.01)
    await ann.apply([intent(V4, burst=1)])
    await settle()
    assert len(sent) == 2
    nl.fail_next_add["10.77.0.10"] = 1
    await asyncio.sleep(0.05)
    (row,) = ann.status()
    assert row["state"] == "error" and row["last_error"]
    await ann.apply([intent(V4, burst=1)])
    await settle()
    assert ann.status()[0]["state"] == "announced"
    assert len(sent) == 4  # a new takeover burst
    await ann.close()


async def test_reannounce_sends_a_new_burst_for_announced_vips_only(sent: list[bytes]) -> None:
    nl = FakeNetlink()
    ann = make(nl)
    await ann.apply([intent(V4), intent(V6, mode="local")])
    await settle()
    assert len([f for f in sent if f[12:14] == b"\x08\x06"]) == 6
    sent.clear()
    ann.reannounce([V4, V6, ipaddress.ip_address("10.77.0.99")])  # local and unknown VIPs are skipped
    await settle()
    assert [arp.parse_arp(f).op for f in sent] == [1, 2, 1, 2, 1, 2]
    await ann.close()


async def test_ten_thousand_vips_bind_in_one_pipelined_exchange_with_per_address_errors(
        sent: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """Binds and withdrawals are batched (not one netlink round trip per VIP), an error is
    reported for exactly the address it concerns, and info logs stay O(1) per pass."""
    from structlog.testing import capture_logs

    nl = FakeNetlink()
    monkeypatch.setattr(announcer_mod.socket, "if_nametoindex", lambda name: 1 if name == "lo" else 2)
    vips = [ipaddress.ip_address("10.88.0.0") + i for i in range(10_000)]
    nl.fail_next_add["10.88.1.7"] = 1
    ann = make(nl)
    with capture_logs() as logs:
        await ann.apply([intent(v, mode="local", interface="lo") for v in vips])
        await ann.close()
    assert nl.batches == [10_000, 10_000 - 1]  # one exchange to bind all, one to withdraw the bound
    failed = [e for e in logs if e["event"] == "vip_announce_failed"]
    assert [(e["vip"], "95" in e["error"]) for e in failed] == [("10.88.1.7", True)]
    info = [e for e in logs if e["log_level"] == "info"]
    assert len(info) <= 3, info
    takeover = next(e for e in info if e["event"] == "l2_takeover")
    assert takeover["announced"] == 9_999 and takeover["failed"] == 1 and len(takeover["first"]) == 5
    assert next(e for e in info if e["event"] == "l2_withdrawn")["withdrawn"] == 9_999
    assert sum(1 for e in logs if e["event"] == "vip_announced") == 9_999  # per VIP: debug
    assert all(key[0] != 1 for key in nl.addrs)


def test_address_request_wire_format_and_acks() -> None:
    import struct

    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    from lbd.kernel.netlink import AddrRequest, encode_addr_request, parse_acks

    data = encode_addr_request(AddrRequest("replace", 7, ipaddress.ip_address("10.88.0.9"), 32,
                                           IFA_F_NOPREFIXROUTE, LBD_ADDR_PROTO, 120), seq=42)
    msg = ifaddrmsg(data)
    msg.decode()
    assert msg["header"]["type"] == 20 and msg["header"]["sequence_number"] == 42
    assert (msg["index"], msg["prefixlen"], msg["family"]) == (7, 32, socket.AF_INET)
    assert msg.get_attr("IFA_LOCAL") == "10.88.0.9" and msg.get_attr("IFA_ADDRESS") == "10.88.0.9"
    assert msg.get_attr("IFA_FLAGS") == IFA_F_NOPREFIXROUTE and msg.get_attr("IFA_PROTO") == LBD_ADDR_PROTO
    assert msg.get_attr("IFA_CACHEINFO")["ifa_valid"] == 120
    deleted = ifaddrmsg(encode_addr_request(AddrRequest("del", 7, ipaddress.ip_address("fd77::9"), 128), seq=43))
    deleted.decode()
    assert deleted["header"]["type"] == 21 and deleted.get_attr("IFA_ADDRESS") == "fd77::9"
    # Two acks in one datagram: success for 42, EEXIST (-17) for 43; garbage after is ignored.
    ack = b"".join(struct.pack("=IHHIIi", 36, 2, 0, seq, 0, err) + b"\0" * 16 for seq, err in ((42, 0), (43, -17)))
    assert parse_acks(ack + b"\x01\x02") == [(42, 0), (43, 17)]
    with pytest.raises(ValueError):
        encode_addr_request(AddrRequest("move", 7, ipaddress.ip_address("10.88.0.9"), 32), seq=1)


async def test_takeover_rate_caps_the_first_packets(sent: list[bytes]) -> None:
    nl = FakeNetlink()
    ann = make(nl, announce_rate=1000, takeover_rate=20)
    vips = [ipaddress.ip_address(f"10.77.0.{100 + i}") for i in range(10)]
    await ann.apply([intent(v, burst=1) for v in vips])
    await asyncio.sleep(0.3)
    firsts = {arp.parse_arp(f).sender_ip for f in sent if f[12:14] == b"\x08\x06"}
    assert 3 <= len(firsts) <= 8  # ~1 + 0.3 s x 20/s of the 10
    ann.set_rate(1000, takeover_rate=10_000)  # raised: the rest go at once
    await asyncio.sleep(0.1)
    assert {arp.parse_arp(f).sender_ip for f in sent if f[12:14] == b"\x08\x06"} == set(vips)
    await ann.close()


async def test_announcements_are_paced_by_one_scheduler_under_the_rate_cap(sent: list[bytes]) -> None:
    nl = FakeNetlink()
    ann = make(nl, announce_rate=20)
    vips = [ipaddress.ip_address(f"10.77.0.{100 + i}") for i in range(10)]
    await ann.apply([intent(v, burst=3) for v in vips])
    await asyncio.sleep(0.3)
    pairs = [arp.parse_arp(f) for f in sent if f[12:14] == b"\x08\x06"][::2]  # one request+reply per announcement
    # Every VIP's first packet at once (takeover_rate, 10,000/s by default), before any repeat;
    # the repeats at ~1 + 0.3 s x 20/s: never the 30 of unpaced bursts.
    assert [p.sender_ip for p in pairs[:10]] == vips
    assert 10 + 3 <= len(pairs) <= 10 + 9
    await asyncio.sleep(0.4)
    await ann.apply([])  # withdrawal cancels what is still pending
    count = len(sent)
    await asyncio.sleep(0.2)
    assert len(sent) == count
    await ann.close()


async def test_takeovers_sent_waits_for_every_first_packet(sent: list[bytes]) -> None:
    nl = FakeNetlink()
    ann = make(nl, announce_rate=1000, takeover_rate=40)
    vips = [ipaddress.ip_address(f"10.77.0.{100 + i}") for i in range(10)]
    await ann.apply([intent(v, burst=1) for v in vips])
    assert not await ann.takeovers_sent(0.01)  # 40/s: not all ten within 10 ms
    assert await ann.takeovers_sent(5.0)
    assert {arp.parse_arp(f).sender_ip for f in sent if f[12:14] == b"\x08\x06"} == set(vips)
    await ann.close()
