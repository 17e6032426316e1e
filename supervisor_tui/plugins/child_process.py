"""Starting a plugin's main process cheaply (``start_child``) and watching it (``ChildProcess``).

Why not the event loop's ``subprocess_exec``: uvloop (headless mode) forks the whole supervisor and, in the child,
re-initialises the interpreter and re-creates its event loop before exec, with or without a ``preexec_fn``; asyncio's
default loop forks (rather than vforks) as soon as a ``preexec_fn`` is given. Either costs 10-30 ms per spawn for a
supervisor with a large heap (copy-on-write faults in both processes), and the event loop is blocked meanwhile:
500 plugins took over 6 s just to fork. ``subprocess.Popen`` without a ``preexec_fn`` uses vfork and exec at once
(about 1-3 ms, the same on both loops).

What the ``preexec_fn`` did is then done otherwise:
- the cgroup join: the command is exec'd through ``/bin/sh -c`` (``JOIN_CGROUP``) with the run's ``cgroup.procs``
  as its standard input; the shell writes ``0`` to it (itself: the process that becomes the command at exec)
  before anything runs, then execs the command with stdin on /dev/null. Nothing the command forks can be outside
  the cgroup: it is in it before its first instruction.
- the per-plugin child subreaper: not needed with a cgroup, which holds every descendant whatever it does; what a
  daemon double-forks away is re-parented to the supervisor (a subreaper itself), which reaps it.
Without a cgroup, or with a manifest ``user`` (set in the child by ``RunAs.become``), the caller still passes a
``preexec_fn`` (see process_tree.in_child), and Popen forks as before.

The child is in its own session (``start_new_session``); Popen closes every descriptor but 0-2 in it
(``close_fds``), so nothing of the supervisor's leaks into a plugin. Its exit is seen on a pidfd (a 0.2 s poll
where there are none) and reaped here, not by the event loop's child watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

SHELL = "/bin/sh"
# $0 is "sh"; "$@" the command. echo is a builtin (no fork); a refused write leaves the process where it is, as the
# preexec join did (its process group and environment marker still apply), and says nothing on the plugin's stderr.
JOIN_CGROUP = 'echo 0 2>/dev/null >&0; exec "$@" </dev/null'
STREAM_LIMIT = 2**16  # asyncio.subprocess's default
POLL_S = 0.2  # without pidfds (Linux < 5.3): how often exit is looked for
# Pids of the ChildProcesses not reaped yet: whoever reaps the supervisor's other children leaves these alone.
unreaped: set[int] = set()


def can_join_by_shell() -> bool:
    """Whether a cgroup can be joined through ``JOIN_CGROUP`` here."""
    return os.access(SHELL, os.X_OK)


def check_executable(program: str, cwd: str | Path, env: dict[str, str]) -> None:
    """Raise what exec would (FileNotFoundError, PermissionError) for ``program``, as Popen does when it runs it
    itself: through the shell, a missing program would only be a ``sh: exec: not found`` line and exit 127."""
    if "/" in program:
        path = Path(cwd, program)
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        if path.is_dir() or not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
        return
    if shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


class ChildProcess:
    """A running plugin process: the part of asyncio.subprocess.Process the supervisor uses (``pid``,
    ``returncode``, ``stdout``/``stderr`` readers, ``wait()``), plus ``close_pipes()``."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        unreaped.add(popen.pid)
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pidfd: int | None = None
        self._poller: asyncio.Task[None] | None = None

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def poll(self) -> int | None:
        """The exit code if the process has exited by now (then it is reaped here), else None. Never blocks. For
        a decision that must not wait for the exit to come through the event loop: a loop that was busy wakes with
        the exit and a timer due together, and may run the timer's waiter first."""
        if self._popen.returncode is None and self._popen.poll() is not None:
            self._reap()
        return self._popen.returncode

    async def wait(self) -> int:
        """The exit code, as soon as the process itself has exited (whoever still holds its pipes)."""
        return await asyncio.shield(self._exited)

    def close_pipes(self) -> None:
        """Close our ends of its output pipes (something else still holds them open: their readers never end)."""
        for transport in self._transports:
            transport.close()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        readers = []
        try:
            for pipe in (self._popen.stdout, self._popen.stderr):
                assert pipe is not None
                reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
                transport, _ = await loop.connect_read_pipe(
                    lambda r=reader: asyncio.StreamReaderProtocol(r, loop=loop),  # type: ignore[misc]
                    pipe,
                )
                self._transports.append(transport)
                readers.append(reader)
        except BaseException:
            self._close_unconnected()
            raise
        self.stdout, self.stderr = readers

    def _close_unconnected(self) -> None:
        self.close_pipes()
        for pipe in (self._popen.stdout, self._popen.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):
            self._poller = asyncio.create_task(self._poll(), name=f"exit-poll:{self.pid}")
            return
        loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        if self._popen.poll() is None:  # readable pidfd but not reapable yet: cannot happen, but do not spin
            return
        unreaped.discard(self.pid)
        if self._pidfd is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if not self._exited.done():
            self._exited.set_result(self._popen.returncode)

    async def _poll(self) -> None:
        while self._popen.poll() is None:  # noqa: ASYNC110 - no pidfd to wait on: polling another process
            await asyncio.sleep(POLL_S)
        self._reap()


async def start_child(
    argv: Sequence[str],
    *,
    cwd: str | Path,
    env: dict[str, str],
    cgroup_procs: int | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> ChildProcess:
    """Start ``argv`` in its own session with stdin on /dev/null and its output on pipes. ``cgroup_procs``
    without ``preexec_fn``: the run's ``cgroup.procs`` descriptor, joined through ``JOIN_CGROUP``; with one,
    ``preexec_fn`` does everything itself (fork, not vfork). OSError/ValueError/SubprocessError as Popen's."""
    args = list(argv)
    stdin: int = subprocess.DEVNULL
    if cgroup_procs is not None and preexec_fn is None:
        check_executable(args[0], cwd, env)
        args = [SHELL, "-c", JOIN_CGROUP, "sh", *args]
        stdin = cgroup_procs
    # Blocking, on purpose: a vfork spawn returns within a few ms (exec of the command or the shell), less than a
    # thread hop would cost; the event loop's own spawns block it longer.
    popen = subprocess.Popen(  # noqa: ASYNC220
        args,
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
        preexec_fn=preexec_fn,
    )
    child = ChildProcess(popen)
    child._watch()
    try:
        await child._connect()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        await child.wait()
        raise
    return child
