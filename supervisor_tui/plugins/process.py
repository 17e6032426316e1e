"""ProcessRunner: one supervised plugin process and its state machine (supervisord's, with bounded restarts).

STOPPED -> STARTING -> RUNNING once the process stayed up ``startsecs`` and (when the manifest has a health path)
a probe succeeded. An exit while STARTING -> BACKOFF -> STARTING ..., FATAL after ``startretries`` failed retries.
An exit while RUNNING -> EXITED -> STARTING again (restart policy permitting), with an exponential backoff when
it keeps crashing that resets after ``STABLE_AFTER`` seconds of running. Stop signals the whole process group,
waits ``stopwaitsecs`` and SIGKILLs what is left, so nothing a plugin spawned outlives it.

What a plugin spawned is found by more than its process group and the environment marker (both of which a
daemon escapes with ``setsid`` and a cleared environment): on Linux every plugin process is a child subreaper
(``PR_SET_CHILD_SUBREAPER``), so what its children double-fork away is re-parented to the plugin, not to init,
and stays in its tree; the supervisor process itself is one too (``become_subreaper``), so what outlives a
plugin's main process becomes the supervisor's child. Every descendant pid seen is remembered
(``RunnerContext.descendants``): stop and exit kill those still alive, and ``reap_adopted`` collects the ones
that died as the supervisor's children.

Where cgroups v2 are writable (``plugins.cgroups``, see plugins.cgroups), each run of a plugin also has its own
cgroup (``RunnerContext.cgroups``), which its main process joins before exec: nothing it forks leaves it, so stop
and exit give what is still in it the same treatment as the rest of the tree, then SIGKILL it and remove the cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field

import httpx
import psutil

from supervisor_tui.config import ENV_PREFIX, local_url
from supervisor_tui.core.backoff import backoff_delay
from supervisor_tui.core.events import MetricsSample
from supervisor_tui.core.logs import LogHub
from supervisor_tui.plugins.cgroups import CgroupTree, PluginCgroup, join_in_child
from supervisor_tui.plugins.health import HealthTracker, ProbeTarget, run_probe
from supervisor_tui.plugins.launch import LaunchRefused, RunAs, prepare_launch
from supervisor_tui.plugins.manifest import Manifest, ManifestError, dependencies
from supervisor_tui.plugins.metrics import (
    HISTORY,
    OWNER_ENV,
    TreeSampler,
    alive,
    group_members,
    kill_all,
    marked_processes,
    process_tree,
    signal_group,
)
from supervisor_tui.plugins.model import PluginActionError, PluginSnapshot, PluginState
from supervisor_tui.plugins.ports import PortAllocator, PortUnavailable

STABLE_AFTER = 60.0  # seconds of RUNNING after which the crash backoff starts over
FIRST_BACKOFF = 1.0  # seconds before the first retry (doubles each time, capped by backoff_max_s)
PASSIVE_FAILURES = 3  # gateway failures in a row that make a plugin without a health check unhealthy
START_TIMEOUT = 60.0  # seconds after startsecs a ready_log_line may take when there is no health.start_timeout_s
READY_LINE_SCAN = 4096  # characters of each output line matched against ready_log_line (bounded regex work)

S = PluginState


@dataclass
class RunnerContext:
    """What a runner needs from the supervisor that owns it."""

    logs: LogHub
    ports: PortAllocator
    http: httpx.AsyncClient
    host: str
    supervisor_url: Callable[[], str]
    owner: str  # identifies this supervisor's data dir in the plugins' environment (see metrics.OWNER_ENV)
    default_timeout: float
    default_max_body: int
    on_state: Callable[[ProcessRunner, str, str, str], None]
    on_health: Callable[[ProcessRunner, bool, str], None]
    on_spawn: Callable[[ProcessRunner, int, float], Awaitable[None]]
    on_exit: Callable[[ProcessRunner], Awaitable[None]]
    descendants: set[int] = field(default_factory=set)  # pids seen below any plugin's main process (see reap_adopted)
    cgroups: CgroupTree | None = None  # None: cgroups are off or not writable here


def inherited_environment() -> dict[str, str]:
    """The supervisor's environment minus its own settings: ``SUPERVISOR_TUI_*`` carries tokens and passwords
    (admin and plugin tokens, the enrollment token, database URLs), which no plugin may read. What a plugin
    needs from the supervisor it gets on purpose (``SUPERVISOR_URL``, ``PLUGIN_KEY``, ``PORT``, its manifest's
    ``env``)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


def describe_os_error(exc: OSError) -> str:
    """``exc`` for an operator; running out of file descriptors names the limit to raise."""
    if exc.errno == errno.EMFILE:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (
            f"out of file descriptors: the supervisor's limit of {soft} open files is reached "
            "(raise it: ulimit -n, or LimitNOFILE= in the systemd unit)"
        )
    if exc.errno == errno.ENFILE:
        return "out of file descriptors: the system's open-file table is full (fs.file-max)"
    return exc.strerror or str(exc)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class ProcessRunner:
    """Runs one plugin's command under supervision; every state change goes through ``ctx.on_state``."""

    kind = "process"

    def __init__(
        self,
        key: str,
        manifest: Manifest | None,
        ctx: RunnerContext,
        error: ManifestError | None = None,
        env_overrides: Mapping[str, str] | None = None,
        replica: int = 0,
    ) -> None:
        self.key = key
        self.replica = replica
        # What this process is known by for its port, logs, cgroup, environment marker and recorded pid: the key
        # for replica 0 (so a plugin of one replica is what it always was), "key#N" for replica N.
        self.instance = key if replica == 0 else f"{key}#{replica}"
        self.manifest = manifest
        self.error = error
        self.ctx = ctx
        self.env_overrides: dict[str, str] = dict(env_overrides or {})
        self.state: PluginState = S.INVALID if manifest is None else S.STOPPED
        self.detail = str(error) if error else ""
        self.since = time.time()
        self.pid: int | None = None
        self.port: int | None = None
        self._last_port: int | None = None  # offered again on the next start, so a plugin keeps its port
        self.started_at: float | None = None
        self.restarts = 0
        self.last_error = str(error) if error else ""
        self.desired = "stopped"
        self.tracker = HealthTracker(self._failures_threshold())
        self.sampler: TreeSampler | None = None
        self.last_sample: MetricsSample | None = None
        self.metrics_history: deque[MetricsSample] = deque(maxlen=HISTORY)
        self._proc: asyncio.subprocess.Process | None = None
        self._cgroup: PluginCgroup | None = None  # the current run's (None without cgroups)
        self._pumps: list[asyncio.Task[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._restart_task: asyncio.Task[None] | None = None
        self._restart_reason = ""
        self._refused = False  # the last spawn was refused before anything ran (see plugins.launch)
        self._spawned_at = 0.0
        self._env: dict[str, str] = {}  # the current run's environment (exec probes run with it)
        self._ready_line = asyncio.Event()  # set when the current run printed its ready_log_line
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._stop_lock = asyncio.Lock()

    @property
    def _marker(self) -> str:
        return f"{self.ctx.owner}:{self.instance}"

    def _remember(self, procs: list[psutil.Process]) -> None:
        self.ctx.descendants.update(p.pid for p in procs if p.pid != self.pid)

    async def _leftovers(self, known: list[psutil.Process]) -> list[psutil.Process]:
        """``known`` processes still alive plus every live process carrying this plugin's environment marker or
        in the run's cgroup."""
        found = await asyncio.to_thread(self._marked_or_in_cgroup)
        pids = {p.pid for p in known}
        return alive(known) + [p for p in found if p.pid not in pids]

    def _marked_or_in_cgroup(self) -> list[psutil.Process]:
        found = marked_processes(self._marker)
        if self._cgroup is not None:
            marked = {p.pid for p in found}
            found += [p for p in self._cgroup.members() if p.pid not in marked]
        return found

    # -- views ---------------------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True while the supervision loop runs (STARTING, RUNNING, BACKOFF, or EXITED on the way back)."""
        return self._task is not None and not self._task.done()

    def snapshot(self) -> PluginSnapshot:
        m = self.manifest
        running = self.state == S.RUNNING
        return PluginSnapshot(
            key=self.key,
            name=m.name if m else self.key,
            version=m.version if m else "",
            description=m.description if m else "",
            kind=self.kind,
            state=self.state,
            detail=self.detail,
            pid=self.pid,
            host=self.ctx.host if self.port is not None else None,
            port=self.port,
            # a oneshot task is never routed
            upstream=local_url(self.ctx.host, self.port) if running and self.port and not (m and m.oneshot) else None,
            started_at=self.started_at,
            restarts=self.restarts,
            healthy=self.tracker.healthy,
            health_detail=self.tracker.detail,
            last_error=self.last_error,
            endpoints=m.endpoints if m else (),
            autostart=m.autostart if m else False,
            desired=self.desired,
            timeout=(m.timeout if m and m.timeout is not None else self.ctx.default_timeout),
            max_body=(m.max_body if m and m.max_body is not None else self.ctx.default_max_body),
            last_metrics=self.last_sample,
            manifest_path=str(m.path) if m else (self.error.path if self.error else None),
            group=m.group if m else None,
            depends_on=dependencies(m) if m else (),
        )

    async def wait_for(self, states: set[PluginState] | None = None, timeout: float | None = None) -> PluginState:  # noqa: ASYNC109
        """Wait until the state is one of ``states`` (default: settled: RUNNING, or the loop ended)."""

        def settled() -> bool:
            if states is not None:
                return self.state in states
            return self.state == S.RUNNING or not self.active

        async def wait() -> None:
            while not settled():
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)
        return self.state

    # -- state ---------------------------------------------------------------------------------------------------
    def _set(self, state: PluginState, reason: str) -> None:
        old = self.state
        self.state, self.detail, self.since = state, reason, time.time()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        try:
            self._notify(str(old), str(state), reason)
        except Exception as exc:  # a broken listener must not break supervision
            self.ctx.logs.error(
                f"{self.instance}: state listener failed: {exc!r}", event="internal_error", plugin=self.key
            )

    def _notify(self, old: str, new: str, reason: str) -> None:
        """Tell the owner about a state change (a plugin of several replicas reports for them all)."""
        self.ctx.on_state(self, old, new, reason)

    def _failures_threshold(self) -> int:
        m = self.manifest
        return m.health.failures if m and m.health else PASSIVE_FAILURES

    def replace_manifest(self, manifest: Manifest | None, error: ManifestError | None = None) -> None:
        """Swap in a new manifest (the caller stops/restarts as needed); None + error makes it INVALID."""
        self.manifest, self.error = manifest, error
        self.tracker.failures = self._failures_threshold()
        if manifest is None:
            self.last_error = str(error) if error else ""
            self._set(S.INVALID, str(error) if error else "manifest rejected")
        elif self.state == S.INVALID:
            self.last_error = ""
            self._set(S.STOPPED, "manifest is valid again")

    # -- actions -------------------------------------------------------------------------------------------------
    async def start(self, reason: str = "started by operator") -> None:
        """Begin supervision (returns once STARTING, or FATAL when no port); a no-op while already active."""
        if self.manifest is None or self.state == S.INVALID:
            raise PluginActionError(self.key, f"cannot start an INVALID plugin: {self.error}")
        async with self._stop_lock:  # a stop in progress finishes first
            pass
        if self.active:
            if self.state == S.BACKOFF:
                self._wake.set()  # the operator asked: retry now
            return
        self._wake.clear()
        if self._prepare(reason):
            loop = self._run_task(reason) if self.manifest.oneshot else self._supervise(reason)
            self._task = asyncio.create_task(loop, name=f"plugin:{self.key}")

    async def stop(self, reason: str = "stopped by operator") -> None:
        """Stop supervision and the process group: stopsignal, ``stopwaitsecs``, then SIGKILL."""
        if self.state == S.INVALID and self._proc is None:
            return
        async with self._stop_lock:
            task, self._task = self._task, None
            was_active = task is not None and not task.done()
            if task is not None and was_active:
                task.cancel()
                await asyncio.wait([task])
            await self._cancel_health()  # no probe runs against a stopped plugin, not even one in flight
            proc = self._proc
            if proc is not None:
                if proc.returncode is None:
                    self._set(S.STOPPING, reason)
                    await self._kill_tree(proc, graceful=True)
                await self._after_exit(proc)
                self._set(S.STOPPED, reason)
            elif was_active and self.state not in (S.STOPPED, S.INVALID):
                self.ctx.ports.release(self.instance)
                self.port = None
                self._set(S.STOPPED, reason)  # e.g. stopped while in BACKOFF

    def refuse_start(self, reason: str) -> None:
        """A start that did not happen (a dependency's condition cannot be met): STOPPED, saying why."""
        if not self.active and self.state != S.INVALID:
            self.last_error = reason
            self._set(S.STOPPED, reason)

    def report_upstream(self, ok: bool, detail: str = "") -> None:
        """Passive health from the gateway: failures in a row mark it unhealthy, one success healthy again."""
        if self.state != S.RUNNING:
            return
        self._record_health(ok, detail or ("gateway: upstream answered" if ok else "gateway: upstream failed"))

    # -- supervision loop ----------------------------------------------------------------------------------------
    def _prepare(self, reason: str) -> bool:
        """Take a port and enter STARTING; a fixed port that is taken makes the plugin FATAL."""
        m = self.manifest
        assert m is not None
        try:
            self.port = self._last_port = self.ctx.ports.acquire(self.instance, m.port, prefer=self._last_port)
        except PortUnavailable as exc:
            self.port = None
            self.last_error = str(exc)
            self._set(S.FATAL, str(exc))
            return False
        self._set(S.STARTING, reason)
        return True

    async def _supervise(self, reason: str) -> None:
        m = self.manifest
        assert m is not None
        failed = 0
        streak = 0
        try:
            while True:
                proc = await self._spawn_shielded()
                if proc is None and self._refused:  # retrying cannot help until the operator fixes it
                    self._refused = False
                    self.ctx.ports.release(self.key)
                    self.port = None
                    self._set(S.FATAL, self.last_error)
                    return
                if proc is None:
                    ok, why = False, self.last_error
                else:
                    ok, why = await self._wait_ready(proc)
                if not ok:
                    if proc is not None:
                        if proc.returncode is None:  # not ready in time
                            await self._kill_tree(proc, graceful=True)
                        await self._after_exit(proc)
                    self.last_error = why
                    failed += 1
                    if failed > m.startretries:
                        self._set(S.FATAL, f"{why}; gave up after {failed} attempts")
                        return
                    delay = backoff_delay(failed - 1, FIRST_BACKOFF, m.backoff_max_s)
                    self._set(S.BACKOFF, f"{why}; retry {failed}/{m.startretries} in {delay:g}s")
                    await self._backoff(delay)
                    self.restarts += 1
                    if not self._prepare(f"retry {failed}/{m.startretries}"):
                        return
                    continue
                assert proc is not None
                failed = 0
                running_since = time.monotonic()
                ready_detail = self.tracker.detail
                self.tracker.reset()
                if m.health is not None:
                    self._record_health(True, f"probe: {ready_detail}")
                self._set(S.RUNNING, reason)
                self.sample()  # a first look at the tree: children spawned while starting are known from now on
                if m.health is not None:
                    self._health_task = asyncio.create_task(self._health_loop(proc), name=f"health:{self.key}")
                code = await wait_exit(proc)
                await self._cancel_health()
                uptime = time.monotonic() - running_since
                why = describe_exit(code)
                forced = self._restart_reason
                self._restart_reason = ""
                if forced:
                    why = f"{forced} ({why})"
                elif code != 0:
                    self.last_error = why
                self._set(S.EXITED, why)
                await self._after_exit(proc)
                if m.restart == "never" or (m.restart == "on-failure" and code == 0 and not forced):
                    return
                if uptime >= STABLE_AFTER:
                    streak = 0
                streak += 1
                self.restarts += 1
                delay = 0.0 if streak == 1 else backoff_delay(streak - 2, FIRST_BACKOFF, m.backoff_max_s)
                if delay > 0:
                    self._set(S.BACKOFF, f"{why}; restart in {delay:g}s ({streak} exits in a row)")
                    await self._backoff(delay)
                reason = f"restart after: {why}"
                if not self._prepare(reason):
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the supervisor must never fall over because of one plugin
            await self._internal_error(exc)

    async def _internal_error(self, exc: Exception) -> None:
        self.last_error = f"internal error: {exc!r}"
        self.ctx.logs.error(f"{self.instance}: supervision failed: {exc!r}", event="internal_error", plugin=self.key)
        if self._proc is not None and self._proc.returncode is None:
            await self._kill_tree(self._proc, graceful=False)
            await self._after_exit(self._proc)
        self._set(S.FATAL, f"internal error: {exc!r}")

    async def _run_task(self, reason: str) -> None:
        """A oneshot: RUNNING once spawned (and ready, when gated), then COMPLETED on exit 0 and FAILED otherwise.

        Run again only as ``restart`` says: "on-failure" retries a failure (``startretries`` times, with backoff),
        "always" also runs it again a second after it completed; a liveness restart is a retry too."""
        try:
            await self._task_runs(reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the supervisor must never fall over because of one plugin
            await self._internal_error(exc)

    async def _task_runs(self, reason: str) -> None:
        m = self.manifest
        assert m is not None
        failed = 0
        while True:
            code, why = await self._run_once(reason)
            if code == 0:
                self._set(S.COMPLETED, why)
                if m.restart != "always":
                    return
                await self._backoff(min(FIRST_BACKOFF, m.backoff_max_s))
                reason = "run again (restart: always)"
            else:
                self.last_error = why
                failed += 1
                forced = why.startswith("restarted:")
                if (m.restart == "never" and not forced) or failed > m.startretries:
                    self._set(S.FAILED, why if failed == 1 else f"{why}; gave up after {failed} attempts")
                    return
                delay = backoff_delay(failed - 1, FIRST_BACKOFF, m.backoff_max_s)
                self._set(S.BACKOFF, f"{why}; retry {failed}/{m.startretries} in {delay:g}s")
                await self._backoff(delay)
                reason = f"retry {failed}/{m.startretries}"
            self.restarts += 1
            if not self._prepare(reason):
                return

    async def _run_once(self, reason: str) -> tuple[int | None, str]:
        """One run of a oneshot to its end: (exit code, what happened); code None when it did not run."""
        proc = await self._spawn_shielded()
        if proc is None:
            return None, self.last_error
        ready, why = await self._wait_ready(proc, startsecs=0.0)
        if not ready and proc.returncode is None:  # not ready in time
            await self._kill_tree(proc, graceful=True)
            await self._after_exit(proc)
            return proc.returncode, why
        if ready:
            self._set(S.RUNNING, reason)
            self.sample()
            if self.manifest is not None and self.manifest.health is not None:
                self._health_task = asyncio.create_task(self._health_loop(proc), name=f"health:{self.key}")
        code = await wait_exit(proc)
        await self._cancel_health()
        forced, self._restart_reason = self._restart_reason, ""
        await self._after_exit(proc)
        why = describe_exit(code)
        return code, f"{forced} ({why})" if forced else why

    async def _backoff(self, delay: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    async def _spawn_shielded(self) -> asyncio.subprocess.Process | None:
        # Shielded so that a stop arriving mid-spawn still finds the process in self._proc and kills it.
        spawn = asyncio.ensure_future(self._spawn())
        try:
            return await asyncio.shield(spawn)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await spawn
            raise

    async def _spawn(self) -> asyncio.subprocess.Process | None:
        m = self.manifest
        assert m is not None and self.port is not None
        try:
            launch = prepare_launch(m)
        except LaunchRefused as exc:
            self._spawn_failed(str(exc))
            self._refused = True
            return None
        env = inherited_environment()
        env.setdefault("PYTHONUNBUFFERED", "1")  # Python plugins: lines reach the log hub as they are printed
        run_as = launch.run_as
        if run_as is not None:
            env.update(run_as.environment())
        env.update(launch.env_file)  # the manifest's env wins over the file
        env.update(m.env)
        env.update(self.env_overrides)
        env["PORT"] = str(self.port)
        env["PLUGIN_KEY"] = self.key
        env["PLUGIN_REPLICA"] = str(self.replica)
        env["SUPERVISOR_URL"] = self.ctx.supervisor_url()
        env[OWNER_ENV] = self._marker
        self._env = env
        self._ready_line.clear()
        argv = m.argv()
        procs_fd = self._enter_cgroup()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=launch.cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_in_child(procs_fd, run_as),
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            why = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            self._spawn_failed(f"cannot run {argv[0]!r} in {launch.cwd}: {why}")
            proc = None
        finally:
            if procs_fd is not None:
                os.close(procs_fd)
        if proc is None:
            await self._clear_cgroup()
            return None
        self._proc = proc
        self.pid = proc.pid
        self.started_at = time.time()
        self._spawned_at = time.monotonic()  # startsecs counts from here, not after the pid is recorded
        assert proc.stdout is not None and proc.stderr is not None
        on_line = self._ready_line_watcher(m.ready_log_line) if m.ready_log_line else None
        self._pumps = [
            asyncio.create_task(
                self.ctx.logs.pump(self.instance, name, stream, on_line), name=f"{name}:{self.instance}"
            )
            for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr))
        ]
        for pump in self._pumps:
            pump.add_done_callback(functools.partial(self._pump_ended, proc))
        try:
            self.sampler = TreeSampler(self.instance, proc.pid)
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            created = time.time()
        except OSError as exc:  # out of descriptors: a process we cannot watch is not one we may call RUNNING
            signal_group(proc.pid, signal.SIGKILL)
            await wait_exit(proc)
            await self._after_exit(proc)
            self._spawn_failed(f"cannot watch pid {proc.pid}: {describe_os_error(exc)}")
            return None
        try:
            await self.ctx.on_spawn(self, proc.pid, created)
        except Exception as exc:
            self.ctx.logs.warning(f"{self.instance}: cannot record pid {proc.pid}: {exc!r}", plugin=self.key)
        return proc

    def _enter_cgroup(self) -> int | None:
        """Make this run's cgroup; the descriptor its main process joins it with, or None (then it runs without)."""
        if self.ctx.cgroups is None:
            return None
        try:
            self._cgroup = self.ctx.cgroups.plugin(self.instance)
            return self._cgroup.open_procs()
        except OSError as exc:
            self.ctx.logs.warning(
                f"{self.instance}: runs without a cgroup: {describe_os_error(exc)}",
                event="cgroup_failed",
                plugin=self.key,
            )
            self._cgroup = None
            return None

    async def _clear_cgroup(self) -> None:
        """SIGKILL what is left in this run's cgroup and remove it."""
        cgroup, self._cgroup = self._cgroup, None
        if cgroup is not None and not await asyncio.to_thread(cgroup.clear):
            self.ctx.logs.warning(
                f"{self.instance}: cgroup {cgroup.path} still busy, left in place",
                event="cgroup_failed",
                plugin=self.key,
            )

    def _spawn_failed(self, reason: str) -> None:
        self.last_error = reason
        self.ctx.logs.error(f"{self.instance}: {reason}", event="spawn_failed", plugin=self.key)

    def _pump_ended(self, proc: asyncio.subprocess.Process, task: asyncio.Task[None]) -> None:
        """An output pump that failed leaves a pipe nobody reads (the plugin would block on it): restart it."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        reason = describe_os_error(exc) if isinstance(exc, OSError) else repr(exc)
        self.ctx.logs.error(
            f"{self.instance}: output capture failed: {reason}", event="internal_error", plugin=self.key
        )
        if proc is self._proc and proc.returncode is None and self._restart_task is None:
            self.last_error = f"output capture failed: {reason}"
            self._restart_reason = f"restarted: {self.last_error}"
            self._restart_task = asyncio.create_task(self._kill_tree(proc, graceful=True))

    def _ready_line_watcher(self, pattern: str) -> Callable[[str], None]:
        """What the output pumps call with each line: sets ``_ready_line`` at the first match (then does nothing)."""
        regex = re.compile(pattern)
        ready = self._ready_line

        def watch(line: str) -> None:
            if not ready.is_set() and regex.search(line, 0, READY_LINE_SCAN):
                ready.set()

        return watch

    async def _wait_ready(self, proc: asyncio.subprocess.Process, startsecs: float | None = None) -> tuple[bool, str]:
        """Readiness gating: up for ``startsecs`` (the manifest's unless given), a ``ready_log_line`` printed and,
        with a health check, one successful probe. Not ready in time: (False, why) with the process still running
        (the caller stops it); an exit: (False, why)."""
        m = self.manifest
        assert m is not None
        ready_at = self._spawned_at + (m.startsecs if startsecs is None else startsecs)
        health = m.health
        need_probe = health is not None
        need_line = m.ready_log_line is not None
        start_timeout = health.start_timeout_s if health is not None else START_TIMEOUT
        give_up = ready_at + start_timeout
        exited = asyncio.ensure_future(wait_exit(proc))
        line = asyncio.ensure_future(self._ready_line.wait())
        interval = 0.05
        try:
            while True:
                if exited.done():
                    return False, f"{describe_exit(proc.returncode)} while starting"
                need_line = need_line and not line.done()
                now = time.monotonic()
                if not need_probe and not need_line and now >= ready_at:
                    return True, ""
                if (need_probe or need_line) and now > give_up:
                    waited = f"not ready within {ready_at - self._spawned_at + start_timeout:g}s"
                    if need_line:
                        return False, f"{waited} (no output line matched ready_log_line {m.ready_log_line!r})"
                    return False, f"{waited.replace('ready', 'healthy')} (last probe: {self.tracker.detail})"
                if need_probe:
                    assert health is not None
                    ok, detail = await run_probe(health, self.ctx.http, self._probe_target())
                    self.tracker.detail = detail
                    if ok:
                        need_probe = False
                        continue
                    timeout = interval
                    interval = min(interval * 1.5, 0.5)
                elif need_line:
                    timeout = give_up - now
                else:
                    timeout = ready_at - now
                await asyncio.wait([exited, line], timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (exited, line):
                if not waiter.done():
                    waiter.cancel()

    def _probe_target(self) -> ProbeTarget:
        m = self.manifest
        assert self.port is not None and m is not None, "health is only probed while the plugin holds a port"
        return ProbeTarget(self.ctx.host, self.port, m.folder, self._env)

    async def _health_loop(self, proc: asyncio.subprocess.Process) -> None:
        m = self.manifest
        assert m is not None and m.health is not None
        health = m.health
        while proc.returncode is None:
            await asyncio.sleep(health.interval_s)
            if proc.returncode is not None or self.state != S.RUNNING:
                return
            ok, detail = await run_probe(health, self.ctx.http, self._probe_target())
            if proc.returncode is None and self.state == S.RUNNING:
                self._record_health(ok, f"probe: {detail}")

    def _record_health(self, ok: bool, detail: str) -> None:
        flip = self.tracker.record(ok, detail)
        if flip is None:
            return
        if flip is False:
            self.last_error = f"unhealthy: {detail}"
        try:
            self.ctx.on_health(self, flip, detail)
        except Exception as exc:
            self.ctx.logs.error(f"{self.instance}: health listener failed: {exc!r}", event="internal_error")
        m = self.manifest
        if flip is False and m is not None and m.health is not None and m.health.restart:
            proc = self._proc
            if proc is not None and proc.returncode is None and self._restart_task is None:
                self._restart_reason = f"restarted: unhealthy ({detail})"
                self._restart_task = asyncio.create_task(self._kill_tree(proc, graceful=True))

    async def _cancel_health(self) -> None:
        task, self._health_task = self._health_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def _kill_tree(self, proc: asyncio.subprocess.Process, graceful: bool) -> None:
        """Signal the plugin's process group (and descendants that left it), wait, then SIGKILL what is left."""
        m = self.manifest
        wait_s = m.stopwaitsecs if m is not None else 10.0
        sig = m.stop_signal if (m is not None and graceful) else signal.SIGKILL
        pgid = proc.pid
        tree = process_tree(proc.pid)
        if self.sampler is not None:
            tree.extend(p for p in self.sampler.known_tree() if p.pid not in {t.pid for t in tree})
        tree = await self._leftovers(tree)
        self._remember(tree)
        signal_group(pgid, sig)
        kill_all([p for p in tree if _pgid(p) != pgid], sig)  # descendants that made their own group
        deadline = time.monotonic() + wait_s
        try:
            await asyncio.wait_for(wait_exit(proc), wait_s)
        except TimeoutError:
            self.ctx.logs.warning(
                f"{self.instance}: pid {proc.pid} ignored {sig.name} for {wait_s:g}s: sending SIGKILL",
                event="sigkill",
                plugin=self.key,
            )
            signal_group(pgid, signal.SIGKILL)
            kill_all(tree)
            await wait_exit(proc)
        # Whatever the plugin left behind gets the rest of the wait, then SIGKILL.
        while alive(tree) and time.monotonic() < deadline:  # noqa: ASYNC110 - polling other processes' exit
            await asyncio.sleep(0.05)
        signal_group(pgid, signal.SIGKILL)
        kill_all(alive(tree))

    async def _after_exit(self, proc: asyncio.subprocess.Process) -> None:
        """After the main process ended: kill leftovers of its group, drain output, free port and pid."""
        if proc.returncode is None:
            return
        tree = await self._leftovers(self.sampler.known_tree() if self.sampler is not None else [])
        tree += [p for p in adopted_children(self.ctx.descendants) if p.pid not in {t.pid for t in tree}]
        if tree or signal_group(proc.pid, 0):
            signal_group(proc.pid, signal.SIGTERM)
            kill_all(alive(tree), signal.SIGTERM)
            deadline = time.monotonic() + min(self.manifest.stopwaitsecs if self.manifest else 1.0, 2.0)
            while alive(tree) and time.monotonic() < deadline:  # noqa: ASYNC110 - polling other processes' exit
                await asyncio.sleep(0.05)
            signal_group(proc.pid, signal.SIGKILL)
            kill_all(alive(tree))
        await self._clear_cgroup()
        reap_adopted(self.ctx.descendants)
        pumps, self._pumps = self._pumps, []
        if pumps:
            _, pending = await asyncio.wait(pumps, timeout=2.0)
            for task in pending:
                task.cancel()
            if pending:  # something unknown still holds the output pipes: close our ends, or their fds leak
                transport = getattr(proc, "_transport", None)
                if transport is not None:
                    transport.close()
        if self._restart_task is not None:
            await asyncio.wait([self._restart_task])
            self._restart_task = None
        self._proc = None
        self.pid = None
        self.sampler = None
        self.port = None
        self.tracker.reset()
        self.ctx.ports.release(self.instance)
        try:
            await self.ctx.on_exit(self)
        except Exception as exc:
            self.ctx.logs.warning(f"{self.instance}: cannot clear recorded pid: {exc!r}", plugin=self.key)

    def sample(self) -> MetricsSample | None:
        """One metrics sample of the process tree (None when not running)."""
        if self.sampler is None:
            return None
        sample = self.sampler.sample()
        self._remember(self.sampler.known_tree())
        if sample is not None:
            self.last_sample = sample
            self.metrics_history.append(sample)
        return sample

    def history(self) -> list[MetricsSample]:
        """Samples of the last minutes (kept across restarts)."""
        return list(self.metrics_history)


async def wait_exit(proc: asyncio.subprocess.Process) -> int:
    """The exit code, as soon as the process has exited.

    ``Process.wait()`` (Python 3.11) only returns once every pipe is closed too, which a grandchild holding
    stdout open delays forever; a pidfd tells us when the process itself is gone, and the event loop's child
    watcher reaps it (setting ``returncode``) right after."""
    if proc.returncode is not None:
        return proc.returncode
    loop = asyncio.get_running_loop()
    fd: int | None = None
    with contextlib.suppress(OSError, AttributeError):
        fd = os.pidfd_open(proc.pid)
    if fd is not None:
        readable = loop.create_future()
        loop.add_reader(fd, _resolve, readable)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
            os.close(fd)
    interval = 0.005 if fd is not None else 0.2  # no pidfd (old kernel): poll
    while proc.returncode is None:
        await asyncio.sleep(interval)
        interval = min(interval * 2, 0.2)
    return proc.returncode


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _pgid(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except (ProcessLookupError, PermissionError):
        return None


def orphans_of(pid: int, started: float | None) -> list[psutil.Process]:
    """What a previous supervisor run left behind of one plugin: the process group led by ``pid`` (members
    created no earlier than ``started``, so a recycled pid is left alone) and the descendants of ``pid``.
    Blocking (it reads every process)."""
    members = group_members(pid, not_before=started)
    try:
        root = psutil.Process(pid)
        if started is None or abs(root.create_time() - started) < 1.0:
            for child in root.children(recursive=True):
                if child.pid not in {p.pid for p in members}:
                    members.append(child)
    except psutil.Error:
        pass
    return members


async def stop_orphans(procs: list[psutil.Process], grace: float = 3.0) -> None:
    """SIGTERM every one at once, up to ``grace`` seconds for all of them together, then SIGKILL.

    All at once: ten slow-to-die orphans cost ``grace`` seconds, not ten times that. Cancelled (the supervisor
    is asked to stop meanwhile), it SIGKILLs what is left right away instead of waiting."""
    kill_all(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace
    try:
        while alive(procs) and time.monotonic() < deadline:  # noqa: ASYNC110 - polling other processes' exit
            await asyncio.sleep(0.05)
    finally:
        kill_all(alive(procs), signal.SIGKILL)


PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()  # looked up once, here: the child between fork and exec only calls it


def _subreaper_in_child() -> None:
    """preexec_fn of every plugin process: its descendants' orphans are re-parented to it, not to init."""
    assert _prctl is not None
    _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _set_up_child(procs_fd: int | None, run_as: RunAs | None) -> None:
    if procs_fd is not None:
        join_in_child(procs_fd)
    if _prctl is not None:
        _subreaper_in_child()
    if run_as is not None:  # last: joining the cgroup needs root
        run_as.become()


def _in_child(procs_fd: int | None, run_as: RunAs | None = None) -> Callable[[], None] | None:
    """The preexec_fn of a plugin process: join its cgroup (``procs_fd``, when it has one), become a subreaper,
    then become ``run_as`` (the manifest's user). Done here rather than with the ``user=`` arguments of
    subprocess, which uvloop's event loop (headless mode) does not take."""
    if procs_fd is None and run_as is None:
        return _subreaper_in_child if _prctl is not None else None
    return functools.partial(_set_up_child, procs_fd, run_as)


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans (Linux); False where that is not possible."""
    return _prctl is not None and _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def adopted_children(descendants: set[int]) -> list[psutil.Process]:
    """Live children of this process that were seen below a plugin (orphans re-parented to the supervisor)."""
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return []
    return alive([p for p in children if p.pid in descendants])


def reap_adopted(descendants: set[int], busy: Collection[int] = ()) -> None:
    """Collect the exit status of adopted orphans that died, and forget pids that are gone. ``busy``: pids whose
    status belongs to someone else (plugins' main processes, awaited by the event loop). Never blocks."""
    for pid in list(descendants):
        if pid in busy:
            continue
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (yet): forget it once it is gone for good
            if not psutil.pid_exists(pid):
                descendants.discard(pid)
            continue
        if done:
            descendants.discard(pid)
