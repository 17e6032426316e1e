"""Settings: defaults < supervisor.toml (or --config) < env SUPERVISOR_TUI_* < CLI flags, typed by section.

- ``declaration``: every key, once (one frozen dataclass per TOML section; type, default, doc, secret).
- ``parse``: the value parsers (durations, sizes, hosts, URLs...); ``urls``: local and masked URLs.
- ``settings``: ``Settings``, the typed sections plus where each value came from.
- ``load``: the layers applied in order; ``validate``: the rules between keys.
- ``render``: what ``supervisor-tui config`` prints, secrets masked, and the README's table.

A bad value raises ``ConfigError`` naming the key, the value and what is allowed (the CLI prints one line, exit 2).
"""

from __future__ import annotations

from supervisor_tui.config.declaration import ENV_PREFIX, FIELDS, FIELDS_BY_NAME, Field
from supervisor_tui.config.errors import ConfigError
from supervisor_tui.config.load import DEFAULT_CONFIG_FILE, load_settings
from supervisor_tui.config.parse import parse_duration, parse_size
from supervisor_tui.config.settings import Settings
from supervisor_tui.config.urls import local_url, masked_url
from supervisor_tui.config.validate import WILDCARD_HOSTS

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "ENV_PREFIX",
    "FIELDS",
    "FIELDS_BY_NAME",
    "WILDCARD_HOSTS",
    "ConfigError",
    "Field",
    "Settings",
    "load_settings",
    "local_url",
    "masked_url",
    "parse_duration",
    "parse_size",
]
