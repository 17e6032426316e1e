"""What a plugin's process leaves behind, and how it is all stopped.

What a plugin spawned is found by more than its process group and the environment marker (both of which a
daemon escapes with ``setsid`` and a cleared environment): on Linux the supervisor process is a child subreaper
(``PR_SET_CHILD_SUBREAPER``, ``become_subreaper``), so what outlives a plugin's main process, or what a run with a
cgroup double-forks away, becomes the supervisor's child, not init's; a plugin process without a cgroup is one
too (``in_child``), so what its children double-fork away stays in its tree. Every descendant pid seen is remembered
(``RunnerContext.descendants``): stop and exit kill those still alive, and ``reap_adopted`` collects the ones
that died as the supervisor's children.

Where cgroups v2 are writable (``plugins.cgroups``, see plugins.cgroups), each run of a plugin also has its own
cgroup (``RunnerContext.cgroups``), which its main process joins before exec (plugins.child_process): nothing it
forks leaves it (what dies of it as the supervisor's child is reaped, ``reap_cgroup_orphans``), so stop
and exit give what is still in it the same treatment as the rest of the tree, then SIGKILL it and remove the cgroup.

- ``TreeTeardown`` (a part of ProcessRunner): ``_kill_tree`` (stop signal to the group and what left it, wait,
  SIGKILL) and ``_after_exit`` (leftovers killed, output drained, port and pid freed).
- ``wait_exit`` (a pidfd, not ``Process.wait()``), ``orphans_of``/``stop_orphans`` (a previous run's), the
  subreaper preexec (``in_child``, ``become_subreaper``), ``adopted_children``/``reap_adopted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, cast

import psutil

from supervisor_tui.plugins.cgroups import TREE_PREFIX, PluginCgroup, join_in_child
from supervisor_tui.plugins.child_process import ChildProcess, unreaped
from supervisor_tui.plugins.health import HealthTracker
from supervisor_tui.plugins.launch import RunAs
from supervisor_tui.plugins.manifest import Manifest
from supervisor_tui.plugins.metrics import (
    TreeSampler,
    alive,
    group_members,
    kill_all,
    marked_processes,
    process_tree,
    signal_group,
)

if TYPE_CHECKING:
    from supervisor_tui.plugins.process import ProcessRunner, RunnerContext


class TreeTeardown:
    """Stopping one run's process tree (declared here: what it uses of ProcessRunner)."""

    key: str
    instance: str
    manifest: Manifest | None
    ctx: RunnerContext
    pid: int | None
    port: int | None
    sampler: TreeSampler | None
    tracker: HealthTracker
    _proc: ChildProcess | None
    _cgroup: PluginCgroup | None
    _pumps: list[asyncio.Task[None]]
    _restart_task: asyncio.Task[None] | None

    if TYPE_CHECKING:

        async def _clear_cgroup(self) -> None: ...

    @property
    def _marker(self) -> str:
        return f"{self.ctx.owner}:{self.instance}"

    def _remember(self, procs: list[psutil.Process]) -> None:
        self.ctx.descendants.update(p.pid for p in procs if p.pid != self.pid)

    async def _leftovers(self, known: list[psutil.Process]) -> list[psutil.Process]:
        """``known`` processes still alive plus every live process in the run's cgroup or, without one, carrying
        this plugin's environment marker.

        A run's cgroup holds everything it forked, so it is asked alone (one small file): reading every process's
        environment was most of a respawn's own cost (tens of ms with a few hundred processes on the machine)."""
        if self._cgroup is not None:
            found = self._cgroup.members()
        else:
            found = await asyncio.to_thread(marked_processes, self._marker)
        pids = {p.pid for p in known}
        return alive(known) + [p for p in found if p.pid not in pids]

    async def _kill_tree(self, proc: ChildProcess, graceful: bool) -> None:
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
            async with asyncio.timeout(wait_s):  # not wait_for: Python 3.11's can swallow a cancellation
                await wait_exit(proc)
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

    async def _after_exit(self, proc: ChildProcess) -> None:
        """After the main process ended: kill leftovers of its group, drain output, free port and pid."""
        if proc.returncode is None:
            return
        tree = await self._leftovers(self.sampler.known_tree() if self.sampler is not None else [])
        tree += [p for p in adopted_children(self.ctx.descendants) if p.pid not in {t.pid for t in tree}]
        self._remember(tree)  # what was re-parented to the supervisor (no plugin subreaper) is reaped below
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
                proc.close_pipes()
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
            await self.ctx.on_exit(cast("ProcessRunner", self))
        except Exception as exc:
            self.ctx.logs.warning(f"{self.instance}: cannot clear recorded pid: {exc!r}", plugin=self.key)


async def wait_exit(proc: ChildProcess) -> int:
    """The exit code, as soon as the process has exited (``Process.wait()`` of Python 3.11 only returns once every
    pipe is closed too, which a grandchild holding stdout open delays forever; ChildProcess watches a pidfd)."""
    return await proc.wait()


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


def in_child(
    procs_fd: int | None, run_as: RunAs | None = None, joined_by_shell: bool = False
) -> Callable[[], None] | None:
    """The preexec_fn of a plugin process, or None when it needs none: join its cgroup (``procs_fd``, when it has
    one), become a subreaper, then become ``run_as`` (the manifest's user). Done here rather than with the
    ``user=`` arguments of subprocess, which must come after the cgroup join (it needs root).

    None (a vfork spawn, see plugins.child_process) when the run has a cgroup that the shell joins
    (``joined_by_shell``) and no user to become: the cgroup holds every descendant, so the plugin need not be a
    subreaper. Without a cgroup it must: what its children double-fork away then stays in its process tree."""
    if procs_fd is not None and run_as is None and joined_by_shell:
        return None
    if procs_fd is None and run_as is None:
        return _subreaper_in_child if _prctl is not None else None
    return functools.partial(_set_up_child, procs_fd, run_as)


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans (Linux); False where that is not possible."""
    return _prctl is not None and _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def adopted_children(descendants: set[int]) -> list[psutil.Process]:
    """Live children of this process that were seen below a plugin (orphans re-parented to the supervisor)."""
    if not descendants:  # none seen: no need to list every process on the machine (psutil's children())
        return []
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return []
    return alive([p for p in children if p.pid in descendants])


def reap_adopted(descendants: set[int], busy: Collection[int] = ()) -> None:
    """Collect the exit status of adopted orphans that died, and forget pids that are gone. ``busy``: pids whose
    status belongs to someone else (plugins' main processes, awaited by the event loop). Never blocks."""
    for pid in list(descendants):
        if pid in busy or pid in unreaped:
            continue
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child (yet): forget it once it is gone for good
            if not psutil.pid_exists(pid):
                descendants.discard(pid)
            continue
        if done:
            descendants.discard(pid)
    reap_cgroup_orphans(busy)


def reap_cgroup_orphans(busy: Collection[int] = ()) -> None:
    """Collect the exit status of this process's zombie children that were in a plugin's cgroup: what a plugin
    with a cgroup double-forked away was re-parented here (it is no subreaper) without ever being in its process
    tree. Cheap: this process's children are listed by the kernel (``/proc/self/task/*/children``), and only those
    that are no plugin's main process (``busy``, ChildProcess.unreaped) are looked at."""
    for pid in _own_children():
        if pid in busy or pid in unreaped or not _zombie_of_a_plugin_cgroup(pid):
            continue
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _own_children() -> set[int]:
    found: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children", "rb") as f:
                found.update(int(pid) for pid in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def _zombie_of_a_plugin_cgroup(pid: int) -> bool:
    """A zombie's cgroup is still the one it died in (cgroup v2 line ``0::``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rpartition(b")")[2].split()[0] != b"Z":
                return False
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            lines = f.read().splitlines()
    except (OSError, IndexError):
        return False
    return any(line.startswith(b"0::") and f"/{TREE_PREFIX}".encode() in line for line in lines)
