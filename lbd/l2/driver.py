"""A small L2Announcer driver for the lab tests and the ARP benchmark.

``python -m lbd.l2.driver`` runs an ``L2Announcer`` in the current network
namespace and takes JSON commands, one per line, on stdin; it answers each
with one JSON line on stdout (after printing ``ready`` once):

- ``{"apply": [{"vip": "10.77.0.10", "interface": "eth0", "mode": "bind",
  "burst": 3, "interval": 10}, ...]}``: an intent without ``interface`` gets
  the one ``choose_interface`` picks (and is skipped, with the reason, when
  none fits); answers ``{"status": [...], "skipped": {vip: reason}}``;
- ``{"status": true}``, ``{"cleanup": true}`` (-> ``{"removed": n}``),
  ``{"close": true}`` (withdraws everything, then exits).

Not part of the daemon: test and benchmark tooling.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
from typing import Any

from lbd.l2.announcer import L2Announcer
from lbd.l2.interfaces import choose_interface, list_interfaces
from lbd.model import L2Intent


async def _intents(raw: list[dict[str, Any]]) -> tuple[list[L2Intent], dict[str, str]]:
    intents, skipped = [], {}
    interfaces = None
    for item in raw:
        vip = ipaddress.ip_address(item["vip"])
        name = item.get("interface")
        if not name:
            if interfaces is None:
                interfaces = await list_interfaces()
            name, reason = choose_interface(vip, interfaces, tuple(item.get("configured", ())))
            if name is None:
                skipped[str(vip)] = reason
                continue
        intents.append(
            L2Intent(
                vip=vip,
                interface=name,
                mode=item.get("mode", "bind"),
                services=tuple(item.get("services", ("test",))),
                announce_burst=int(item.get("burst", 3)),
                announce_interval=float(item.get("interval", 10.0)),
            )
        )
    return intents, skipped


async def main() -> None:
    announcer = L2Announcer(refresh_interval=float(sys.argv[1]) if len(sys.argv) > 1 else 30.0)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            if "apply" in command:
                intents, skipped = await _intents(command["apply"])
                await announcer.apply(intents)
                answer: dict[str, Any] = {"status": announcer.status(), "skipped": skipped}
            elif "cleanup" in command:
                answer = {"removed": await announcer.cleanup_stale()}
            elif "close" in command:
                break
            else:
                answer = {"status": announcer.status()}
            print(json.dumps(answer), flush=True)
    finally:
        await announcer.close()
        print(json.dumps({"closed": True}), flush=True)


if __name__ == "__main__":
    import structlog

    # stdout carries the JSON answers; logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
        pass
    asyncio.run(main())
