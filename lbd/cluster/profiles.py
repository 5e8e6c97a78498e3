"""Timing profiles for the SWIM/Lifeguard core.

The wire does not fix timings (memberlist-wire.md section 7), so lbd picks its
own for fast failover while staying interoperable with serf whatever profile
is used. ``lan`` is memberlist's ``DefaultLANConfig`` exactly; ``default`` and
``fast`` are lbd's (the reasoning is in docs/cluster.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    probe_interval: float
    probe_timeout: float
    indirect_checks: int
    suspicion_mult: int
    suspicion_max_timeout_mult: int
    retransmit_mult: int
    gossip_interval: float
    gossip_nodes: int
    gossip_to_the_dead_time: float
    push_pull_interval: float
    tcp_timeout: float
    awareness_max_multiplier: int = 8
    # Lifeguard's expected confirmations k. None: memberlist's SuspicionMult - 2,
    # zeroed when fewer than k other nodes could confirm (suspicion.go).
    suspicion_confirmations: int | None = None
    # lbd: clamp k to the n - 2 possible confirmers instead of zeroing it, so a
    # three-node cluster still gets Lifeguard's "one accuser waits long" benefit.
    clamp_confirmations: bool = False
    # lbd: a floor under the minimum suspicion timeout, in seconds.
    suspicion_min_floor: float = 0.0
    # serf's reconnect (memberlist has none): every interval, a join push-pull to
    # one random failed (not left) node, for reconnect_timeout after its death.
    # This is what heals a partition once both sides declared each other dead.
    reconnect_interval: float = 30.0
    reconnect_timeout: float = 24 * 3600.0

    def suspicion_timeouts(self, n: int) -> tuple[int, float, float]:
        """(k, min, max) for a suspicion raised in a cluster of ``n`` known nodes.

        memberlist suspicionTimeout: min = SuspicionMult * max(1, log10(max(1, n)))
        * ProbeInterval, with the node scale truncated to milliseconds as Go does;
        max = SuspicionMaxTimeoutMult * min. n counts every known node, self and
        unreaped dead ones included.
        """
        scale = max(1.0, math.log10(max(1.0, float(n))))
        scale = math.floor(scale * 1000) / 1000
        tmin = max(self.suspicion_mult * scale * self.probe_interval, self.suspicion_min_floor)
        tmax = self.suspicion_max_timeout_mult * tmin
        k = self.suspicion_mult - 2 if self.suspicion_confirmations is None else self.suspicion_confirmations
        if self.clamp_confirmations:
            k = max(0, min(k, n - 2))
        elif n - 2 < k:
            k = 0
        return k, tmin, tmax

    def retransmit_limit(self, n: int) -> int:
        """memberlist retransmitLimit: RetransmitMult * ceil(log10(n + 1))."""
        return self.retransmit_mult * int(math.ceil(math.log10(n + 1)))

    def push_pull_scale(self, n: int) -> float:
        """memberlist pushPullScale: slow anti-entropy down above 32 nodes."""
        if n <= 32:
            return self.push_pull_interval
        return self.push_pull_interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)


# memberlist DefaultLANConfig (what serf runs with).
LAN = Profile(
    name="lan",
    probe_interval=1.0,
    probe_timeout=0.5,
    indirect_checks=3,
    suspicion_mult=4,
    suspicion_max_timeout_mult=6,
    retransmit_mult=4,
    gossip_interval=0.2,
    gossip_nodes=3,
    gossip_to_the_dead_time=30.0,
    push_pull_interval=30.0,
    tcp_timeout=10.0,
)

# lbd default: a crashed node is declared dead after about one probe interval
# to find it, one to fail the probe and the 0.2 s minimum suspicion, ~0.4 s at
# the median; a lone accuser (a lost packet, not a crash) waits 1 s, during
# which the refutation gossiped every 20 ms has many chances to arrive.
DEFAULT = Profile(
    name="default",
    probe_interval=0.1,
    probe_timeout=0.05,
    indirect_checks=3,
    suspicion_mult=2,
    suspicion_max_timeout_mult=5,
    retransmit_mult=8,
    gossip_interval=0.02,
    gossip_nodes=3,
    gossip_to_the_dead_time=10.0,
    push_pull_interval=10.0,
    tcp_timeout=1.0,
    reconnect_interval=1.0,
    suspicion_confirmations=2,
    clamp_confirmations=True,
    suspicion_min_floor=0.2,
)

# lbd fast: half the default's probe timings; beats VRRP at advert_int 0.1.
FAST = Profile(
    name="fast",
    probe_interval=0.05,
    probe_timeout=0.025,
    indirect_checks=3,
    suspicion_mult=2,
    suspicion_max_timeout_mult=6,
    retransmit_mult=8,
    gossip_interval=0.01,
    gossip_nodes=3,
    gossip_to_the_dead_time=10.0,
    push_pull_interval=10.0,
    tcp_timeout=0.5,
    reconnect_interval=0.5,
    suspicion_confirmations=2,
    clamp_confirmations=True,
    suspicion_min_floor=0.1,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (LAN, DEFAULT, FAST)}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown cluster timing profile {name!r} (one of {', '.join(PROFILES)})") from None
