"""lbd.config: [[bfd_profile]] (MetalLB's BFDProfile) and bgp_peer.bfd_profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_helpers import errors, ok, only_error

from lbd.config.schema import BfdProfileConfig

PEER = """
[[bgp_peer]]
name = "gw"
my_asn = 64512
peer_asn = 64512
peer_address = "192.168.1.254"
bfd_profile = "fast"
"""


def test_metallb_defaults() -> None:
    config = ok('[[bfd_profile]]\nname = "fast"\n' + PEER)
    assert config.bfd_profiles == (BfdProfileConfig(name="fast"),)
    p = config.bfd_profiles[0]
    assert (p.receive_interval, p.transmit_interval, p.detect_multiplier, p.echo_interval, p.minimum_ttl) == (
        300, 300, 3, 50, 254)
    assert not p.echo_mode and not p.passive_mode and p.auth_type is None
    assert config.bgp_peers[0].bfd_profile == "fast"


def test_every_key(tmp_path: Path) -> None:
    key = tmp_path / "bfd.key"
    key.write_text("s3cret\n")
    config = ok(f"""
[[bfd_profile]]
name = "fast"
receive_interval = 100
transmit_interval = 120
detect_multiplier = 5
echo_interval = 60
echo_mode = false
passive_mode = true
minimum_ttl = 250
auth_type = "meticulous-keyed-sha1"
auth_key_id = 7
auth_key_file = "{key}"
""")
    assert config.bfd_profiles[0] == BfdProfileConfig(
        name="fast", receive_interval=100, transmit_interval=120, detect_multiplier=5, echo_interval=60,
        passive_mode=True, minimum_ttl=250, auth_type="meticulous-keyed-sha1", auth_key_id=7, auth_key_file=key)


def test_peer_must_name_a_defined_profile() -> None:
    message = only_error('[[bfd_profile]]\nname = "fats"\n' + PEER)
    assert 'no bfd_profile is named "fast"' in message and "fats" in message


def test_peer_profile_without_any_profile() -> None:
    assert "no [[bfd_profile]] is defined" in only_error(PEER)


def test_echo_mode_is_refused_clearly() -> None:
    message = only_error('[[bfd_profile]]\nname = "e"\necho_mode = true\n')
    assert "echo_mode" in message and "not implemented" in message


@pytest.mark.parametrize(
    "line,fragment",
    [
        ("receive_interval = 9", "receive_interval"),
        ("transmit_interval = 60001", "transmit_interval"),
        ("detect_multiplier = 1", "detect_multiplier"),
        ("minimum_ttl = 255", "minimum_ttl"),
        ("echo_interval = 5", "echo_interval"),
        ("receive_interval = 0.3", "receive_interval"),
        ('auth_type = "md5"', "auth_type"),
        ('auth_type = "keyed-sha1"', "auth_key_file"),
        ('auth_key_file = "/nonexistent"', "auth_type"),
        ("auth_key_id = 3", "auth_key_id"),
        ("transmit = 3", "unknown key"),
    ],
)
def test_invalid_values(line: str, fragment: str) -> None:
    found = errors(f'[[bfd_profile]]\nname = "p"\n{line}\n')
    assert any(fragment in e for e in found), found


def test_unreadable_or_too_long_key(tmp_path: Path) -> None:
    missing = only_error(f'[[bfd_profile]]\nname = "p"\nauth_type = "keyed-sha1"\nauth_key_file = "{tmp_path}/none"\n')
    assert "cannot read" in missing
    key = tmp_path / "k"
    key.write_text("x" * 21)
    assert "1 to 20 octets" in only_error(
        f'[[bfd_profile]]\nname = "p"\nauth_type = "keyed-sha1"\nauth_key_file = "{key}"\n')


def test_duplicate_profile_names() -> None:
    assert "already the name" in only_error('[[bfd_profile]]\nname = "a"\n[[bfd_profile]]\nname = "a"\n')
