"""lbd-ctl: talk to a running lbd over its control socket."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from lbd.control import ControlError, request

DEFAULT_SOCKET = Path("/run/lbd/lbd.sock")


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [["-" if c is None or c == "" else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)


def _usage(family: dict[str, Any] | None) -> str:
    if not family or not family.get("total"):
        return "-"
    return f"{family['used']}/{family['total']}"


def render_status(status: dict[str, Any]) -> str:
    out = []
    drained = " (drained)" if status.get("drained") else ""
    out.append(f"node {status.get('node')}{drained}, lbd {status.get('version')}, config {status.get('config')}")
    if status.get("reload_error"):
        out.append("last reload REJECTED, running config kept:")
        out.extend(f"  {e}" for e in status["reload_error"])
    out.append("")
    pools = status.get("pools", [])
    out.append(_table([(p["name"], _usage(p.get("ipv4")), _usage(p.get("ipv6"))) for p in pools],
                      ("POOL", "IPV4 USED/TOTAL", "IPV6 USED/TOTAL")))
    out.append("")
    services = status.get("services", [])
    if services:
        rows = [
            (s["name"], ",".join(s.get("addresses") or []) or None, s.get("state"), s.get("owner"),
             s.get("interface"), s.get("reason"))
            for s in services
        ]
        out.append(_table(rows, ("SERVICE", "ADDRESSES", "STATE", "OWNER", "INTERFACE", "REASON")))
    else:
        out.append("no services")
    for source in status.get("sources", []):
        if source.get("state") not in (None, "ok"):
            out.append(f"source {source.get('name')}: {source.get('state')}: {source.get('last_error')}")
    return "\n".join(out)


def render_bgp(peers: list[dict[str, Any]]) -> str:
    if not peers:
        return "no BGP peers configured"
    rows = []
    for p in peers:
        caps = ",".join(p.get("capabilities") or []) if isinstance(p.get("capabilities"), list) else p.get("capabilities")
        uptime = p.get("uptime")
        rows.append((p.get("name"), p.get("address"), p.get("state"),
                     f"{uptime:.0f}s" if isinstance(uptime, (int, float)) else uptime,
                     p.get("hold_time"), p.get("prefixes_announced", p.get("prefixes")), caps, p.get("last_error")))
    return _table(rows, ("PEER", "ADDRESS", "STATE", "UPTIME", "HOLD", "PREFIXES", "CAPABILITIES", "LAST ERROR"))


def _safe(value: Any) -> Any:
    """A peer-supplied string made harmless for a terminal: non-printable characters
    (ESC, NUL, bidi overrides ...) and backslashes as Python escapes, "" for an empty one."""
    if not isinstance(value, str):
        return value
    if not value:
        return '""'
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in value)


def render_members(members: list[dict[str, Any]]) -> str:
    if not members:
        return "no members"
    rows = [(_safe(m.get("name")), _safe(m.get("address")), _safe(m.get("state")), m.get("incarnation"),
             _safe(m.get("last_change")), "yes" if m.get("drained") else "") for m in members]
    return _table(rows, ("NAME", "ADDRESS", "STATE", "INCARNATION", "LAST CHANGE", "DRAINED"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lbd-ctl", description="Query and steer a running lbd.")
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, help=f"control socket (default {DEFAULT_SOCKET})")
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("status", help="node, pools, services, owners and reasons")
    sub.add_parser("bgp", help="BGP sessions")
    sub.add_parser("members", help="cluster members")
    sub.add_parser("drain", help="move every VIP off this node")
    sub.add_parser("undrain", help="let this node own VIPs again")
    sub.add_parser("reload", help="reload the configuration (like SIGHUP)")
    sub.add_parser("restart", help="stop for a restart (like SIGUSR2): BGP graceful restart, VIPs kept")
    args = parser.parse_args(argv)
    command = args.command or "status"
    try:
        result = request(args.socket, command)
    except FileNotFoundError:
        print(f"lbd-ctl: lbd is not running (no control socket at {args.socket})", file=sys.stderr)
        return 3
    except ConnectionRefusedError:
        print(f"lbd-ctl: lbd is not running (nothing listens on {args.socket})", file=sys.stderr)
        return 3
    except PermissionError:
        print(f"lbd-ctl: permission denied on {args.socket} (run as root or a member of its group)", file=sys.stderr)
        return 4
    except ControlError as exc:
        print(f"lbd-ctl: {command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"lbd-ctl: cannot talk to lbd on {args.socket}: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif command == "status":
        print(render_status(result))
    elif command == "bgp":
        print(render_bgp(result))
    elif command == "members":
        print(render_members(result))
    else:
        print(result if isinstance(result, str) else json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
