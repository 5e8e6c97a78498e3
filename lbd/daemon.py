"""The daemon: wiring and the level-triggered reconcile loop.

Every input (config reload, source snapshot, health flip, membership change,
a periodic timer) only marks the state dirty. One loop then recomputes the
whole desired state from the inputs (allocations -> plan) and lets each
announcer converge to it idempotently. Restarts, reloads and reconnects need
no special cases: they are just another pass.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace
from typing import Any, Mapping

import structlog

from lbd import aio

import lbd
from lbd.config import ConfigError, load_config
from lbd.control import ControlError, ControlServer
from lbd.ipam import pool_usage
from lbd.l2.announcer import L2Announcer
from lbd.l2.interfaces import list_interfaces
from lbd.l2.netlink import Netlink
from lbd.membership import LocalMembership, Membership
from lbd.model import Allocation, Config, Family, IPAddress, Member, MemberState, Plan, ServiceSpec
from lbd.planner import PlannerInput, plan, selector_matches
from lbd.sdnotify import Notifier
from lbd.sources.base import ServiceResult
from lbd.sources.manager import SourceManager
from lbd.sources.registry import validate_source
from lbd.sources.static import static_source_config
from lbd.state import PersistedState, StateError, StateStore
from lbd import daemon_metrics as m

log = structlog.get_logger(__name__)

RESYNC_INTERVAL = 10.0  # a full pass even when nothing said it changed (interfaces, lost events)
DEBOUNCE = 0.01  # coalesce a burst of triggers into one pass
SOURCE_START_GRACE = 2.0  # wait this long at start for every source's first snapshot
EXIT_RESTART = 75  # exit status after a stop-for-restart; the systemd unit restarts lbd on it
RESTART_WINDOW = 300.0  # a start this soon after a stop-for-restart is a graceful restart (RFC 4724)


def ghost_spec(allocation: Allocation) -> ServiceSpec:
    """A stand-in for a service whose source has not spoken yet since start.

    It keeps the service's addresses (sticky, announced, not given to anyone
    else) until the source publishes its first snapshot.
    """
    families = tuple(dict.fromkeys(Family.of(a) for a in allocation.addresses)) or (Family.IPV4,)
    return ServiceSpec(
        name=allocation.service,
        pool=allocation.pool,
        addresses=allocation.addresses,
        ip_families=families,
        share_key="lbd-restored:" + ",".join(map(str, allocation.addresses)),
        placeholder=True,
    )


class Daemon:
    def __init__(self, config: Config, membership: Membership | None = None) -> None:
        self.config = config
        self.started = time.time()
        self.notifier = Notifier()
        self.store = StateStore(config.node.state_dir)
        persisted = self.store.load()
        self.allocations: dict[str, Allocation] = dict(persisted.allocations)
        # Drained by `lbd-ctl drain` (persisted) or by `[node] drained = true` in the config.
        self.drained = persisted.drained or config.node.drained
        self.extra_state: dict[str, object] = dict(persisted.extra)
        self.pending: dict[str, str] = {}
        self.plan = Plan()
        self.services: dict[str, ServiceSpec] = {}
        self.reload_error: list[str] | None = None
        self.reconcile_error: str | None = None
        self.last_reconcile: float | None = None
        self.netlink = Netlink()  # one netlink socket for the daemon, on its own thread (uvloop-safe)
        self.l2 = L2Announcer(netlink=self.netlink)
        self.bgp: Any = None  # lbd.bgp.announcer.BgpAnnouncer, when peers are configured
        self.exporter: Any = None  # lbd.bgp.export.RouteExporter, when route exports are configured
        self.health: Any = None  # lbd.health.HealthChecker, when a service has a health check
        self.membership: Membership = membership or LocalMembership(config.node.name)
        self.membership.restore(self.allocations, self.extra_state)
        self.sources = SourceManager(
            node_name=config.node.name, state_dir=config.node.state_dir, on_change=self.trigger
        )
        self.control = ControlServer(
            config.node.control_socket,
            {
                "status": self._cmd_status,
                "bgp": self._cmd_bgp,
                "members": self._cmd_members,
                "drain": self._cmd_drain,
                "undrain": self._cmd_undrain,
                "reload": self._cmd_reload,
                "restart": self._cmd_restart,
            },
        )
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._contested: set[IPAddress] = set()  # VIPs we announce that another member holds too
        self._writer: bool | None = None  # whether this node writes results back to sources
        self._restarting = False  # this stop is for a restart: keep routes and addresses in place
        stopped_at = self.extra_state.pop("restart_stop_at", None)
        self.graceful_restart = isinstance(stopped_at, (int, float)) and 0 <= time.time() - stopped_at < RESTART_WINDOW
        self._metrics_server: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- inputs -------------------------------------------------------------

    def trigger(self) -> None:
        """Something changed: run a reconcile pass soon."""
        self._wake.set()

    def services_now(self) -> dict[str, ServiceSpec]:
        """Every source's services, plus stand-ins for sources not heard from yet."""
        services = {spec.name: spec for spec in self.sources.services()}
        starting = {s["name"] for s in self.sources.status() if s.get("state") == "starting"}
        for name, allocation in self.allocations.items():
            source = name.partition("/")[0]
            if name not in services and source in starting:
                services[name] = ghost_spec(allocation)
        return services

    # -- the loop -----------------------------------------------------------

    async def reconcile(self) -> None:
        config = self.config
        self.services = self.services_now()
        result, notes = self.membership.allocate(config, list(self.services.values()), self.allocations)
        for note in notes:
            log.warning("allocation_note", detail=note)
        for change in result.changes:
            log.warning("allocation_changed", service=change.service, change=str(change))
            m.ALLOCATION_CHANGES.inc()
        if result.allocations != self.allocations or self.membership.state_dirty():
            self.allocations = result.allocations
            self.persist()
        for name, reason in result.pending.items():
            if self.pending.get(name) != reason:
                log.warning("service_pending", service=name, reason=reason)
        self.pending = result.pending

        interfaces = await list_interfaces(self.netlink)
        self._configure_health()
        failing = frozenset(
            name for name, spec in self.services.items()
            if spec.health_check is not None and self.health is not None and self.health.healthy(name) is not True
        )
        held = tuple(sorted({str(i.vip) for i in self.plan.l2 if i.mode != "local"}))
        me = Member(
            name=config.node.name,
            state=MemberState.ALIVE,
            labels=dict(config.node.labels),
            interfaces={i.name: i.networks for i in interfaces if i.up},
            drained=self.drained,
            failing=failing,
            holds=held,
        )
        self.membership.update_local(me)
        members = self.membership.members()
        previous = {d.vip: d.owner for d in self.plan.decisions}
        self.plan = plan(
            PlannerInput(
                config=config,
                node=config.node.name,
                allocations=self.allocations,
                services=self.services,
                members=members,
                now=time.monotonic(),
                eligible_since=self.membership.eligible_since(),
            )
        )
        alive = {mb.name for mb in members if mb.state == MemberState.ALIVE}
        for decision in self.plan.decisions:
            before = previous.get(decision.vip)
            if decision.vip in previous and before != decision.owner:
                kind = "failover" if before is not None and before not in alive else "move"
                m.OWNER_CHANGES.labels(kind).inc()
                log.info("vip_owner_changed", vip=str(decision.vip), old=before, new=decision.owner, kind=kind,
                         reason=decision.reason)
        await self.l2.apply(self.plan.l2)
        # A VIP we announce that another alive member holds too (a partition healing): announce
        # again when that starts and when it ends, so neighbours that followed the other holder
        # come back to us as soon as it lets go, not at the next periodic announcement.
        contested = {
            i.vip for i in self.plan.l2
            if i.mode != "local" and any(str(i.vip) in mb.holds for mb in members
                                         if mb.name != config.node.name and mb.state == MemberState.ALIVE)
        }
        self.l2.reannounce((contested ^ self._contested) & {i.vip for i in self.plan.l2})
        self._contested = contested
        if self.bgp is not None:
            self.bgp.apply(self.plan.bgp)
        if self.exporter is not None:
            await self.exporter.apply(self.plan.exports)
        held_now = tuple(sorted({str(i.vip) for i in self.plan.l2 if i.mode != "local"}))
        if held_now != held:
            self.membership.update_local(replace(me, holds=held_now))
        # One node writes results back to the sources (Kubernetes status): the allocator.
        writer = self.membership.allocator() == config.node.name
        if writer != self._writer:
            self._writer = writer
            self.sources.set_writer(writer)
            log.info("status_writer", writer=writer)
        await self.sources.report(self.results())
        self.last_reconcile = time.time()
        m.update(self)

    def results(self) -> dict[str, ServiceResult]:
        owners: dict[str, list[str]] = {}
        for decision in self.plan.decisions:
            for service in decision.services:
                nodes = owners.setdefault(service, [])
                if decision.owner and decision.owner not in nodes:
                    nodes.append(decision.owner)
        out: dict[str, ServiceResult] = {}
        for name in self.services:
            allocation = self.allocations.get(name)
            if allocation is not None:
                out[name] = ServiceResult(addresses=allocation.addresses, pool=allocation.pool,
                                          nodes=tuple(owners.get(name, ())))
            else:
                out[name] = ServiceResult(pending=self.pending.get(name, "not allocated"))
        return out

    def persist(self) -> None:
        self.extra_state.update(self.membership.persisted_extra())
        self.store.save(PersistedState(allocations=dict(self.allocations), drained=self.drained,
                                       extra=self.extra_state))

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await aio.wait_for(self._wake.wait(), RESYNC_INTERVAL)
            except asyncio.TimeoutError:
                pass
            if self._stop.is_set():
                return
            await asyncio.sleep(DEBOUNCE)
            self._wake.clear()
            if not await self._reconcile_once():
                await asyncio.sleep(1.0)
                self.trigger()
            self._watchdog()

    async def _reconcile_once(self) -> bool:
        """One pass; a failure is logged, counted, shown in status and retried, never fatal."""
        try:
            await self.reconcile()
        except Exception as exc:  # noqa: BLE001 - the daemon must survive; the next pass retries
            self.reconcile_error = f"{type(exc).__name__}: {exc}"
            m.RECONCILE_ERRORS.inc()
            log.exception("reconcile_failed")
            return False
        if self.reconcile_error is not None:
            log.info("reconcile_recovered")
        self.reconcile_error = None
        return True

    def _watchdog(self) -> None:
        if self.notifier.watchdog_interval is not None:
            self.notifier.watchdog()

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while not self._stop.is_set():
            # Only a live event loop pets the dog: a stuck loop gets us restarted.
            self.notifier.watchdog()
            await asyncio.sleep(interval / 2)

    # -- pieces that come and go with the config ------------------------------

    def _configure_health(self) -> None:
        checks = {name: spec.health_check for name, spec in self.services.items() if spec.health_check is not None}
        if checks and self.health is None:
            from lbd.health import HealthChecker

            self.health = HealthChecker(on_change=self.trigger)
        if self.health is not None:
            self.health.set_checks(checks)

    async def _configure_bgp(self) -> None:
        # Only the peers whose node selector picks this node open a session from it.
        labels = self.config.node.labels
        peers = tuple(p for p in self.config.bgp_peers if selector_matches(p.node_selector, labels))
        if peers and self.bgp is None:
            from lbd.bgp.announcer import BgpAnnouncer

            self.bgp = BgpAnnouncer(self.config.node.name, restarting=self.graceful_restart)
        if self.bgp is not None:
            await self.bgp.set_peers(peers)

    async def _configure_export(self) -> None:
        if self.config.route_exports and self.exporter is None:
            from lbd.bgp.export import RouteExporter

            self.exporter = RouteExporter.from_configs(self.config.route_exports, netlink=self.netlink)

    async def _configure_sources(self) -> None:
        await self.sources.reconfigure([static_source_config(self.config.services), *self.config.sources])

    async def _configure_metrics(self) -> None:
        listen = self.config.metrics.listen
        current = getattr(self._metrics_server, "listen", None)
        if listen == current:
            return
        if self._metrics_server is not None:
            self._metrics_server.close()
            self._metrics_server = None
        if listen:
            from lbd.metrics_server import MetricsServer

            self._metrics_server = MetricsServer(listen)
            await self._metrics_server.start()

    async def apply_config(self) -> None:
        await self._configure_sources()
        await self._configure_bgp()
        await self._configure_export()
        await self._configure_metrics()
        await self.membership.configure(self.config)

    # -- lifecycle ----------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config; an invalid one is rejected and the running one stays."""
        self.notifier.reloading()
        m.RELOADS.labels("attempted").inc()
        try:
            new = load_config(self.config.path, validate_source=validate_source)
            if new.node.name != self.config.node.name:
                raise ConfigError([f"{self.config.path}: node.name: changing the node name needs a restart"])
            if new.node.state_dir != self.config.node.state_dir or new.node.control_socket != self.config.node.control_socket:
                log.warning("reload_ignores_paths", detail="state_dir and control_socket changes take effect on restart")
                new = replace(new, node=replace(new.node, state_dir=self.config.node.state_dir,
                                                control_socket=self.config.node.control_socket))
        except ConfigError as exc:
            self.reload_error = exc.errors
            m.RELOADS.labels("rejected").inc()
            for error in exc.errors:
                log.error("reload_rejected", error=error)
            log.error("reload_kept_running_config", errors=len(exc.errors))
            self.notifier.ready(status=f"reload rejected ({len(exc.errors)} errors), running config kept")
            return False
        self.config = new
        self.reload_error = None
        await self.apply_config()
        m.RELOADS.labels("applied").inc()
        log.info("config_reloaded", path=str(new.path))
        self.trigger()
        self.notifier.ready(status="reloaded")
        return True

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                             (signal.SIGUSR2, lambda: self.stop(restart=True)),
                             (signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))):
            loop.add_signal_handler(sig, handler)
        log.info("starting", node=self.config.node.name, config=str(self.config.path), version=lbd.__version__,
                 allocations=len(self.allocations), graceful_restart=self.graceful_restart)
        try:
            await self.control.start()
            await self.apply_config()
            # Hear the cluster (bounded) before the first pass, so a restarting node does not
            # announce, for a moment, VIPs that other nodes own.
            await self.membership.start(self.trigger)
            await self._wait_for_sources()
            await self._reconcile_once()
            # Only now, with the desired addresses in place, remove what a crashed lbd left behind:
            # cleaning up first would withdraw, for a moment, VIPs that are still ours.
            if self.graceful_restart:
                self.persist()  # the restart marker is used up
            removed = await self.l2.cleanup_stale()
            if removed:
                log.info("removed_stale_addresses", count=removed)
            self.notifier.ready(status=f"announcing {sum(1 for d in self.plan.decisions if d.announced_here)} VIPs")
            log.info("ready", vips=len(self.plan.decisions), pending=len(self.pending))
            self._tasks.append(asyncio.create_task(self._watchdog_loop()))
            await self._loop()
        finally:
            await self.shutdown()
        return EXIT_RESTART if self._restarting else 0

    async def _wait_for_sources(self) -> None:
        deadline = time.monotonic() + SOURCE_START_GRACE
        while time.monotonic() < deadline:
            if not any(s.get("state") == "starting" for s in self.sources.status()):
                return
            await asyncio.sleep(0.02)

    def stop(self, restart: bool = False) -> None:
        """Withdraw everything and exit; or, for a restart, leave BGP routes (graceful restart)
        and, on a single node, the bound VIPs in place for the next lbd to adopt."""
        log.info("stopping", restart=restart)
        self._restarting = restart
        self._stop.set()
        self._wake.set()

    async def shutdown(self) -> None:
        self.notifier.stopping()
        for task in self._tasks:
            task.cancel()
        clustered = not isinstance(self.membership, LocalMembership)
        try:
            await self.membership.leave(self)
        except Exception:  # noqa: BLE001 - shutdown must go on
            log.exception("leave_failed")
        if self._restarting and not clustered:
            # The addresses keep their finite lifetime; the next lbd adopts them as its own.
            log.info("leaving_addresses_for_restart", vips=len(self.plan.l2))
        else:
            await self.l2.close()
        if self._restarting:
            self.extra_state["restart_stop_at"] = time.time()
        if self.bgp is not None:
            await self.bgp.close(graceful_restart=self._restarting)
        if self.exporter is not None:
            await self.exporter.close()
        if self.health is not None:
            await self.health.close()
        await self.sources.close()
        await self.membership.close()
        await self.control.close()
        await self.netlink.aclose()
        if self._metrics_server is not None:
            self._metrics_server.close()
        try:
            self.persist()
        except OSError as exc:
            log.error("persist_failed", error=str(exc))
        log.info("stopped")

    # -- control commands -------------------------------------------------

    async def _cmd_status(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return self.status()

    def status(self) -> dict[str, Any]:
        usage = pool_usage(self.config.pools, self.allocations)
        decisions = {}
        for decision in self.plan.decisions:
            for service in decision.services:
                decisions.setdefault(service, []).append(decision)
        services = []
        for name in sorted(set(self.services) | set(self.allocations) | set(self.pending)):
            allocation = self.allocations.get(name)
            row: dict[str, Any] = {"name": name, "addresses": [], "pool": None, "state": "pending",
                                   "owner": None, "interface": None, "reason": self.pending.get(name)}
            if allocation is not None:
                mine = decisions.get(name, [])
                row["addresses"] = [str(a) for a in allocation.addresses]
                row["pool"] = allocation.pool
                here = [d for d in mine if d.announced_here]
                owners = sorted({d.owner for d in mine if d.owner})
                row["owner"] = ",".join(owners) or None
                row["interface"] = ",".join(sorted({d.interface for d in here if d.interface})) or None
                if here:
                    row["state"] = "announced"
                elif owners:
                    row["state"] = "standby"
                else:
                    row["state"] = "not-announced"
                row["reason"] = "; ".join(dict.fromkeys(d.reason for d in mine)) or None
                row["modes"] = sorted({mode for d in mine for mode in d.modes})
            services.append(row)
        return {
            "node": self.config.node.name,
            "version": lbd.__version__,
            "config": str(self.config.path),
            "started": self.started,
            "drained": self.drained,
            "reload_error": self.reload_error,
            "reconcile_error": self.reconcile_error,
            "last_reconcile": self.last_reconcile,
            "pools": [
                {"name": u.pool,
                 "ipv4": {"used": u.ipv4.used, "total": u.ipv4.total},
                 "ipv6": {"used": u.ipv6.used, "total": u.ipv6.total}}
                for u in usage.values()
            ],
            "services": services,
            "vips": [
                {"vip": str(d.vip), "services": list(d.services), "pool": d.pool, "owner": d.owner,
                 "interface": d.interface, "announced_here": d.announced_here, "modes": list(d.modes),
                 "candidates": list(d.candidates), "reason": d.reason}
                for d in self.plan.decisions
            ],
            "l2": self.l2.status(),
            "bgp": self.bgp.status() if self.bgp is not None else [],
            "route_export": self.exporter.status() if self.exporter is not None else None,
            "health": self.health.status() if self.health is not None else {},
            "sources": self.sources.status(),
            "members": self.membership.status(),
        }

    async def _cmd_bgp(self, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self.bgp.status() if self.bgp is not None else []

    async def _cmd_members(self, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self.membership.status()

    async def _cmd_drain(self, args: Mapping[str, Any]) -> str:
        if self.drained:
            return "already drained"
        self.drained = True
        self.persist()
        self.trigger()
        moved = await self.membership.wait_handover(self)
        return f"drained: {moved}"

    async def _cmd_undrain(self, args: Mapping[str, Any]) -> str:
        if not self.drained:
            return "not drained"
        self.drained = False
        self.persist()
        self.trigger()
        return "undrained: this node may own VIPs again"

    async def _cmd_restart(self, args: Mapping[str, Any]) -> str:
        self.stop(restart=True)
        return "stopping for a restart: BGP routes stay at graceful-restart peers until lbd is back"

    async def _cmd_reload(self, args: Mapping[str, Any]) -> str:
        if await self.reload():
            return "reloaded"
        raise ControlError("config rejected, running config kept:\n" + "\n".join(self.reload_error or []))


def run_daemon(config: Config) -> int:
    """Entry point of ``lbd run`` with a validated config: set up logging, run on uvloop."""
    from lbd.logsetup import setup_logging

    setup_logging(config.log)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        runner = asyncio.run

    async def main() -> int:
        membership = None
        if config.cluster.enabled:
            from lbd.cluster.membership import ClusterMembership

            membership = ClusterMembership(config)
        return await Daemon(config, membership).run()

    try:
        return runner(main())
    except StateError as exc:
        # Refuse to start rather than begin empty and later overwrite allocations.
        log.error("state_unusable", error=str(exc), state_dir=str(config.node.state_dir))
        return 1
    except (OSError, ValueError) as exc:
        log.error("fatal", error=str(exc))
        return 1
