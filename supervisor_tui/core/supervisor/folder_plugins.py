"""Plugin objects built from a folder's manifest: a ReplicatedRunner for a command, an InProcessPlugin for a
Python module, with what they get from the supervisor (logs, ports, callbacks) and what it remembers of them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor_tui.core.supervisor.managed import PLUGIN_HOST, FolderPlugin
from supervisor_tui.plugins.inprocess import InProcessContext, InProcessPlugin
from supervisor_tui.plugins.manifest import Manifest, ManifestError
from supervisor_tui.plugins.process import ProcessRunner, RunnerContext
from supervisor_tui.plugins.replicas import ReplicatedRunner

if TYPE_CHECKING:
    from supervisor_tui.core.supervisor.root import Supervisor


class FolderPluginFactory:
    """Creates and registers the plugin object of a folder (or of its manifest error: an INVALID plugin)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def add(self, key: str, manifest: Manifest | None, error: ManifestError | None = None) -> FolderPlugin:
        sup = self.sup
        runner: FolderPlugin
        if manifest is not None and manifest.module:
            runner = InProcessPlugin(key, self.inprocess_context(), manifest=manifest)
        else:
            runner = ReplicatedRunner(
                key,
                manifest,
                self.runner_context(),
                error,
                sup.memory.overrides.get(key),
                self.replica_count(key, manifest),
            )
        if manifest is not None:
            runner.desired = sup.memory.desired.get(key) or ("running" if manifest.autostart else "stopped")
            sup.ports.declare_fixed(key, manifest.port)
        sup.register(runner)
        return runner

    def replica_count(self, key: str, manifest: Manifest | None) -> int | None:
        """The operator's count for ``key`` when it can still be run (a fixed port runs one), else None: the
        manifest's."""
        count = self.sup.memory.replicas.get(key)
        if count is None or manifest is None or (manifest.port is not None and count > 1):
            return None
        return count

    def runner_context(self) -> RunnerContext:
        sup = self.sup
        assert sup.http is not None
        return RunnerContext(
            logs=sup.logs,
            ports=sup.ports,
            http=sup.http,
            host=PLUGIN_HOST,
            supervisor_url=sup.supervisor_url,
            owner=sup.owner,
            default_timeout=float(sup.settings.get("gateway.timeout")),
            default_max_body=int(sup.settings.get("gateway.max_body")),
            on_state=sup.record_state_change,
            on_health=self._on_health,
            on_spawn=self._on_spawn,
            on_exit=self._on_exit,
            descendants=sup.tracking.descendants,
            cgroups=sup.tracking.cgroups,
        )

    def inprocess_context(self) -> InProcessContext:
        sup = self.sup
        return InProcessContext(
            supervisor=sup,
            logs=sup.logs,
            bus=sup.bus,
            settings=sup.inprocess_settings,
            on_state=sup.record_state_change,
            on_health=sup.publish_health,
            default_timeout=float(sup.settings.get("gateway.timeout")),
            default_max_body=int(sup.settings.get("gateway.max_body")),
            base_dir=sup.settings.base_dir,
            tables=sup.inprocess_tables,
        )

    def _on_health(self, runner: ProcessRunner, healthy: bool, detail: str) -> None:
        self.sup.publish_health(runner.key, healthy, detail)

    async def _on_spawn(self, runner: ProcessRunner, pid: int, created: float) -> None:
        self.sup.logs.info(
            f"{runner.instance}: spawned pid {pid} on port {runner.port}",
            event="plugin_spawned",
            plugin=runner.key,
            replica=runner.replica,
            pid=pid,
            port=runner.port,
        )
        # Each replica's pid under its own instance name, so a crash of ours leaves none of them behind.
        await self.sup.plugin_state.save_pid(runner.instance, runner.desired, pid, created)

    async def _on_exit(self, runner: ProcessRunner) -> None:
        await self.sup.plugin_state.clear_pid(runner.instance)
