"""``plan`` kept up to date across reconcile passes: a change touching k VIPs costs work in
proportion to k, not to the table (issue 9).

``IncrementalPlanner.plan(inp)`` returns what ``plan(inp)`` would, re-deciding only the VIPs
whose inputs changed since the previous call:

- a service whose allocation or spec changed: the VIPs it held and holds;
- a member whose ``holds`` changed: the VIPs it started or stopped holding (the election's
  holders, make-before-break);
- a member whose ``failing`` changed: the VIPs of the services that started or stopped failing;
- VIPs whose layer-2 election depends on the clock (``Election.timed``: a failback window),
  on every call, as ``now`` moves.

Another member joining, leaving, or changing state, drain, labels or interfaces re-decides the
VIPs an ``l2_advertisement`` covers (every layer-2 decision lists every eligible member and
every refusal, so it does touch each of them); BGP and route export read this node's own
entry only. Anything else the planner reads (the node's name, this node's own entry, the
advertisements, peers, route exports, pool labels, the failback delay) re-decides every VIP. ``full=True`` does the same on
demand, and so does every call ``full_every`` seconds (of ``PlannerInput.now``) after the
last full one: the level-triggered safety net the daemon keeps (``FULL_PASS_INTERVAL``).

One precondition, met by both coordinators (they hand allocations over in name order): a VIP
bound locally without being announced lists its services by name, where ``plan`` lists them
in the order of ``inp.allocations``.
"""

from __future__ import annotations

import bisect
import ipaddress
from itertools import chain
from typing import AbstractSet, Generic, Hashable, Iterable, TypeVar

from lbd.delta import changed_keys
from lbd.model import (Allocation, ExportRoute, IPAddress, L2Intent, L2Mode, Member, MemberState, Plan, ServiceSpec,
                       VipDecision)
from lbd.planner import decide_vip, vip_input, vip_order, VipOutcome
from lbd.planner.bgp import RouteMerge
from lbd.planner.export import LocalRouteCover
from lbd.planner.inputs import NodeView, PlannerInput

__all__ = ["FULL_PASS_INTERVAL", "IncrementalPlanner"]

# The daemon re-decides every VIP from scratch at least this often (seconds), whatever changed:
# should an input escape the change tracking, the plan converges anyway.
FULL_PASS_INTERVAL = 300.0

V = TypeVar("V")


class _Ordered(Generic[V]):
    """Values kept in key order; one change is a bisect and a list insert, and ``values``
    copies at C speed (the plan's tuples are rebuilt from these on every change)."""

    def __init__(self) -> None:
        self._keys: list[tuple[int, int]] = []
        self._values: list[V] = []

    def set(self, key: tuple[int, int], value: V) -> None:
        if not self._keys or key > self._keys[-1]:  # a full pass sets keys in order
            self._keys.append(key)
            self._values.append(value)
            return
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            self._values[i] = value
        else:
            self._keys.insert(i, key)
            self._values.insert(i, value)

    def discard(self, key: tuple[int, int]) -> None:
        i = bisect.bisect_left(self._keys, key)
        if i < len(self._keys) and self._keys[i] == key:
            del self._keys[i], self._values[i]

    def values(self) -> list[V]:
        return self._values


def _parse_vip(text: object) -> IPAddress | None:
    """A VIP named in a member's ``holds``, or None (not an address: gossip is hostile input)."""
    if not isinstance(text, str):
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _scope(inp: PlannerInput) -> tuple[Hashable, ...]:
    """Everything the planners read from the config (and the node's name): a change re-decides
    every VIP."""
    config = inp.config
    return (inp.node, config.l2_advertisements, config.bgp_advertisements, config.route_exports, config.bgp_peers,
            tuple((p.name, tuple(sorted(p.labels.items()))) for p in config.pools), config.cluster.failback_delay)


def _shape(member: Member) -> tuple[object, ...]:
    """What the planners read of a member, besides ``holds`` and ``failing`` (followed per VIP)."""
    return (member.name, member.state, member.drained, member.labels, member.interfaces)


def _own_shape(inp: PlannerInput) -> tuple[object, ...] | None:
    """This node's own shape as ``NodeView`` finds it (the last entry of its name), or None."""
    mine = [m for m in inp.members if m.name == inp.node]
    return _shape(mine[-1]) if mine else None


def _put(mapping: dict[str, V], name: str, value: V | None) -> None:
    """``mapping[name] = value``, or no entry for None."""
    if value is None:
        mapping.pop(name, None)
    else:
        mapping[name] = value


def _differs(was: object, now: object) -> bool:
    return was is not now and (was is None or now is None or was != now)


class IncrementalPlanner:
    """The last ``plan`` and the indexes that let the next one re-decide only changed VIPs."""

    def __init__(self, full_every: float | None = None) -> None:
        self.full_every = full_every
        self._last_full: float | None = None
        self.previous: dict[IPAddress, VipDecision] = {}  # the last call's re-decided VIPs, as they were
        self._reset()

    def _reset(self) -> None:
        self._scope: tuple[Hashable, ...] | None = None
        self._shapes: tuple[tuple[object, ...], ...] | None = None
        self._members: dict[str, Member] = {}
        self._allocations: dict[str, Allocation] = {}
        self._services: dict[str, ServiceSpec] = {}
        # VIP -> the services allocated it is its decision's ``services`` (a VIP with services has
        # an outcome): no index of its own, one dict of 100,000 less (issue 9). Within a call,
        # the VIPs whose holders _reindex changed have them here until _redecide takes them.
        self._holders_now: dict[IPAddress, tuple[str, ...]] = {}
        self._outcomes: dict[IPAddress, VipOutcome] = {}
        self._timed: set[IPAddress] = set()
        self._l2: set[IPAddress] = set()  # VIPs an l2_advertisement covers: every member is a candidate
        self._me: tuple[object, ...] | None = None  # this node's own shape
        self._decisions: _Ordered[VipDecision] = _Ordered()
        self._announced: _Ordered[L2Intent] = _Ordered()
        self._local_binds: _Ordered[L2Intent] = _Ordered()
        self._exports: _Ordered[tuple[ExportRoute, ...]] = _Ordered()
        self._routes = RouteMerge()
        self._cover = LocalRouteCover()
        self._plan = Plan()
        self.changed: frozenset[IPAddress] = frozenset()  # VIPs re-decided by the last call
        self.full = True  # whether the last call re-decided everything

    def plan(self, inp: PlannerInput, *, full: bool = False, hint: AbstractSet[str] | None = None) -> Plan:
        """``plan(inp)``, re-deciding only the VIPs whose inputs changed (all with ``full``).

        ``hint``: the services whose allocation or spec may differ from the last call's (a
        superset, known to the caller from its sources' deltas and the allocator); None:
        found by comparing the mappings (C speed, but O(N))."""
        scope = _scope(inp)
        shapes = tuple(_shape(m) for m in inp.members)
        me = _own_shape(inp)
        due = self.full_every is not None and (self._last_full is None or inp.now - self._last_full >= self.full_every)
        # Another member joining, leaving or changing touches layer 2's elections only: BGP and
        # route export read this node's own entry alone.
        others_changed = shapes != self._shapes
        if full or due or scope != self._scope or (others_changed and me != self._me):
            self._last_full = inp.now
            before = {vip: outcome.decision for vip, outcome in self._outcomes.items()}
            self._reset()
            self.previous = before
            self._scope, self._shapes, self._me = scope, shapes, me
            full = True
        else:
            self.previous = {}
        dirty = self._reindex(inp, full, hint)
        if others_changed and not full:
            dirty |= self._l2
            self._shapes = shapes
        view = NodeView.of(inp)
        self._members = dict(view.members)
        for vip in sorted(dirty, key=vip_order):  # in order: a full pass appends, never inserts
            outcome = self._outcomes.get(vip)
            if outcome is not None:
                self.previous[vip] = outcome.decision
            self._redecide(view, vip)
        self._holders_now = {}  # every VIP in it was dirty, so re-decided: taken already
        self.changed, self.full = frozenset(dirty), full
        if dirty:
            self._plan = Plan(
                l2=tuple(self._announced.values() + self._local_binds.values()),
                bgp=self._routes.table(),
                exports=tuple(chain(chain.from_iterable(self._exports.values()), self._cover.routes())),
                decisions=tuple(self._decisions.values()),
            )
        return self._plan

    def decision(self, vip: IPAddress) -> VipDecision | None:
        """The current decision of ``vip`` (None: not allocated to anyone)."""
        outcome = self._outcomes.get(vip)
        return outcome.decision if outcome is not None else None

    def touched_services(self) -> set[str]:
        """The services listed by the decisions the last call re-decided, before and after."""
        names: set[str] = set()
        for vip in self.changed:
            for decision in (self.previous.get(vip), self.decision(vip)):
                if decision is not None:
                    names.update(decision.services)
        return names

    def takeovers(self, inp: PlannerInput) -> list[L2Intent]:
        """The layer-2 VIPs this node must announce now because their owner in the last plan,
        or a member holding them (its ``holds``, in the last plan's view or in ``inp``'s), is
        no longer alive in ``inp``: a failover's part of the next ``plan(inp)``, decided alone
        (issue 9).

        The holders matter after a flap or a stalled loop: the last plan may be older than
        the gossip, and name another owner for VIPs the dead member had taken back since (a
        10,000-VIP failover left 50 such VIPs to the full plan, 0.85 s later). ``holds`` is
        what each member says it announces: the VIPs that answer nowhere now.

        A member's death changes every layer-2 decision (each lists the eligible members), so
        ``plan`` re-decides them all: about a second at 10,000 VIPs, while the dead node's VIPs
        answer nowhere. This decides only the VIPs the dead members owned, from the same inputs
        and with the same functions, so the intents are those ``plan(inp)`` will give; the daemon
        applies them first, then plans in full. Read-only (the next ``plan`` call is unchanged).
        Empty when nothing died, when no plan was made yet, when the config scope changed or for
        VIPs whose services changed since (``plan`` decides those)."""
        if not self._members or _scope(inp) != self._scope:
            return []
        lost = self.lost_members(inp.members, inp.node)
        if not lost:
            return []
        # VIPs of services changed since the last plan are left to ``plan`` (at C speed when
        # nothing changed: the mappings are the very same objects).
        changed: set[IPAddress] = set()
        for name in changed_keys(self._allocations, inp.allocations) | changed_keys(self._services, inp.services):
            for allocation in (self._allocations.get(name), inp.allocations.get(name)):
                changed.update(allocation.addresses if allocation is not None else ())
        held = self._held_by(lost, inp.members)
        view = NodeView.of(inp)
        out: list[L2Intent] = []
        for vip, outcome in self._outcomes.items():
            if (outcome.decision.owner not in lost and vip not in held) or vip in changed:
                continue
            names = outcome.decision.services
            if not names:
                continue
            decided = decide_vip(view, vip_input(vip, [self._allocations[n] for n in names], self._services))
            if decided.announced is not None:
                out.append(decided.announced)
        return out

    def lost_members(self, members: Iterable[Member], node: str) -> set[str]:
        """The members alive in the last plan's view and not alive in ``members`` (``node``
        aside): what ``takeovers`` acts on. O(members): the daemon asks it on the loop, and
        hands ``takeovers`` to a thread only when someone died."""
        now_alive = {m.name for m in members if m.state == MemberState.ALIVE}
        return {name for name, m in self._members.items()
                if m.state == MemberState.ALIVE and name not in now_alive and name != node}

    def _held_by(self, lost: AbstractSet[str], members: Iterable[Member]) -> set[IPAddress]:
        """The allocated VIPs that the ``lost`` members hold, as the last plan's view and
        ``members`` say (a dead member's last ``holds`` stay in gossip). Parsed for these
        members only: a few thousand strings at 10,000 VIPs, once per failover."""
        texts: set[object] = set()
        for member in chain(self._members.values(), members):
            if member.name in lost:
                texts.update(member.holds)
        held = set()
        for text in texts:
            vip = _parse_vip(text)
            if vip is not None and vip in self._outcomes:  # allocated (an outcome lists its services)
                held.add(vip)
        return held

    def plan_so_far(self) -> Plan:
        """The plan the last ``plan`` call returned."""
        return self._plan

    def owner_changes(self) -> list[tuple[VipDecision, VipDecision]]:
        """(before, after) of every VIP whose layer-2 owner the last call changed, in VIP order."""
        changes = []
        for vip in sorted(self.changed, key=vip_order):
            before, after = self.previous.get(vip), self._outcomes.get(vip)
            if before is not None and after is not None and before.owner != after.decision.owner:
                changes.append((before, after.decision))
        return changes

    def _reindex(self, inp: PlannerInput, full: bool, hint: AbstractSet[str] | None = None) -> set[IPAddress]:
        """Update the indexes to ``inp``; return the VIPs to re-decide.

        With a hint, the planner's own mappings are updated in place for the hinted names
        alone: outside the hint the caller's mappings equal them (the hint's contract), and
        two copies of 100,000 entries cost 17 ms per change (issue 9)."""
        if full or hint is None:
            allocations = given_allocations = dict(inp.allocations)
            services = dict(inp.services)
            if full:
                names = set(allocations)
            else:
                names = changed_keys(self._allocations, allocations) | changed_keys(self._services, services)
        else:  # changed_keys of both mappings over the hinted names alone
            allocations, services = self._allocations, self._services
            given_allocations, given_services = inp.allocations, inp.services
            names = {name for name in hint
                     if _differs(allocations.get(name), given_allocations.get(name))
                     or _differs(services.get(name), given_services.get(name))}
        dirty: set[IPAddress] = set(self._timed)
        for name in names:
            old = self._allocations.get(name)
            new = given_allocations.get(name)
            for vip in old.addresses if old is not None else ():
                dirty.add(vip)
                holders = self._holders(vip)
                if name in holders:
                    self._holders_now[vip] = tuple(n for n in holders if n != name)
            for vip in new.addresses if new is not None else ():
                dirty.add(vip)
                holders = self._holders(vip)
                if name not in holders:
                    self._holders_now[vip] = (*holders, name)
        if allocations is self._allocations:  # hinted: the changed names alone, in place
            for name in names:
                _put(allocations, name, given_allocations.get(name))
                _put(services, name, given_services.get(name))
        self._allocations, self._services = allocations, services
        if not full:
            dirty |= self._member_changes(inp.members)
        return dirty

    def _holders(self, vip: IPAddress) -> tuple[str, ...]:
        """The services allocated ``vip`` (as changed so far in this call)."""
        names = self._holders_now.get(vip)
        if names is not None:
            return names
        outcome = self._outcomes.get(vip)
        return outcome.decision.services if outcome is not None else ()

    def _member_changes(self, members: Iterable[Member]) -> set[IPAddress]:
        """The VIPs touched by members' ``holds`` and ``failing`` (their shapes are unchanged)."""
        dirty: set[IPAddress] = set()
        for member in members:
            before = self._members.get(member.name)
            if before is None or before is member:
                continue
            if before.holds != member.holds:
                for text in set(before.holds).symmetric_difference(member.holds):
                    # Parsed here, for the few that changed: an index of every VIP's text cost
                    # a string per VIP and str() of each in a full pass (issue 9).
                    vip = _parse_vip(text)
                    if vip is not None and self._holders(vip):
                        dirty.add(vip)
            if before.failing != member.failing:
                for name in before.failing.symmetric_difference(member.failing):
                    allocation = self._allocations.get(name)
                    dirty.update(allocation.addresses if allocation is not None else ())
        return dirty

    def _redecide(self, view: NodeView, vip: IPAddress) -> None:
        """Decide ``vip`` again and put its parts in the plan (or take them out: no longer allocated)."""
        key = vip_order(vip)
        before = self._outcomes.pop(vip, None)
        if before is not None and before.bgp is not None:
            self._routes.remove(before.bgp)
        names = self._holders_now.pop(vip) if vip in self._holders_now else (
            before.decision.services if before is not None else ())
        outcome = None
        if names:
            inputs = vip_input(vip, [self._allocations[n] for n in names], self._services)
            outcome = decide_vip(view, inputs)  # its decision lists the names, sorted
            self._outcomes[vip] = outcome
        if outcome is None:
            for ordered in (self._decisions, self._announced, self._local_binds, self._exports):
                ordered.discard(key)
            self._cover.discard(vip)
            self._timed.discard(vip)
            self._l2.discard(vip)
            return
        self._decisions.set(key, outcome.decision)
        if outcome.announced is not None:
            self._announced.set(key, outcome.announced)
        else:
            self._announced.discard(key)
        if outcome.announced is None and outcome.bind_on is not None:
            self._local_binds.set(key, L2Intent(
                vip=vip, interface=outcome.bind_on, mode=L2Mode.LOCAL, services=inputs.services,
                announce_burst=0, announce_interval=0.0))
        else:
            self._local_binds.discard(key)
        if outcome.exports:
            self._exports.set(key, outcome.exports)
        else:
            self._exports.discard(key)
        if outcome.bgp is not None:
            self._routes.add(outcome.bgp)
        if outcome.local_route and outcome.announced is None and outcome.bind_on is None:
            self._cover.add(vip)
        else:
            self._cover.discard(vip)
        for flag, members in ((outcome.timed, self._timed), ("l2" in outcome.decision.modes, self._l2)):
            if flag:
                members.add(vip)
            else:
                members.discard(vip)
