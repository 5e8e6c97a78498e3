"""Small serf conventions on top of memberlist (memberlist-wire.md section 8).

Only what interop needs: serf's tag encoding in node meta, reading serf's
Lamport time from its push-pull user state and user messages, and the leave
intent that makes serf show a departed node as ``left`` instead of ``failed``.
"""

from __future__ import annotations

from typing import Mapping

import msgpack

from .errors import GossipError

TAG_MAGIC = 0xFF
MSG_LEAVE = 0
MSG_JOIN = 1
MSG_PUSH_PULL = 2
MSG_USER_EVENT = 3


def encode_tags(tags: Mapping[str, str]) -> bytes:
    """serf meta: 0xFF then a msgpack map of str -> str (no tags: ``FF 80``)."""
    return bytes([TAG_MAGIC]) + msgpack.packb(dict(sorted(tags.items())), use_bin_type=False)


def decode_tags(meta: bytes) -> dict[str, str]:
    """Inverse of :func:`encode_tags`; serf reads other meta as ``{"role": meta}``."""
    if not meta or meta[0] != TAG_MAGIC:
        return {"role": meta.decode("utf-8", "replace")} if meta else {}
    try:
        obj = msgpack.unpackb(meta[1:], raw=True, strict_map_key=False)
    except Exception:  # garbage meta: serf logs "Failed to decode tags"
        raise GossipError("serf tags are not a msgpack map") from None
    if not isinstance(obj, dict):
        raise GossipError("serf tags are not a msgpack map")
    out: dict[str, str] = {}
    for k, v in obj.items():
        if not isinstance(k, bytes) or not isinstance(v, bytes):
            raise GossipError("serf tags must map strings to strings")
        out[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
    return out


def ltime_of(data: bytes) -> int:
    """The Lamport time in a serf push-pull state or join/leave/event message, else 0."""
    if len(data) < 2 or data[0] not in (MSG_LEAVE, MSG_JOIN, MSG_PUSH_PULL, MSG_USER_EVENT):
        return 0
    try:
        obj = msgpack.unpackb(data[1:], raw=True, strict_map_key=False)
    except Exception:  # not serf's: ignore
        return 0
    if not isinstance(obj, dict):
        return 0
    best = 0
    for key in (b"LTime", b"EventLTime", b"QueryLTime"):
        v = obj.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > best:
            best = v
    return best


def leave_intent(ltime: int, node: str) -> bytes:
    """serf messageLeave {LTime, Node, Prune}: gossip before the memberlist dead."""
    return bytes([MSG_LEAVE]) + msgpack.packb({"LTime": ltime, "Node": node, "Prune": False}, use_bin_type=False)
