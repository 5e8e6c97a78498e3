"""memberlist's TransmitLimitedQueue (``queue.go``): the broadcasts waiting to be gossiped, sans-IO.

Every membership change (alive, suspect, dead) and every user broadcast is
piggybacked on outgoing packets a limited number of times,
``Profile.retransmit_limit(n)``, enough for an epidemic to reach every member
with high probability. A newer message about a node replaces the queued older
one, so the queue holds at most one state per node.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import wire

MAX_QUEUE = 4096  # queued broadcasts (serf's MaxQueueDepth default)


@dataclass
class _Broadcast:
    id: int
    name: str | None  # the node the message is about; None for user messages (never replaced)
    data: bytes
    transmits: int = 0


class BroadcastQueue:
    """memberlist TransmitLimitedQueue: fewest transmits first, then largest.

    A queued alive/suspect/dead replaces the older one for the same node; a
    message retires after ``retransmit_limit(n)`` sends (queue.go).
    """

    def __init__(self) -> None:
        self._items: list[_Broadcast] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._items)

    def queue(self, name: str | None, data: bytes) -> int:
        """Queue ``data`` (about node ``name``, replacing its older message); returns its id."""
        if name is not None:
            self._items = [b for b in self._items if b.name != name]
        self._seq += 1
        self._items.append(_Broadcast(self._seq, name, data))
        if len(self._items) > MAX_QUEUE:
            # Nobody to gossip to (or a flood): drop the oldest, as serf's
            # MaxQueueDepth does; push-pull anti-entropy repairs what is lost.
            self.prune(MAX_QUEUE)
        return self._seq

    def pending(self, bid: int) -> bool:
        """Whether broadcast ``bid`` is still waiting to be sent (its limit not reached)."""
        return any(b.id == bid for b in self._items)

    def get(self, overhead: int, limit: int, transmit_limit: int) -> list[bytes]:
        """Messages that fit in ``limit`` bytes, each costing ``overhead`` more; counts a transmit each."""
        out: list[bytes] = []
        used = 0
        for b in sorted(self._items, key=lambda b: (b.transmits, -len(b.data), -b.id)):
            cost = overhead + len(b.data)
            if used + cost > limit:
                continue
            used += cost
            out.append(b.data)
            b.transmits += 1
            if len(out) >= wire.MAX_COMPOUND_PARTS - 1:
                break
        self._items = [b for b in self._items if b.transmits < transmit_limit]
        return out

    def prune(self, keep: int) -> None:
        """Drop the oldest beyond ``keep`` (memberlist Prune)."""
        if len(self._items) > keep:
            self._items.sort(key=lambda b: b.id)
            self._items = self._items[-keep:]
