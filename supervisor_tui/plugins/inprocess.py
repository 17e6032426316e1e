"""In-process plugins: Python classes that run inside the supervisor (``PluginInterface``: metadata, lifecycle, hooks).

A plugin folder whose manifest names ``"module": "plugin:StatsPlugin"`` (or an ``[inprocess.<name>]`` section of
the settings naming ``module = "package.module:Class"``) becomes an ``InProcessPlugin``: a ManagedPlugin of kind
``inprocess`` with the usual states. Start = import (once per version), construct, ``validate_configuration``
(only when the class defines it) and ``initialize(supervisor, config)``, under ``load_timeout`` (twice that when
the import is part of it); stop = ``shutdown()`` under ``shutdown_timeout``. A failure makes the plugin FATAL
with the reason and never reaches the supervisor or the other plugins.

Lifecycle hooks (``on_plugin_started`` ...) are delivered one at a time per plugin from a bounded queue, each
under ``hook_timeout``; a hook that raises or takes too long is logged, counted and shown as the plugin's
last error, and the next hook runs as usual.

The parts live beside it: ``inprocess_interface`` (what a plugin implements; re-exported here, where plugin authors
import ``PluginInterface`` from), ``inprocess_loading`` (import, construct, endpoints), ``inprocess_hooks`` (the
hook queue) and ``inprocess_settings`` (the ``[inprocess]`` section).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor_tui.core.events import EventBus, InProcessPluginLoaded, plugin_failed
from supervisor_tui.core.logs import LogHub
from supervisor_tui.plugins.inprocess_hooks import HookQueue
from supervisor_tui.plugins.inprocess_interface import HOOKS, PluginInterface
from supervisor_tui.plugins.inprocess_loading import (
    ImportedVersion,
    LoadError,
    construct,
    describe_error,
    endpoints_of,
    folder_fingerprint,
    forget_versions,
    import_version,
    routes_of,
)
from supervisor_tui.plugins.inprocess_settings import InProcessSettings
from supervisor_tui.plugins.manifest import Endpoint, Manifest, ManifestError, dependencies
from supervisor_tui.plugins.model import PluginActionError, PluginSnapshot, PluginState
from supervisor_tui.plugins.no_process import RunsNoProcess

__all__ = ["HOOKS", "KIND", "InProcessContext", "InProcessPlugin", "PluginInterface", "endpoints_of"]

S = PluginState
KIND = "inprocess"


@dataclass
class InProcessContext:
    """What an in-process plugin needs from the supervisor that owns it."""

    supervisor: Any  # handed to initialize(); plugins use its public API
    logs: LogHub
    bus: EventBus
    settings: InProcessSettings
    on_state: Callable[[InProcessPlugin, str, str, str], None]
    on_health: Callable[[str, bool, str], None]
    default_timeout: float
    default_max_body: int
    base_dir: Path  # where relative module files of in-process plugins configured in settings are found
    tables: Mapping[str, Any] = field(default_factory=dict)  # [inprocess.<name>] sections


class InProcessPlugin(RunsNoProcess):
    """A Python plugin running in the supervisor's event loop (a ManagedPlugin of kind ``inprocess``)."""

    kind = KIND
    runs_elsewhere = False

    def __init__(
        self,
        key: str,
        ctx: InProcessContext,
        *,
        manifest: Manifest | None = None,
        module: str | None = None,
        config: Mapping[str, Any] | None = None,
        enabled: bool = True,
        error: ManifestError | str | None = None,
    ) -> None:
        self.key = key
        self.ctx = ctx
        self.manifest = manifest
        self.folder: Path | None = manifest.folder if manifest is not None else None
        self.error: ManifestError | None = error if isinstance(error, ManifestError) else None
        self.module = manifest.module if manifest is not None and manifest.module else (module or "")
        self._config = dict(config or {})
        self.enabled = enabled
        self.desired = "stopped"
        self.source = "folder" if manifest is not None else "settings"
        self.state: PluginState = S.STOPPED if error is None else S.INVALID
        self.detail = str(error) if error else ""
        self.last_error = str(error) if error else ""
        self.started_at: float | None = None
        self.restarts = 0
        self.healthy: bool | None = None
        self.health_detail = ""
        self.instance: Any = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("loads", "load_failures", "hook_calls", "hook_errors", "hook_timeouts", "hooks_dropped", "loop_blocks"),
            0,
        )
        self.endpoints: tuple[Endpoint, ...] = manifest.endpoints if manifest is not None else ()
        self._version: ImportedVersion | None = None
        self._seen: tuple[tuple[str, int, int], ...] | None = None  # the files as last imported (even if it failed)
        self._pending: tuple[Manifest, ImportedVersion] | None = None  # imported by prepare(), used by the next start
        self._previous: tuple[Manifest | None, ImportedVersion | None] | None = None  # kept running if a reload fails
        self._task: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._hooks = HookQueue(ctx.settings.hook_queue, self.counters)
        self._changed = asyncio.Event()
        self._stop_lock = asyncio.Lock()

    # -- configuration -------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The manifest's ``config`` (or the settings' one), with ``[inprocess.<key>].config`` on top."""
        base = dict(self.manifest.config) if self.manifest is not None else dict(self._config)
        table = self.ctx.tables.get(self.key)
        if self.manifest is not None and isinstance(table, Mapping) and "module" not in table:
            extra = table.get("config")
            if isinstance(extra, Mapping):
                base.update(extra)
        return base

    @property
    def autostart(self) -> bool:
        if self.manifest is not None:
            table = self.ctx.tables.get(self.key)
            if isinstance(table, Mapping) and table.get("enabled") is False:
                return False
            return self.manifest.autostart
        return self.enabled

    @property
    def stops_last(self) -> bool:
        """One from settings stops after every other plugin, once the hooks about them reached it."""
        return self.folder is None

    @property
    def tried_by_host(self) -> bool:
        """The in-process plugin host loaded it already, or failed to: start_all does not try it again."""
        return self.counters["loads"] + self.counters["load_failures"] > 0

    # -- views ---------------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True while a start is in progress."""
        return self._task is not None and not self._task.done()

    @property
    def asgi_app(self) -> Any:
        """The plugin's ASGI app while RUNNING (the gateway calls it directly), else None."""
        if self.state != S.RUNNING or self.instance is None:
            return None
        return routes_of(self.instance)

    @property
    def plugin_class(self) -> type | None:
        """The class of the imported version (None before the first import)."""
        return self._version.cls if self._version is not None else None

    def snapshot(self) -> PluginSnapshot:
        m = self.manifest
        cls = self.plugin_class
        name = (m.name if m is not None and m.name != self.key else "") or getattr(cls, "name", "") or self.key
        version = (m.version if m is not None and m.version != "0.0.0" else "") or getattr(cls, "version", "")
        description = (m.description if m is not None else "") or getattr(cls, "description", "") or ""
        return PluginSnapshot(
            key=self.key,
            name=str(name),
            version=str(version or "0.0.0"),
            description=str(description) or f"in-process plugin {self.module}",
            kind=self.kind,
            state=self.state,
            detail=self.detail,
            pid=None,
            host=None,
            port=None,
            upstream=None,
            started_at=self.started_at,
            restarts=self.restarts,
            healthy=self.healthy,
            health_detail=self.health_detail,
            last_error=self.last_error,
            endpoints=self.endpoints,
            autostart=self.autostart,
            desired=self.desired,
            timeout=(m.timeout if m is not None and m.timeout is not None else self.ctx.default_timeout),
            max_body=(m.max_body if m is not None and m.max_body is not None else self.ctx.default_max_body),
            last_metrics=None,
            manifest_path=str(m.path) if m is not None else None,
            group=m.group if m is not None else None,
            depends_on=dependencies(m) if m is not None else (),
        )

    async def wait_for(self, states: set[PluginState] | None = None, timeout: float | None = None) -> PluginState:  # noqa: ASYNC109
        """Wait until the state is one of ``states`` (default: settled: RUNNING, or no start in progress)."""

        def settled() -> bool:
            return self.state in states if states is not None else (self.state == S.RUNNING or not self.active)

        async def wait() -> None:
            while not settled():
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)
        return self.state

    def refuse_start(self, reason: str) -> None:
        """A start that did not happen (a dependency's condition cannot be met): STOPPED, saying why."""
        if not self.active and self.state != S.INVALID:
            self.last_error = reason
            self._set(S.STOPPED, reason)

    def report_upstream(self, ok: bool, detail: str = "") -> None:
        """The gateway saw the plugin's app fail (or answer again)."""
        if not ok:
            self.last_error = detail or "its routes raised an error"

    def source_changed(self) -> bool:
        """True when the Python files of a folder plugin differ from the imported version."""
        if self.folder is None or self._seen is None:
            return False
        return folder_fingerprint(self.folder) != self._seen

    # -- state ---------------------------------------------------------------------------------------------
    def _set(self, state: PluginState, reason: str) -> None:
        old = self.state
        self.state, self.detail = state, reason
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        try:
            self.ctx.on_state(self, str(old), str(state), reason)
        except Exception as exc:  # a broken listener must not break the plugin
            self.ctx.logs.error(f"{self.key}: state listener failed: {exc!r}", event="internal_error", plugin=self.key)

    def record_failure(self, phase: str, message: str) -> None:
        """Record a failure of the plugin's code: logged, counted, shown, and on the bus."""
        self.last_error = f"{phase}: {message}"
        self.ctx.logs.error(
            f"{self.key}: {phase} failed: {message}", event="inprocess_plugin_failed", plugin=self.key, phase=phase
        )
        self.ctx.bus.publish(plugin_failed(self.key, phase, message))

    def replace_manifest(self, manifest: Manifest | None, error: ManifestError | None = None) -> None:
        """Swap in a new manifest (the caller stops and starts); the running version is kept to fall back on."""
        self._previous = (self.manifest, self._version)
        self.manifest, self.error = manifest, error
        if manifest is None:
            self.last_error = str(error) if error else ""
            self._set(S.INVALID, str(error) if error else "manifest rejected")
            return
        self.folder = manifest.folder
        self.module = manifest.module or self.module
        self.endpoints = manifest.endpoints
        pending, self._pending = self._pending, None
        self._version = pending[1] if pending is not None and pending[0] == manifest else None
        if self.state == S.INVALID:
            self.last_error = ""
            self._set(S.STOPPED, "manifest is valid again")

    async def prepare(self, manifest: Manifest) -> None:
        """Import a new version (manifest or source changed) while the old one keeps running.

        Raises PluginActionError with the reason when it cannot be imported; nothing changes then."""
        try:
            version = await asyncio.wait_for(self._import(manifest.module or "", manifest.folder), self._budget(2))
        except TimeoutError:
            raise PluginActionError(self.key, f"import did not finish within {self._budget(2):g}s") from None
        except LoadError as exc:
            raise PluginActionError(self.key, f"{exc.phase}: {exc.message}") from None
        self._pending = (manifest, version)

    def _budget(self, factor: int = 1) -> float:
        return self.ctx.settings.load_timeout * factor

    # -- actions -------------------------------------------------------------------------------------------
    async def start(self, reason: str = "started by operator") -> None:
        """Begin loading (returns once STARTING); a no-op while starting or RUNNING."""
        if self.state == S.INVALID:
            raise PluginActionError(self.key, f"cannot start an INVALID plugin: {self.detail}")
        async with self._stop_lock:  # a stop in progress finishes first
            pass
        if self.active or self.state == S.RUNNING:
            return
        self._set(S.STARTING, reason)
        self._task = asyncio.create_task(self._start(reason), name=f"inprocess:{self.key}")

    async def _start(self, reason: str) -> None:
        try:
            await self._load_and_initialize()
        except LoadError as exc:
            previous, self._previous = self._previous, None
            if previous is not None and previous[1] is not None:
                # A reload that fails keeps the old version: start it again and say why.
                self.record_failure("reload", f"{exc.phase}: {exc.message}; the previous version runs again")
                self.manifest, self._version = previous
                if self.manifest is not None:
                    self.endpoints = self.manifest.endpoints
                try:
                    await self._load_and_initialize()
                except LoadError as again:
                    exc = again
                else:
                    self.last_error = f"reload failed: {exc.phase}: {exc.message}"
                    self._running(reason)
                    return
            self.counters["load_failures"] += 1
            self.record_failure(exc.phase, exc.message)
            self.instance = None
            self._set(S.FATAL, f"{exc.phase} failed: {exc.message}")
            return
        self._previous = None
        self._running(reason)

    def _running(self, reason: str) -> None:
        self.counters["loads"] += 1
        self.started_at = time.time()
        self.healthy, self.health_detail = None, ""
        self._worker = asyncio.create_task(self._hooks.run(self._run_hook), name=f"hooks:{self.key}")
        self._status_task = asyncio.create_task(self._status_loop(), name=f"status:{self.key}")
        self._set(S.RUNNING, reason)
        self.ctx.logs.info(f"{self.key}: loaded {self.module}", event="inprocess_plugin_loaded", plugin=self.key)
        self.ctx.bus.publish(InProcessPluginLoaded(name=self.key))

    async def _load_and_initialize(self) -> None:
        """Import (when needed), construct, validate and initialize, each step under its share of the budget."""
        started = time.monotonic()
        budget = self._budget(1)
        if self._version is None:
            budget = self._budget(2)  # import plus initialize get twice the load timeout
            try:
                self._version = await asyncio.wait_for(self._import(self.module, self.folder), budget)
            except TimeoutError:
                raise LoadError("import", f"did not finish within {budget:g}s") from None

        def left() -> float:
            return max(budget - (time.monotonic() - started), 0.001)

        cls = self._version.cls
        config = self.config
        try:
            instance = construct(cls, config)
        except Exception as exc:
            raise LoadError("construct", describe_error(exc)) from None
        validate = getattr(instance, "validate_configuration", None)
        if callable(validate):
            try:
                ok = await asyncio.wait_for(self.call_plugin("validate_configuration", validate, config), left())
            except TimeoutError:
                raise LoadError("validate_configuration", f"did not finish within {budget:g}s") from None
            except Exception as exc:
                raise LoadError("validate_configuration", describe_error(exc)) from None
            if ok is False:
                raise LoadError("validate_configuration", "the configuration was refused")
        try:
            await asyncio.wait_for(
                self.call_plugin("initialize", instance.initialize, self.ctx.supervisor, config), left()
            )
        except TimeoutError:
            await self._shutdown_quietly(instance)
            raise LoadError("initialize", f"did not finish within {budget:g}s") from None
        except Exception as exc:
            await self._shutdown_quietly(instance)
            raise LoadError("initialize", describe_error(exc)) from None
        routes = routes_of(instance)
        if routes is not None and not (self.manifest is not None and self.manifest.endpoints):
            self.endpoints = endpoints_of(routes)
        self.instance = instance

    async def _shutdown_quietly(self, instance: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call_plugin("shutdown", instance.shutdown), self.ctx.settings.shutdown_timeout)

    async def _import(self, module: str, folder: Path | None) -> ImportedVersion:
        self._seen = folder_fingerprint(folder) if folder is not None else None  # even if the import fails
        return await import_version(self.key, module, folder)

    async def stop(self, reason: str = "stopped by operator") -> None:
        """Cancel a start in progress, or call ``shutdown()`` (under ``shutdown_timeout``); then STOPPED."""
        async with self._stop_lock:
            task, self._task = self._task, None
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
                if self.instance is None and self.state == S.STARTING:
                    self._set(S.STOPPED, reason)
                    return
            if self.state != S.RUNNING:
                return
            self._set(S.STOPPING, reason)
            await self._stop_background()
            instance, self.instance = self.instance, None
            timeout = self.ctx.settings.shutdown_timeout
            try:
                await asyncio.wait_for(self.call_plugin("shutdown", instance.shutdown), timeout)
            except TimeoutError:
                self.record_failure("shutdown", f"did not finish within {timeout:g}s")
            except Exception as exc:
                self.record_failure("shutdown", describe_error(exc))
            self.healthy, self.health_detail = None, ""
            self._set(S.STOPPED, reason)
            self._forget_old_versions()

    def _forget_old_versions(self) -> None:
        keep = {self._version.package if self._version else None}
        if self._pending is not None:
            keep.add(self._pending[1].package)
        forget_versions(self.key, keep)

    async def _stop_background(self) -> None:
        tasks = [t for t in (self._worker, self._status_task) if t is not None and not t.done()]
        self._worker = self._status_task = None
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._hooks.clear()

    # -- hooks ---------------------------------------------------------------------------------------------
    def wants(self, hook: str) -> bool:
        return self.state == S.RUNNING and callable(getattr(self.instance, hook, None))

    def deliver(self, hook: str, args: tuple[Any, ...]) -> None:
        """Queue one hook call (when the plugin runs and defines it); see HookQueue for coalescing and bounds."""
        if self.wants(hook):
            self._hooks.put(hook, args)

    async def drain_hooks(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every queued hook ran (or ``timeout``)."""
        await self._hooks.drained(timeout)

    async def _run_hook(self, hook: str, args: tuple[Any, ...]) -> None:
        fn = getattr(self.instance, hook, None)
        if not callable(fn):
            return
        timeout = self.ctx.settings.hook_timeout
        self.counters["hook_calls"] += 1
        try:
            await asyncio.wait_for(self.call_plugin(hook, fn, *args), timeout)
        except TimeoutError:
            self.counters["hook_timeouts"] += 1
            self.record_failure(f"hook {hook}", f"did not finish within {timeout:g}s (cancelled)")
        except Exception as exc:  # CancelledError is no Exception: a stop still cancels the worker
            self.counters["hook_errors"] += 1
            self.record_failure(f"hook {hook}", describe_error(exc))

    async def call_plugin(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Every call into plugin code goes through here: the loop watchdog finds ``what`` on the stack."""
        result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def status(self) -> dict[str, Any]:
        """The plugin's ``get_status()`` (an error is reported as ``{"error": ...}``)."""
        if self.instance is None:
            return {}
        try:
            result = await asyncio.wait_for(
                self.call_plugin("get_status", self.instance.get_status), self.ctx.settings.hook_timeout
            )
        except TimeoutError:
            return {"error": f"get_status did not finish within {self.ctx.settings.hook_timeout:g}s"}
        except Exception as exc:
            return {"error": describe_error(exc)}
        return dict(result) if isinstance(result, Mapping) else {"status": result}

    async def _status_loop(self) -> None:
        """Health from get_status(): ``healthy: false`` or an error flips it (and the health hooks follow)."""
        while True:
            status = await self.status()
            healthy = "error" not in status and status.get("healthy", True) is not False
            detail = str(status.get("error") or status.get("detail") or ("ok" if healthy else "reported unhealthy"))
            if healthy != self.healthy:
                self.healthy, self.health_detail = healthy, f"get_status: {detail}"
                if not healthy:
                    self.last_error = f"unhealthy: {detail}"
                self.ctx.on_health(self.key, healthy, self.health_detail)
            await asyncio.sleep(self.ctx.settings.status_interval)
