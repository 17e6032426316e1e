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
# Process trees sampled a second at most, on average: with more than 50 plugins the interval grows past 2 s
# (500 plugins: every 20 s). Sampling is nearly all an idle supervisor does, about 0.1-0.15 ms a tree here, and
# 250 trees a second made 4 % of a core.
TREES_PER_SECOND = 25


def sample_interval(trees: int) -> float:
    """Seconds between two samples of every plugin's process tree, for ``trees`` of them."""
    return max(SAMPLE_INTERVAL, trees / TREES_PER_SECOND)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class TreeSampler:
    """Samples one root process and all its descendants; remembers each one's CPU time between samples so CPU %
    is measured over the interval, and the tree so leftovers can be found after the root died.

    Each process costs one read of /proc/<pid>/stat (CPU time, threads, RSS, start time) and one listing of its
    fds: psutil's per-call reads cost four times that, which was most of an idle supervisor's CPU."""

    def __init__(self, key: str, pid: int) -> None:
        self.key, self.pid = key, pid
        self._procs: dict[int, _Tracked] = {}
        try:
            root = _Tracked(psutil.Process(pid))
        except (psutil.Error, OSError):
            root = None
        self._root_start = root.start if root is not None else None
        if root is not None:
            self._procs[pid] = root

    def known_tree(self) -> list[psutil.Process]:
        """Processes seen in the tree at the last sample (some may be gone)."""
        return [t.proc for t in self._procs.values()]

    def sample(self) -> MetricsSample | None:
        """One sample of the tree, or None when the root is gone or /proc cannot be read (out of descriptors)."""
        try:
            return self._sample()
        except OSError:
            return None

    def _sample(self) -> MetricsSample | None:
        root = self._procs.get(self.pid)
        if root is None or self._root_start is None:
            return None
        now = time.monotonic()
        root_stat = _stat(self.pid)
        if root_stat is None or root_stat.start != self._root_start:
            return None  # gone, or its pid was reused
        current: dict[int, _Tracked] = {self.pid: root}
        stats = {self.pid: root_stat}
        for pid in descendant_pids(self.pid):
            stat = _stat(pid)
            if stat is None:
                continue
            known = self._procs.get(pid)
            if known is None or known.start != stat.start:
                try:
                    known = _Tracked(psutil.Process(pid), stat)
                except (psutil.Error, OSError):
                    continue
            current[pid] = known
            stats[pid] = stat
        self._procs = current
        cpu = 0.0
        rss = threads = fds = count = 0
        for pid, tracked in current.items():
            stat = stats[pid]
            if stat.zombie:
                continue
            try:
                fds += len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:  # another user's process, or gone since
                continue
            cpu += tracked.cpu_percent(stat.cpu_ticks, now)
            rss += stat.rss_pages * PAGE_SIZE
            threads += stat.threads
            count += 1
        if count == 0:
            return None
        return MetricsSample(
            key=self.key, cpu_percent=round(cpu, 1), rss=rss, threads=threads, fds=fds, processes=count, ts=time.time()
        )


class _Stat:
    """The fields of /proc/<pid>/stat a sample needs."""

    __slots__ = ("cpu_ticks", "rss_pages", "start", "threads", "zombie")

    def __init__(self, fields: list[bytes]) -> None:
        # Fields after "(comm)", numbered from 3 (state) as in proc(5): utime 14, stime 15, num_threads 20,
        # starttime 22, rss 24.
        self.zombie = fields[0] == b"Z"
        self.cpu_ticks = int(fields[11]) + int(fields[12])
        self.threads = int(fields[17])
        self.start = int(fields[19])
        self.rss_pages = int(fields[21])


def _stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):  # gone
        return None
    return _Stat(data[data.rindex(b")") + 2 :].split())


class _Tracked:
    """One process of the tree: its psutil handle (for signalling it later) and its CPU time at the last sample."""

    __slots__ = ("last", "proc", "start")

    def __init__(self, proc: psutil.Process, stat: _Stat | None = None) -> None:
        self.proc = proc
        stat = stat or _stat(proc.pid)
        if stat is None:
            raise psutil.NoSuchProcess(proc.pid)
        self.start = stat.start
        self.last = (stat.cpu_ticks, time.monotonic())

    def cpu_percent(self, ticks: int, now: float) -> float:
        """% of one core since the last sample (0 on the first, like psutil's first ``cpu_percent(None)``)."""
        last_ticks, last_time = self.last
        self.last = (ticks, now)
        elapsed = now - last_time
        if elapsed <= 0:
            return 0.0
        return (ticks - last_ticks) / CLOCK_TICKS / elapsed * 100


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
