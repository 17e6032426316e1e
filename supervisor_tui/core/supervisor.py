"""The supervisor: composition root of the core and its Python API (see docs/architecture.md).

    async with Supervisor(settings) as sup:
        await sup.start_all()
        snap = await sup.start("echo")

It owns the data-dir lock, the store, the event bus, the log hub, the port allocator and one plugin object per
key in ``registry`` (``ProcessRunner`` for folders under plugins/; other kinds register through ``register``).
What it remembers per plugin is persisted by ``core.plugin_state``; what a reload does is planned by
``core.reload_plan`` and executed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import psutil

from supervisor_tui.config import Settings, local_url
from supervisor_tui.core.actions import install_key, operator_action
from supervisor_tui.core.events import (
    EventBus,
    MetricsSample,
    PluginFailed,
    PluginHealthChanged,
    PluginPeersChanged,
    PluginRegistered,
    PluginStateChanged,
    PluginUnregistered,
)
from supervisor_tui.core.lock import DataDirLock, LockError
from supervisor_tui.core.logs import SUPERVISOR_SOURCE, LogHub
from supervisor_tui.core.plugin_state import PluginStateStore
from supervisor_tui.core.reload_plan import OUTCOMES, Action, Change, Loaded, autostarts, plan_reload
from supervisor_tui.core.store import Store, StoreError
from supervisor_tui.plugins.cgroups import CgroupTree, PluginCgroup
from supervisor_tui.plugins.external import ExternalPlugin, ExternalRegistrations, UpstreamNotAllowed
from supervisor_tui.plugins.health import ProbeClient, make_client
from supervisor_tui.plugins.inprocess import InProcessContext, InProcessPlugin
from supervisor_tui.plugins.inprocess_settings import InProcessSection
from supervisor_tui.plugins.manifest import (
    MANIFEST_FILE,
    Endpoint,
    Manifest,
    ManifestError,
    check_graph,
    discover,
    parse_env,
    parse_manifest,
    start_order,
)
from supervisor_tui.plugins.metrics import marked_processes, sample_interval
from supervisor_tui.plugins.model import PluginActionError, PluginNotFound, PluginSnapshot, PluginState
from supervisor_tui.plugins.peers import Peer, PeerPlugin, with_peers
from supervisor_tui.plugins.ports import PortAllocator
from supervisor_tui.plugins.process import (
    ProcessRunner,
    RunnerContext,
    adopted_children,
    orphans_of,
    reap_adopted,
    stop_orphans,
)
from supervisor_tui.plugins.replicas import ReplicatedRunner

if TYPE_CHECKING:
    from supervisor_tui.consoles.service import ConsoleService

__all__ = [
    "Endpoint",
    "LockError",
    "ManagedPlugin",
    "ManifestError",
    "PluginActionError",
    "PluginNotFound",
    "PluginSnapshot",
    "PluginState",
    "ReloadResult",
    "StoreError",
    "Supervisor",
    "UpstreamNotAllowed",
]

EXTERNAL_SWEEP_INTERVAL = 1.0  # seconds between checks for silent external plugins
PLUGIN_HOST = "127.0.0.1"  # plugins listen on loopback; the gateway is the way in
_LEVELS = {"FATAL": "error", "FAILED": "error", "BACKOFF": "warning", "EXITED": "warning"}
S = PluginState
# depends_on conditions: the dependency's states that meet each one, and those in which it cannot be met any more.
CONDITION_MET: dict[str, frozenset[str]] = {
    "started": frozenset({S.STARTING, S.RUNNING, S.BACKOFF, S.EXITED, S.COMPLETED, S.FAILED}),
    "healthy": frozenset({S.RUNNING, S.COMPLETED}),
    "completed": frozenset({S.COMPLETED, S.FAILED}),
    "completed_successfully": frozenset({S.COMPLETED}),
}
CONDITION_FAILED: dict[str, frozenset[str]] = {
    "started": frozenset({S.FATAL, S.INVALID}),
    "healthy": frozenset({S.FATAL, S.INVALID, S.FAILED}),
    "completed": frozenset({S.FATAL, S.INVALID}),
    "completed_successfully": frozenset({S.FATAL, S.INVALID, S.FAILED}),
}


class ManagedPlugin(Protocol):
    """What the supervisor needs from any kind of plugin (process, external, in-process)."""

    key: str
    kind: str

    def snapshot(self) -> PluginSnapshot: ...

    async def start(self, reason: str = ...) -> None: ...

    async def stop(self, reason: str = ...) -> None: ...

    async def wait_for(self, states: set[PluginState] | None = None, timeout: float | None = None) -> PluginState: ...  # noqa: ASYNC109

    def report_upstream(self, ok: bool, detail: str = "") -> None: ...

    def history(self) -> list[MetricsSample]: ...


ReloadResult = dict[str, list[str]]  # "added", "removed", "changed", "unchanged", "invalid", "failed" -> keys
FolderPlugin = ProcessRunner | InProcessPlugin  # plugins that come from a folder under plugins/


class Supervisor:
    """Supervises every plugin; usable as ``async with Supervisor(settings) as sup``."""

    def __init__(self, settings: Settings, echo: TextIO | None = None, echo_output: bool = False) -> None:
        self.settings = settings
        self.bus = EventBus()
        self.logs = LogHub(
            self.bus,
            settings.logs_dir,
            ring_lines=int(settings.get("data.log_ring_lines")),
            max_bytes=int(settings.get("data.log_max_bytes")),
            backups=int(settings.get("data.log_backups")),
            echo=echo,
            echo_format=str(settings.get("log.format")),
            echo_level=str(settings.get("log.level")),
        )
        self.logs.echo_output = echo_output
        self.store = Store(settings.db_path)
        self.plugin_state = PluginStateStore(self.store)
        self.lock = DataDirLock(settings.data_dir)
        start, end = settings.port_range
        self.ports = PortAllocator(start, end, PLUGIN_HOST, reserved=(settings.port,))
        self.registry: dict[str, ManagedPlugin] = {}
        self.peers: dict[str, dict[str, Peer]] = {}  # other fleet nodes serving a key, by key and node
        self.node_name = str(settings.get("fleet.node"))
        # In every plugin's environment, so what a plugin spawned is found again, even after a crash of ours.
        self.owner = owner_id(settings.data_dir)
        self.cgroups: CgroupTree | None = None  # this run's plugin cgroups (None: not used, see open)
        self.opened = False
        # Given by whoever runs the HTTP server (set_api_url, attach_consoles).
        self._api_url: str | None = None
        self._consoles: ConsoleService | None = None
        self._desired: dict[str, str] = {}  # persisted desired state by key
        self._unsaved: dict[str, str] = {}  # keys whose desired state the database refused: why
        self._overrides: dict[str, dict[str, str]] = {}  # persisted env overrides by key
        self._replicas: dict[str, int] = {}  # persisted replica counts of plugins an operator scaled, by key
        self._removed: set[str] = set()  # removed without purge: a reload does not bring them back
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._state_changed = asyncio.Event()  # set (and replaced) at every state change of any plugin
        self._orphans: asyncio.Task[None] | None = None  # the cleanup of a previous run's processes (once)
        self._startup: set[str] | None = None  # what start_all starts (None until it is called)
        self._tried: set[str] = set()  # plugins whose start had an outcome since open (RUNNING or a failure)
        self._descendants: set[int] = set()  # every pid seen below a plugin's main process
        self._stop_gen: dict[str, int] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._metrics_task: asyncio.Task[None] | None = None
        self._http: ProbeClient | None = None
        self._lifecycle = asyncio.Lock()
        self.external = ExternalRegistrations(
            allowlist=settings.get("gateway.upstream_allowlist"),
            default_interval=float(settings.get("external.heartbeat_interval")),
            default_timeout=float(settings.get("gateway.timeout")),
            default_max_body=int(settings.get("gateway.max_body")),
        )
        self._closing = False
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
        self.lock.acquire()
        try:
            tracking = self._open_cgroups()  # before the store's thread: the check forks
            await self.store.open()
            await self._load_persisted()
            if clean_orphans:
                await self.clean_orphans()
            self._http = make_client()
            found = discover(self.settings.plugins_dir)
            for key, err in found.invalid.items():
                self._add_runner(key, None, err)
            for key in start_order(found.manifests):
                self._add_runner(key, found.manifests[key])
            self._metrics_task = asyncio.create_task(self._sample_metrics(), name="metrics")
            self._background.add(asyncio.create_task(self._watch_external(), name="external-plugins"))
            self.opened = True
        except BaseException:
            await self._release()
            raise
        self.logs.info(
            f"supervisor started (pid {os.getpid()}): {len(found.manifests)} plugins loaded, "
            f"{len(found.invalid)} invalid, plugins from {self.settings.plugins_dir}, data in {self.settings.data_dir}",
            event="supervisor_started",
        )
        self.logs.info(tracking, event="process_tracking", cgroup=str(self.cgroups.path) if self.cgroups else None)
        for key, err in found.invalid.items():
            self.logs.error(f"{key}: INVALID: {err}", event="plugin_invalid", plugin=key, reason=str(err))
        for note in self.lock.notes + self.store.notes:
            self.logs.warning(f"data dir: {note} (it holds tokens and secrets)", event="permissions_tightened")

    async def close(self) -> None:
        """Stop every plugin (reverse dependency order), then close the store and release the lock."""
        if not self.opened:
            return
        self.opened = False
        self._closing = True
        starting = list(self._starting.values())  # starts in flight must not start anything after stop_all
        if self._orphans is not None and not self._orphans.done():
            starting.append(self._orphans)  # cancelled, it SIGKILLs the orphans at once
        for task in starting:
            task.cancel()
        if starting:
            await asyncio.wait(starting)
        try:
            await self.stop_all("supervisor shutting down")
            await self._stop_adopted()
        finally:
            self.logs.info("supervisor stopped", event="supervisor_stopped")
            await self._release()

    async def _release(self) -> None:
        pending = [t for t in [*self._background, self._metrics_task] if t is not None]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        self._background.clear()
        self._metrics_task = None
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.aclose()
            self._http = None
        await self.store.close()
        cgroups, self.cgroups = self.cgroups, None
        if cgroups is not None and not await asyncio.to_thread(cgroups.clear):  # still ours: the lock is held
            self.logs.warning(f"cgroup {cgroups.path} still busy, left in place", event="cgroup_failed")
        self.logs.close()
        self.lock.release()

    def _open_cgroups(self) -> str:
        """Set up cgroup tracking of plugin processes where possible; says which tracking is used."""
        fallback = "plugin processes tracked by process group, environment marker and child subreaper"
        if not self.settings.get("plugins.cgroups"):
            return f"{fallback} (cgroups off: plugins.cgroups = false)"
        self.cgroups, why = CgroupTree.open(self.owner)
        if self.cgroups is None:
            return f"{fallback} (no cgroups: {why})"
        return f"plugin processes tracked in cgroups under {self.cgroups.path}, and as child subreapers"

    async def _stop_adopted(self) -> None:
        """What plugins left behind that became this process's children (see plugins.process): killed now."""
        leftovers = adopted_children(self._descendants)
        if leftovers:
            self._report_orphans("stopping {n} process(es) plugins left behind", leftovers)
            await stop_orphans(leftovers, grace=1.0)
        reap_adopted(self._descendants)

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
        if new not in ("STOPPED", "STARTING", "STOPPING"):
            self._tried.add(plugin.key)
        changed, self._state_changed = self._state_changed, asyncio.Event()
        changed.set()
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

    def _add_runner(self, key: str, manifest: Manifest | None, error: ManifestError | None = None) -> FolderPlugin:
        runner: FolderPlugin
        if manifest is not None and manifest.module:
            runner = InProcessPlugin(key, self.inprocess_context(), manifest=manifest)
        else:
            runner = ReplicatedRunner(
                key,
                manifest,
                self._runner_context(),
                error,
                self._overrides.get(key),
                self._replica_count(key, manifest),
            )
        if manifest is not None:
            runner.desired = self._desired.get(key) or ("running" if manifest.autostart else "stopped")
            self.ports.declare_fixed(key, manifest.port)
        self.register(runner)
        return runner

    def _replica_count(self, key: str, manifest: Manifest | None) -> int | None:
        """The operator's count for ``key`` when it can still be run (a fixed port runs one), else None: the
        manifest's."""
        count = self._replicas.get(key)
        if count is None or manifest is None or (manifest.port is not None and count > 1):
            return None
        return count

    def _runner_context(self) -> RunnerContext:
        assert self._http is not None
        return RunnerContext(
            logs=self.logs,
            ports=self.ports,
            http=self._http,
            host=PLUGIN_HOST,
            supervisor_url=self._supervisor_url,
            owner=self.owner,
            default_timeout=float(self.settings.get("gateway.timeout")),
            default_max_body=int(self.settings.get("gateway.max_body")),
            on_state=self.record_state_change,
            on_health=self._on_health,
            on_spawn=self._on_spawn,
            on_exit=self._on_exit,
            descendants=self._descendants,
            cgroups=self.cgroups,
        )

    def inprocess_context(self) -> InProcessContext:
        """What in-process plugins get from this supervisor (folders here, [inprocess.*] in core.inprocess_host)."""
        return InProcessContext(
            supervisor=self,
            logs=self.logs,
            bus=self.bus,
            settings=self.inprocess_settings,
            on_state=self.record_state_change,
            on_health=self._publish_health,
            default_timeout=float(self.settings.get("gateway.timeout")),
            default_max_body=int(self.settings.get("gateway.max_body")),
            base_dir=self.settings.base_dir,
            tables=self.inprocess_tables,
        )

    def set_api_url(self, url: str) -> None:
        """The API's real URL once it listens: plugins started from now on get it as SUPERVISOR_URL."""
        self._api_url = url

    def _supervisor_url(self) -> str:
        return self._api_url or local_url(self.settings.host, self.settings.port)

    @property
    def consoles(self) -> ConsoleService | None:
        """The console service running beside this supervisor, if any (in-process plugins and the TUI read it)."""
        return self._consoles

    def attach_consoles(self, service: ConsoleService | None) -> None:
        """Make the console service that shares this supervisor's store and bus reachable as ``consoles``."""
        self._consoles = service

    def _on_health(self, runner: ProcessRunner, healthy: bool, detail: str) -> None:
        self._publish_health(runner.key, healthy, detail)

    def _publish_health(self, key: str, healthy: bool, detail: str) -> None:
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

    # -- persisted state -----------------------------------------------------------------------------------------
    async def _load_persisted(self) -> None:
        self._desired, self._overrides = await self.plugin_state.load()
        self._replicas = await self.plugin_state.load_replicas()

    async def _set_desired(self, key: str, desired: str) -> None:
        """Remember what the operator wants, in memory and in the database. A database that cannot be written
        (full disk) does not stop the action: it is logged, and ``unsaved_desired`` says a restart forgets it."""
        plugin = self.registry.get(key)
        if isinstance(plugin, ProcessRunner | InProcessPlugin):
            plugin.desired = desired
        if self._desired.get(key) == desired and key not in self._unsaved:
            return
        self._desired[key] = desired
        try:
            await self.plugin_state.save_desired(key, desired)
        except sqlite3.Error as exc:
            self._unsaved[key] = (
                f"{key} is {desired} now, but that could not be saved in the database ({exc}): "
                "a supervisor restart will not remember it"
            )
            self.logs.warning(self._unsaved[key], event="desired_state_unsaved", plugin=key, desired=desired)
        else:
            self._unsaved.pop(key, None)

    def desired_state(self, key: str) -> str | None:
        """What the operator last asked of ``key`` ("running" or "stopped", persisted), or None if never asked."""
        return self._desired.get(key)

    def unsaved_desired(self, key: str) -> str | None:
        """Why ``key``'s desired state (running or stopped) will not survive a restart, or None when it is saved."""
        return self._unsaved.get(key)

    @property
    def orphans_cleaned(self) -> bool:
        """Whether the cleanup of a previous run's processes is over (plugins may start)."""
        return self._orphans is not None and self._orphans.done()

    async def clean_orphans(self) -> None:
        """Stop what a previous run spawned (it was killed before it could stop it). Runs once; a second call
        waits for the first."""
        if self._orphans is None:
            self._orphans = asyncio.create_task(self._clean_orphans(), name="orphans")
        await asyncio.shield(self._orphans)

    async def _clean_orphans(self) -> None:
        try:
            async with self.store.reader.execute(
                "SELECT key, pid, pid_started FROM plugin_state WHERE pid IS NOT NULL"
            ) as cur:
                rows = await cur.fetchall()
            found, marked, cgroups = await asyncio.to_thread(self._find_orphans, rows)
            if rows:
                await self.store.writer.execute("UPDATE plugin_state SET pid = NULL, pid_started = NULL")
            await stop_orphans([p for procs in found.values() for p in procs] + marked)
            await asyncio.to_thread(lambda: [cgroup.clear() for cgroup in cgroups])  # SIGKILL what forked meanwhile
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # plugins start regardless; their ports tell if something still runs
            self.logs.error(f"cleaning up a previous run's processes failed: {exc!r}", event="internal_error")
            return
        for key, procs in found.items():
            self._report_orphans(f"{key}: stopped {{n}} process(es) left over from a previous run", procs, plugin=key)
        if marked:
            self._report_orphans("stopped {n} process(es) spawned by plugins of a previous run", marked)

    def _report_orphans(self, what: str, procs: list[psutil.Process], **fields: Any) -> None:
        """One ``orphans_killed`` warning: ``what`` with ``{n}`` for the count, then the pids."""
        pids = [p.pid for p in procs]
        message = f"{what.format(n=len(pids))} (pids {', '.join(map(str, pids))})"
        self.logs.warning(message, event="orphans_killed", pids=pids, **fields)

    def _find_orphans(
        self, rows: Iterable[Any]
    ) -> tuple[dict[str, list[psutil.Process]], list[psutil.Process], list[PluginCgroup]]:
        """Each plugin's leftovers by the pid recorded for it and in its cgroup of the previous run, then the
        processes that left their plugin's group and lost their parent but still carry the marker, then the
        previous run's cgroups. Blocking."""
        found: dict[str, list[psutil.Process]] = {}
        for key, pid, started in rows:
            procs = orphans_of(int(pid), float(started) if started else None)
            if procs:
                found[str(key)] = procs
        seen = {p.pid for procs in found.values() for p in procs}
        cgroups = self.cgroups.plugin_cgroups() if self.cgroups is not None else []
        for cgroup in cgroups:
            # What nothing else finds: a daemon that left the group, cleared its environment, lost its plugin.
            procs = [p for p in cgroup.members() if p.pid not in seen]
            if procs:
                found.setdefault(cgroup.key, []).extend(procs)
                seen.update(p.pid for p in procs)
        marked = [p for p in marked_processes(f"{self.owner}:", True) if p.pid not in seen]
        return found, marked, cgroups

    # -- queries -------------------------------------------------------------------------------------------------
    def plugins(self) -> list[PluginSnapshot]:
        """Every plugin's snapshot, sorted by key."""
        return [self.plugin(k) for k in sorted(self.registry)]

    def plugin(self, key: str) -> PluginSnapshot:
        """One plugin's snapshot (with the other nodes serving its key); raises PluginNotFound."""
        return with_peers(self._get(key).snapshot(), self.peers.get(key), self.node_name)

    def metrics(self, key: str) -> list[MetricsSample]:
        """The plugin's metrics history (2 s samples, the last 6 minutes); raises PluginNotFound."""
        return self._get(key).history()

    def _get(self, key: str) -> ManagedPlugin:
        plugin = self.registry.get(key)
        if plugin is None:
            raise PluginNotFound(key)
        return plugin

    def _controllable(self, key: str) -> ManagedPlugin:
        """A plugin the supervisor may start and stop (external ones run on their own)."""
        plugin = self._get(key)
        if isinstance(plugin, ExternalPlugin):
            raise PluginActionError(key, "an external plugin runs on its own: it registers and unregisters itself")
        return plugin

    def _runner(self, key: str) -> ProcessRunner:
        plugin = self._get(key)
        if not isinstance(plugin, ProcessRunner):
            raise PluginActionError(key, f"not a local process plugin (kind {plugin.kind})")
        return plugin

    def _process_runners(self) -> dict[str, FolderPlugin]:
        """Every plugin that comes from a folder: processes and in-process plugins with a manifest."""
        return {
            k: p
            for k, p in self.registry.items()
            if isinstance(p, ProcessRunner) or (isinstance(p, InProcessPlugin) and p.folder is not None)
        }

    def _should_autostart(self, runner: FolderPlugin) -> bool:
        if runner.manifest is not None:
            return autostarts(runner.key, runner.manifest, self._desired, self._disabled())
        if not isinstance(runner, InProcessPlugin):
            return False  # INVALID
        desired = self._desired.get(runner.key)  # an in-process plugin from settings
        return desired == "running" if desired else runner.autostart

    def _disabled(self) -> set[str]:
        """Keys whose ``[inprocess.<key>]`` section says ``enabled = false``."""
        return {k for k, t in self.inprocess_tables.items() if isinstance(t, Mapping) and t.get("enabled") is False}

    def should_run(self, key: str) -> bool:
        """Whether a plugin is meant to run now (autostart, or last started by the operator)."""
        plugin = self.registry.get(key)
        return isinstance(plugin, ProcessRunner | InProcessPlugin) and self._should_autostart(plugin)

    # -- actions -------------------------------------------------------------------------------------------------
    async def start_all(self) -> None:
        """Start every plugin that should run (autostart, or last started by the operator), dependencies first.

        A plugin that fails to start is logged (it shows FATAL); the others start regardless."""
        runners = self._process_runners()
        keys = [k for k in start_order(_manifests(runners)) if self._should_autostart(runners[k])]
        keys += [
            k
            for k, p in self.registry.items()
            if isinstance(p, InProcessPlugin) and k not in runners and self._should_autostart(p)
        ]
        # In-process plugins the host loaded (or failed to load) already are not tried again.
        keys = [k for k in keys if not _loaded_before(self.registry[k])]
        self._startup = set(keys)
        await self._start_many(keys, "autostart")

    def launched(self) -> bool:
        """Whether start_all has launched everything it starts: each such plugin is RUNNING or had a failed start
        (and is being retried, or gave up), or waits for a dependency that did. A crash loop does not hold it."""
        startup = self._startup
        return startup is not None and all(self._launched(key) for key in startup)

    def _launched(self, key: str) -> bool:
        if key in self._tried:
            return True
        plugin = self.registry.get(key)
        manifest = plugin.manifest if isinstance(plugin, ProcessRunner | InProcessPlugin) else None
        if manifest is None:
            return True  # removed or invalid meanwhile: nothing to wait for
        return any(self._dependency_gave_up(dep, manifest.condition(dep)) for dep in manifest.depends_on)

    def _dependency_gave_up(self, dep: str, condition: str) -> bool:
        """Whether a dependency will not let its dependent start (soon): its condition cannot be met any more,
        or it waits for RUNNING from a dependency that had a failed start."""
        plugin = self.registry.get(dep)
        if plugin is None:
            return False
        state = plugin.snapshot().state
        if state in CONDITION_FAILED[condition]:
            return True
        return condition == "healthy" and state != PluginState.RUNNING and self._launched(dep)

    async def _start_many(self, keys: Iterable[str], reason: str) -> None:
        async def one(key: str) -> None:
            try:
                await self.ensure_running(key, reason)
            except PluginActionError as exc:
                if self.registry[key].snapshot().state != PluginState.FATAL:  # FATAL was logged already
                    self.logs.error(f"{exc}", event="start_failed", plugin=key)

        await asyncio.gather(*(one(k) for k in keys))

    @operator_action("start")
    async def start(self, key: str, wait: bool = True) -> PluginSnapshot:
        """Start a plugin (its dependencies first). ``wait``: until RUNNING, else PluginActionError."""
        plugin = self._controllable(key)
        if isinstance(plugin, ProcessRunner) and plugin.manifest is None:
            raise PluginActionError(key, f"cannot start an INVALID plugin: {plugin.error}")
        await self._set_desired(key, "running")
        if wait:
            await self.ensure_running(key, "started by operator")
        else:
            self._spawn_background(self.ensure_running(key, "started by operator"), key)
        return plugin.snapshot()

    @operator_action("stop")
    async def stop(self, key: str, wait: bool = True) -> PluginSnapshot:
        """Stop a plugin; it stays stopped across supervisor restarts until started again."""
        plugin = self._controllable(key)
        await self._set_desired(key, "stopped")
        self._stop_gen[key] = self._stop_gen.get(key, 0) + 1
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
        await self._set_desired(key, "running")

        async def run() -> None:
            self._stop_gen[key] = self._stop_gen.get(key, 0) + 1
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
        runner = self._runner(key)
        if not isinstance(runner, ReplicatedRunner):
            raise PluginActionError(key, "this plugin cannot run replicas")
        runner.check_count(replicas)
        before = runner.count
        try:
            await self.plugin_state.save_replicas(key, replicas, runner.desired)
        except sqlite3.Error as exc:
            raise PluginActionError(key, f"the replica count could not be saved in the database ({exc})") from None
        self._replicas[key] = replicas
        await runner.scale(replicas)
        if before != replicas:
            self.logs.info(
                f"{key}: scaled from {before} to {replicas} replicas",
                event="plugin_scaled",
                plugin=key,
                replicas=replicas,
            )
        return runner.snapshot()

    async def stop_all(self, reason: str = "stopping all plugins") -> None:
        """Stop every plugin, dependents before their dependencies, independent ones in parallel."""
        plugins = dict(self.registry)
        runners = {k: p for k, p in plugins.items() if isinstance(p, ProcessRunner | InProcessPlugin)}
        dependents: dict[str, list[str]] = {k: [] for k in plugins}
        for key, runner in runners.items():
            if runner.manifest is not None:
                for dep in runner.manifest.depends_on:
                    if dep in dependents:
                        dependents[dep].append(key)
        tasks: dict[str, asyncio.Task[None]] = {}
        # In-process plugins from settings ([inprocess.*]) stop last, once the hooks about everything else reached them.
        last = {k for k, p in plugins.items() if isinstance(p, InProcessPlugin) and p.folder is None}

        async def stop_one(key: str) -> None:
            waits = [tasks[d] for d in dependents[key] if d in tasks]
            if key in last:
                waits = [t for k, t in tasks.items() if k not in last]
            if waits:
                await asyncio.wait(waits)
            if key in last and self.flush_hooks is not None:
                with contextlib.suppress(Exception):
                    await self.flush_hooks()
            try:
                await plugins[key].stop(reason)
            except Exception as exc:  # keep stopping the others
                self.logs.error(f"{key}: stop failed: {exc!r}", event="stop_failed", plugin=key)

        for key in plugins:
            tasks[key] = asyncio.create_task(stop_one(key))
        if tasks:
            await asyncio.wait(tasks.values())

    async def ensure_running(self, key: str, reason: str) -> None:
        """Start ``key`` after its dependencies are RUNNING; concurrent callers share one attempt."""
        plugin = self._get(key)
        if plugin.snapshot().state == PluginState.RUNNING:
            return
        if self._closing or not self.opened:
            raise PluginActionError(key, "the supervisor is shutting down")
        task = self._starting.get(key)
        if task is None:
            task = asyncio.create_task(self._start_with_deps(key, reason), name=f"start:{key}")
            self._starting[key] = task
            task.add_done_callback(self._forget_start)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and self._closing:  # close() cancelled the start, not our caller
                raise PluginActionError(key, "the supervisor is shutting down") from None
            raise

    def _forget_start(self, task: asyncio.Task[None]) -> None:
        for key, t in list(self._starting.items()):
            if t is task:
                del self._starting[key]
        if not task.cancelled():
            task.exception()  # retrieved here; every waiter got it through its shield

    async def _start_with_deps(self, key: str, reason: str) -> None:
        plugin = self._get(key)
        generation = self._stop_gen.get(key, 0)
        manifest: Manifest | None = None
        if isinstance(plugin, InProcessPlugin):
            manifest = plugin.manifest
        elif isinstance(plugin, ProcessRunner):
            if plugin.manifest is None:
                raise PluginActionError(key, f"cannot start an INVALID plugin: {plugin.error}")
            manifest = plugin.manifest
        deps = manifest.depends_on if manifest is not None else ()
        results = await asyncio.gather(
            *(self._dependency_met(key, dep, manifest.condition(dep)) for dep in deps if manifest is not None),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                message = result.message if isinstance(result, PluginActionError) else repr(result)
                if isinstance(plugin, FolderPlugin) and self._stop_gen.get(key, 0) == generation:
                    plugin.refuse_start(f"not started: {message}")
                raise PluginActionError(key, message)
        await self.clean_orphans()  # a previous run's process may still hold the port
        if self._stop_gen.get(key, 0) != generation:
            raise PluginActionError(key, "stopped while waiting for its dependencies")
        await plugin.start(reason)
        state = await plugin.wait_for()
        task = isinstance(plugin, ProcessRunner) and plugin.manifest is not None and plugin.manifest.oneshot
        if state != PluginState.RUNNING and not (task and state == PluginState.COMPLETED):
            snap = plugin.snapshot()
            raise PluginActionError(key, f"{'ended' if task else 'did not start'}: {state}: {snap.detail}")

    async def _dependency_met(self, key: str, dep: str, condition: str) -> None:
        """Wait until ``dep`` meets ``condition``, starting it when it is not running (a COMPLETED or FAILED task
        is not run again); PluginActionError naming the dependency when the condition cannot be met any more."""
        plugin = self.registry.get(dep)
        if plugin is None:
            raise PluginActionError(key, f"dependency {dep!r} is not loaded")
        start: asyncio.Task[None] | None = None
        since = time.time()
        try:
            while True:
                snap = plugin.snapshot()
                if snap.state in CONDITION_MET[condition]:
                    return
                if condition == "started" and snap.started_at is not None and snap.started_at >= since:
                    return  # it spawned its process meanwhile (and may have ended already)
                if snap.state in CONDITION_FAILED[condition]:
                    raise PluginActionError(
                        key, f"dependency {dep!r} is {snap.state} ({snap.detail}): {condition} cannot be met"
                    )
                idle = snap.state in (PluginState.STOPPED, PluginState.EXITED)
                if start is None and idle:
                    start = asyncio.create_task(self.ensure_running(dep, f"needed by {key}"), name=f"need:{dep}")
                elif start is not None and start.done() and idle:  # its start ended, and it is not running
                    failure = None if start.cancelled() else start.exception()
                    why = failure.message if isinstance(failure, PluginActionError) else repr(failure)
                    raise PluginActionError(key, f"dependency {dep!r} did not start: {why if failure else snap.state}")
                changed = asyncio.ensure_future(self._state_changed.wait())
                waits: list[asyncio.Future[Any]] = [changed] if start is None or start.done() else [changed, start]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
        finally:
            if start is not None:
                if not start.done():
                    start.cancel()
                start.add_done_callback(_retrieved)

    def _spawn_background(self, coro: Any, key: str) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.logs.error(f"{key}: {t.exception()}", event="action_failed", plugin=key)

        task.add_done_callback(done)

    def asgi_app(self, key: str) -> Any:
        """An in-process plugin's ASGI app while it is RUNNING (the gateway calls it directly), else None."""
        plugin = self.registry.get(key)
        return plugin.asgi_app if isinstance(plugin, InProcessPlugin) else None

    def report_upstream(self, key: str, ok: bool) -> None:
        """Passive health from the gateway: N failures in a row -> unhealthy, a success -> healthy again."""
        plugin = self.registry.get(key)
        if plugin is not None:
            plugin.report_upstream(ok)

    # -- reload, install, remove, config -------------------------------------------------------------------------
    async def reload(self, keep_on_error: bool = False) -> ReloadResult:
        """Re-read the plugins folder and apply the difference plugin by plugin (SIGHUP).

        ``keep_on_error`` (live reload): a running plugin whose new manifest or code cannot be loaded keeps its
        running version, and the failure is reported (listed under "failed")."""
        async with self._lifecycle:
            return await self._reload(keep_on_error)

    def _reload_failed(self, runner: FolderPlugin, reason: str) -> None:
        runner.last_error = f"reload failed: {reason}"
        self.logs.error(
            f"{runner.key}: reload failed, the running version is kept: {reason}",
            event="reload_failed",
            plugin=runner.key,
            reason=reason,
        )
        self.bus.publish(PluginFailed(name=runner.key, phase="reload", error=reason))

    async def _reload(self, keep_on_error: bool = False) -> ReloadResult:
        found = discover(self.settings.plugins_dir, skip=self._removed)
        current = self._process_runners()
        plan = plan_reload(
            [_loaded(runner) for runner in current.values()],
            found,
            taken=set(self.registry) - set(current),
            desired=self._desired,
            disabled=self._disabled(),
            keep_on_error=keep_on_error,
        )
        result: ReloadResult = {name: [] for name in OUTCOMES}
        result["invalid"] = list(plan.invalid)
        to_start: list[str] = []
        for change in plan.changes:
            outcome = await self._apply(change, current.get(change.key))
            result[outcome].append(change.key)
            if change.start and outcome != "failed":
                to_start.append(change.key)
        self.logs.info(
            "reloaded plugins: "
            + ", ".join(f"{name} {','.join(keys) or '-'}" for name, keys in result.items() if name != "unchanged")
            + f"; {len(result['unchanged'])} unchanged",
            event="reload",
            **{name: keys for name, keys in result.items()},
        )
        await self._start_many(to_start, "loaded by reload")
        return result

    async def _apply(self, change: Change, runner: FolderPlugin | None) -> str:
        """Execute one planned change; returns its outcome ("failed" when a new version did not import)."""
        key, action = change.key, change.action
        if action is Action.LOAD:
            self._add_runner(key, change.manifest, change.error)
            if change.error is not None:
                err = change.error
                self.logs.error(f"{key}: INVALID: {err}", event="plugin_invalid", plugin=key, reason=str(err))
            return change.outcome
        assert runner is not None
        if action is Action.KEEP_RUNNING:
            self._reload_failed(runner, str(change.error))
            return change.outcome
        if change.prepare and isinstance(runner, InProcessPlugin) and change.manifest is not None:
            try:  # import the new version while the old one runs: a broken one never replaces it
                await runner.prepare(change.manifest)
            except PluginActionError as exc:
                self._reload_failed(runner, exc.message)
                return "failed"
        if change.stop:
            await runner.stop(change.stop)
        if action is Action.UNLOAD:
            self.ports.declare_fixed(key, None)
            self.unregister(key, change.stop)
        elif action is Action.INVALIDATE:
            runner.replace_manifest(None, change.error)
            self.ports.declare_fixed(key, None)
        elif action is Action.REPLACE:
            self.unregister(key, change.stop)
            self._add_runner(key, change.manifest)
        elif action is Action.UPDATE and change.manifest is not None:
            runner.replace_manifest(change.manifest)
            self.ports.declare_fixed(key, change.manifest.port)
            count = self._replica_count(key, change.manifest) or change.manifest.replicas
            if isinstance(runner, ReplicatedRunner) and runner.count != count:
                try:
                    await runner.scale(count, "replicas changed in the manifest")
                except PluginActionError as exc:
                    self._reload_failed(runner, exc.message)
        return change.outcome

    @operator_action("install", install_key)
    async def install(self, manifest: dict[str, Any], autostart: bool) -> PluginSnapshot:
        """Validate ``manifest``, write plugins/<key>/manifest.json, load it, start it when ``autostart``.

        ManifestError on bad input and PluginActionError for an existing key; nothing is written then."""
        if not isinstance(manifest, dict):
            raise ManifestError("", "manifest", "must be a JSON object")
        raw_key = manifest.get("key", manifest.get("id"))
        folder_name = raw_key if isinstance(raw_key, str) and raw_key else "<key>"
        path = self.settings.plugins_dir / folder_name / MANIFEST_FILE
        parsed = parse_manifest(manifest, path)
        key = parsed.key
        async with self._lifecycle:
            if key in self.registry:
                raise PluginActionError(key, "a plugin with this key already exists")
            folder = self.settings.plugins_dir / key
            if folder.exists():
                raise PluginActionError(key, f"folder {folder} already exists (remove it or use another key)")
            runners = self._process_runners()
            graph = {**_manifests(runners), key: parsed}
            others = set(self.registry) - set(runners)
            problems = check_graph(graph, others)
            if key in problems:
                raise problems[key]
            data = {("key" if k == "id" else k): v for k, v in manifest.items()}
            try:
                folder.mkdir(parents=True)
                tmp = folder / (MANIFEST_FILE + ".tmp")
                tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
                tmp.replace(folder / MANIFEST_FILE)
            except OSError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise PluginActionError(key, f"cannot write {folder / MANIFEST_FILE}: {exc.strerror}") from None
            self._removed.discard(key)
            runner = self._add_runner(key, parsed)
            await self._set_desired(key, "running" if autostart else "stopped")
            self.logs.info(f"{key}: installed in {folder}", event="plugin_installed", plugin=key)
        if autostart:
            try:
                await self.ensure_running(key, "installed")
            except PluginActionError as exc:
                self.logs.error(str(exc), event="start_failed", plugin=key)
        return runner.snapshot()

    @operator_action("remove")
    async def remove(self, key: str, purge: bool = False) -> None:
        """Stop and unload a plugin; its folder is deleted only with ``purge``.

        Without purge the folder stays and a reload does not bring the plugin back (a supervisor restart shows it
        again, stopped). Refused while other plugins depend on it."""
        async with self._lifecycle:
            plugin = self._get(key)
            dependents = sorted(
                k
                for k, r in self._process_runners().items()
                if r.manifest is not None and key in r.manifest.depends_on and k != key
            )
            if dependents:
                raise PluginActionError(key, f"{', '.join(dependents)} depend on it: remove those first")
            self._stop_gen[key] = self._stop_gen.get(key, 0) + 1
            await plugin.stop("removed by operator")
            folder: Path | None = None
            if isinstance(plugin, ProcessRunner | InProcessPlugin):
                if plugin.manifest is not None:
                    folder = plugin.manifest.folder
                elif plugin.error is not None and plugin.error.path:
                    folder = Path(plugin.error.path).parent
            self.ports.declare_fixed(key, None)
            self.unregister(key, "removed by operator")
            if purge:
                if folder is not None and _inside(folder, self.settings.plugins_dir):
                    try:
                        shutil.rmtree(folder)
                    except OSError as exc:
                        raise PluginActionError(key, f"unloaded, but cannot delete {folder}: {exc.strerror}") from None
                await self.plugin_state.forget(key)
                self._desired.pop(key, None)
                self._replicas.pop(key, None)
                self._overrides.pop(key, None)
            else:
                await self._set_desired(key, "stopped")
                self._removed.add(key)
            self.logs.info(
                f"{key}: removed" + (f" and {folder} deleted" if purge and folder else ""),
                event="plugin_removed",
                plugin=key,
            )

    @operator_action("set_config")
    async def set_config(self, key: str, env: dict[str, str]) -> PluginSnapshot:
        """Set a plugin's environment overrides (persisted, merged over the manifest's env) and restart it."""
        runner = self._runner(key)
        path = runner.manifest.path if runner.manifest else (runner.error.path if runner.error else "")
        try:
            parsed = parse_env(env)
        except ValueError as exc:
            raise ManifestError(path, "env", str(exc)) from None
        if runner.manifest is None:
            raise PluginActionError(key, f"cannot configure an INVALID plugin: {runner.error}")
        await self.plugin_state.save_overrides(key, parsed)
        self._overrides[key] = parsed
        runner.env_overrides = dict(parsed)
        self.logs.info(
            f"{key}: environment overrides set ({', '.join(sorted(parsed)) or 'none'})",
            event="plugin_config",
            plugin=key,
        )
        if runner.active or runner.state == PluginState.RUNNING:
            self._stop_gen[key] = self._stop_gen.get(key, 0) + 1
            await runner.stop("configuration changed")
            await self.ensure_running(key, "restarted with new configuration")
        return runner.snapshot()

    # -- external plugins (the registration protocol over HTTP) ----------------------------------------------------
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
        plugin = self.external.parse(payload, lost_after=lost_after, source=source, node=node, base_path=base_path)
        existing = self.registry.get(plugin.key)
        if existing is not None and existing.kind != ExternalPlugin.kind:
            raise PluginActionError(plugin.key, f"the key is used by a {existing.kind} plugin and cannot be taken over")
        old = existing.snapshot().state if existing is not None else str(PluginState.STOPPED)
        if existing is not None:
            self.unregister(plugin.key, "re-registered")
        if lost:
            plugin.set_state(PluginState.LOST, lost)
        plugin.on_health = lambda p, healthy, detail: self._publish_health(p.key, healthy, detail)
        self.register(plugin)
        reason = lost or f"registered from {plugin.upstream}" + (f" over {source}" if source != "http" else "")
        self.record_state_change(plugin, old, str(plugin.state), reason)
        return plugin.snapshot()

    def heartbeat_external(self, key: str) -> PluginSnapshot:
        """An external plugin is alive; a LOST one is RUNNING again."""
        plugin = self._external(key)
        plugin.last_heartbeat = time.time()
        if plugin.state == PluginState.LOST:
            plugin.set_state(PluginState.RUNNING, "heartbeat received")
            self.record_state_change(plugin, str(PluginState.LOST), str(PluginState.RUNNING), "heartbeat received")
        return plugin.snapshot()

    async def unregister_external(self, key: str) -> None:
        """An external plugin leaves: it is dropped with its routes."""
        plugin = self._external(key)
        old = str(plugin.state)
        plugin.set_state(PluginState.STOPPED, "unregistered")
        self.record_state_change(plugin, old, str(PluginState.STOPPED), "unregistered")
        self.unregister(key, "unregistered")

    # -- peers: other fleet nodes serving a key ------------------------------------------------------------------
    async def add_peer(
        self, payload: dict[str, Any], node: str, base_path: str, lost_after: float, lost: str = ""
    ) -> PluginSnapshot:
        """Node ``node`` serves ``payload``'s key at its gateway: one more upstream of the key's route (a key
        nothing here serves becomes a PeerPlugin). ``lost``: known, not heard from yet (restored after a restart).
        Raises like ``register_external`` (the allowlist applies to the node's gateway too)."""
        parsed = self.external.parse(payload, lost_after=lost_after, source="redis", node=node, base_path=base_path)
        peers = self.peers.setdefault(parsed.key, {})
        peers[node] = Peer(node, parsed.upstream, lost_after, time.time(), up=not lost, detail=lost or "announced")
        existing = self.registry.get(parsed.key)
        if existing is None:
            plugin = PeerPlugin(parsed, peers)
            self.register(plugin)
            self.record_state_change(plugin, str(PluginState.STOPPED), str(plugin.state), plugin.detail)
        else:
            self._peers_changed(parsed.key, node, not lost)
        return self.plugin(parsed.key)

    def heartbeat_peer(self, key: str, node: str) -> None:
        """Node ``node`` still serves ``key``; raises PluginNotFound when it never said it does."""
        peer = self.peers.get(key, {}).get(node)
        if peer is None:
            raise PluginNotFound(key)
        peer.last_heartbeat = time.time()
        if not peer.up:
            peer.up, peer.detail = True, "heartbeat received"
            self._peers_changed(key, node, True)

    def remove_peer(self, key: str, node: str) -> bool:
        """Node ``node`` no longer serves ``key``; False when it did not."""
        peers = self.peers.get(key, {})
        if peers.pop(node, None) is None:
            return False
        if not peers:
            del self.peers[key]
        plugin = self.registry.get(key)
        if isinstance(plugin, PeerPlugin) and not peers:
            plugin.set_state(PluginState.STOPPED, "no node serves it any more")
            self.record_state_change(plugin, str(PluginState.RUNNING), str(PluginState.STOPPED), plugin.detail)
            self.unregister(key, "unregistered by its nodes")
        else:
            self._peers_changed(key, node, False)
        return True

    def _peers_changed(self, key: str, node: str, up: bool) -> None:
        plugin = self.registry.get(key)
        if isinstance(plugin, PeerPlugin):
            changed = plugin.follow_peers()
            if changed is not None:
                self.record_state_change(plugin, changed[0], changed[1], plugin.detail)
        self.bus.publish(PluginPeersChanged(key=key, node=node, up=up))

    def _sweep_peers(self, now: float) -> None:
        for key, peers in list(self.peers.items()):
            for peer in list(peers.values()):
                if peer.up and now >= peer.deadline:
                    peer.up = False
                    peer.detail = f"no heartbeat for {now - peer.last_heartbeat:.0f}s (LOST after {peer.lost_after:g}s)"
                    self._peers_changed(key, peer.node, False)

    def _external(self, key: str) -> ExternalPlugin:
        plugin = self._get(key)
        if not isinstance(plugin, ExternalPlugin):
            raise PluginActionError(key, f"not an external plugin (kind {plugin.kind})")
        return plugin

    def sweep_external(self, now: float | None = None) -> list[str]:
        """Mark LOST every external plugin whose heartbeats stopped (2 x its interval); returns their keys."""
        now = time.time() if now is None else now
        lost = []
        for plugin in list(self.registry.values()):
            if isinstance(plugin, ExternalPlugin) and plugin.state == PluginState.RUNNING and now >= plugin.deadline:
                silent = now - plugin.last_heartbeat
                plugin.set_state(
                    PluginState.LOST, f"no heartbeat for {silent:.0f}s (LOST after {plugin.lost_after:g}s)"
                )
                self.record_state_change(plugin, str(PluginState.RUNNING), str(PluginState.LOST), plugin.detail)
                lost.append(plugin.key)
        self._sweep_peers(now)
        return lost

    async def _watch_external(self) -> None:
        while True:
            await asyncio.sleep(EXTERNAL_SWEEP_INTERVAL)
            self.sweep_external()

    # -- metrics -------------------------------------------------------------------------------------------------
    async def _sample_metrics(self) -> None:
        while True:
            await asyncio.sleep(sample_interval(len(self._process_runners())))
            for runner in list(self._process_runners().values()):
                try:
                    sample = runner.sample()
                except Exception as exc:  # psutil surprises must not stop sampling
                    self.logs.warning(f"{runner.key}: metrics sample failed: {exc!r}", plugin=runner.key)
                    continue
                if sample is not None:
                    self.bus.publish(sample)
            busy: set[int] = set()
            for r in self._process_runners().values():
                if isinstance(r, ReplicatedRunner):
                    busy |= r.pids
                elif isinstance(r, ProcessRunner) and r.pid:
                    busy.add(r.pid)
            reap_adopted(self._descendants, busy=busy)


def _retrieved(task: asyncio.Task[Any]) -> None:
    """A task whose outcome was read through another path (or does not matter): its exception is retrieved."""
    if not task.cancelled():
        task.exception()


def owner_id(data_dir: Path) -> str:
    """The identity of the supervisor of ``data_dir`` in its plugins' environment marker and cgroup names."""
    return hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]


def _loaded_before(plugin: ManagedPlugin) -> bool:
    return isinstance(plugin, InProcessPlugin) and plugin.counters["loads"] + plugin.counters["load_failures"] > 0


def _loaded(runner: FolderPlugin) -> Loaded:
    """What the reload planner needs to know about a folder plugin."""
    return Loaded(
        key=runner.key,
        inprocess=isinstance(runner, InProcessPlugin),
        manifest=runner.manifest,
        error=str(runner.error) if runner.manifest is None else "",
        up=runner.active or runner.state == PluginState.RUNNING,
        source_changed=isinstance(runner, InProcessPlugin) and runner.manifest is not None and runner.source_changed(),
    )


def _manifests(runners: dict[str, FolderPlugin]) -> dict[str, Manifest]:
    return {k: r.manifest for k, r in runners.items() if r.manifest is not None}


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return path.resolve() != parent.resolve()
