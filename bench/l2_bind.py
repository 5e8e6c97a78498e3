"""L2 binds and withdrawals: lbd's pipelined AddressBinder against ``ip -batch``.

Run as root: ``.venv/bin/python bench/l2_bind.py [--counts 2000 5000]``. Each run
makes its own network namespace (a veth pair, 10.77.0.0/16), times lbd adding
then deleting N /32 addresses (the daemon's path: ``AddressBinder.bind_many`` /
``unbind_many`` over one netlink socket), then ``ip -batch`` doing the same adds
and deletes, and prints both and the ratio (goal: lbd within 2x).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

NS = f"lbd-bench-l2-{os.getpid()}"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _vips(n: int) -> list[ipaddress.IPv4Address]:
    return [ipaddress.ip_address("10.77.16.0") + i for i in range(n)]


def ip_batch_adds(vips: Sequence[IPAddress], ifname: str) -> str:
    """``ip -batch`` lines adding ``vips`` as lbd adds them: /32 or /128, no prefix route, finite lifetime."""
    return "".join(f"addr add {v}/{v.max_prefixlen} dev {ifname} noprefixroute valid_lft 120 preferred_lft 120\n"
                   for v in vips)


def ip_batch_deletes(vips: Sequence[IPAddress], ifname: str) -> str:
    return "".join(f"addr del {v}/{v.max_prefixlen} dev {ifname}\n" for v in vips)


def ip_batch_seconds(lines: str, prefix: Sequence[str] = ()) -> float:
    """Wall seconds of one ``ip -batch`` run of ``lines`` (``prefix``: e.g. ``ip netns exec NS``)."""
    with tempfile.NamedTemporaryFile("w", suffix=".batch") as batch:
        batch.write(lines)
        batch.flush()
        t = time.perf_counter()
        subprocess.run([*prefix, "ip", "-batch", batch.name], check=True)
        return time.perf_counter() - t


def _child(n: int) -> None:
    """Inside the namespace: lbd's binder, then ip -batch; prints four timings."""
    from lbd.kernel.binding import AddressBinder
    from lbd.kernel.netlink import Netlink

    index = int(open("/sys/class/net/v0/ifindex").read())
    vips = _vips(n)

    async def lbd() -> tuple[float, float]:
        nl = Netlink()
        binder = AddressBinder(nl)
        await binder.bind_many([(index, ipaddress.ip_address("10.77.0.1"))])  # open the socket
        await binder.unbind_many([(index, ipaddress.ip_address("10.77.0.1"))])
        t = time.perf_counter()
        errors = [e for e in await binder.bind_many([(index, v) for v in vips]) if e]
        add = time.perf_counter() - t
        assert not errors, errors[:3]
        t = time.perf_counter()
        errors = [e for e in await binder.unbind_many([(index, v) for v in vips]) if e]
        delete = time.perf_counter() - t
        assert not errors, errors[:3]
        await nl.aclose()
        return add, delete

    add, delete = asyncio.run(lbd())
    ip_add = ip_batch_seconds(ip_batch_adds(vips, "v0"))
    ip_del = ip_batch_seconds(ip_batch_deletes(vips, "v0"))
    print(f"{n:>6} addresses  add: lbd {add * 1000:7.1f} ms  ip -batch {ip_add * 1000:7.1f} ms  "
          f"ratio {add / ip_add:4.2f}x   delete: lbd {delete * 1000:7.1f} ms  ip -batch {ip_del * 1000:7.1f} ms  "
          f"ratio {delete / ip_del:4.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 5000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        subprocess.run(["ip", "-n", NS, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
        subprocess.run(["ip", "-n", NS, "link", "set", "v0", "up"], check=True)
        subprocess.run(["ip", "-n", NS, "link", "set", "v1", "up"], check=True)
        for n in args.counts:
            subprocess.run(["ip", "netns", "exec", NS, sys.executable, __file__, "--child", str(n)],
                           check=True, timeout=120)
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


if __name__ == "__main__":
    main()
