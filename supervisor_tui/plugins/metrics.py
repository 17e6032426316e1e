"""psutil sampling of a plugin's whole process tree, and finding/killing what a plugin left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import psutil

from supervisor_tui.core.events import MetricsSample

SAMPLE_INTERVAL = 2.0
HISTORY = 180  # samples: 6 minutes at one every 2 s


class TreeSampler:
    """Samples one root process and all its descendants; keeps psutil objects between samples so CPU % is
    measured over the interval, and remembers the tree so leftovers can be found after the root died."""

    def __init__(self, key: str, pid: int) -> None:
        self.key, self.pid = key, pid
        self._procs: dict[int, psutil.Process] = {}
        try:
            self._root: psutil.Process | None = psutil.Process(pid)
            self._root.cpu_percent(None)
            self._procs[pid] = self._root
        except psutil.Error:
            self._root = None

    def known_tree(self) -> list[psutil.Process]:
        """Processes seen in the tree at the last sample (some may be gone)."""
        return list(self._procs.values())

    def sample(self) -> MetricsSample | None:
        """One sample of the tree, or None when the root is gone or /proc cannot be read (out of descriptors)."""
        try:
            return self._sample()
        except OSError:
            return None

    def _sample(self) -> MetricsSample | None:
        root = self._root
        if root is None:
            return None
        if not root.is_running():
            return None
        current: dict[int, psutil.Process] = {self.pid: root}
        for pid in descendant_pids(self.pid):
            known = self._procs.get(pid)
            if known is not None and known.is_running():
                current[pid] = known
                continue
            try:
                child = psutil.Process(pid)
                child.cpu_percent(None)  # first call primes the counter
            except psutil.Error:
                continue
            current[pid] = child
        self._procs = current
        cpu = 0.0
        rss = threads = fds = count = 0
        for proc in current.values():
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss
                    threads += proc.num_threads()
                    fds += proc.num_fds()
                    count += 1
            except psutil.Error:
                continue
        if count == 0:
            return None
        sample = MetricsSample(
            key=self.key, cpu_percent=round(cpu, 1), rss=rss, threads=threads, fds=fds, processes=count, ts=time.time()
        )
        return sample


def descendant_pids(pid: int) -> list[int]:
    """Pids of every descendant of ``pid``.

    Walks /proc/<pid>/task/<tid>/children, which costs a few reads per process of the tree; psutil's
    ``children()`` reads every process on the machine, too much to do for each plugin every 2 s."""
    out: list[int] = []
    todo = [pid]
    seen = {pid}
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children", "rb") as f:
                    kids = f.read().split()
            except FileNotFoundError:  # kernel without CONFIG_PROC_CHILDREN: ask psutil
                try:
                    return [p.pid for p in psutil.Process(pid).children(recursive=True)]
                except psutil.Error:
                    return out
            except OSError:
                continue
            for kid in kids:
                child = int(kid)
                if child not in seen:
                    seen.add(child)
                    out.append(child)
                    todo.append(child)
    return out


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants now (empty when ``pid`` is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except (psutil.Error, OSError):  # OSError: out of descriptors to read /proc with
        return []


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running and not zombies (a zombie holds no resources and cannot be killed)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
        except OSError:  # out of descriptors to read /proc with: count it as alive, so it is signalled again
            out.append(p)
    return out


def group_members(pgid: int, not_before: float | None = None) -> list[psutil.Process]:
    """Live processes of process group ``pgid`` (created at or after ``not_before``, to skip recycled ids)."""
    out = []
    for p in psutil.process_iter(["create_time"]):
        try:
            if os.getpgid(p.pid) != pgid:
                continue
            if not_before is not None and p.info["create_time"] < not_before - 1.0:
                continue
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return out


def kill_all(procs: list[psutil.Process], sig: int = signal.SIGKILL) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.Error:
            continue
        except OSError:  # psutil could not check the pid is still the same process (out of descriptors)
            with contextlib.suppress(OSError):
                os.kill(p.pid, sig)


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


OWNER_ENV = "PLUGIN_SUPERVISOR_ID"  # set in every plugin's environment: "<data dir id>:<plugin key>"


def marked_processes(marker: str, prefix: bool = False) -> list[psutil.Process]:
    """Live processes whose environment has ``OWNER_ENV=<marker>`` (or starting with it when ``prefix``).

    Children inherit the environment, so this finds what a plugin spawned even after it left the process group
    and lost its parent. Linux: reads /proc/<pid>/environ (processes of other users are skipped). Blocking."""
    needle = f"{OWNER_ENV}={marker}".encode()
    own = os.getpid()
    found: list[psutil.Process] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var == needle or (prefix and var.startswith(needle)):
                try:
                    proc = psutil.Process(int(entry))
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        found.append(proc)
                except psutil.Error:
                    pass
                break
    return found
