"""Readiness and liveness of a process plugin's run (``Probing``, a part of ProcessRunner).

- **Readiness** (the manifest's ``health``, alias ``readiness``): while STARTING, ``_wait_ready`` gates RUNNING on
  ``startsecs``, the ``ready_log_line`` and one passing probe. While RUNNING the probe goes on: ``failures`` in a
  row make the run *not ready* (still RUNNING, with "not ready: ..." in its detail, but without an upstream, so
  the gateway answers 503); the first success after that makes it ready again. No restart (unless the older
  ``health.restart`` asks for one).
- **Liveness** (``liveness``): probed only while RUNNING; ``failures`` in a row with ``restart: true`` (its default)
  stop the run with "restarted: not live (...)" as the reason, and the supervision loop starts the next one.

Both loops are tasks of the run: they end when it stops or exits (``_cancel_probes``), an exec probe in flight
with them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, cast

from supervisor_tui.plugins.cancellation import cancel_until_done
from supervisor_tui.plugins.child_process import ChildProcess
from supervisor_tui.plugins.health import HealthTracker, ProbeTarget, run_probe
from supervisor_tui.plugins.manifest import HealthCheck, Manifest
from supervisor_tui.plugins.model import PluginState
from supervisor_tui.plugins.process_spawn import describe_exit
from supervisor_tui.plugins.process_tree import wait_exit

if TYPE_CHECKING:
    from supervisor_tui.plugins.process import ProcessRunner, RunnerContext

PASSIVE_FAILURES = 3  # gateway failures in a row that make a plugin without a health check unhealthy
START_TIMEOUT = 60.0  # seconds after startsecs a ready_log_line may take when there is no health.start_timeout_s
READY_LINE_SCAN = 4096  # characters of each output line matched against ready_log_line (bounded regex work)

S = PluginState


class Probing:
    """The probes of ProcessRunner (declared here: what they use of it)."""

    key: str
    instance: str
    manifest: Manifest | None
    ctx: RunnerContext
    state: PluginState
    detail: str
    port: int | None
    last_error: str
    tracker: HealthTracker  # readiness and the gateway's passive reports together: the snapshot's "healthy"
    readiness: HealthTracker  # the readiness probe alone, while RUNNING
    liveness: HealthTracker
    _env: dict[str, str]
    _ready_line: asyncio.Event
    _spawned_at: float
    _proc: ChildProcess | None
    _probe_tasks: list[asyncio.Task[None]]
    _restart_task: asyncio.Task[None] | None
    _restart_reason: str

    if TYPE_CHECKING:

        def _set(self, state: PluginState, reason: str) -> None: ...

        async def _kill_tree(self, proc: ChildProcess, graceful: bool) -> None: ...

    @property
    def ready(self) -> bool:
        """RUNNING and not failing its readiness probe: what the gateway routes to."""
        return self.state == S.RUNNING and self.readiness.healthy is not False

    def _ready_line_watcher(self, pattern: str) -> Callable[[str], None]:
        """What the output pumps call with each line: sets ``_ready_line`` at the first match (then does nothing)."""
        regex = re.compile(pattern)
        ready = self._ready_line

        def watch(line: str) -> None:
            if not ready.is_set() and regex.search(line, 0, READY_LINE_SCAN):
                ready.set()

        return watch

    async def _wait_ready(self, proc: ChildProcess, startsecs: float | None = None) -> tuple[bool, str]:
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
                    if proc.poll() is not None:  # exited, though the exit has not come through the loop yet
                        return False, f"{describe_exit(proc.returncode)} while starting"
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

    def _start_probes(self, proc: ChildProcess) -> None:
        """Entering RUNNING: the readiness probe goes on (a plugin that stops being ready leaves the route), the
        liveness probe begins."""
        m = self.manifest
        assert m is not None
        self.readiness.reset()
        self.liveness.reset()
        if m.health is not None:
            self._probe_tasks.append(
                asyncio.create_task(self._readiness_loop(proc, m.health), name=f"health:{self.instance}")
            )
        if m.liveness is not None:
            self._probe_tasks.append(
                asyncio.create_task(self._liveness_loop(proc, m.liveness), name=f"liveness:{self.instance}")
            )

    async def _probes(self, proc: ChildProcess, check: HealthCheck) -> AsyncIterator[tuple[bool, str]]:
        """One probe result every ``check.interval_s`` while ``proc`` runs and the plugin is RUNNING."""
        while proc.returncode is None:
            await asyncio.sleep(check.interval_s)
            if proc.returncode is not None or self.state != S.RUNNING:
                return
            ok, detail = await run_probe(check, self.ctx.http, self._probe_target())
            if proc.returncode is not None or self.state != S.RUNNING or _cancel_requested():
                return
            yield ok, f"probe: {detail}"

    async def _readiness_loop(self, proc: ChildProcess, check: HealthCheck) -> None:
        async for ok, detail in self._probes(proc, check):
            self._record_health(ok, detail)
            flip = self.readiness.record(ok, detail)
            if flip is False:  # still RUNNING, not routed: the gateway answers 503 until it is ready again
                self._set(S.RUNNING, f"not ready: {detail}")
            elif flip is True and self.detail.startswith("not ready: "):
                self._set(S.RUNNING, f"ready again: {detail}")

    async def _liveness_loop(self, proc: ChildProcess, check: HealthCheck) -> None:
        async for ok, detail in self._probes(proc, check):
            if self.liveness.record(ok, detail) is not False:
                continue
            self.last_error = f"not live: {detail}"
            action = "restarting it" if check.restart else "not restarted (liveness.restart is false)"
            self.ctx.logs.warning(
                f"{self.instance}: not live after {check.failures} failed probes ({detail}): {action}",
                event="liveness_failed",
                plugin=self.key,
            )
            if check.restart:
                self._restart(proc, f"restarted: not live ({detail})")

    def _record_health(self, ok: bool, detail: str) -> None:
        """One health outcome, active (the readiness probe) or passive (the gateway): flips are published."""
        flip = self.tracker.record(ok, detail)
        if flip is None:
            return
        if flip is False:
            self.last_error = f"unhealthy: {detail}"
        try:
            self.ctx.on_health(cast("ProcessRunner", self), flip, detail)
        except Exception as exc:
            self.ctx.logs.error(f"{self.instance}: health listener failed: {exc!r}", event="internal_error")
        m = self.manifest
        if flip is False and m is not None and m.health is not None and m.health.restart:
            proc = self._proc
            if proc is not None:
                self._restart(proc, f"restarted: unhealthy ({detail})")

    def _restart(self, proc: ChildProcess, reason: str) -> None:
        """Stop this run (the supervision loop starts the next one); ``reason`` goes into the state detail."""
        if proc.returncode is None and self._restart_task is None:
            self._restart_reason = reason
            self._restart_task = asyncio.create_task(self._kill_tree(proc, graceful=True))

    async def _cancel_probes(self) -> None:
        """No probe outlives its run: each loop is cancelled (an exec probe in flight is killed with it)."""
        tasks, self._probe_tasks = self._probe_tasks, []
        await cancel_until_done(tasks, self._swallowed_cancel)

    def _swallowed_cancel(self, task: asyncio.Task[None]) -> None:
        self.ctx.logs.warning(
            f"{self.instance}: {task.get_name()} went on after a cancel: cancelled again",
            event="internal_error",
            plugin=self.key,
        )


def _cancel_requested() -> bool:
    """This task was asked to stop, even if the cancellation itself was swallowed on the way (see cancellation)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
