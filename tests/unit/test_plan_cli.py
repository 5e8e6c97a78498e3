"""`lbd plan`: exit codes and output, against a control socket serving canned plans."""

from __future__ import annotations

import asyncio
import json

from lbd.cli import main, render_plan
from lbd.control import ControlServer

CHANGED = {
    "valid": True, "config": "/etc/lbd.toml.new", "changed": True,
    "readdressed": [{"service": "static/a", "old": ["10.77.0.48"], "new": ["10.77.0.50"], "reason": "left pool"}],
    "allocated": [], "released": [{"service": "static/z", "addresses": ["10.77.0.60"]}], "pending": [],
    "vips_added": ["10.77.0.50"], "vips_withdrawn": ["10.77.0.48", "10.77.0.60"], "announced_here": [],
    "unannounced_here": [], "owners_moved": [{"vip": "10.77.0.49", "old": "n1", "new": None}],
    "bgp_opened": ["gw3"], "bgp_closed": [], "bgp_reset": [], "notes": [], "reload_refused": True,
}


async def run_plan(tmp_path, capsys, answer: dict, *argv: str) -> tuple[int, str, str, list]:
    seen: list = []

    async def plan(args):
        seen.append(dict(args))
        return answer

    server = ControlServer(tmp_path / "s.sock", {"plan": plan})
    await server.start()
    try:
        code = await asyncio.to_thread(main, ["plan", "--socket", str(tmp_path / "s.sock"), *argv])
    finally:
        await server.close()
    out = capsys.readouterr()
    return code, out.out, out.err, seen


async def test_exit_codes_and_output(tmp_path, capsys, monkeypatch) -> None:
    code, out, _, seen = await run_plan(tmp_path, capsys, CHANGED)
    assert code == 2 and seen == [{}]
    assert "static/a: 10.77.0.48 -> 10.77.0.50 (left pool)" in out
    assert "owners moved:\n  10.77.0.49: n1 -> -" in out and "BGP sessions opened:\n  gw3" in out
    monkeypatch.chdir(tmp_path)
    code, out, _, seen = await run_plan(tmp_path, capsys, {**CHANGED, "changed": False}, "--config", "new.toml",
                                        "--json")
    assert code == 0 and seen == [{"config": str(tmp_path / "new.toml")}]  # made absolute for the daemon
    assert json.loads(out[out.index("{\n"):])["changed"] is False  # (after the server's own log lines)
    code, _, err, _ = await run_plan(tmp_path, capsys, {"valid": False, "config": "/x", "errors": ["/x: bad"]})
    assert code == 1 and "/x: bad" in err and "1 error(s)" in err


def test_not_running(tmp_path, capsys) -> None:
    assert main(["plan", "--socket", str(tmp_path / "none.sock")]) == 3
    assert "lbd is not running" in capsys.readouterr().err


def test_render_no_change() -> None:
    assert render_plan({"config": "/etc/lbd.toml", "changed": False}) == "/etc/lbd.toml: no change"
