"""Node facts between ClusterCoordinators over the simulated gossip network (lbd.testing.cluster_sim).

The coordinators are the real ones; their gossip is a SWIM core in the
in-process network (simulated clock, packets and TCP streams), so what one
node's facts record becomes on the wire, through user messages, TCP sends and
push-pull, is what the other node's ``members()`` shows.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

from lbd.cluster.coordination import FACTS_MESSAGE, ClusterCoordinator
from lbd.cluster.facts import IndexedHolds
from lbd.cluster.events import MemberInfo
from lbd.cluster.swim import Swim
from lbd.cluster.transport import UserPayload
from lbd.config import parse_config
from lbd.model import Member, MemberState
from lbd.testing.cluster_sim import SimNetwork

LAN = {"eth0": (ipaddress.ip_interface("10.77.0.11/16"),)}
# No two contiguous (no ranges on the wire); sorted as text, as planner.held_vips lists them.
HELD = tuple(sorted(str(ipaddress.ip_address("10.77.8.0") + 2 * i) for i in range(10_000)))
FAILING = frozenset(f"static/service-{i:04d}" for i in range(1000))


def config(name: str, port: int):  # type: ignore[no-untyped-def]
    return parse_config(f"""
[node]
name = "{name}"
[cluster]
bind = "127.0.0.1:{port}"
allow_plaintext = true
""", Path("/dev/null"))


class SimGossip:
    """What ClusterCoordinator uses of lbd.cluster.transport.Gossip, over a SimNetwork node."""

    def __init__(self, net: SimNetwork, name: str) -> None:
        self.net, self.name = net, name

    @property
    def core(self) -> Swim:
        return self.net.core(self.name)

    def members(self) -> list[MemberInfo]:
        return self.core.members()

    def set_meta(self, meta: bytes) -> None:
        self.core.set_meta(meta, self.net.now)
        self.net._drain(self.name)  # noqa: SLF001 - the network's pump

    def broadcast_user(self, payload: bytes) -> None:
        self.core.broadcast_user(payload)

    async def send_user(self, addr: str, payload: bytes) -> bool:
        host, _, port = addr.rpartition(":")
        self.core.send_user_stream((host, int(port)), payload, self.net.now)
        self.net._drain(self.name)  # noqa: SLF001
        return True

    def stats(self) -> dict[str, object]:
        return {"decrypt_failures": 0}

    def _now(self) -> float:
        return self.net.now


class Cluster:
    def __init__(self, loss: float = 0.0) -> None:
        self.net = SimNetwork(seed=7, loss=loss)
        self.nodes: dict[str, ClusterCoordinator] = {}
        self.lose_facts: set[str] = set()  # nodes whose next facts user message is lost

    def add(self, name: str) -> ClusterCoordinator:
        cm = ClusterCoordinator(config(name, 17000 + len(self.nodes)))
        self.net.add(name, local_state=cm._local_state, merge_remote_state=cm._merge_remote_state)  # noqa: SLF001
        cm.gossip = SimGossip(self.net, name)  # type: ignore[assignment]
        cm._started = True  # noqa: SLF001 - start() would open sockets
        cm.monotonic = lambda: self.net.now
        self.nodes[name] = cm
        cm.update_local(Member(name=name, interfaces=LAN))
        return cm

    async def run(self, seconds: float, step: float = 0.05) -> None:
        end = self.net.now + seconds
        while self.net.now < end:
            self.net.run_for(step)
            for name, cm in self.nodes.items():
                node = self.net.nodes[name]
                user, node.user = node.user, []
                events, node.events = node.events, []
                for _, event in events:
                    cm._event(event)  # noqa: SLF001
                for _, payload in user:
                    if name in self.lose_facts and payload.startswith(FACTS_MESSAGE):
                        self.lose_facts.discard(name)
                        continue
                    cm._user(UserPayload(payload, None))  # noqa: SLF001
                cm.repair_facts(self.net.now)
            for _ in range(3):
                await asyncio.sleep(0)  # the coordinators' call_soon and send tasks

    def view(self, observer: str, member: str) -> Member:
        return next(m for m in self.nodes[observer].members() if m.name == member)


async def test_ten_thousand_held_vips_and_a_thousand_failing_services_reach_the_other_node() -> None:
    cluster = Cluster()
    n1, _ = cluster.add("n1"), cluster.add("n2")
    cluster.net.join("n2", ["n1"])
    await cluster.run(1.0)
    assert cluster.view("n2", "n1").holds == () and cluster.view("n2", "n1").holds_known
    n1.update_local(Member(name="n1", interfaces=LAN, holds=HELD, failing=FAILING))
    await cluster.run(2.0)
    seen = cluster.view("n2", "n1")
    assert seen.holds_known and seen.holds == HELD and seen.failing == FAILING
    # The planner asks "in holds" once per VIP: a set lookup, for peers and for ourselves.
    assert isinstance(seen.holds, IndexedHolds) and "10.77.8.2" in seen.holds and "10.77.8.1" not in seen.holds
    assert isinstance(cluster.view("n1", "n1").holds, IndexedHolds) and cluster.view("n1", "n1").holds == HELD
    # A small change then travels as a delta, and its loss is repaired (the version in the metadata).
    cluster.lose_facts.add("n2")
    n1.update_local(Member(name="n1", interfaces=LAN, holds=HELD[1:], failing=FAILING - {"static/service-0000"}))
    await cluster.run(3.0)
    seen = cluster.view("n2", "n1")
    assert seen.holds == HELD[1:] and "static/service-0000" not in seen.failing and not cluster.lose_facts


async def test_a_node_joining_later_learns_every_record_by_push_pull() -> None:
    cluster = Cluster(loss=0.05)
    n1, _ = cluster.add("n1"), cluster.add("n2")
    cluster.net.join("n2", ["n1"])
    await cluster.run(1.0)
    n1.update_local(Member(name="n1", interfaces=LAN, holds=HELD, failing=FAILING))
    await cluster.run(2.0)
    cluster.add("n3")
    cluster.net.join("n3", ["n2"])  # from n2's push-pull: n1's record was never sent to n3
    await cluster.run(2.0)
    seen = cluster.view("n3", "n1")
    assert seen.holds_known and len(seen.holds) == 10_000 and seen.failing == FAILING


async def test_a_dead_nodes_record_is_dropped() -> None:
    cluster = Cluster()
    n1, n2 = cluster.add("n1"), cluster.add("n2")
    cluster.net.join("n2", ["n1"])
    await cluster.run(1.0)
    n1.update_local(Member(name="n1", interfaces=LAN, holds=HELD[:50]))
    await cluster.run(1.0)
    assert cluster.view("n2", "n1").holds == HELD[:50]
    cluster.net.crash("n1")
    del cluster.nodes["n1"]
    await cluster.run(6.0, step=0.25)
    assert cluster.net.state_of("n2", "n1") in (MemberState.DEAD.value, None)  # dead, or dead and reaped
    assert n2.facts.get("n1") is None
    assert all(m.holds == () for m in n2.members() if m.name == "n1")
