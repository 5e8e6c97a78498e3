"""A small L2Announcer driver for the lab tests and the ARP benchmark.

``python -m lbd.testing.l2_driver`` runs an ``L2Announcer`` in the current network
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
import queue
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

from lbd.l2.announcer import L2Announcer
from lbd.kernel.interfaces import choose_interface, list_interfaces
from lbd.model import L2Intent

if TYPE_CHECKING:
    from lbd.testing.netlab import Host


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


class DriverClient:
    """Runs this driver in a lab host (``lbd.testing.netlab.Host``) and talks JSON lines to it."""

    def __init__(self, host: "Host", refresh: float = 30.0) -> None:
        self.host = host
        self.proc = host.popen(
            [sys.executable, "-m", "lbd.testing.l2_driver", str(refresh)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        first = self._next(timeout=20)
        if first != "ready":
            raise RuntimeError(f"driver did not start: {first!r} {self.stderr[-20:]}")

    @staticmethod
    def _pump(stream: Any, sink: Any) -> None:
        for raw in stream:
            sink(raw.decode().rstrip("\n"))

    def _next(self, timeout: float = 20.0) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"driver gave no answer in {timeout}s; stderr: {self.stderr[-20:]}") from None

    def send(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()
        return json.loads(self._next())

    def apply(self, *intents: dict[str, Any]) -> dict[str, Any]:
        return self.send({"apply": list(intents)})

    def status(self, vip: str) -> dict[str, Any]:
        rows = [r for r in self.send({"status": True})["status"] if r["vip"] == vip]
        assert rows, f"{vip} not in status"
        return rows[0]

    def close(self) -> None:
        """Withdraw everything (the driver's finally: announcer.close()) and wait for exit."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b'{"close": true}\n')
        self.proc.stdin.flush()
        assert json.loads(self._next()) == {"closed": True}
        self.proc.wait(timeout=20)

    def kill(self) -> None:
        """A crash: SIGKILL, nothing cleaned up."""
        self.host.lab.stop(self.proc, sig=9)


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
