"""lbd.config: [[bgp_peer]], [[bgp_advertisement]] and [communities]."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from config_helpers import FILE, errors, has_error, ok, only_error

from lbd.config.bgp import parse_community_literal
from lbd.config.schema import BgpAdvertisementConfig, BgpPeerConfig

PEER = """
[[bgp_peer]]
name = "gw"
my_asn = 64512
peer_asn = 64512
peer_address = "192.168.1.254"
"""


def peer_error(extra: str, base_peer: str = PEER) -> str:
    return only_error(base_peer + extra + "\n")


def test_peer_defaults() -> None:
    (peer,) = ok(PEER).bgp_peers
    assert peer == BgpPeerConfig(name="gw", my_asn=64512, peer_asn=64512,
                                 peer_address=ipaddress.ip_address("192.168.1.254"))
    assert peer.hold_time == 90.0 and peer.keepalive_time is None and peer.connect_time == 10.0
    assert peer.peer_port == 179 and not peer.passive and not peer.graceful_restart


def test_peer_every_field() -> None:
    config = ok("""
[[bfd_profile]]
name = "fast"

[[bgp_peer]]
name = "full"
my_asn = 4200000000
dynamic_asn = "external"
local_asn = 65001
peer_address = "fd77::1"
source_address = "fd77::2"
peer_port = 1179
hold_time = 30
keepalive_time = 10
connect_time = 5
router_id = "10.77.0.2"
node_selector = { role = "edge" }
password_file = "md5.key"
bfd_profile = "fast"
graceful_restart = true
graceful_restart_time = 300
ebgp_multihop = 4
vrf = "red"
passive = true
dual_stack_address_family = true

[[bgp_peer]]
my_asn = 65000
peer_asn = 65001
peer_address = "10.77.0.1"
ebgp_multihop = true
password = "s3cret"
""", base='[node]\nname = "n"\n')
    full, second = config.bgp_peers
    assert full == BgpPeerConfig(
        name="full", my_asn=4200000000, peer_address=ipaddress.ip_address("fd77::1"), peer_asn=None,
        dynamic_asn="external", local_asn=65001, source_address=ipaddress.ip_address("fd77::2"), peer_port=1179,
        hold_time=30.0, keepalive_time=10.0, connect_time=5.0, router_id=ipaddress.IPv4Address("10.77.0.2"),
        node_selector={"role": "edge"}, password=None, password_file=Path("/etc/md5.key"), bfd_profile="fast",
        graceful_restart=True, graceful_restart_time=300, ebgp_multihop=4, vrf="red", passive=True,
        dual_stack_address_family=True,
    )
    assert second.name == "peer-1" and second.ebgp_multihop == 255 and second.password == "s3cret"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("my_asn = 0", 'bgp_peer "gw": my_asn: 0 is out of range 1..4294967295'),
        ("my_asn = 4294967296", 'bgp_peer "gw": my_asn: 4294967296 is out of range 1..4294967295'),
        ("peer_port = 0", 'bgp_peer "gw": peer_port: 0 is out of range 1..65535'),
        ("hold_time = 2", 'bgp_peer "gw": hold_time: 2 must be 0 (no keepalives) or at least 3 seconds '
                          "(RFC 4271 §4.2)"),
        ("hold_time = 3.5", 'bgp_peer "gw": hold_time: 3.5 must be a whole number of seconds'),
        ("hold_time = 65536", 'bgp_peer "gw": hold_time: 65536 must be at most 65535 seconds'),
        ("hold_time = 9\nkeepalive_time = 10", 'bgp_peer "gw": keepalive_time: 10 s is longer than hold_time (9 s)'),
        ("keepalive_time = 0", 'bgp_peer "gw": keepalive_time: 0 disables keepalives, which only works with '
                               "hold_time = 0"),
        ("connect_time = 0", 'bgp_peer "gw": connect_time: 0 must be at least 1 seconds'),
        ("connect_time = 65536", 'bgp_peer "gw": connect_time: 65536 must be at most 65535 seconds'),
        ('router_id = "fd77::1"', 'bgp_peer "gw": router_id: "fd77::1" is not an IPv4 address'),
        ('router_id = "0.0.0.0"', 'bgp_peer "gw": router_id: 0.0.0.0 is not a valid BGP identifier (RFC 6286 §2.1)'),
        ('password = "a"\npassword_file = "/k"', "bgp_peer \"gw\": 'password' and 'password_file' are mutually "
                                                 "exclusive"),
        (f'password = "{"x" * 81}"', 'bgp_peer "gw": password: is 81 bytes; TCP MD5 keys hold at most 80'),
        ("ebgp_multihop = 2", "bgp_peer \"gw\": ebgp_multihop: only applies to eBGP, and this session is iBGP "
                              "(the peer's AS is ours)"),
        ("graceful_restart_time = 60", 'bgp_peer "gw": graceful_restart_time: only meaningful with '
                                       "graceful_restart = true"),
        ("graceful_restart = true\ngraceful_restart_time = 4096",
         'bgp_peer "gw": graceful_restart_time: 4096 is out of range 1..4095'),
        ('source_address = "fd77::9"', 'bgp_peer "gw": source_address: fd77::9 is ipv6 but peer_address '
                                       "192.168.1.254 is ipv4"),
        ('vrf = "a/b"', "bgp_peer \"gw\": vrf: \"a/b\" is not a valid interface name (1-15 characters, no '/', "
                        "':' or spaces)"),
        ("local_asn = 64512", 'bgp_peer "gw": local_asn: 64512 equals my_asn: omit it'),
        ("passive = 1", 'bgp_peer "gw": passive: expected a boolean, got an integer (1)'),
        ("dynamic_asn = \"internal\"", "bgp_peer \"gw\": set exactly one of 'peer_asn' and 'dynamic_asn'"),
        ("peer_adress = \"1.2.3.4\"", "bgp_peer \"gw\": unknown key 'peer_adress' (did you mean 'peer_address'?)"),
    ],
)
def test_peer_errors(extra: str, expected: str) -> None:
    base = PEER.replace("my_asn = 64512\n", "") if extra.startswith("my_asn") else PEER
    assert peer_error(extra, base) == f"{FILE}: {expected}"


def test_peer_required_and_exclusive_fields() -> None:
    found = errors("""
[[bgp_peer]]
name = "a"

[[bgp_peer]]
name = "b"
my_asn = 1
dynamic_asn = "sideways"
peer_address = "224.0.0.5"
""")
    has_error(found, "bgp_peer \"a\": missing required key 'my_asn'")
    has_error(found, "bgp_peer \"a\": set exactly one of 'peer_asn' and 'dynamic_asn'")
    has_error(found, "bgp_peer \"a\": missing required key 'peer_address'")
    has_error(found, 'bgp_peer "b": dynamic_asn: "sideways" is not one of "internal", "external"')
    has_error(found, 'bgp_peer "b": peer_address: 224.0.0.5 cannot be a BGP peer')
    assert len(found) == 5, found


def test_dynamic_internal_rejects_multihop() -> None:
    message = only_error("""
[[bgp_peer]]
name = "d"
my_asn = 65000
dynamic_asn = "internal"
peer_address = "10.77.0.1"
ebgp_multihop = 3
""")
    assert "ebgp_multihop: only applies to eBGP" in message


def test_duplicate_peers() -> None:
    found = errors(PEER + PEER.replace('"gw"', '"gw2"') + PEER)
    has_error(found, 'bgp_peer "gw2": peer_address: 192.168.1.254 port 179 is already configured by '
                     'bgp_peer "gw" for the same nodes')
    has_error(found, 'bgp_peer[2]: name: "gw" is already the name of bgp_peer[0]')
    assert len(found) == 2
    # the same router from two sets of nodes is fine
    ok(PEER + PEER.replace('"gw"', '"gw2"') + 'node_selector = { rack = "r2" }\n')


# --- advertisements ---------------------------------------------------------------


def test_advertisement_defaults_and_values() -> None:
    config = ok(PEER + """
[communities]
edge = "65000:100"
big = "large:4200000000:1:2"

[[bgp_advertisement]]

[[bgp_advertisement]]
name = "tagged"
pools = ["lan"]
aggregation_length = 28
aggregation_length_v6 = 120
local_pref = 200
communities = ["edge", "big", "0065001:7", "LARGE:1:2:3", "no-export"]
peers = ["gw"]
node_selector = { rack = "r1" }
""")
    assert config.communities == {"edge": "65000:100", "big": "large:4200000000:1:2"}
    first, second = config.bgp_advertisements
    assert first == BgpAdvertisementConfig(name="bgp-0")
    assert second == BgpAdvertisementConfig(
        name="tagged", pools=("lan",), aggregation_length=28, aggregation_length_v6=120, local_pref=200,
        communities=("65000:100", "large:4200000000:1:2", "65001:7", "large:1:2:3", "65535:65281"),
        peers=("gw",), node_selector={"rack": "r1"},
    )


def test_alias_shadows_well_known_name() -> None:
    config = ok('[communities]\nno-export = "1:1"\n[[bgp_advertisement]]\ncommunities = ["no-export"]\n')
    assert config.bgp_advertisements[0].communities == ("1:1",)


@pytest.mark.parametrize(
    ("text", "value", "problem"),
    [
        ("65535:65535", "65535:65535", None),
        ("0:0", "0:0", None),
        ("large:4294967295:0:4294967295", "large:4294967295:0:4294967295", None),
        ("65536:1", None, '"65536:1": 65536 does not fit in 16 bits (a community has 16-bit parts)'),
        ("large:1:2:4294967296", None, '"large:1:2:4294967296": 4294967296 does not fit in 32 bits '
                                       "(a large community has 32-bit parts)"),
        ("large:1:2", None, '"large:1:2" is not a large community (large:A:B:C)'),
        ("1:2:3", None, '"1:2:3" is not a community (A:B or large:A:B:C) nor a defined alias'),
        ("a:1", None, '"a:1": "a" is not a number'),
        ("-1:1", None, '"-1:1": "-1" is not a number'),
        ("１:1", None, '"１:1": "１" is not a number'),
    ],
)
def test_community_literals(text: str, value: str | None, problem: str | None) -> None:
    assert parse_community_literal(text) == (value, problem)


def test_community_errors() -> None:
    found = errors("""
[communities]
"a:b" = "1:1"
good = "1:70000"
num = 5

[[bgp_advertisement]]
communities = ["1:1", "01:1", "undefined", 7]
""")
    has_error(found, "communities: a:b: an alias must be non-empty and contain no ':' (that would read as a value)")
    has_error(found, 'communities: good: "1:70000": 70000 does not fit in 16 bits (a community has 16-bit parts)')
    has_error(found, "communities: num: expected a string, got an integer (5)")
    has_error(found, 'bgp_advertisement[0]: communities[1]: "01:1" (1:1) repeats communities[0]')
    has_error(found, 'bgp_advertisement[0]: communities[2]: "undefined" is not a community (A:B or large:A:B:C) '
                     "nor a defined alias")
    has_error(found, "bgp_advertisement[0]: communities[3]: expected a string, got an integer (7)")
    assert len(found) == 6, found


def test_advertisement_references_and_ranges() -> None:
    found = errors(PEER + """
[[bgp_advertisement]]
name = "a"
pools = ["lann"]
peers = ["gww", "nobody"]
aggregation_length = 33
aggregation_length_v6 = -1
local_pref = 4294967296

[[bgp_advertisement]]
name = "a"
""")
    has_error(found, 'bgp_advertisement "a": pools: no pool is named "lann" (did you mean \'lan\'?)')
    has_error(found, 'bgp_advertisement "a": peers: no bgp_peer is named "gww" (did you mean \'gw\'?)')
    has_error(found, 'bgp_advertisement "a": peers: no bgp_peer is named "nobody"')
    has_error(found, 'bgp_advertisement "a": aggregation_length: 33 is out of range 0..32')
    has_error(found, 'bgp_advertisement "a": aggregation_length_v6: -1 is out of range 0..128')
    has_error(found, 'bgp_advertisement "a": local_pref: 4294967296 is out of range 0..4294967295')
    has_error(found, 'bgp_advertisement[1]: name: "a" is already the name of bgp_advertisement[0]')
    assert len(found) == 7, found


def test_reference_to_a_broken_peer_is_not_reported_missing() -> None:
    found = errors('[[bgp_peer]]\nname = "half"\n[[bgp_advertisement]]\npeers = ["half"]\n')
    assert not any("no bgp_peer" in m for m in found), found


def test_aggregation_rule_of_metallb() -> None:
    """Per pool entry the largest CIDR block bounds the aggregation (MetalLB's lowestMask)."""
    base = '[node]\nname = "n"\n'
    pools = """
[[pool]]
name = "p"
addresses = ["10.77.0.0/28", "10.77.1.1-10.77.1.6", "fd77::/120"]
"""
    # /28 -> 28; .1-.6 is .1/32 .2/31 .4/31 .6/32 -> 31; fd77::/120 -> 120
    ok(pools + "[[bgp_advertisement]]\naggregation_length = 31\naggregation_length_v6 = 120\n", base=base)
    found = errors(pools + "[[bgp_advertisement]]\naggregation_length = 30\naggregation_length_v6 = 119\n",
                   base=base)
    assert found == [
        f'{FILE}: bgp_advertisement[0]: aggregation_length: /30 is shorter than /31, the largest block of '
        'pool "p" addresses[1] ("10.77.1.1-10.77.1.6"): the aggregate would cover addresses outside the pool',
        f'{FILE}: bgp_advertisement[0]: aggregation_length_v6: /119 is shorter than /120, the largest block of '
        'pool "p" addresses[2] ("fd77::/120"): the aggregate would cover addresses outside the pool',
    ]
    found = errors(pools + "[[bgp_advertisement]]\naggregation_length = 24\n", base=base)
    assert len(found) == 2  # both IPv4 entries, the /28 and the range


def test_aggregation_applies_only_to_the_named_pools() -> None:
    ok('[[pool]]\nname = "big"\naddresses = ["10.42.0.0/16"]\n'
       '[[bgp_advertisement]]\npools = ["big"]\naggregation_length = 16\n')


def test_local_pref_only_for_ibgp() -> None:
    ebgp = PEER.replace("peer_asn = 64512", "peer_asn = 65000")
    message = only_error(ebgp + "[[bgp_advertisement]]\nlocal_pref = 100\n")
    assert message == (f"{FILE}: bgp_advertisement[0]: local_pref: LOCAL_PREF is only sent to iBGP peers "
                       '(RFC 4271 §5.1.5), and every peer it applies to is eBGP ("gw")')
    # with at least one iBGP peer in scope it is meaningful
    ok(ebgp + PEER.replace('"gw"', '"ibgp"').replace("192.168.1.254", "192.168.1.253")
       + "[[bgp_advertisement]]\nlocal_pref = 100\n")
    # and naming only the iBGP peer too
    ok(ebgp + PEER.replace('"gw"', '"ibgp"').replace("192.168.1.254", "192.168.1.253")
       + '[[bgp_advertisement]]\nlocal_pref = 100\npeers = ["ibgp"]\n')


def test_conflicting_local_pref_for_one_pool() -> None:
    found = errors(PEER + """
[[bgp_advertisement]]
name = "one"
local_pref = 100

[[bgp_advertisement]]
name = "two"
pools = ["lan"]
local_pref = 200

[[bgp_advertisement]]
name = "three"
aggregation_length = 28
local_pref = 300
""")
    assert found == [f'{FILE}: bgp_advertisement "two": local_pref: 200 conflicts with local_pref 100 of '
                     'bgp_advertisement "one" for pool "lan" at the same aggregation length']
