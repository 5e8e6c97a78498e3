"""What the BGP announcer uses: BFD sessions for the peers that name a
``bfd_profile``, level-triggered, with state changes delivered on the loop."""

from __future__ import annotations

import asyncio
from typing import Callable, Mapping, Sequence

import structlog

from lbd.bfd.auth import AUTH_TYPES, AuthConfig, BfdAuthError, read_key
from lbd.bfd.session import SessionConfig, StateChanged
from lbd.bfd.process import BfdProcess
from lbd.bfd.transport import Endpoint
from lbd.config.schema import BfdProfileConfig, BgpPeerConfig

log = structlog.get_logger(__name__)


def is_multihop(peer: BgpPeerConfig) -> bool:
    """RFC 5883 for peers more than one hop away: ``ebgp_multihop`` above 1."""
    return peer.ebgp_multihop is not None and peer.ebgp_multihop > 1


def session_config(profile: BfdProfileConfig) -> SessionConfig:
    """A profile (milliseconds) as the session's parameters (microseconds).
    Reads the key file (OSError / BfdAuthError when it cannot)."""
    auth = None
    if profile.auth_type is not None and profile.auth_key_file is not None:
        auth = AuthConfig(AUTH_TYPES[profile.auth_type], profile.auth_key_id, read_key(profile.auth_key_file))
    return SessionConfig(
        desired_min_tx=profile.transmit_interval * 1000,
        required_min_rx=profile.receive_interval * 1000,
        detect_mult=profile.detect_multiplier,
        passive=profile.passive_mode,
        auth=auth,
    )


def endpoint(peer: BgpPeerConfig, profile: BfdProfileConfig) -> Endpoint:
    return Endpoint(peer.peer_address, peer.source_address, is_multihop(peer), profile.minimum_ttl)


class BfdManager:
    """One engine (in its own process, see lbd.bfd.process) for every BFD session of the daemon."""

    def __init__(self, on_change: Callable[[str, StateChanged], None], **engine_options: object) -> None:
        self.loop = asyncio.get_running_loop()
        self._on_change = on_change
        self._options = engine_options
        self._closed = False
        self.restarts = 0
        self.engine = BfdProcess(self._from_thread, self._exited, **engine_options)
        self._wanted: dict[str, tuple[Endpoint, SessionConfig]] = {}

    def _from_thread(self, key: str, event: StateChanged) -> None:
        try:
            self.loop.call_soon_threadsafe(self._on_change, key, event)
        except RuntimeError:  # the loop is closed: the daemon is gone
            pass

    def _exited(self) -> None:
        """The BFD process died (not a stop we asked for): start a new one with
        the same sessions. Meanwhile the routers saw BFD fail, as they should."""
        try:
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._restart()))
        except RuntimeError:
            pass

    async def _restart(self) -> None:
        if self._closed:
            return
        self.restarts += 1
        log.warning("bfd_process_restarting", restarts=self.restarts)
        await asyncio.sleep(min(30.0, 0.5 * self.restarts))  # no tight loop if it keeps dying
        if self._closed:
            return
        self.engine = BfdProcess(self._from_thread, self._exited, **self._options)
        wanted, self._wanted = self._wanted, {}
        for key, (ep, config) in wanted.items():
            try:
                await asyncio.wrap_future(self.engine.configure(key, ep, config))
                self._wanted[key] = (ep, config)
            except (OSError, RuntimeError) as exc:
                log.error("bfd_configure_failed", peer=key, error=str(exc))

    async def set_peers(self, peers: Sequence[BgpPeerConfig], profiles: Mapping[str, BfdProfileConfig]) -> None:
        wanted: dict[str, tuple[Endpoint, SessionConfig]] = {}
        for peer in peers:
            profile = profiles.get(peer.bfd_profile) if peer.bfd_profile else None
            if profile is None:
                if peer.bfd_profile:
                    log.warning("bfd_profile_missing", peer=peer.name, profile=peer.bfd_profile)
                continue
            try:
                wanted[peer.name] = (endpoint(peer, profile), session_config(profile))
            except (OSError, BfdAuthError) as exc:
                log.error("bfd_key_unusable", peer=peer.name, profile=profile.name, error=str(exc))
        current = dict(self._wanted)
        for key in [k for k in current if k not in wanted]:
            try:
                await asyncio.wrap_future(self.engine.remove(key))
            except (OSError, RuntimeError) as exc:
                log.warning("bfd_remove_failed", peer=key, error=str(exc))
            current.pop(key, None)
        for key, (ep, config) in wanted.items():
            if current.get(key) != (ep, config):
                try:
                    await asyncio.wrap_future(self.engine.configure(key, ep, config))
                except (OSError, RuntimeError) as exc:
                    log.error("bfd_configure_failed", peer=key, error=str(exc))
                    continue  # retried at the next set_peers
                current[key] = (ep, config)
        self._wanted = current

    def peers(self) -> set[str]:
        return set(self._wanted)

    def admin_down(self) -> "asyncio.Future[object]":
        """Every session to AdminDown; done once the packets are on the wire."""
        return asyncio.wrap_future(self.engine.admin_down())

    def status(self) -> dict[str, dict[str, object]]:
        """The engine's latest status (refreshed after every change and every second)."""
        return self.engine.cached_snapshot()

    async def close(self) -> None:
        """AdminDown and remove every session, then end the BFD process."""
        self._closed = True
        for key in list(self._wanted):
            try:
                await asyncio.wait_for(asyncio.wrap_future(self.engine.remove(key)), 2.0)
            except (OSError, RuntimeError, asyncio.TimeoutError) as exc:
                log.warning("bfd_remove_failed", peer=key, error=str(exc))
        self._wanted = {}
        await self.loop.run_in_executor(None, self.engine.close)
