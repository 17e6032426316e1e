"""Plugin objects built from a folder's manifest: a ReplicatedRunner for a command, an InProcessPlugin for a
Python module, with what they get from the supervisor (logs, ports, callbacks) and what it remembers of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.plugin_state import PluginStateStore
from supervisor_tui.core.supervisor.managed import PLUGIN_HOST, FolderPlugin
from supervisor_tui.core.supervisor.memory import PluginMemory
from supervisor_tui.core.supervisor.process_tracking import ProcessTracking
from supervisor_tui.core.supervisor.registry import PluginRegistry
from supervisor_tui.core.supervisor.reports import PluginReports
from supervisor_tui.plugins.health import ProbeClient
from supervisor_tui.plugins.inprocess import InProcessContext, InProcessPlugin
from supervisor_tui.plugins.manifest import Manifest, ManifestError
from supervisor_tui.plugins.ports import PortAllocator
from supervisor_tui.plugins.process import ProcessRunner, RunnerContext
from supervisor_tui.plugins.replicas import ReplicatedRunner


class SupervisorUrl:
    """The SUPERVISOR_URL plugins get: the API's real URL once it listens, the configured address before."""

    def __init__(self, default: str) -> None:
        self.default = default
        self.actual: str | None = None

    def current(self) -> str:
        return self.actual or self.default


@dataclass(frozen=True)
class ProcessDefaults:
    """What every process plugin of this supervisor shares: its marker, SUPERVISOR_URL, the gateway's limits."""

    owner: str  # the supervisor's identity in its plugins' environment marker (process_tracking.owner_id)
    supervisor_url: Callable[[], str]
    default_timeout: float
    default_max_body: int


class FolderPluginFactory:
    """Creates and registers the plugin object of a folder (or of its manifest error: an INVALID plugin).

    Process plugins can be made while ``http`` (the health probes' client) is set: the supervisor sets it when it
    opens."""

    def __init__(
        self,
        registry: PluginRegistry,
        memory: PluginMemory,
        ports: PortAllocator,
        plugin_state: PluginStateStore,
        tracking: ProcessTracking,
        reports: PluginReports,
        logs: LogHub,
        defaults: ProcessDefaults,
        inprocess: InProcessContext,
    ) -> None:
        self.registry = registry
        self.memory = memory
        self.ports = ports
        self.plugin_state = plugin_state
        self.tracking = tracking
        self.reports = reports
        self.logs = logs
        self.defaults = defaults
        self.inprocess = inprocess
        self.http: ProbeClient | None = None

    def add(self, key: str, manifest: Manifest | None, error: ManifestError | None = None) -> FolderPlugin:
        runner: FolderPlugin
        if manifest is not None and manifest.module:
            runner = InProcessPlugin(key, self.inprocess, manifest=manifest)
        else:
            runner = ReplicatedRunner(
                key,
                manifest,
                self.runner_context(),
                error,
                self.memory.overrides.get(key),
                self.replica_count(key, manifest),
            )
        if manifest is not None:
            runner.desired = self.memory.desired.get(key) or ("running" if manifest.autostart else "stopped")
            self.ports.declare_fixed(key, manifest.port)
        self.registry.add_from_folder(runner)
        return runner

    def replica_count(self, key: str, manifest: Manifest | None) -> int | None:
        """The operator's count for ``key`` when it can still be run (a fixed port runs one), else None: the
        manifest's."""
        count = self.memory.replicas.get(key)
        if count is None or manifest is None or (manifest.port is not None and count > 1):
            return None
        return count

    def runner_context(self) -> RunnerContext:
        assert self.http is not None, "process plugins are made once the supervisor is open"
        defaults = self.defaults
        return RunnerContext(
            logs=self.logs,
            ports=self.ports,
            http=self.http,
            host=PLUGIN_HOST,
            supervisor_url=defaults.supervisor_url,
            owner=defaults.owner,
            default_timeout=defaults.default_timeout,
            default_max_body=defaults.default_max_body,
            on_state=self.reports.record_state_change,
            on_health=self._on_health,
            on_spawn=self._on_spawn,
            on_exit=self._on_exit,
            descendants=self.tracking.descendants,
            cgroups=self.tracking.cgroups,
        )

    def _on_health(self, runner: ProcessRunner, healthy: bool, detail: str) -> None:
        self.reports.publish_health(runner.key, healthy, detail)

    async def _on_spawn(self, runner: ProcessRunner, pid: int, created: float) -> None:
        self.logs.info(
            f"{runner.instance}: spawned pid {pid} on port {runner.port}",
            event="plugin_spawned",
            plugin=runner.key,
            replica=runner.replica,
            pid=pid,
            port=runner.port,
        )
        # Each replica's pid under its own instance name, so a crash of ours leaves none of them behind.
        await self.plugin_state.save_pid(runner.instance, runner.desired, pid, created)

    async def _on_exit(self, runner: ProcessRunner) -> None:
        await self.plugin_state.clear_pid(runner.instance)
