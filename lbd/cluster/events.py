"""What goes in and out of the SWIM core, as plain values (h11's ``_events.py``).

``Swim.poll()`` returns a list of ``Action``: UDP packets to send, TCP stream
requests for the adapter to make, member events and user messages. ``Stats`` is
the core's own count of what it saw, read by the transport for its metrics.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Union

from lbd.model import MemberState

Addr = tuple[str, int]


@dataclass(frozen=True)
class MemberInfo:
    """One member as this node sees it."""

    name: str
    address: str  # IP text
    port: int
    state: MemberState
    incarnation: int
    state_change: float  # core clock time of the last state change
    meta: bytes
    vsn: bytes

    @property
    def addr(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


class EventKind(str, enum.Enum):
    JOIN = "join"  # new, or back from dead/left
    UPDATE = "update"  # meta changed
    SUSPECT = "suspect"
    ALIVE = "alive"  # suspicion refuted
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True)
class SendPacket:
    addr: Addr
    data: bytes


@dataclass(frozen=True)
class StreamRequest:
    """Open a TCP stream to ``addr``, send ``data``, read one reply if ``expect_reply``.

    Report the outcome with ``Swim.stream_result(id, reply_or_None, now)``.
    """

    id: int
    kind: str  # "push_pull", "join", "ping" or "user"
    addr: Addr
    data: bytes
    deadline: float
    expect_reply: bool = True


@dataclass(frozen=True)
class MemberEvent:
    kind: EventKind
    member: MemberInfo


@dataclass(frozen=True)
class UserMessage:
    payload: bytes
    addr: Addr | None


Action = Union[SendPacket, StreamRequest, MemberEvent, UserMessage]


@dataclass
class Stats:
    """Counters of one core; the transport exports them as metrics."""

    received: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    decrypt_failures: int = 0
    malformed: int = 0
    suspicions: int = 0
    refutes: int = 0
    probes: int = 0
    probe_failures: int = 0
    tcp_fallback_successes: int = 0
    bad_names: int = 0  # Alive / push-pull entries refused for an empty or control-character name
