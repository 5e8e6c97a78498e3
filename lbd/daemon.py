"""The daemon: wiring and the level-triggered reconcile loop.

Every input (config reload, source snapshot, health flip, membership change,
a periodic timer) only marks the state dirty. One loop then recomputes the
whole desired state from the inputs (allocations -> plan) and lets each
announcer converge to it idempotently. Restarts, reloads and reconnects need
no special cases: they are just another pass.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import structlog

from lbd import aio

import lbd
from lbd.config import ConfigError, parse_config
from lbd.control import ControlError, ControlServer, Handler, peer_credentials
from lbd.coordination import Coordinator, Handover, LocalCoordinator
from lbd.hooks import HookDispatcher, HookEvent, HookRunner, Observation, observe
from lbd.ipam import pool_usage
from lbd.kernel.interfaces import InterfaceInventory
from lbd.kernel.netlink import Netlink
from lbd.l2.announcer import L2Announcer
from lbd.l2.pacer import DEFAULT_RATE, DEFAULT_TAKEOVER_RATE
from lbd.config.schema import Config
from lbd.model import (Allocation, BgpRoute, ExportRoute, Family, IPAddress, Member, MemberState, Plan, ServiceSpec,
                       VipDecision)
from lbd.planner import PlannerInput, held_vips
from lbd.planner.incremental import FULL_PASS_INTERVAL, IncrementalPlanner
from lbd.reloadplan import PlanDiff, RunningState, apply_or_rollback, diff_configs, readdress_refusal
from lbd.selectors import matches
from lbd.sdnotify import Notifier
from lbd.sources.base import ServiceResult
from lbd.sources.manager import SourceManager
from lbd.sources.registry import validate_source
from lbd.sources.static import static_source_config
from lbd.state import PersistedState, StateError, StateStore, StateWriter
from lbd import metrics as m
from lbd.looplag import LoopLagProbe

if TYPE_CHECKING:
    # Optional parts, imported when the config first needs them (start-up cost, and a
    # node without BGP or forwarding never loads those packages).
    from lbd.bgp.announcer import BgpAnnouncer
    from lbd.kernel.routes import RouteExporter
    from lbd.forward.forwarder import Forwarder
    from lbd.forward.health import BackendChecker
    from lbd.health import HealthChecker
    from lbd.kernel.interfaces import LocalInterface
    from lbd.metrics_server import MetricsServer

log = structlog.get_logger(__name__)

RESYNC_INTERVAL = 10.0  # a full pass even when nothing said it changed (interfaces, lost events)
DEBOUNCE = 0.01  # coalesce a burst of triggers into one pass
TAKEOVER_SEND_WAIT = 1.0  # at most this long for a failover's first announcements before the full plan
LOOP_LAG_INTERVAL = 0.1  # the loop-lag probe's period: cheap, and stalls that matter are longer
LOOP_STALL_WARNING = 0.25  # log a stall this long: half memberlist's LAN probe timeout
FIRST_BGP_BATCH = 256  # the first pass's first BGP batch; each next one is 4x larger
SOURCE_START_GRACE = 2.0  # wait this long at start for every source's first snapshot
EXIT_RESTART = 75  # exit status after a stop-for-restart; the systemd unit restarts lbd on it
RESTART_WINDOW = 300.0  # a start this soon after a stop-for-restart is a graceful restart (RFC 4724)


MAX_CONFIG_BYTES = 64 << 20


def may_read(st: os.stat_result, uid: int | None, gid: int | None) -> bool:
    """Whether ``uid``/``gid`` (None: unknown) may read a file with ``st``, by its mode bits."""
    if uid == 0:
        return True
    if uid is not None and st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR)
    if gid is not None and st.st_gid == gid:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def read_config_text(path: Path, uid: int | None = 0, gid: int | None = 0) -> str:
    """A config file's text, read without blocking on a FIFO or device; ConfigError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError([f"{path}: not a regular file"])
        if not may_read(st, uid, gid):
            raise ConfigError([f"{path}: cannot read: the requesting user may not read it"])
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB"])
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{path}: line {line}: the file is not valid UTF-8"]) from None


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


def restored_state(persisted: PersistedState, config: Config) -> tuple[dict[str, Allocation], bool, dict[str, object]]:
    """What the daemon starts from: ``(allocations, drained, extra)``.

    The persisted allocations are the allocator's ``previous`` on the first pass:
    forgetting them would let every service get a new address at each restart
    (the first free one of its pool) instead of keeping its own. Drained by
    ``lbd-ctl drain`` (persisted) or by ``[node] drained = true`` in the config.
    """
    return dict(persisted.allocations), persisted.drained or config.node.drained, dict(persisted.extra)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread runs ``loop``."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


OWNER_CHANGES_SHOWN = 10  # the owner changes named in a pass's info summary; the rest are counted


def report_owner_changes(previous: Mapping[IPAddress, str | None], decisions: Sequence[VipDecision],
                         members: Sequence[Member]) -> dict[str, int]:
    """Count and log the VIPs whose owner changed in one pass (previous owner by VIP ->
    ``decisions``): one debug line per VIP, one info summary per pass (issue 9: a failover
    of thousands of VIPs must not JSON-encode thousands of info lines inside the pass).

    A change is a ``failover`` when the old owner is no longer alive, else a ``move``.
    Returns the counts by kind."""
    alive = {mb.name for mb in members if mb.state == MemberState.ALIVE}
    counts = {"failover": 0, "move": 0}
    shown: list[dict[str, object]] = []
    for decision in decisions:
        if decision.vip not in previous:
            continue
        before = previous[decision.vip]
        if before == decision.owner:
            continue
        kind = "failover" if before is not None and before not in alive else "move"
        counts[kind] += 1
        log.debug("vip_owner_changed", vip=str(decision.vip), old=before, new=decision.owner, kind=kind,
                  reason=decision.reason)
        if len(shown) < OWNER_CHANGES_SHOWN:
            shown.append({"vip": str(decision.vip), "old": before, "new": decision.owner, "kind": kind,
                          "reason": decision.reason})
    for kind, count in counts.items():
        if count:
            m.OWNER_CHANGES.labels(kind).inc(count)
    if shown:
        log.info("vip_owners_changed", failover=counts["failover"], move=counts["move"], first=shown)
    return counts


class Daemon:
    def __init__(self, config: Config, coordinator: Coordinator | None = None) -> None:
        self.config = config
        self.started = time.time()
        self.notifier = Notifier()
        self.store = StateStore(config.node.state_dir)
        self.state_writer = StateWriter(self.store)  # off the loop, coalesced (issue 9)
        try:
            # Where persist() called from a pass step in a worker thread takes its snapshot.
            self._event_loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._event_loop = None  # built outside a loop (tools): persist() writes at once
        self.allocations: dict[str, Allocation]
        self.allocations, self.drained, self.extra_state = restored_state(self.store.load(), config)
        self.pending: dict[str, str] = {}
        self.plan = Plan()
        self.services: dict[str, ServiceSpec] = {}
        self.reload_error: list[str] | None = None
        self.last_reload: str | None = None  # applied, rejected, refused or rolled_back
        self.reconcile_error: str | None = None
        self.last_reconcile: float | None = None
        self.netlink = Netlink()  # one netlink socket for the daemon, on its own thread (uvloop-safe)
        # One interface inventory for the pass and the L2 announcer, read again only when a
        # link or a connected subnet changes (a change also runs a pass at once).
        self.interfaces = InterfaceInventory(self.netlink, on_change=self.trigger)
        self.l2 = L2Announcer(netlink=self.netlink, inventory=self.interfaces)
        self.bgp: BgpAnnouncer | None = None  # when peers are configured
        self.exporter: RouteExporter | None = None  # when route exports are configured
        self.health: HealthChecker | None = None  # when a service has a health check
        self.forwarder: Forwarder | None = None  # once a service has backends
        self.backend_checks: BackendChecker | None = None  # likewise
        self.coordinator: Coordinator = coordinator or LocalCoordinator(config.node.name)
        self.coordinator.restore(self.allocations, self.extra_state)
        self.sources = SourceManager(
            node_name=config.node.name, state_dir=config.node.state_dir, on_change=self.trigger
        )
        self.control = ControlServer(config.node.control_socket, self._control_commands())
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._contested: set[IPAddress] = set()  # VIPs we announce that another member holds too
        self._exports_applied: tuple[ExportRoute, ...] = ()  # what the exporter last converged on
        self._writer: bool | None = None  # whether this node writes results back to sources
        self._restarting = False  # this stop is for a restart: keep routes and addresses in place
        stopped_at = self.extra_state.pop("restart_stop_at", None)
        self.graceful_restart = isinstance(stopped_at, (int, float)) and 0 <= time.time() - stopped_at < RESTART_WINDOW
        self._extra_changed = stopped_at is not None  # the file still holds the restart marker
        self._metrics_server: MetricsServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.hook_runner = HookRunner()
        self.hooks = HookDispatcher(config.hooks, config.node.name, self.hook_runner.submit)
        self.planner = IncrementalPlanner(full_every=FULL_PASS_INTERVAL)  # self.plan, kept up to date per change
        self._reload_lock = asyncio.Lock()
        self._pass: asyncio.Future[bool] | None = None  # the reconcile pass running now, if any
        self._interrupted = False  # a stop cancelled a pass: addresses it was binding may be left over
        self._bgp_first = True  # the BGP announcer has not been given a table yet

    def _control_commands(self) -> dict[str, Handler]:
        """What ``lbd-ctl`` may ask over the control socket, by command name."""
        return {
            "status": self._cmd_status,
            "bgp": self._cmd_bgp,
            "bfd": self._cmd_bfd,
            "members": self._cmd_members,
            "drain": self._cmd_drain,
            "undrain": self._cmd_undrain,
            "reload": self._cmd_reload,
            "restart": self._cmd_restart,
            "plan": self._cmd_plan,
        }

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
        """One level-triggered pass: allocate, plan, converge every announcer, report.

        The order of the steps is part of the behaviour (issue 9): see ``_announce``."""
        config = self.config  # one config for the whole pass: a reload may swap self.config meanwhile
        if isinstance(self.coordinator, LocalCoordinator):
            # Pure on a single node (ipam over the sources' services): off the loop. A cluster's
            # allocation writes the gossiped table, which belongs to the loop.
            await asyncio.to_thread(self._allocate, config)
        else:
            self._allocate(config)
        interfaces = await self.interfaces.get()
        self._configure_health()
        withdraw = await self._forward(interfaces)
        me = self._local_member(config, interfaces, withdraw)
        self.coordinator.update_local(me)
        members = self.coordinator.members()
        await self._take_over(config, members)
        # Planning is pure and CPU-heavy (seconds at 100,000 VIPs): in a worker thread the GIL
        # still hands the loop a turn every few milliseconds, so gossip acks, BFD and
        # SIGTERM are served during the pass (issue 9). Nothing else writes its inputs meanwhile:
        # passes never overlap.
        await asyncio.to_thread(self._replan, config, members)
        await self._announce(config, members)
        held_now = held_vips(self.plan.l2)
        if held_now != me.holds:
            self.coordinator.update_local(replace(me, holds=held_now))
        await self._write_back(config)
        self.last_reconcile = time.time()
        await asyncio.to_thread(m.update, pools=config.pools, allocations=self.allocations, pending=self.pending,
                                plan=self.plan, drained=self.drained)
        try:
            # The observation (a few dicts over every VIP) off the loop; the dispatch on it.
            bgp = self.bgp.status() if self.bgp is not None else []  # the sessions live on the loop
            observed = await asyncio.to_thread(observe, self.plan.decisions, bgp, members)
        except Exception:  # noqa: BLE001 - hooks are a side channel: never fail the pass for them
            log.exception("hook_observe_failed")
        else:
            self._observe_hooks(members, observed)

    def _allocate(self, config: Config) -> None:
        """Allocate addresses to the services the sources give now; persist what changed."""
        self.services = self.services_now()
        result, notes = self.coordinator.allocate(config, list(self.services.values()), self.allocations)
        for note in notes:
            log.warning("allocation_note", detail=note)
        for change in result.changes:
            log.warning("allocation_changed", service=change.service, change=str(change))
            m.ALLOCATION_CHANGES.inc()
        if result.allocations != self.allocations or self.coordinator.state_dirty():
            self.allocations = result.allocations
            self.persist()
        for name, reason in result.pending.items():
            if self.pending.get(name) != reason:
                log.warning("service_pending", service=name, reason=reason)
        self.pending = result.pending

    def _local_member(self, config: Config, interfaces: Sequence[LocalInterface], withdraw: frozenset[str]) -> Member:
        """This node as the planner and the cluster see it: labels, usable interfaces,
        drained, the services failing here (health checks, or no backend to forward to:
        ``withdraw``) and the VIPs it holds as of the last pass."""
        failing = frozenset(
            name for name, spec in self.services.items()
            if spec.health_check is not None and self.health is not None and self.health.healthy(name) is not True
        ) | withdraw
        return Member(
            name=config.node.name,
            state=MemberState.ALIVE,
            labels=dict(config.node.labels),
            interfaces={i.name: i.networks for i in interfaces if i.up},
            drained=self.drained,
            failing=failing,
            holds=held_vips(self.plan.l2),
        )

    def _planner_input(self, config: Config, members: list[Member]) -> PlannerInput:
        return PlannerInput(
            config=config,
            node=config.node.name,
            allocations=self.allocations,
            services=self.services,
            members=members,
            now=time.monotonic(),
            eligible_since=self.coordinator.eligible_since(),
        )

    async def _take_over(self, config: Config, members: list[Member]) -> None:
        """A member died: bind and announce the layer-2 VIPs it owned that fall to this node
        before re-deciding every VIP (``IncrementalPlanner.takeovers``; issue 9: the full
        re-decision of 10,000 VIPs took a second while they answered nowhere). Additive: the
        full plan that follows withdraws whatever it decides otherwise."""
        takeovers = await asyncio.to_thread(self.planner.takeovers, self._planner_input(config, members))
        if takeovers:
            taken = {i.vip for i in takeovers}
            await self.l2.apply([*takeovers, *(i for i in self.plan.l2 if i.vip not in taken)])
            # Their gratuitous ARPs leave from this loop: let them go before the full re-decision
            # takes the GIL in its thread (at 10,000 VIPs they trailed the binds by 0.5 s).
            await self.l2.takeovers_sent(TAKEOVER_SEND_WAIT)

    def _replan(self, config: Config, members: list[Member]) -> None:
        """Plan this node's intents over ``members``; log every VIP whose owner changed.

        Incremental (issue 9): only the VIPs whose inputs changed are re-decided; every
        ``FULL_PASS_INTERVAL`` seconds every VIP is, from scratch (the safety net)."""
        self.plan = self.planner.plan(self._planner_input(config, members))
        # Only the VIPs the incremental planner re-decided can have changed owner (O(k)).
        changes = self.planner.owner_changes()
        report_owner_changes({before.vip: before.owner for before, _ in changes}, [after for _, after in changes],
                             members)

    async def _announce(self, config: Config, members: list[Member]) -> None:
        """Converge every announcer on the plan, in the order that never drops traffic:
        local routes, BGP, layer 2, the contested re-announce, then the full route export."""
        if self.exporter is not None:
            # Make before break: the node accepts a VIP's traffic (its local route, one per
            # prefix, so this is quick) before the UPDATE announcing it leaves. Routes that are
            # no longer desired stay until after the withdrawal (the full apply below).
            accept = [r for r in self.plan.exports if r.kind == "local"]
            await self.exporter.apply(list(dict.fromkeys((*self._exports_applied, *accept))))
        # BGP next: its UPDATEs leave now, never after the layer-2 work (binding up to every
        # VIP) below; a withdrawal also goes out before its VIP is unbound. (issue 9)
        if self.bgp is not None:
            await self._apply_bgp(self.plan.bgp)
        await self.l2.apply(self.plan.l2)
        self._reannounce_contested(config, members)
        if self.exporter is not None:
            await self.exporter.apply(self.plan.exports)
            self._exports_applied = self.plan.exports

    async def _apply_bgp(self, routes: Sequence[BgpRoute]) -> None:
        """Hand the BGP announcer its routes. The first time, in growing batches with a turn
        of the loop between them: the first UPDATEs leave within milliseconds instead of
        after the whole table is packed (issue 9). Not on a graceful restart: there the
        first table ends with End-of-RIB, and routers drop the stale routes it lacks."""
        assert self.bgp is not None
        if self._bgp_first and not self.graceful_restart:
            size = FIRST_BGP_BATCH
            while size < len(routes):
                self.bgp.apply(routes[:size])  # nothing announced before: a prefix withdraws nothing
                await asyncio.sleep(0)
                size *= 4
        self.bgp.apply(routes)
        self._bgp_first = False

    def _reannounce_contested(self, config: Config, members: list[Member]) -> None:
        """A VIP we announce that another alive member holds too (a partition healing): announce
        again when that starts and when it ends, so neighbours that followed the other holder
        come back to us as soon as it lets go, not at the next periodic announcement."""
        # One set per other member (``holds`` is a tuple): a lookup per VIP, not a scan.
        others = [frozenset(mb.holds) for mb in members
                  if mb.name != config.node.name and mb.state == MemberState.ALIVE and mb.holds]
        contested = {
            i.vip for i in self.plan.l2
            if i.mode.announced and any(str(i.vip) in held for held in others)
        } if others else set()
        self.l2.reannounce((contested ^ self._contested) & {i.vip for i in self.plan.l2})
        self._contested = contested

    async def _write_back(self, config: Config) -> None:
        """One node writes results back to the sources (Kubernetes status): the allocator."""
        writer = self.coordinator.allocator() == config.node.name
        if writer != self._writer:
            self._writer = writer
            self.sources.set_writer(writer)
            log.info("status_writer", writer=writer)
        await self.sources.report(await asyncio.to_thread(self.results))

    def _observe_hooks(self, members: list[Member], observed: Observation | None = None) -> None:
        """Hook events from the state this pass converged to (level-triggered: once per transition);
        ``observed``: computed already (the pass does it off the loop)."""
        try:
            if observed is None:
                observed = observe(self.plan.decisions, self.bgp.status() if self.bgp is not None else [], members)
            self.hooks.observe(observed, time.time())
        except Exception:  # noqa: BLE001 - hooks are a side channel: never fail the pass for them
            log.exception("hook_observe_failed")

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
        """Have the state written soon: a snapshot now, encoded and written off the loop,
        coalesced with the writes around it (``StateWriter``). ``await
        self.state_writer.flush()`` where it must be on disk before going on."""
        loop = getattr(self, "_event_loop", None)
        if loop is not None and not loop.is_closed() and not _on_loop(loop):
            # From a worker thread (_allocate off the loop): take the snapshot on the loop, in
            # order with persist() calls made there (a drain), never an older one after a newer.
            loop.call_soon_threadsafe(self.persist)
            return
        self.extra_state.update(self.coordinator.persisted_extra())
        self._extra_changed = False
        self.state_writer.submit(PersistedState(allocations=dict(self.allocations), drained=self.drained,
                                                extra=dict(self.extra_state)))

    async def _final_write(self) -> None:
        """The last state write at stop, after every announcement is withdrawn, and only
        when something is not on disk yet (issue 9: 3.8 s of a 5 s stop at 100,000 VIPs)."""
        writer: StateWriter | None = getattr(self, "state_writer", None)  # (tests build a Daemon without __init__)
        if writer is None:
            self.persist()
            return
        if writer.dirty or self.coordinator.state_dirty() or self._extra_changed:
            self.persist()
        await writer.flush()

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
            if not await self._interruptible_pass():
                if self._stop.is_set():
                    return
                await asyncio.sleep(1.0)
                self.trigger()
            self._watchdog()

    async def _interruptible_pass(self) -> bool:
        """One pass that :meth:`stop` can cancel: SIGTERM is served at once however long the pass
        (binding 100,000 VIPs one by one takes minutes); shutdown then withdraws what it applied."""
        if self._stop.is_set():
            return False
        task = self._pass = asyncio.ensure_future(self._reconcile_once())
        try:
            return await task
        except asyncio.CancelledError:
            if not (task.cancelled() and self._stop.is_set()):
                raise  # we are cancelled ourselves, not the pass by stop()
            log.info("reconcile_interrupted")
            return False
        finally:
            self._pass = None

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

    async def _forward(self, interfaces: Sequence[LocalInterface]) -> frozenset[str]:
        """Balance forwarded services to their healthy backends (docs/forwarding.md).

        Every node installs the same rules whether or not it holds the VIP, so a
        node taking a VIP over forwards each flow where the old owner did. The
        services to withdraw from this node (no healthy backend here) are returned.
        """
        forwarded = {name: spec for name, spec in self.services.items() if spec.backends}
        if not forwarded and self.forwarder is None:
            return frozenset()
        from lbd.forward.forwarder import Forwarder
        from lbd.forward.health import BackendChecker
        from lbd.forward.metrics import COLLECTOR
        from lbd.forward.ruleset import desired, to_withdraw

        if self.backend_checks is None:
            self.backend_checks = BackendChecker(on_change=self.trigger)
        if self.forwarder is None:
            self.forwarder = Forwarder()
            COLLECTOR.forwarder = self.forwarder
        self.backend_checks.set_services(forwarded)
        want = desired(forwarded, self.allocations, lambda s, b: self.backend_checks.healthy(forwarded[s], b),
                       self.config.forwarding, {i.name: i.networks for i in interfaces if i.up},
                       previous=self.forwarder.desired, versions=self.backend_checks.version)
        try:
            await self.forwarder.apply(want)
            if self.config.metrics.listen:  # for Prometheus; lbd-ctl status reads afresh
                await self.forwarder.refresh_counters(max_age=30.0)
        except Exception:  # noqa: BLE001 - announcing must go on; status shows the error, a later pass retries
            log.exception("forward_failed")
            asyncio.get_running_loop().call_later(1.0, self.trigger)
        return to_withdraw(want, forwarded)

    async def _configure_bgp(self) -> None:
        # Only the peers whose node selector picks this node open a session from it.
        labels = self.config.node.labels
        peers = tuple(p for p in self.config.bgp_peers if matches(p.node_selector, labels))
        if peers and self.bgp is None:
            from lbd.bgp.announcer import BgpAnnouncer

            self.bgp = BgpAnnouncer(self.config.node.name, restarting=self.graceful_restart,
                                    on_event=self._bgp_event)
        if self.bgp is not None:
            await self.bgp.set_peers(peers, self.config.bfd_profiles)

    def _bgp_event(self, peer: str, event: object) -> None:
        # A session reaching or leaving Established: run a pass now, so status and the
        # bgp_session_up/down hooks follow at once rather than at the next resync.
        from lbd.bgp.events import State, StateChanged

        if isinstance(event, StateChanged) and State.ESTABLISHED in (event.old, event.new):
            self.trigger()

    async def _configure_export(self) -> None:
        if (self.config.route_exports or self.config.bgp_advertisements) and self.exporter is None:
            from lbd.kernel.routes import RT_TABLE_LOCAL, RouteExporter
            from lbd.planner import LOCAL_ROUTE_PROTO

            self.exporter = RouteExporter.from_configs(self.config.route_exports, netlink=self.netlink)
            # BGP VIPs are accepted by lbd's local routes (accept = "local-route"): owning the
            # scope from the start also removes those a crashed lbd left behind.
            self.exporter.own((RT_TABLE_LOCAL, LOCAL_ROUTE_PROTO))

    async def _configure_sources(self) -> None:
        await self.sources.reconfigure([static_source_config(self.config.services), *self.config.sources])

    async def _configure_metrics(self) -> None:
        listen = self.config.metrics.listen
        current = getattr(self._metrics_server, "listen", None)
        if listen == current:
            return
        if not listen:
            if self._metrics_server is not None:
                self._metrics_server.close()
                self._metrics_server = None
            return
        from lbd.metrics_server import MetricsServer

        # Open the new listener before closing the old one, so that a listener that cannot
        # open (an address the node lacks) leaves the old one serving; only when the two
        # clash (same port) is the old one closed first.
        server = MetricsServer(listen)
        try:
            await server.start()
        except OSError:
            if self._metrics_server is None:
                raise
            self._metrics_server.close()
            self._metrics_server = None
            await server.start()
        if self._metrics_server is not None:
            self._metrics_server.close()
        self._metrics_server = server

    async def apply_config(self) -> None:
        # The step most likely to fail (binding a listener) first: a failure then leaves the
        # rest untouched, and the reload's rollback has little to undo.
        await self._configure_metrics()
        await self._configure_sources()
        await self._configure_bgp()
        await self._configure_export()
        await self.coordinator.configure(self.config)
        self.hooks.set_hooks(self.config.hooks)
        # One packets/s cap for the node's announcer: the lowest announce_rate configured; the
        # same for the first packets of takeovers, which have their own (lbd.l2.pacer).
        self.l2.set_rate(min((a.announce_rate for a in self.config.l2_advertisements), default=DEFAULT_RATE),
                         min((a.takeover_rate for a in self.config.l2_advertisements), default=DEFAULT_TAKEOVER_RATE))

    async def _apply(self, config: Config) -> None:
        self.config = config
        await self.apply_config()

    def running_state(self) -> RunningState:
        """The inputs of the pure pipeline as they are now (for plan and the reload refusal)."""
        return RunningState(config=self.config, node=self.config.node.name, services=self.services_now(),
                            allocations=dict(self.allocations), members=self.coordinator.members(),
                            now=time.monotonic(), eligible_since=self.coordinator.eligible_since())

    # -- lifecycle ----------------------------------------------------------

    def read_new_config(self, path: Path | None = None, uid: int | None = 0, gid: int | None = 0) -> Config:
        """A candidate config (the daemon's own file by default), validated like a reload.

        ``uid``/``gid``: who asks (over the control socket): another file is read only if
        they may read it themselves, so the socket does not become a way to read files.
        """
        target = self.config.path if path is None else path
        text = read_config_text(target, uid, gid)
        new = parse_config(text, target, validate_source=validate_source)
        if new.node.name != self.config.node.name:
            raise ConfigError([f"{target}: node.name: changing the node name needs a restart"])
        if new.node.state_dir != self.config.node.state_dir or new.node.control_socket != self.config.node.control_socket:
            log.warning("reload_ignores_paths", detail="state_dir and control_socket changes take effect on restart")
            new = replace(new, node=replace(new.node, state_dir=self.config.node.state_dir,
                                            control_socket=self.config.node.control_socket))
        return new

    async def reload(self, allow_readdress: bool = False) -> bool:
        """Re-read the config and apply it fully, or keep the running one (and everything it
        applied) and say why in ``reload_error``. Always ends with READY=1."""
        async with self._reload_lock:
            self.notifier.reloading()
            m.RELOADS.labels("attempted").inc()
            try:
                result, errors = await self._reload(allow_readdress)
            except Exception as exc:  # noqa: BLE001 - a reload must never leave systemd in RELOADING
                log.exception("reload_failed")
                result, errors = "rolled_back", [f"internal error: {type(exc).__name__}: {exc}"]
            self.last_reload = result
            self.reload_error = None if result == "applied" else errors
            m.RELOADS.labels(result).inc()
            if result == "applied":
                log.info("config_reloaded", path=str(self.config.path))
                status = "reloaded"
            else:
                for error in errors:
                    log.error(f"reload_{result}", error=error)
                log.error("reload_kept_running_config", result=result, errors=len(errors))
                status = f"reload {result.replace('_', ' ')} ({len(errors)} errors), running config kept"
            self.hooks.emit(HookEvent("reload", {"result": result, "errors": errors,
                                                 "config": str(self.config.path)}), time.time())
            self.trigger()
            self.notifier.ready(status=status)
            return result == "applied"

    async def _reload(self, allow_readdress: bool) -> tuple[str, list[str]]:
        """(result, errors): applied, rejected (invalid), refused (re-addresses) or rolled_back."""
        try:
            new = self.read_new_config()
        except ConfigError as exc:
            return "rejected", exc.errors
        allowed = allow_readdress or new.node.allow_readdress
        try:
            diff = await asyncio.to_thread(diff_configs, self.running_state(), new)
        except Exception as exc:  # noqa: BLE001 - a bug there must not block every reload for good
            log.exception("reload_plan_failed")
            if not allowed:
                return "refused", [f"could not compute what the reload would change ({type(exc).__name__}: {exc}); "
                                   "`lbd-ctl reload --allow-readdress` applies it anyway"]
            diff = PlanDiff()
        refusal = readdress_refusal(diff, allowed)
        if refusal is not None:
            return "refused", [refusal]
        for change in diff.readdressed:
            log.warning("reload_readdresses", service=change.service, change=str(change),
                        allowed_by="--allow-readdress" if allow_readdress else "[node] allow_readdress")
        error = await apply_or_rollback(self.config, new, self._apply)
        if error is not None:
            return "rolled_back", [f"{new.path}: the config is valid but could not be applied: {error}; "
                                   "the running config and its effects are kept"]
        return "applied", []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                             (signal.SIGUSR2, lambda: self.stop(restart=True)),
                             (signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))):
            loop.add_signal_handler(sig, handler)
        log.info("starting", node=self.config.node.name, config=str(self.config.path), version=lbd.__version__,
                 allocations=len(self.allocations), graceful_restart=self.graceful_restart)
        # Stalls of the loop (lbd_event_loop_lag_seconds): what peers' probes and BFD would see.
        probe = LoopLagProbe(interval=LOOP_LAG_INTERVAL, warn_after=LOOP_STALL_WARNING)
        self._tasks.append(asyncio.create_task(probe.run(), name="lbd-loop-lag"))
        try:
            await self.control.start()
            await self.apply_config()
            # Hear the cluster (bounded) before the first pass, so a restarting node does not
            # announce, for a moment, VIPs that other nodes own.
            await self.coordinator.start(self.trigger)
            await self._wait_for_sources()
            await self._interruptible_pass()
            if self._stop.is_set():
                return EXIT_RESTART if self._restarting else 0  # (finally: shutdown)
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
        if not restart and self.bgp is not None:
            # Withdraw first, here in the signal handler: routers stop sending
            # us traffic before anything else happens (see shutdown()).
            self.bgp.withdraw_all()
        self._restarting = restart
        self._stop.set()
        self._wake.set()
        running = getattr(self, "_pass", None)  # (tests build a Daemon without __init__)
        if running is not None and not running.done():
            self._interrupted = True
            running.cancel()  # a long pass must not delay the stop; shutdown() undoes its work

    def _held(self) -> tuple[str, ...]:
        """The layer-2 VIPs this node holds now (what a handover waits to see emptied)."""
        return held_vips(self.plan.l2)

    def _handover(self) -> Handover:
        """What the cluster layer may use from the daemon to leave gracefully."""
        return Handover(held=self._held, reconcile=self.reconcile, restarting=self._restarting)

    async def shutdown(self) -> None:
        self.notifier.stopping()
        for task in self._tasks:
            task.cancel()
        clustered = not isinstance(self.coordinator, LocalCoordinator)
        if self.bgp is not None and not self._restarting:
            # Withdrawal, BFD AdminDown, Cease, acknowledged by each router, all
            # before leaving the cluster and before the VIPs go (l2.close below).
            await self.bgp.close()
        try:
            await self.coordinator.leave(self._handover())
        except Exception:  # noqa: BLE001 - shutdown must go on
            log.exception("leave_failed")
        if self._restarting and not clustered:
            # The addresses keep their finite lifetime; the next lbd adopts them as its own.
            log.info("leaving_addresses_for_restart", vips=len(self.plan.l2))
        else:
            await self.l2.close()
            if getattr(self, "_interrupted", False):
                # An interrupted bind may have reached the kernel without being recorded:
                # remove every address lbd marked that close() did not know of.
                try:
                    await self.l2.cleanup_stale()
                except Exception:  # noqa: BLE001 - shutdown must go on
                    log.exception("cleanup_after_interrupt_failed")
        if not self._restarting:
            # vip_down / bgp_session_down for what stopped: after the withdrawals, which must
            # not wait for it (it walks every VIP: about a second at 100,000, issue 9).
            self.hooks.withdraw_all(time.time())
        if self._restarting:
            self.extra_state["restart_stop_at"] = time.time()
            self._extra_changed = True
        if self.bgp is not None and self._restarting:
            await self.bgp.close(graceful_restart=True)
        if self.exporter is not None:
            from lbd.kernel.routes import RT_TABLE_LOCAL

            # A restart keeps the local routes accepting BGP VIPs, as it keeps the addresses.
            await self.exporter.close(keep_tables=(RT_TABLE_LOCAL,) if self._restarting and not clustered else ())
        if self.health is not None:
            await self.health.close()
        if self.backend_checks is not None:
            await self.backend_checks.close()
        if self.forwarder is not None and not self._restarting:
            await self.forwarder.close()  # lbd's nftables tables only; a restart keeps them for the next lbd
        await self.sources.close()
        await self.coordinator.close()
        await self.control.close()
        interfaces: InterfaceInventory | None = getattr(self, "interfaces", None)  # (tests: no __init__)
        if interfaces is not None:
            interfaces.close()
        await self.netlink.aclose()
        if self._metrics_server is not None:
            self._metrics_server.close()
        await self.hook_runner.close()
        try:
            await self._final_write()
        except (OSError, StateError) as exc:
            log.error("persist_failed", error=str(exc))
        log.info("stopped")

    # -- control commands -------------------------------------------------

    async def _cmd_status(self, args: Mapping[str, Any]) -> dict[str, Any]:
        if self.forwarder is not None:
            await self.forwarder.refresh_counters()
        return self.status()

    def status(self) -> dict[str, Any]:
        return {
            "node": self.config.node.name,
            "version": lbd.__version__,
            "config": str(self.config.path),
            "started": self.started,
            "drained": self.drained,
            "reload_error": self.reload_error,
            "last_reload": self.last_reload,
            "reconcile_error": self.reconcile_error,
            "last_reconcile": self.last_reconcile,
            "pools": self._pool_rows(),
            "services": self._service_rows(),
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
            "forwarding": self.forwarder.status() if self.forwarder is not None else None,
            "sources": self.sources.status(),
            "members": self.coordinator.status(),
        }

    def _pool_rows(self) -> list[dict[str, Any]]:
        """Used and total addresses per pool and family."""
        return [
            {"name": u.pool,
             "ipv4": {"used": u.ipv4.used, "total": u.ipv4.total},
             "ipv6": {"used": u.ipv6.used, "total": u.ipv6.total}}
            for u in pool_usage(self.config.pools, self.allocations).values()
        ]

    def _service_rows(self) -> list[dict[str, Any]]:
        """One row per service known, allocated or pending, by name."""
        decisions: dict[str, list[VipDecision]] = {}
        for decision in self.plan.decisions:
            for service in decision.services:
                decisions.setdefault(service, []).append(decision)
        rows = []
        for name in sorted(set(self.services) | set(self.allocations) | set(self.pending)):
            row = self._service_row(name, decisions.get(name, []))
            if self.forwarder is not None and name in self.services and self.services[name].backends:
                self._forward_row(row, self.services[name])
            rows.append(row)
        return rows

    def _service_row(self, name: str, mine: list[VipDecision]) -> dict[str, Any]:
        """A service's addresses, owners and state ("announced" here, "standby" elsewhere,
        "not-announced", or "pending"), with the reasons of its VIPs' decisions."""
        allocation = self.allocations.get(name)
        row: dict[str, Any] = {"name": name, "addresses": [], "pool": None, "state": "pending",
                               "owner": None, "interface": None, "reason": self.pending.get(name)}
        if allocation is None:
            return row
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
        return row

    def _forward_row(self, row: dict[str, Any], spec: ServiceSpec) -> None:
        status = self.forwarder.status()
        row["forward"] = spec.forward + (" snat" if spec.snat else "")
        row["backends"] = status["services"].get(spec.name, [])
        reason = status["no_backend"].get(spec.name)
        if reason:
            action = ("VIP withdrawn from this node" if spec.on_no_backend == "withdraw"
                      else "VIP kept (on_no_backend = keep): no flow is forwarded")
            row["forward_reason"] = f"{reason}: {action}"
            row["reason"] = "; ".join(r for r in (row.get("reason"), row["forward_reason"]) if r)
        if spec.forward == "nat" and status.get("ip_forward") is False:
            row["reason"] = "; ".join(r for r in (row.get("reason"), "net.ipv4.ip_forward is 0: nat forwarding "
                                                  "cannot work on this node") if r)

    async def _cmd_bgp(self, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self.bgp.status() if self.bgp is not None else []

    async def _cmd_bfd(self, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self.bgp.bfd_status() if self.bgp is not None else []

    async def _cmd_members(self, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self.coordinator.status()

    async def _cmd_drain(self, args: Mapping[str, Any]) -> str:
        if self.drained:
            return "already drained"
        self.drained = True
        self.persist()
        await self.state_writer.flush()  # on disk before the drain is acknowledged
        self.trigger()
        moved = await self.coordinator.wait_handover(self._held)
        return f"drained: {moved}"

    async def _cmd_undrain(self, args: Mapping[str, Any]) -> str:
        if not self.drained:
            return "not drained"
        self.drained = False
        self.persist()
        await self.state_writer.flush()
        self.trigger()
        return "undrained: this node may own VIPs again"

    async def _cmd_restart(self, args: Mapping[str, Any]) -> str:
        self.stop(restart=True)
        return "stopping for a restart: BGP routes stay at graceful-restart peers until lbd is back"

    async def _cmd_reload(self, args: Mapping[str, Any]) -> str:
        if await self.reload(allow_readdress=args.get("allow_readdress") is True):
            return "reloaded"
        errors = "\n".join(self.reload_error or [])
        if self.last_reload == "rejected":
            raise ControlError("config rejected, running config kept:\n" + errors)
        raise ControlError(errors)

    async def _cmd_plan(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """What applying a config (the file on disk by default) would change; see lbd.reloadplan."""
        raw = args.get("config")
        if raw is not None and (not isinstance(raw, str) or not raw.startswith("/") or "\0" in raw):
            raise ControlError('"config" must be an absolute path')
        creds = peer_credentials.get()
        uid, gid = (creds[1], creds[2]) if creds is not None else (None, None)
        try:
            # The daemon's own file: whoever may reload may plan it; another file: only if they may read it.
            new = self.read_new_config(Path(raw), uid, gid) if raw else self.read_new_config()
        except ConfigError as exc:
            return {"valid": False, "config": raw or str(self.config.path), "errors": exc.errors}
        diff = await asyncio.to_thread(diff_configs, self.running_state(), new)
        allowed = new.node.allow_readdress
        return {"valid": True, "config": str(new.path), **diff.to_dict(),
                "reload_refused": readdress_refusal(diff, allowed) is not None}


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
        coordinator: Coordinator | None = None
        if config.cluster.enabled:
            from lbd.cluster.coordination import ClusterCoordinator

            coordinator = ClusterCoordinator(config)
        return await Daemon(config, coordinator).run()

    try:
        return runner(main())
    except StateError as exc:
        # Refuse to start rather than begin empty and later overwrite allocations.
        log.error("state_unusable", error=str(exc), state_dir=str(config.node.state_dir))
        return 1
    except (OSError, ValueError) as exc:
        log.error("fatal", error=str(exc))
        return 1
