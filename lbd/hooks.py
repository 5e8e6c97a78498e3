"""Notify hooks: run operator commands on events (keepalived's notify scripts).

Two halves, as everywhere in lbd:

* ``transitions(previous, current)`` is pure: it compares two observations of
  the level-triggered state (VIPs announced here, owners, BGP sessions,
  members) and returns one event per transition. Events are derived from the
  state the reconcile loop converged to, never from the path it took, so a
  flap shorter than a pass fires nothing and a transition fires exactly once.
  ``HookDispatcher`` keeps the previous observation and hands each event to
  the hooks that subscribe to it.
* ``HookRunner`` runs the commands: ``exec`` argv without a shell, the event
  as JSON on stdin and as ``LBD_*`` environment variables, in its own process
  group killed at the hook's ``timeout``; at most ``max_running`` at once and
  ``max_queued`` waiting, beyond which events are dropped and counted. It
  never blocks the daemon: ``submit`` only queues.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass, field
from itertools import compress, count
from operator import is_not
from typing import Any, Callable, Iterator, Mapping, Sequence

import structlog

from lbd.config.hooks import HOOK_EVENTS
from lbd.config.schema import HookConfig
from lbd.metrics import HOOK_DROPPED as DROPPED
from lbd.metrics import HOOK_QUEUED as QUEUED
from lbd.metrics import HOOK_RUNS as RUNS
from lbd.model import Member, MemberState, VipDecision

log = structlog.get_logger(__name__)

EVENTS = HOOK_EVENTS
MAX_RUNNING = 4  # hooks running at once
MAX_QUEUED = 256  # hook runs waiting for a slot; beyond, events are dropped (and counted)
OUTPUT_KEPT = 2048  # bytes of a hook's output kept for the log
HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ---------------------------------------------------------------------------
# Events from the state diff (pure)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VipHere:
    services: tuple[str, ...]
    interface: str | None
    modes: tuple[str, ...]
    pool: str


class _FromDecisions(Mapping[str, Any]):
    """One of an observation's per-VIP maps, built from the plan's decisions on first use.

    A pass whose events ``transitions`` finds from the changed decisions alone (issue 9)
    never builds it: at 100,000 VIPs that is most of the cost of observing."""

    def __init__(self, decisions: tuple[VipDecision, ...], build: Callable[[tuple[VipDecision, ...]], dict[str, Any]]):
        self._decisions = decisions
        self._build = build
        self._map: dict[str, Any] | None = None

    def _get(self) -> dict[str, Any]:
        if self._map is None:
            self._map = self._build(self._decisions)
        return self._map

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return repr(self._get())


def _vips_here(decisions: tuple[VipDecision, ...]) -> dict[str, VipHere]:
    return {str(d.vip): _here(d) for d in decisions if d.announced_here}


def _here(d: VipDecision) -> VipHere:
    return VipHere(tuple(d.services), d.interface, tuple(d.modes), d.pool)


def _owners(decisions: tuple[VipDecision, ...]) -> dict[str, str | None]:
    return {str(d.vip): d.owner for d in decisions}


def _vip_services(decisions: tuple[VipDecision, ...]) -> dict[str, tuple[str, ...]]:
    return {str(d.vip): tuple(d.services) for d in decisions}


@dataclass(frozen=True)
class Observation:
    """What events derive from, as of one reconcile pass."""

    vips_here: Mapping[str, VipHere] = field(default_factory=dict)  # VIP -> how this node announces it
    owners: Mapping[str, str | None] = field(default_factory=dict)  # VIP -> layer-2 owner
    vip_services: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    bgp: Mapping[str, tuple[bool, str]] = field(default_factory=dict)  # peer -> (established, address)
    members: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # name -> (state, address)
    # The plan's decisions the three maps above derive from (``observe``); None when given as maps.
    decisions: tuple[VipDecision, ...] | None = field(default=None, compare=False, repr=False)


def observe(decisions: Sequence[VipDecision], bgp_status: Sequence[Mapping[str, Any]],
            members: Sequence[Member]) -> Observation:
    """The observation of a converged pass: the plan, BGP session states, members."""
    ds = tuple(decisions)
    return Observation(
        vips_here=_FromDecisions(ds, _vips_here),
        owners=_FromDecisions(ds, _owners),
        vip_services=_FromDecisions(ds, _vip_services),
        bgp={str(p.get("name")): (str(p.get("state", "")).lower() == "established", str(p.get("address", "")))
             for p in bgp_status},
        members={m.name: (m.state.value, m.address) for m in members},
        decisions=ds,
    )


@dataclass(frozen=True)
class HookEvent:
    event: str
    fields: Mapping[str, Any]


_IN = (MemberState.ALIVE.value, MemberState.SUSPECT.value)  # a suspect member has not left (yet)


def transitions(previous: Observation | None, current: Observation) -> list[HookEvent]:
    """One event per transition between two observations.

    The first observation (``previous`` None) fires ``vip_up`` and
    ``bgp_session_up`` for what is already up (keepalived's notify on
    entering MASTER at start) and is the baseline for owners and members.
    """
    first = previous is None
    prev = previous or Observation()
    if prev.decisions is not None and current.decisions is not None:
        out = _vip_transitions(prev.decisions, current.decisions)
    else:
        out = _vip_transitions_of_maps(prev, current, first)
    out += _session_and_member_transitions(prev, current, first)
    return out


def _vip_transitions(previous: tuple[VipDecision, ...], current: tuple[VipDecision, ...]) -> list[HookEvent]:
    """``_vip_transitions_of_maps`` of two plans' decisions, looking only at the decisions that
    changed: the planner keeps an unchanged VIP's decision (the same object) from pass to pass,
    so a change of k VIPs costs work in proportion to k plus a C-speed pass over the ids."""
    if previous is current:
        return []
    # Decisions are in VIP order: skip the common prefix and suffix of identical objects (C-speed
    # iterators, no __eq__), then diff the window between them by identity.
    head = next(compress(count(), map(is_not, previous, current)), min(len(previous), len(current)))
    tail = next(compress(count(), map(is_not, reversed(previous), reversed(current))), 0)
    tail = min(tail, len(previous) - head, len(current) - head)
    previous, current = previous[head:len(previous) - tail], current[head:len(current) - tail]
    before_ids = dict(zip(map(id, previous), previous))
    after_ids = dict(zip(map(id, current), current))
    before = {str(d.vip): d for d in map(before_ids.__getitem__, before_ids.keys() - after_ids.keys())}
    after = {str(d.vip): d for d in map(after_ids.__getitem__, after_ids.keys() - before_ids.keys())}
    down, up, owners = [], [], []
    for vip in before.keys() | after.keys():
        old, new = before.get(vip), after.get(vip)
        was_here = old is not None and old.announced_here
        is_here = new is not None and new.announced_here
        if was_here and not is_here:
            down.append(vip)
        elif is_here and not was_here:
            up.append(vip)
        if old is not None and new is not None and old.owner != new.owner:
            owners.append(vip)
    out = [_vip_event("vip_down", vip, _here(before[vip])) for vip in sorted(down)]
    out += [_vip_event("vip_up", vip, _here(after[vip])) for vip in sorted(up)]
    out += [_owner_event(vip, tuple(after[vip].services), before[vip].owner, after[vip].owner) for vip in sorted(owners)]
    return out


def _vip_event(event: str, vip: str, v: VipHere) -> HookEvent:
    return HookEvent(event, {"vip": vip, "services": list(v.services), "interface": v.interface,
                             "modes": list(v.modes), "pool": v.pool})


def _owner_event(vip: str, services: tuple[str, ...], old: str | None, new: str | None) -> HookEvent:
    return HookEvent("owner_changed", {"vip": vip, "services": list(services), "old_owner": old, "new_owner": new})


def _vip_transitions_of_maps(prev: Observation, current: Observation, first: bool) -> list[HookEvent]:
    out: list[HookEvent] = []
    for vip in sorted(prev.vips_here.keys() - current.vips_here.keys()):
        out.append(_vip_event("vip_down", vip, prev.vips_here[vip]))
    for vip in sorted(current.vips_here.keys() - prev.vips_here.keys()):
        out.append(_vip_event("vip_up", vip, current.vips_here[vip]))
    if not first:
        for vip in sorted(prev.owners.keys() & current.owners.keys()):
            old, new = prev.owners[vip], current.owners[vip]
            if old != new:
                out.append(_owner_event(vip, current.vip_services.get(vip, ()), old, new))
    return out


def _session_and_member_transitions(prev: Observation, current: Observation, first: bool) -> list[HookEvent]:
    out: list[HookEvent] = []
    for peer in sorted(set(prev.bgp) | set(current.bgp)):
        was = prev.bgp.get(peer, (False, ""))
        now = current.bgp.get(peer, (False, was[1]))
        if was[0] != now[0]:
            out.append(HookEvent("bgp_session_up" if now[0] else "bgp_session_down",
                                 {"peer": peer, "peer_address": now[1] or was[1]}))
    if not first:
        for name in sorted(set(prev.members) | set(current.members)):
            was_in = prev.members.get(name, ("", ""))[0] in _IN
            state, address = current.members.get(name, ("left", prev.members.get(name, ("", ""))[1]))
            if was_in != (state in _IN):
                out.append(HookEvent("member_joined" if state in _IN else "member_left",
                                     {"member": name, "member_address": address, "member_state": state}))
    return out


def payload(event: HookEvent, node: str, now: float) -> dict[str, Any]:
    return {"event": event.event, "node": node, "time": now, **event.fields}


def environment(body: Mapping[str, Any]) -> dict[str, str]:
    """``LBD_<FIELD>`` for each field (lists comma-joined), plus ``LBD_SERVICE`` and a fixed PATH.

    The daemon's own environment is not passed on: a hook sees the same
    variables whether lbd runs under systemd or by hand.
    """
    env = {"PATH": HOOK_PATH, "LANG": "C.UTF-8"}
    for key, value in body.items():
        if value is None:
            text = ""
        elif isinstance(value, (list, tuple)):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        env["LBD_" + key.upper()] = text.replace("\0", "")
    if "services" in body:
        env["LBD_SERVICE"] = env["LBD_SERVICES"]
    return env


class HookDispatcher:
    """Keeps the previous observation; hands each event to the hooks subscribed to it."""

    def __init__(self, hooks: Sequence[HookConfig], node: str,
                 submit: Callable[[HookConfig, dict[str, Any]], bool]) -> None:
        self.hooks = tuple(hooks)
        self.node = node
        self._submit = submit
        self._previous: Observation | None = None

    def set_hooks(self, hooks: Sequence[HookConfig]) -> None:
        self.hooks = tuple(hooks)

    def observe(self, current: Observation, now: float) -> list[HookEvent]:
        if not self.hooks:
            # Nobody listens: keep the baseline, find no events. The first pass's transitions
            # are a vip_up per VIP over a map of every VIP (100,000 at start-up, issue 9); a
            # hook configured later hears the transitions from this baseline on.
            self._previous = current
            return []
        events = transitions(self._previous, current)
        self._previous = current
        for event in events:
            self.emit(event, now)
        return events

    def withdraw_all(self, now: float) -> list[HookEvent]:
        """At stop: every VIP announced here goes down, every session closes (members stay)."""
        if self._previous is None:
            return []
        current = Observation(owners=self._previous.owners, vip_services=self._previous.vip_services,
                              bgp={p: (False, a) for p, (_, a) in self._previous.bgp.items()},
                              members=self._previous.members)
        return self.observe(current, now)

    def emit(self, event: HookEvent, now: float) -> None:
        for hook in self.hooks:
            if event.event in hook.on:
                self._submit(hook, payload(event, self.node, now))


# ---------------------------------------------------------------------------
# Running the commands (asyncio)
# ---------------------------------------------------------------------------


class HookRunner:
    def __init__(self, max_running: int = MAX_RUNNING, max_queued: int = MAX_QUEUED) -> None:
        self.max_running = max_running
        self._queue: asyncio.Queue[tuple[HookConfig, dict[str, Any]]] = asyncio.Queue(max_queued)
        self._workers: list[asyncio.Task[None]] = []
        self._procs: set[asyncio.subprocess.Process] = set()
        self._closing = False

    def submit(self, hook: HookConfig, body: dict[str, Any]) -> bool:
        """Queue one run; False (and counted) when the queue is full. Never blocks."""
        if self._closing:
            return False
        try:
            self._queue.put_nowait((hook, body))
        except asyncio.QueueFull:
            DROPPED.labels(hook.name).inc()
            log.warning("hook_dropped", hook=hook.name, hook_event=body.get("event"),
                        detail=f"{self._queue.qsize()} runs already queued")
            return False
        QUEUED.set(self._queue.qsize())
        if len(self._workers) < self.max_running:
            self._workers.append(asyncio.ensure_future(self._work()))
        return True

    async def _work(self) -> None:
        while True:
            hook, body = await self._queue.get()
            QUEUED.set(self._queue.qsize())
            try:
                await self.run(hook, body)
            except Exception:  # noqa: BLE001 - a runner bug must not stop the other hooks
                RUNS.labels(hook.name, "error").inc()
                log.exception("hook_run_failed", hook=hook.name)
            finally:
                self._queue.task_done()

    async def run(self, hook: HookConfig, body: dict[str, Any]) -> str:
        """Run ``hook`` once with ``body``; the result: ok, failed, timeout or error."""
        started = time.monotonic()
        event = body.get("event")
        try:
            proc = await asyncio.create_subprocess_exec(
                *hook.exec, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=environment(body), cwd="/",
                start_new_session=True,  # its own process group: the timeout kills every child too
            )
        except OSError as exc:
            RUNS.labels(hook.name, "error").inc()
            log.error("hook_failed", hook=hook.name, hook_event=event, error=str(exc))
            return "error"
        self._procs.add(proc)
        kept = bytearray()

        async def feed_and_read() -> None:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(body, default=str).encode() + b"\n")
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # a hook may ignore stdin
            finally:
                proc.stdin.close()
            while chunk := await proc.stdout.read(65536):
                if len(kept) < OUTPUT_KEPT:
                    kept.extend(chunk[:OUTPUT_KEPT - len(kept)])
            await proc.wait()

        try:
            await asyncio.wait_for(feed_and_read(), hook.timeout)
        except asyncio.TimeoutError:
            self._kill(proc)
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except asyncio.TimeoutError:
                pass
            RUNS.labels(hook.name, "timeout").inc()
            log.error("hook_timeout", hook=hook.name, hook_event=event, timeout=hook.timeout,
                      output=kept.decode(errors="replace"))
            return "timeout"
        finally:
            self._procs.discard(proc)
        elapsed = round(time.monotonic() - started, 3)
        output = kept.decode(errors="replace")
        if proc.returncode == 0:
            RUNS.labels(hook.name, "ok").inc()
            log.info("hook_ran", hook=hook.name, hook_event=event, seconds=elapsed, output=output)
            return "ok"
        RUNS.labels(hook.name, "failed").inc()
        log.error("hook_failed", hook=hook.name, hook_event=event, status=proc.returncode, seconds=elapsed,
                  output=output)
        return "failed"

    @staticmethod
    def _kill(proc: asyncio.subprocess.Process) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    async def close(self, grace: float = 5.0) -> None:
        """Let queued and running hooks finish for up to ``grace`` seconds, then kill what is left."""
        if self._workers:
            try:
                await asyncio.wait_for(self._queue.join(), grace)
            except asyncio.TimeoutError:
                log.warning("hooks_cut_short", running=len(self._procs), queued=self._queue.qsize())
        self._closing = True
        while not self._queue.empty():  # nothing new starts
            self._queue.get_nowait()
            self._queue.task_done()
        for proc in list(self._procs):
            self._kill(proc)
        try:  # the killed runs end on their own (and close their pipes)
            await asyncio.wait_for(self._queue.join(), 2.0)
        except asyncio.TimeoutError:
            pass
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
