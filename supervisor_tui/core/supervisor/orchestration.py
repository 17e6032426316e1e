"""Starting and stopping plugins in dependency order: the one path every start goes through.

``ensure_running`` starts a plugin once its ``depends_on`` conditions are met (starting what it needs first);
concurrent callers share one attempt. ``start_many`` is what starts without an operator waiting (start_all, a
reload, an install): failures are logged, the others start regardless. ``stop_all`` stops dependents before
their dependencies. A stop bumps the key's generation, so a start that waited for dependencies meanwhile does
not start what was just stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.supervisor.managed import ManagedPlugin, manifests, rejected
from supervisor_tui.core.supervisor.memory import PluginMemory
from supervisor_tui.core.supervisor.process_tracking import ProcessTracking
from supervisor_tui.core.supervisor.registry import PluginRegistry
from supervisor_tui.plugins.manifest import start_order
from supervisor_tui.plugins.model import PluginActionError, PluginState

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


class Orchestrator:
    """Starts plugins after their dependencies and stops them before; knows what start_all has launched.

    ``memory`` gives the operator's desired states, ``tracking`` the orphan cleanup every start waits for."""

    def __init__(self, registry: PluginRegistry, memory: PluginMemory, tracking: ProcessTracking, logs: LogHub) -> None:
        self.registry = registry
        self.memory = memory
        self.tracking = tracking
        self.logs = logs
        self.accepting = False  # starts are taken between the supervisor's open and close
        self.closing = False  # set by cancel_starts: nothing starts any more
        # Set by the in-process plugin host: delivers pending hooks (stop_all calls it before stopping those plugins).
        self.flush_hooks: Callable[[], Awaitable[None]] | None = None
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._state_changed = asyncio.Event()  # set (and replaced) at every state change of any plugin
        self._startup: set[str] | None = None  # what start_all starts (None until it is called)
        self._tried: set[str] = set()  # plugins whose start had an outcome since open (RUNNING or a failure)
        self._stop_gen: dict[str, int] = {}

    def state_changed(self, key: str, new: str) -> None:
        """Every state change of every plugin comes through here (waiting dependents look again)."""
        if new not in ("STOPPED", "STARTING", "STOPPING"):
            self._tried.add(key)
        changed, self._state_changed = self._state_changed, asyncio.Event()
        changed.set()

    def stop_requested(self, key: str) -> None:
        """``key`` is being stopped: a start of it waiting for its dependencies gives up."""
        self._stop_gen[key] = self._stop_gen.get(key, 0) + 1

    async def cancel_starts(self) -> None:
        """The supervisor closes: starts in flight are cancelled (and awaited), no new one begins."""
        self.closing = True
        starting = list(self._starting.values())
        cleanup = self.tracking.cleanup_in_flight()
        if cleanup is not None:
            starting.append(cleanup)  # cancelled, it SIGKILLs the orphans at once
        for task in starting:
            task.cancel()
        if starting:
            await asyncio.wait(starting)

    # -- what should run -----------------------------------------------------------------------------------------
    async def set_desired(self, key: str, desired: str) -> None:
        """Remember what the operator wants of ``key`` (in memory and in the database) without acting on it."""
        plugin = self.registry.get(key)
        if plugin is not None:
            plugin.desired = desired
        await self.memory.set_desired(key, desired)

    def should_autostart(self, plugin: ManagedPlugin) -> bool:
        """The operator's last start or stop first, else the plugin's own ``autostart`` (for a folder plugin the
        rule of reload_plan.autostarts); never a plugin that runs elsewhere or whose manifest was rejected."""
        if plugin.runs_elsewhere or rejected(plugin):
            return False
        desired = self.memory.desired.get(plugin.key)
        return desired == "running" if desired else plugin.autostart

    async def start_all(self) -> None:
        """Start every plugin that should run, dependencies first (see Supervisor.start_all)."""
        registry = self.registry
        runners = registry.from_folders
        keys = [k for k in start_order(manifests(runners)) if self.should_autostart(runners[k])]
        # Then those from no folder (in-process plugins from settings); externals never autostart.
        keys += [k for k, p in registry.items() if k not in runners and self.should_autostart(p)]
        # In-process plugins the host loaded (or failed to load) already are not tried again.
        keys = [k for k in keys if not registry[k].tried_by_host]
        self._startup = set(keys)
        await self.start_many(keys, "autostart")

    def launched(self) -> bool:
        """Whether start_all has launched everything it starts (see Supervisor.launched)."""
        startup = self._startup
        return startup is not None and all(self._launched(key) for key in startup)

    def _launched(self, key: str) -> bool:
        if key in self._tried:
            return True
        plugin = self.registry.get(key)
        manifest = plugin.manifest if plugin is not None else None
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

    # -- starting ------------------------------------------------------------------------------------------------
    async def start_many(self, keys: Iterable[str], reason: str) -> None:
        """Start ``keys`` with nobody waiting for the outcome: each failure is logged, the others start anyway."""

        async def one(key: str) -> None:
            try:
                await self.ensure_running(key, reason)
            except PluginActionError as exc:
                if self.registry[key].snapshot().state != PluginState.FATAL:  # FATAL was logged already
                    self.logs.error(f"{exc}", event="start_failed", plugin=key)

        await asyncio.gather(*(one(k) for k in keys))

    async def ensure_running(self, key: str, reason: str) -> None:
        """Start ``key`` after its dependencies are RUNNING; concurrent callers share one attempt."""
        plugin = self.registry.require(key)
        if plugin.snapshot().state == PluginState.RUNNING:
            return
        if self.closing or not self.accepting:
            raise PluginActionError(key, "the supervisor is shutting down")
        task = self._starting.get(key)
        if task is None:
            task = asyncio.create_task(self._start_with_deps(key, reason), name=f"start:{key}")
            self._starting[key] = task
            task.add_done_callback(self._forget_start)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and self.closing:  # close() cancelled the start, not our caller
                raise PluginActionError(key, "the supervisor is shutting down") from None
            raise

    def _forget_start(self, task: asyncio.Task[None]) -> None:
        for key, t in list(self._starting.items()):
            if t is task:
                del self._starting[key]
        if not task.cancelled():
            task.exception()  # retrieved here; every waiter got it through its shield

    async def _start_with_deps(self, key: str, reason: str) -> None:
        plugin = self.registry.require(key)
        generation = self._stop_gen.get(key, 0)
        manifest = plugin.manifest
        if rejected(plugin):
            raise PluginActionError(key, f"cannot start an INVALID plugin: {plugin.error}")
        deps = manifest.depends_on if manifest is not None else ()
        results = await asyncio.gather(
            *(self._dependency_met(key, dep, manifest.condition(dep)) for dep in deps if manifest is not None),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                message = result.message if isinstance(result, PluginActionError) else repr(result)
                if self._stop_gen.get(key, 0) == generation:
                    plugin.refuse_start(f"not started: {message}")
                raise PluginActionError(key, message)
        await self.tracking.clean_orphans()  # a previous run's process may still hold the port
        if self._stop_gen.get(key, 0) != generation:
            raise PluginActionError(key, "stopped while waiting for its dependencies")
        await plugin.start(reason)
        state = await plugin.wait_for()
        task = plugin.is_task
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

    # -- stopping ------------------------------------------------------------------------------------------------
    async def stop_all(self, reason: str) -> None:
        """Stop every plugin, dependents before their dependencies, independent ones in parallel."""
        plugins = dict(self.registry)
        dependents: dict[str, list[str]] = {k: [] for k in plugins}
        for key, plugin in plugins.items():
            if plugin.manifest is not None:
                for dep in plugin.manifest.depends_on:
                    if dep in dependents:
                        dependents[dep].append(key)
        tasks: dict[str, asyncio.Task[None]] = {}
        # In-process plugins from settings ([inprocess.*]) stop last, once the hooks about everything else reached them.
        last = {k for k, p in plugins.items() if p.stops_last}

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


def _retrieved(task: asyncio.Task[Any]) -> None:
    """A task whose outcome was read through another path (or does not matter): its exception is retrieved."""
    if not task.cancelled():
        task.exception()
