"""lbd-ctl: talk to a running lbd over its control socket."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from lbd.control import ControlError, request

DEFAULT_SOCKET = Path("/run/lbd/lbd.sock")


def printable(value: object, *, newlines: bool = False) -> str:
    """``value`` as text safe for a terminal: control and format characters escaped.

    Member names, peer errors and other strings come from the network (gossip,
    BGP, Kubernetes): an ESC sequence or a NUL in one must not reach the
    operator's terminal as such (it could rewrite the screen or hide a line).
    """
    text = str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or (newlines and ch == "\n"):
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [["-" if c is None or c == "" else printable(c) for c in row] for row in rows]
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
    out.append(printable(f"node {status.get('node')}{drained}, lbd {status.get('version')}, config {status.get('config')}"))
    if status.get("reload_error"):
        what = {"refused": "REFUSED", "rolled_back": "ROLLED BACK"}.get(status.get("last_reload") or "", "REJECTED")
        out.append(f"last reload {what}, running config kept:")
        out.extend(f"  {printable(e)}" for e in status["reload_error"])
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
    backends = [(s["name"], b.get("port"), b.get("backend"), b.get("weight"), b.get("health"),
                 f"{100 * b.get('share', 0):.1f}%", b.get("packets"), b.get("note"))
                for s in services for b in s.get("backends") or []]
    if backends:
        out.append("")
        out.append(_table(backends, ("SERVICE", "PORT", "BACKEND", "WEIGHT", "HEALTH", "SHARE", "PACKETS", "NOTE")))
    for source in status.get("sources", []):
        state = source.get("state")
        if state == "starting" and source.get("last_error"):
            # Failing before its first snapshot (401, 403, unreachable, bad kubeconfig): degraded for
            # the operator; the daemon keeps the persisted allocations announced meanwhile.
            state = "degraded (no snapshot yet)"
        if state not in (None, "ok"):
            out.append(printable(f"source {source.get('name')}: {state}: {source.get('last_error')}"))
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
                     p.get("hold_time"), p.get("prefixes_announced", p.get("prefixes")), p.get("bfd"), caps,
                     p.get("last_error")))
    return _table(rows, ("PEER", "ADDRESS", "STATE", "UPTIME", "HOLD", "PREFIXES", "BFD", "CAPABILITIES", "LAST ERROR"))


def render_bfd(sessions: list[dict[str, Any]]) -> str:
    if not sessions:
        return "no BFD sessions (no bgp_peer names a bfd_profile)"
    rows = []
    for s in sessions:
        down = s.get("last_down_reason")
        if down and s.get("last_down_diag"):
            down = f"{s['last_down_diag']}: {down}"
        rows.append((s.get("peer"), s.get("address"), "multi" if s.get("multihop") else "single", s.get("state"),
                     s.get("remote_state"), s.get("local_discriminator"), s.get("remote_discriminator"),
                     s.get("transmit_interval_ms"), s.get("detection_time_ms"), s.get("flaps"), down))
    return _table(rows, ("PEER", "ADDRESS", "HOP", "STATE", "REMOTE", "LOCAL DISC", "REMOTE DISC", "TX MS",
                         "DETECT MS", "FLAPS", "LAST DOWN"))


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


# The subcommands and their help. To add one, add a line here (and its answer's
# rendering in main); give it its own options through the parser build_parser returns.
COMMANDS: dict[str, str] = {
    "status": "node, pools, services, owners and reasons",
    "bgp": "BGP sessions",
    "bfd": "BFD sessions of the BGP peers",
    "members": "cluster members",
    "drain": "move every VIP off this node",
    "undrain": "let this node own VIPs again",
    "reload": "reload the configuration (like SIGHUP)",
    "restart": "stop for a restart (like SIGUSR2): BGP graceful restart, VIPs kept",
}


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--socket`` and ``--json``, on the main parser (with defaults) and on every subcommand.

    On a subcommand the defaults are SUPPRESSed, so that an option given before
    the subcommand is not reset by the subcommand's parser: ``lbd-ctl --json
    status`` and ``lbd-ctl status --json`` mean the same.
    """
    suppress = argparse.SUPPRESS
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET if defaults else suppress,
                        help=f"control socket (default {DEFAULT_SOCKET})")
    parser.add_argument("--json", action="store_true", default=False if defaults else suppress,
                        help="print the raw JSON answer")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The lbd-ctl parser and each subcommand's parser (to add options to one command)."""
    parser = argparse.ArgumentParser(prog="lbd-ctl", description="Query and steer a running lbd.")
    _global_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    commands = {}
    for name, help_text in COMMANDS.items():
        commands[name] = sub.add_parser(name, help=help_text, description=help_text)
        _global_options(commands[name], defaults=False)
    commands["reload"].add_argument("--allow-readdress", action="store_true",
                                    help="apply the config even if it re-addresses allocated services")
    return parser, commands


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse lbd-ctl's command line; no command means ``status``."""
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args.command = "status"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = args.command
    try:
        params = {"allow_readdress": True} if getattr(args, "allow_readdress", False) else {}
        result = request(args.socket, command, params)
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
        print(f"lbd-ctl: {command}: {printable(exc, newlines=True)}", file=sys.stderr)
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
    elif command == "bfd":
        print(render_bfd(result))
    elif command == "members":
        print(render_members(result))
    else:
        print(printable(result, newlines=True) if isinstance(result, str) else json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
