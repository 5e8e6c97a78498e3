"""The BFD UDP engine: TTL checks, ancillary data, and two engines over loopback."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

import pytest

from lbd.bfd.packet import SessionState
from lbd.bfd.session import SessionConfig, StateChanged
from lbd.bfd.transport import BfdEngine, Endpoint, ttl_from_ancillary, ttl_problem

LO = ipaddress.ip_address("127.0.0.1")
FAST = SessionConfig(desired_min_tx=50_000, required_min_rx=50_000, detect_mult=3)


def test_ttl_from_ancillary() -> None:
    assert ttl_from_ancillary([(socket.IPPROTO_IP, socket.IP_TTL, struct.pack("=i", 255))]) == 255
    assert ttl_from_ancillary([(socket.IPPROTO_IPV6, 52, struct.pack("=i", 64))]) == 64
    assert ttl_from_ancillary([]) is None


def test_single_hop_requires_ttl_255() -> None:
    single = Endpoint(LO)
    assert ttl_problem(255, single) is None
    assert "not 255" in (ttl_problem(254, single) or "")
    assert ttl_problem(None, single)


def test_multi_hop_uses_minimum_ttl() -> None:
    multi = Endpoint(LO, multihop=True, minimum_ttl=250)
    assert ttl_problem(250, multi) is None
    assert ttl_problem(255, multi) is None
    assert "below minimum_ttl" in (ttl_problem(249, multi) or "")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("multihop", [False, True])
def test_two_engines_come_up_over_loopback_and_detect_loss(multihop: bool) -> None:
    """Engine A listens on pa, sends to pb; engine B the reverse (one host, two port pairs)."""
    pa, pb, qa, qb = (free_udp_port() for _ in range(4))
    events: dict[str, list[StateChanged]] = {"a": [], "b": []}
    a = BfdEngine(lambda k, e: events["a"].append(e), listen_ports=(pa, qa), peer_ports=(pb, qb),
                  priority=False)
    b = BfdEngine(lambda k, e: events["b"].append(e), listen_ports=(pb, qb), peer_ports=(pa, qa),
                  priority=False)
    started = time.time()
    a.start()
    b.start()
    try:
        ep = Endpoint(LO, multihop=multihop, minimum_ttl=254)
        a.configure("peer", ep, FAST).result(5)
        b.configure("peer", ep, FAST).result(5)
        assert wait_for(lambda: any(e.new == SessionState.UP for e in events["a"]))
        assert wait_for(lambda: any(e.new == SessionState.UP for e in events["b"]))
        snap = a.snapshot().result(5)["peer"]
        assert snap["state"] == "Up" and snap["remote_discriminator"] == b.snapshot().result(5)["peer"]["local_discriminator"]
        assert wait_for(lambda: a.snapshot().result(5)["peer"]["transmit_interval_ms"] == 50.0, 5)
        # The worst transmit delay while Up, and when it was (start-up or steady state).
        assert wait_for(lambda: a.snapshot().result(5)["peer"]["max_transmit_late_at"] is not None, 5)
        snap = a.snapshot().result(5)["peer"]
        at = snap["max_transmit_late_at"]  # rounded to the millisecond
        assert started - 0.001 <= at <= time.time() + 0.001 and snap["max_transmit_late_ms"] >= 0
        # Graceful: B goes AdminDown; A goes Down without a failure.
        b.admin_down().result(5)
        assert wait_for(lambda: any(e.new == SessionState.DOWN for e in events["a"]))
        down = [e for e in events["a"] if e.new == SessionState.DOWN][0]
        assert not down.failure and down.remote_admin_down
        # B gone entirely: A stays Down (it never came back up) and no failure is reported.
        b.close()
        time.sleep(0.3)
        assert not any(e.failure for e in events["a"])
    finally:
        a.close()
        b.close()


def test_crash_is_detected_within_detection_time() -> None:
    pa, pb, qa, qb = (free_udp_port() for _ in range(4))
    events: list[tuple[float, StateChanged]] = []
    a = BfdEngine(lambda k, e: events.append((time.monotonic(), e)), listen_ports=(pa, qa), peer_ports=(pb, qb),
                  priority=False)
    b = BfdEngine(lambda k, e: None, listen_ports=(pb, qb), peer_ports=(pa, qa), priority=False)
    a.start()
    b.start()
    try:
        a.configure("peer", Endpoint(LO), FAST).result(5)
        b.configure("peer", Endpoint(LO), FAST).result(5)
        assert wait_for(lambda: a.snapshot().result(5)["peer"]["detection_time_ms"] == 150.0)
        b._stopping = True  # a crash: the thread stops without AdminDown
        b._wake_w.send(b"\0")
        b._thread.join(2)
        t0 = time.monotonic()
        assert wait_for(lambda: any(e.failure for _, e in events), 5)
        (at, event), = [(t, e) for t, e in events if e.failure]
        assert event.diag.label == "control-detection-time-expired"
        # Detected by the detection timer (150 ms here), not by anything slower: a bound far
        # above it, since a loaded CI host can delay a thread that runs without real-time
        # priority by hundreds of milliseconds (the timing itself is bench/bfd_timing.py's).
        assert at - t0 < 1.5
    finally:
        a.close()
        b.close()


def test_ttl_below_255_is_discarded_on_single_hop() -> None:
    pa, qa = free_udp_port(), free_udp_port()
    a = BfdEngine(lambda k, e: None, listen_ports=(pa, qa), peer_ports=(1, 1), priority=False)
    a.start()
    try:
        a.configure("peer", Endpoint(LO), FAST).result(5)
        from lbd.bfd.packet import ControlPacket, encode

        raw = encode(ControlPacket(state=SessionState.DOWN, my_discriminator=5))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)
            s.sendto(raw, ("127.0.0.1", pa))
        assert wait_for(lambda: a.snapshot().result(5)["peer"]["packets_discarded"] == 1, 5)
        snap = a.snapshot().result(5)["peer"]
        assert "TTL 64" in snap["last_discard"] and snap["state"] == "Down"
    finally:
        a.close()


def test_bfd_process_survives_group_sigterm_and_serves_requests() -> None:
    """The child ignores a SIGTERM sent to the process group (the daemon sends AdminDown
    through it afterwards) and exits when the daemon closes it."""
    import os
    import signal

    from lbd.bfd.process import BfdProcess

    pa, qa = free_udp_port(), free_udp_port()
    proc = BfdProcess(lambda k, e: None, listen_ports=(pa, qa), peer_ports=(1, 1),
                      priority=False, realtime=False)
    try:
        proc.configure("peer", Endpoint(LO), FAST).result(30)
        os.kill(proc.proc.pid, signal.SIGTERM)
        time.sleep(0.3)
        assert proc.proc.is_alive()
        assert proc.admin_down().result(10) == 1
        assert wait_for(lambda: proc.cached_snapshot().get("peer", {}).get("state") == "AdminDown", 5)
    finally:
        proc.close()
    assert not proc.proc.is_alive()
