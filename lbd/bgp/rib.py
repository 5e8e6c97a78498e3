"""One peer's Adj-RIB-Out (RFC 4271 §3.2), sans-IO: desired routes against
what the current connection has sent, diffed into UPDATE messages.

The owner sets the desired table level-triggered (:meth:`AdjRibOut.set_desired`);
while a connection is Established (:meth:`AdjRibOut.open` .. :meth:`AdjRibOut.close`)
:meth:`AdjRibOut.diff` packs the difference into as few UPDATEs as fit, and
:meth:`AdjRibOut.refresh` repacks one family for a ROUTE-REFRESH (RFC 2918,
RFC 7313). A new connection starts from nothing sent, so a reconnect resends
it all. The session FSM (:mod:`lbd.bgp.fsm`) decides when, writes the bytes
and keeps the counters; this module only decides what.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping

from lbd.bgp.packing import RouteAttrs, UpdatePacker, family_of
from lbd.bgp.settings import IPV4_UNICAST, IPV6_UNICAST, Family
from lbd.model import IPNetwork


@dataclass(frozen=True)
class UpdateBatch:
    """UPDATE messages to send, and how many prefixes they announce and withdraw."""

    messages: list[bytes]
    announced: int
    withdrawn: int


class AdjRibOut:
    """Desired routes vs advertised routes for one peer."""

    def __init__(self) -> None:
        self._desired: dict[IPNetwork, RouteAttrs] = {}
        self._advertised: dict[IPNetwork, RouteAttrs] = {}
        self._packer: UpdatePacker | None = None  # set while a connection is Established
        self._families: tuple[Family, ...] = ()  # negotiated on that connection
        self.ready = False  # set_desired was called at least once: the table is complete
        # The prefixes update_desired changed since the last diff; None: the whole table
        # (set_desired), so the next diff looks at every route.
        self._touched: set[IPNetwork] | None = None
        self.initial_sent = False  # this connection was sent its table (and End-of-RIB)

    @property
    def desired(self) -> Mapping[IPNetwork, RouteAttrs]:
        return self._desired

    @property
    def advertised(self) -> Mapping[IPNetwork, RouteAttrs]:
        return self._advertised

    @property
    def is_open(self) -> bool:
        return self._packer is not None

    def set_desired(self, routes: Mapping[IPNetwork, RouteAttrs]) -> None:
        """The whole desired table. A ``dict`` is kept as it is, not copied (issue 9: the
        announcer's table of 100,000 routes, held once): its owner changes it afterwards only
        together with :meth:`update_desired` (which then finds its entries already there)."""
        self._desired = routes if type(routes) is dict else dict(routes)
        self._touched = None
        self.ready = True

    def update_desired(self, changes: Mapping[IPNetwork, RouteAttrs | None]) -> None:
        """Change some desired routes (None: no longer desired): the next diff looks at these
        prefixes alone, so one change costs the same with 100,000 routes (issue 9). Only
        after a ``set_desired`` (the table is complete)."""
        desired = self._desired
        for prefix, attrs in changes.items():
            if attrs is None:
                desired.pop(prefix, None)
            else:
                desired[prefix] = attrs
        if self._touched is not None:
            self._touched.update(changes)

    def adopt(self, other: "AdjRibOut") -> None:
        """Take over the desired table of ``other`` (a collision's losing session)."""
        self._desired = dict(other._desired)
        self._touched = None
        self.ready = other.ready

    def reset(self) -> None:
        """A new connection: nothing has been sent on it."""
        self._advertised = {}
        self._packer = None

    def open(self, packer: UpdatePacker, families: tuple[Family, ...]) -> None:
        """The connection is Established: UPDATEs go out through ``packer``."""
        self._packer = packer
        self._families = families
        self._advertised = {}
        self.initial_sent = False

    def close(self) -> None:
        """The connection left Established: nothing more is packed."""
        self._packer = None

    def initial(self) -> tuple[UpdateBatch | None, dict[Family, int]]:
        """The whole table, and the prefix count per family for the End-of-RIB
        markers that follow it (RFC 4724 §2)."""
        self.initial_sent = True
        batch = self.diff()
        v6 = sum(1 for p in self._advertised if p.version == 6)
        return batch, {IPV4_UNICAST: len(self._advertised) - v6, IPV6_UNICAST: v6}

    def diff(self) -> UpdateBatch | None:
        """UPDATEs taking the peer from what was sent to what is desired; ``None``
        when there is nothing to send (or no Established connection)."""
        packer = self._packer
        if packer is None:
            return None
        adv = self._advertised
        desired = self._desired
        ok = self._sendable_versions(packer)
        touched, self._touched = self._touched, set()
        if not adv:
            # Initial table: no diff to compute. Copying the dict reuses the
            # keys' stored hashes (IPv4Network hashes in Python, slowly).
            withdraw: list[IPNetwork] = []
            if all(v in ok for v in {p.version for p in desired}):
                announce: Collection[tuple[IPNetwork, RouteAttrs]] = desired.items()
                new_adv = dict(desired)
            else:
                announce = [(p, a) for p, a in desired.items() if p.version in ok]
                new_adv = dict(announce)
        elif touched is not None:  # only these prefixes changed since the last diff
            changed = []
            withdraw = []
            for p in touched:
                a = desired.get(p)
                if a is None:
                    if p in adv:
                        withdraw.append(p)
                    continue
                old = adv.get(p)
                if old is not a and old != a and p.version in ok:
                    changed.append((p, a))
            announce = changed
            new_adv = None
        else:
            changed = []
            for p, a in desired.items():
                old = adv.get(p)
                if old is not a and old != a and p.version in ok:
                    changed.append((p, a))
            announce = changed
            withdraw = [p for p in adv if p not in desired]
            new_adv = None
        if not announce and not withdraw:
            return None
        msgs = packer.withdraw(withdraw) + packer.announce(announce)
        if new_adv is not None:
            self._advertised = new_adv
        else:
            for p in withdraw:
                del adv[p]
            adv.update(announce)
        return UpdateBatch(msgs, len(announce), len(withdraw))

    def refresh(self, family: Family) -> UpdateBatch | None:
        """Everything advertised in ``family`` again (a ROUTE-REFRESH asked for it)."""
        packer = self._packer
        if packer is None:
            return None
        routes = [(p, a) for p, a in self._advertised.items() if family_of(p) == family]
        return UpdateBatch(packer.announce(routes), len(routes), 0)

    def _sendable_versions(self, packer: UpdatePacker) -> frozenset[int]:
        """IP versions we can announce: family negotiated and a next hop known."""
        ok = set()
        if IPV4_UNICAST in self._families and packer.ctx.next_hop_v4 is not None:
            ok.add(4)
        if IPV6_UNICAST in self._families and packer.ctx.next_hop_v6 is not None:
            ok.add(6)
        return frozenset(ok)
