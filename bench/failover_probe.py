"""The client side of the failover measurement: ask the VIP who serves it, fast.

Run inside the client namespace. Every ``--interval`` seconds (2 ms by default)
it sends one UDP datagram carrying a sequence number to ``VIP:PORT``; each node's
responder (``failover_responder.py``) answers with the sequence number and its
node name. Every answer is recorded with the CLOCK_MONOTONIC time it arrived
(network namespaces share that clock, so the harness can compare it with the
moment it injected a fault).

Protocol with the harness, JSON lines on stdout:

- ``{"ev": "node", "t": T, "node": N, "prev": P}`` when the answering node
  changes (the first answer has ``prev`` null);
- ``{"ev": "done", "sent": S, "send_errors": E, "responses": [[t, node, seq], ...]}``
  once, at the end.

It stops when stdin says ``stop`` or closes, after ``--max-seconds``, or after
``--max-count`` requests: every loop is bounded. Stdlib only.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time


def probe(vip: str, port: int, interval: float, max_seconds: float, max_count: int) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # Connected: only answers whose source is the VIP are accepted, so a reply
    # from a node's own address cannot count as service on the VIP.
    sock.connect((vip, port))
    sock.setblocking(False)
    stdin = sys.stdin.fileno()
    watch = [sock, stdin]
    start = time.monotonic()
    deadline = start + max_seconds
    next_send = start
    sent = send_errors = 0
    responses: list[list[object]] = []
    last_node: str | None = None
    stopping = False
    while not stopping:
        now = time.monotonic()
        if now >= deadline:
            break
        if now >= next_send and sent < max_count:
            try:
                sock.send(str(sent).encode())
            except OSError:
                # EHOSTUNREACH while ARP fails, ECONNREFUSED after an ICMP
                # port unreachable: both are "no service", not a crash.
                send_errors += 1
            sent += 1
            # Fixed schedule (no drift): skip slots we were too late for.
            next_send += interval
            if next_send < now:
                next_send = now + interval
        wake = next_send if sent < max_count else next_send + 0.5
        timeout = max(0.0, min(wake, deadline) - time.monotonic())
        ready, _, _ = select.select(watch, [], [], timeout)
        for fd in ready:
            if fd == stdin:
                line = os.read(stdin, 256)
                if not line or b"stop" in line:
                    stopping = True
                continue
            for _ in range(64):  # drain, bounded
                try:
                    data = sock.recv(512)
                except BlockingIOError:
                    break
                except OSError:
                    send_errors += 1
                    break
                t = time.monotonic()
                seq_text, _, node = data.decode(errors="replace").partition(" ")
                try:
                    seq = int(seq_text)
                except ValueError:
                    continue
                responses.append([t, node, seq])
                if node != last_node:
                    print(json.dumps({"ev": "node", "t": t, "node": node, "prev": last_node}), flush=True)
                    last_node = node
        if sent >= max_count and time.monotonic() > next_send + 0.5:
            break
    return {"ev": "done", "sent": sent, "send_errors": send_errors, "responses": responses}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vip", required=True)
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--interval", type=float, default=0.002)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--max-count", type=int, default=100_000)
    args = parser.parse_args(argv)
    result = probe(args.vip, args.port, args.interval, args.max_seconds, args.max_count)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
