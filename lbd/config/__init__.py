"""Configuration: ``/etc/lbd.toml`` -> the typed, validated ``Config``.

This is the front door callers use (``from lbd.config import parse_config``).
The modules behind it:

- ``load``: the whole document (sections, cross-checks, ``ConfigError``);
- ``read``: the typed table readers every section is built with;
- ``schema``: the typed ``Config`` and its sections (plain data);
- ``bgp``, ``bfd``, ``services``, ``health``, ``forward``, ``hooks``: one section each.
"""

from lbd.config.load import (
    DEFAULT_PATH,
    STATIC_PREFIX,
    ConfigError,
    check_services,
    config_from_document,
    load_config,
    parse_config,
    parse_document,
    parse_service_table,
    parse_services_document,
)

__all__ = [
    "ConfigError",
    "DEFAULT_PATH",
    "STATIC_PREFIX",
    "load_config",
    "parse_config",
    "parse_document",
    "config_from_document",
    "parse_service_table",
    "parse_services_document",
    "check_services",
]
