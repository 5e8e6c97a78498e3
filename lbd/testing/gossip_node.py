"""A standalone gossip node for interop tests and debugging.

    python -m lbd.testing.gossip_node --name py1 --bind 127.0.0.1:7950 --join 127.0.0.1:7946 \\
        [--keys-file F] [--tag role=py] [--profile lan] [--serf-leave]

Prints one JSON object per line on stdout: ``started``, ``joined`` or
``join_failed``, every member event, ``user`` messages, and ``left`` after a
graceful leave on SIGTERM/SIGINT. SIGKILL it to simulate a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from lbd.logsetup import setup_logging
from lbd.config.schema import LogConfig

from lbd.cluster import serf, wire
from lbd.cluster.crypto import load_keyring
from lbd.cluster.errors import GossipError
from lbd.cluster.events import MemberEvent
from lbd.cluster.transport import Gossip, JoinError, UserPayload


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def _member(ev: MemberEvent) -> dict[str, Any]:
    mi = ev.member
    try:
        tags: Any = serf.decode_tags(mi.meta)
    except GossipError:
        tags = None
    return {"event": ev.kind.value, "name": mi.name, "addr": mi.addr, "state": mi.state.value,
            "incarnation": mi.incarnation, "tags": tags}


async def run(args: argparse.Namespace) -> int:
    keys = load_keyring(args.keys_file) if args.keys_file else []
    tags = dict(t.split("=", 1) for t in args.tag)
    ltime = 0

    def merge(data: bytes, join: bool) -> None:
        nonlocal ltime
        ltime = max(ltime, serf.ltime_of(data))
        _emit({"event": "remote_state", "size": len(data), "join": join, "ltime": ltime})

    vsn = bytes(int(x) for x in args.vsn.split(",")) if args.vsn else wire.DEFAULT_VSN
    g = Gossip(args.name, args.bind, args.advertise, profile=args.profile, keys=keys,
               meta=serf.encode_tags(tags), merge_remote_state=merge, compress=args.compress, vsn=vsn)

    def on_user(msg: UserPayload) -> None:
        nonlocal ltime
        ltime = max(ltime, serf.ltime_of(msg.payload))
        _emit({"event": "user", "size": len(msg.payload), "kind": msg.payload[0]})

    g.on_event(lambda ev: _emit(_member(ev)))
    g.on_user(on_user)
    await g.start()
    _emit({"event": "started", "name": args.name, "port": g.port})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.join:
        try:
            if args.retry_join:
                n = await g.join_with_retry(args.join, max_attempts=args.retry_join)
            else:
                n = await g.join(args.join)
            _emit({"event": "joined", "count": n})
        except JoinError as exc:
            _emit({"event": "join_failed", "error": str(exc)})
            if not args.stay:
                await g.close()
                return 2
    if args.stats_interval:
        async def stats() -> None:
            while True:
                await asyncio.sleep(args.stats_interval)
                _emit({"event": "stats", **g.stats()})
        loop.create_task(stats())
    await stop.wait()
    if args.serf_leave:
        # serf shows "left" only after a leave intent newer than what it saw.
        g.broadcast_user(serf.leave_intent(ltime + 1, args.name))
        await asyncio.sleep(0.3)
    ok = await g.leave(args.leave_timeout)
    _emit({"event": "left", "ok": ok, "stats": g.stats()})
    await g.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lbd.testing.gossip_node", description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--bind", default="0.0.0.0:7946")
    p.add_argument("--advertise")
    p.add_argument("--join", action="append", default=[])
    p.add_argument("--retry-join", type=int, default=0, help="attempts with backoff (0: one attempt)")
    p.add_argument("--stay", action="store_true", help="keep running when the join fails")
    p.add_argument("--keys-file")
    p.add_argument("--profile", default="default")
    p.add_argument("--tag", action="append", default=[], help="serf tag key=value")
    p.add_argument("--compress", action="store_true", help="LZW-compress outgoing packets and streams")
    p.add_argument("--vsn", help="protocol version vector, 6 comma-separated numbers (tests)")
    p.add_argument("--serf-leave", action="store_true", help="send serf's leave intent before leaving")
    p.add_argument("--leave-timeout", type=float, default=3.0)
    p.add_argument("--stats-interval", type=float, default=0.0)
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    setup_logging(LogConfig(level=args.log_level, format="console"), stream=sys.stderr)  # stdout is for events
    try:
        return asyncio.run(run(args))
    except GossipError as exc:
        _emit({"event": "error", "error": str(exc)})
        return 1


if __name__ == "__main__":
    sys.exit(main())
