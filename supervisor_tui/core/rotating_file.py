"""A size-rotated private file: the plugin log files under data/logs and the audit log are written with it.

    f = RotatingFile(path, max_bytes=10 * 1024**2, backups=3)   # path's directory must exist
    f.write("one line\\n")                                        # rotates first when the line would not fit
    f.close()

Rotation renames <name> to <name>.1, <name>.1 to <name>.2 ... up to <name>.<backups> (the oldest is dropped;
with no backups the file starts over). A file never grows past ``max_bytes`` unless one line alone is longer
(it is written whole into a fresh file); ``max_bytes`` 0 never rotates. Every file is created 0600
(core/private.py). Writes are unbuffered: a write that fails (full disk) leaves nothing pending that a later
flush or close would fail on again.
"""

from __future__ import annotations

import os
from pathlib import Path

from supervisor_tui.core.private import open_private


class RotatingFile:
    """Appends text to ``path``, rotating it by size and keeping ``backups`` old files."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self._max, self._backups = path, max_bytes, backups
        self._fd = self._open()

    def _open(self) -> int:
        fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(fd).st_size
        return fd

    def write(self, text: str) -> None:
        data = text.encode("utf-8", errors="replace")
        if self._max > 0 and self._size > 0 and self._size + len(data) > self._max:
            self._rotate()
        self._size += os.write(self._fd, data)

    def _rotate(self) -> None:
        os.close(self._fd)
        for i in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self._backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._fd = self._open()

    def close(self) -> None:
        os.close(self._fd)
