"""BFD transmit timing under load: why BFD runs on its own thread (docs/bfd.md, "Timing").

Two ways of sending a packet every 100 ms, measured side by side for ``--seconds`` with ``--hogs``
busy-loop processes saturating the CPUs and, in this process, ``--work-ms`` of CPU-bound Python
on the asyncio event loop every ``--work-every`` seconds (what a long reconcile pass does):

- ``loop``: a ``call_at`` timer on the daemon's event loop (where the BGP speaker's timers live);
- ``thread``: lbd's BFD engine (``lbd.bfd.transport.BfdEngine``) on a thread of this process
  (nice -10 when root), two engines talking over 127.0.0.1 at 100 ms x 3;
- ``process``: the same engines each in a process of its own (``lbd.bfd.process.BfdProcess``,
  what lbd runs).

For the engines: their own record of the worst delay of a periodic packet past its deadline
while Up, and any session Down.

Prints the worst and 99th-percentile delay past the deadline for each. Usage::

    python bench/bfd_timing.py --seconds 30 --hogs 4 --work-ms 200
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lbd.bfd.process import BfdProcess  # noqa: E402
from lbd.bfd.session import SessionConfig  # noqa: E402
from lbd.bfd.transport import BfdEngine, Endpoint  # noqa: E402

HOG = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


def ports(n: int) -> list[int]:
    out = []
    for _ in range(n):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            out.append(s.getsockname()[1])
    return out


def burn(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    x = 0
    while time.perf_counter() < end:
        x = (x * 31 + 7) & 0xFFFF


async def measure(kind: str, seconds: float, work_ms: float, work_every: float) -> tuple[list[float], dict, int]:
    loop = asyncio.get_running_loop()
    delays: list[float] = []
    downs = 0

    def on_event(key: str, event: object) -> None:
        nonlocal downs
        if getattr(event, "failure", False):
            downs += 1
            print(f"    false Down at {time.monotonic():.3f}: {event}", flush=True)

    p1, p2, q1, q2 = ports(4)
    if kind == "process":
        a: Any = BfdProcess(on_event, listen_ports=(p1, q1), peer_ports=(p2, q2))
        b: Any = BfdProcess(on_event, listen_ports=(p2, q2), peer_ports=(p1, q1))
    else:
        a = BfdEngine(on_event, listen_ports=(p1, q1), peer_ports=(p2, q2))
        b = BfdEngine(on_event, listen_ports=(p2, q2), peer_ports=(p1, q1))
        a.start()
        b.start()
    config = SessionConfig(desired_min_tx=100_000, required_min_rx=100_000, detect_mult=3)
    lo = Endpoint(ipaddress.ip_address("127.0.0.1"))
    a.configure("x", lo, config).result(60)
    b.configure("x", lo, config).result(60)
    await asyncio.sleep(3.0)  # Up, past the poll sequence (the worst delay counts while Up only)
    downs = 0  # count from here: the measurement window

    deadline = loop.time() + 0.1

    def tick() -> None:
        nonlocal deadline
        delays.append(loop.time() - deadline)
        deadline += 0.1
        loop.call_at(deadline, tick)

    loop.call_at(deadline, tick)
    end = loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(work_every)
        if work_ms:
            burn(work_ms)  # blocks the loop, holds the GIL
    snap = {"a": a.snapshot().result(5)["x"], "b": b.snapshot().result(5)["x"]}
    a.close()
    b.close()
    return delays, snap, downs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--hogs", type=int, default=4)
    parser.add_argument("--work-ms", type=float, default=200.0)
    parser.add_argument("--work-every", type=float, default=1.0)
    args = parser.parse_args()
    print(f"{args.hogs} busy loops, {args.work_ms:g} ms of Python on the event loop every {args.work_every:g} s, "
          f"{args.seconds:g} s per measurement")
    for kind in ("thread", "process"):
        hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(s=args.seconds + 30)])
                for _ in range(args.hogs)]
        try:
            delays, snap, downs = asyncio.run(measure(kind, args.seconds, args.work_ms, args.work_every))
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        ordered = sorted(delays)
        p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
        if kind == "thread":
            print(f"  event-loop timer (100 ms): worst delay {max(delays) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
        print(f"  BFD engine on a {kind} (100 ms x 3): worst transmit delay "
              f"{max(snap['a']['max_transmit_late_ms'], snap['b']['max_transmit_late_ms']):.1f} ms, "
              f"sessions {snap['a']['state']}/{snap['b']['state']}, false Down {downs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
