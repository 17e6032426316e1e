"""In-process plugins: Python classes that run inside the supervisor (``PluginInterface``: metadata, lifecycle, hooks).

A plugin folder whose manifest names ``"module": "plugin:StatsPlugin"`` (or an ``[extensions.<name>]`` section of
the settings naming ``module = "package.module:Class"``) becomes an ``InProcessPlugin``: a ManagedPlugin of kind
``inprocess`` with the usual states. Start = import (once per version), construct, ``validate_configuration``
(only when the class defines it) and ``initialize(supervisor, config)``, under ``load_timeout`` (twice that when
the import is part of it); stop = ``shutdown()`` under ``shutdown_timeout``. A failure makes the plugin FATAL
with the reason and never reaches the supervisor or the other plugins.

Lifecycle hooks (``on_plugin_started`` ...) are delivered one at a time per plugin from a bounded queue, each
under ``hook_timeout``; a hook that raises or takes too long is logged, counted and shown as the plugin's
last error, and the next hook runs as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import itertools
import re
import sys
import time
import types
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor_tui.config import parse_duration
from supervisor_tui.core.events import EventBus, ExtensionFailed, ExtensionLoaded, MetricsSample
from supervisor_tui.core.logs import LogHub
from supervisor_tui.plugins.manifest import Endpoint, Manifest, ManifestError, dependencies
from supervisor_tui.plugins.model import PluginActionError, PluginSnapshot, PluginState

S = PluginState
KIND = "inprocess"

# Every hook a plugin may define (all optional), in the words of docs/plugins.md.
HOOKS = (
    "on_plugin_registered",  # (key, kind)
    "on_plugin_unregistered",  # (key, reason)
    "on_plugin_state_changed",  # (key, from_state, to_state, reason)
    "on_plugin_started",  # (key, reason)
    "on_plugin_stopped",  # (key, reason)
    "on_plugin_crashed",  # (key, reason)
    "on_plugin_fatal",  # (key, reason)
    "on_plugin_health_changed",  # (key, healthy, detail)
    "on_console_registered",  # (console_id, name, state)
    "on_console_state_changed",  # (console_id, from_state, to_state, reason)
    "on_console_inactive",  # (console_id, since)
    "on_console_heartbeat",  # (count, console_ids) - coalesced
    "on_operator_action",  # (action: dict) - who did what, from where
    "on_operation_failed",  # (operation, error, context)
    "on_shutdown",  # () - the supervisor is shutting down
)
COALESCED_HOOK = "on_console_heartbeat"
_gen = itertools.count(1)


class PluginInterface:
    """Base class of in-process plugins: name, version, ``initialize``, ``shutdown``, ``get_status``.

    Optional: ``validate_configuration(config)`` (raise to refuse), ``get_routes()`` or a ``routes`` attribute
    (an ASGI app served under ``/api/plugins/<key>/``) and any of the hooks in ``HOOKS``."""

    name: str = ""
    version: str = "0.0.0"
    description: str = ""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config: dict[str, Any] = dict(config or {})
        self.supervisor: Any = None

    async def initialize(self, supervisor: Any, config: Mapping[str, Any]) -> None:
        """Called on start with the Supervisor and the plugin's configuration."""
        self.supervisor = supervisor
        self.config = dict(config)

    async def shutdown(self) -> None:
        """Called on stop: release what initialize took."""

    def get_status(self) -> dict[str, Any]:
        """What the plugin wants operators to see; ``{"healthy": False, ...}`` marks it unhealthy."""
        return {}


@dataclass(frozen=True)
class ExtensionSettings:
    """The ``[extensions]`` table's own keys (everything else in it is one in-process plugin per sub-table)."""

    load_timeout: float = 30.0
    shutdown_timeout: float = 15.0
    hook_timeout: float = 10.0
    block_threshold: float = 0.5  # the event loop stalled this long inside plugin code is reported
    batch_size: int = 3
    hook_queue: int = 1000
    status_interval: float = 10.0

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> tuple[ExtensionSettings, list[str]]:
        """Parse the scalar keys of ``[extensions]``; bad values are reported and replaced by defaults."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for name in ("load_timeout", "shutdown_timeout", "hook_timeout", "block_threshold", "status_interval"):
            if name in table:
                try:
                    seconds = parse_duration(table[name])
                    if seconds <= 0:
                        raise ValueError
                    values[name] = seconds
                except ValueError:
                    problems.append(f"extensions.{name}: expected a positive duration like '30s', got {table[name]!r}")
        for name in ("batch_size", "hook_queue"):
            if name in table:
                value = table[name]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    problems.append(f"extensions.{name}: expected a positive integer, got {value!r}")
                else:
                    values[name] = value
        return cls(**values), problems


@dataclass
class InProcessContext:
    """What an in-process plugin needs from the supervisor that owns it."""

    supervisor: Any  # handed to initialize(); plugins use its public API
    logs: LogHub
    bus: EventBus
    settings: ExtensionSettings
    on_state: Callable[[InProcessPlugin, str, str, str], None]
    on_health: Callable[[str, bool, str], None]
    default_timeout: float
    default_max_body: int
    base_dir: Path  # where relative module files of in-process plugins configured in settings are found
    tables: Mapping[str, Any] = field(default_factory=dict)  # [extensions.<name>] sections


class _LoadError(Exception):
    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase, self.message = phase, message


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class _Version:
    """One imported version of a plugin's code."""

    cls: type
    package: str | None  # the synthetic package of a folder plugin (dropped from sys.modules when replaced)
    fingerprint: tuple[tuple[str, int, int], ...]


class InProcessPlugin:
    """A Python plugin running in the supervisor's event loop (a ManagedPlugin of kind ``inprocess``)."""

    kind = KIND

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
        self._version: _Version | None = None
        self._seen: tuple[tuple[str, int, int], ...] | None = None  # the files as last imported (even if it failed)
        self._pending: tuple[Manifest, _Version] | None = None  # imported by prepare(), used by the next start
        self._previous: tuple[Manifest | None, _Version | None] | None = None  # kept running if a reload fails
        self._task: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._hooks: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._hook_wake = asyncio.Event()
        self._hooks_idle = asyncio.Event()
        self._hooks_idle.set()
        self._changed = asyncio.Event()
        self._stop_lock = asyncio.Lock()

    # -- configuration -------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The manifest's ``config`` (or the settings' one), with ``[extensions.<key>].config`` on top."""
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
        return _routes_of(self.instance)

    def snapshot(self) -> PluginSnapshot:
        m = self.manifest
        cls = self._version.cls if self._version is not None else None
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

    def history(self) -> list[MetricsSample]:
        return []

    def sample(self) -> MetricsSample | None:
        return None  # it shares the supervisor's process: no tree of its own to sample

    def source_changed(self) -> bool:
        """True when the Python files of a folder plugin differ from the imported version."""
        if self.folder is None or self._seen is None:
            return False
        return _fingerprint(self.folder) != self._seen

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

    def _failed(self, phase: str, message: str) -> None:
        """Record a failure of the plugin's code: logged, counted, shown, and on the bus."""
        self.last_error = f"{phase}: {message}"
        self.ctx.logs.error(
            f"{self.key}: {phase} failed: {message}", event="extension_failed", plugin=self.key, phase=phase
        )
        self.ctx.bus.publish(ExtensionFailed(name=self.key, phase=phase, error=message))

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
        except _LoadError as exc:
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
        except _LoadError as exc:
            previous, self._previous = self._previous, None
            if previous is not None and previous[1] is not None:
                # A reload that fails keeps the old version: start it again and say why.
                self._failed("reload", f"{exc.phase}: {exc.message}; the previous version runs again")
                self.manifest, self._version = previous
                if self.manifest is not None:
                    self.endpoints = self.manifest.endpoints
                try:
                    await self._load_and_initialize()
                except _LoadError as again:
                    exc = again
                else:
                    self.last_error = f"reload failed: {exc.phase}: {exc.message}"
                    self._running(reason)
                    return
            self.counters["load_failures"] += 1
            self._failed(exc.phase, exc.message)
            self.instance = None
            self._set(S.FATAL, f"{exc.phase} failed: {exc.message}")
            return
        self._previous = None
        self._running(reason)

    def _running(self, reason: str) -> None:
        self.counters["loads"] += 1
        self.started_at = time.time()
        self.healthy, self.health_detail = None, ""
        self._worker = asyncio.create_task(self._hook_worker(), name=f"hooks:{self.key}")
        self._status_task = asyncio.create_task(self._status_loop(), name=f"status:{self.key}")
        self._set(S.RUNNING, reason)
        self.ctx.logs.info(f"{self.key}: loaded {self.module}", event="extension_loaded", plugin=self.key)
        self.ctx.bus.publish(ExtensionLoaded(name=self.key))

    async def _load_and_initialize(self) -> None:
        """Import (when needed), construct, validate and initialize, each step under its share of the budget."""
        started = time.monotonic()
        budget = self._budget(1)
        if self._version is None:
            budget = self._budget(2)  # import plus initialize get twice the load timeout
            try:
                self._version = await asyncio.wait_for(self._import(self.module, self.folder), budget)
            except TimeoutError:
                raise _LoadError("import", f"did not finish within {budget:g}s") from None

        def left() -> float:
            return max(budget - (time.monotonic() - started), 0.001)

        cls = self._version.cls
        config = self.config
        try:
            instance = _construct(cls, config)
        except Exception as exc:
            raise _LoadError("construct", _describe(exc)) from None
        validate = getattr(instance, "validate_configuration", None)
        if callable(validate):
            try:
                ok = await asyncio.wait_for(self._call("validate_configuration", validate, config), left())
            except TimeoutError:
                raise _LoadError("validate_configuration", f"did not finish within {budget:g}s") from None
            except Exception as exc:
                raise _LoadError("validate_configuration", _describe(exc)) from None
            if ok is False:
                raise _LoadError("validate_configuration", "the configuration was refused")
        try:
            await asyncio.wait_for(self._call("initialize", instance.initialize, self.ctx.supervisor, config), left())
        except TimeoutError:
            await self._shutdown_quietly(instance)
            raise _LoadError("initialize", f"did not finish within {budget:g}s") from None
        except Exception as exc:
            await self._shutdown_quietly(instance)
            raise _LoadError("initialize", _describe(exc)) from None
        routes = _routes_of(instance)
        if routes is not None and not (self.manifest is not None and self.manifest.endpoints):
            self.endpoints = endpoints_of(routes)
        self.instance = instance

    async def _shutdown_quietly(self, instance: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._call("shutdown", instance.shutdown), self.ctx.settings.shutdown_timeout)

    async def _import(self, module: str, folder: Path | None) -> _Version:
        """Import ``module`` ("path.to.module:Class") in a thread, so a slow import cannot stall the loop."""
        if ":" not in module:
            raise _LoadError("import", f"module must look like 'module:Class', got {module!r}")
        module_name, class_name = module.split(":", 1)
        package = f"_supervisor_plugin_{re.sub(r'[^a-zA-Z0-9_]', '_', self.key)}_{next(_gen)}" if folder else None
        fingerprint = _fingerprint(folder) if folder is not None else ()
        self._seen = fingerprint if folder is not None else None
        try:
            loaded = await asyncio.to_thread(_import_module, module_name, folder, package)
        except Exception as exc:
            if package is not None:
                _forget_package(package)
            raise _LoadError("import", f"cannot import {module_name!r}: {_describe(exc)}") from None
        cls = getattr(loaded, class_name, None)
        if not isinstance(cls, type):
            raise _LoadError("import", f"{module_name!r} has no class {class_name!r}")
        for required in ("initialize", "shutdown", "get_status"):
            if not callable(getattr(cls, required, None)):
                raise _LoadError("interface", f"{class_name} must implement {required}() (see PluginInterface)")
        return _Version(cls=cls, package=package, fingerprint=fingerprint)

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
                await asyncio.wait_for(self._call("shutdown", instance.shutdown), timeout)
            except TimeoutError:
                self._failed("shutdown", f"did not finish within {timeout:g}s")
            except Exception as exc:
                self._failed("shutdown", _describe(exc))
            self.healthy, self.health_detail = None, ""
            self._set(S.STOPPED, reason)
            self._forget_old_versions()

    def _forget_old_versions(self) -> None:
        keep = {self._version.package if self._version else None}
        if self._pending is not None:
            keep.add(self._pending[1].package)
        for name in list(sys.modules):
            if name.startswith(f"_supervisor_plugin_{re.sub(r'[^a-zA-Z0-9_]', '_', self.key)}_"):
                if name.split(".", 1)[0] not in keep:
                    sys.modules.pop(name, None)

    async def _stop_background(self) -> None:
        tasks = [t for t in (self._worker, self._status_task) if t is not None and not t.done()]
        self._worker = self._status_task = None
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._hooks.clear()
        self._hooks_idle.set()

    # -- hooks ---------------------------------------------------------------------------------------------
    def wants(self, hook: str) -> bool:
        return self.state == S.RUNNING and callable(getattr(self.instance, hook, None))

    def deliver(self, hook: str, args: tuple[Any, ...]) -> None:
        """Queue one hook call; heartbeats coalesce with a queued one, a full queue drops the oldest call."""
        if not self.wants(hook):
            return
        if hook == COALESCED_HOOK and self._hooks and self._hooks[-1][0] == COALESCED_HOOK:
            count, ids = self._hooks[-1][1]
            self._hooks[-1] = (hook, (count + args[0], tuple(dict.fromkeys((*ids, *args[1])))))
        else:
            if len(self._hooks) >= self.ctx.settings.hook_queue:
                self._hooks.popleft()
                self.counters["hooks_dropped"] += 1
            self._hooks.append((hook, args))
        self._hooks_idle.clear()
        self._hook_wake.set()

    async def drain_hooks(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every queued hook ran (or ``timeout``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hooks_idle.wait(), timeout)

    async def _hook_worker(self) -> None:
        timeout = self.ctx.settings.hook_timeout
        while True:
            if not self._hooks:
                self._hooks_idle.set()
                self._hook_wake.clear()
                await self._hook_wake.wait()
                continue
            hook, args = self._hooks.popleft()
            fn = getattr(self.instance, hook, None)
            if not callable(fn):
                continue
            self.counters["hook_calls"] += 1
            try:
                await asyncio.wait_for(self._call(hook, fn, *args), timeout)
            except TimeoutError:
                self.counters["hook_timeouts"] += 1
                self._failed(f"hook {hook}", f"did not finish within {timeout:g}s (cancelled)")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counters["hook_errors"] += 1
                self._failed(f"hook {hook}", _describe(exc))

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
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
                self._call("get_status", self.instance.get_status), self.ctx.settings.hook_timeout
            )
        except TimeoutError:
            return {"error": f"get_status did not finish within {self.ctx.settings.hook_timeout:g}s"}
        except Exception as exc:
            return {"error": _describe(exc)}
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


def _construct(cls: type, config: Mapping[str, Any]) -> Any:
    """``cls(config)`` when the constructor takes it (the plugin interface's constructor), else ``cls()``."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    takes = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params.values())
    return cls(dict(config)) if takes else cls()


def _import_module(module_name: str, folder: Path | None, package: str | None) -> types.ModuleType:
    """Import a folder plugin's module inside a fresh synthetic package (so every version is imported anew and
    relative imports between its files work); other modules are imported by their dotted name."""
    if folder is None or package is None:
        return importlib.import_module(module_name)
    pkg = types.ModuleType(package)
    pkg.__path__ = [str(folder)]
    pkg.__file__ = str(folder / "__init__.py")
    sys.modules[package] = pkg
    importlib.invalidate_caches()
    return importlib.import_module(f"{package}.{module_name}")


def _forget_package(package: str) -> None:
    for name in list(sys.modules):
        if name == package or name.startswith(package + "."):
            sys.modules.pop(name, None)


def _fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    with contextlib.suppress(OSError):
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            with contextlib.suppress(OSError):
                st = path.stat()
                out.append((str(path.relative_to(folder)), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _routes_of(instance: Any) -> Any:
    getter = getattr(instance, "get_routes", None)
    if callable(getter):
        with contextlib.suppress(Exception):
            return getter()
        return None
    routes = getattr(instance, "routes", None)
    return routes if callable(routes) else None


_CONVERTER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[^}]*\}")


def endpoints_of(app: Any) -> tuple[Endpoint, ...]:
    """The endpoints a Starlette app or router exposes (``Route`` objects with methods; mounts are skipped)."""
    out: list[Endpoint] = []
    seen: set[tuple[str, str]] = set()
    for route in getattr(app, "routes", None) or ():
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if not isinstance(path, str) or not methods:
            continue
        path = _CONVERTER.sub(r"{\1}", path) or "/"
        doc = inspect.getdoc(getattr(route, "endpoint", None)) or ""
        for method in sorted(m for m in methods if m != "HEAD"):
            if (method, path) not in seen:
                seen.add((method, path))
                out.append(Endpoint(method, path, doc.splitlines()[0] if doc else ""))
    return tuple(out)
