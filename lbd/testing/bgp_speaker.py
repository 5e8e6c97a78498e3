"""``python -m lbd.testing.bgp_speaker``: a standalone BGP speaker for debugging, interop tests
and benchmarks (one peer, one attribute set).

Prints one JSON object per line on stdout for every session event
(``{"event": "established", ...}``, ``{"event": "eor_sent", "prefixes": N}``
...); logs go to stderr. Signals: SIGHUP re-reads ``--prefixes-file`` (and
re-applies), SIGTERM/SIGINT stop with a NOTIFICATION Cease, SIGUSR1 stops
gracefully (no NOTIFICATION when graceful restart was negotiated).
See docs/bgp-speaker.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Sequence

from lbd.bgp.announcer import BgpAnnouncer
from lbd.bgp.events import (
    EndOfRibSent,
    Event,
    NotificationReceived,
    NotificationSent,
    RouteRefreshReceived,
    SessionDown,
    SessionEstablished,
    StateChanged,
    UpdatesSent,
)
from lbd.logsetup import setup_logging
from lbd.config.schema import BgpPeerConfig, LogConfig
from lbd.model import BgpRoute, IPNetwork


def _community(text: str) -> tuple[int, int]:
    a, b = text.split(":")
    va, vb = int(a), int(b)
    if not (0 <= va <= 0xFFFF and 0 <= vb <= 0xFFFF):
        raise ValueError(text)
    return (va, vb)


def _large_community(text: str) -> tuple[int, int, int]:
    parts = text.removeprefix("large:").split(":")
    if len(parts) != 3:
        raise ValueError(text)
    values = tuple(int(p) for p in parts)
    if not all(0 <= v <= 0xFFFFFFFF for v in values):
        raise ValueError(text)
    return values  # type: ignore[return-value]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lbd.testing.bgp_speaker", description="lbd's BGP speaker, standalone: announce prefixes to one peer.")
    p.add_argument("--peer-address", required=True, type=ipaddress.ip_address)
    p.add_argument("--peer-asn", type=int, help="expected peer AS (or --dynamic-asn)")
    p.add_argument("--dynamic-asn", choices=("internal", "external"))
    p.add_argument("--my-asn", required=True, type=int)
    p.add_argument("--local-asn", type=int, help="AS to present instead of --my-asn (FRR local-as)")
    p.add_argument("--router-id", type=ipaddress.IPv4Address)
    p.add_argument("--hold-time", type=float, default=90.0)
    p.add_argument("--keepalive-time", type=float)
    p.add_argument("--connect-time", type=float, default=10.0)
    p.add_argument("--password", help="TCP MD5 (RFC 2385) password")
    p.add_argument("--password-file", type=Path)
    p.add_argument("--graceful-restart", action="store_true", help="advertise RFC 4724 graceful restart")
    p.add_argument("--graceful-restart-time", type=int, default=120)
    p.add_argument("--restarting", action="store_true", help="set the Restart State bit (this run follows a graceful stop)")
    p.add_argument("--passive", action="store_true", help="do not connect; accept the peer's connection")
    p.add_argument("--listen-port", type=int, default=179, help="port to listen on when --passive")
    p.add_argument("--listen-address", action="append", help="address to listen on when --passive (repeatable)")
    p.add_argument("--ebgp-multihop", type=int, metavar="TTL")
    p.add_argument("--source-address", type=ipaddress.ip_address)
    p.add_argument("--peer-port", type=int, default=179)
    p.add_argument("--community", action="append", default=[], help="A:B (repeatable)")
    p.add_argument("--large-community", action="append", default=[], help="A:B:C (repeatable)")
    p.add_argument("--local-pref", type=int)
    p.add_argument("--prefix", action="append", default=[], help="prefix to announce (repeatable)")
    p.add_argument("--prefixes-file", type=Path, help="one prefix per line; re-read on SIGHUP")
    p.add_argument("--name", default="peer")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    args = p.parse_args(argv)
    if args.peer_asn is None and args.dynamic_asn is None:
        p.error("one of --peer-asn or --dynamic-asn is required")
    try:
        args.communities = tuple(_community(c) for c in args.community)
        args.large_communities = tuple(_large_community(c) for c in args.large_community)
    except ValueError as exc:
        p.error(f"bad community: {exc}")
    return args


def read_prefixes(args: argparse.Namespace) -> list[IPNetwork]:
    """Prefixes from --prefix and the file; bad lines are reported and skipped."""
    out: list[IPNetwork] = []

    def add(line: str) -> None:
        if "#" in line:
            line = line.split("#", 1)[0]
        line = line.strip()
        if not line:
            return
        try:
            out.append(parse_prefix(line))
        except (ValueError, OSError) as exc:
            emit({"event": "error", "error": f"bad prefix {line!r}: {exc}"})

    for text in args.prefix:
        add(text)
    if args.prefixes_file is not None:
        try:
            with open(args.prefixes_file) as f:  # line by line: 100,000 lines stay cheap
                for line in f:
                    add(line)
        except OSError as exc:
            emit({"event": "error", "error": f"prefixes file: {exc}"})
    return out


def parse_prefix(text: str) -> IPNetwork:
    """``ip_network(text, strict=False)``, 2-3x faster for IPv4 (the benchmark
    loads 100,000 of them): inet_pton validates, the integer form skips the
    string parsing, and :func:`_ipv4_network` skips ``__init__``."""
    if ":" in text:
        return ipaddress.IPv6Network(text, strict=False)
    addr, _, plen_text = text.partition("/")
    value = int.from_bytes(socket.inet_pton(socket.AF_INET, addr), "big")
    plen = int(plen_text) if plen_text else 32
    if not 0 <= plen <= 32:
        raise ValueError(f"prefix length {plen_text!r} out of range")
    return _ipv4_network(value & _IPV4_MASKS[plen], plen)


_IPV4_MASKS = [0xFFFFFFFF ^ ((1 << (32 - n)) - 1) for n in range(33)]
_IPV4_NETMASKS = [ipaddress.IPv4Address(m) for m in _IPV4_MASKS]


def _ipv4_network_fast(value: int, plen: int) -> ipaddress.IPv4Network:
    """An IPv4Network built without ``__init__`` (which re-validates what was
    just validated and, for a /32, adds a per-object ``hosts`` closure: half
    the time and a third of the memory for 100,000 prefixes). Checked against
    the real constructor at import; see ``_ipv4_network``."""
    net = object.__new__(ipaddress.IPv4Network)
    net.network_address = ipaddress.IPv4Address(value)
    net.netmask = _IPV4_NETMASKS[plen]
    net._prefixlen = plen
    return net


def _ipv4_network_slow(value: int, plen: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network((value, plen))


def _choose_ipv4_constructor():  # type: ignore[no-untyped-def]
    """Use the fast path only if it is indistinguishable on samples (a future
    Python could change ``ipaddress`` internals)."""
    try:
        for value, plen in ((0x0A4D0001, 32), (0x0A4D0000, 24), (0, 0), (0xC0A80000, 31)):
            fast, real = _ipv4_network_fast(value, plen), ipaddress.IPv4Network((value, plen))
            if (fast != real or hash(fast) != hash(real) or str(fast) != str(real) or fast.prefixlen != real.prefixlen
                    or fast.broadcast_address != real.broadcast_address or not fast.overlaps(real)):
                return _ipv4_network_slow
    except Exception:  # noqa: BLE001 - any surprise: the standard constructor
        return _ipv4_network_slow
    return _ipv4_network_fast


_ipv4_network = _choose_ipv4_constructor()


def emit(obj: dict[str, object]) -> None:
    obj.setdefault("time", round(time.time(), 6))
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def describe_event(event: Event) -> dict[str, object] | None:
    if isinstance(event, StateChanged):
        return {"event": "state", "old": event.old.value, "new": event.new.value}
    if isinstance(event, SessionEstablished):
        n = event.negotiated
        return {
            "event": "established",
            "peer_as": n.peer_as,
            "peer_router_id": str(n.peer_router_id),
            "hold_time": n.hold_time,
            "keepalive_time": n.keepalive_time,
            "capabilities": n.capabilities(),
        }
    if isinstance(event, EndOfRibSent):
        return {"event": "eor_sent", "afi": event.afi, "safi": event.safi, "prefixes": event.prefixes}
    if isinstance(event, UpdatesSent):
        return {"event": "updates_sent", "messages": event.messages, "announced": event.announced, "withdrawn": event.withdrawn}
    if isinstance(event, NotificationSent):
        return {"event": "notification_sent", "code": event.code, "subcode": event.subcode}
    if isinstance(event, NotificationReceived):
        return {"event": "notification_received", "code": event.code, "subcode": event.subcode}
    if isinstance(event, SessionDown):
        return {"event": "session_down", "reason": event.reason}
    if isinstance(event, RouteRefreshReceived):
        return {"event": "route_refresh_received", "afi": event.afi, "safi": event.safi, "subtype": event.subtype}
    return None


async def run(args: argparse.Namespace) -> int:
    peer = BgpPeerConfig(
        name=args.name,
        my_asn=args.my_asn,
        peer_address=args.peer_address,
        peer_asn=args.peer_asn,
        dynamic_asn=args.dynamic_asn,
        local_asn=args.local_asn,
        source_address=args.source_address,
        peer_port=args.peer_port,
        hold_time=args.hold_time,
        keepalive_time=args.keepalive_time,
        connect_time=args.connect_time,
        router_id=args.router_id,
        password=args.password,
        password_file=args.password_file,
        graceful_restart=args.graceful_restart,
        graceful_restart_time=args.graceful_restart_time,
        ebgp_multihop=args.ebgp_multihop,
        passive=args.passive,
    )

    def on_event(name: str, event: Event) -> None:
        line = describe_event(event)
        if line is not None:
            line["peer"] = name
            emit(line)

    listen = tuple(args.listen_address) if args.listen_address else (("0.0.0.0",) if args.peer_address.version == 4 else ("::",))
    announcer = BgpAnnouncer("lbd-bgp", listen_port=args.listen_port, listen_addresses=listen, restarting=args.restarting, on_event=on_event)

    def load() -> None:
        prefixes = read_prefixes(args)
        # A generator: the BgpRoute objects are dropped as the announcer reads them.
        announcer.apply(
            BgpRoute(prefix=p, peers=(args.name,), communities=args.communities, large_communities=args.large_communities, local_pref=args.local_pref)
            for p in prefixes
        )
        emit({"event": "prefixes_loaded", "count": len(prefixes)})
        del prefixes

    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def request_stop(graceful: bool) -> None:
        if not stop.done():
            stop.set_result(graceful)

    loop.add_signal_handler(signal.SIGHUP, load)
    loop.add_signal_handler(signal.SIGTERM, request_stop, False)
    loop.add_signal_handler(signal.SIGINT, request_stop, False)
    loop.add_signal_handler(signal.SIGUSR1, request_stop, True)

    load()
    emit({"event": "started", "peer_address": str(args.peer_address), "passive": args.passive})
    await announcer.set_peers([peer])
    graceful = await stop
    await announcer.close(graceful_restart=graceful)
    emit({"event": "stopped", "graceful": graceful})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(LogConfig(level=args.log_level, format="json"), stream=sys.stderr)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
