"""memberlist's AES-GCM encryption and the keyring (``security.go``, ``keyring.go``).

Layout (memberlist-wire.md section 5): ``[vsn][12-byte nonce][ciphertext+16-byte tag]``.
Version 0 pads the plaintext PKCS#7-style to 16 bytes before sealing; version 1
does not pad. We always send version 1 (what serf sends) and accept both. UDP
packets use empty additional data; streams use the 5-byte ``[10][len]`` header.
The primary key (the first) encrypts; every key is tried to decrypt.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import GossipError

NONCE_SIZE = 12
TAG_SIZE = 16
VERSION_SIZE = 1
MAX_VERSION = 1
KEY_SIZES = (16, 24, 32)


def overhead(version: int = 1) -> int:
    """Bytes encryption adds to a message: 29 for v1, 45 for v0 (worst-case padding)."""
    return VERSION_SIZE + NONCE_SIZE + TAG_SIZE + (16 if version == 0 else 0)


def _check_key(key: bytes) -> None:
    if len(key) not in KEY_SIZES:
        raise GossipError(f"encryption key must be 16, 24 or 32 bytes, got {len(key)}")


def encrypt(key: bytes, plaintext: bytes, aad: bytes = b"", version: int = 1, nonce: bytes | None = None) -> bytes:
    """Seal ``plaintext`` with ``key`` as memberlist encryptPayload does."""
    _check_key(key)
    if version not in (0, 1):
        raise GossipError(f"unsupported encryption version {version}")
    if version == 0:
        pad = 16 - (len(plaintext) % 16)  # always 1..16 bytes, as security.go pkcs7encode
        plaintext = plaintext + bytes([pad]) * pad
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    if len(nonce) != NONCE_SIZE:
        raise GossipError("nonce must be 12 bytes")
    return bytes([version]) + nonce + AESGCM(key).encrypt(nonce, plaintext, aad or None)


def decrypt(keys: Sequence[bytes], payload: bytes, aad: bytes = b"") -> bytes:
    """Open ``payload`` with the first key of ``keys`` that authenticates it."""
    if not keys:
        raise GossipError("no keys installed")
    if len(payload) < 1:
        raise GossipError("empty encrypted payload")
    version = payload[0]
    if version > MAX_VERSION:
        raise GossipError(f"unsupported encryption version {version}")
    if len(payload) < overhead(version):
        raise GossipError(f"encrypted payload too short ({len(payload)} bytes)")
    nonce = payload[1 : 1 + NONCE_SIZE]
    sealed = payload[1 + NONCE_SIZE :]
    for key in keys:
        try:
            plain = AESGCM(key).decrypt(nonce, sealed, aad or None)
        except InvalidTag:
            continue
        if version == 0:
            if not plain:
                raise GossipError("v0 payload without padding")
            pad = plain[-1]
            if pad == 0 or pad > 16 or pad > len(plain):
                raise GossipError("bad v0 padding")
            plain = plain[:-pad]
        return plain
    raise GossipError("no installed keys could decrypt the message")


def generate_key() -> str:
    """A new 32-byte key, base64 (what ``serf keygen`` and ``lbd keygen`` print)."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def parse_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GossipError(f"key is not valid base64: {exc}") from None
    if len(key) not in KEY_SIZES:
        raise GossipError(f"key must decode to 16, 24 or 32 bytes, got {len(key)}")
    return key


def load_keyring(path: str | os.PathLike[str]) -> list[bytes]:
    """Read a keyring file: a JSON array of base64 keys, the first is primary."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise GossipError(f"{p}: cannot read keyring: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise GossipError(f"{p}: keyring is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GossipError(f"{p}: keyring is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, list):
        raise GossipError(f"{p}: keyring must be a JSON array of base64 keys")
    if not data:
        raise GossipError(f"{p}: keyring is empty (the first key is the primary)")
    keys: list[bytes] = []
    for i, item in enumerate(data):
        if not isinstance(item, str):
            raise GossipError(f"{p}: key [{i}] must be a base64 string")
        try:
            key = parse_key(item)
        except GossipError as exc:
            raise GossipError(f"{p}: key [{i}]: {exc}") from None
        if key not in keys:
            keys.append(key)
    return keys
