"""The layer-2 announcer's per-change path (issue 9): after any sequence of desired intent sets,
applied one after another over a fake kernel, with injected bind failures, addresses removed
behind lbd's back and restarts, the kernel holds what a fresh announcer applying the last set to
an empty kernel would make; addresses of others are never touched; and a step's address requests
grow with the change, not with the table.

The fake kernel keeps state (addresses per interface, with their IFA_PROTO); the responder is a
fake that records the VIPs it answers for. The diff itself (``lbd.l2.diff``) is pure and tested
first on its own."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbd.kernel.interfaces import IFF_BROADCAST, IFF_LOOPBACK, IFF_UP, LBD_ADDR_PROTO
from lbd.l2 import announcer as announcer_mod
from lbd.l2 import rawsock
from lbd.l2.announcer import L2Announcer
from lbd.l2.diff import diff_intents, intent_key
from lbd.model import IPAddress, L2Intent, L2Mode

IP = ipaddress.ip_address
LINKS = {"lo": 1, "eth0": 2, "eth1": 3}  # "eth9" is absent
MACS = {2: "02:00:00:00:00:02", 3: "02:00:00:00:00:03"}
# Addresses of others: the interfaces' own subnets, a foreign /32 on eth0 (another VIP
# manager's, proto 3) and one on lo. lbd must leave every one of them as it is.
FOREIGN: dict[tuple[int, str], tuple[int, int | None]] = {
    (1, "127.0.0.1"): (8, None),
    (1, "10.77.2.250"): (32, None),
    (2, "10.77.0.2"): (24, None),
    (2, "fd77::2"): (64, None),
    (2, "10.77.0.200"): (32, 3),
    (3, "10.77.1.2"): (24, None),
}
VIPS = [IP(a) for a in ("10.77.0.10", "10.77.0.11", "10.77.0.12", "10.77.1.10", "fd77::10", "fd77::11")]


class FakeKernel:
    """Addresses per interface, as rtnetlink would keep them; counts address requests."""

    def __init__(self, eth1: bool = True) -> None:
        self.links = dict(LINKS)
        self.addrs: dict[tuple[int, str], tuple[int, int | None]] = dict(FOREIGN)
        if not eth1:
            self.unplug()
        self.fail_next: dict[str, int] = {}  # address -> errno for its next add (one shot)
        self.requests = 0  # address adds/deletes asked, batched or not

    # the Netlink surface the announcer and its binder use
    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "get_links":
            return [{"index": i, "flags": (IFF_UP | IFF_LOOPBACK) if n == "lo" else (IFF_UP | IFF_BROADCAST),
                     "IFLA_IFNAME": n, "IFLA_ADDRESS": MACS.get(i, "00:00:00:00:00:00")} for n, i in self.links.items()]
        if method == "get_addr":
            out = []
            for (index, address), (prefixlen, proto) in self.addrs.items():
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                out.append({"family": family, "index": index, "prefixlen": prefixlen, "IFA_PROTO": proto,
                            "IFA_ADDRESS": address, "IFA_LOCAL": address if family == socket.AF_INET else None})
            return out
        if method == "addr" and args[0] == "del":
            code = self._request("del", kwargs["index"], kwargs["address"], kwargs["prefixlen"], 0)
            if code:
                raise _NetlinkError(code)
            return None
        raise AssertionError(f"unexpected call {method} {args}")

    async def addr_batch(self, requests: list[Any]) -> list[int]:
        return [self._request(r.op, r.ifindex, str(r.address), r.prefixlen, r.proto) for r in requests]

    def _request(self, op: str, index: int, address: str, prefixlen: int, proto: int) -> int:
        self.requests += 1
        if index not in self.links.values():
            return errno.ENODEV
        if op == "del":
            return 0 if self.addrs.pop((index, address), None) is not None else errno.EADDRNOTAVAIL
        code = self.fail_next.pop(address, 0)
        if code:
            return code
        self.addrs[(index, address)] = (prefixlen, proto)
        return 0

    async def aclose(self) -> None:
        pass

    def unplug(self) -> None:
        """eth1 goes away, and every address on it with it (as the kernel does)."""
        self.links.pop("eth1", None)
        self.addrs = {k: v for k, v in self.addrs.items() if k[0] != LINKS["eth1"]}

    def plug(self) -> None:
        """eth1 is back, with its own subnet configured again (lbd's VIPs are not)."""
        self.links["eth1"] = LINKS["eth1"]
        self.addrs.update({k: v for k, v in FOREIGN.items() if k[0] == LINKS["eth1"]})

    def foreign(self) -> dict[tuple[int, str], tuple[int, int | None]]:
        """The addresses of others this kernel should hold."""
        return {k: v for k, v in FOREIGN.items() if k[0] in self.links.values()}

    def ours(self) -> dict[tuple[int, str], tuple[int, int | None]]:
        return {k: v for k, v in self.addrs.items() if k not in FOREIGN}


class _NetlinkError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class FakeResponder:
    def __init__(self, ifname: str, ifindex: int, mac: bytes) -> None:
        self.vips_set: set[IPAddress] = set()

    @property
    def vips(self) -> int:
        return len(self.vips_set)

    def add(self, vip: IPAddress) -> None:
        self.vips_set.add(vip)

    def remove(self, vip: IPAddress) -> None:
        self.vips_set.discard(vip)

    def close(self) -> None:
        pass


class FakeSocket:
    def send(self, frame: bytes) -> int:
        return len(frame)

    def close(self) -> None:
        pass


class Announcer(L2Announcer):
    """The real announcer; only the name-to-index lookup of ``local`` mode asks the fake kernel."""

    async def _ifindex(self, ifname: str) -> int:
        links = self._nl.links  # type: ignore[union-attr]
        if ifname not in links:
            raise OSError(errno.ENODEV, f"no such device: {ifname}")
        return links[ifname]


@pytest.fixture(autouse=True)
def _fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rawsock, "open_sender", lambda ifname: FakeSocket())
    monkeypatch.setattr(announcer_mod, "Responder", FakeResponder)


def make(kernel: FakeKernel) -> Announcer:
    # No refresh task during a step: the test runs the refresh pass itself, as the retry.
    return Announcer(netlink=kernel, wall_clock=lambda: 1000.0, burst_spacing=0.001,  # type: ignore[arg-type]
                     refresh_interval=3600.0)


def view(ann: L2Announcer, kernel: FakeKernel) -> tuple[Any, ...]:
    """Everything a step must converge: lbd's addresses, what the responders answer for, and
    each VIP's status (not its timestamps or packet counts)."""
    responding = {(name, vip) for name, r in ann._responders.items() for vip in r.vips_set}  # noqa: SLF001
    rows = [(r["vip"], r["interface"], r["mode"], r["state"], tuple(r["services"])) for r in ann.status()]  # type: ignore[arg-type]
    return kernel.ours(), responding, rows


async def fresh_view(desired: list[L2Intent], eth1: bool = True) -> tuple[Any, ...]:
    kernel = FakeKernel(eth1)
    ann = make(kernel)
    try:
        await ann.apply(desired)
        return view(ann, kernel)
    finally:
        await ann.close()


async def abandon(ann: L2Announcer) -> None:
    """A crash: the process's tasks die with it; the kernel keeps its addresses."""
    for task in (ann._sched_task, ann._refresh_task):  # noqa: SLF001
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# -- the pure diff -------------------------------------------------------------------------------

INTENT = st.builds(
    L2Intent,
    vip=st.sampled_from(VIPS),
    interface=st.sampled_from(["eth0", "eth1", "lo", "eth9"]),
    mode=st.sampled_from(list(L2Mode)),
    services=st.sampled_from([("a",), ("a", "b")]),
    announce_burst=st.integers(1, 3),
    announce_interval=st.sampled_from([0.0, 10.0]),
)


class _Applied:
    def __init__(self, intent: L2Intent, ready: bool) -> None:
        self.intent, self.ready = intent, ready


@given(st.dictionaries(st.sampled_from(VIPS), st.tuples(INTENT, st.booleans())), st.lists(INTENT, max_size=10))
def test_the_diff_withdraws_moves_and_retries_exactly_what_changed(applied_raw: dict, intents: list[L2Intent]) -> None:
    applied = {vip: _Applied(L2Intent(vip, i.interface, i.mode, i.services), ready) for vip, (i, ready) in applied_raw.items()}
    d = diff_intents(applied, intents)
    first: dict[IPAddress, L2Intent] = {}
    for i in intents:
        first.setdefault(i.vip, i)
    assert d.desired == first
    moved = {v for v, a in applied.items() if v not in first or intent_key(first[v]) != intent_key(a.intent)}
    assert set(d.withdraw) == moved
    assert {i.vip for i in d.keep} == {v for v, a in applied.items() if v not in moved and a.ready}
    assert {i.vip for i in d.takeover} == set(first) - {i.vip for i in d.keep}
    assert {i.vip for i in d.keep}.isdisjoint(i.vip for i in d.takeover)
    assert all(kept.vip == dropped.vip and intent_key(kept) != intent_key(dropped) for kept, dropped in d.dropped)


# -- the announcer over a fake kernel ---------------------------------------------------------------

DESIRED = st.dictionaries(st.sampled_from(VIPS), INTENT, max_size=6).map(
    lambda d: [L2Intent(v, i.interface, i.mode, i.services, i.announce_burst, i.announce_interval) for v, i in d.items()])
STEP = st.one_of(
    st.tuples(st.just("apply"), DESIRED),
    st.tuples(st.just("fail"), DESIRED, st.sampled_from([str(v) for v in VIPS]), st.sampled_from([errno.EEXIST, errno.ENODEV])),
    st.tuples(st.just("vanish"), DESIRED, st.sampled_from(VIPS)),
    st.tuples(st.just("restart"), DESIRED),
    st.tuples(st.just("unplug"), DESIRED),  # eth1 goes away (its addresses with it)
    st.tuples(st.just("plug"), DESIRED),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEP, min_size=1, max_size=8))
def test_incremental_applies_equal_a_fresh_apply_and_cost_the_change(steps: list[tuple]) -> None:
    asyncio.run(_run_steps(steps))


async def _run_steps(steps: list[tuple]) -> None:
    kernel = FakeKernel()
    ann = make(kernel)
    previous: dict[IPAddress, L2Intent] = {}
    try:
        for step in steps:
            kind, desired = step[0], step[1]
            wanted = {i.vip: i for i in desired}
            if kind == "fail":
                kernel.fail_next[step[2]] = step[3]
            elif kind == "vanish":
                for key in [k for k in kernel.ours() if k[1] == str(step[2])]:
                    del kernel.addrs[key]
            elif kind == "unplug":
                kernel.unplug()
            elif kind == "plug":
                kernel.plug()
            elif kind == "restart":
                await abandon(ann)
                ann = make(kernel)
                previous = {}
            not_ready = {IP(r["vip"]) for r in ann.status() if r["state"] != "announced"}
            before = kernel.requests
            await ann.apply(desired)
            if kind == "restart":
                await ann.cleanup_stale()  # the daemon does, after its first pass
            else:
                # The change: VIPs added, removed or moved (interface or mode); each costs at most
                # a delete and an add. Plus the retries of VIPs that had failed.
                changed = {v for v in set(previous) | set(wanted)
                           if v not in previous or v not in wanted or intent_key(previous[v]) != intent_key(wanted[v])}
                retried = not_ready & {v for v in wanted if v not in changed}
                assert kernel.requests - before <= 2 * len(changed) + len(retried), (changed, retried)
            expected = await fresh_view(desired, "eth1" in kernel.links)
            if kind not in ("fail", "vanish", "unplug", "plug"):
                assert view(ann, kernel) == expected
            else:
                # The retry: the lifetime refresh re-adds what vanished (and finds what went with its
                # interface: ENODEV), the next pass retakes what failed.
                await ann._refresh_once()  # noqa: SLF001
                await ann.apply(desired)
                assert view(ann, kernel) == expected
                kernel.fail_next.clear()  # a failure meant for a VIP not bound in this step is void
            # Converged: applying the same set again asks nothing of the kernel.
            before = kernel.requests
            await ann.apply(desired)
            assert kernel.requests == before
            assert {k: v for k, v in kernel.addrs.items() if k in FOREIGN} == kernel.foreign()
            previous = wanted
    finally:
        await ann.close()
    assert kernel.addrs == kernel.foreign()  # close() withdrew everything lbd added, and only that


async def test_a_step_on_a_large_table_costs_the_change_not_the_table() -> None:
    """10,000 applied VIPs: moving one, adding one and removing one asks the kernel 4 times."""
    kernel = FakeKernel()
    ann = make(kernel)
    net = ipaddress.ip_network("10.77.0.0/24")
    hosts = [h for h in net.hosts() if 10 <= int(h) & 0xFF < 200]  # clear of the foreign 10.77.0.200
    v6 = [IP(f"fd77::1:{i:x}") for i in range(10_000 - len(hosts))]
    desired = [L2Intent(v, "eth0", L2Mode.BIND, ("s",), 1, 0.0) for v in hosts + v6]
    try:
        await ann.apply(desired)
        assert len(kernel.ours()) == 10_000
        before = kernel.requests
        changed = list(desired[1:-1])
        changed[0] = L2Intent(changed[0].vip, "eth0", L2Mode.RESPONDER, ("s",), 1, 0.0)  # unbind
        changed.append(L2Intent(IP("fd77::2:1"), "eth0", L2Mode.BIND, ("s",), 1, 0.0))  # bind
        await ann.apply(changed)  # and two removed: two unbinds
        assert kernel.requests - before == 4
    finally:
        await ann.close()


@pytest.mark.xfail(strict=True, reason="found by this file: a VIP equal to another's /32 on the interface is taken "
                   "over by the bind's NLM_F_REPLACE and deleted on withdrawal (binding.py must never remove an "
                   "address lbd did not add); telling it apart needs an exclusive add and a lookup on EEXIST")
async def test_a_foreign_address_equal_to_a_vip_is_left_alone() -> None:
    kernel = FakeKernel()
    ann = make(kernel)
    try:
        await ann.apply([L2Intent(IP("10.77.0.200"), "eth0", L2Mode.BIND, ("s",), 1, 0.0)])
        await ann.apply([])
        assert kernel.addrs[(2, "10.77.0.200")] == FOREIGN[(2, "10.77.0.200")]
    finally:
        await ann.close()


async def test_a_responder_vip_whose_interface_went_away_is_retaken_after_the_refresh() -> None:
    """Found by the property test: a responder VIP has no address whose refresh fails with
    ENODEV, so it stayed 'announced' on a link that was gone (and, after a flap, on its old
    index) and no pass retook it. The refresh now checks the link; the next apply retakes."""
    kernel = FakeKernel()
    ann = make(kernel)
    vip = IP("10.77.1.10")
    desired = [L2Intent(vip, "eth1", L2Mode.RESPONDER, ("s",), 1, 0.0)]
    try:
        await ann.apply(desired)
        assert [r["state"] for r in ann.status()] == ["announced"]
        kernel.unplug()
        await ann._refresh_once()  # noqa: SLF001
        assert [r["state"] for r in ann.status()] == ["error"]
        assert "eth1" not in ann._responders  # noqa: SLF001 - the last VIP out closed it
        await ann.apply(desired)
        assert [r["state"] for r in ann.status()] == ["error"]  # eth1 is still gone
        kernel.plug()
        await ann.apply(desired)
        assert [r["state"] for r in ann.status()] == ["announced"]
        assert ann._responders["eth1"].vips_set == {vip}  # noqa: SLF001
        await ann._refresh_once()  # noqa: SLF001 - the same link: nothing to redo
        assert [r["state"] for r in ann.status()] == ["announced"]
    finally:
        await ann.close()
