"""A tiny UDP responder run on every node of the failover lab.

It listens on ``0.0.0.0:PORT`` and answers every datagram with
``<request payload> <node name>`` so the client can tell which node served it.
It replies *from the address the request was sent to* (``IP_PKTINFO``,
ip(7)): bound to the wildcard address, the kernel would otherwise pick the
node's primary address as the source and the client, which talks to the VIP,
could not tell a VIP answer from any other.

Standalone on purpose (stdlib only, no lbd import): it runs with whatever
python is at hand inside ``ip netns exec``. Bounded by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import select
import socket
import struct
import sys
import time

# Linux values from <linux/in.h>; Python's socket module does not export them.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("=I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr


def serve(node: str, port: int, max_seconds: float) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind(("0.0.0.0", port))
    suffix = b" " + node.encode()
    deadline = time.monotonic() + max_seconds
    print(f"ready {node} {port}", flush=True)
    answered = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([sock], [], [], min(left, 1.0))
        if not ready:
            continue
        data, ancdata, _flags, peer = sock.recvmsg(512, socket.CMSG_SPACE(_PKTINFO.size))
        local = None
        for level, kind, cdata in ancdata:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(cdata) >= _PKTINFO.size:
                _ifindex, _spec_dst, addr = _PKTINFO.unpack(cdata[: _PKTINFO.size])
                local = addr  # the destination address of the request
        reply = data[:64] + suffix
        try:
            if local is None:
                sock.sendto(reply, peer)
            else:
                # ipi_spec_dst picks the source address of the reply.
                cmsg = (socket.IPPROTO_IP, IP_PKTINFO, _PKTINFO.pack(0, local, b"\0\0\0\0"))
                sock.sendmsg([reply], [cmsg], 0, peer)
            answered += 1
        except OSError:
            # No route (link down while crashed): drop, as a dead host would.
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True)
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    return serve(args.node, args.port, args.max_seconds)


if __name__ == "__main__":
    sys.exit(main())
