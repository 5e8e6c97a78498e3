"""``[[bfd_profile]]``: MetalLB's BFDProfile in snake_case, plus authentication.

Intervals are integer milliseconds, MetalLB's units, ranges and defaults
(receive/transmit 300, detect multiplier 3, echo 50, minimum TTL 254). The
Echo function is not implemented: ``echo_mode = true`` is refused.
"""

from __future__ import annotations

from pathlib import Path

from lbd.config.read import Errors, Table, UniqueNames, array_of_tables, did_you_mean, entry_label
from lbd.config.schema import BfdProfileConfig, BgpPeerConfig

PROFILE_KEYS = (
    "name", "receive_interval", "transmit_interval", "detect_multiplier", "echo_interval", "echo_mode",
    "passive_mode", "minimum_ttl", "auth_type", "auth_key_id", "auth_key_file",
)
AUTH_TYPES = ("keyed-sha1", "meticulous-keyed-sha1")


def parse_bfd_profiles(errors: Errors, doc: dict, base: Path) -> tuple[list[BfdProfileConfig], set[str]]:
    """The sound profiles, and every profile name (broken ones too, so that a
    peer naming a broken profile is not also reported as naming a missing one)."""
    out: list[BfdProfileConfig] = []
    names = UniqueNames(errors, "bfd_profile")
    for i, data in array_of_tables(errors, doc, "bfd_profile"):
        label = entry_label("bfd_profile", data, i)
        before = len(errors)
        t = Table(errors, label, data, PROFILE_KEYS)
        name = t.name("name", required=True)
        rx = t.integer("receive_interval", 300, lo=10, hi=60000)
        tx = t.integer("transmit_interval", 300, lo=10, hi=60000)
        mult = t.integer("detect_multiplier", 3, lo=2, hi=255)
        echo_interval = t.integer("echo_interval", 50, lo=10, hi=60000)
        echo_mode = t.boolean("echo_mode", False)
        if echo_mode:
            t.error("echo_mode", "the BFD Echo function is not implemented in lbd: set echo_mode = false "
                                 "(asynchronous mode with short intervals detects the same failures)")
        passive = t.boolean("passive_mode", False)
        minimum_ttl = t.integer("minimum_ttl", 254, lo=1, hi=254)
        auth_type = t.string("auth_type", choices=AUTH_TYPES)
        key_id = t.integer("auth_key_id", 1, lo=0, hi=255)
        key_file = t.path("auth_key_file", None, base)
        if auth_type is not None and key_file is None and not t.has("auth_key_file"):
            t.errors.add(label, "auth_type needs auth_key_file (the file holding the key)")
        if key_file is not None and not t.has("auth_type"):
            t.errors.add(label, "auth_key_file needs auth_type (\"keyed-sha1\" or \"meticulous-keyed-sha1\")")
        if t.has("auth_key_id") and not t.has("auth_type"):
            t.error("auth_key_id", "only meaningful with auth_type")
        if key_file is not None and auth_type is not None:
            from lbd.bfd.auth import BfdAuthError, read_key

            try:
                read_key(key_file)
            except OSError as exc:
                t.error("auth_key_file", f"cannot read {key_file}: {exc.strerror or exc}")
            except BfdAuthError as exc:
                t.error("auth_key_file", str(exc))
        if isinstance(name, str) and not names.claim(name, i):
            continue
        if name is None or len(errors) > before:
            continue
        out.append(BfdProfileConfig(
            name=name, receive_interval=rx, transmit_interval=tx, detect_multiplier=mult,
            echo_interval=echo_interval, echo_mode=echo_mode, passive_mode=passive, minimum_ttl=minimum_ttl,
            auth_type=auth_type, auth_key_id=key_id, auth_key_file=key_file,
        ))
    return out, names.names()


def check_peer_profiles(errors: Errors, peers: list[tuple[str, BgpPeerConfig]], names: set[str]) -> None:
    """``bgp_peer.bfd_profile`` must name a ``[[bfd_profile]]``."""
    for label, peer in peers:
        if peer.bfd_profile is not None and peer.bfd_profile not in names:
            hint = did_you_mean(peer.bfd_profile, names) if names else " (no [[bfd_profile]] is defined)"
            errors.add(f"{label}: bfd_profile", f'no bfd_profile is named "{peer.bfd_profile}"{hint}')
