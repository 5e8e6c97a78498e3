"""Finding source plugins (entry-point group ``lbd.sources``) and validating their config."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Mapping

import structlog

from lbd.config.read import did_you_mean
from lbd.config.schema import SourceConfig
from lbd.sources.base import Source

log = structlog.get_logger(__name__)

GROUP = "lbd.sources"


def discover() -> dict[str, type[Source]]:
    """Every installed source class, by type name.

    A plugin that fails to import, or is not a ``Source`` subclass, is logged
    and left out (one broken package must not take the others down); its type
    then shows up as unknown in config validation.
    """
    found: dict[str, type[Source]] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found:
            log.warning("source_plugin_duplicate", type=ep.name, value=ep.value)
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a third-party import can raise anything
            log.error("source_plugin_unloadable", type=ep.name, value=ep.value, error=repr(exc))
            continue
        if not (isinstance(cls, type) and issubclass(cls, Source)):
            log.error("source_plugin_not_a_source", type=ep.name, value=ep.value)
            continue
        found[ep.name] = cls
    return found


def validate_source(cfg: SourceConfig, available: Mapping[str, type[Source]] | None = None) -> list[str]:
    """Messages for one ``[[source]]`` table, each ``source "NAME": <key>: <what>``.

    This is the callback the config loader takes; it adds the file name.
    """
    where = f'source "{cfg.name}"'
    plugins = discover() if available is None else available
    cls = plugins.get(cfg.type)
    if cls is None:
        known = ", ".join(f'"{t}"' for t in sorted(plugins)) or "none installed"
        return [f'{where}: type: unknown source type "{cfg.type}"{did_you_mean(cfg.type, plugins)}'
                f" (installed: {known})"]
    try:
        messages = cls.validate(cfg.options)
    except Exception as exc:  # the plugin's bug must read as a config problem, not a crash
        return [f"{where}: the {cfg.type} plugin failed validating its options: {exc!r}"]
    if not isinstance(messages, list) or not all(isinstance(m, str) for m in messages):
        return [f"{where}: the {cfg.type} plugin returned {type(messages).__name__} from validate(), not a list of str"]
    return [f"{where}: {m}" for m in messages]
