"""In-process plugin classes and helpers for the in-process plugin tests (importable as ``inprocess_support:<Class>``).

Plugins record what happened to them in ``self.journal`` (the test reads it from the plugin's instance in
``sup.registry[key].instance``); ``Gated`` plugins report to a shared ``Probe`` passed in their config.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor_tui.plugins.inprocess import HOOKS, PluginInterface


def write_inprocess(plugins_dir: Path, key: str, source: str, **fields: Any) -> Path:
    """plugins_dir/key with plugin.py (``source``) and a manifest naming ``plugin:Plugin`` (``fields`` on top)."""
    folder = plugins_dir / key
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.py").write_text(textwrap.dedent(source), encoding="utf-8")
    manifest = {"key": key, "module": "plugin:Plugin", **fields}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return folder


def inprocess_table(module: str, **config: Any) -> dict[str, Any]:
    """An ``[inprocess.<name>]`` table as the TOML loader produces it."""
    return {"enabled": True, "module": module, "config": config}


class Recorder(PluginInterface):
    """Records every hook call: ``journal`` holds (hook, first argument) pairs in delivery order."""

    name = "recorder"
    version = "1.0.0"

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.journal: list[tuple[str, Any]] = []
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if name in HOOKS:

            def record(*args: Any) -> None:
                self.journal.append((name, args[0] if args else None))
                self.calls.append((name, args))

            return record
        raise AttributeError(name)

    def get_status(self) -> dict[str, Any]:
        return {"hooks": len(self.journal)}


class Picky(PluginInterface):
    """Refuses any configuration without ``level`` in (low, high)."""

    def validate_configuration(self, config: Mapping[str, Any]) -> bool:
        if config.get("level") not in ("low", "high"):
            raise ValueError(f"level must be low or high, got {config.get('level')!r}")
        return True

    def get_status(self) -> dict[str, Any]:
        return {"level": self.config.get("level")}


class NeverReady(PluginInterface):
    """initialize() never finishes (until cancelled by the load timeout)."""

    async def initialize(self, supervisor: Any, config: Mapping[str, Any]) -> None:
        await asyncio.Event().wait()


class Faulty(Recorder):
    """A hook that raises (started), one that hangs (stopped) and one that blocks the event loop (health)."""

    def on_plugin_started(self, key: str, reason: str) -> None:
        self.journal.append(("on_plugin_started", key))
        raise RuntimeError(f"boom on {key}")

    async def on_plugin_stopped(self, key: str, reason: str) -> None:
        self.journal.append(("on_plugin_stopped", key))
        await asyncio.Event().wait()

    def on_plugin_unregistered(self, key: str, reason: str) -> None:
        self.journal.append(("on_plugin_unregistered", key))
        time.sleep(self.config.get("block_for", 1.0))  # the misbehaviour under test: a blocking call


class Probe:
    """Shared by Gated plugins: who is inside initialize() now, the most at once, and a gate per plugin."""

    def __init__(self) -> None:
        self.inside: set[str] = set()
        self.entered: list[str] = []
        self.most = 0
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())


class Gated(PluginInterface):
    """initialize() enters the probe and waits for its gate."""

    async def initialize(self, supervisor: Any, config: Mapping[str, Any]) -> None:
        probe: Probe = config["probe"]
        name = str(config["name"])
        probe.inside.add(name)
        probe.entered.append(name)
        probe.most = max(probe.most, len(probe.inside))
        try:
            await probe.gate(name).wait()
        finally:
            probe.inside.discard(name)
