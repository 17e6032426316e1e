"""Spawning one run of a process plugin (``Spawning``, a part of ProcessRunner): its environment, its cgroup, its
output pumps, and the words for what went wrong (``describe_os_error``, ``describe_exit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import psutil

from supervisor_tui.config import ENV_PREFIX
from supervisor_tui.plugins.cgroups import PluginCgroup
from supervisor_tui.plugins.child_process import ChildProcess, can_join_by_shell, start_child
from supervisor_tui.plugins.launch import LaunchRefused, prepare_launch
from supervisor_tui.plugins.manifest import Manifest
from supervisor_tui.plugins.metrics import OWNER_ENV, TreeSampler, signal_group
from supervisor_tui.plugins.process_tree import in_child, wait_exit

if TYPE_CHECKING:
    from supervisor_tui.plugins.process import ProcessRunner, RunnerContext


def inherited_environment() -> dict[str, str]:
    """The supervisor's environment minus its own settings: ``SUPERVISOR_TUI_*`` carries tokens and passwords
    (admin and plugin tokens, the enrollment token, database URLs), which no plugin may read. What a plugin
    needs from the supervisor it gets on purpose (``SUPERVISOR_URL``, ``PLUGIN_KEY``, ``PORT``, its manifest's
    ``env``)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


# Descriptors a spawn needs beyond the parent's pipes: with fewer left, uvloop's child fails before exec
# (re-creating its event loop) and the spawn raises OSError(-1, "Unknown error -1"), not EMFILE.
SPAWN_DESCRIPTOR_MARGIN = 16


def _descriptors_nearly_used_up() -> bool:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError as exc:  # not even one to list them with; or no /proc: say only what the error says
        return exc.errno == errno.EMFILE
    return soft != resource.RLIM_INFINITY and in_use >= soft - SPAWN_DESCRIPTOR_MARGIN


def describe_os_error(exc: OSError) -> str:
    """``exc`` for an operator; running out of file descriptors names the limit to raise."""
    if exc.errno == errno.EMFILE or (exc.errno == -1 and _descriptors_nearly_used_up()):
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


class Spawning:
    """Starting one run (declared here: what it uses of ProcessRunner)."""

    key: str
    instance: str
    replica: int
    manifest: Manifest | None
    ctx: RunnerContext
    env_overrides: dict[str, str]
    pid: int | None
    port: int | None
    started_at: float | None
    last_error: str
    sampler: TreeSampler | None
    _proc: ChildProcess | None
    _cgroup: PluginCgroup | None
    _pumps: list[asyncio.Task[None]]
    _refused: bool
    _spawned_at: float
    _env: dict[str, str]
    _ready_line: asyncio.Event
    _restart_task: asyncio.Task[None] | None
    _restart_reason: str

    if TYPE_CHECKING:

        @property
        def _marker(self) -> str: ...

        def _ready_line_watcher(self, pattern: str) -> Callable[[str], None]: ...

        async def _kill_tree(self, proc: ChildProcess, graceful: bool) -> None: ...

        async def _after_exit(self, proc: ChildProcess) -> None: ...

    async def _spawn_shielded(self) -> ChildProcess | None:
        # Shielded so that a stop arriving mid-spawn still finds the process in self._proc and kills it.
        spawn = asyncio.ensure_future(self._spawn())
        try:
            return await asyncio.shield(spawn)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await spawn
            raise

    async def _spawn(self) -> ChildProcess | None:
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
            proc: ChildProcess | None = await start_child(
                argv,
                cwd=launch.cwd,
                env=env,
                cgroup_procs=procs_fd,
                preexec_fn=in_child(procs_fd, run_as, joined_by_shell=can_join_by_shell()),
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
            await self.ctx.on_spawn(cast("ProcessRunner", self), proc.pid, created)
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

    def _pump_ended(self, proc: ChildProcess, task: asyncio.Task[None]) -> None:
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
