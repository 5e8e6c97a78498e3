"""``[[bgp_peer]]``, ``[[bgp_advertisement]]`` and ``[communities]``.

Field names are MetalLB's BGPPeer (v1beta2) and BGPAdvertisement in
snake_case, with MetalLB's validation rules (``internal/config/config.go``)
plus the protocol limits of the RFCs that define each field.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from lbd.config.read import (
    MISSING,
    Errors,
    Table,
    UniqueNames,
    array_of_tables,
    check_ifname,
    check_string,
    did_you_mean,
    entry_label,
    got,
    quote,
)
from lbd.config.schema import BgpAdvertisementConfig, BgpPeerConfig, PoolConfig
from lbd.model import Family, IPAddress
from lbd.selectors import selects_pool

ASN_MAX = 4294967295  # RFC 6793: four-octet AS numbers
U32_MAX = 4294967295

PEER_KEYS = (
    "name", "my_asn", "peer_asn", "dynamic_asn", "local_asn", "peer_address", "source_address", "peer_port",
    "hold_time", "keepalive_time", "connect_time", "router_id", "node_selector", "password",
    "password_file", "bfd_profile", "graceful_restart", "graceful_restart_time", "ebgp_multihop", "vrf",
    "passive", "dual_stack_address_family",
)
ADVERTISEMENT_KEYS = (
    "name", "pools", "aggregation_length", "aggregation_length_v6", "local_pref", "communities", "peers",
    "node_selector", "pool_selectors", "accept",
)

# Well-known communities usable by name; a [communities] alias of the same
# name takes precedence.
WELL_KNOWN_COMMUNITIES = {
    "graceful-shutdown": "65535:0",  # RFC 8326
    "blackhole": "65535:666",  # RFC 7999
    "no-export": "65535:65281",  # RFC 1997
    "no-advertise": "65535:65282",  # RFC 1997
    "no-export-subconfed": "65535:65283",  # RFC 1997
    "no-peer": "65535:65284",  # RFC 3765
}

# TCP_MD5SIG_MAXKEYLEN in include/uapi/linux/tcp.h
MD5_KEY_MAX = 80


def parse_community_literal(text: str) -> tuple[str | None, str | None]:
    """``A:B`` (RFC 1997, 16 bits each) or ``large:A:B:C`` (RFC 8092, 32 bits each).

    Returns (canonical value, None) or (None, what is wrong).
    """
    parts = text.strip().split(":")
    if parts[0].lower() == "large":
        numbers, bits, kind = parts[1:], 32, "large community"
        if len(numbers) != 3:
            return None, f"{quote(text)} is not a large community (large:A:B:C)"
    else:
        numbers, bits, kind = parts, 16, "community"
        if len(numbers) != 2:
            return None, f"{quote(text)} is not a community (A:B or large:A:B:C) nor a defined alias"
    values = []
    for part in numbers:
        if not part.isdigit() or not part.isascii():
            return None, f"{quote(text)}: {quote(part)} is not a number"
        value = int(part)
        if value >= 1 << bits:
            return None, f"{quote(text)}: {value} does not fit in {bits} bits (a {kind} has {bits}-bit parts)"
        values.append(str(value))
    prefix = "large:" if bits == 32 else ""
    return prefix + ":".join(values), None


def parse_communities_table(errors: Errors, doc: dict) -> dict[str, str]:
    """The top-level ``[communities]`` table: alias -> literal value."""
    raw = doc.get("communities", MISSING)
    if raw is MISSING:
        return {}
    if not isinstance(raw, dict):
        errors.add("communities", f"expected a table of alias = \"value\", {got(raw)}")
        return {}
    out: dict[str, str] = {}
    for alias, value in raw.items():
        where = f"communities: {alias}"
        if not alias.strip() or ":" in alias:
            errors.add(where, "an alias must be non-empty and contain no ':' (that would read as a value)")
            continue
        text = check_string(errors, where, value)
        if text is None:
            continue
        literal, problem = parse_community_literal(text)
        if problem:
            errors.add(where, problem)
            continue
        assert literal is not None
        out[alias] = literal
    return out


def resolve_community(text: str, aliases: dict[str, str]) -> tuple[str | None, str | None]:
    if text in aliases:
        return aliases[text], None
    if text in WELL_KNOWN_COMMUNITIES:
        return WELL_KNOWN_COMMUNITIES[text], None
    return parse_community_literal(text)


def is_ibgp(peer: BgpPeerConfig) -> bool:
    """iBGP when the session's local AS equals the peer's (RFC 4271 §1.1)."""
    if peer.dynamic_asn is not None:
        return peer.dynamic_asn == "internal"
    local = peer.local_asn if peer.local_asn is not None else peer.my_asn
    return peer.peer_asn == local


def parse_peers(errors: Errors, doc: dict, base: Path) -> tuple[list[tuple[str, BgpPeerConfig]], set[str]]:
    """The sound peers (with their labels), and the names of every peer,
    broken ones included, so that references to a broken peer are not
    reported as missing too."""
    out: list[tuple[str, BgpPeerConfig]] = []
    names = UniqueNames(errors, "bgp_peer")
    endpoints: dict[tuple, str] = {}
    for i, data in array_of_tables(errors, doc, "bgp_peer"):
        label = entry_label("bgp_peer", data, i)
        before = len(errors)
        peer = _parse_peer(errors, label, data, i, base)
        name = data.get("name", f"peer-{i}")
        if isinstance(name, str) and not names.claim(name, i):
            continue
        if peer is None or len(errors) > before:
            continue
        key = (peer.peer_address, peer.peer_port, peer.vrf, frozenset(peer.node_selector))
        if key in endpoints:
            errors.add(label, f"peer_address: {peer.peer_address} port {peer.peer_port} is already "
                              f"configured by {endpoints[key]} for the same nodes")
            continue
        endpoints[key] = label
        out.append((label, peer))
    return out, names.names()


def _parse_peer(errors: Errors, label: str, data: dict, index: int, base: Path) -> BgpPeerConfig | None:
    t = Table(errors, label, data, PEER_KEYS)
    name = t.name("name", f"peer-{index}")
    my_asn, peer_asn, dynamic_asn, local_asn = _peer_asns(t)
    peer_address, source_address = _peer_addresses(t)
    peer_port = t.integer("peer_port", 179, lo=1, hi=65535)
    hold_time, keepalive, connect_time = _peer_timers(t)
    router_id = t.ip("router_id", version=4)
    if router_id is not None and int(router_id) == 0:
        t.error("router_id", "0.0.0.0 is not a valid BGP identifier (RFC 6286 §2.1)")
    node_selector = t.selectors("node_selector")
    password, password_file = _peer_password(t, base)
    bfd_profile = t.name("bfd_profile")
    graceful_restart, graceful_restart_time = _graceful_restart(t)
    ebgp_multihop = _multihop(t)
    vrf = check_ifname(errors, t.at("vrf"), t.raw("vrf")) if t.has("vrf") else None
    passive = t.boolean("passive", False)
    dual_stack = t.boolean("dual_stack_address_family", False)
    if my_asn is None or peer_address is None or name is None:
        return None
    peer = BgpPeerConfig(
        name=name, my_asn=my_asn, peer_address=peer_address, peer_asn=peer_asn, dynamic_asn=dynamic_asn,
        local_asn=local_asn, source_address=source_address, peer_port=peer_port,
        hold_time=hold_time if hold_time is not None else 90.0, keepalive_time=keepalive,
        connect_time=connect_time if connect_time is not None else 10.0, router_id=router_id,
        node_selector=node_selector, password=password, password_file=password_file, bfd_profile=bfd_profile,
        graceful_restart=graceful_restart, graceful_restart_time=graceful_restart_time or 120,
        ebgp_multihop=ebgp_multihop, vrf=vrf, passive=passive, dual_stack_address_family=dual_stack,
    )
    if ebgp_multihop is not None and (peer_asn is not None or dynamic_asn is not None) and is_ibgp(peer):
        t.error("ebgp_multihop", "only applies to eBGP, and this session is iBGP (the peer's AS is ours)")
    return peer


def _peer_asns(t: Table) -> tuple[int | None, int | None, str | None, int | None]:
    """``my_asn``, ``peer_asn`` or ``dynamic_asn`` (exactly one), and ``local_asn``."""
    my_asn = t.integer("my_asn", lo=1, hi=ASN_MAX, required=True)
    peer_asn = t.integer("peer_asn", lo=1, hi=ASN_MAX)
    dynamic_asn = t.string("dynamic_asn", choices=("internal", "external"))
    if t.has("peer_asn") == t.has("dynamic_asn"):
        t.errors.add(t.where, "set exactly one of 'peer_asn' and 'dynamic_asn'")
    local_asn = t.integer("local_asn", lo=1, hi=ASN_MAX)
    if local_asn is not None and local_asn == my_asn:
        t.error("local_asn", f"{local_asn} equals my_asn: omit it")
    return my_asn, peer_asn, dynamic_asn, local_asn


def _peer_addresses(t: Table) -> tuple[IPAddress | None, IPAddress | None]:
    """``peer_address`` and ``source_address``, of one family."""
    peer_address = t.ip("peer_address", required=True)
    if peer_address is not None and (peer_address.is_unspecified or peer_address.is_multicast):
        t.error("peer_address", f"{peer_address} cannot be a BGP peer")
    source_address = t.ip("source_address")
    if source_address is not None and peer_address is not None and source_address.version != peer_address.version:
        t.error("source_address", f"{source_address} is {Family.of(source_address).value} but "
                                  f"peer_address {peer_address} is {Family.of(peer_address).value}")
    return peer_address, source_address


def _peer_timers(t: Table) -> tuple[float | None, float | None, float | None]:
    """``hold_time``, ``keepalive_time`` and ``connect_time`` in seconds."""
    # RFC 4271 §4.2: the Hold Time is 16-bit whole seconds, zero or at least three.
    hold_time = t.seconds("hold_time", 90.0, hi=65535, whole=True)
    if hold_time is not None and 0 < hold_time < 3:
        t.error("hold_time", f"{hold_time:g} must be 0 (no keepalives) or at least 3 seconds (RFC 4271 §4.2)")
    keepalive = t.seconds("keepalive_time")
    if keepalive is not None and hold_time is not None:
        if keepalive > hold_time:
            t.error("keepalive_time", f"{keepalive:g} s is longer than hold_time ({hold_time:g} s)")
        elif keepalive == 0 and hold_time > 0:
            t.error("keepalive_time", "0 disables keepalives, which only works with hold_time = 0")
    connect_time = t.seconds("connect_time", 10.0, lo=1, hi=65535)
    return hold_time, keepalive, connect_time


def _peer_password(t: Table, base: Path) -> tuple[str | None, Path | None]:
    """The TCP MD5 key (RFC 2385): ``password`` or ``password_file``, not both."""
    password = t.string("password")
    if password is not None and len(password.encode()) > MD5_KEY_MAX:
        t.error("password", f"is {len(password.encode())} bytes; TCP MD5 keys hold at most {MD5_KEY_MAX}")
    password_file = t.path("password_file", None, base)
    if t.has("password") and t.has("password_file"):
        t.errors.add(t.where, "'password' and 'password_file' are mutually exclusive")
    return password, password_file


def _graceful_restart(t: Table) -> tuple[bool, int | None]:
    """``graceful_restart`` and its ``graceful_restart_time`` (RFC 4724)."""
    graceful_restart = t.boolean("graceful_restart", False)
    # RFC 4724 §3: the Restart Time field is 12 bits.
    graceful_restart_time = t.integer("graceful_restart_time", 120, lo=1, hi=4095)
    if t.has("graceful_restart_time") and not graceful_restart:
        t.error("graceful_restart_time", "only meaningful with graceful_restart = true")
    return graceful_restart, graceful_restart_time


def _multihop(t: Table) -> int | None:
    """``ebgp_multihop``: a TTL 1..255, or MetalLB's boolean (true: 255)."""
    value = t.raw("ebgp_multihop")
    if value is MISSING or value is False:
        return None
    if value is True:
        return 255
    return t.integer("ebgp_multihop", lo=1, hi=255)


def parse_advertisements(errors: Errors, doc: dict, aliases: dict[str, str]) -> list[tuple[str, BgpAdvertisementConfig]]:
    out: list[tuple[str, BgpAdvertisementConfig]] = []
    names = UniqueNames(errors, "bgp_advertisement")
    for i, data in array_of_tables(errors, doc, "bgp_advertisement"):
        label = entry_label("bgp_advertisement", data, i)
        t = Table(errors, label, data, ADVERTISEMENT_KEYS)
        before = len(errors)
        name = t.name("name", f"bgp-{i}")
        pools = t.string_list("pools", names=True)
        length = t.integer("aggregation_length", 32, lo=0, hi=32)
        length_v6 = t.integer("aggregation_length_v6", 128, lo=0, hi=128)
        local_pref = t.integer("local_pref", lo=0, hi=U32_MAX)
        communities: dict[str, int] = {}  # value -> index in the file
        for j, item in enumerate(t.array("communities") or []):
            where = f"{t.at('communities')}[{j}]"
            text = check_string(errors, where, item)
            if text is None:
                continue
            value, problem = resolve_community(text, aliases)
            if problem:
                errors.add(where, problem)
                continue
            assert value is not None
            if value in communities:
                errors.add(where, f"{quote(text)} ({value}) repeats communities[{communities[value]}]")
                continue
            communities[value] = j
        peers = t.string_list("peers", names=True)
        node_selector = t.selectors("node_selector")
        pool_selectors = t.selectors("pool_selectors")
        accept = t.string("accept", "local-route", choices=("address", "local-route"))
        if name is None or not names.claim(name, i):
            continue
        out.append((label, BgpAdvertisementConfig(
            name=name, pools=pools, aggregation_length=length, aggregation_length_v6=length_v6,
            local_pref=local_pref, communities=tuple(communities), peers=peers, node_selector=node_selector,
            pool_selectors=pool_selectors, accept=accept or "local-route",
        )))
    return out


def check_advertisements(errors: Errors, advertisements: list[tuple[str, BgpAdvertisementConfig]],
                         pools: list[tuple[str, PoolConfig, tuple[int, ...]]], peers: list[tuple[str, BgpPeerConfig]],
                         peer_names: set[str], pool_names: set[str]) -> None:
    """Cross-checks against pools and peers (MetalLB's rules)."""
    pool_by_name = {pool.name: (label, pool, positions) for label, pool, positions in pools}
    peer_by_name = {peer.name: peer for _, peer in peers}
    local_prefs: dict[tuple[str, int, int], tuple[int, str]] = {}
    for label, adv in advertisements:
        for name in adv.pools:
            if name not in pool_names:
                errors.add(f"{label}: pools", f'no pool is named "{name}"{did_you_mean(name, pool_names)}')
        for name in adv.peers:
            if name not in peer_names:
                errors.add(f"{label}: peers", f'no bgp_peer is named "{name}"{did_you_mean(name, peer_names)}')
        applies_to = [entry for name, entry in pool_by_name.items()
                      if selects_pool(adv.pools, adv.pool_selectors, name, entry[1].labels)]
        for pool_label, pool, positions in applies_to:
            _check_aggregation(errors, label, adv, pool_label, pool, positions)
        targets = [peer_by_name[n] for n in adv.peers if n in peer_by_name] or list(peer_by_name.values())
        if adv.local_pref is not None and targets and not any(is_ibgp(p) for p in targets):
            names = ", ".join(f'"{p.name}"' for p in targets)
            errors.add(f"{label}: local_pref", f"LOCAL_PREF is only sent to iBGP peers (RFC 4271 §5.1.5), "
                                              f"and every peer it applies to is eBGP ({names})")
        if adv.local_pref is not None:
            # MetalLB rejects two advertisements that give one pool at one
            # aggregation different LOCAL_PREFs: the route could carry only one.
            for _, pool, _ in applies_to:
                key = (pool.name, adv.aggregation_length, adv.aggregation_length_v6)
                previous = local_prefs.get(key)
                if previous is not None and previous[0] != adv.local_pref:
                    errors.add(f"{label}: local_pref",
                               f"{adv.local_pref} conflicts with local_pref {previous[0]} of {previous[1]} "
                               f'for pool "{pool.name}" at the same aggregation length')
                elif previous is None:
                    local_prefs[key] = (adv.local_pref, label)


def _check_aggregation(errors: Errors, label: str, adv: BgpAdvertisementConfig, pool_label: str,
                       pool: PoolConfig, positions: tuple[int, ...]) -> None:
    """MetalLB's rule: per pool entry, split into CIDRs, the largest block's
    prefix length is the shortest aggregation allowed. Shorter, the aggregate
    would announce addresses that are not in the pool."""
    for entry, k in zip(pool.addresses, positions):
        blocks = list(ipaddress.summarize_address_range(entry.first, entry.last))
        lowest = min(block.prefixlen for block in blocks)
        if entry.first.version == 4:
            key, length = "aggregation_length", adv.aggregation_length
        else:
            key, length = "aggregation_length_v6", adv.aggregation_length_v6
        if length < lowest:
            errors.add(f"{label}: {key}",
                       f"/{length} is shorter than /{lowest}, the largest block of {pool_label} addresses[{k}] "
                       f"({quote(entry.text)}): the aggregate would cover addresses outside the pool")
