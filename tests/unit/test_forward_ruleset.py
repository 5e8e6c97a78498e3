"""lbd.forward.ruleset (desired state and transactions), lbd.forward.nlobj (netlink parsing),
lbd.forward.health.check_for: the pure parts of forwarding."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
import struct
from pathlib import Path

import pytest

from lbd.config import parse_config
from lbd.forward import nlobj
from lbd.forward.health import check_for
from lbd.forward.ruleset import desired, to_withdraw
from lbd.forward.transaction import plan_transaction, prepare_text
from lbd.model import Allocation

CONFIG = """
[node]
name = "n1"
[[pool]]
name = "p"
addresses = ["10.77.0.100-10.77.0.110"]
[forwarding]
table_size = 1021
seed = 42
[[service]]
name = "web"
ports = ["tcp/80"]
snat = true
backends = ["10.88.1.10:8080", "10.88.1.11:8080", { address = "10.88.1.12", port = 8080, weight = 2 }]
[[service]]
name = "dsr"
ports = ["tcp/81"]
forward = "dsr"
backends = ["10.88.1.10", "10.99.0.1"]
"""
IFS = {"eth0": (ipaddress.ip_interface("10.88.1.1/24"), ipaddress.ip_interface("10.77.0.11/24"))}


@pytest.fixture
def setup():  # type: ignore[no-untyped-def]
    cfg = parse_config(CONFIG, Path("/etc/lbd.toml"))
    services = {s.name: s for s in cfg.services}
    allocations = {
        "static/web": Allocation("static/web", "p", (ipaddress.ip_address("10.77.0.100"),)),
        "static/dsr": Allocation("static/dsr", "p", (ipaddress.ip_address("10.77.0.101"),)),
    }
    return cfg, services, allocations


def up_except(*down: str):  # type: ignore[no-untyped-def]
    return lambda service, backend: str(backend.address) not in down


def test_desired_shares_by_weight_and_health(setup) -> None:
    cfg, services, allocations = setup
    d = desired(services, allocations, up_except(), cfg.forwarding, IFS)
    web = next(p for p in d.ruleset.ports if p.service == "static/web")
    assert web.size == 1021 and web.seed == 42 and web.vip == "10.77.0.100" and web.port == 80
    views = {v.endpoint: v for v in d.views if v.service == "static/web"}
    assert abs(views["10.88.1.12:8080"].share - 0.5) < 0.01 and abs(views["10.88.1.10:8080"].share - 0.25) < 0.01
    assert d.ruleset.snat == tuple((4, f"10.88.1.{i}", "tcp", 8080) for i in (10, 11, 12))
    # dsr: a backend off every local subnet cannot be reached at layer 2: noted, never in the table.
    dsr_views = {v.endpoint: v for v in d.views if v.service == "static/dsr"}
    assert "dsr needs layer 2" in dsr_views["10.99.0.1:81"].note and dsr_views["10.99.0.1:81"].share == 0
    assert d.ruleset.devices == ("eth0",)
    assert {b.device for b in d.ruleset.backends if b.mode == "dsr"} == {"eth0"}
    assert d.no_backend == {}

    down = desired(services, allocations, up_except("10.88.1.12"), cfg.forwarding, IFS)
    views = {v.endpoint: v for v in down.views if v.service == "static/web"}
    assert views["10.88.1.12:8080"].share == 0 and abs(views["10.88.1.10:8080"].share - 0.5) < 0.01
    # The failing backend stays known (its counts too); only the table stops pointing at it.
    assert {b.name for b in down.ruleset.backends} == {b.name for b in d.ruleset.backends}


def test_no_healthy_backend_is_reported_for_withdrawal(setup) -> None:
    cfg, services, allocations = setup
    d = desired(services, allocations, lambda s, b: False, cfg.forwarding, IFS)
    assert d.no_backend == {"static/web": "no healthy backend (0 of 3 up on this node)",
                            "static/dsr": "no healthy backend (0 of 2 up on this node)"}
    assert all(p.buckets == () for p in d.ruleset.ports)
    unknown = desired(services, allocations, lambda s, b: None, cfg.forwarding, IFS)
    assert set(unknown.no_backend) == {"static/web", "static/dsr"}  # not yet checked counts as not healthy
    # The default withdraws the VIP from this node; "keep" keeps it (status says why).
    from dataclasses import replace

    assert to_withdraw(d, services) == {"static/web", "static/dsr"}
    kept = {**services, "static/dsr": replace(services["static/dsr"], on_no_backend="keep")}
    assert to_withdraw(d, kept) == {"static/web"}
    assert to_withdraw(desired(services, allocations, up_except(), cfg.forwarding, IFS), services) == frozenset()


def test_drain_takes_no_new_flows_but_keeps_the_chain(setup) -> None:
    cfg, services, allocations = setup
    from dataclasses import replace

    web = services["static/web"]
    drained = replace(web, backends=tuple(replace(b, weight=0) if str(b.address) == "10.88.1.12" else b
                                          for b in web.backends))
    d = desired({**services, "static/web": drained}, allocations, up_except(), cfg.forwarding, IFS)
    views = {v.endpoint: v for v in d.views if v.service == "static/web"}
    assert views["10.88.1.12:8080"].share == 0 and views["10.88.1.12:8080"].note.startswith("draining")
    backend = views["10.88.1.12:8080"].counter
    assert backend in {b.name for b in d.ruleset.backends}
    assert backend not in next(p for p in d.ruleset.ports if p.service == "static/web").buckets


def _dsr_with(services, weight: int, port: str = "tcp/81"):  # type: ignore[no-untyped-def]
    from lbd.model import PortSpec

    dsr = services["static/dsr"]
    proto, number = port.split("/")
    ports = (PortSpec(proto, int(number)),)
    backends = tuple(replace(b, port=ports[0], target_port=int(number),
                             weight=weight if str(b.address) == "10.88.1.10" else b.weight)
                     for b in dsr.backends) + tuple(
        replace(dsr.backends[0], port=ports[0], target_port=int(number), address=ipaddress.ip_address(a))
        for a in ("10.88.1.11", "10.88.1.12"))
    return {**services, "static/dsr": replace(dsr, ports=ports, backends=backends)}


def test_dsr_drain_keeps_established_flows_and_takes_no_new_ones(setup) -> None:
    cfg, services, allocations = setup
    before = desired(_dsr_with(services, 1), allocations, up_except(), cfg.forwarding, IFS)
    port = next(p for p in before.ruleset.ports if p.service == "static/dsr")
    assert port.split and port.established == port.buckets  # nobody drained: both tables alike
    assert port.held == () and port.maps() == ((port.map, port.buckets), (port.emap, ()))
    drained_id = next(v.counter for v in before.views if v.endpoint == "10.88.1.10:81")
    assert drained_id in port.buckets

    after = desired(_dsr_with(services, 0), allocations, up_except(), cfg.forwarding, IFS, previous=before)
    p2 = next(p for p in after.ruleset.ports if p.service == "static/dsr")
    assert drained_id not in p2.buckets  # no new flow (bare SYN) reaches the drained backend
    assert p2.established == port.buckets  # every established flow keeps its backend, drained one included
    # The established-flow map holds only the buckets where it differs: the drained backend's.
    moved = {i for i, (a, b) in enumerate(zip(port.buckets, p2.buckets)) if a != b}
    assert {i for i, e in enumerate(p2.held) if e} == moved
    assert all(p2.held[i] == port.buckets[i] for i in moved)  # the backend each flow had
    assert {i for i, b in enumerate(port.buckets) if b == drained_id} <= moved  # the drained one's, and
    # the few Maglev moves between survivors (without them those flows would move too)
    ops = plan_transaction(before.ruleset, after.ruleset)
    changed = {(k, o[k]["element"]["name"]) for o in ops for k in o if "element" in o[k]}
    assert changed == {("delete", p2.map), ("add", p2.map), ("add", p2.emap), ("add", p2.dset)}
    dset = next(o["add"]["element"]["elem"] for o in ops if "add" in o and o["add"].get("element", {}).get(
        "name") == p2.dset)
    assert set(dset) == moved
    # The drain ends (the backend is removed): the established map and the bucket set empty again.
    removed = {**services, "static/dsr": replace(services["static/dsr"], backends=tuple(
        b for b in _dsr_with(services, 1)["static/dsr"].backends if str(b.address) != "10.88.1.10"))}
    gone = desired(removed, allocations, up_except(), cfg.forwarding, IFS, previous=after)
    ops = plan_transaction(after.ruleset, gone.ruleset)
    assert {(k, o[k]["element"]["name"]) for o in ops for k in o if "element" in o[k]} == {
        ("delete", p2.emap), ("delete", p2.dset)}  # m already had these buckets on the survivors

    # The drained backend then fails: it leaves the established table too.
    failed = desired(_dsr_with(services, 0), allocations, up_except("10.88.1.10"), cfg.forwarding, IFS,
                     previous=after)
    p3 = next(p for p in failed.ruleset.ports if p.service == "static/dsr")
    assert drained_id not in p3.established and drained_id not in p3.buckets

    # A drained backend keeps its previous weight in the established table.
    heavy = desired(_dsr_with(services, 3), allocations, up_except(), cfg.forwarding, IFS)
    drained = desired(_dsr_with(services, 0), allocations, up_except(), cfg.forwarding, IFS, previous=heavy)
    hp = next(p for p in heavy.ruleset.ports if p.service == "static/dsr")
    dp = next(p for p in drained.ruleset.ports if p.service == "static/dsr")
    assert dp.established == hp.buckets and drained_id not in dp.buckets

    # Every backend drained: no new-flow entry at all (a SYN reaches the node), established flows kept.
    everyone = desired(_dsr_with(services, 0), allocations, up_except("10.88.1.11", "10.88.1.12"),
                       cfg.forwarding, IFS, previous=before)
    ep = next(p for p in everyone.ruleset.ports if p.service == "static/dsr")
    assert ep.buckets == () and set(ep.established) == {drained_id}


def test_dsr_rules_split_tcp_by_syn_and_udp_has_one_map(setup) -> None:
    cfg, services, allocations = setup
    d = desired(_dsr_with(services, 1), allocations, up_except(), cfg.forwarding, IFS).ruleset
    port = next(p for p in d.ports if p.service == "static/dsr")
    ops = plan_transaction(None, d)
    rules = [o["add"]["rule"]["expr"] for o in ops
             if "add" in o and "rule" in o["add"] and o["add"]["rule"]["chain"] == port.name]
    syn = {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, ["syn", "ack"]]}
    assert [(r[0]["match"]["op"], r[0]["match"]["left"], r[0]["match"]["right"]) for r in rules] == [
        ("==", syn, "syn")] * 2 + [("!=", syn, "syn")] * 3
    # SYN: in a bucket of a drained backend the flow is remembered; both go by the new-flow map.
    assert rules[0][1]["match"]["right"] == "@" + port.dset and rules[0][2]["set"]["set"] == "@" + port.nset
    # Other packets: a remembered flow follows the new-flow map, the rest the established map,
    # then (a bucket where both agree) the new-flow map.
    assert rules[2][1]["match"]["right"] == "@" + port.nset
    assert [r[-1]["fwd"]["addr"]["map"]["data"] for r in rules] == [
        "@" + port.map, "@" + port.map, "@" + port.map, "@" + port.emap, "@" + port.map]
    prep = prepare_text(None, d)
    for name in (port.map, port.emap):
        assert f"add map netdev lbd {name} " in prep
    assert f"add set netdev lbd {port.dset} {{ typeof numgen random mod 2; }}" in prep
    assert f"add set netdev lbd {port.nset} {{ type ipv4_addr . inet_service; flags dynamic,timeout;" in prep
    # UDP has no SYN to tell a new flow: one map, and a drain moves the drained backend's flows.
    u = desired(_dsr_with(services, 0, "udp/53"), allocations, up_except(), cfg.forwarding, IFS).ruleset
    up = next(p for p in u.ports if p.service == "static/dsr")
    assert not up.split and up.maps() == ((up.map, up.buckets),) and up.established == ()
    # Removing the dsr service deletes both of its maps.
    gone = plan_transaction(d, desired({"static/web": services["static/web"]}, allocations, up_except(),
                                       cfg.forwarding, IFS).ruleset)
    assert {"delete": {"table": {"family": "netdev", "name": "lbd"}}} in gone
    two = {**services, "static/dsr2": replace(_dsr_with(services, 1)["static/dsr"], name="static/dsr2")}
    allocs = {**allocations, "static/dsr2": Allocation("static/dsr2", "p", (ipaddress.ip_address("10.77.0.102"),))}
    both = desired({**_dsr_with(services, 1), "static/dsr2": two["static/dsr2"]}, allocs, up_except(),
                   cfg.forwarding, IFS).ruleset
    second = next(p for p in both.ports if p.service == "static/dsr2")
    ops = plan_transaction(both, d)  # one of two dsr services goes: its chain, maps and sets
    assert sorted((k, v["name"]) for o in ops if "delete" in o for k, v in o["delete"].items()) == sorted([
        ("chain", second.name), ("map", second.map), ("map", second.emap), ("set", second.dset),
        ("set", second.nset)])


def test_full_transaction_then_minimal_diffs(setup) -> None:
    cfg, services, allocations = setup
    d = desired(services, allocations, up_except(), cfg.forwarding, IFS).ruleset
    prep = prepare_text(None, d)
    assert prep.startswith("add table inet lbd\ndelete table inet lbd\nadd table inet lbd")
    assert "add table netdev lbd" in prep
    assert "{ typeof numgen random mod 2 : ip daddr . tcp dport; counter; }" in prep  # nat: address . port
    assert "{ typeof numgen random mod 2 : ip daddr; counter; }" in prep  # dsr: the address
    ops = plan_transaction(None, d)
    kinds = [(next(iter(o)), next(iter(next(iter(o.values()))))) for o in ops]
    assert ("add", "element") in kinds
    assert ("add", "counter") not in kinds  # no kernel object per backend: only map entries
    rules = [o["add"]["rule"] for o in ops if "add" in o and "rule" in o["add"]]
    dnat = [e["dnat"] for r in rules for e in r["expr"] if "dnat" in e]
    fwd = [e["fwd"] for r in rules for e in r["expr"] if "fwd" in e]
    # dsr tcp: five rules telling new flows from established ones (test_dsr_rules_split_...).
    assert len(dnat) == 1 and len(fwd) == 5 and {f["dev"] for f in fwd} == {"eth0"} and fwd[0]["family"] == "ip"
    hashes = [x["addr"]["map"]["key"]["jhash"] for x in dnat + fwd]
    assert all(h["mod"] == 1021 and h["seed"] == 42 for h in hashes)
    web = next(o["add"]["element"] for o in ops if "add" in o and "element" in o["add"]
               and o["add"]["element"]["family"] == "inet")
    assert {tuple(v["concat"]) for _, v in web["elem"]} == {("10.88.1.10", 8080), ("10.88.1.11", 8080),
                                                            ("10.88.1.12", 8080)}
    dsr = next(o["add"]["element"] for o in ops if "add" in o and "element" in o["add"]
               and o["add"]["element"]["family"] == "netdev")
    assert {v for _, v in dsr["elem"]} == {"10.88.1.10"}
    ingress = [o["add"]["chain"] for o in ops if "add" in o and "chain" in o["add"] and o["add"]["chain"].get("hook")]
    assert {(c["family"], c["hook"]) for c in ingress} == {("inet", "prerouting"), ("inet", "postrouting"),
                                                           ("netdev", "ingress")}

    # Level-triggered: the same state again is no command at all.
    assert plan_transaction(d, d) == [] and prepare_text(d, d) == ""

    # One backend fails: only the buckets that move, deleted and re-added, in one transaction.
    d2 = desired(services, allocations, up_except("10.88.1.11"), cfg.forwarding, IFS).ruleset
    ops = plan_transaction(d, d2)
    assert {(next(iter(o)), next(iter(next(iter(o.values()))))) for o in ops} == {("delete", "element"),
                                                                                  ("add", "element")}
    old = next(p for p in d.ports if p.service == "static/web").buckets
    new = next(p for p in d2.ports if p.service == "static/web").buckets
    moved = sum(1 for a, b in zip(old, new) if a != b)
    assert sum(len(o["add"]["element"]["elem"]) for o in ops if "add" in o) == moved
    assert moved < 1021 * 0.25 * 2  # the failed backend's quarter, plus Maglev's small extra

    # A service removed: its port chain and map go; the base chain is rebuilt.
    d3 = desired({"static/web": services["static/web"]}, allocations, up_except(), cfg.forwarding, IFS).ruleset
    ops = plan_transaction(d, d3)
    assert [o for o in ops if "delete" in o] == [{"delete": {"table": {"family": "netdev", "name": "lbd"}}}]
    d4 = desired({"static/dsr": services["static/dsr"]}, allocations, up_except(), cfg.forwarding, IFS).ruleset
    ops = plan_transaction(d, d4)
    deleted = [(k, v["family"]) for o in ops if "delete" in o for k, v in o["delete"].items()]
    assert sorted(deleted) == sorted([("table", "inet")])  # the nat table holds only web: the table goes
    web_only = desired({"static/web": services["static/web"], "static/dsr": services["static/dsr"]},
                       {"static/web": allocations["static/web"]}, up_except(), cfg.forwarding, IFS).ruleset
    ops = plan_transaction(web_only, d)  # dsr gets its address: its table, chains, map and ingress appear
    assert any("add" in o and o["add"].get("chain", {}).get("hook") == "ingress" for o in ops)
    ops = plan_transaction(d, web_only)
    assert [o for o in ops if "delete" in o] == [{"delete": {"table": {"family": "netdev", "name": "lbd"}}}]
    # Everything gone: both tables deleted, nothing else.
    empty = desired({}, allocations, up_except(), cfg.forwarding, IFS).ruleset
    assert plan_transaction(d, empty) == [{"delete": {"table": {"family": "inet", "name": "lbd"}}},
                                          {"delete": {"table": {"family": "netdev", "name": "lbd"}}}]


def test_backend_check_targets_each_backend(setup) -> None:
    cfg, services, _ = setup
    web = services["static/web"]
    key, check = check_for(web, web.backends[0])
    assert key == ("static/web", "10.88.1.10", 8080)
    assert (check.type, check.host, check.port, check.interval, check.rise, check.fall) == (
        "tcp", "10.88.1.10", 8080, 2.0, 2, 2)
    from dataclasses import replace

    from lbd.model import HealthCheckConfig

    spec = replace(web, backend_check=HealthCheckConfig(type="exec", command=("check", "{address}", "{port}")))
    _, check = check_for(spec, web.backends[2])
    assert check.command == ("check", "10.88.1.12", "8080")


def _nla(kind: int, payload: bytes) -> bytes:
    return nlobj.attr(kind, payload)


def test_netlink_element_counters_parsing() -> None:
    counter = _nla(nlobj.NFTA_EXPR_NAME, b"counter\0") + _nla(nlobj.NFTA_EXPR_DATA | 0x8000, _nla(
        nlobj.NFTA_COUNTER_BYTES, struct.pack(">Q", 600)) + _nla(nlobj.NFTA_COUNTER_PACKETS, struct.pack(">Q", 9)))
    single = _nla(nlobj.NFTA_SET_ELEM_KEY, _nla(nlobj.NFTA_DATA_VALUE, struct.pack("=I", 7))) + _nla(
        nlobj.NFTA_SET_ELEM_EXPR, counter)
    listed = _nla(nlobj.NFTA_SET_ELEM_KEY, _nla(nlobj.NFTA_DATA_VALUE, struct.pack("=I", 8))) + _nla(
        nlobj.NFTA_SET_ELEM_EXPRESSIONS, _nla(nlobj.NFTA_LIST_ELEM, counter))
    bare = _nla(nlobj.NFTA_SET_ELEM_KEY, _nla(nlobj.NFTA_DATA_VALUE, struct.pack("=I", 9)))
    elements = b"".join(_nla(nlobj.NFTA_LIST_ELEM, e) for e in (single, listed, bare))
    payload = struct.pack("=BBH", 1, 0, 0) + _nla(nlobj.NFTA_SET_ELEM_LIST_TABLE, b"lbd\0") + _nla(
        nlobj.NFTA_SET_ELEM_LIST_ELEMENTS, elements)
    assert nlobj.parse_element_counters(payload) == [(7, 9, 600), (8, 9, 600)]


def test_netlink_table_and_message_parsing() -> None:
    payload = struct.pack("=BBH", 5, 0, 0) + _nla(nlobj.NFTA_TABLE_NAME, b"lbd\0")
    assert nlobj.parse_table(struct.pack("=BBH", 5, 0, 0) + _nla(nlobj.NFTA_TABLE_NAME, b"lbd\0")) == (5, "lbd")
    message = struct.pack("=IHHII", 16 + len(payload), 0xA13, 2, 1, 0) + payload
    assert [kind for kind, _ in nlobj.messages(message)] == [0xA13]
    with pytest.raises(nlobj.NetlinkFormatError):
        list(nlobj.attrs(struct.pack("=HH", 40, 1) + b"abcd"))
    with pytest.raises(nlobj.NetlinkFormatError):
        list(nlobj.messages(struct.pack("=IHHII", 400, 1, 0, 0, 0)))
    with pytest.raises(OSError):
        list(nlobj.messages(struct.pack("=IHHII", 20, nlobj.NLMSG_ERROR, 0, 0, 0) + struct.pack("=i", -1)))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_netlink_parsers_only_raise_their_error(data: bytes) -> None:
    for parse in (lambda d: list(nlobj.attrs(d)), nlobj.parse_table,
                  nlobj.parse_element_counters):
        try:
            parse(data)
        except nlobj.NetlinkFormatError:
            pass
    try:
        list(nlobj.messages(data))
    except (nlobj.NetlinkFormatError, OSError):
        pass  # OSError: a well-formed NLMSG_ERROR carrying an errno


def test_forwarder_counts_per_backend_and_keeps_what_moved(setup, monkeypatch) -> None:
    """Per-backend totals are the sums of the entries' counters, and an entry that moves
    (rewritten, so its counter restarts) leaves its count with the backend it counted for."""
    from lbd.forward import forwarder as fw

    cfg, services, allocations = setup
    d1 = desired(services, allocations, up_except(), cfg.forwarding, IFS)
    d2 = desired(services, allocations, up_except("10.88.1.11"), cfg.forwarding, IFS)
    web1 = next(p for p in d1.ruleset.ports if p.service == "static/web")
    web2 = next(p for p in d2.ruleset.ports if p.service == "static/web")
    kernel = {web1.map: {b: (1, 100) for b in range(web1.size)}}  # one packet per entry so far
    monkeypatch.setattr(fw.nlobj, "element_counters", lambda family, table, name: dict(kernel.get(name, {})))
    f = fw.Forwarder(nft=None)
    f.applied = d1.ruleset
    f.desired = d1
    totals = f.read_counters()
    by_id = {v.endpoint: v.counter for v in d1.views if v.service == "static/web"}
    assert sum(totals[("inet", by_id[e])][0] for e in by_id) == web1.size
    before = {e: totals[("inet", by_id[e])][0] for e in by_id}
    f._retire(d1.ruleset, d2.ruleset)  # what _apply_sync does before the transaction
    moved = [b for b in range(web1.size) if web1.buckets[b] != web2.buckets[b]]
    for b in moved:
        kernel[web1.map][b] = (0, 0)  # rewritten entries restart at zero
    f.applied = d2.ruleset
    after = f.read_counters()
    for endpoint, ident in by_id.items():
        assert after[("inet", ident)][0] == before[endpoint], endpoint  # nothing lost, nothing counted twice


async def test_backend_checker_converges_and_skips_unchanged_specs(setup) -> None:
    from lbd.forward.health import BackendChecker

    _, services, _ = setup
    checker = BackendChecker()
    try:
        checker.set_services(services)
        keys = set(checker._entries)
        assert len(keys) == 5  # 3 web + 2 dsr backends, each checked
        entries = dict(checker._entries)
        version = checker.version("static/web")
        checker.set_services(dict(services))  # the same spec objects: nothing restarted
        assert checker._entries == entries and all(checker._entries[k] is entries[k] for k in keys)
        assert checker.version("static/web") == version  # so the forwarder need not ask again
        web = services["static/web"]
        fewer = replace(web, backends=web.backends[:2])  # a changed spec converges at once
        checker.set_services({**services, "static/web": fewer})
        assert len(checker._entries) == 4 and checker.healthy(fewer, fewer.backends[0]) is False
        assert checker.version("static/web") != version
        assert checker.healthy(web, web.backends[2]) is None  # no longer checked
    finally:
        await checker.close()


def test_health_is_asked_again_only_when_the_service_version_changes(setup) -> None:
    cfg, services, allocations = setup
    down: set[str] = set()
    asked: list[str] = []
    versions = {"static/web": 1, "static/dsr": 1}

    def healthy(service, backend):  # type: ignore[no-untyped-def]
        asked.append(service)
        return str(backend.address) not in down

    d1 = desired(services, allocations, healthy, cfg.forwarding, IFS, versions=versions.__getitem__)
    assert sorted(set(asked)) == ["static/dsr", "static/web"]
    asked.clear()
    down.add("10.88.1.11")
    versions["static/web"] += 1  # what BackendChecker does when a web backend flips
    d2 = desired(services, allocations, healthy, cfg.forwarding, IFS, previous=d1, versions=versions.__getitem__)
    assert set(asked) == {"static/web"}  # dsr's backends were not asked
    assert d2.ruleset == desired(services, allocations, healthy, cfg.forwarding, IFS).ruleset  # same result
    dsr1 = next(p for p in d1.ruleset.ports if p.service == "static/dsr")
    assert next(p for p in d2.ruleset.ports if p.service == "static/dsr") is dsr1  # reused as is
    web2 = next(p for p in d2.ruleset.ports if p.service == "static/web")
    assert web2 != next(p for p in d1.ruleset.ports if p.service == "static/web")


@pytest.mark.parametrize("protocol", ["udp", "sctp"])
def test_nat_map_of_a_non_tcp_port_is_typed_by_its_protocol(protocol: str) -> None:
    """nft refuses a dnat through a map typed ``tcp dport`` in a udp rule ("conflicting
    protocols specified: udp vs. tcp"): the lab found it; each port's map names its protocol."""
    cfg = parse_config(CONFIG.replace('ports = ["tcp/80"]', f'ports = ["{protocol}/53"]')
                       .replace("snat = true\n", ""), Path("/etc/lbd.toml"))
    services = {s.name: s for s in cfg.services if s.name == "static/web"}
    allocations = {"static/web": Allocation("static/web", "p", (ipaddress.ip_address("10.77.0.100"),))}
    d = desired(services, allocations, up_except(), cfg.forwarding, IFS).ruleset
    prep = prepare_text(None, d)
    assert f"{{ typeof numgen random mod 2 : ip daddr . {protocol} dport; counter; }}" in prep
    assert "tcp" not in prep
    rules = [o["add"]["rule"]["expr"] for o in plan_transaction(None, d) if "add" in o and "rule" in o["add"]]
    dnat = [r for r in rules if any("dnat" in e for e in r)]
    assert dnat and all(r[0] == {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": protocol}}
                        for r in dnat)
