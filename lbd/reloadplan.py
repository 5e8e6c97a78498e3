"""What applying a new config to the running daemon would change. Pure.

``diff_configs(running, new)`` runs the same pure pipeline the reconcile loop
runs (allocation, then the planner) over the daemon's running inputs
(allocations, services, members, health as gossip shows them) under the new
config. Services' addresses are compared with what they hold now (only a held
address can be taken away); VIPs, owners and BGP sessions with the same
pipeline run under the running config, with the same inputs and clock, so
every difference is the new config's doing. A config equal to the running one
(paths and service order aside) short-cuts to an empty diff.

The daemon uses it three ways: ``lbd plan`` (print the diff), the reload
refusal (a reload that would take an address away from a service that keeps
existing is refused unless the operator allows it: MetalLB users asked to be
warned instead of silently re-addressed, metallb/metallb#2449 and #660), and
``apply_or_rollback`` (a reload either fully applies or keeps the old config).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Mapping, Sequence

from lbd.ipam import AllocationResult, allocate
from lbd.config.schema import Config
from lbd.model import Allocation, IPAddress, Member, ServiceSpec, VipDecision
from lbd.planner import PlannerInput, plan
from lbd.selectors import matches

REFUSAL_SHOWN = 20  # services named in a refusal; `lbd plan` lists every one
STATIC_SOURCE = "static"  # lbd.sources.static.STATIC_NAME (not imported: keep this module free of I/O code)


@dataclass(frozen=True)
class RunningState:
    """The running daemon's inputs to the pipeline."""

    config: Config
    node: str
    services: Mapping[str, ServiceSpec]  # every source's services now (static ones from ``config``)
    allocations: Mapping[str, Allocation]
    members: Sequence[Member]
    now: float = 0.0
    eligible_since: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Readdress:
    """A service that exists before and after, and loses an address it holds."""

    service: str
    old: tuple[IPAddress, ...]
    new: tuple[IPAddress, ...]  # empty: it would be left without addresses (pending)
    reason: str

    def __str__(self) -> str:
        old = ", ".join(map(str, self.old))
        new = ", ".join(map(str, self.new)) or "no address (pending)"
        return f"{self.service}: {old} -> {new}" + (f" ({self.reason})" if self.reason else "")


@dataclass
class PlanDiff:
    readdressed: list[Readdress] = field(default_factory=list)
    allocated: list[tuple[str, tuple[IPAddress, ...]]] = field(default_factory=list)  # new or extra addresses
    released: list[tuple[str, tuple[IPAddress, ...]]] = field(default_factory=list)  # service removed
    pending: list[tuple[str, str]] = field(default_factory=list)  # new services left without an address
    vips_added: list[IPAddress] = field(default_factory=list)
    vips_withdrawn: list[IPAddress] = field(default_factory=list)
    announced_here: list[IPAddress] = field(default_factory=list)  # this node starts announcing
    unannounced_here: list[IPAddress] = field(default_factory=list)  # this node stops announcing
    owners_moved: list[tuple[IPAddress, str | None, str | None]] = field(default_factory=list)
    bgp_opened: list[str] = field(default_factory=list)
    bgp_closed: list[str] = field(default_factory=list)
    bgp_reset: list[str] = field(default_factory=list)  # peer settings change: the session restarts
    notes: list[str] = field(default_factory=list)  # other changes, and what cannot be predicted

    @property
    def changed(self) -> bool:
        return any((self.readdressed, self.allocated, self.released, self.pending, self.vips_added,
                    self.vips_withdrawn, self.announced_here, self.unannounced_here, self.owners_moved,
                    self.bgp_opened, self.bgp_closed, self.bgp_reset, self.notes))

    def to_dict(self) -> dict[str, Any]:
        def addrs(values: Sequence[IPAddress]) -> list[str]:
            return [str(a) for a in values]

        return {
            "changed": self.changed,
            "readdressed": [{"service": r.service, "old": addrs(r.old), "new": addrs(r.new), "reason": r.reason}
                            for r in self.readdressed],
            "allocated": [{"service": s, "addresses": addrs(a)} for s, a in self.allocated],
            "released": [{"service": s, "addresses": addrs(a)} for s, a in self.released],
            "pending": [{"service": s, "reason": r} for s, r in self.pending],
            "vips_added": addrs(self.vips_added),
            "vips_withdrawn": addrs(self.vips_withdrawn),
            "announced_here": addrs(self.announced_here),
            "unannounced_here": addrs(self.unannounced_here),
            "owners_moved": [{"vip": str(v), "old": o, "new": n} for v, o, n in self.owners_moved],
            "bgp_opened": list(self.bgp_opened),
            "bgp_closed": list(self.bgp_closed),
            "bgp_reset": list(self.bgp_reset),
            "notes": list(self.notes),
        }


def _source_of(service: str) -> str:
    return service.partition("/")[0]


def services_under(running: RunningState, new: Config) -> tuple[dict[str, ServiceSpec], list[str]]:
    """The services the daemon would have under ``new``, and what cannot be known yet.

    The static services come from the new file; a removed source's services go
    away; the other sources' services are what they publish now (a source whose
    settings change re-lists after the reload: its services are not predicted).
    """
    old_sources = {s.name: s for s in running.config.sources}
    new_sources = {s.name: s for s in new.sources}
    notes = []
    for name in sorted(new_sources.keys() - old_sources.keys()):
        notes.append(f"source {name!r} is added: its services are known only once it runs")
    for name in sorted(old_sources.keys() & new_sources.keys()):
        if old_sources[name] != new_sources[name]:
            notes.append(f"source {name!r} changes settings: it re-lists its services after the reload "
                         "(the plan assumes they stay the same)")
    removed = old_sources.keys() - new_sources.keys()
    for name in sorted(removed):
        notes.append(f"source {name!r} is removed: its services go away")
    services = {
        name: spec for name, spec in running.services.items()
        if _source_of(name) != STATIC_SOURCE and _source_of(name) not in removed
    }
    for spec in new.services:
        services[spec.name] = spec
    return services, notes


def allocate_for(config: Config, services: Mapping[str, ServiceSpec],
                 previous: Mapping[str, Allocation]) -> AllocationResult:
    """The allocation the (allocating) node would compute; ``Coordinator.allocate``'s rule."""
    return allocate(config.pools, list(services.values()), previous, namespaces=config.namespaces)


def _bgp_peers(config: Config, labels: Mapping[str, str]) -> dict[str, Any]:
    return {p.name: p for p in config.bgp_peers if matches(p.node_selector, labels)}


def _decisions(running: RunningState, config: Config, services: Mapping[str, ServiceSpec],
               allocations: Mapping[str, Allocation]) -> dict[IPAddress, VipDecision]:
    # This node's labels come from the config being planned (a label change moves VIPs too).
    members = [replace(m, labels=dict(config.node.labels)) if m.name == running.node else m
               for m in running.members]
    result = plan(PlannerInput(config=config, node=running.node, allocations=allocations, services=services,
                               members=members, now=running.now, eligible_since=running.eligible_since))
    return {d.vip: d for d in result.decisions}


def _ordered(vips: Any) -> list[IPAddress]:
    return sorted(vips, key=lambda a: (a.version, int(a)))


def diff_configs(running: RunningState, new: Config) -> PlanDiff:
    """What applying ``new`` to ``running`` would change."""
    out = PlanDiff()
    old = running.config
    if _settings(new, old) == _settings(old, old):
        return out  # the same inputs through the same pure pipeline: nothing can differ
    old_services = dict(running.services)
    new_services, notes = services_under(running, new)
    out.notes.extend(notes)
    before = allocate_for(old, old_services, running.allocations)
    after = allocate_for(new, new_services, running.allocations)
    _diff_allocations(out, running, old_services, new_services, before, after)
    _diff_vips(out, running, old, new, (old_services, before.allocations), (new_services, after.allocations))
    _diff_peers(out, old, new)
    if old.metrics.listen != new.metrics.listen:
        out.notes.append(f"metrics listen changes: {old.metrics.listen or 'off'} -> {new.metrics.listen or 'off'}")
    if old.hooks != new.hooks:
        out.notes.append(f"hooks change: {len(old.hooks)} -> {len(new.hooks)} hook(s)")
    if not out.changed and _settings(new, old) != _settings(old, old):
        out.notes.append("other settings change (no address, VIP or BGP session moves)")
    return out


def _diff_allocations(out: PlanDiff, running: RunningState, old_services: Mapping[str, ServiceSpec],
                      new_services: Mapping[str, ServiceSpec], before: AllocationResult,
                      after: AllocationResult) -> None:
    """Addresses released, allocated, left pending and taken away."""
    reasons = {c.service: c.reason for c in after.changes}
    # What services hold now, not what re-running the old config would give them: in a cluster
    # a node's table can hold less than its own sources know (the allocator has not allocated a
    # new service yet, or a conflict took an address away), and only a held address can be lost.
    held = {name: a for name, a in running.allocations.items() if name in old_services}
    for name in sorted(set(held) | set(after.allocations) | set(after.pending)):
        was = held.get(name)
        now = after.allocations.get(name)
        if name not in new_services:
            if was is not None:
                out.released.append((name, was.addresses))
            continue
        if was is None:
            if now is not None:
                out.allocated.append((name, now.addresses))
            elif name not in before.pending or before.pending[name] != after.pending.get(name):
                out.pending.append((name, after.pending.get(name, "not allocated")))
            continue
        if now is None:
            out.readdressed.append(Readdress(name, was.addresses, (), after.pending.get(name, reasons.get(name, ""))))
        elif not set(was.addresses) <= set(now.addresses):
            out.readdressed.append(Readdress(name, was.addresses, now.addresses, reasons.get(name, "")))
        elif now.addresses != was.addresses:
            out.allocated.append((name, tuple(a for a in now.addresses if a not in was.addresses)))


def _diff_vips(out: PlanDiff, running: RunningState, old: Config, new: Config,
               old_state: tuple[Mapping[str, ServiceSpec], Mapping[str, Allocation]],
               new_state: tuple[Mapping[str, ServiceSpec], Mapping[str, Allocation]]) -> None:
    """VIPs added and withdrawn, owners moved, and what this node starts or stops announcing;
    each state is (services, allocations)."""
    d_before = _decisions(running, old, *old_state)
    d_after = _decisions(running, new, *new_state)
    out.vips_added = _ordered(d_after.keys() - d_before.keys())
    out.vips_withdrawn = _ordered(d_before.keys() - d_after.keys())
    for vip in _ordered(d_before.keys() & d_after.keys()):
        a, b = d_before[vip], d_after[vip]
        if a.owner != b.owner:
            out.owners_moved.append((vip, a.owner, b.owner))
    here_before = {v for v, d in d_before.items() if d.announced_here}
    here_after = {v for v, d in d_after.items() if d.announced_here}
    out.announced_here = _ordered(here_after - here_before)
    out.unannounced_here = _ordered(here_before - here_after)


def _diff_peers(out: PlanDiff, old: Config, new: Config) -> None:
    """BGP sessions opened, closed and reset (a changed peer)."""
    peers_before = _bgp_peers(old, old.node.labels)
    peers_after = _bgp_peers(new, new.node.labels)
    out.bgp_opened = sorted(peers_after.keys() - peers_before.keys())
    out.bgp_closed = sorted(peers_before.keys() - peers_after.keys())
    out.bgp_reset = sorted(n for n in peers_before.keys() & peers_after.keys() if peers_before[n] != peers_after[n])


def _settings(config: Config, base: Config) -> Config:
    """``config`` without what a reload ignores (paths) or what does not matter (service order)."""
    return replace(config, path=base.path, services=tuple(sorted(config.services, key=lambda s: s.name)),
                   node=replace(config.node, state_dir=base.node.state_dir, control_socket=base.node.control_socket))


def readdress_refusal(diff: PlanDiff, allowed: bool) -> str | None:
    """Why a reload is refused (it re-addresses services and nobody allowed it), or None."""
    if allowed or not diff.readdressed:
        return None
    shown = "; ".join(str(r) for r in diff.readdressed[:REFUSAL_SHOWN])
    more = len(diff.readdressed) - REFUSAL_SHOWN
    return (f"reload refused: it would re-address {len(diff.readdressed)} service(s): {shown}"
            + (f"; and {more} more (lbd plan lists them all)" if more > 0 else "")
            + "; run `lbd-ctl reload --allow-readdress` or set [node] allow_readdress = true to apply it")


async def apply_or_rollback(old: Config, new: Config, apply: Callable[[Config], Awaitable[None]]) -> str | None:
    """Apply ``new``; if that fails, apply ``old`` again and say why (None: applied).

    Each step of ``apply`` converges idempotently to the config it is given, so
    re-applying the old config undoes whatever part of the new one had taken
    effect (a metrics listener, sources, BGP peers...).
    """
    try:
        await apply(new)
        return None
    except Exception as exc:  # noqa: BLE001 - anything that stops the apply means: roll back
        error = f"{type(exc).__name__}: {exc}"
    try:
        await apply(old)
    except Exception as exc:  # noqa: BLE001 - report both; the daemon keeps running
        error += f"; rolling back to the running config failed too: {type(exc).__name__}: {exc}"
    return error
