"""The in-process plugin host: loads those plugins, feeds them lifecycle hooks, and watches the event loop for them.

    host = InProcessHost(sup)        # after sup.open(): registers the [inprocess.<name>] sections
    result = await host.load()       # before plugins start: batches of 3, timeouts; LoadResult(loaded, failed)
    ...
    await host.begin_shutdown()      # on_shutdown hooks, then sup.close() shuts every plugin down
    await host.close()

Loading never raises: a plugin that cannot be imported, refuses its configuration or does not initialize in
time is FATAL with the reason, listed in ``LoadResult.failed``, logged and announced (``plugin.load_failed``).
Hooks come from the event bus (plugin and console events, operator actions); each plugin receives them in
order from its own queue, so one slow plugin never delays another. A thread watches the event loop: when it
stalls longer than ``block_threshold`` inside plugin code, the plugin and the hook (or call) are named.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from supervisor_tui.core.events import (
    ConsoleHeartbeats,
    ConsoleRegistered,
    ConsoleStateChanged,
    Event,
    OperatorAction,
    PluginHealthChanged,
    PluginRegistered,
    PluginReloadFailed,
    PluginStateChanged,
    PluginUnregistered,
    plugin_failed,
)
from supervisor_tui.plugins.inprocess import InProcessPlugin
from supervisor_tui.plugins.manifest import KEY_PATTERN, MODULE_PATTERN

if TYPE_CHECKING:
    from supervisor_tui.core.supervisor import Supervisor

HOOK_TOPICS = ("plugin", "console", "operator")
# The loop's heartbeat (and the watchdog thread's look at it) comes this many times per block_threshold: often
# enough to name a stall soon after the threshold, rarely enough to cost nothing measurable while idle.
BEATS_PER_THRESHOLD = 4
IDLE_WATCH_INTERVAL = 1.0  # the watchdog thread's look while no in-process plugin is registered


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """A plugin that did not load: which, in which phase, why."""

    name: str
    phase: str
    error: str


@dataclass
class LoadResult:
    """What ``InProcessHost.load()`` did: keys loaded, and failures with their reasons."""

    loaded: list[str] = field(default_factory=list)
    failed: list[LoadFailure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"loaded": list(self.loaded), "failed": [asdict(f) for f in self.failed]}


def hooks_for(event: Event) -> list[tuple[str, tuple[Any, ...]]]:
    """The hook calls one bus event stands for (the plugin interface's hooks mapped onto this product)."""
    if isinstance(event, PluginStateChanged):
        calls: list[tuple[str, tuple[Any, ...]]] = [
            ("on_plugin_state_changed", (event.key, event.from_state, event.to_state, event.reason))
        ]
        to = event.to_state
        if to == "RUNNING":
            calls.append(("on_plugin_started", (event.key, event.reason)))
        elif to == "STOPPED" and event.from_state not in ("INVALID", "STARTING", "STOPPED"):
            calls.append(("on_plugin_stopped", (event.key, event.reason)))
        elif to == "EXITED" or (to == "BACKOFF" and event.from_state == "STARTING"):
            calls.append(("on_plugin_crashed", (event.key, event.reason)))
        elif to == "FATAL":
            calls.append(("on_plugin_fatal", (event.key, event.reason)))
        return calls
    if isinstance(event, PluginHealthChanged):
        return [("on_plugin_health_changed", (event.key, event.healthy, event.detail))]
    if isinstance(event, PluginRegistered):
        return [("on_plugin_registered", (event.key, event.kind))]
    if isinstance(event, PluginUnregistered):
        return [("on_plugin_unregistered", (event.key, event.reason))]
    if isinstance(event, ConsoleRegistered):
        return [("on_console_registered", (event.console_id, event.name, event.state))]
    if isinstance(event, ConsoleStateChanged):
        calls = [("on_console_state_changed", (event.console_id, event.from_state, event.to_state, event.reason))]
        if event.to_state == "inactive":
            calls.append(("on_console_inactive", (event.console_id, event.at)))
        return calls
    if isinstance(event, ConsoleHeartbeats):
        return [("on_console_heartbeat", (event.count, tuple(event.console_ids)))]
    if isinstance(event, OperatorAction):
        calls = [("on_operator_action", (event.to_dict(),))]
        if not event.ok:
            context = {"key": event.key, "origin": event.origin, "actor": event.actor}
            calls.append(("on_operation_failed", (event.action, event.detail, context)))
        return calls
    if isinstance(event, PluginReloadFailed):
        return [("on_operation_failed", ("reload", event.error, {"key": event.name}))]
    return []


class InProcessHost:
    """Loads in-process plugins in batches, dispatches hooks to them and reports what blocks the loop."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.settings = sup.inprocess_settings
        self.result = LoadResult()
        self.config_failures: list[LoadFailure] = []
        self.loop_blocks: list[dict[str, Any]] = []  # the last few stalls: who, what, how long
        self._subscription = sup.bus.subscribe(HOOK_TOPICS, maxsize=50_000)
        self._dispatcher: asyncio.Task[None] | None = None
        self._beat_task: asyncio.Task[None] | None = None
        self._watchdog: threading.Thread | None = None
        self._stop_watchdog = threading.Event()
        self._beat = time.monotonic()
        self._beat_interval = max(0.02, self.settings.block_threshold / BEATS_PER_THRESHOLD)
        self._stall: tuple[float, str, str] | None = None  # (since, plugin key, what) seen by the watchdog
        self._loop_thread = threading.get_ident()
        sup.flush_hooks = self.flush
        for problem in sup.inprocess.problems:
            sup.logs.error(f"settings: {problem}", event="inprocess_settings_invalid")
        if sup.inprocess.deprecated:
            sup.logs.warning(
                sup.inprocess.deprecation_warning(), event="deprecated_name", names=sup.inprocess.deprecated
            )
        self._register_configured()

    # -- configuration -------------------------------------------------------------------------------------
    def _register_configured(self) -> None:
        """One InProcessPlugin per ``[inprocess.<name>]`` section that names a module."""
        sup = self.sup
        for name, table in sup.inprocess_tables.items():
            if not isinstance(table, Mapping):
                continue  # a scalar key of [inprocess] itself (load_timeout, ...)
            if "module" not in table:
                if name not in sup.registry:
                    self._config_failure(name, f"[inprocess.{name}] names no module and no plugin folder {name!r}")
                continue  # settings for a folder plugin (config, enabled)
            module = table.get("module")
            enabled = table.get("enabled", True)
            config = table.get("config", {})
            problem = ""
            if not KEY_PATTERN.match(name):
                problem = f"the name must match {KEY_PATTERN.pattern}"
            elif not isinstance(module, str) or not MODULE_PATTERN.match(module):
                problem = f'module must look like "package.module:Class", got {module!r}'
            elif not isinstance(enabled, bool):
                problem = f"enabled must be true or false, got {enabled!r}"
            elif not isinstance(config, Mapping):
                problem = "config must be a table"
            elif name in sup.registry:
                problem = f"a plugin with the key {name!r} already exists ({sup.registry[name].kind})"
            if problem:
                self._config_failure(name, problem)
                if KEY_PATTERN.match(name) and name not in sup.registry:
                    plugin = InProcessPlugin(
                        name, sup.inprocess_context(), module=str(module), error=f"[inprocess.{name}]: {problem}"
                    )
                    sup.register(plugin)
                continue
            plugin = InProcessPlugin(
                name, sup.inprocess_context(), module=str(module), config=dict(config), enabled=bool(enabled)
            )
            sup.register(plugin)
            desired = sup.desired_state(name)
            plugin.desired = desired or ("running" if enabled else "stopped")

    def _config_failure(self, name: str, problem: str) -> None:
        self.config_failures.append(LoadFailure(name, "configuration", problem))
        self.sup.logs.error(
            f"in-process plugin {name}: {problem}", event="inprocess_plugin_failed", plugin=name, phase="config"
        )
        self.sup.bus.publish(plugin_failed(name, "configuration", problem))

    def plugins(self) -> list[InProcessPlugin]:
        return [p for p in self.sup.registry.values() if isinstance(p, InProcessPlugin)]

    # -- loading -------------------------------------------------------------------------------------------
    async def load(self) -> LoadResult:
        """Load every in-process plugin meant to run, ``batch_size`` (3) at a time; never raises."""
        self.start()
        result = LoadResult(failed=list(self.config_failures))
        todo = sorted(p.key for p in self.plugins() if p.state != "INVALID" and self.sup.should_run(p.key))
        size = self.settings.batch_size
        for i in range(0, len(todo), size):
            batch = todo[i : i + size]
            await asyncio.gather(*(self._load_one(key, result) for key in batch))
        self.result = result
        self.sup.logs.info(
            f"in-process plugins: {len(result.loaded)} loaded, {len(result.failed)} failed"
            + "".join(f"; {f.name}: {f.phase}: {f.error}" for f in result.failed),
            event="inprocess_plugins_loaded",
            loaded=result.loaded,
            failed=[f.name for f in result.failed],
        )
        return result

    async def _load_one(self, key: str, result: LoadResult) -> None:
        plugin = self.sup.registry.get(key)
        try:
            await self.sup.ensure_running(key, "loaded at startup")
        except Exception as exc:  # the reason is on the plugin (FATAL) or in the exception
            reason = getattr(exc, "message", None) or str(exc)
            if isinstance(plugin, InProcessPlugin) and plugin.last_error:
                phase, _, reason = plugin.last_error.partition(": ")
                result.failed.append(LoadFailure(key, phase, reason))
            else:
                result.failed.append(LoadFailure(key, "start", reason))
            return
        result.loaded.append(key)
        if isinstance(plugin, InProcessPlugin):
            # Plugins found when the supervisor opened were registered before this one could hear it.
            for other in sorted(self.sup.registry):
                if other != key:
                    plugin.deliver("on_plugin_registered", (other, self.sup.registry[other].kind))

    # -- hooks ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start dispatching hooks and watching the loop (``load`` does it too)."""
        if self._dispatcher is not None:
            return
        self._loop_thread = threading.get_ident()
        self._loop = asyncio.get_running_loop()
        self._beat_now = asyncio.Event()  # set (from the watchdog) when there is something to watch again
        self._dispatcher = asyncio.create_task(self._dispatch(), name="inprocess-hooks")
        self._beat_task = asyncio.create_task(self._heartbeat(), name="inprocess-watchdog")
        self._watchdog = threading.Thread(target=self._watch, name="inprocess-watchdog", daemon=True)
        self._watchdog.start()

    async def _dispatch(self) -> None:
        sub = self._subscription
        while not sub.closed:
            for event in await sub.get_batch():
                self._deliver(event)

    def _deliver(self, event: Event) -> None:
        # A change made through another supervisor of the fleet reaches every plugin except those that act for
        # the whole fleet once (webhook alerts): the node that made the change calls them.
        remote = getattr(event, "remote", False)
        for hook, args in hooks_for(event):
            for plugin in self.plugins():
                if remote and getattr(plugin.instance, "once_per_fleet", False):
                    continue
                plugin.deliver(hook, args)

    async def flush(self) -> None:
        """Deliver the events still waiting in the subscription, then wait for the running plugins' hooks."""
        for event in self._subscription.get_nowait():
            self._deliver(event)
        running = [p for p in self.plugins() if p.state == "RUNNING"]
        if running:
            await asyncio.gather(*(p.drain_hooks(self.settings.hook_timeout) for p in running))

    async def begin_shutdown(self) -> None:
        """Call every running plugin's ``on_shutdown`` hook and wait for the queued hooks (``hook_timeout``)."""
        plugins = [p for p in self.plugins() if p.state == "RUNNING"]
        for plugin in plugins:
            plugin.deliver("on_shutdown", ())
        if plugins:
            await asyncio.gather(*(p.drain_hooks(self.settings.hook_timeout) for p in plugins))

    async def close(self) -> None:
        """Stop dispatching and watching (the plugins themselves are stopped by the supervisor)."""
        self._subscription.close()
        self._stop_watchdog.set()
        tasks = [t for t in (self._dispatcher, self._beat_task) if t is not None]
        self._dispatcher = self._beat_task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._watchdog is not None:
            self._watchdog.join(1.0)
            self._watchdog = None

    # -- the loop watchdog ---------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Beats every ``_beat_interval``; after a stall the watchdog saw, reports it once the loop is back."""
        while True:
            self._beat = time.monotonic()
            stall, self._stall = self._stall, None
            if stall is not None:
                since, key, what = stall
                self._report_block(key, what, time.monotonic() - since)
            # No in-process plugin: nothing to name in a stall, so beat once a second (the watchdog wakes it when
            # one registers) instead of 4 times per block_threshold, which was most of an idle supervisor's wake-ups.
            interval = self._beat_interval if self.plugins() else IDLE_WATCH_INTERVAL
            self._beat_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), interval)

    def _watch(self) -> None:
        """Watchdog thread: when the loop has not beaten for ``block_threshold``, find plugin code on its stack."""
        threshold = self.settings.block_threshold
        interval = self._beat_interval
        while not self._stop_watchdog.wait(interval):
            # Only plugin code on the loop's stack is reported: with no in-process plugin there is nothing to find,
            # so look once a second (the loop's own beat goes on, so a stall is still measured from its start).
            try:
                watching = bool(self.plugins())
            except RuntimeError:  # the loop changed the registry while we read it
                watching = True
            if watching and interval == IDLE_WATCH_INTERVAL:  # a plugin registered: the loop beats often again first
                interval = self._beat_interval
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    self._loop.call_soon_threadsafe(self._beat_now.set)
                continue
            interval = self._beat_interval if watching else IDLE_WATCH_INTERVAL
            stalled_since = self._beat
            if time.monotonic() - stalled_since < threshold or self._stall is not None:
                continue
            try:  # the loop may resume (and change the registry) while we look: try again next time
                frame = sys._current_frames().get(self._loop_thread)
                culprit = _plugin_on_stack(frame, list(self.plugins()))
            except Exception:
                continue
            if culprit is not None:
                self._stall = (stalled_since, *culprit)

    def _report_block(self, key: str, what: str, seconds: float) -> None:
        plugin = self.sup.registry.get(key)
        message = f"blocked the event loop for {seconds:.1f}s in {what}"
        if isinstance(plugin, InProcessPlugin):
            plugin.counters["loop_blocks"] += 1
            plugin.record_failure(what if what.startswith("hook") else f"call {what}", message)
        self.loop_blocks = [*self.loop_blocks[-19:], {"plugin": key, "what": what, "seconds": round(seconds, 3)}]

    # -- views ---------------------------------------------------------------------------------------------
    async def describe(self) -> dict[str, Any]:
        """Everything the API shows: last load result, settings, and each plugin's counters and status."""
        plugins = []
        for plugin in sorted(self.plugins(), key=lambda p: p.key):
            plugins.append(
                {
                    "key": plugin.key,
                    "module": plugin.module,
                    "source": plugin.source,
                    "state": str(plugin.state),
                    "detail": plugin.detail,
                    "last_error": plugin.last_error,
                    "counters": dict(plugin.counters),
                    "status": await plugin.status() if plugin.state == "RUNNING" else {},
                }
            )
        return {
            **self.result.to_dict(),
            "settings": asdict(self.settings),
            "plugins": plugins,
            "loop_blocks": list(self.loop_blocks),
        }


def _plugin_on_stack(frame: FrameType | None, plugins: list[InProcessPlugin]) -> tuple[str, str] | None:
    """The innermost call into plugin code on a stack: (plugin key, what) from InProcessPlugin.call_plugin's frame,
    or a frame in a plugin folder's files (its routes, its own tasks)."""
    call_code = InProcessPlugin.call_plugin.__code__
    folders = {str(p.folder): p.key for p in plugins if p.folder is not None}
    for p in plugins:  # an in-process plugin configured in settings: its class's own file
        cls = p.plugin_class if p.folder is None else None
        source = None
        with contextlib.suppress(TypeError):
            source = inspect.getsourcefile(cls) if cls is not None else None
        if source:
            folders[source] = p.key
    found: tuple[str, str] | None = None
    while frame is not None:
        if frame.f_code is call_code:
            owner = frame.f_locals.get("self")
            what = str(frame.f_locals.get("what", "?"))
            if isinstance(owner, InProcessPlugin):
                return owner.key, (f"hook {what}" if what.startswith("on_") else what)
        if found is None:
            filename = frame.f_code.co_filename
            for folder, key in folders.items():
                if filename.startswith(folder):
                    found = (key, f"{frame.f_code.co_name} ({filename.rsplit('/', 1)[-1]}:{frame.f_lineno})")
                    break
        frame = frame.f_back
    return found
