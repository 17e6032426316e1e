"""``audit-log``: one JSON line per operator action and per state transition, appended to ``data/audit.jsonl``.

Operator actions say who, what and from where: ``{"type": "action", "action": "stop", "key": "echo",
"origin": "ctl", "actor": "alice (127.0.0.1)", "ok": true, ...}`` (origins: ``tui``, ``api``, ``ctl``,
``reload``). Transitions: ``{"type": "plugin.state", "key": ..., "from": ..., "to": ..., "reason": ...}``
and ``{"type": "console.state", "console_id": ..., ...}``. The file is rotated at ``max_bytes`` (10 MiB)
keeping ``backups`` (5) old files (``audit.jsonl.1`` is the newest of them).

    [inprocess.audit-log]
    module = "supervisor_tui.inprocess_plugins.audit_log:AuditLog"
    config = { path = "data/audit.jsonl", max_bytes = "10MiB", backups = 5 }
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor_tui.config import parse_size
from supervisor_tui.core.rotating_file import RotatingFile
from supervisor_tui.plugins.inprocess import PluginInterface


class AuditLog(PluginInterface):
    """Appends operator actions and state transitions to a rotated JSON-lines file."""

    name = "audit-log"
    version = "1.0.0"
    description = "Operator actions (who/what/where) and state transitions as JSON lines in data/audit.jsonl."

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.path = Path("audit.jsonl")
        self.max_bytes = 10 * 1024**2
        self.backups = 5
        self.lines = 0
        self._file: RotatingFile | None = None

    def validate_configuration(self, config: Mapping[str, Any]) -> bool:
        if "path" in config and not isinstance(config["path"], str):
            raise ValueError("config.path must be a file path")
        if "max_bytes" in config:
            parse_size(config["max_bytes"])
        backups = config.get("backups", 5)
        if isinstance(backups, bool) or not isinstance(backups, int) or backups < 0:
            raise ValueError(f"config.backups must be a non-negative integer, got {backups!r}")
        return True

    async def initialize(self, supervisor: Any, config: Mapping[str, Any]) -> None:
        self.supervisor = supervisor
        data_dir = Path(supervisor.settings.data_dir)
        path = Path(str(config.get("path", ""))) if config.get("path") else data_dir / "audit.jsonl"
        self.path = path if path.is_absolute() else (Path(supervisor.settings.base_dir) / path).resolve()
        self.max_bytes = parse_size(config.get("max_bytes", self.max_bytes))
        self.backups = int(config.get("backups", self.backups))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Mode 0600 like everything in the data dir (who did what is nobody else's business).
        self._file = RotatingFile(self.path, self.max_bytes, self.backups)

    async def shutdown(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def get_status(self) -> dict[str, Any]:
        return {"path": str(self.path), "lines": self.lines}

    # -- hooks -------------------------------------------------------------------------------------------
    def on_operator_action(self, action: Mapping[str, Any]) -> None:
        self._write({"type": "action", **{k: v for k, v in action.items() if k != "topic"}})

    def on_plugin_state_changed(self, key: str, from_state: str, to_state: str, reason: str) -> None:
        self._write({"type": "plugin.state", "key": key, "from": from_state, "to": to_state, "reason": reason})

    def on_console_state_changed(self, console_id: str, from_state: str | None, to_state: str, reason: str) -> None:
        self._write(
            {"type": "console.state", "console_id": console_id, "from": from_state, "to": to_state, "reason": reason}
        )

    # -- the file ----------------------------------------------------------------------------------------
    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        record.setdefault("ts", time.time())
        self._file.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        self.lines += 1
