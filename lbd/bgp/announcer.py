"""The BGP announcer: one :class:`~lbd.bgp.speaker.PeerSpeaker` per configured
peer, fed level-triggered from the planner's :class:`~lbd.model.BgpRoute` list.

``set_peers`` starts new sessions, stops removed ones (Cease / Peer
De-configured) and restarts changed ones; ``apply`` sets each peer's desired
Adj-RIB-Out from ``BgpRoute.peers`` (the FSM sends only the differences).
It listens for incoming BGP connections only while some peer is ``passive``.
The caller passes only the peers whose node selector matches this node.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from itertools import compress, count
from operator import is_not
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import structlog

from lbd.bgp import netutil
from lbd.bgp.events import (
    EndOfRibSent,
    Event,
    NotificationReceived,
    NotificationSent,
    State,
    UpdateReceived,
    UpdatesSent,
)
from lbd.bgp.metrics import ANNOUNCED, NOTIFICATIONS_RECEIVED, NOTIFICATIONS_SENT, SESSION_UP, UPDATES_RECEIVED, UPDATES_SENT
from lbd.bgp.packing import RouteAttrs
from lbd.bgp.settings import SessionSettings
from lbd.bgp.speaker import Listener, PeerEndpoint, PeerSpeaker
from lbd.config.schema import BfdProfileConfig, BgpPeerConfig
from lbd.model import BgpRoute, IPAddress, IPNetwork
from lbd.selectors import matches

log = structlog.get_logger(__name__)

ObserverCallback = Callable[[str, Event], None]
ACK_WAIT = 1.0  # graceful stop: longest wait for the router's TCP to acknowledge the withdrawal
ADMIN_DOWN_WAIT = 0.5  # graceful stop: longest wait for the BFD thread to send AdminDown


def stop_linger_left(linger: float, withdrawn_routes: int, acked_at: float, now: float) -> float:
    """How much longer a graceful stop keeps its VIPs accepting after the withdrawal.

    A router acknowledges the withdrawing UPDATE (its TCP ACK, what :meth:`BgpAnnouncer.close`
    waits for) before BGP has run its decision process and before the new route reaches its
    forwarding table (in bench/bgp_failover.py the route left the router's kernel table
    0.5-31 ms after SIGTERM; a hardware FIB takes longer). Until then connections still
    arrive hashed to this node, and a VIP removed meanwhile drops them (issue 11). So the
    VIPs stay ``linger`` seconds past the acknowledgement (``acked_at``, monotonic); the time
    spent meanwhile (leaving the cluster) counts. Nothing withdrawn (no established session
    had routes): no router is sending us VIP traffic because of BGP, nothing to wait for."""
    if withdrawn_routes <= 0 or linger <= 0:
        return 0.0
    return max(0.0, min(linger, acked_at + linger - now))


# -- the configuration adapter ----------------------------------------------
# The one place a configured peer becomes plain values: SessionSettings for the
# FSM, PeerEndpoint for the asyncio speaker. Nothing else in lbd.bgp reads a
# BgpPeerConfig (tests/unit/test_bgp_core_imports.py holds the core to it).


def session_settings(peer: BgpPeerConfig, router_id: ipaddress.IPv4Address) -> SessionSettings:
    """What the session FSM runs with. ``router_id``: the node's, used unless
    the peer sets its own."""
    return SessionSettings(
        local_as=peer.local_asn if peer.local_asn is not None else peer.my_asn,
        router_id=peer.router_id or router_id,
        peer_as=peer.peer_asn,
        dynamic_asn=peer.dynamic_asn,
        hold_time=int(peer.hold_time),
        keepalive_time=peer.keepalive_time,
        connect_time=peer.connect_time,
        passive=peer.passive,
        graceful_restart=peer.graceful_restart,
        graceful_restart_time=peer.graceful_restart_time,
    )


def peer_endpoint(peer: BgpPeerConfig) -> PeerEndpoint:
    """How the speaker reaches the peer: address, port, source, TTL, TCP MD5."""
    return PeerEndpoint(
        name=peer.name,
        address=peer.peer_address,
        port=peer.peer_port,
        source_address=peer.source_address,
        ttl=peer_ttl(peer),
        password=lambda: peer_password(peer),
    )


def peer_password(peer: BgpPeerConfig) -> bytes | None:
    """The MD5 password, ``password_file`` read now (so a rotated secret is picked up)."""
    if peer.password_file is not None:
        text = Path(peer.password_file).read_text().strip()
        return text.encode() if text else None
    if peer.password:
        return peer.password.encode()
    return None


def is_ibgp_config(peer: BgpPeerConfig) -> bool:
    local = peer.local_asn if peer.local_asn is not None else peer.my_asn
    if peer.peer_asn is not None:
        return peer.peer_asn == local
    return peer.dynamic_asn == "internal"


def peer_ttl(peer: BgpPeerConfig) -> int:
    """TTL for the session: 255 on iBGP, ``ebgp_multihop`` or 1 (directly connected) on eBGP."""
    if is_ibgp_config(peer):
        return 255
    return max(1, min(255, peer.ebgp_multihop or 1))


def route_window(old: Sequence[object], new: Sequence[object]) -> tuple[int, int, int]:
    """``(head, old_end, new_end)``: ``old[:head]`` and ``new[:head]`` are the same objects,
    and so are ``old[old_end:]`` and ``new[new_end:]``; found at C speed."""
    short = min(len(old), len(new))
    head = next(compress(count(), map(is_not, old, new)), short)
    tail = min(next(compress(count(), map(is_not, reversed(old), reversed(new))), short), short - head)
    return head, len(old) - tail, len(new) - tail


class BgpAnnouncer:
    def __init__(
        self,
        node_name: str,
        *,
        listen_port: int = 179,
        listen_addresses: Sequence[str] = ("0.0.0.0", "::"),
        restarting: bool = False,
        on_event: ObserverCallback | None = None,
        node_labels: Mapping[str, str] | None = None,
    ) -> None:
        """``restarting``: this process follows a graceful stop, so the first
        sessions set the Restart State bit (RFC 4724 §4.1). ``node_labels``:
        when given, ``set_peers`` keeps only peers whose ``node_selector``
        matches them (every key equal); otherwise the caller filters."""
        self.node_name = node_name
        self.node_labels = dict(node_labels) if node_labels is not None else None
        self.listen_port = listen_port
        self.listen_addresses = tuple(listen_addresses)
        self._restarting = restarting
        self._on_event = on_event
        self._peers: dict[str, BgpPeerConfig] = {}
        self._speakers: dict[str, PeerSpeaker] = {}
        self._tables: dict[str, dict[IPNetwork, RouteAttrs]] = {}
        self._routes: tuple[BgpRoute, ...] | None = None  # the last table apply() was given
        self._interned: dict[tuple[object, ...], RouteAttrs] = {}
        self._applied = False  # apply() was called: tables are the first complete plan
        self._listeners: list[Listener] = []
        self._lock = asyncio.Lock()
        self._bfd: Any = None  # lbd.bfd.manager.BfdManager, once a peer names a bfd_profile
        self._bfd_options: dict[str, object] = {}  # BfdEngine options (tests: other ports)
        self._closing = False  # withdraw_all() was called: no more routes are announced
        self.withdrawn_routes = 0  # routes withdraw_all() took back from established sessions (the stop's linger)
        self._admin_down: asyncio.Future[object] | None = None

    # ----------------------------------------------------------------- public

    async def set_peers(self, peers: Sequence[BgpPeerConfig], bfd_profiles: Sequence[BfdProfileConfig] = ()) -> None:
        async with self._lock:
            if self._closing:
                return
            labels = self.node_labels
            if labels is not None:
                peers = [p for p in peers if matches(p.node_selector, labels)]
            wanted = {p.name: p for p in peers}
            for name in [n for n in self._peers if n not in wanted or wanted[n] != self._peers[n]]:
                await self._stop_peer(name, graceful=False)
            new = [peer for name, peer in wanted.items() if name not in self._speakers]
            if new:
                addrs = await netutil.scan_addresses_async()
                for peer in new:
                    router_id = netutil.choose_router_id(peer.router_id, peer.source_address, self.node_name, addrs)
                    self._start_peer(peer, router_id, addrs)
            await self._configure_listeners()
            await self._configure_bfd(list(wanted.values()), {p.name: p for p in bfd_profiles})

    def apply(self, routes: Iterable[BgpRoute]) -> None:
        """Announce ``routes`` (the plan's table, in its order) and nothing else.

        Between two plans the table is mostly the very same route objects (the planner keeps
        an unchanged VIP's route): the routes that differ are found by identity at C speed
        and only those go to the sessions, whose Adj-RIB-Out then diffs those prefixes alone
        (issue 9: one change with 100,000 routes walked every route in Python, twice)."""
        if self._closing:
            return  # stopping: the withdrawal stands
        routes = tuple(routes)
        previous, self._routes = self._routes, routes
        if previous is not None and self._applied and self._apply_window(previous, routes):
            return
        tables: dict[str, dict[IPNetwork, RouteAttrs]] = {}
        # One shared RouteAttrs object per attribute set lets the packer group
        # by identity (see UpdatePacker.announce).
        self._interned = {}
        for route in routes:
            attrs = self._attrs(route)
            for name in route.peers:
                tables.setdefault(name, {})[route.prefix] = attrs
        self._tables = tables
        self._applied = True
        for name, speaker in self._speakers.items():
            speaker.set_routes(tables.get(name, {}))
            self._update_announced(name)

    def _attrs(self, route: BgpRoute) -> RouteAttrs:
        key = (route.communities, route.large_communities, route.local_pref)
        attrs = self._interned.get(key)
        if attrs is None:
            attrs = self._interned[key] = RouteAttrs.of(route)
        return attrs

    def _apply_window(self, previous: tuple[BgpRoute, ...], routes: tuple[BgpRoute, ...]) -> bool:
        """Apply the routes between the common head and tail of ``previous`` and ``routes``
        (same objects, same places); False when that window is large (a full apply is as quick)."""
        head, old_end, new_end = route_window(previous, routes)
        if (old_end - head) + (new_end - head) > max(64, len(routes) // 8):
            return False
        # Routes of one prefix are adjacent in the table (ordered by prefix, then attributes), and
        # a peer's table keeps the last of them: widen the window over every route of its prefixes.
        prefixes = {r.prefix for r in previous[head:old_end]} | {r.prefix for r in routes[head:new_end]}
        while head > 0 and routes[head - 1].prefix in prefixes:
            head -= 1
        while new_end < len(routes) and routes[new_end].prefix in prefixes:
            new_end += 1
            old_end += 1
        changes: dict[str, dict[IPNetwork, RouteAttrs | None]] = {}
        for route in previous[head:old_end]:
            for name in route.peers:
                changes.setdefault(name, {})[route.prefix] = None
        for route in routes[head:new_end]:
            attrs = self._attrs(route)
            for name in route.peers:
                changes.setdefault(name, {})[route.prefix] = attrs
        for name, change in changes.items():
            table = self._tables.setdefault(name, {})
            for prefix, attrs in list(change.items()):
                before = table.get(prefix)
                if before is attrs or (before is not None and attrs is not None and before == attrs):
                    del change[prefix]  # the same route again (a new object, equal)
                elif attrs is None:
                    del table[prefix]
                else:
                    table[prefix] = attrs
            speaker = self._speakers.get(name)
            if speaker is not None and change:
                speaker.update_routes(change)
                self._update_announced(name)
        return True

    def withdraw_all(self) -> None:
        """The first step of a graceful stop, synchronous so that it runs in
        the signal handler before anything else: an UPDATE withdrawing every
        route to every peer, then BFD AdminDown (started; :meth:`close` waits
        for it). From now on ``apply`` announces nothing."""
        if self._closing:
            return
        self._closing = True
        self.withdrawn_routes = sum(len(s.session.advertised) for s in self._speakers.values()
                                    if s.session.state == State.ESTABLISHED)
        for speaker in self._speakers.values():
            speaker.withdraw_all()
        for name in self._speakers:
            self._update_announced(name)
        if self._bfd is not None:
            self._admin_down = self._bfd.admin_down()
        log.info("bgp_withdrawn_all", peers=len(self._speakers))

    async def close(self, graceful_restart: bool = False) -> None:
        """Stop every session: Cease, or (``graceful_restart``) silently where
        graceful restart was negotiated, so routers keep the routes.

        A stop that is not for a restart goes in this order: UPDATE withdrawing
        every route, BFD AdminDown (so the router does not count a failure,
        RFC 5882 §3.2), Cease, and returns once each router's TCP has
        acknowledged all of it (bounded by ``ACK_WAIT``): only then may the
        caller remove the VIPs, so no connection lands on a node that no
        longer accepts it. For a restart: BFD AdminDown, then the silent close
        (the router keeps the routes as stale, RFC 4724)."""
        async with self._lock:
            if not graceful_restart:
                self.withdraw_all()
            elif self._bfd is not None and self._admin_down is None:
                self._admin_down = self._bfd.admin_down()
            if self._admin_down is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(self._admin_down), ADMIN_DOWN_WAIT)
                except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the stop goes on
                    log.warning("bfd_admin_down_not_confirmed")
            drain = 0.0 if graceful_restart else ACK_WAIT
            await asyncio.gather(*(self._stop_peer(n, graceful=graceful_restart, drain=drain)
                                   for n in list(self._speakers)))
            for listener in self._listeners:
                await listener.close()
            self._listeners = []
            if self._bfd is not None:
                await self._bfd.close()
                self._bfd = None

    def bfd_status(self) -> list[dict[str, object]]:
        """Per BFD session (``lbd-ctl bfd``): peer, state, discriminators, intervals, last down, flaps."""
        if self._bfd is None:
            return []
        rows = []
        for name, row in sorted(self._bfd.status().items()):
            peer = self._peers.get(name)
            rows.append({"peer": name, "profile": peer.bfd_profile if peer else None, **row})
        return rows

    def status(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        bfd = self._bfd.status() if self._bfd is not None else {}
        for name, speaker in self._speakers.items():
            s = speaker.session
            neg = s.negotiated if s.state == State.ESTABLISHED else None
            st = s.stats
            peer = self._peers[name]
            out.append(
                {
                    "name": name,
                    "address": str(peer.peer_address),
                    "port": peer.peer_port,
                    "state": s.state.value,
                    "uptime": round(s.uptime(speaker.now()), 1),
                    "local_address": str(s.local_address) if s.local_address else None,
                    "router_id": str(speaker.router_id),
                    "peer_as": neg.peer_as if neg else peer.peer_asn,
                    "peer_router_id": str(neg.peer_router_id) if neg else None,
                    "capabilities": neg.capabilities() if neg else [],
                    "hold_time": neg.hold_time if neg else None,
                    "keepalive_time": neg.keepalive_time if neg else None,
                    "prefixes_announced": len(s.advertised) if neg else 0,
                    "prefixes_desired": len(s.desired),
                    "updates_sent": st.updates_sent,
                    "updates_received": st.updates_received,
                    "notifications_sent": st.notifications_sent,
                    "notifications_received": st.notifications_received,
                    "established_transitions": st.established_transitions,
                    "last_error": st.last_error,
                    "bfd": bfd[name]["state"] if name in bfd else None,
                }
            )
        return out

    # -------------------------------------------------------------- internals

    def _start_peer(self, peer: BgpPeerConfig, router_id: ipaddress.IPv4Address, addrs: netutil.Addresses) -> None:
        if peer.vrf:
            log.warning("bgp_option_unsupported", peer=peer.name, option="vrf", value=str(peer.vrf))
        speaker = PeerSpeaker(
            peer_endpoint(peer),
            settings=session_settings(peer, router_id),
            restarting=self._restarting,
            on_event=self._event,
            addresses=addrs,
        )
        self._peers[peer.name] = peer
        self._speakers[peer.name] = speaker
        SESSION_UP.labels(peer=peer.name).set(0)
        ANNOUNCED.labels(peer=peer.name).set(0)
        if self._applied:
            # Before the first apply() the table is unknown: sessions that come
            # up wait for it before sending routes and End-of-RIB (see Session.set_routes).
            speaker.set_routes(self._tables.get(peer.name, {}))
        speaker.start()
        log.info("bgp_peer_started", peer=peer.name, address=str(peer.peer_address), passive=peer.passive)

    async def _stop_peer(self, name: str, graceful: bool, drain: float = 0.0) -> None:
        speaker = self._speakers.pop(name, None)
        self._peers.pop(name, None)
        if speaker is None:
            return
        await speaker.stop(graceful=graceful, drain=drain)
        for metric in (SESSION_UP, ANNOUNCED):
            try:
                metric.remove(name)
            except KeyError:
                pass
        log.info("bgp_peer_stopped", peer=name, graceful=graceful)

    async def _configure_bfd(self, peers: list[BgpPeerConfig], profiles: dict[str, BfdProfileConfig]) -> None:
        """A BFD session for each peer that names a profile (RFC 5882 client)."""
        if self._bfd is None and not any(p.bfd_profile for p in peers):
            return
        if self._bfd is None:
            from lbd.bfd.manager import BfdManager

            self._bfd = BfdManager(self._bfd_event, **self._bfd_options)
        await self._bfd.set_peers(peers, profiles)

    def _bfd_event(self, name: str, event: Any) -> None:
        """RFC 5882 §3.2: BFD going from Up to Down (not the peer's AdminDown)
        takes the BGP session down; it comes back through the normal FSM."""
        speaker = self._speakers.get(name)
        if speaker is None or self._closing:
            return
        if event.failure:
            log.warning("bgp_bfd_down", peer=name, diag=event.diag.label, bgp_state=speaker.session.state.value)
            speaker.bfd_down()

    async def _configure_listeners(self) -> None:
        """Listen only while a peer is passive (never on 179 otherwise)."""
        passive = any(p.passive for p in self._peers.values())
        if not passive:
            for listener in self._listeners:
                await listener.close()
            self._listeners = []
            return
        if not self._listeners:
            for address in self.listen_addresses:
                listener = Listener(address, self.listen_port, self._dispatch)
                try:
                    listener.start()
                except OSError as exc:
                    log.warning("bgp_listen_failed", address=address, port=self.listen_port, error=str(exc))
                    continue
                self._listeners.append(listener)
        keys: dict[IPAddress, bytes] = {}
        for peer in self._peers.values():
            try:
                key = peer_password(peer)
            except OSError as exc:
                log.warning("bgp_password_file_unreadable", peer=peer.name, error=str(exc))
                continue
            if key:
                keys[peer.peer_address] = key
        for listener in self._listeners:
            try:
                listener.set_keys(keys)
            except OSError as exc:
                log.warning("bgp_md5_listen_failed", error=str(exc))

    def _dispatch(self, remote: IPAddress, sock: socket.socket) -> bool:
        if isinstance(remote, ipaddress.IPv6Address) and remote.ipv4_mapped is not None:
            remote = remote.ipv4_mapped
        for speaker in self._speakers.values():
            if speaker.endpoint.address == remote:
                speaker.accept(sock)
                return True
        return False

    def _update_announced(self, name: str) -> None:
        speaker = self._speakers.get(name)
        if speaker is None:
            return
        s = speaker.session
        ANNOUNCED.labels(peer=name).set(len(s.advertised) if s.state == State.ESTABLISHED else 0)

    def _event(self, speaker: PeerSpeaker, event: Event) -> None:
        name = speaker.endpoint.name
        if isinstance(event, UpdatesSent):
            UPDATES_SENT.labels(peer=name).inc(event.messages)
        elif isinstance(event, EndOfRibSent):
            UPDATES_SENT.labels(peer=name).inc(1)
        elif isinstance(event, UpdateReceived):
            UPDATES_RECEIVED.labels(peer=name).inc()
        elif isinstance(event, NotificationSent):
            NOTIFICATIONS_SENT.labels(peer=name).inc()
        elif isinstance(event, NotificationReceived):
            NOTIFICATIONS_RECEIVED.labels(peer=name).inc()
        if self._speakers.get(name) is not speaker:
            return  # a stopped speaker's last words: its gauges are gone
        SESSION_UP.labels(peer=name).set(1 if speaker.session.state == State.ESTABLISHED else 0)
        self._update_announced(name)
        if self._on_event is not None:
            self._on_event(name, event)
