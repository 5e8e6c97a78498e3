"""The configuration in live mode: the file plus the cluster's MetalLB resources, validated as one.

With a kubernetes source set to ``metallb_resources = true``, the configuration the daemon runs
is the file's document merged with what that source read from the cluster
(``lbd.metallb.live.merge``: the file's entries, then the cluster's; a name in both is an
error naming both origins). The merged document goes through ``config_from_document``,
the code path of ``lbd check`` and of every reload, so a cluster change is held to exactly
the rules a file is. The file must also pass alone, as ``lbd check`` and a start check it.
Without such a source this is ``parse_config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from lbd.config import ConfigError, config_from_document, parse_document
from lbd.config.load import SourceValidator
from lbd.config.schema import Config
from lbd.metallb.live import ClusterDocument, annotate, merge


def live_sources(doc: Any) -> set[str]:
    """The names of the file's sources that read MetalLB's resources (``metallb_resources = true``)."""
    sources = doc.get("source") if isinstance(doc, dict) else None
    if not isinstance(sources, list):
        return set()
    return {str(s.get("name")) for s in sources if isinstance(s, dict) and s.get("metallb_resources") is True}


def merged_config(text: str, path: Path, clusters: Sequence[ClusterDocument],
                  validate_source: SourceValidator | None = None) -> Config:
    """The file's TOML ``text`` with the cluster documents of the sources it still has in live
    mode (a source removed or switched off takes its resources with it), validated as one."""
    path = Path(path)
    doc = parse_document(text, path)
    wanted = live_sources(doc)
    used = [c for c in clusters if c.source in wanted]
    # The file alone must pass, always: `lbd check` and a start check it without the cluster,
    # so a file that leans on a cluster pool would pass a reload and then fail the next start.
    alone = config_from_document(doc, path, validate_source)
    if not used:
        return alone
    merged, clashes = merge(doc, used, str(path))
    try:
        config = config_from_document(merged, path, validate_source)
    except ConfigError as exc:
        raise ConfigError(annotate([*clashes, *exc.errors], used)) from None
    if clashes:
        raise ConfigError(annotate(clashes, used))
    return config
