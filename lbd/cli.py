"""The ``lbd`` command: run the daemon, check a config, make a gossip key, import MetalLB's config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import lbd

if TYPE_CHECKING:
    from lbd.model import Config

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lbd", description="Bare-metal load-balancer daemon.")
    parser.add_argument("--config", "-c", type=Path, default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    parser.add_argument("--version", action="version", version=f"lbd {lbd.__version__}")
    sub = parser.add_subparsers(dest="command")
    for name, text in (("run", "run the daemon (the default)"), ("check", "validate the config and exit")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", "-c", type=Path, default=argparse.SUPPRESS, help="config file")
    sub.add_parser("keygen", help="print a new gossip encryption key (base64, 32 bytes)")
    from lbd import import_cmd

    import_cmd.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "import":
        return import_cmd.run(args)
    if args.command == "check":
        return cmd_check(args.config)
    if args.command == "keygen":
        return cmd_keygen()
    from lbd.daemon import run_daemon

    config = load_or_report(args.config, "; not starting")
    return 2 if config is None else run_daemon(config)


if __name__ == "__main__":
    sys.exit(main())
