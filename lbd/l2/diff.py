"""The layer-2 announcer's diff, pure: what to withdraw, take over and keep (issue 9).

``L2Announcer.apply`` is level-triggered: it compares the desired intents with what
it has applied and touches the kernel only for the difference. That comparison is
here, free of I/O, so a property test can drive it (and the announcer over a fake
kernel) through random sequences and check it against a from-scratch computation.

A VIP's identity at layer 2 is (interface, mode): a change of either is a withdrawal
then a takeover (the address moves, or goes from the kernel to the responder). Any
other attribute (burst, interval, services) changes in place, without kernel work.
A VIP applied but not ready (its bind or lookup failed) is taken over again: the
retry a level-triggered pass owes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from lbd.model import IPAddress, L2Intent


class Applied(Protocol):
    """What the announcer knows of a VIP it applied (its ``_Entry`` has these)."""

    intent: L2Intent
    ready: bool


def intent_key(intent: L2Intent) -> tuple[str, str]:
    """What identifies a VIP's layer-2 state in the kernel: where, and how."""
    return (intent.interface, intent.mode)


@dataclass(frozen=True)
class L2Diff:
    desired: dict[IPAddress, L2Intent]  # one intent per VIP: the first one wins
    dropped: tuple[tuple[L2Intent, L2Intent], ...]  # (kept, dropped): one VIP asked on two interfaces/modes
    withdraw: tuple[IPAddress, ...]  # applied, and no longer desired as applied
    takeover: tuple[L2Intent, ...]  # new, moved, or applied but not ready (retried)
    keep: tuple[L2Intent, ...]  # ready and unchanged in (interface, mode): attributes update in place

    @property
    def kernel_changes(self) -> int:
        """An upper bound of the address requests this diff costs: one per withdrawal and takeover."""
        return len(self.withdraw) + len(self.takeover)


def diff_intents(applied: Mapping[IPAddress, Applied], intents: Iterable[L2Intent]) -> L2Diff:
    """What ``apply(intents)`` must do, given what is ``applied``."""
    desired: dict[IPAddress, L2Intent] = {}
    dropped: list[tuple[L2Intent, L2Intent]] = []
    for intent in intents:
        kept = desired.get(intent.vip)
        if kept is None:
            desired[intent.vip] = intent
        elif intent_key(kept) != intent_key(intent):
            dropped.append((kept, intent))
    withdraw = tuple(vip for vip, entry in applied.items()
                     if vip not in desired or intent_key(desired[vip]) != intent_key(entry.intent))
    gone = set(withdraw)
    takeover: list[L2Intent] = []
    keep: list[L2Intent] = []
    for vip, intent in desired.items():
        entry = applied.get(vip)
        if entry is not None and vip not in gone and entry.ready:
            keep.append(intent)
        else:
            takeover.append(intent)
    return L2Diff(desired, tuple(dropped), withdraw, tuple(takeover), tuple(keep))
