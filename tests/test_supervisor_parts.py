"""The supervisor's parts built on their own, from what their constructors ask for (core/supervisor/): a real
event bus, log hub, SQLite store and plugins, no Supervisor. And, inside a real Supervisor, no part holds the
Supervisor itself, and external plugins' comings and goings leave no reference cycle behind."""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_test_settings
from inprocess_support import write_inprocess
from supervisor_parts_support import Parts, folder_factory, open_parts

from supervisor_tui.core.events import PluginRegistered, PluginStateChanged, PluginUnregistered
from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.core.supervisor.external_plugins import ExternalPlugins
from supervisor_tui.core.supervisor.orchestration import Orchestrator
from supervisor_tui.core.supervisor.reports import PluginReports
from supervisor_tui.plugins.external import ExternalRegistrations
from supervisor_tui.plugins.manifest import discover, start_order
from supervisor_tui.plugins.model import PluginActionError, PluginNotFound

QUIET = """
from supervisor_tui.plugins.inprocess import PluginInterface


class Plugin(PluginInterface):
    pass
"""


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    async with open_parts(tmp_path) as opened:
        yield opened


def registration(key: str, **fields: Any) -> dict[str, Any]:
    return {"key": key, "name": key.title(), "version": "1.0", "host": "127.0.0.1", "port": 9, **fields}


async def test_external_plugins_register_go_lost_and_leave_without_a_supervisor(parts: Parts) -> None:
    parser = ExternalRegistrations(
        allowlist=("127.0.0.1",), default_interval=5.0, default_timeout=5.0, default_max_body=1024
    )
    external = ExternalPlugins(parts.registry, parser, parts.reports, parts.bus)
    with parts.bus.subscribe() as sub:
        snap = external.register(registration("billing"), None, "http", "", "", "")
        assert snap.state == "RUNNING" and parts.registry["billing"].kind == "external"
        assert external.sweep(now=time.time()) == []  # heard from just now
        assert external.sweep(now=1e12) == ["billing"]
        assert parts.registry.require("billing").snapshot().state == "LOST"
        assert external.heartbeat("billing").state == "RUNNING"
        external.unregister("billing")
        events = sub.get_nowait()
    assert "billing" not in parts.registry
    with pytest.raises(PluginNotFound):
        external.heartbeat("billing")
    assert parts.heard == [("billing", "RUNNING"), ("billing", "LOST"), ("billing", "RUNNING"), ("billing", "STOPPED")]
    kinds = [type(e) for e in events if isinstance(e, PluginRegistered | PluginUnregistered | PluginStateChanged)]
    assert kinds == [PluginRegistered] + [PluginStateChanged] * 4 + [PluginUnregistered]


async def test_the_orchestrator_starts_dependencies_first_and_stops_them_last_without_a_supervisor(
    parts: Parts, tmp_path: Path
) -> None:
    plugins_dir = tmp_path / "plugins"
    write_inprocess(plugins_dir, "db", QUIET, autostart=False)
    write_inprocess(plugins_dir, "app", QUIET, autostart=False, depends_on=["db"])
    found = discover(plugins_dir)
    assert not found.invalid
    orchestrator = Orchestrator(parts.registry, parts.memory, parts.tracking, parts.logs)
    reports = PluginReports(parts.bus, parts.logs, orchestrator.state_changed)
    factory = folder_factory(parts, tmp_path, reports)
    for key in start_order(found.manifests):
        factory.add(key, found.manifests[key])
    with pytest.raises(PluginActionError, match="shutting down"):
        await orchestrator.ensure_running("app", "not open yet")  # starts are taken once accepting
    orchestrator.accepting = True
    with parts.bus.subscribe(["plugin.state"]) as sub:
        await orchestrator.ensure_running("app", "asked by the test")
        assert {k: p.snapshot().state for k, p in parts.registry.items()} == {"db": "RUNNING", "app": "RUNNING"}
        await orchestrator.stop_all("the test is over")
        changes = [(e.key, e.to_state) for e in sub.get_nowait() if isinstance(e, PluginStateChanged)]
    assert changes.index(("db", "RUNNING")) < changes.index(("app", "STARTING"))
    assert changes.index(("app", "STOPPED")) < changes.index(("db", "STOPPING"))
    await orchestrator.cancel_starts()
    with pytest.raises(PluginActionError, match="shutting down"):
        await orchestrator.ensure_running("app", "closed")


def _held(part: object) -> list[object]:
    """What ``part`` holds in its attributes, and the objects of its bound-method attributes (callbacks)."""
    values = list(vars(part).values())
    return values + [getattr(v, "__self__", None) for v in values]


async def test_no_part_of_a_supervisor_holds_the_supervisor(tmp_path: Path) -> None:
    async with Supervisor(make_test_settings(tmp_path)) as sup:
        parts = {
            "orchestrator": sup.orchestrator,
            "reports": sup.reports,
            "folder_plugins": sup.folder_plugins,
            "folder_reload": sup.folder_reload,
            "folder_actions": sup.folder_actions,
            "external_plugins": sup.external_plugins,
            "tracking": sup.tracking,
            "memory": sup.memory,
            "registry": sup.registry,
        }
        holding = sorted(name for name, part in parts.items() if any(v is sup for v in _held(part)))
        assert holding == []


async def test_external_plugins_coming_and_going_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    async with Supervisor(make_test_settings(tmp_path)) as sup:
        await sup.register_external(registration("warmup"))  # anything made once is made now
        await sup.unregister_external("warmup")
        gc.collect()
        gc.disable()
        try:
            for i in range(50):
                await sup.register_external(registration(f"p{i}"))
                sup.heartbeat_external(f"p{i}")
                await sup.unregister_external(f"p{i}")
            leaked = gc.collect()
        finally:
            gc.enable()
        assert leaked < 50, f"{leaked} objects of 50 external plugins were only freed by the garbage collector"
