"""The Supervisor: composition root of the core and its Python API (see docs/architecture.md).

It owns the data-dir lock, the store, the event bus, the log hub, the port allocator and the ``registry`` (one
plugin object per key); its jobs are done by the modules beside it, each built here with only what it uses (no
back-reference to the Supervisor): ``orchestration`` (starts and stops in dependency order), ``reports`` (state
changes and health flips), ``folder_plugins`` (plugin objects from manifests), ``reload`` and
``folder_actions`` (the plugins folder changes), ``external_plugins`` (plugins that run elsewhere),
``process_tracking`` (no process left behind), ``metrics_loop`` and ``memory`` (what is remembered per plugin).

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
from supervisor_tui.core.events import EventBus, MetricsSample
from supervisor_tui.core.lock import DataDirLock
from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.plugin_state import PluginStateStore
from supervisor_tui.core.store import Store
from supervisor_tui.core.supervisor.external_plugins import ExternalPlugins
from supervisor_tui.core.supervisor.folder_actions import FolderActions
from supervisor_tui.core.supervisor.folder_plugins import FolderPluginFactory, ProcessDefaults, SupervisorUrl
from supervisor_tui.core.supervisor.managed import PLUGIN_HOST, ManagedPlugin, ReloadResult, rejected
from supervisor_tui.core.supervisor.memory import PluginMemory
from supervisor_tui.core.supervisor.metrics_loop import sample_metrics
from supervisor_tui.core.supervisor.orchestration import Orchestrator
from supervisor_tui.core.supervisor.process_tracking import ProcessTracking, owner_id
from supervisor_tui.core.supervisor.registry import PluginRegistry
from supervisor_tui.core.supervisor.reload import FolderReload
from supervisor_tui.core.supervisor.reports import PluginReports
from supervisor_tui.plugins.external import ExternalRegistrations
from supervisor_tui.plugins.health import ProbeClient, make_client
from supervisor_tui.plugins.inprocess import InProcessContext
from supervisor_tui.plugins.inprocess_settings import InProcessSection
from supervisor_tui.plugins.manifest import discover, start_order
from supervisor_tui.plugins.model import PluginActionError, PluginSnapshot
from supervisor_tui.plugins.peers import Peer, with_peers
from supervisor_tui.plugins.ports import PortAllocator

if TYPE_CHECKING:
    from supervisor_tui.consoles.service import ConsoleService


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
        self.registry = PluginRegistry(self.bus)
        self.node_name = settings.fleet.node
        # In every plugin's environment, so what a plugin spawned is found again, even after a crash of ours.
        self.owner = owner_id(settings.data_dir)
        self.tracking = ProcessTracking(self.plugin_state, self.logs, self.owner, settings.plugins.cgroups)
        self.inprocess = InProcessSection.read(settings.tables)  # [inprocess] (and the deprecated [extensions])
        self.inprocess_tables, self.inprocess_settings = self.inprocess.tables, self.inprocess.settings
        self.orchestrator = Orchestrator(self.registry, self.memory, self.tracking, self.logs)
        self.reports = PluginReports(self.bus, self.logs, self.orchestrator.state_changed)
        # Given by whoever runs the HTTP server (set_api_url, attach_consoles).
        self.api_url = SupervisorUrl(local_url(settings.server.host, settings.server.port))
        self._consoles: ConsoleService | None = None
        gateway = settings.gateway
        self.folder_plugins = FolderPluginFactory(
            self.registry,
            self.memory,
            self.ports,
            self.plugin_state,
            self.tracking,
            self.reports,
            self.logs,
            ProcessDefaults(self.owner, self.api_url.current, gateway.timeout, gateway.max_body),
            InProcessContext(
                supervisor=self,  # handed to in-process plugins: they use the public API
                logs=self.logs,
                bus=self.bus,
                settings=self.inprocess_settings,
                on_state=self.reports.record_state_change,
                on_health=self.reports.publish_health,
                default_timeout=gateway.timeout,
                default_max_body=gateway.max_body,
                base_dir=settings.base_dir,
                tables=self.inprocess_tables,
            ),
        )
        self.external = ExternalRegistrations(
            allowlist=gateway.upstream_allowlist,
            default_interval=settings.external.heartbeat_interval,
            default_timeout=gateway.timeout,
            default_max_body=gateway.max_body,
        )
        self.external_plugins = ExternalPlugins(self.registry, self.external, self.reports, self.bus)
        # Held by reload, install and remove: one change of the set of plugins at a time.
        self.lifecycle = asyncio.Lock()
        self.folder_reload = FolderReload(
            settings.plugins_dir,
            self.registry,
            self.memory,
            self.folder_plugins,
            self.ports,
            self.logs,
            self.bus,
            self.inprocess_tables,
            self.orchestrator.start_many,
        )
        self.folder_actions = FolderActions(
            settings.plugins_dir,
            self.lifecycle,
            self.registry,
            self.memory,
            self.plugin_state,
            self.folder_plugins,
            self.ports,
            self.orchestrator,
            self.logs,
        )
        self.opened = False
        self.http: ProbeClient | None = None  # the health probes' client, while open
        self._background: set[asyncio.Task[Any]] = set()
        self._exit_stack: contextlib.AsyncExitStack | None = None

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
            self.http = self.folder_plugins.http = make_client()
            stack.push_async_callback(self._close_http)
            found = discover(self.settings.plugins_dir)
            for key, err in found.invalid.items():
                self.folder_plugins.add(key, None, err)
            for key in start_order(found.manifests):
                self.folder_plugins.add(key, found.manifests[key])
            stack.push_async_callback(self._cancel_background)
            metrics = sample_metrics(self.registry, self.bus, self.logs, self.tracking)
            self._background.add(asyncio.create_task(metrics, name="metrics"))
            self._background.add(asyncio.create_task(self.external_plugins.watch(), name="external-plugins"))
            stack.push_async_callback(self._stop_plugins)
            self._exit_stack = stack.pop_all()
        self.opened = self.orchestrator.accepting = True
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
        self.opened = self.orchestrator.accepting = False
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
        self.folder_plugins.http = None
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
        """Add a plugin object under its key (in-process plugins from settings use this; external plugins come
        through register_external, the keys other nodes serve through add_peer)."""
        self.registry.add(plugin)

    def unregister(self, key: str, reason: str) -> None:
        """Drop a plugin object (it must already be stopped)."""
        self.registry.drop(key, reason)

    @property
    def flush_hooks(self) -> Callable[[], Awaitable[None]] | None:
        """Set by the in-process plugin host: delivers pending hooks (stop_all calls it before stopping those)."""
        return self.orchestrator.flush_hooks

    @flush_hooks.setter
    def flush_hooks(self, flush: Callable[[], Awaitable[None]] | None) -> None:
        self.orchestrator.flush_hooks = flush

    def inprocess_context(self) -> InProcessContext:
        """What in-process plugins get from this supervisor (folders here, [inprocess.*] in core.inprocess_host)."""
        return self.folder_plugins.inprocess

    def set_api_url(self, url: str) -> None:
        """The API's real URL once it listens: plugins started from now on get it as SUPERVISOR_URL."""
        self.api_url.actual = url

    def supervisor_url(self) -> str:
        """The SUPERVISOR_URL a plugin starting now gets."""
        return self.api_url.current()

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
        await self.orchestrator.set_desired(key, desired)

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
        return self.registry.require(key)

    def _controllable(self, key: str) -> ManagedPlugin:
        """A plugin the supervisor may start and stop (external ones run on their own)."""
        plugin = self.get(key)
        if plugin.runs_elsewhere:
            raise PluginActionError(key, "an external plugin runs on its own: it registers and unregisters itself")
        return plugin

    def should_run(self, key: str) -> bool:
        """Whether a plugin is meant to run now (autostart, or last started by the operator)."""
        plugin = self.registry.get(key)
        return plugin is not None and self.orchestrator.should_autostart(plugin)

    def asgi_app(self, key: str) -> Any:
        """An in-process plugin's ASGI app while it is RUNNING (the gateway calls it directly), else None."""
        plugin = self.registry.get(key)
        return plugin.asgi_app if plugin is not None else None

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
        if rejected(plugin):
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
        if rejected(plugin):
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
        return await self.folder_actions.scale(key, replicas)

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
            return await self.folder_reload.run(keep_on_error)

    @operator_action("install", install_key)
    async def install(self, manifest: dict[str, Any], autostart: bool) -> PluginSnapshot:
        """Validate ``manifest``, write plugins/<key>/manifest.json, load it, start it when ``autostart``.

        ManifestError on bad input and PluginActionError for an existing key; nothing is written then."""
        return await self.folder_actions.install(manifest, autostart)

    @operator_action("remove")
    async def remove(self, key: str, purge: bool = False) -> None:
        """Stop and unload a plugin; its folder is deleted only with ``purge``.

        Without purge the folder stays and a reload does not bring the plugin back (a supervisor restart shows it
        again, stopped). Refused while other plugins depend on it."""
        await self.folder_actions.remove(key, purge)

    @operator_action("set_config")
    async def set_config(self, key: str, env: dict[str, str]) -> PluginSnapshot:
        """Set a plugin's environment overrides (persisted, merged over the manifest's env) and restart it."""
        return await self.folder_actions.set_config(key, env)

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
