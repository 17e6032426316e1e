"""The Supervisor: composition root of the core and its Python API (see docs/architecture.md).

It owns the data-dir lock, the store, the event bus, the log hub, the port allocator and one plugin object per
key in ``registry``; its jobs are done by the modules beside it: ``orchestration`` (starts and stops in
dependency order), ``folder_plugins`` (plugin objects from manifests), ``reload`` and ``folder_actions`` (the
plugins folder changes), ``external_plugins`` (plugins that run elsewhere), ``process_tracking`` (no process
left behind), ``metrics_loop`` and ``memory`` (what is remembered per plugin).

``open()`` enters each part on one ``AsyncExitStack``: ``close()``, or a failure half way through ``open()``,
closes what was opened in the reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO

from supervisor_tui.config import Settings, local_url
from supervisor_tui.core.actions import install_key, operator_action
from supervisor_tui.core.events import (
    EventBus,
    MetricsSample,
    PluginHealthChanged,
    PluginRegistered,
    PluginStateChanged,
    PluginUnregistered,
)
from supervisor_tui.core.lock import DataDirLock
from supervisor_tui.core.logs import SUPERVISOR_SOURCE, LogHub
from supervisor_tui.core.plugin_state import PluginStateStore
from supervisor_tui.core.store import Store
from supervisor_tui.core.supervisor import folder_actions
from supervisor_tui.core.supervisor.external_plugins import ExternalPlugins
from supervisor_tui.core.supervisor.folder_plugins import FolderPluginFactory
from supervisor_tui.core.supervisor.managed import PLUGIN_HOST, ManagedPlugin, ReloadResult
from supervisor_tui.core.supervisor.memory import PluginMemory
from supervisor_tui.core.supervisor.metrics_loop import sample_metrics
from supervisor_tui.core.supervisor.orchestration import Orchestrator
from supervisor_tui.core.supervisor.process_tracking import ProcessTracking, owner_id
from supervisor_tui.core.supervisor.reload import reload_plugins
from supervisor_tui.plugins.external import ExternalPlugin, ExternalRegistrations
from supervisor_tui.plugins.health import ProbeClient, make_client
from supervisor_tui.plugins.inprocess import InProcessContext, InProcessPlugin
from supervisor_tui.plugins.inprocess_settings import InProcessSection
from supervisor_tui.plugins.manifest import discover, start_order
from supervisor_tui.plugins.model import PluginActionError, PluginNotFound, PluginSnapshot
from supervisor_tui.plugins.peers import Peer, with_peers
from supervisor_tui.plugins.ports import PortAllocator
from supervisor_tui.plugins.process import ProcessRunner

if TYPE_CHECKING:
    from supervisor_tui.consoles.service import ConsoleService

_LEVELS = {"FATAL": "error", "FAILED": "error", "BACKOFF": "warning", "EXITED": "warning"}


class Supervisor:
    """Supervises every plugin; usable as ``async with Supervisor(settings) as sup``."""

    def __init__(self, settings: Settings, echo: TextIO | None = None, echo_output: bool = False) -> None:
        self.settings = settings
        self.bus = EventBus()
        self.logs = LogHub(
            self.bus,
            settings.logs_dir,
            ring_lines=settings.data.log_ring_lines,
            max_bytes=settings.data.log_max_bytes,
            backups=settings.data.log_backups,
            echo=echo,
            echo_format=settings.log.format,
            echo_level=settings.log.level,
        )
        self.logs.echo_output = echo_output
        self.store = Store(settings.db_path)
        self.plugin_state = PluginStateStore(self.store)
        self.memory = PluginMemory(self.plugin_state, self.logs)
        self.lock = DataDirLock(settings.data_dir)
        start, end = settings.port_range
        self.ports = PortAllocator(start, end, PLUGIN_HOST, reserved=(settings.server.port,))
        self.registry: dict[str, ManagedPlugin] = {}
        self.node_name = settings.fleet.node
        # In every plugin's environment, so what a plugin spawned is found again, even after a crash of ours.
        self.owner = owner_id(settings.data_dir)
        self.tracking = ProcessTracking(self.plugin_state, self.logs, self.owner, settings.plugins.cgroups)
        self.orchestrator = Orchestrator(self)
        self.folder_plugins = FolderPluginFactory(self)
        self.external = ExternalRegistrations(
            allowlist=settings.gateway.upstream_allowlist,
            default_interval=settings.external.heartbeat_interval,
            default_timeout=settings.gateway.timeout,
            default_max_body=settings.gateway.max_body,
        )
        self.external_plugins = ExternalPlugins(self)
        self.opened = False
        self.http: ProbeClient | None = None  # the health probes' client, while open
        # Held by reload, install and remove: one change of the set of plugins at a time.
        self.lifecycle = asyncio.Lock()
        # Given by whoever runs the HTTP server (set_api_url, attach_consoles).
        self._api_url: str | None = None
        self._consoles: ConsoleService | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self.inprocess = InProcessSection.read(settings.tables)  # [inprocess] (and the deprecated [extensions])
        self.inprocess_tables, self.inprocess_settings = self.inprocess.tables, self.inprocess.settings
        # Set by the in-process plugin host: delivers pending hooks (stop_all calls it before stopping those plugins).
        self.flush_hooks: Callable[[], Awaitable[None]] | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------------
    async def __aenter__(self) -> Supervisor:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self, clean_orphans: bool = True) -> None:
        """Take the data-dir lock, open the store, clean up a previous run's orphans, load the manifests.

        ``clean_orphans=False``: the cleanup is left to ``clean_orphans()`` (the runtime runs it once its API
        listens); plugins start only after it either way."""
        if self.opened:
            return
        async with contextlib.AsyncExitStack() as stack:  # unwound only when a step fails (pop_all below)
            self.lock.acquire()
            stack.callback(self.lock.release)
            stack.callback(self.logs.close)
            tracking = self.tracking.open_cgroups()  # before the store's thread: the check forks
            stack.push_async_callback(self.tracking.close_cgroups)
            await self.store.open()
            stack.push_async_callback(self.store.close)
            await self.memory.load()
            if clean_orphans:
                await self.clean_orphans()
            self.http = make_client()
            stack.push_async_callback(self._close_http)
            found = discover(self.settings.plugins_dir)
            for key, err in found.invalid.items():
                self.folder_plugins.add(key, None, err)
            for key in start_order(found.manifests):
                self.folder_plugins.add(key, found.manifests[key])
            stack.push_async_callback(self._cancel_background)
            self._background.add(asyncio.create_task(sample_metrics(self), name="metrics"))
            self._background.add(asyncio.create_task(self.external_plugins.watch(), name="external-plugins"))
            stack.push_async_callback(self._stop_plugins)
            self._exit_stack = stack.pop_all()
        self.opened = True
        self.logs.info(
            f"supervisor started (pid {os.getpid()}): {len(found.manifests)} plugins loaded, "
            f"{len(found.invalid)} invalid, plugins from {self.settings.plugins_dir}, data in {self.settings.data_dir}",
            event="supervisor_started",
        )
        cgroups = self.tracking.cgroups
        self.logs.info(tracking, event="process_tracking", cgroup=str(cgroups.path) if cgroups else None)
        for key, err in found.invalid.items():
            self.logs.error(f"{key}: INVALID: {err}", event="plugin_invalid", plugin=key, reason=str(err))
        for note in self.lock.notes + self.store.notes:
            self.logs.warning(f"data dir: {note} (it holds tokens and secrets)", event="permissions_tightened")

    async def close(self) -> None:
        """Stop every plugin (reverse dependency order), then close the store and release the lock."""
        if not self.opened:
            return
        self.opened = False
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            await stack.aclose()

    async def _stop_plugins(self) -> None:
        await self.orchestrator.cancel_starts()  # starts in flight must not start anything after stop_all
        try:
            await self.stop_all("supervisor shutting down")
            await self.tracking.stop_adopted()
        finally:
            self.logs.info("supervisor stopped", event="supervisor_stopped")

    async def _cancel_background(self) -> None:
        pending = list(self._background)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        self._background.clear()

    async def _close_http(self) -> None:
        http, self.http = self.http, None
        if http is not None:
            with contextlib.suppress(Exception):
                await http.aclose()

    @property
    def orphans_cleaned(self) -> bool:
        """Whether the cleanup of a previous run's processes is over (plugins may start)."""
        return self.tracking.orphans_cleaned

    async def clean_orphans(self) -> None:
        """Stop what a previous run spawned (it was killed before it could stop it). Runs once; a second call
        waits for the first."""
        await self.tracking.clean_orphans()

    # -- registry (open to other kinds of plugins) ---------------------------------------------------------------
    def register(self, plugin: ManagedPlugin) -> None:
        """Add a plugin object under its key (external and in-process kinds use this)."""
        if plugin.key in self.registry:
            raise PluginActionError(plugin.key, "a plugin with this key already exists")
        self.registry[plugin.key] = plugin
        self.bus.publish(PluginRegistered(key=plugin.key, kind=plugin.kind))

    def unregister(self, key: str, reason: str) -> None:
        """Drop a plugin object (it must already be stopped)."""
        if self.registry.pop(key, None) is not None:
            self.bus.publish(PluginUnregistered(key=key, reason=reason))

    def record_state_change(self, plugin: ManagedPlugin, old: str, new: str, reason: str) -> None:
        """Publish a state change on the bus and in the logs (every kind reports through here)."""
        snap = plugin.snapshot()
        self.orchestrator.state_changed(plugin.key, new)
        self.bus.publish(PluginStateChanged(plugin.key, old, new, reason, snap.pid, snap.port))
        fields: dict[str, Any] = {"plugin": plugin.key, "from": old, "to": new, "reason": reason}
        message = f"{plugin.key}: {old} -> {new}: {reason}"
        if new in ("STARTING", "RUNNING"):
            fields["pid"], fields["port"] = snap.pid, snap.port
            if new == "RUNNING":
                message += f" (pid {snap.pid}, port {snap.port})"
        self.logs.write(
            SUPERVISOR_SOURCE, "supervisor", message, _LEVELS.get(new, "info"), event="plugin_state", **fields
        )

    def publish_health(self, key: str, healthy: bool, detail: str) -> None:
        """A health flip of any kind of plugin: on the bus and in the logs."""
        self.bus.publish(PluginHealthChanged(key=key, healthy=healthy, detail=detail))
        word = "healthy" if healthy else "UNHEALTHY"
        self.logs.write(
            SUPERVISOR_SOURCE,
            "supervisor",
            f"{key}: {word}: {detail}",
            "info" if healthy else "warning",
            event="plugin_health",
            plugin=key,
            healthy=healthy,
            reason=detail,
        )

    def inprocess_context(self) -> InProcessContext:
        """What in-process plugins get from this supervisor (folders here, [inprocess.*] in core.inprocess_host)."""
        return self.folder_plugins.inprocess_context()

    def set_api_url(self, url: str) -> None:
        """The API's real URL once it listens: plugins started from now on get it as SUPERVISOR_URL."""
        self._api_url = url

    def supervisor_url(self) -> str:
        """The SUPERVISOR_URL a plugin starting now gets."""
        return self._api_url or local_url(self.settings.server.host, self.settings.server.port)

    @property
    def consoles(self) -> ConsoleService | None:
        """The console service running beside this supervisor, if any (in-process plugins and the TUI read it)."""
        return self._consoles

    def attach_consoles(self, service: ConsoleService | None) -> None:
        """Make the console service that shares this supervisor's store and bus reachable as ``consoles``."""
        self._consoles = service

    # -- desired state -------------------------------------------------------------------------------------------
    async def set_desired(self, key: str, desired: str) -> None:
        """Remember what the operator wants of ``key`` (in memory and in the database) without acting on it."""
        plugin = self.registry.get(key)
        if isinstance(plugin, ProcessRunner | InProcessPlugin):
            plugin.desired = desired
        await self.memory.set_desired(key, desired)

    def desired_state(self, key: str) -> str | None:
        """What the operator last asked of ``key`` ("running" or "stopped", persisted), or None if never asked."""
        return self.memory.desired.get(key)

    def unsaved_desired(self, key: str) -> str | None:
        """Why ``key``'s desired state (running or stopped) will not survive a restart, or None when it is saved."""
        return self.memory.unsaved.get(key)

    # -- queries -------------------------------------------------------------------------------------------------
    @property
    def peers(self) -> dict[str, dict[str, Peer]]:
        """Other fleet nodes serving a key, by key and node."""
        return self.external_plugins.peers

    def plugins(self) -> list[PluginSnapshot]:
        """Every plugin's snapshot, sorted by key."""
        return [self.plugin(k) for k in sorted(self.registry)]

    def plugin(self, key: str) -> PluginSnapshot:
        """One plugin's snapshot (with the other nodes serving its key); raises PluginNotFound."""
        return with_peers(self.get(key).snapshot(), self.peers.get(key), self.node_name)

    def metrics(self, key: str) -> list[MetricsSample]:
        """The plugin's metrics history (2 s samples, the last 6 minutes); raises PluginNotFound."""
        return self.get(key).history()

    def get(self, key: str) -> ManagedPlugin:
        """The plugin object of ``key``; raises PluginNotFound."""
        plugin = self.registry.get(key)
        if plugin is None:
            raise PluginNotFound(key)
        return plugin

    def _controllable(self, key: str) -> ManagedPlugin:
        """A plugin the supervisor may start and stop (external ones run on their own)."""
        plugin = self.get(key)
        if isinstance(plugin, ExternalPlugin):
            raise PluginActionError(key, "an external plugin runs on its own: it registers and unregisters itself")
        return plugin

    def process_runner(self, key: str) -> ProcessRunner:
        """The local process plugin of ``key``; PluginActionError for another kind."""
        plugin = self.get(key)
        if not isinstance(plugin, ProcessRunner):
            raise PluginActionError(key, f"not a local process plugin (kind {plugin.kind})")
        return plugin

    def should_run(self, key: str) -> bool:
        """Whether a plugin is meant to run now (autostart, or last started by the operator)."""
        plugin = self.registry.get(key)
        return isinstance(plugin, ProcessRunner | InProcessPlugin) and self.orchestrator.should_autostart(plugin)

    def asgi_app(self, key: str) -> Any:
        """An in-process plugin's ASGI app while it is RUNNING (the gateway calls it directly), else None."""
        plugin = self.registry.get(key)
        return plugin.asgi_app if isinstance(plugin, InProcessPlugin) else None

    def report_upstream(self, key: str, ok: bool) -> None:
        """Passive health from the gateway: N failures in a row -> unhealthy, a success -> healthy again."""
        plugin = self.registry.get(key)
        if plugin is not None:
            plugin.report_upstream(ok)

    # -- starting and stopping -----------------------------------------------------------------------------------
    async def start_all(self) -> None:
        """Start every plugin that should run (autostart, or last started by the operator), dependencies first.

        A plugin that fails to start is logged (it shows FATAL); the others start regardless."""
        await self.orchestrator.start_all()

    def launched(self) -> bool:
        """Whether start_all has launched everything it starts: each such plugin is RUNNING or had a failed start
        (and is being retried, or gave up), or waits for a dependency that did. A crash loop does not hold it."""
        return self.orchestrator.launched()

    async def ensure_running(self, key: str, reason: str) -> None:
        """Start ``key`` after its dependencies are RUNNING; concurrent callers share one attempt."""
        await self.orchestrator.ensure_running(key, reason)

    async def stop_all(self, reason: str = "stopping all plugins") -> None:
        """Stop every plugin, dependents before their dependencies, independent ones in parallel."""
        await self.orchestrator.stop_all(reason)

    @operator_action("start")
    async def start(self, key: str, wait: bool = True) -> PluginSnapshot:
        """Start a plugin (its dependencies first). ``wait``: until RUNNING, else PluginActionError."""
        plugin = self._controllable(key)
        if isinstance(plugin, ProcessRunner) and plugin.manifest is None:
            raise PluginActionError(key, f"cannot start an INVALID plugin: {plugin.error}")
        await self.set_desired(key, "running")
        if wait:
            await self.ensure_running(key, "started by operator")
        else:
            self._spawn_background(self.ensure_running(key, "started by operator"), key)
        return plugin.snapshot()

    @operator_action("stop")
    async def stop(self, key: str, wait: bool = True) -> PluginSnapshot:
        """Stop a plugin; it stays stopped across supervisor restarts until started again."""
        plugin = self._controllable(key)
        await self.set_desired(key, "stopped")
        self.orchestrator.stop_requested(key)
        if wait:
            await plugin.stop("stopped by operator")
        else:
            self._spawn_background(plugin.stop("stopped by operator"), key)
        return plugin.snapshot()

    @operator_action("restart")
    async def restart(self, key: str, wait: bool = True) -> PluginSnapshot:
        """Stop then start a plugin."""
        plugin = self._controllable(key)
        if isinstance(plugin, ProcessRunner) and plugin.manifest is None:
            raise PluginActionError(key, f"cannot restart an INVALID plugin: {plugin.error}")
        await self.set_desired(key, "running")

        async def run() -> None:
            self.orchestrator.stop_requested(key)
            await plugin.stop("restart requested by operator")
            await self.ensure_running(key, "restarted by operator")

        if wait:
            await run()
        else:
            self._spawn_background(run(), key)
        return plugin.snapshot()

    @operator_action("scale")
    async def scale(self, key: str, replicas: int) -> PluginSnapshot:
        """Run ``replicas`` processes of a process plugin (remembered across restarts, like a stop). The new ones
        start when the plugin is meant to run; scaling down stops the highest ones. PluginActionError for a
        count it cannot run (out of 1..64, a fixed port, not enough free ports); nothing changes then."""
        return await folder_actions.scale(self, key, replicas)

    def _spawn_background(self, coro: Any, key: str) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.logs.error(f"{key}: {t.exception()}", event="action_failed", plugin=key)

        task.add_done_callback(done)

    # -- the plugins folder: reload, install, remove, config -----------------------------------------------------
    async def reload(self, keep_on_error: bool = False) -> ReloadResult:
        """Re-read the plugins folder and apply the difference plugin by plugin (SIGHUP).

        ``keep_on_error`` (live reload): a running plugin whose new manifest or code cannot be loaded keeps its
        running version, and the failure is reported (listed under "failed")."""
        async with self.lifecycle:
            return await reload_plugins(self, keep_on_error)

    @operator_action("install", install_key)
    async def install(self, manifest: dict[str, Any], autostart: bool) -> PluginSnapshot:
        """Validate ``manifest``, write plugins/<key>/manifest.json, load it, start it when ``autostart``.

        ManifestError on bad input and PluginActionError for an existing key; nothing is written then."""
        return await folder_actions.install(self, manifest, autostart)

    @operator_action("remove")
    async def remove(self, key: str, purge: bool = False) -> None:
        """Stop and unload a plugin; its folder is deleted only with ``purge``.

        Without purge the folder stays and a reload does not bring the plugin back (a supervisor restart shows it
        again, stopped). Refused while other plugins depend on it."""
        await folder_actions.remove(self, key, purge)

    @operator_action("set_config")
    async def set_config(self, key: str, env: dict[str, str]) -> PluginSnapshot:
        """Set a plugin's environment overrides (persisted, merged over the manifest's env) and restart it."""
        return await folder_actions.set_config(self, key, env)

    # -- plugins that run elsewhere (external_plugins) -----------------------------------------------------------
    async def register_external(
        self,
        payload: dict[str, Any],
        lost_after: float | None = None,
        source: str = "http",
        node: str = "",
        lost: str = "",
        base_path: str = "",
    ) -> PluginSnapshot:
        """Register (or re-register) a self-announced plugin; its endpoints join the gateway.

        ``source`` says how it came ("http", "redis"), ``node`` which fleet node announced it, ``lost_after`` the
        silence that makes it LOST (default two heartbeat intervals); ``lost`` non-empty registers it LOST with
        that detail (a registration restored after a restart waits for its next heartbeat); ``base_path`` is the
        upstream's path when it is another node's gateway.
        ManifestError for a bad message, UpstreamNotAllowed (a PermissionError) for an upstream outside the
        allowlist, PluginActionError when the key belongs to a plugin of another kind."""
        return self.external_plugins.register(payload, lost_after, source, node, lost, base_path)

    def heartbeat_external(self, key: str) -> PluginSnapshot:
        """An external plugin is alive; a LOST one is RUNNING again."""
        return self.external_plugins.heartbeat(key)

    async def unregister_external(self, key: str) -> None:
        """An external plugin leaves: it is dropped with its routes."""
        self.external_plugins.unregister(key)

    async def add_peer(
        self, payload: dict[str, Any], node: str, base_path: str, lost_after: float, lost: str = ""
    ) -> PluginSnapshot:
        """Node ``node`` serves ``payload``'s key at its gateway: one more upstream of the key's route (a key
        nothing here serves becomes a PeerPlugin). ``lost``: known, not heard from yet (restored after a restart).
        Raises like ``register_external`` (the allowlist applies to the node's gateway too)."""
        return self.plugin(self.external_plugins.add_peer(payload, node, base_path, lost_after, lost))

    def heartbeat_peer(self, key: str, node: str) -> None:
        """Node ``node`` still serves ``key``; raises PluginNotFound when it never said it does."""
        self.external_plugins.heartbeat_peer(key, node)

    def remove_peer(self, key: str, node: str) -> bool:
        """Node ``node`` no longer serves ``key``; False when it did not."""
        return self.external_plugins.remove_peer(key, node)

    def sweep_external(self, now: float | None = None) -> list[str]:
        """Mark LOST every external plugin whose heartbeats stopped (2 x its interval); returns their keys."""
        return self.external_plugins.sweep(now)
