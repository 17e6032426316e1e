"""The ``[inprocess]`` settings section: its own keys (timeouts, batch size...) and one sub-table per in-process plugin.

Older configurations call the section ``[extensions]`` and the shipped plugins ``supervisor_tui.extensions.*``;
both are still read, as deprecated aliases: ``InProcessSection.read`` merges ``[extensions]`` under ``[inprocess]``
(a key in both: ``[inprocess]`` wins), rewrites the old module paths to ``supervisor_tui.inprocess_plugins.*``, and
lists what it translated in ``deprecated`` for the one warning line the host logs at startup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from supervisor_tui.config import parse_duration

SECTION = "inprocess"
DEPRECATED_SECTION = "extensions"
PACKAGE = "supervisor_tui.inprocess_plugins."
DEPRECATED_PACKAGE = "supervisor_tui.extensions."


@dataclass(frozen=True)
class InProcessSettings:
    """The ``[inprocess]`` table's own keys (everything else in it is one in-process plugin per sub-table)."""

    load_timeout: float = 30.0
    shutdown_timeout: float = 15.0
    hook_timeout: float = 10.0
    block_threshold: float = 0.5  # the event loop stalled this long inside plugin code is reported
    batch_size: int = 3
    hook_queue: int = 1000
    status_interval: float = 10.0

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> tuple[InProcessSettings, list[str]]:
        """Parse the scalar keys of ``[inprocess]``; bad values are reported and replaced by defaults."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for name in ("load_timeout", "shutdown_timeout", "hook_timeout", "block_threshold", "status_interval"):
            if name in table:
                try:
                    seconds = parse_duration(table[name])
                    if seconds <= 0:
                        raise ValueError
                    values[name] = seconds
                except ValueError:
                    problems.append(f"{SECTION}.{name}: expected a positive duration like '30s', got {table[name]!r}")
        for name in ("batch_size", "hook_queue"):
            if name in table:
                value = table[name]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    problems.append(f"{SECTION}.{name}: expected a positive integer, got {value!r}")
                else:
                    values[name] = value
        return cls(**values), problems


@dataclass(frozen=True)
class InProcessSection:
    """The ``[inprocess]`` section as the supervisor uses it, the deprecated names already translated."""

    tables: dict[str, Any] = field(default_factory=dict)  # scalar keys and [inprocess.<name>] sub-tables
    settings: InProcessSettings = field(default_factory=InProcessSettings)
    problems: list[str] = field(default_factory=list)  # bad values (logged as errors; defaults used instead)
    deprecated: list[str] = field(default_factory=list)  # old names in use, "old is now new"

    @classmethod
    def read(cls, tables: Mapping[str, Any]) -> InProcessSection:
        """The section from the settings' free-form tables (``Settings.tables``)."""
        deprecated: list[str] = []
        merged: dict[str, Any] = {}
        old = tables.get(DEPRECATED_SECTION)
        if isinstance(old, Mapping):
            merged.update(old)
            deprecated.append(f"[{DEPRECATED_SECTION}] is now [{SECTION}]")
        new = tables.get(SECTION)
        if isinstance(new, Mapping):
            merged.update(new)
        for name, table in merged.items():
            module = table.get("module") if isinstance(table, Mapping) else None
            if isinstance(module, str) and module.startswith(DEPRECATED_PACKAGE):
                renamed = PACKAGE + module.removeprefix(DEPRECATED_PACKAGE)
                merged[name] = {**table, "module": renamed}
                deprecated.append(f"module {module} is now {renamed}")
        settings, problems = InProcessSettings.from_table(merged)
        return cls(merged, settings, problems, deprecated)

    def deprecation_warning(self) -> str:
        """The one line that says which deprecated names the settings use ("" when none)."""
        if not self.deprecated:
            return ""
        return "settings: deprecated names, still read for now: " + "; ".join(self.deprecated)
