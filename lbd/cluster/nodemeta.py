"""What a node tells the others about itself, in memberlist's node metadata.

memberlist carries at most 512 bytes of metadata per node and re-gossips it
with every alive message, so it is the natural home for small, slowly
changing facts the planner needs from every member: labels, the interfaces
and connected networks a node can announce on, drain state, and the version
of the node's big facts (``lbd.cluster.facts``: the VIPs it holds, the
services failing there), which travel beside the metadata because they grow
with the table. A peer whose record is older than the announced version asks
for it again.

Nodes before the facts records put ``holds`` and ``failing`` here; they are
still read (a record, once it arrived, wins), and ``failing`` is still written
when it fits so that such nodes see it during a rolling upgrade. When the
metadata does not fit, the least important fields give way (holds, then
failing, each marked as not carried, then extra networks), and the sender is
told so it can log it.

Encoding: a msgpack map (go-msgpack compatible: str keys, no bin type),
prefixed by the byte 0x4c ('L') and a version byte, so it is never mistaken
for serf's tags (which start with 0xff).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Mapping, Sequence

import msgpack

from lbd.model import IPInterface

MAGIC = b"L\x01"
META_MAX = 512


class MetaError(ValueError):
    """Metadata from another node is malformed."""


@dataclass(frozen=True)
class NodeMeta:
    labels: Mapping[str, str]
    interfaces: Mapping[str, tuple[IPInterface, ...]]
    drained: bool = False
    failing: frozenset[str] = frozenset()
    holds: tuple[str, ...] = ()
    holds_known: bool = True  # False: did not fit; treat as "holds nothing we know of"
    failing_known: bool = True  # False: did not fit (the facts record carries it)
    facts_version: int = 0  # the version of the node's facts record (0: it publishes none)


def encode(meta: NodeMeta, limit: int = META_MAX) -> tuple[bytes, list[str]]:
    """The wire bytes and the fields that had to be dropped to fit ``limit``."""
    body: dict[str, object] = {
        "l": dict(sorted(meta.labels.items())),
        "i": {name: [str(n) for n in nets] for name, nets in sorted(meta.interfaces.items())},
    }
    if meta.drained:
        body["d"] = True
    if meta.facts_version:
        body["v"] = meta.facts_version
    if meta.failing:
        body["f"] = sorted(meta.failing)
    if meta.holds:
        body["h"] = [ipaddress.ip_address(v).packed for v in meta.holds]
    if not meta.holds_known:
        body["H"] = False
    dropped: list[str] = []
    data = _pack(body)
    if len(data) > limit and "h" in body:
        del body["h"]
        body["H"] = False  # holds unknown
        dropped.append("holds")
        data = _pack(body)
    if len(data) > limit and "f" in body:
        del body["f"]
        body["F"] = False  # failing not carried here
        dropped.append("failing")
        data = _pack(body)
    if len(data) > limit and "i" in body:
        # Keep only the networks, drop the interface names' detail beyond the first network each.
        body["i"] = {name: nets[:1] for name, nets in body["i"].items()}  # type: ignore[union-attr]
        dropped.append("extra networks")
        data = _pack(body)
    if len(data) > limit:
        raise ValueError(f"node metadata is {len(data)} bytes even without holds and failing; at most {limit} "
                         "(fewer labels or interfaces)")
    return data, dropped


def _pack(body: Mapping[str, object]) -> bytes:
    return MAGIC + msgpack.packb(body, use_bin_type=False)


def decode(data: bytes) -> NodeMeta:
    if not data.startswith(MAGIC):
        raise MetaError("not lbd node metadata")
    if len(data) > META_MAX:
        raise MetaError(f"metadata of {len(data)} bytes exceeds {META_MAX}")
    try:
        body = msgpack.unpackb(data[len(MAGIC):], raw=True, strict_map_key=False, max_bin_len=META_MAX,
                               max_str_len=META_MAX, max_array_len=META_MAX, max_map_len=META_MAX)
    except Exception as exc:  # msgpack raises many types on garbage
        raise MetaError(f"metadata is not msgpack: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise MetaError("metadata is not a map")
    return NodeMeta(
        labels=_str_map(body.get(b"l", {}), "labels"),
        interfaces=_interfaces(body.get(b"i", {})),
        drained=body.get(b"d", False) is True,
        failing=frozenset(_str_list(body.get(b"f", []), "failing")),
        holds=tuple(_addresses(body.get(b"h", []))),
        holds_known=b"H" not in body,
        failing_known=b"F" not in body,
        facts_version=_version(body.get(b"v", 0)),
    )


def _version(raw: object) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw < 2**63:
        raise MetaError("facts version is not a non-negative 63-bit integer")
    return raw


def _text(value: object, what: str) -> str:
    if not isinstance(value, bytes):
        raise MetaError(f"{what} is not a string")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise MetaError(f"{what} is not UTF-8") from None


def _str_map(raw: object, what: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise MetaError(f"{what} is not a map")
    return {_text(k, what): _text(v, what) for k, v in raw.items()}


def _str_list(raw: object, what: str) -> list[str]:
    if not isinstance(raw, list):
        raise MetaError(f"{what} is not a list")
    return [_text(v, what) for v in raw]


def _interfaces(raw: object) -> dict[str, tuple[IPInterface, ...]]:
    if not isinstance(raw, dict):
        raise MetaError("interfaces is not a map")
    out = {}
    for name, nets in raw.items():
        networks = []
        for text in _str_list(nets, "interface networks"):
            try:
                networks.append(ipaddress.ip_interface(text))
            except ValueError:
                raise MetaError(f"interface network {text!r} is not an address/prefix") from None
        out[_text(name, "interface name")] = tuple(networks)
    return out


def _addresses(raw: object) -> Sequence[str]:
    if not isinstance(raw, list):
        raise MetaError("holds is not a list")
    out = []
    for packed in raw:
        if not isinstance(packed, bytes) or len(packed) not in (4, 16):
            raise MetaError("held address is not 4 or 16 bytes")
        out.append(str(ipaddress.ip_address(packed)))
    return out
