"""Oneshot tasks (``TaskRuns``, a part of ProcessRunner): a manifest with ``"oneshot": true`` runs to its end.

RUNNING once spawned (and ready, when gated), then COMPLETED on exit 0 and FAILED otherwise; run again only as
``restart`` says ("on-failure" retries a failure ``startretries`` times with backoff, "always" also runs it again
a second after it completed; a liveness restart is a retry too).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from supervisor_tui.core.backoff import backoff_delay
from supervisor_tui.core.events import MetricsSample
from supervisor_tui.plugins.child_process import ChildProcess
from supervisor_tui.plugins.manifest import Manifest
from supervisor_tui.plugins.model import PluginState
from supervisor_tui.plugins.process_spawn import describe_exit
from supervisor_tui.plugins.process_tree import wait_exit

FIRST_BACKOFF = 1.0  # seconds before the first retry (doubles each time, capped by backoff_max_s)

S = PluginState


class TaskRuns:
    """The oneshot loop of ProcessRunner (declared here: what it uses of it)."""

    manifest: Manifest | None
    last_error: str
    restarts: int
    _restart_reason: str

    if TYPE_CHECKING:

        def _set(self, state: PluginState, reason: str) -> None: ...

        def _prepare(self, reason: str) -> bool: ...

        async def _backoff(self, delay: float) -> None: ...

        async def _internal_error(self, exc: Exception) -> None: ...

        async def _spawn_shielded(self) -> ChildProcess | None: ...

        async def _wait_ready(self, proc: ChildProcess, startsecs: float | None = None) -> tuple[bool, str]: ...

        def _start_probes(self, proc: ChildProcess) -> None: ...

        async def _cancel_probes(self) -> None: ...

        async def _kill_tree(self, proc: ChildProcess, graceful: bool) -> None: ...

        async def _after_exit(self, proc: ChildProcess) -> None: ...

        def sample(self) -> MetricsSample | None: ...

    async def _run_task(self, reason: str) -> None:
        """The task's supervision (see the module docstring); an internal error makes it FATAL."""
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
            self._start_probes(proc)
        code = await wait_exit(proc)
        await self._cancel_probes()
        forced, self._restart_reason = self._restart_reason, ""
        await self._after_exit(proc)
        why = describe_exit(code)
        return code, f"{forced} ({why})" if forced else why
