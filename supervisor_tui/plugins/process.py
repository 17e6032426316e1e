"""ProcessRunner: one supervised plugin process and its state machine (supervisord's, with bounded restarts).

STOPPED -> STARTING -> RUNNING once the process stayed up ``startsecs`` and (with a readiness probe, ``health``)
a probe succeeded. An exit while STARTING -> BACKOFF -> STARTING ..., FATAL after ``startretries`` failed retries.
An exit while RUNNING -> EXITED -> STARTING again (restart policy permitting), with an exponential backoff when
it keeps crashing that resets after ``STABLE_AFTER`` seconds of running. Stop signals the whole process group,
waits ``stopwaitsecs`` and SIGKILLs what is left, so nothing a plugin spawned outlives it.

The runner is put together from its jobs: this module has the state machine (supervision loop, actions, snapshot,
what the supervisor asks of it); ``process_spawn`` starts a run, ``probing`` has its readiness and liveness probes,
``process_task`` runs oneshot tasks, ``process_tree`` stops what a run left behind (and the subreaper rules);
``replicas`` runs N of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from supervisor_tui.config import local_url
from supervisor_tui.core.backoff import backoff_delay
from supervisor_tui.core.events import MetricsSample
from supervisor_tui.core.logs import LogHub
from supervisor_tui.plugins.cancellation import cancel_until_done
from supervisor_tui.plugins.cgroups import CgroupTree, PluginCgroup
from supervisor_tui.plugins.child_process import ChildProcess
from supervisor_tui.plugins.health import HealthTracker, ProbeClient
from supervisor_tui.plugins.manifest import Manifest, ManifestError, dependencies
from supervisor_tui.plugins.metrics import HISTORY, TreeSampler
from supervisor_tui.plugins.model import PluginActionError, PluginSnapshot, PluginState
from supervisor_tui.plugins.ports import PortAllocator, PortUnavailable
from supervisor_tui.plugins.probing import PASSIVE_FAILURES, Probing
from supervisor_tui.plugins.process_spawn import (  # re-exported: the supervisor's names for them
    Spawning,
    describe_exit,
    describe_os_error,
    inherited_environment,
)
from supervisor_tui.plugins.process_task import FIRST_BACKOFF, TaskRuns
from supervisor_tui.plugins.process_tree import (  # re-exported: the supervisor's names for them
    TreeTeardown,
    adopted_children,
    become_subreaper,
    orphans_of,
    reap_adopted,
    stop_orphans,
    wait_exit,
)

__all__ = [
    "FIRST_BACKOFF",
    "STABLE_AFTER",
    "ProcessRunner",
    "RunnerContext",
    "adopted_children",
    "become_subreaper",
    "describe_exit",
    "describe_os_error",
    "inherited_environment",
    "orphans_of",
    "reap_adopted",
    "stop_orphans",
    "wait_exit",
]

STABLE_AFTER = 60.0  # seconds of RUNNING after which the crash backoff starts over

S = PluginState


@dataclass
class RunnerContext:
    """What a runner needs from the supervisor that owns it."""

    logs: LogHub
    ports: PortAllocator
    http: ProbeClient
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


class ProcessRunner(Spawning, Probing, TreeTeardown, TaskRuns):
    """Runs one plugin's command under supervision; every state change goes through ``ctx.on_state``."""

    kind = "process"
    runs_elsewhere = False
    asgi_app = None  # reached over HTTP only
    stops_last = False  # stopped in dependency order (only in-process plugins from settings wait for the others)
    tried_by_host = False  # the in-process plugin host loads no process

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
        self.readiness = HealthTracker(self._failures_threshold())
        self.liveness = HealthTracker(self._liveness_threshold())
        self.sampler: TreeSampler | None = None
        self.last_sample: MetricsSample | None = None
        self.metrics_history: deque[MetricsSample] = deque(maxlen=HISTORY)
        self._proc: ChildProcess | None = None
        self._cgroup: PluginCgroup | None = None  # the current run's (None without cgroups)
        self._pumps: list[asyncio.Task[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._probe_tasks: list[asyncio.Task[None]] = []  # the current run's readiness and liveness loops
        self._restart_task: asyncio.Task[None] | None = None
        self._restart_reason = ""
        self._refused = False  # the last spawn was refused before anything ran (see plugins.launch)
        self._spawned_at = 0.0
        self._env: dict[str, str] = {}  # the current run's environment (exec probes run with it)
        self._ready_line = asyncio.Event()  # set when the current run printed its ready_log_line
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._stop_lock = asyncio.Lock()

    # -- views ---------------------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """True while the supervision loop runs (STARTING, RUNNING, BACKOFF, or EXITED on the way back)."""
        return self._task is not None and not self._task.done()

    def snapshot(self) -> PluginSnapshot:
        m = self.manifest
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
            # routed while ready (RUNNING, its readiness probe passing); a oneshot task is never routed
            upstream=local_url(self.ctx.host, self.port)
            if self.ready and self.port and not (m and m.oneshot)
            else None,
            started_at=self.started_at,
            restarts=self.restarts,
            healthy=self.tracker.healthy,
            health_detail=self.tracker.detail,
            last_error=self.last_error,
            endpoints=m.endpoints if m else (),
            autostart=self.autostart,
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

    def _liveness_threshold(self) -> int:
        m = self.manifest
        return m.liveness.failures if m and m.liveness else PASSIVE_FAILURES

    def replace_manifest(self, manifest: Manifest | None, error: ManifestError | None = None) -> None:
        """Swap in a new manifest (the caller stops/restarts as needed); None + error makes it INVALID."""
        self.manifest, self.error = manifest, error
        self.tracker.failures = self.readiness.failures = self._failures_threshold()
        self.liveness.failures = self._liveness_threshold()
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
                await cancel_until_done([task], self._swallowed_cancel)
            await self._cancel_probes()  # no probe runs against a stopped plugin, not even one in flight
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

    # -- what the supervisor asks (core.supervisor.managed.ManagedPlugin) ----------------------------------------
    @property
    def autostart(self) -> bool:
        return self.manifest is not None and self.manifest.autostart

    @property
    def is_task(self) -> bool:
        """A oneshot: it runs to its end, and COMPLETED is a successful start."""
        return self.manifest is not None and self.manifest.oneshot

    @property
    def replica_count(self) -> int | None:
        return None  # one process, and it cannot run more (ReplicatedRunner can)

    def check_scale(self, count: int) -> None:
        raise PluginActionError(self.key, "this plugin cannot run replicas")

    async def scale(self, count: int, reason: str = "scaled by operator") -> None:
        self.check_scale(count)

    def check_env_overrides(self) -> None:
        """Its environment is the supervisor's to set: nothing to refuse."""

    def set_env_overrides(self, env: Mapping[str, str]) -> None:
        """Merged over the manifest's ``env`` from the next start on."""
        self.env_overrides = dict(env)

    async def prepare(self, manifest: Manifest) -> None:
        """Nothing to load ahead of a reload: the new manifest's command runs at the next start."""

    def source_changed(self) -> bool:
        return False  # its program's files are not watched: a changed manifest is what reloads it

    def pids(self) -> set[int]:
        """Its main process (whose exit status belongs to the event loop), while it runs."""
        return {self.pid} if self.pid else set()

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
        except OSError as exc:  # out of descriptors: not even a socket to check a port with
            self.port = None
            self.last_error = f"cannot check for a free port: {describe_os_error(exc)}"
            self._set(S.FATAL, self.last_error)
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
                self._start_probes(proc)
                code = await wait_exit(proc)
                await self._cancel_probes()
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
                # a probe's restart (liveness, health.restart) is asked for explicitly: it happens whatever the policy
                if not forced and (m.restart == "never" or (m.restart == "on-failure" and code == 0)):
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

    async def _backoff(self, delay: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):  # not wait_for: Python 3.11's swallows a stop racing with a wake
                await self._wake.wait()

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
