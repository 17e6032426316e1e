"""The effective settings: the typed sections, where each value came from, and the paths derived from them."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor_tui.config.declaration import FIELDS, FIELDS_BY_NAME, Sections
from supervisor_tui.config.errors import ConfigError
from supervisor_tui.config.urls import masked_url


@dataclass
class Settings(Sections):
    """Typed access by section (``settings.gateway.timeout``), ``sources["gateway.timeout"]`` saying where the
    value came from ("default", a file, "env SUPERVISOR_TUI_...", "flag")."""

    sources: dict[str, str] = field(default_factory=lambda: {f.name: "default" for f in FIELDS})
    config_file: Path | None = None
    tables: dict[str, Any] = field(default_factory=dict)  # free-form sections: [keys], [inprocess.*]
    base_dir: Path = field(default_factory=Path.cwd)

    def set(self, name: str, value: object, source: str) -> None:
        """Parse and set one "section.key"; raises ConfigError (the value masked) when it is not allowed."""
        f = FIELDS_BY_NAME.get(name)
        if f is None:
            raise ConfigError(name, value, "a known setting (see `supervisor-tui config`)", source)
        try:
            parsed = f.parse(value)
        except (ValueError, TypeError):
            if f.secret:
                shown: object = "***"
            elif f.mask is not None:
                shown = f.mask(str(value))
            else:
                shown = masked_url(value) if isinstance(value, str) else value
            raise ConfigError(name, shown, f.allowed, source) from None
        setattr(self, f.section, dataclasses.replace(getattr(self, f.section), **{f.key: parsed}))
        self.sources[name] = source

    # What is derived from settings: the plugin port range, paths resolved against base_dir.
    @property
    def port_range(self) -> tuple[int, int]:
        return self.plugins.port_range_start, self.plugins.port_range_end

    @property
    def plugins_dir(self) -> Path:
        return self._path(self.plugins.dir)

    @property
    def data_dir(self) -> Path:
        return self._path(self.data.dir)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "supervisor.db"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    def _path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (self.base_dir / p).resolve()
