"""The supervisor's parts built on their own, as the Supervisor builds them: a real event bus, log hub and SQLite
store in a tmp dir (``open_parts``), and a folder plugin factory over them (``folder_factory``). Used by
test_supervisor_parts.py and test_plugin_kinds.py."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import free_port_block

from supervisor_tui.core.events import EventBus
from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.plugin_state import PluginStateStore
from supervisor_tui.core.store import Store
from supervisor_tui.core.supervisor import owner_id
from supervisor_tui.core.supervisor.folder_plugins import FolderPluginFactory, ProcessDefaults, SupervisorUrl
from supervisor_tui.core.supervisor.memory import PluginMemory
from supervisor_tui.core.supervisor.process_tracking import ProcessTracking
from supervisor_tui.core.supervisor.registry import PluginRegistry
from supervisor_tui.core.supervisor.reports import PluginReports
from supervisor_tui.plugins.inprocess import InProcessContext
from supervisor_tui.plugins.inprocess_settings import InProcessSettings
from supervisor_tui.plugins.ports import PortAllocator


@dataclass
class Parts:
    bus: EventBus
    logs: LogHub
    plugin_state: PluginStateStore
    memory: PluginMemory
    tracking: ProcessTracking
    registry: PluginRegistry
    heard: list[tuple[str, str]]  # what PluginReports told its on_state, in order
    reports: PluginReports


@contextlib.asynccontextmanager
async def open_parts(tmp_path: Path) -> AsyncIterator[Parts]:
    bus = EventBus()
    logs = LogHub(bus, tmp_path / "logs")
    store = Store(tmp_path / "supervisor.db")
    await store.open()
    plugin_state = PluginStateStore(store)
    memory = PluginMemory(plugin_state, logs)
    await memory.load()
    tracking = ProcessTracking(plugin_state, logs, owner_id(tmp_path), use_cgroups=False)
    heard: list[tuple[str, str]] = []
    reports = PluginReports(bus, logs, lambda key, new: heard.append((key, new)))
    try:
        yield Parts(bus, logs, plugin_state, memory, tracking, PluginRegistry(bus), heard, reports)
    finally:
        await store.close()
        logs.close()


def folder_factory(
    parts: Parts, tmp_path: Path, reports: PluginReports, tables: dict[str, Any] | None = None
) -> FolderPluginFactory:
    """A factory of folder plugins into ``parts.registry`` that report to ``reports`` (ports from a free block;
    ``tables``: the [inprocess.*] sections). Process plugins need its ``http`` set first."""
    start = free_port_block()
    return FolderPluginFactory(
        parts.registry,
        parts.memory,
        PortAllocator(start, start + 99, "127.0.0.1"),
        parts.plugin_state,
        parts.tracking,
        reports,
        parts.logs,
        ProcessDefaults(owner_id(tmp_path), SupervisorUrl("http://127.0.0.1:1").current, 5.0, 1024),
        InProcessContext(
            supervisor=None,  # handed to the plugins' initialize(): the test plugins never look at it
            logs=parts.logs,
            bus=parts.bus,
            settings=InProcessSettings(),
            on_state=reports.record_state_change,
            on_health=reports.publish_health,
            default_timeout=5.0,
            default_max_body=1024,
            base_dir=tmp_path,
            tables=tables if tables is not None else {},
        ),
    )
