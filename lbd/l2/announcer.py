"""The layer-2 announcer: makes this node answer for the VIPs it owns.

``apply(intents)`` is level-triggered: it diffs the desired ``L2Intent``s
against what is applied and converges. Per VIP and mode:

- ``bind``: the VIP is added to the interface (``binding``), so the kernel
  answers ARP/NS and accepts the traffic; lbd sends gratuitous ARP (request
  and reply) or an unsolicited NA on takeover and every
  ``announce_interval`` seconds;
- ``responder``: the VIP is not bound; a userspace responder answers ARP/NS
  for it (``responder``), with the same announcements;
- ``local``: bound (for BGP / route export), never announced at layer 2.

Addresses are added and removed in pipelined batches (``AddressBinder.bind_many``:
many netlink requests in flight, acks gathered), not one round trip per VIP.

Gratuitous ARP / unsolicited NA go through one scheduler task per announcer
(``lbd.l2.pacer.AnnounceScheduler``), not one asyncio task per VIP: the first
packet of each takeover paced under ``takeover_rate`` packets/s, the rest of
the bursts and the periodic repeats under ``announce_rate``.

Errors are per VIP: logged, counted, shown in ``status()`` and retried on the
next ``apply``; they never escape. Per-VIP lines are debug; info gets one
summary line per pass.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterable, Callable, Sequence

import structlog

from lbd.kernel.binding import DEFAULT_LIFETIME, AddressBinder
from lbd.kernel.interfaces import InterfaceInventory, holds, list_interfaces
from lbd.kernel.netlink import Netlink
from lbd.l2 import arp, metrics, ndp, rawsock
from lbd.l2.diff import diff_intents
from lbd.l2.frame import mac_to_bytes
from lbd.l2.pacer import DEFAULT_RATE, DEFAULT_TAKEOVER_RATE, AnnounceScheduler
from lbd.l2.responder import Responder
from lbd.model import IPAddress, L2Intent, L2Mode, LocalInterface

log = structlog.get_logger(__name__)

BURST_SPACING = 0.1  # seconds between the takeover packets
DEFAULT_REFRESH = 30.0  # address lifetime refresh; a quarter of the 120 s lifetime


@dataclass
class _Entry:
    intent: L2Intent
    since: float
    ifindex: int | None = None
    mac: bytes = b""
    bound: bool = False  # the address is on the interface (bind/local)
    responding: bool = False  # the responder answers for it
    ready: bool = False  # fully applied
    gratuitous_sent: int = 0
    last_error: str | None = None
    errors: int = 0
    # Built on the first announcement and kept (issue 9: the announce loop sends thousands a
    # second on a takeover, on the event loop): the frames for ``frames_mac``, the metric's child.
    frames: tuple[bytes, ...] = ()
    frames_mac: bytes = b""
    sent_counter: Any = None


class L2Announcer:
    def __init__(
        self,
        *,
        netlink: Netlink | None = None,
        address_lifetime: float = DEFAULT_LIFETIME,
        refresh_interval: float = DEFAULT_REFRESH,
        burst_spacing: float = BURST_SPACING,
        wall_clock: Callable[[], float] = time.time,
        announce_rate: float = DEFAULT_RATE,
        takeover_rate: float = DEFAULT_TAKEOVER_RATE,
        inventory: InterfaceInventory | None = None,
    ) -> None:
        self._nl = netlink
        self._shared_inventory = inventory  # the daemon's: no address dump of our own per apply
        self._own_nl = netlink is None
        self._lifetime = address_lifetime
        self._refresh_interval = refresh_interval
        self._burst_spacing = burst_spacing
        self._wall = wall_clock
        self._entries: dict[IPAddress, _Entry] = {}
        self._responders: dict[str, Responder] = {}
        self._senders: dict[str, socket.socket] = {}
        self._binder: AddressBinder | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._sched: AnnounceScheduler[IPAddress] = AnnounceScheduler(announce_rate, burst_spacing, takeover_rate)
        self._sched_task: asyncio.Task[None] | None = None
        self._sched_wake = asyncio.Event()

    # -- public API ---------------------------------------------------------

    async def apply(self, intents: Sequence[L2Intent]) -> None:
        async with self._lock:
            plan = diff_intents(self._entries, intents)
            for kept, dropped in plan.dropped:
                log.warning("l2_duplicate_intent", vip=str(kept.vip), kept=kept.interface, dropped=dropped.interface)
            await self._withdraw_many(list(plan.withdraw))
            for intent in plan.keep:
                entry = self._entries[intent.vip]
                old_interval = entry.intent.announce_interval
                entry.intent = intent  # burst/interval/services changes apply from now on
                if intent.mode.announced and (intent.announce_interval != old_interval or (
                        intent.announce_interval > 0 and not self._sched.active(intent.vip))):
                    # Periodic announcements changed (or were off and are now on): no new burst.
                    self._sched.set_interval(intent.vip, self._now(), intent.announce_interval)
                    self._kick()
            inventory: list[LocalInterface] | None = None
            pending: list[_Entry] = []
            for intent in plan.takeover:
                if inventory is None:
                    inventory = await self._inventory()
                entry = self._entries.get(intent.vip)
                if entry is None:
                    entry = self._entries[intent.vip] = _Entry(intent=intent, since=self._wall())
                entry.intent = intent
                pending.append(entry)
            if pending:
                assert inventory is not None
                await self._takeover_many(pending, inventory)
            self._update_gauge()
            self._ensure_refresh()

    def reannounce(self, vips: Iterable[IPAddress]) -> None:
        """Start the takeover burst again for these announced VIPs (then the periodic
        announcements go on as before): used when another node held them too, e.g. after a
        healed partition, so that neighbours that followed the other holder come back at once."""
        for vip in vips:
            entry = self._entries.get(vip)
            if entry is None or not entry.ready or not entry.intent.mode.announced:
                continue
            self._start_announcing(entry)

    async def takeovers_sent(self, timeout: float) -> bool:
        """Wait until the first announcement of every VIP taken over is out (at most ``timeout``
        seconds); whether it is. The daemon waits so before starting CPU-heavy work (a full
        re-decision in a worker thread takes the GIL from this loop, which sends them)."""
        deadline = self._now() + timeout
        while self._sched.takeovers_pending():
            if self._now() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    def set_rate(self, rate: float, takeover_rate: float | None = None) -> None:
        """The packets-per-second caps: of burst repeats and periodic announcements
        (``announce_rate``), and of the first packet of each takeover (``takeover_rate``)."""
        changed = rate != self._sched.rate
        if changed:
            self._sched.set_rate(rate)
        if takeover_rate is not None and takeover_rate != self._sched.takeover_rate:
            self._sched.set_takeover_rate(takeover_rate)
            changed = True
        if changed:
            self._kick()

    def status(self) -> list[dict[str, object]]:
        rows = []
        for vip, entry in sorted(self._entries.items(), key=lambda kv: (kv[0].version, kv[0])):
            rows.append(
                {
                    "vip": str(vip),
                    "interface": entry.intent.interface,
                    "mode": entry.intent.mode,
                    "state": "announced" if entry.ready else "error",
                    "since": entry.since,
                    "gratuitous_sent": entry.gratuitous_sent,
                    "last_error": entry.last_error,
                    "services": list(entry.intent.services),
                }
            )
        return rows

    async def close(self) -> None:
        """Withdraw everything lbd added: addresses, responders, timers."""
        async with self._lock:
            if self._sched_task is not None:
                self._sched_task.cancel()
                await asyncio.gather(self._sched_task, return_exceptions=True)
                self._sched_task = None
            if self._refresh_task is not None:
                self._refresh_task.cancel()
                await asyncio.gather(self._refresh_task, return_exceptions=True)
                self._refresh_task = None
            await self._withdraw_many(list(self._entries))
            for responder in self._responders.values():
                responder.close()
            self._responders.clear()
            for sock in self._senders.values():
                sock.close()
            self._senders.clear()
            self._update_gauge()
            if self._own_nl and self._nl is not None:
                await self._nl.aclose()
                self._nl = None
                self._binder = None

    async def cleanup_stale(self) -> int:
        """Remove lbd-marked addresses that no applied VIP accounts for (after a crash)."""
        async with self._lock:
            binder = await self._get_binder()
            keep = {(e.ifindex, vip) for vip, e in self._entries.items() if e.bound}
            removed = 0
            for marked in await binder.marked():
                if (marked.ifindex, marked.address) in keep:
                    continue
                try:
                    if await binder.remove(marked):
                        removed += 1
                        log.debug("stale_address_removed", vip=str(marked.address), ifindex=marked.ifindex)
                except Exception as exc:  # noqa: BLE001 - report, go on with the rest
                    metrics.ERRORS.inc()
                    log.warning("stale_address_remove_failed", vip=str(marked.address), error=str(exc))
            if removed:
                log.info("stale_addresses_removed", count=removed)
            return removed

    # -- takeover and withdraw ----------------------------------------------

    async def _takeover_many(self, entries: list[_Entry], inventory: list[LocalInterface]) -> None:
        """Take over many VIPs: locate each, bind all that need it in one pipelined
        netlink exchange (not one round trip per VIP), then start their announcements."""
        located: list[_Entry] = []
        for entry in entries:
            try:
                await self._locate(entry, inventory)
                located.append(entry)
            except Exception as exc:  # noqa: BLE001 - per-VIP errors never crash the daemon
                entry.ready = False
                self._fail(entry, "vip_announce_failed", exc)
        to_bind = [e for e in located if e.intent.mode in (L2Mode.BIND, L2Mode.LOCAL) and not e.bound]
        failed: set[int] = set()
        if to_bind:
            assert all(e.ifindex is not None for e in to_bind)
            try:
                results = await (await self._get_binder()).bind_many([(e.ifindex, e.intent.vip) for e in to_bind])  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - the whole exchange failed: every VIP in it
                results = [str(exc) or type(exc).__name__] * len(to_bind)
            for entry, error in zip(to_bind, results):
                if error is None:
                    entry.bound = True
                else:
                    entry.ready = False
                    failed.add(id(entry))
                    self._fail(entry, "vip_announce_failed", OSError(error))
        done: list[str] = []
        for entry in located:
            if id(entry) in failed:
                continue
            try:
                self._finish_takeover(entry)
                done.append(str(entry.intent.vip))
            except Exception as exc:  # noqa: BLE001
                entry.ready = False
                self._fail(entry, "vip_announce_failed", exc)
        if done or len(located) != len(entries) or failed:
            log.info("l2_takeover", announced=len(done), failed=len(entries) - len(done), first=done[:5])

    async def _locate(self, entry: _Entry, inventory: list[LocalInterface]) -> None:
        """The interface (index, MAC) ``entry`` goes on; raises when there is none fit for it."""
        intent = entry.intent
        vip, ifname = intent.vip, intent.interface
        if intent.mode is L2Mode.LOCAL:
            entry.ifindex = await self._ifindex(ifname)
        else:
            interface = next((i for i in inventory if i.name == ifname), None)
            if interface is None:
                raise LookupError(f"interface {ifname} is not present or not usable (down, loopback, NOARP or enslaved)")
            # Never announce where the VIP does not fit: nobody there would ask for it.
            if not any(holds(n, vip) for n in interface.networks):
                nets = ", ".join(str(n.network) for n in interface.networks if n.version == vip.version) or "none"
                raise LookupError(f"{vip} does not fit any subnet of {ifname} ({nets})")
            entry.ifindex = interface.index
            entry.mac = mac_to_bytes(interface.mac)

    def _finish_takeover(self, entry: _Entry) -> None:
        intent = entry.intent
        vip, ifname = intent.vip, intent.interface
        if intent.mode is L2Mode.RESPONDER and not entry.responding:
            self._responder(ifname, entry.ifindex, entry.mac).add(vip)
            entry.responding = True
        if intent.mode.announced and not self._sched.active(vip):
            self._start_announcing(entry)
        entry.ready = True
        entry.last_error = None
        entry.since = self._wall()
        log.debug("vip_announced", vip=str(vip), interface=ifname, mode=intent.mode, services=list(intent.services))

    async def _withdraw_many(self, vips: list[IPAddress]) -> None:
        """Withdraw many VIPs; their addresses go in one pipelined netlink exchange."""
        if not vips:
            return
        entries = [self._entries.pop(vip) for vip in vips]
        for vip in vips:
            self._sched.cancel(vip)  # pending announcements are never sent
        bound = [e for e in entries if e.bound and e.ifindex is not None]
        if bound:
            try:
                results = await (await self._get_binder()).unbind_many([(e.ifindex, e.intent.vip) for e in bound])  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - cleanup_stale or the lifetime gets them
                results = [str(exc) or type(exc).__name__] * len(bound)
            for entry, error in zip(bound, results):
                if error is not None:
                    self._fail(entry, "vip_unbind_failed", OSError(error))
        names = []
        for entry in entries:
            applied = entry.ready or entry.bound or entry.responding
            self._after_withdraw(entry, applied)
            if applied:
                names.append(str(entry.intent.vip))
        if names:
            log.info("l2_withdrawn", withdrawn=len(names), first=names[:5])

    def _after_withdraw(self, entry: _Entry, applied: bool) -> None:
        vip = entry.intent.vip
        ifname = entry.intent.interface
        self._stop_responding(entry)
        if not any(e.intent.interface == ifname for e in self._entries.values()):
            sock = self._senders.pop(ifname, None)
            if sock is not None:
                sock.close()
        # Like MetalLB, nothing is sent on losing ownership: the new owner's
        # announcements replace the neighbours' entries.
        if applied:
            log.debug("vip_withdrawn", vip=str(vip), interface=ifname, mode=entry.intent.mode)

    def _stop_responding(self, entry: _Entry) -> None:
        """The responder no longer answers for the VIP; the last one out closes it."""
        if not entry.responding:
            return
        ifname = entry.intent.interface
        responder = self._responders.get(ifname)
        if responder is not None:
            responder.remove(entry.intent.vip)
            if responder.vips == 0:
                responder.close()
                del self._responders[ifname]
        entry.responding = False

    def _fail(self, entry: _Entry, event: str, exc: BaseException) -> None:
        entry.errors += 1
        entry.last_error = str(exc) or type(exc).__name__
        metrics.ERRORS.inc()
        if self._shared_inventory is not None:
            self._shared_inventory.invalidate()  # the interface may be gone: read afresh next time
        log.warning(event, vip=str(entry.intent.vip), interface=entry.intent.interface, mode=entry.intent.mode, error=entry.last_error)

    # -- announcements ------------------------------------------------------

    def _frames(self, entry: _Entry) -> list[bytes]:
        vip = entry.intent.vip
        if isinstance(vip, ipaddress.IPv4Address):
            return [arp.build_gratuitous(entry.mac, vip, arp.OP_REQUEST), arp.build_gratuitous(entry.mac, vip, arp.OP_REPLY)]
        return [ndp.build_unsolicited_na(entry.mac, vip)]

    def _send_announcement(self, entry: _Entry) -> None:
        ifname = entry.intent.interface
        try:
            sock = self._senders.get(ifname)
            if sock is None:
                sock = self._senders[ifname] = rawsock.open_sender(ifname)
            if not entry.frames or entry.frames_mac != entry.mac:
                entry.frames, entry.frames_mac = tuple(self._frames(entry)), entry.mac
                entry.sent_counter = metrics.GRATUITOUS_SENT.labels(vip=str(entry.intent.vip), interface=ifname)
            frames = entry.frames
            for frame in frames:
                sock.send(frame)
            entry.gratuitous_sent += len(frames)
            entry.sent_counter.inc(len(frames))
        except OSError as exc:
            self._fail(entry, "gratuitous_send_failed", exc)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _start_announcing(self, entry: _Entry) -> None:
        """The takeover burst (first packet ahead of periodic repeats), then one
        announcement every ``announce_interval`` (0: none)."""
        intent = entry.intent
        self._sched.schedule(intent.vip, self._now(), max(1, intent.announce_burst), intent.announce_interval)
        self._kick()

    def _kick(self) -> None:
        self._sched_wake.set()
        if self._sched_task is None or self._sched_task.done():
            self._sched_task = asyncio.create_task(self._announce_loop(), name="l2-announce")

    async def _announce_loop(self) -> None:
        """The one task that sends every VIP's announcements, as the scheduler paces them.

        It sleeps on one event, set by a new schedule (``_kick``) or by a timer at the
        scheduler's next wake (``call_at``: no task per wake, as ``wait_for`` would make)."""
        loop = asyncio.get_running_loop()
        while True:
            now = self._now()
            for vip in self._sched.poll(now):
                entry = self._entries.get(vip)
                if entry is not None and entry.ready:
                    self._send_announcement(entry)
            wake = self._sched.next_wake(now)
            self._sched_wake.clear()
            timer = loop.call_at(wake, self._sched_wake.set) if wake is not None else None
            try:
                await self._sched_wake.wait()
            finally:
                if timer is not None:
                    timer.cancel()

    # -- address lifetime refresh ---------------------------------------------

    def _ensure_refresh(self) -> None:
        if self._refresh_task is None and any(e.bound or e.responding for e in self._entries.values()):
            self._refresh_task = asyncio.create_task(self._refresh_loop(), name="l2-address-refresh")

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            async with self._lock:
                await self._refresh_once()

    async def _refresh_once(self) -> None:
        """Renew every bound address's lifetime (and re-add one someone removed), and check
        that every responder VIP's interface is still the link it was taken over on."""
        binder = await self._get_binder()
        await self._check_responding()
        bound = [e for e in self._entries.values() if e.bound and e.ifindex is not None]
        try:
            results = await binder.bind_many([(e.ifindex, e.intent.vip) for e in bound])  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001
            results = [str(exc) or type(exc).__name__] * len(bound)
        for entry, error in zip(bound, results):
            if error is not None:
                # Typically the interface went away (ENODEV). Forget what was
                # applied so the next apply() redoes the whole takeover
                # (interface lookup, bind, burst) instead of trusting state.
                self._fail(entry, "vip_refresh_failed", OSError(error))
                entry.ready = entry.bound = False
                self._sched.cancel(entry.intent.vip)
                self._update_gauge()

    async def _check_responding(self) -> None:
        """A responder VIP has no address whose refresh would fail when its interface goes:
        the responder would go on listening on a link that is gone (or, after a flap, on the
        old index of a link that came back), the VIP shown announced and answered by nobody,
        and no pass would retake it. Forget it instead, so the next apply() redoes the takeover
        (the inventory read is the shared, notification-kept one: no dump per refresh)."""
        responding = [e for e in self._entries.values() if e.responding]
        if not responding:
            return
        try:
            await self._get_binder()
            interfaces = await (self._shared_inventory.get() if self._shared_inventory is not None
                                else list_interfaces(self._nl))
        except Exception as exc:  # noqa: BLE001 - unknown is not gone: check at the next refresh
            metrics.ERRORS.inc()
            log.warning("interface_inventory_failed", error=str(exc))
            return
        links = {i.name: i.index for i in interfaces}
        for entry in responding:
            if links.get(entry.intent.interface) == entry.ifindex:
                continue
            self._stop_responding(entry)
            entry.ready = False
            self._sched.cancel(entry.intent.vip)
            self._fail(entry, "vip_refresh_failed", LookupError(f"interface {entry.intent.interface} is gone or was replaced"))
        self._update_gauge()

    # -- plumbing -------------------------------------------------------------

    async def _get_binder(self) -> AddressBinder:
        if self._binder is None:
            if self._nl is None:
                self._nl = Netlink()
            self._binder = AddressBinder(self._nl, lifetime=self._lifetime)
        return self._binder

    async def _inventory(self) -> list[LocalInterface]:
        await self._get_binder()
        try:
            if self._shared_inventory is not None:
                return await self._shared_inventory.get()
            return await list_interfaces(self._nl)
        except Exception as exc:  # noqa: BLE001 - every VIP then fails with this reason
            metrics.ERRORS.inc()
            log.warning("interface_inventory_failed", error=str(exc))
            return []

    async def _ifindex(self, ifname: str) -> int:
        index = socket.if_nametoindex(ifname)  # OSError when absent
        return index

    def _responder(self, ifname: str, ifindex: int | None, mac: bytes) -> Responder:
        responder = self._responders.get(ifname)
        if responder is None:
            assert ifindex is not None
            responder = self._responders[ifname] = Responder(ifname, ifindex, mac)
        return responder

    def _update_gauge(self) -> None:
        metrics.ANNOUNCED_VIPS.set(sum(1 for e in self._entries.values() if e.ready and e.intent.mode.announced))
