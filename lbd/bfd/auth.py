"""Keyed SHA1 and Meticulous Keyed SHA1 authentication (RFC 5880 §4.4, §6.7.4).

A key is 1..20 octets (zero-padded to 20 in the digest computation). Keys come
from a file (``auth_key_file``): its content, with one trailing newline
removed, is the key. Its Key ID is the profile's ``auth_key_id``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, replace
from pathlib import Path

from lbd.bfd.packet import HEADER_LEN, AuthSection, AuthType, ControlPacket, encode

SHA1_KEY_MAX = 20
AUTH_TYPES = {"keyed-sha1": AuthType.KEYED_SHA1, "meticulous-keyed-sha1": AuthType.METICULOUS_KEYED_SHA1}


class BfdAuthError(ValueError):
    """An unusable authentication key."""


@dataclass(frozen=True)
class AuthConfig:
    auth_type: AuthType
    key_id: int
    key: bytes = b""

    def __repr__(self) -> str:  # never print the secret
        return f"AuthConfig({self.auth_type.name}, key_id={self.key_id})"

    @property
    def meticulous(self) -> bool:
        return self.auth_type == AuthType.METICULOUS_KEYED_SHA1


def read_key(path: Path) -> bytes:
    """The key in ``path`` (OSError if unreadable, BfdAuthError if unusable)."""
    data = Path(path).read_bytes()
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not 1 <= len(data) <= SHA1_KEY_MAX:
        raise BfdAuthError(f"{path}: a keyed SHA1 key is 1 to {SHA1_KEY_MAX} octets, this one has {len(data)}")
    return data


def _digest(raw: bytes, key: bytes) -> bytes:
    """SHA1 over the packet with the key, zero-padded to 20, in the digest field (§6.7.4)."""
    padded = key.ljust(SHA1_KEY_MAX, b"\0")
    return hashlib.sha1(raw[: HEADER_LEN + 8] + padded).digest()


def sign(pkt: ControlPacket, auth: AuthConfig, sequence: int) -> bytes:
    """The packet with its SHA1 authentication section, on the wire."""
    unsigned = replace(pkt, auth=AuthSection(auth.auth_type, auth.key_id, sequence & 0xFFFFFFFF, b"\0" * 20))
    raw = encode(unsigned)
    return raw[: HEADER_LEN + 8] + _digest(raw, auth.key)


def sequence_in_window(seq: int, last: int, detect_mult: int, meticulous: bool) -> bool:
    """§6.7.4: keyed SHA1 accepts last .. last+3*DetectMult, meticulous
    last+1 .. last+3*DetectMult, in 32-bit circular arithmetic."""
    ahead = (seq - last) & 0xFFFFFFFF
    low = 1 if meticulous else 0
    return low <= ahead <= 3 * detect_mult


def verify(pkt: ControlPacket, raw: bytes, auth: AuthConfig, last_seq: int | None) -> str | None:
    """None when ``pkt`` (received as ``raw``) authenticates, else why not.
    ``last_seq`` is bfd.RcvAuthSeq when bfd.AuthSeqKnown is 1, else None."""
    section = pkt.auth
    if section is None:
        return "no authentication section, and authentication is configured"
    if section.auth_type != auth.auth_type:
        return f"Auth Type {section.auth_type}, expected {int(auth.auth_type)}"
    if section.key_id != auth.key_id:
        return f"no key with Auth Key ID {section.key_id}"
    if last_seq is not None and not sequence_in_window(section.sequence, last_seq, pkt.detect_mult, auth.meticulous):
        return f"sequence number {section.sequence} outside the window after {last_seq}"
    expected = _digest(raw, auth.key)
    if not hmac.compare_digest(expected, section.digest):
        return "digest mismatch (wrong key)"
    return None
