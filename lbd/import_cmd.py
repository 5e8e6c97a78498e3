"""``lbd import metallb PATH...``: MetalLB YAML in, a commented lbd.toml out.

Exit status (the same with and without ``--check``):

* 0: everything converted and the result passes ``lbd check``;
* 1: converted, with warnings (something had no lbd equivalent);
* 2: the input cannot be read, holds no MetalLB configuration, or the result
  would not pass ``lbd check`` (each problem on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

EXIT_OK, EXIT_WARNINGS, EXIT_ERROR = 0, 1, 2
SUFFIXES = (".yaml", ".yml", ".json")


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("import", help="convert another load balancer's configuration to lbd.toml")
    kinds = p.add_subparsers(dest="import_kind", required=True)
    m = kinds.add_parser(
        "metallb", help="MetalLB resources (YAML, as kubectl get -o yaml or Helm print them) to lbd.toml on stdout",
        description="Convert MetalLB's IPAddressPool, L2Advertisement, BGPAdvertisement, BGPPeer, BFDProfile and "
                    "Community resources, or its legacy ConfigMap, into a commented lbd.toml on stdout. Exit "
                    "status: 0 clean, 1 converted with warnings, 2 unreadable input or a result lbd check rejects.")
    m.add_argument("paths", nargs="+", metavar="PATH", help="YAML file, directory (its *.yaml, *.yml, *.json), or - for stdin")
    m.add_argument("--check", action="store_true", help="only report warnings and problems; print no configuration")
    m.add_argument("--namespace", help="MetalLB's namespace (default: the one most resources name, else metallb-system)")


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None,
        stderr: TextIO | None = None) -> int:
    from lbd.config import ConfigError, parse_config
    from lbd.metallb.convert import convert, render
    from lbd.metallb.load import load_documents
    from lbd.metallb.model import MetalLBImportError, Resource
    from lbd.sources.registry import validate_source

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    resources: list[Resource] = []
    try:
        for name in args.paths:
            for label, text in _read(name, stdin):
                resources.extend(load_documents(text, label))
    except (OSError, UnicodeDecodeError, MetalLBImportError) as exc:
        print(f"lbd import metallb: {_describe(exc)}", file=stderr)
        return EXIT_ERROR
    conversion = convert(resources, namespace=args.namespace)
    text = render(conversion)
    for warning in conversion.warnings:
        print(f"warning: {warning}", file=stderr)
    if conversion.skipped:
        print(f"note: {conversion.skipped} object(s) that are not MetalLB configuration were skipped "
              "(listed at the top of the output)", file=stderr)
    status = EXIT_WARNINGS if conversion.warnings else EXIT_OK
    if conversion.converted == 0:
        print("lbd import metallb: no MetalLB configuration found in the input", file=stderr)
        status = EXIT_ERROR
    try:
        parse_config(text, Path("<imported lbd.toml>"), validate_source)
    except ConfigError as exc:
        print("lbd import metallb: the result would not pass lbd check:", file=stderr)
        for error in exc.errors:
            print(f"  {error}", file=stderr)
        status = EXIT_ERROR
    if not args.check:
        stdout.write(text)
    print(f"lbd import metallb: {conversion.converted} resource(s) converted, {len(conversion.warnings)} "
          f"warning(s), {conversion.skipped} skipped", file=stderr)
    return status


def _read(name: str, stdin: TextIO) -> list[tuple[str, str]]:
    if name == "-":
        return [("<stdin>", stdin.read())]
    path = Path(name)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        return [(str(p), p.read_text(encoding="utf-8")) for p in files]
    return [(str(path), path.read_text(encoding="utf-8"))]


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)
