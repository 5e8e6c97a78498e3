"""The libnftables transaction taking lbd's tables from the applied ``Ruleset`` to the desired one.

Pure: ``prepare_text()`` gives the nft-syntax commands run just before (tables, new empty maps),
``plan_transaction()`` the JSON commands of ONE libnftables transaction. The layout they build
is described in ``lbd.forward.ruleset`` (and docs/forwarding.md).
"""

from __future__ import annotations

import itertools
import operator
from typing import Any, Mapping, Sequence

from lbd.forward.ruleset import DSR, NAT, TABLE, BackendTarget, PortForward, Ruleset


_BY_ID: list[tuple[tuple[BackendTarget, ...], dict[str, BackendTarget]]] = []


def _targets_by_id(backends: tuple[BackendTarget, ...]) -> dict[str, BackendTarget]:
    """id -> target; the last answer when ``backends`` is the very same tuple (``_sorted_targets``)."""
    if _BY_ID and _BY_ID[0][0] is backends:
        return _BY_ID[0][1]
    _BY_ID[:] = [(backends, {b.name: b for b in backends})]
    return _BY_ID[0][1]


def _t(family: str) -> dict[str, str]:
    return {"family": family, "table": TABLE}


def _payload(protocol: str, fieldname: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": fieldname}}


def _ipname(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def _lookup(p: PortForward, name: str) -> dict[str, Any]:
    key = {"concat": [_payload(_ipname(p.family), "saddr"), _payload(p.protocol, "sport")]}
    return {"map": {"key": {"jhash": {"mod": p.size, "seed": p.seed, "expr": key}}, "data": "@" + name}}


# A TCP segment opening a connection: SYN set, ACK clear (RFC 9293 section 3.5).
def _syn(op: str) -> dict[str, Any]:
    return {"match": {"op": op, "left": {"&": [_payload("tcp", "flags"), ["syn", "ack"]]}, "right": "syn"}}


FLOW_TIMEOUT = 7200  # s: how long a flow opened in a drained bucket is remembered after its last packet
FLOW_SET_SIZE = 262144


def _flow(p: PortForward) -> dict[str, Any]:
    return {"concat": [_payload(_ipname(p.family), "saddr"), _payload("tcp", "sport")]}


def _port_rules(p: PortForward) -> list[list[dict[str, Any]]]:
    """The port chain's rules (each a list of expressions)."""
    if p.split:
        # dsr keeps no per-flow state in general, so the packet says whether its flow is new: a
        # bare SYN takes the new-flow map ``m`` (drained backends are not in it); every other
        # packet takes the established-flow map ``e`` where it has an entry (the buckets of
        # drained backends, still pointing at them), else ``m``. A connection opened during a
        # drain in such a bucket went to another backend: its flow (client address . port) is
        # remembered in the dynamic set ``n`` so its later packets follow ``m`` too. That is the
        # only per-flow state, and only for those flows. ``d`` holds the buckets where ``e`` has
        # an entry. A SYN finding no entry (every backend drained) falls through to the node.
        fwd = {"dev": p.device, "family": _ipname(p.family)}
        bucket = {"jhash": {"mod": p.size, "seed": p.seed, "expr": _flow(p)}}
        remember = {"set": {"op": "update", "elem": _flow(p), "set": "@" + p.nset}}
        return [
            [_syn("=="), {"match": {"op": "==", "left": bucket, "right": "@" + p.dset}}, remember,
             {"fwd": {**fwd, "addr": _lookup(p, p.map)}}],
            [_syn("=="), {"fwd": {**fwd, "addr": _lookup(p, p.map)}}],
            [_syn("!="), {"match": {"op": "==", "left": _flow(p), "right": "@" + p.nset}}, remember,
             {"fwd": {**fwd, "addr": _lookup(p, p.map)}}],
            [_syn("!="), {"fwd": {**fwd, "addr": _lookup(p, p.emap)}}],
            [_syn("!="), {"fwd": {**fwd, "addr": _lookup(p, p.map)}}],
        ]
    if p.mode == "dsr":
        return [[{"fwd": {"dev": p.device, "family": _ipname(p.family), "addr": _lookup(p, p.map)}}]]
    return [[{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": p.protocol}},
             {"dnat": {"family": _ipname(p.family), "addr": _lookup(p, p.map)}}]]


def _dispatch_rule(p: PortForward) -> list[dict[str, Any]]:
    return [
        {"match": {"op": "==", "left": _payload(_ipname(p.family), "daddr"), "right": p.vip}},
        {"match": {"op": "==", "left": _payload(p.protocol, "dport"), "right": p.port}},
        {"jump": {"target": p.name}},
    ]


def _elements(ids: Sequence[str], buckets: Sequence[int], targets: Mapping[str, BackendTarget] | None) -> list[Any]:
    if targets is None:  # a set of buckets
        return list(buckets)
    return [[b, targets[ids[b]].value()] for b in buckets]


def map_declaration(p: PortForward, name: str | None = None) -> str:
    """nft syntax for a port's map ``name`` (default: its new-flow map; see ``prepare_text``)."""
    ip = _ipname(p.family)
    # The data's typeof names the port's own protocol: nft derives a protocol dependency from
    # it, and a "tcp dport" map in a udp port's dnat is refused ("conflicting protocols").
    data = f"{ip} daddr" if p.mode == "dsr" else f"{ip} daddr . {p.protocol} dport"
    return f"add map {p.table_family} {TABLE} {name or p.map} {{ typeof numgen random mod 2 : {data}; counter; }}"


def _chunks(items: list[Any], size: int = 20000) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


def prepare_text(applied: Ruleset | None, want: Ruleset) -> str:
    """nft-syntax commands run just before the transaction: tables and new, empty maps.

    libnftables 1.0's JSON input cannot declare a map keyed by a 32-bit
    hash (that needs ``typeof``, which its JSON parser lacks), so maps are
    declared here, keyed ``typeof numgen random mod 2`` (an unsized 32-bit
    integer, like the ``jhash`` result; ``typeof jhash ...`` would do too, but
    nft 1.0.6 crashes listing such a map, which would break ``nft list
    ruleset`` for everyone), with a counter on every entry. An empty map that no rule references changes no packet's fate, so
    this does not break the all-or-nothing rule: every change that traffic can
    see is in the one JSON transaction. With ``applied`` None (start, or after
    a failure) lbd's tables are recreated from scratch.
    """
    lines: list[str] = []
    tables = want.tables()
    existing = set() if applied is None else applied.tables()
    for family in (NAT, DSR):
        if applied is None:
            lines += [f"add table {family} {TABLE}", f"delete table {family} {TABLE}"]
        # Only for a new table: any command naming an existing table makes
        # libnftables load its whole cache, set elements included (slow).
        if family in tables and family not in existing:
            lines.append(f"add table {family} {TABLE}")
    have = set() if applied is None else {m for p in applied.ports for m, _ in p.maps()}
    for p in want.ports:
        for m, _ in p.maps():
            if m not in have:
                lines.append(map_declaration(p, m))
        if p.split and p.map not in have:
            addr = "ipv4_addr" if p.family == 4 else "ipv6_addr"
            lines.append(f"add set {p.table_family} {TABLE} {p.dset} {{ typeof numgen random mod 2; }}")
            lines.append(f"add set {p.table_family} {TABLE} {p.nset} {{ type {addr} . inet_service; "
                         f"flags dynamic,timeout; timeout {FLOW_TIMEOUT}s; size {FLOW_SET_SIZE}; }}")
    return "\n".join(lines)


def plan_transaction(applied: Ruleset | None, want: Ruleset) -> list[dict[str, Any]]:
    """The JSON commands taking lbd's tables from ``applied`` to ``want`` in one transaction.

    Order matters inside the batch: objects are added before anything refers
    to them and deleted after the last reference is gone. A moved entry is
    deleted and added again (its counter restarts; ``Forwarder`` keeps the
    count it had).
    """
    full = applied is None
    old = Ruleset() if applied is None else applied
    ops: list[dict[str, Any]] = []
    tables = want.tables()
    new_backends = _targets_by_id(want.backends)
    old_ports = {p.name: p for p in old.ports}
    new_ports = {p.name: p for p in want.ports}

    # 2. new port chains; the bucket maps of every port
    for name, p in new_ports.items():
        if old_ports.get(name) is not p:  # a port whose health did not change is the very same object
            ops += _port_ops(p, old_ports.get(name), new_backends)

    # 3. the base chains: rebuilt whenever the set of forwarded VIP ports changes
    dispatch_old = sorted((p.key() for p in old.ports))
    dispatch_new = sorted((p.key() for p in want.ports))
    if full or dispatch_old != dispatch_new or old.devices != want.devices or old.snat != want.snat:
        if NAT in tables:
            ops += _nat_base_ops(full or NAT not in old.tables(), want)
        if DSR in tables:
            ops += _dsr_base_ops(set() if full or DSR not in old.tables() else set(old.devices), want)

    # 4. what is gone: port chains and their maps
    if not full:
        ops += _removal_ops(old, old_ports, new_ports, tables)
    return ops


def _port_ops(p: PortForward, before: PortForward | None,
              new_backends: Mapping[str, BackendTarget]) -> list[dict[str, Any]]:
    """One changed or new port: its chain (when new) and the changed entries of its maps."""
    ops: list[dict[str, Any]] = []
    t = _t(p.table_family)
    before_maps: dict[str, tuple[str, ...]] = {}
    if before is None:
        ops.append({"add": {"chain": {**t, "name": p.name}}})
        for expr in _port_rules(p):
            ops.append({"add": {"rule": {**t, "chain": p.name, "expr": expr}}})
    else:
        before_maps = dict(before.maps())
    objects = [(m, ids, before_maps.get(m, ()), new_backends) for m, ids in p.maps()]
    if p.split:  # the set of buckets where the established-flow map has an entry
        present = tuple("1" if i else "" for i in p.held)
        present_before = tuple("1" if i else "" for i in before_maps.get(p.emap, ()))
        objects.append((p.dset, present, present_before, None))
    for m, ids, old_ids, targets in objects:
        ops += _element_ops(t, m, ids, old_ids, targets)
    return ops


def _element_ops(t: dict[str, str], m: str, ids: tuple[str, ...], before: tuple[str, ...],
                 targets: Mapping[str, BackendTarget] | None) -> list[dict[str, Any]]:
    """The element deletes, then adds, taking map (or bucket set) ``m`` from ``before`` to ``ids``
    (a backend id per bucket, "" for no element)."""
    ops: list[dict[str, Any]] = []
    if len(before) != len(ids):
        changed = list(range(max(len(before), len(ids))))
    else:  # C-level: an O(table) Python loop would be most of a small change's cost
        changed = list(itertools.compress(itertools.count(), map(operator.ne, before, ids)))
    if not changed:
        return ops
    gone = [i for i in changed if i < len(before) and before[i]]
    for chunk in _chunks(gone):
        if chunk:
            ops.append({"delete": {"element": {**t, "name": m, "elem": chunk}}})
    fresh = [i for i in changed if i < len(ids) and ids[i]]
    for chunk in _chunks(fresh):
        if chunk:
            ops.append({"add": {"element": {**t, "name": m, "elem": _elements(ids, chunk, targets)}}})
    return ops


def _nat_base_ops(new_table: bool, want: Ruleset) -> list[dict[str, Any]]:
    """The nat table's base chains rebuilt: dispatch in prerouting, masquerade in postrouting
    for the backends in the snat sets (the chains and sets are declared when ``new_table``)."""
    ops: list[dict[str, Any]] = []
    t = _t(NAT)
    if new_table:
        ops.append({"add": {"chain": {**t, "name": "prerouting", "type": "nat", "hook": "prerouting",
                                      "prio": -100, "policy": "accept"}}})
        ops.append({"add": {"chain": {**t, "name": "postrouting", "type": "nat", "hook": "postrouting",
                                      "prio": 100, "policy": "accept"}}})
        for fam, ftype in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            ops.append({"add": {"set": {**t, "name": f"snat{fam}", "type": [ftype, "inet_proto", "inet_service"]}}})
    ops.append({"flush": {"chain": {**t, "name": "prerouting"}}})
    ops.append({"flush": {"chain": {**t, "name": "postrouting"}}})
    for p in want.ports:
        if p.mode == "nat":
            ops.append({"add": {"rule": {**t, "chain": "prerouting", "expr": _dispatch_rule(p)}}})
    for fam in (4, 6):
        ops.append({"flush": {"set": {**t, "name": f"snat{fam}"}}})
        elems = [{"concat": [a, proto, port]} for f, a, proto, port in want.snat if f == fam]
        if elems:
            ops.append({"add": {"element": {**t, "name": f"snat{fam}", "elem": elems}}})
        ops.append({"add": {"rule": {**t, "chain": "postrouting", "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
            {"match": {"op": "==", "left": {"concat": [
                _payload(_ipname(fam), "daddr"), {"meta": {"key": "l4proto"}}, _payload("th", "dport")]},
                "right": f"@snat{fam}"}},
            {"masquerade": None},
        ]}}})
    return ops


def _dsr_base_ops(old_devices: set[str], want: Ruleset) -> list[dict[str, Any]]:
    """The netdev table's ingress chains rebuilt, one per device; those of devices gone deleted."""
    ops: list[dict[str, Any]] = []
    t = _t(DSR)
    for dev in want.devices:
        chain = f"in-{dev}"
        if dev not in old_devices:
            ops.append({"add": {"chain": {**t, "name": chain, "type": "filter", "hook": "ingress",
                                          "dev": dev, "prio": 0, "policy": "accept"}}})
        ops.append({"flush": {"chain": {**t, "name": chain}}})
        for p in want.ports:
            if p.mode == "dsr":
                ops.append({"add": {"rule": {**t, "chain": chain, "expr": _dispatch_rule(p)}}})
    for dev in old_devices - set(want.devices):
        ops.append({"delete": {"chain": {**t, "name": f"in-{dev}"}}})
    return ops


def _removal_ops(old: Ruleset, old_ports: Mapping[str, PortForward], new_ports: Mapping[str, PortForward],
                 tables: set[str]) -> list[dict[str, Any]]:
    """The port chains, maps and sets no longer wanted, then the tables no longer wanted (a table's
    deletion takes its contents with it: nothing in it is deleted one by one)."""
    ops: list[dict[str, Any]] = []
    for name, p in old_ports.items():
        if name not in new_ports and p.table_family in tables:
            t = _t(p.table_family)
            ops.append({"delete": {"chain": {**t, "name": name}}})
            for m, _ in p.maps():
                ops.append({"delete": {"map": {**t, "name": m}}})
            if p.split:
                ops.append({"delete": {"set": {**t, "name": p.dset}}})
                ops.append({"delete": {"set": {**t, "name": p.nset}}})
    for family in sorted(old.tables() - tables):
        ops.append({"delete": {"table": {"family": family, "name": TABLE}}})
    return ops
