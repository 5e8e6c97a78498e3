"""The ``lbd`` command: run the daemon, check a config, make a gossip key, import MetalLB's config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import lbd

if TYPE_CHECKING:
    from lbd.config.schema import Config

DEFAULT_CONFIG = Path("/etc/lbd.toml")


def load_or_report(path: Path, verdict: str) -> "Config | None":
    """The validated config, or None after printing every error and ``verdict`` to stderr."""
    from lbd.config import ConfigError, load_config
    from lbd.sources.registry import validate_source

    try:
        return load_config(path, validate_source=validate_source)
    except ConfigError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        print(f"{path}: {len(exc.errors)} error(s){verdict}", file=sys.stderr)
        return None


def cmd_check(path: Path) -> int:
    from lbd.pools import usable_count

    config = load_or_report(path, "")
    if config is None:
        return 1
    addresses = sum(usable_count(pool) for pool in config.pools)
    print(
        f"{path}: ok: node {config.node.name}, {len(config.pools)} pool(s) with {addresses} usable addresses, "
        f"{len(config.l2_advertisements)} L2 and {len(config.bgp_advertisements)} BGP advertisement(s), "
        f"{len(config.bgp_peers)} BGP peer(s), {len(config.route_exports)} route export(s), "
        f"{len(config.services)} static service(s), {len(config.sources)} source(s)"
    )
    return 0


def cmd_keygen() -> int:
    from lbd.cluster.crypto import generate_key

    print(generate_key())
    return 0


PLAN_EXIT = {"unchanged": 0, "invalid": 1, "changed": 2, "not_running": 3, "denied": 4}


def _socket_of(config: Path | None) -> Path:
    """The control socket named by ``config``'s [node] section (read leniently), or the default."""
    from lbd.ctl import DEFAULT_SOCKET

    if config is None:
        config = DEFAULT_CONFIG
    try:
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        node = tomllib.loads(config.read_text()).get("node", {})
        value = node.get("control_socket") if isinstance(node, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return DEFAULT_SOCKET
    if not isinstance(value, str) or not value:
        return DEFAULT_SOCKET
    path = Path(value)
    return path if path.is_absolute() else config.parent / path


def render_plan(result: dict) -> str:
    """``lbd plan``'s human output: one line per change, grouped."""
    lines: list[str] = []

    def section(title: str, items: list[str]) -> None:
        if items:
            lines.append(f"{title}:")
            lines.extend(f"  {item}" for item in items)

    section("services re-addressed (refused by reload without --allow-readdress)", [
        f"{r['service']}: {', '.join(r['old'])} -> {', '.join(r['new']) or 'no address (pending)'}"
        + (f" ({r['reason']})" if r.get("reason") else "") for r in result.get("readdressed", [])])
    section("services released (removed)", [f"{r['service']}: {', '.join(r['addresses'])}"
                                            for r in result.get("released", [])])
    section("addresses allocated", [f"{r['service']}: {', '.join(r['addresses'])}"
                                    for r in result.get("allocated", [])])
    section("services left pending", [f"{r['service']}: {r['reason']}" for r in result.get("pending", [])])
    section("VIPs added", result.get("vips_added", []))
    section("VIPs withdrawn", result.get("vips_withdrawn", []))
    section("VIPs this node starts announcing", result.get("announced_here", []))
    section("VIPs this node stops announcing", result.get("unannounced_here", []))
    section("owners moved", [f"{o['vip']}: {o['old'] or '-'} -> {o['new'] or '-'}"
                             for o in result.get("owners_moved", [])])
    section("BGP sessions opened", result.get("bgp_opened", []))
    section("BGP sessions closed", result.get("bgp_closed", []))
    section("BGP sessions reset (settings change)", result.get("bgp_reset", []))
    section("other", result.get("notes", []))
    head = f"{result.get('config')}: " + ("changes" if result.get("changed") else "no change")
    return "\n".join([head, *lines])


def cmd_plan(config: Path | None, socket: Path | None, as_json: bool) -> int:
    import json
    import os

    from lbd.control import ControlError, request

    target = socket or _socket_of(config)
    args = {"config": os.path.abspath(config)} if config is not None else {}
    try:
        result = request(target, "plan", args, timeout=120.0)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"lbd plan: lbd is not running (no control socket at {target})", file=sys.stderr)
        return PLAN_EXIT["not_running"]
    except PermissionError:
        print(f"lbd plan: permission denied on {target} (run as root or a member of its group)", file=sys.stderr)
        return PLAN_EXIT["denied"]
    except ControlError as exc:
        print(f"lbd plan: {exc}", file=sys.stderr)
        return PLAN_EXIT["not_running"]
    except OSError as exc:
        print(f"lbd plan: cannot talk to lbd on {target}: {exc}", file=sys.stderr)
        return PLAN_EXIT["not_running"]
    if as_json:
        print(json.dumps(result, indent=2))
    if not result.get("valid"):
        if not as_json:
            for error in result.get("errors", []):
                print(error, file=sys.stderr)
            print(f"{result.get('config')}: {len(result.get('errors', []))} error(s); nothing would be applied",
                  file=sys.stderr)
        return PLAN_EXIT["invalid"]
    if not as_json:
        print(render_plan(result))
    return PLAN_EXIT["changed"] if result.get("changed") else PLAN_EXIT["unchanged"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lbd", description="Bare-metal load-balancer daemon.")
    parser.add_argument("--config", "-c", type=Path, default=None, help=f"config file (default {DEFAULT_CONFIG})")
    parser.add_argument("--version", action="version", version=f"lbd {lbd.__version__}")
    sub = parser.add_subparsers(dest="command")
    for name, text in (("run", "run the daemon (the default)"), ("check", "validate the config and exit")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", "-c", type=Path, default=argparse.SUPPRESS, help="config file")
    sub.add_parser("keygen", help="print a new gossip encryption key (base64, 32 bytes)")
    p = sub.add_parser("plan", help="show what applying a config would change in the running daemon "
                                    "(exit 0: nothing, 2: changes, 1: invalid config, 3: lbd not running)")
    p.add_argument("--config", "-c", type=Path, default=argparse.SUPPRESS,
                   help="the config to plan (default: the file the running daemon was started with)")
    p.add_argument("--socket", type=Path, default=None, help="control socket (default: from the config)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    from lbd import import_cmd

    import_cmd.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "import":
        return import_cmd.run(args)
    if args.command == "plan":
        return cmd_plan(args.config, args.socket, args.json)
    if args.config is None:
        args.config = DEFAULT_CONFIG
    if args.command == "check":
        return cmd_check(args.config)
    if args.command == "keygen":
        return cmd_keygen()
    from lbd.daemon import run_daemon

    import gc

    # A config of 100,000 services is a million objects that all live on: the cyclic collector's
    # full walks while it grows find nothing (issue 9). run_daemon freezes them once loaded.
    gc.disable()
    try:
        config = load_or_report(args.config, "; not starting")
    finally:
        gc.enable()
    return 2 if config is None else run_daemon(config)


if __name__ == "__main__":
    sys.exit(main())
