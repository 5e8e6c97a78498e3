"""The interface inventory (issue 9) against a real kernel: VIP binds do not make it read
the address table again, a new connected subnet or a link going down does, at once."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

pytestmark = pytest.mark.lab

SCRIPT = textwrap.dedent("""
    import asyncio, json, subprocess
    from lbd.kernel.interfaces import InterfaceInventory

    def ip(*args):
        subprocess.run(["ip", *args], check=True)

    async def main():
        changes = []
        inv = InterfaceInventory(on_change=lambda: changes.append(1))
        out = {}
        first = await inv.get()
        out["first"] = [(i.name, [str(n) for n in i.networks]) for i in first]
        for k in range(1, 51):  # VIP binds: host addresses
            ip("addr", "add", f"10.77.0.{100 + k}/32", "dev", "eth0")
        ip("addr", "add", "fd77::100/128", "dev", "eth0")
        await asyncio.sleep(0.2)
        await inv.get()
        out["reads_after_binds"] = inv.reads
        out["changes_after_binds"] = len(changes)
        ip("addr", "add", "10.88.0.1/24", "dev", "eth0")  # a new connected subnet
        await asyncio.sleep(0.2)
        out["changes_after_subnet"] = len(changes)  # heard without anyone asking
        got = await inv.get()
        out["reads_after_subnet"] = inv.reads
        out["subnet_seen"] = any(str(n) == "10.88.0.1/24" for i in got for n in i.networks)
        ip("link", "set", "eth0", "down")
        got = await inv.get()
        out["reads_after_down"] = inv.reads
        out["eth0_after_down"] = [i.name for i in got if i.name == "eth0" and i.up]
        inv.close()
        print(json.dumps(out))

    asyncio.run(main())
""")


def test_inventory_reads_again_only_for_links_and_subnets(lab) -> None:  # type: ignore[no-untyped-def]
    host = lab.add_host("inv", ["10.77.0.2/24"])
    out = json.loads(host.run([sys.executable, "-c", SCRIPT]).stdout)
    assert ["eth0", ["10.77.0.2/24"]] in out["first"]
    assert out["reads_after_binds"] == 1 and out["changes_after_binds"] == 0
    assert out["reads_after_subnet"] == 2 and out["subnet_seen"]
    assert out["changes_after_subnet"] >= 1  # the daemon's pass is triggered
    assert out["reads_after_down"] == 3 and out["eth0_after_down"] == []
