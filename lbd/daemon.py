"""The daemon: wiring and the level-triggered reconcile loop.

Every input (config reload, source snapshot, health flip, membership change,
a periodic timer) only marks the state dirty. One loop then recomputes the
whole desired state from the inputs (allocations -> plan) and lets each
announcer converge to it idempotently. Restarts, reloads and reconnects need
no special cases: they are just another pass.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, AbstractSet, Any, Mapping, Sequence

import structlog

from lbd import aio

import lbd
from lbd.config import ConfigError
from lbd.control import ControlError, ControlServer, Handler, peer_credentials
from lbd.coordination import Coordinator, Handover, LocalCoordinator
from lbd.delta import changed_keys
from lbd.hooks import HookDispatcher, HookEvent, HookRunner, Observation, observe
from lbd.kernel.interfaces import InterfaceInventory
from lbd.kernel.netlink import Netlink
from lbd.l2.announcer import L2Announcer
from lbd.liveconfig import merged_config
from lbd.metallb.live import ClusterDocument, attribute, changed_resources, cluster_document
from lbd.l2.pacer import DEFAULT_RATE, DEFAULT_TAKEOVER_RATE
from lbd.config.schema import Config
from lbd.model import (Allocation, Backend, BgpRoute, ExportRoute, IPAddress, Member, MemberState, Plan,
                       ServiceSpec)
from lbd.planner import PlannerInput, held_vips
from lbd.planner.batches import first_pass_batches
from lbd.planner.incremental import FULL_PASS_INTERVAL, IncrementalPlanner
from lbd.reloadplan import PlanDiff, RunningState, apply_or_rollback, diff_configs, readdress_refusal
from lbd.selectors import matches
from lbd.sdnotify import Notifier
from lbd.sources.base import ConfigOutcome, ServiceResult
from lbd.sources.manager import SourceManager
from lbd.sources.registry import validate_source
from lbd.sources.static import static_source_config
from lbd.state import PersistedState, StateError, StateStore, StateWriter
from lbd.configfile import read_config_text
from lbd.owner_changes import report_owner_changes
from lbd.restore import ghost_spec, restored_state
from lbd.status_rows import pool_rows, service_rows
from lbd.writeback import ResultBook, service_results
from lbd import metrics as m
from lbd.looplag import LoopLagProbe

if TYPE_CHECKING:
    # Optional parts, imported when the config first needs them (start-up cost, and a
    # node without BGP or forwarding never loads those packages).
    from lbd.bgp.announcer import BgpAnnouncer
    from lbd.kernel.routes import RouteExporter
    from lbd.forward.forwarder import Forwarder
    from lbd.forward.health import BackendChecker
    from lbd.forward.prefetch import TablePrefetcher
    from lbd.health import HealthChecker
    from lbd.kernel.interfaces import LocalInterface
    from lbd.metrics_server import MetricsServer

log = structlog.get_logger(__name__)

METRICS_INTERVAL = 1.0  # the gauges follow the passes at most this often (seconds)
RESYNC_INTERVAL = 10.0  # a full pass even when nothing said it changed (interfaces, lost events)
DEBOUNCE = 0.002  # coalesce a burst of triggers into one pass (in the latency of every change, issue 9)
TAKEOVER_SEND_WAIT = 1.0  # at most this long for a failover's first announcements before the full plan
LOOP_LAG_INTERVAL = 0.1  # the loop-lag probe's period: cheap, and stalls that matter are longer
LOOP_STALL_WARNING = 0.25  # log a stall this long: half memberlist's LAN probe timeout
SOURCE_START_GRACE = 2.0  # wait this long at start for every source's first snapshot
EXIT_RESTART = 75  # exit status after a stop-for-restart; the systemd unit restarts lbd on it
RESTART_WINDOW = 300.0  # a start this soon after a stop-for-restart is a graceful restart (RFC 4724)


# Live mode: the MetalLB resources last applied, per source, so that a restart starts with the
# cluster's pools (and keeps their allocations) before the API server answers. 0600: a BGPPeer
# may hold an inline password.
CLUSTER_FILE = "metallb-{source}.json"
MAX_CLUSTER_BYTES = 16 << 20


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread runs ``loop``."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


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
        self.table_prefetch: TablePrefetcher | None = None  # likewise
        self.coordinator: Coordinator = coordinator or LocalCoordinator(config.node.name)
        self.coordinator.restore(self.allocations, self.extra_state)
        # Live mode (a kubernetes source with metallb_resources = true): MetalLB's resources as
        # each such source last read them, and as last applied; the file's text as last applied,
        # which a cluster change is merged into (the file on disk waits for a reload).
        self.cluster_seen: dict[str, ClusterDocument] = {}
        self.cluster_applied: dict[str, ClusterDocument] = {}
        self._file_text: str | None = None
        self._live_rejected: str | None = None  # the source whose change the last reload rejected
        self.sources = SourceManager(
            node_name=config.node.name, state_dir=config.node.state_dir, on_change=self.trigger,
            apply_config=self.apply_cluster_config, pools_select_namespaces=self._pools_select_namespaces,
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
        self.manage_gc = False  # the first pass without the cyclic GC, then freeze (run_daemon: on)
        self._results = ResultBook()  # what the write-back hands the sources, kept per change
        self._touched: set[str] | None = None  # services re-decided since the last write-back (None: all)

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
        services = self.sources.services_copy()  # a C-speed copy, not a rebuild (issue 9)
        starting = {s["name"] for s in self.sources.status() if s.get("state") == "starting"}
        if starting:  # (only at start: not a walk of every allocation on every pass)
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
        if self._bgp_first and self.bgp is not None and not self.graceful_restart:
            await self._first_pass_batches(config, members)
        await asyncio.to_thread(self._replan, config, members)
        await self._announce(config, members)
        held_now = held_vips(self.plan.l2)
        if held_now != me.holds:
            self.coordinator.update_local(replace(me, holds=held_now))
        await self._write_back(config)
        self.last_reconcile = time.time()
        self._metrics_soon()
        if self.planner.full:
            await asyncio.to_thread(self._settle_garbage)
        try:
            # The observation (a few dicts over every VIP) off the loop; the dispatch on it.
            bgp = self.bgp.status() if self.bgp is not None else []  # the sessions live on the loop
            observed = await asyncio.to_thread(observe, self.plan.decisions, bgp, members)
        except Exception:  # noqa: BLE001 - hooks are a side channel: never fail the pass for them
            log.exception("hook_observe_failed")
        else:
            self._observe_hooks(members, observed)

    def _settle_garbage(self) -> None:
        """After a full pass: what lives now is the table (100,000 services, allocations and
        decisions, millions of objects), and will live on. Freeze it out of the cyclic
        collector, so that a change's pass never waits for a generation-2 collection walking
        all of it (hundreds of milliseconds at 100,000 services, in the middle of one change,
        issue 9). Frozen cyclic garbage is not lost for good: every later full pass (every
        FULL_PASS_INTERVAL, and config edits) unfreezes, collects everything once, and freezes
        again. Objects freed by reference counting are freed as usual."""
        if getattr(self, "_frozen", False):
            gc.unfreeze()
            gc.collect()
        gc.freeze()
        self._frozen = True

    def _metrics_soon(self) -> None:
        """Have the gauges follow this pass, at most every METRICS_INTERVAL (a task, in a worker
        thread): a pass per change at 100,000 services no longer counts every VIP each time,
        and the next change never waits for it (issue 9). Scrapes come every 15 s or so."""
        self._metrics_dirty = True
        task: asyncio.Task[None] | None = getattr(self, "_metrics_task", None)
        if task is None or task.done():
            self._metrics_task = asyncio.ensure_future(self._update_metrics())

    async def _update_metrics(self) -> None:
        while self._metrics_dirty:
            wait = getattr(self, "_metrics_at", -METRICS_INTERVAL) + METRICS_INTERVAL - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._metrics_dirty = False
            self._metrics_at = time.monotonic()
            try:
                await asyncio.to_thread(m.update, pools=self.config.pools, allocations=self.allocations,
                                        pending=self.pending, plan=self.plan, drained=self.drained)
            except Exception:  # noqa: BLE001 - metrics are a side channel: the next pass tries again
                log.exception("metrics_update_failed")

    def _allocate(self, config: Config) -> None:
        """Allocate addresses to the services the sources give now; persist what changed."""
        self.services = self.services_now()
        self._take_hints()
        # By name (no re-index), with the names the sources changed (no comparison of every service).
        result, notes = self.coordinator.allocate(config, self.services, self.allocations, changed=self._alloc_hint)
        self._alloc_hint = set()
        touched = self.coordinator.touched()
        self._plan_hint = None if touched is None or self._plan_hint is None else self._plan_hint | touched
        self._wb_hint = None if touched is None or self._wb_hint is None else self._wb_hint | touched
        for note in notes:
            log.warning("allocation_note", detail=note)
        for change in result.changes:
            log.warning("allocation_changed", service=change.service, change=str(change))
            m.ALLOCATION_CHANGES.inc()
        # Whether any allocation changed: the allocator says which (a comparison of 100,000
        # allocations otherwise, issue 9). The result is taken either way, so that the next
        # call finds its own last result (``previous is``), not an equal copy.
        differs = result.allocations != self.allocations if touched is None else bool(touched)
        self.allocations = result.allocations
        if differs or self.coordinator.state_dirty():
            self.persist()
        for name, reason in result.pending.items():
            if self.pending.get(name) != reason:
                log.warning("service_pending", service=name, reason=reason)
        self.pending = result.pending

    def _take_hints(self) -> None:
        """Add the names the sources changed since the last pass to the allocator's and the
        planner's hints (issue 9). Each hint is cleared once its consumer ran, so a pass that
        fails half-way loses nothing; None (compare everything) after a source was added or
        removed, and while stand-ins for a starting source come and go. Also None every
        FULL_PASS_INTERVAL, and whenever the services are not the sources' (their count
        differs): the level-triggered safety net covers the hints too."""
        changed = self.sources.take_changes()
        starting = any(s.get("state") == "starting" for s in self.sources.status())
        now = time.monotonic()
        stale = now - getattr(self, "_hints_since", -FULL_PASS_INTERVAL) >= FULL_PASS_INTERVAL
        if (changed is None or starting or getattr(self, "_starting", True) or stale
                or len(self.services) != len(self.sources.services_map())):
            if stale:
                self._hints_since = now
            self._alloc_hint = self._plan_hint = self._wb_hint = self._special_hint = None
        else:
            alloc, plan = getattr(self, "_alloc_hint", None), getattr(self, "_plan_hint", None)
            wb, special = getattr(self, "_wb_hint", None), getattr(self, "_special_hint", None)
            self._alloc_hint = None if alloc is None else alloc | changed
            self._plan_hint = None if plan is None else plan | changed
            self._wb_hint = None if wb is None else wb | changed
            # (the index of services with a health check or backends: not the allocator's touched ones)
            self._special_hint = None if special is None else special | changed
        self._special_hint_for = self.services
        self._starting = starting

    def _local_member(self, config: Config, interfaces: Sequence[LocalInterface], withdraw: frozenset[str]) -> Member:
        """This node as the planner and the cluster see it: labels, usable interfaces,
        drained, the services failing here (health checks, or no backend to forward to:
        ``withdraw``) and the VIPs it holds as of the last pass."""
        failing = frozenset(
            name for name, spec in self._checked_or_forwarded().items()
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

    def _planner_input(self, config: Config, members: list[Member],
                       allocations: Mapping[str, Allocation] | None = None) -> PlannerInput:
        return PlannerInput(
            config=config,
            node=config.node.name,
            allocations=self.allocations if allocations is None else allocations,
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
        if not self.planner.lost_members(members, config.node.name):
            return  # nobody died (every change's pass): no thread hand-off on its way to the UPDATE
        takeovers = await asyncio.to_thread(self.planner.takeovers, self._planner_input(config, members))
        if takeovers:
            taken = {i.vip for i in takeovers}
            await self.l2.apply([*takeovers, *(i for i in self.plan.l2 if i.vip not in taken)])
            # Their gratuitous ARPs leave from this loop: let them go before the full re-decision
            # takes the GIL in its thread (at 10,000 VIPs they trailed the binds by 0.5 s).
            await self.l2.takeovers_sent(TAKEOVER_SEND_WAIT)

    def _replan(self, config: Config, members: list[Member],
                allocations: Mapping[str, Allocation] | None = None) -> None:
        """Plan this node's intents over ``members``; log every VIP whose owner changed.

        Incremental (issue 9): only the VIPs whose inputs changed are re-decided; every
        ``FULL_PASS_INTERVAL`` seconds every VIP is, from scratch (the safety net).
        ``allocations``: a part of them (the first pass's batches); by default all."""
        self.plan = self.planner.plan(
            self._planner_input(config, members, allocations),
            # A first-pass batch plans a part of the allocations: the hint (what changed since
            # the last plan of them all) does not cover the part a batch adds, so a batch, and
            # the plan after it, compare the mappings instead.
            hint=None if allocations is not None else getattr(self, "_plan_hint", None),
        )
        self._plan_hint = None if allocations is not None else set()
        # The write-back recomputes the services these decisions list (all after a full pass).
        if self.planner.full:
            self._touched = None
        elif self._touched is not None:
            self._touched |= self.planner.touched_services()
        # Only the VIPs the incremental planner re-decided can have changed owner (O(k)).
        changes = self.planner.owner_changes()
        report_owner_changes({before.vip: before.owner for before, _ in changes}, [after for _, after in changes],
                             members)

    async def _first_pass_batches(self, config: Config, members: list[Member]) -> None:
        """The first pass at start-up plans and announces its BGP routes in growing batches of
        VIPs (256, 1,024, 4,096, ...): the first UPDATEs leave within milliseconds of the
        allocation, not after the plan of every VIP (seconds at 100,000, issue 9).

        Each batch is made of whole VIPs (``first_pass_batches``), so a VIP is decided once, on
        the inputs the full plan decides it on: a batch never announces what the full plan
        would not. The local routes accepting a batch go in before its UPDATEs (make before
        break, as in ``_announce``). Layer 2, the route export, status and hooks wait for the
        full plan, which the pass then computes and converges on as always (the incremental
        planner re-decides only the last batch): the same state as one pass."""
        batches = await asyncio.to_thread(first_pass_batches, self.allocations)
        for part in batches[:-1]:
            await asyncio.to_thread(self._replan, config, members, part)
            await self._accept_then_announce()

    async def _accept_then_announce(self) -> None:
        """The plan's local accept routes (added to those applied), then its BGP routes."""
        if self.exporter is not None:
            accept = [r for r in self.plan.exports if r.kind == "local"]
            applied = tuple(dict.fromkeys((*self._exports_applied, *accept)))
            await self.exporter.apply(list(applied))
            self._exports_applied = applied
        if self.bgp is not None:
            await self._apply_bgp(self.plan.bgp)

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
        """Hand the BGP announcer its routes. At start-up the first pass hands them over in
        growing batches (``_first_pass_batches``), never on a graceful restart: there the first
        table ends with End-of-RIB, and routers drop the stale routes it lacks."""
        assert self.bgp is not None
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
        # Only the services this pass touched are recomputed and fanned out (issue 9); all of
        # them after a full planner pass (every FULL_PASS_INTERVAL, and on config edits).
        touched, self._touched = self._touched, set()
        hint, self._wb_hint = getattr(self, "_wb_hint", None), set()
        changed = self._results.update(self.services, self.allocations, self.pending, self.plan.decisions,
                                       self.planner.decision, touched, hint)
        await self.sources.report(self._results.results, changed)

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
        """Every service's result now, from scratch (the write-back keeps them per change)."""
        return service_results(self.services, self.allocations, self.pending, self.plan.decisions)

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
        # self.allocations itself, not a copy (2 ms at 100,000 on the loop, per change): each
        # pass replaces the mapping, none changes one in place (IncrementalAllocator).
        self.state_writer.submit(PersistedState(allocations=self.allocations, drained=self.drained,
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

    def _checked_or_forwarded(self) -> Mapping[str, ServiceSpec]:
        """The services with a health check or backends, kept per change of ``self.services``
        (issue 9: three walks of every service on every pass, before the plan)."""
        index: dict[str, ServiceSpec] = getattr(self, "_special", None) or {}  # (tests: no __init__)
        seen: Mapping[str, ServiceSpec] = getattr(self, "_special_of", None) or {}
        if seen is self.services:
            return index  # asked again in the same pass
        # The names the sources changed since the index was last brought up to date (the
        # pass's hint, ``_take_hints``, if it was taken for these very services), else a
        # comparison (C speed, but O(N) on the loop before the plan: 5 ms at 100,000, issue 9).
        hint: set[str] | None = getattr(self, "_special_hint", None)
        if hint is None or not seen or getattr(self, "_special_hint_for", None) is not self.services:
            names: AbstractSet[str] = changed_keys(seen, self.services)
        else:
            names = hint
        for name in names:
            spec = self.services.get(name)
            if spec is not None and (spec.health_check is not None or spec.backends):
                index[name] = spec
            else:
                index.pop(name, None)
        # The mapping itself, not a copy: the daemon replaces self.services each pass, never changes it.
        self._special, self._special_of = index, self.services
        self._special_hint = set()  # the index is up to date with self.services
        return index

    def _configure_health(self) -> None:
        checks = {name: spec.health_check for name, spec in self._checked_or_forwarded().items()
                  if spec.health_check is not None}
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
        forwarded = {name: spec for name, spec in self._checked_or_forwarded().items() if spec.backends}
        if not forwarded and self.forwarder is None:
            return frozenset()
        from lbd.forward.forwarder import Forwarder
        from lbd.forward.health import BackendChecker
        from lbd.forward.metrics import COLLECTOR
        from lbd.forward.prefetch import TablePrefetcher
        from lbd.forward.ruleset import desired, to_withdraw

        if self.forwarder is None:
            self.forwarder = Forwarder()
            COLLECTOR.forwarder = self.forwarder
        if self.backend_checks is None:
            forwarder = self.forwarder
            self.table_prefetch = TablePrefetcher(lambda: forwarder.desired, self._backend_ahead)
            self.backend_checks = BackendChecker(on_change=self.trigger, on_near_flip=self.table_prefetch.near_flip)
        checks = self.backend_checks
        checks.set_services(forwarded)
        # In a worker thread: at 10,000 backends a changed Maglev table is tens of ms of Python,
        # which must not hold up the event loop (gossip, BGP and BFD timers).
        want = await asyncio.to_thread(
            desired, forwarded, self.allocations, lambda s, b: checks.healthy(forwarded[s], b),
            self.config.forwarding, {i.name: i.networks for i in interfaces if i.up},
            previous=self.forwarder.desired, versions=checks.version)
        try:
            await self.forwarder.apply(want)
            if self.table_prefetch is not None:
                self.table_prefetch.applied()
            if self.config.metrics.listen:  # for Prometheus; lbd-ctl status reads afresh
                await self.forwarder.refresh_counters(max_age=30.0)
        except Exception:  # noqa: BLE001 - announcing must go on; status shows the error, a later pass retries
            log.exception("forward_failed")
            asyncio.get_running_loop().call_later(1.0, self.trigger)
        return to_withdraw(want, forwarded)

    def _backend_ahead(self, service: str, backend: Backend) -> bool | None:
        spec, checks = self.services.get(service), self.backend_checks
        return None if spec is None or checks is None else checks.ahead(spec, backend)

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
        return self._candidate(read_config_text(target, uid, gid), target, self.cluster_seen)

    def _candidate(self, text: str, target: Path, clusters: Mapping[str, ClusterDocument]) -> Config:
        """The file's text merged with the cluster's resources (live mode), validated like a reload."""
        new = merged_config(text, target, list(clusters.values()), validate_source=validate_source)
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
        result, _ = await self._reload_outcome(allow_readdress)
        return result == "applied"

    async def _reload_outcome(self, allow_readdress: bool = False,
                              live: Mapping[str, ClusterDocument] | None = None) -> tuple[str, list[str]]:
        """A reload of the file (``live`` None), or of the running file with the cluster's
        resources ``live``: (result, errors)."""
        async with self._reload_lock:
            if live is None:
                self._live_rejected = None  # what the status shows is now the file's outcome
            self.notifier.reloading()
            m.RELOADS.labels("attempted").inc()
            try:
                result, errors = await self._reload(allow_readdress, live)
            except Exception as exc:  # noqa: BLE001 - a reload must never leave systemd in RELOADING
                log.exception("reload_failed")
                result, errors = "rolled_back", [f"internal error: {type(exc).__name__}: {exc}"]
            self.last_reload = result
            self.reload_error = None if result == "applied" else errors
            m.RELOADS.labels(result).inc()
            if result == "applied":
                if live is None:  # a cluster change: apply_cluster_config logs its own one line
                    log.info("config_reloaded", path=str(self.config.path))
                status = "reloaded"
            else:
                if live is None:
                    for error in errors:
                        log.error(f"reload_{result}", error=error)
                    log.error("reload_kept_running_config", result=result, errors=len(errors))
                status = f"reload {result.replace('_', ' ')} ({len(errors)} errors), running config kept"
            self.hooks.emit(HookEvent("reload", {"result": result, "errors": errors,
                                                 "config": str(self.config.path)}), time.time())
            self.trigger()
            self.notifier.ready(status=status)
            return result, errors

    async def _reload(self, allow_readdress: bool, live: Mapping[str, ClusterDocument] | None = None
                      ) -> tuple[str, list[str]]:
        """(result, errors): applied, rejected (invalid), refused (re-addresses) or rolled_back."""
        clusters = dict(self.cluster_seen if live is None else live)
        try:
            if live is None or self._file_text is None:
                text = read_config_text(self.config.path)
            else:
                text = self._file_text
            new = self._candidate(text, self.config.path, clusters)
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
        self._file_text = text
        previous, self.cluster_applied = self.cluster_applied, clusters
        self._live_rejected = None
        for name, doc in clusters.items():
            if previous.get(name) is not doc:
                await self._save_cluster(doc)
        return "applied", []

    # -- live mode: MetalLB's resources from the cluster ----------------------

    async def _save_cluster(self, doc: ClusterDocument) -> None:
        data = json.dumps({"version": 1, "namespace": doc.namespace, "objects": list(doc.objects)}).encode()
        try:
            await asyncio.to_thread(self.store.save_file, CLUSTER_FILE.format(source=doc.source), data, 0o600)
        except (OSError, TypeError, ValueError) as exc:  # the next change writes it again
            log.warning("cluster_config_not_saved", source=doc.source, error=str(exc))

    def restore_cluster_config(self) -> None:
        """At start: the MetalLB resources each live-mode source last applied, merged into the
        file as if just read from the cluster. Anything unreadable or no longer valid is left
        out (logged); the source's first listing replaces it either way."""
        for source in self.config.sources:
            if source.options.get("metallb_resources") is not True:
                continue
            name = CLUSTER_FILE.format(source=source.name)
            try:
                data = self.store.load_file(name, MAX_CLUSTER_BYTES)
                if data is None:
                    continue
                saved = json.loads(data)
                objects = [o for o in saved["objects"] if isinstance(o, dict)]
                self.cluster_seen[source.name] = cluster_document(source.name, objects, str(saved["namespace"]))
            except Exception as exc:  # noqa: BLE001 - a bad cache must not stop the start
                log.warning("cluster_config_not_restored", file=name, error=f"{type(exc).__name__}: {exc}")
        if not self.cluster_seen or self._file_text is None:
            self.cluster_seen.clear()
            return
        try:
            self.config = self._candidate(self._file_text, self.config.path, self.cluster_seen)
        except ConfigError as exc:
            log.warning("cluster_config_not_restored", errors=exc.errors)
            self.cluster_seen.clear()
            return
        self.cluster_applied = dict(self.cluster_seen)
        log.info("cluster_config_restored", sources=sorted(self.cluster_seen), pools=len(self.config.pools))

    def _pools_select_namespaces(self) -> bool:
        return any(p.service_allocation is not None and p.service_allocation.namespace_selectors
                   for p in self.config.pools)

    async def apply_cluster_config(self, source: str, objects: Sequence[Mapping[str, Any]],
                                   namespace: str) -> ConfigOutcome:
        """A live-mode source's MetalLB resources (the complete set, as now in the cluster):
        converted, merged into the running file's document, validated and applied through the
        reload path. Invalid or refused: the running config stays, and the outcome says which
        of the source's resources each error is about (the source posts Events on them)."""
        try:
            doc = cluster_document(source, objects, namespace)
        except Exception as exc:  # noqa: BLE001 - a converter bug must not restart the source in a loop
            log.exception("cluster_config_conversion_failed", source=source)
            return ConfigOutcome("rejected", (f"internal error converting MetalLB resources: {type(exc).__name__}: {exc}",))
        previous = self.cluster_seen.get(source)
        for warning in doc.warnings:
            if previous is None or warning not in previous.warnings:
                log.warning("cluster_resource_not_converted", source=source, warning=warning)
        before = list(self.cluster_applied.values())
        self.cluster_seen[source] = doc
        applied = self.cluster_applied.get(source)
        if applied is not None and applied.document == doc.document:
            # Back to what runs (an invalid edit reverted), or a change that converts to the same.
            self.cluster_applied[source] = doc
            if self._live_rejected == source:
                self._live_rejected, self.last_reload, self.reload_error = None, "applied", None
                log.info("cluster_config_current", source=source)
            return ConfigOutcome("applied", warnings=doc.warnings_by)
        # Shielded: the source's task awaits this, and a source stopped meanwhile must not cut a
        # reload half way (apply-or-roll-back finishes either way).
        result, errors = await asyncio.shield(asyncio.ensure_future(self._reload_outcome(live=dict(self.cluster_seen))))
        if result == "applied":
            log.info("cluster_config_applied", source=source, resources=len(doc.resources))
            return ConfigOutcome("applied", warnings=doc.warnings_by)
        self._live_rejected = source
        changed = changed_resources(before, [doc])
        by_resource = attribute(errors, [doc], changed)
        # One line: what was not applied, why, and which resources get the Event.
        log.error("cluster_config_not_applied", source=source, result=result, running_config="kept",
                  resources=sorted(str(r) for r in by_resource), errors=errors)
        return ConfigOutcome(result, tuple(errors), by_resource, warnings=doc.warnings_by)

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
            try:
                self._file_text = read_config_text(self.config.path)  # what live-mode changes merge into
            except (ConfigError, OSError):
                self._file_text = None  # read at the first change instead
            self.restore_cluster_config()
            async with self._reload_lock:  # a live-mode source's first apply waits for this one
                await self.apply_config()
            # Hear the cluster (bounded) before the first pass, so a restarting node does not
            # announce, for a moment, VIPs that other nodes own.
            await self.coordinator.start(self.trigger)
            await self._wait_for_sources()
            await self._first_pass()
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

    async def _first_pass(self) -> None:
        """The first pass; with ``manage_gc`` (the real process), without the cyclic garbage
        collector. Everything the start-up builds lives on (specs, allocations, the plan), yet
        each full collection walks all of it again as the heap grows: 14 collections, about
        4 s of a 100,000-service start that collected nothing (issue 9). Afterwards what start-up
        built is frozen (``gc.freeze``): later collections skip it, so they no longer stall
        the loop in proportion to the table. Refcounting still frees what is dropped later;
        only cyclic garbage alive at that moment would be kept (the start's is a few hundred
        objects)."""
        if not self.manage_gc:
            await self._interruptible_pass()
            return
        gc.disable()
        try:
            await self._interruptible_pass()
        finally:
            gc.freeze()
            gc.enable()

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

    async def _stop_linger(self, acked_at: float) -> None:
        """Keep the VIPs accepting until the routers' forwarding tables have let go of this
        node: a router acknowledges the withdrawal before its FIB changes (issue 11)."""
        from lbd.bgp.announcer import stop_linger_left

        assert self.bgp is not None
        wait = stop_linger_left(self.config.node.stop_linger, self.bgp.withdrawn_routes, acked_at, time.monotonic())
        if wait > 0:
            log.info("stop_linger", seconds=round(wait, 3), routes=self.bgp.withdrawn_routes)
            await asyncio.sleep(wait)

    async def shutdown(self) -> None:
        self.notifier.stopping()
        for task in [*self._tasks, getattr(self, "_metrics_task", None)]:
            if task is not None:
                task.cancel()
        clustered = not isinstance(self.coordinator, LocalCoordinator)
        acked_at: float | None = None
        if self.bgp is not None and not self._restarting:
            # Withdrawal, BFD AdminDown, Cease, acknowledged by each router, all
            # before leaving the cluster and before the VIPs go (l2.close below).
            await self.bgp.close()
            acked_at = time.monotonic()
        try:
            await self.coordinator.leave(self._handover())
        except Exception:  # noqa: BLE001 - shutdown must go on
            log.exception("leave_failed")
        if acked_at is not None:
            await self._stop_linger(acked_at)
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
        prefetcher: TablePrefetcher | None = getattr(self, "table_prefetch", None)  # (tests: no __init__)
        if prefetcher is not None:
            await prefetcher.close()
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
            "pools": pool_rows(self.config.pools, self.allocations),
            "services": service_rows(self.services, self.allocations, self.pending, self.plan.decisions,
                                     self.forwarder.status() if self.forwarder is not None else None),
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
    from lbd.memtune import tune_malloc

    setup_logging(config.log)
    tune_malloc()  # big tables mapped on their own: no heap holes left by their resizes (issue 9)
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
        daemon = Daemon(config, coordinator)
        daemon.manage_gc = True
        return await daemon.run()

    # The validated config (100,000 services: a million objects) lives until a reload: out of
    # the cyclic collector's walks (see Daemon._first_pass).
    gc.freeze()

    try:
        return runner(main())
    except StateError as exc:
        # Refuse to start rather than begin empty and later overwrite allocations.
        log.error("state_unusable", error=str(exc), state_dir=str(config.node.state_dir))
        return 1
    except (OSError, ValueError) as exc:
        log.error("fatal", error=str(exc))
        return 1
