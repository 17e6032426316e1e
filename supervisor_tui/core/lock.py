"""The data-dir lock: one supervisor per data dir, so two never fight over plugins, ports and the database.

An advisory ``flock`` on ``<data dir>/supervisor.lock``: the kernel drops it when the process dies (even on
SIGKILL), so a stale lock file never blocks a restart. Taking it creates the data dir 0700 (or tightens it, see
``notes``) and the lock file 0600.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from supervisor_tui.core.private import open_private, private_dir

LOCK_FILE = "supervisor.lock"


class LockError(Exception):
    """Another supervisor already runs on this data dir (or the lock file cannot be created)."""


class DataDirLock:
    """Holds the exclusive lock on a data dir while the supervisor runs."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None
        self.notes: list[str] = []  # permissions tightened on the way (the supervisor logs them)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise LockError naming the process that holds it."""
        if self._fd is not None:
            return
        try:
            note = private_dir(self.path.parent)
            fd = open_private(self.path, os.O_RDWR)
        except OSError as exc:
            raise LockError(f"cannot create lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise LockError(
                f"another supervisor{who} is already running on data dir {self.path.parent}; "
                "stop it first or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        self.notes = [note] if note else []

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
