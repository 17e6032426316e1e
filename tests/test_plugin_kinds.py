"""Every kind of plugin answers what the supervisor asks of it (core/supervisor/managed.py's ManagedPlugin and
FolderPlugin): real ReplicatedRunners and ProcessRunners from manifests in a tmp dir, in-process plugins from a
folder and from settings, external plugins and peers. The supervisor never asks which class a plugin is, so these
answers are what keeps start_all, stop_all, reload, scale, set_config and the metrics loop right."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, FIXTURE_PLUGINS, free_port_block, make_test_settings
from inprocess_support import write_inprocess
from supervisor_parts_support import Parts, folder_factory, open_parts

from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.core.supervisor.external_plugins import ExternalPlugins
from supervisor_tui.core.supervisor.folder_plugins import FolderPluginFactory
from supervisor_tui.core.supervisor.managed import loaded, rejected
from supervisor_tui.core.supervisor.memory import PluginMemory
from supervisor_tui.core.supervisor.orchestration import Orchestrator
from supervisor_tui.core.supervisor.registry import PluginRegistry
from supervisor_tui.core.supervisor.reports import PluginReports
from supervisor_tui.plugins.external import ExternalPlugin, ExternalRegistrations
from supervisor_tui.plugins.health import make_client
from supervisor_tui.plugins.inprocess import InProcessContext, InProcessPlugin
from supervisor_tui.plugins.manifest import Manifest, ManifestError, parse_manifest
from supervisor_tui.plugins.model import PluginActionError, PluginState
from supervisor_tui.plugins.peers import Peer, PeerPlugin
from supervisor_tui.plugins.process import ProcessRunner

QUIET = """
from supervisor_tui.plugins.inprocess import PluginInterface


class Plugin(PluginInterface):
    pass
"""


@dataclass
class Kinds:
    """Folder plugins made by a factory into a registry, with an orchestrator over it, as the Supervisor builds them."""

    root: Path
    parts: Parts
    factory: FolderPluginFactory
    orchestrator: Orchestrator
    tables: dict[str, Any]

    @property
    def registry(self) -> PluginRegistry:
        return self.parts.registry

    @property
    def memory(self) -> PluginMemory:
        return self.parts.memory

    @property
    def inprocess(self) -> InProcessContext:
        return self.factory.inprocess

    def manifest(self, key: str, **fields: Any) -> Manifest:
        """A process plugin's manifest (the sleeper fixture) written under plugins/ and parsed."""
        folder = self.root / "plugins" / key
        folder.mkdir(parents=True, exist_ok=True)
        raw = {"key": key, "command": [sys.executable, str(FIXTURE_PLUGINS / "sleeper.py")], **FAST, **fields}
        (folder / "manifest.json").write_text(json.dumps(raw), encoding="utf-8")
        return parse_manifest(raw, folder / "manifest.json")

    def inprocess_folder(self, key: str, source: str = QUIET, **fields: Any) -> Manifest:
        folder = write_inprocess(self.root / "plugins", key, source, **fields)
        raw = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        return parse_manifest(raw, folder / "manifest.json")

    def external(self, key: str) -> ExternalPlugin:
        parser = ExternalRegistrations(("127.0.0.1",), default_interval=5.0, default_timeout=5.0, default_max_body=1)
        return parser.parse({"key": key, "host": "127.0.0.1", "port": 9})


@pytest.fixture
async def kinds(tmp_path: Path) -> AsyncIterator[Kinds]:
    async with open_parts(tmp_path) as parts:
        orchestrator = Orchestrator(parts.registry, parts.memory, parts.tracking, parts.logs)
        tables: dict[str, Any] = {}
        factory = folder_factory(
            parts, tmp_path, PluginReports(parts.bus, parts.logs, orchestrator.state_changed), tables
        )
        factory.http = make_client()
        orchestrator.accepting = True
        try:
            yield Kinds(tmp_path, parts, factory, orchestrator, tables)
        finally:
            await orchestrator.stop_all("the test is over")
            await factory.http.aclose()


async def test_what_autostarts_is_the_operators_word_then_the_plugins_own_never_an_external_or_invalid_one(
    kinds: Kinds,
) -> None:
    on = kinds.factory.add("on", kinds.manifest("on"))
    off = kinds.factory.add("off", kinds.manifest("off", autostart=False))
    invalid = kinds.factory.add("broken", None, ManifestError("plugins/broken/manifest.json", "command", "missing"))
    kinds.tables["quiet"] = {"enabled": False}  # [inprocess.quiet] enabled = false
    disabled = kinds.factory.add("quiet", kinds.inprocess_folder("quiet"))
    from_settings = InProcessPlugin("audit", kinds.inprocess, module="audit:Plugin")
    external = kinds.external("billing")
    should = kinds.orchestrator.should_autostart
    assert [should(p) for p in (on, off, invalid, disabled, from_settings, external)] == [
        True,
        False,
        False,
        False,
        True,
        False,
    ]
    for key in ("off", "broken", "quiet", "audit", "billing"):
        await kinds.memory.set_desired(key, "running")
    await kinds.memory.set_desired("on", "stopped")
    # The operator's word wins, except for what cannot start here: an INVALID plugin and an external one.
    assert [should(p) for p in (on, off, invalid, disabled, from_settings, external)] == [
        False,
        True,
        False,
        True,
        True,
        False,
    ]
    assert [rejected(p) for p in (on, invalid, disabled, from_settings, external)] == [False, True, False, False, False]


async def test_tasks_stop_order_and_host_loads_are_what_each_plugin_says(kinds: Kinds) -> None:
    server = kinds.factory.add("server", kinds.manifest("server"))
    task = kinds.factory.add("seed", kinds.manifest("seed", oneshot=True))
    folder = kinds.factory.add("stats", kinds.inprocess_folder("stats", autostart=False))
    from_settings = InProcessPlugin("audit", kinds.inprocess, module="audit:Plugin")
    external, peer = kinds.external("billing"), PeerPlugin(kinds.external("shared"), {})
    everyone = (server, task, folder, from_settings, external, peer)
    assert [p.is_task for p in everyone] == [False, True, False, False, False, False]
    assert [p.stops_last for p in everyone] == [False, False, False, True, False, False]
    assert [p.tried_by_host for p in everyone] == [False] * 6
    await folder.start("asked by the test")
    assert await folder.wait_for() == PluginState.RUNNING
    assert folder.tried_by_host  # start_all does not load it a second time
    assert not server.tried_by_host


async def test_a_process_gives_its_pid_replicas_give_theirs_the_others_none(kinds: Kinds) -> None:
    runner = kinds.factory.add("sleepy", kinds.manifest("sleepy"))
    stats = kinds.factory.add("stats", kinds.inprocess_folder("stats", autostart=False))
    assert runner.pids() == set() and stats.pids() == set() and kinds.external("billing").pids() == set()
    await runner.start("asked by the test")
    assert await runner.wait_for() == PluginState.RUNNING
    assert runner.pids() == {runner.snapshot().pid}
    await runner.scale(3)
    assert await runner.wait_for() == PluginState.RUNNING
    pids = {r.pid for r in runner.snapshot().replicas}
    assert len(pids) == 3 and None not in pids and runner.pids() == pids
    await stats.start("asked by the test")
    assert await stats.wait_for() == PluginState.RUNNING
    assert stats.pids() == set() and stats.sample() is None  # it shares the supervisor's process
    await runner.stop("the test is over")
    assert runner.pids() == set()


async def test_only_a_replicated_process_plugin_scales_or_takes_environment_overrides(kinds: Kinds) -> None:
    runner = kinds.factory.add("web", kinds.manifest("web"))
    fixed = kinds.factory.add("fixed", kinds.manifest("fixed", port=free_port_block(1)))
    stats = kinds.factory.add("stats", kinds.inprocess_folder("stats", autostart=False))
    single = ProcessRunner("single", kinds.manifest("single"), kinds.factory.runner_context())
    external, peer = kinds.external("billing"), PeerPlugin(kinds.external("shared"), {})
    assert [p.replica_count for p in (runner, single, stats, external, peer)] == [1, None, None, None, None]
    for plugin, kind in ((stats, "inprocess"), (external, "external"), (peer, "external")):
        for refused in (lambda p: p.check_scale(2), lambda p: p.check_env_overrides()):
            with pytest.raises(PluginActionError) as refusal:
                refused(plugin)
            assert refusal.value.message == f"not a local process plugin (kind {kind})"  # what the API answers
        with pytest.raises(PluginActionError, match="not a local process plugin"):
            await plugin.scale(2)
        with pytest.raises(PluginActionError, match="not a local process plugin"):
            plugin.set_env_overrides({"A": "1"})
    with pytest.raises(PluginActionError, match=r"single: this plugin cannot run replicas$"):
        single.check_scale(2)
    with pytest.raises(PluginActionError, match=r"single: this plugin cannot run replicas$"):
        await single.scale(2)
    with pytest.raises(PluginActionError, match="from 1 to 64"):
        runner.check_scale(0)
    with pytest.raises(PluginActionError, match="fixed port"):
        fixed.check_scale(2)
    runner.check_scale(2)
    await runner.scale(2)
    assert runner.replica_count == 2
    runner.check_env_overrides()
    runner.set_env_overrides({"GREETING": "hi"})
    assert runner.env_overrides == {"GREETING": "hi"}
    assert [m.env_overrides for m in runner.members] == [{"GREETING": "hi"}] * 2  # every replica's next start
    single.set_env_overrides({"GREETING": "ho"})
    assert single.env_overrides == {"GREETING": "ho"}


async def test_a_reload_prepares_an_in_process_plugin_and_nothing_else(kinds: Kinds) -> None:
    runner = kinds.factory.add("web", kinds.manifest("web"))
    stats = kinds.factory.add("stats", kinds.inprocess_folder("stats", autostart=False))
    await stats.start("asked by the test")
    assert await stats.wait_for() == PluginState.RUNNING
    assert loaded(stats).inprocess and not loaded(runner).inprocess
    assert not loaded(stats).source_changed and not loaded(runner).source_changed
    newer = kinds.inprocess_folder("stats", QUIET + "\nVERSION = 2\n", autostart=False)
    assert loaded(stats).source_changed  # its Python files differ from the imported version
    await stats.prepare(newer)  # imported while the old version keeps running
    assert stats.state == PluginState.RUNNING
    broken = kinds.inprocess_folder("stats", "import nowhere_to_be_found\n", autostart=False)
    with pytest.raises(PluginActionError, match="nowhere_to_be_found"):
        await stats.prepare(broken)
    before = runner.snapshot()
    await runner.prepare(kinds.manifest("web", env={"NEW": "1"}))  # nothing to load ahead for a process
    assert runner.snapshot() == before and not runner.source_changed()


async def test_a_refused_start_shows_on_a_local_plugin_and_leaves_an_external_one_alone(kinds: Kinds) -> None:
    runner = kinds.factory.add("web", kinds.manifest("web"))
    stats = kinds.factory.add("stats", kinds.inprocess_folder("stats", autostart=False))
    external = kinds.external("billing")
    for plugin in (runner, stats, external):
        plugin.refuse_start("not started: dependency 'db' is FATAL")
    assert [p.snapshot().state for p in (runner, stats)] == [PluginState.STOPPED] * 2
    assert runner.snapshot().last_error == stats.snapshot().last_error == "not started: dependency 'db' is FATAL"
    assert external.snapshot().state == PluginState.RUNNING and external.snapshot().last_error == ""


async def test_the_registry_knows_which_plugins_came_from_a_folder(kinds: Kinds) -> None:
    kinds.factory.add("web", kinds.manifest("web"))
    kinds.factory.add("stats", kinds.inprocess_folder("stats", autostart=False))
    kinds.registry.add(InProcessPlugin("audit", kinds.inprocess, module="audit:Plugin"))
    kinds.registry.add(kinds.external("billing"))
    kinds.registry.add(PeerPlugin(kinds.external("shared"), {"b": Peer("b", "http://127.0.0.1:9", 5.0, 0.0)}))
    assert sorted(kinds.registry) == ["audit", "billing", "shared", "stats", "web"]
    assert sorted(kinds.registry.from_folders) == ["stats", "web"]
    kinds.registry.drop("web", "the test drops it")
    assert sorted(kinds.registry.from_folders) == ["stats"] and "web" not in kinds.registry


async def test_the_supervisor_refuses_to_scale_or_configure_a_plugin_without_a_process_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async with Supervisor(make_test_settings(tmp_path)) as sup:
        await sup.register_external({"key": "billing", "host": "127.0.0.1", "port": 9})
        actions = (lambda: sup.scale("billing", 2), lambda: sup.set_config("billing", {"A": "1"}))
        for action in actions:
            with pytest.raises(PluginActionError) as refusal:
                await action()
            assert refusal.value.message == "not a local process plugin (kind external)"
        assert "billing" not in sup.memory.replicas and "billing" not in sup.memory.overrides
        assert sup.plugin("billing").state == PluginState.RUNNING


async def test_external_plugins_and_peers_are_known_as_announced_and_only_they_take_heartbeats(kinds: Kinds) -> None:
    kinds.factory.add("web", kinds.manifest("web"))
    parser = ExternalRegistrations(("127.0.0.1",), default_interval=5.0, default_timeout=5.0, default_max_body=1)
    external = ExternalPlugins(kinds.registry, parser, kinds.parts.reports, kinds.parts.bus)
    external.register({"key": "billing", "host": "127.0.0.1", "port": 9}, None, "http", "", "", "")
    external.add_peer({"key": "shared", "host": "127.0.0.1", "port": 9}, "b", "/api/plugins/shared", 5.0, "")
    assert sorted(kinds.registry.announced) == ["billing", "shared"]
    with pytest.raises(PluginActionError) as refusal:
        external.heartbeat("web")
    assert refusal.value.message == "not an external plugin (kind process)"
    assert sorted(external.sweep(now=1e12)) == ["billing"]  # a stand-in follows its peers, not a deadline
    assert kinds.registry["shared"].snapshot().state == PluginState.LOST  # its only peer went silent too
    assert external.remove_peer("shared", "b")  # no node serves it any more: the stand-in goes
    assert "shared" not in kinds.registry and sorted(kinds.registry.announced) == ["billing"]
    external.register({"key": "solo", "host": "127.0.0.1", "port": 9}, None, "http", "", "", "")
    external.add_peer({"key": "solo", "host": "127.0.0.1", "port": 9}, "b", "/api/plugins/solo", 5.0, "")
    assert external.remove_peer("solo", "b") and "solo" in kinds.registry  # it registered itself: it stays
