"""Plugin process trees in cgroups v2, where the supervisor may create cgroups (Linux).

``CgroupTree.open(owner)`` finds the cgroup2 file system (``/proc/self/mountinfo``; ``/sys/fs/cgroup``, or
``/sys/fs/cgroup/unified`` on hybrid hosts) and this process's own cgroup (the ``0::`` line of
``/proc/self/cgroup``), makes ``<own cgroup>/supervisor-tui.<owner>`` there and checks, with one forked child,
that a process can join a cgroup below it. Where any of that fails (no cgroup2, read-only, not root and not
delegated) it returns None and why: the supervisor then tracks plugins by process group, environment marker and
child subreaper only. Only membership is used, no controller is enabled, so cgroup v2's "no internal processes"
rule does not apply and the tree may sit below the supervisor's own cgroup.

Each plugin run has ``<tree>/<plugin key>@<run>`` (``PluginCgroup``; a new name for every run, so the removal of
the previous run's never races with the next run's start). Its main process joins it before exec by writing to a
descriptor the parent opened: ``/bin/sh`` does (plugins.child_process), or ``join_in_child`` between fork and exec
where a ``preexec_fn`` is needed anyway; so nothing it forks leaves it, whatever session, process group or
environment it takes. ``clear()`` SIGKILLs every member (``cgroup.kill``, else each pid of
``cgroup.procs``) and removes the directory once the members are gone. A supervisor that was SIGKILLed leaves its
tree behind; the next start with the same data dir (same owner) in the same cgroup finds it (``plugin_cgroups()``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

TREE_PREFIX = "supervisor-tui."
PROBE = ".probe"  # the cgroup of the startup check; a leading dot keeps it apart from plugin keys
CLEAR_TIMEOUT = 2.0  # seconds for SIGKILLed members to exit before a directory is given up


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> tuple[Path, str] | None:
    """The cgroup2 mount point and the cgroup path it shows as its root, or None without one."""
    try:
        with open(mountinfo, encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                # "id parent dev root mountpoint options [optional...] - fstype source superoptions"
                if "-" in fields and fields[fields.index("-") + 1] == "cgroup2":
                    return Path(_unescape(fields[4])), _unescape(fields[3])
    except (OSError, IndexError):
        return None
    return None


def _unescape(field: str) -> str:
    """mountinfo writes spaces, tabs, newlines and backslashes as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def own_cgroup(cgroup_file: str = "/proc/self/cgroup") -> str | None:
    """This process's cgroup v2 path (``/`` at the root), or None."""
    try:
        with open(cgroup_file, encoding="utf-8") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        return None
    return None


def join_in_child(procs_fd: int) -> None:
    """Between fork and exec: move the calling process into the cgroup whose ``cgroup.procs`` is ``procs_fd``.
    A refusal leaves it where it is (the process group, marker and subreaper still apply)."""
    try:
        os.write(procs_fd, b"0")
    except OSError:
        pass


@dataclass(frozen=True)
class PluginCgroup:
    """One plugin run's cgroup directory."""

    path: Path

    @property
    def key(self) -> str:
        """The plugin's key (the name without its ``@<run>``)."""
        return self.path.name.rpartition("@")[0] or self.path.name

    @property
    def run(self) -> int:
        """The run's number (the name's ``@<run>``; 0 without one)."""
        number = self.path.name.rpartition("@")[2]
        return int(number) if number.isdigit() else 0

    def open_procs(self) -> int:
        """A descriptor on ``cgroup.procs`` for ``join_in_child`` (close-on-exec; the caller closes it)."""
        return os.open(self.path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)

    def pids(self) -> list[int]:
        """The members now (empty when the directory is gone)."""
        try:
            return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def members(self) -> list[psutil.Process]:
        """The members now, as processes (those that exited meanwhile left out)."""
        found = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(pid))
        return found

    def kill(self) -> None:
        """SIGKILL every member: ``cgroup.kill`` (Linux 5.14+), else each pid in ``cgroup.procs``."""
        try:
            (self.path / "cgroup.kill").write_text("1")
            return
        except FileNotFoundError:
            if not self.path.exists():
                return
        except OSError:
            pass
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def clear(self, timeout: float = CLEAR_TIMEOUT) -> bool:
        """Kill every member and remove the directory; False when it is still busy after ``timeout``. Blocking."""
        deadline = time.monotonic() + timeout
        while True:
            self.kill()  # again each round: a member may have forked before the first SIGKILL reached it
            try:
                os.rmdir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                # EBUSY while members are still exiting
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    return False
            time.sleep(0.01)


class CgroupTree:
    """``<own cgroup>/supervisor-tui.<owner>``: one supervisor's plugin cgroups."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._runs = 0  # plugin runs so far, all plugins together: the number in their cgroups' names

    @classmethod
    def locate(cls, owner: str) -> CgroupTree | None:
        """Where the tree of ``owner`` is (or would be) for this process, or None without cgroup v2. No check."""
        mount = cgroup2_mount()
        own = own_cgroup()
        if mount is None or own is None:
            return None
        point, root = mount
        try:
            below = Path(own).relative_to(root)
        except ValueError:  # our cgroup is not visible in this mount (another cgroup namespace's)
            return None
        return cls(point / below / f"{TREE_PREFIX}{owner}")

    @classmethod
    def open(cls, owner: str) -> tuple[CgroupTree | None, str]:
        """The tree of ``owner``, created and checked, or (None, why it cannot be used here)."""
        tree = cls.locate(owner)
        if tree is None:
            return None, "no cgroup v2 file system with this process's cgroup in it"
        try:
            tree.path.mkdir(exist_ok=True)  # a previous run's may still be there, with its leftovers
            tree._check_joinable()
        except OSError as exc:
            with contextlib.suppress(OSError):
                tree.path.rmdir()
            return None, f"cannot use {tree.path}: {exc.strerror or exc}"
        # Numbers go on from a previous run's, whose cgroups are removed meanwhile: no name means two runs.
        tree._runs = max([c.run for c in tree.plugin_cgroups()], default=0)
        return tree, ""

    def _check_joinable(self) -> None:
        """Fork a child that joins a cgroup below the tree, as plugin processes will; OSError when refused."""
        probe = PluginCgroup(self.path / PROBE)
        probe.path.mkdir(exist_ok=True)
        try:
            fd = probe.open_procs()
            try:
                pid = os.fork()
                if pid == 0:  # the child only writes and exits, as between fork and exec of a plugin
                    try:
                        os.write(fd, b"0")
                        os._exit(0)
                    except OSError as exc:
                        os._exit(exc.errno or 1)
                _, status = os.waitpid(pid, 0)
            finally:
                os.close(fd)
        finally:
            probe.clear()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise OSError(code, os.strerror(code))

    def plugin(self, key: str) -> PluginCgroup:
        """A new, empty cgroup for a run of ``key`` (OSError when the kernel refuses it)."""
        while True:
            self._runs += 1
            cgroup = PluginCgroup(self.path / f"{key}@{self._runs}")
            try:
                cgroup.path.mkdir()
                return cgroup
            except FileExistsError:  # a previous supervisor run's that could not be removed: not to be shared
                continue

    def plugin_cgroups(self) -> list[PluginCgroup]:
        """Every plugin cgroup in the tree (at startup: those of a previous run that was killed)."""
        try:
            entries = list(os.scandir(self.path))
        except OSError:
            return []
        return [PluginCgroup(Path(e.path)) for e in entries if e.is_dir(follow_symlinks=False)]

    def clear(self, timeout: float = CLEAR_TIMEOUT) -> bool:
        """Kill what is left in every plugin cgroup, remove them and the tree; False when some stayed. Blocking."""
        cleared = all([cgroup.clear(timeout) for cgroup in self.plugin_cgroups()])
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return cleared
