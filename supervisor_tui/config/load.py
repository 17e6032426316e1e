"""Loading: defaults < supervisor.toml (or --config) < env SUPERVISOR_TUI_* < flags, then the rules between keys."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from supervisor_tui.config.declaration import FIELDS, SECTION_NAMES
from supervisor_tui.config.errors import ConfigError
from supervisor_tui.config.settings import Settings
from supervisor_tui.config.validate import validate

DEFAULT_CONFIG_FILE = "supervisor.toml"


def load_settings(
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    base_dir: Path | None = None,
) -> Settings:
    """Build Settings from defaults, the TOML file, the environment and flag overrides (in that order).

    ``config_path`` None means ./supervisor.toml when it exists. ``overrides`` maps "section.key" to a value.
    """
    env = os.environ if env is None else env
    settings = Settings(base_dir=base_dir or Path.cwd())
    path: Path | None
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError("--config", str(config_path), "an existing TOML file")
    else:
        candidate = settings.base_dir / DEFAULT_CONFIG_FILE
        path = candidate if candidate.is_file() else None
    if path is not None:
        _apply_file(settings, path)
    for f in FIELDS:
        if f.env in env:
            settings.set(f.name, env[f.env], f"env {f.env}")
    for name, value in (overrides or {}).items():
        if value is not None:
            settings.set(name, value, "flag")
    validate(settings)
    return settings


def _apply_file(settings: Settings, path: Path) -> None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", str(path), f"a readable TOML file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", str(path), f"valid TOML ({exc})") from None
    settings.config_file = path
    for section, table in data.items():
        if section not in SECTION_NAMES:
            settings.tables[section] = table
            continue
        if not isinstance(table, dict):
            raise ConfigError(section, table, "a [section] table", str(path))
        for key, value in table.items():
            settings.set(f"{section}.{key}", value, str(path))
