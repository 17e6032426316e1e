"""Private files: the data dir holds secrets (tokens, plugins' env overrides in the database, log lines), so every
directory the supervisor creates there is 0700 and every file 0600, whatever the process umask.

    note = private_dir(data_dir)          # created 0700, or tightened when this user owns it (note says so)
    fd = open_private(path, os.O_WRONLY)  # created 0600 (O_CREAT added), an existing file tightened
    note = make_private(path)             # an existing file tightened to 0600 (None when it already was)
    token = new_token()                   # 256 random bits, URL-safe, never starting with "-"

The umask is never changed: plugins inherit it and their own files are theirs to decide.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def new_token() -> str:
    """A fresh secret (admin, settings or console token): 32 random bytes, URL-safe base64.

    Never starts with "-", so `--token TOKEN` on a command line is never read as another option
    (one draw in 64 of token_urlsafe does start with it)."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def _too_open(st: os.stat_result) -> bool:
    """The group or others have access, and it is ours to change."""
    return bool(stat.S_IMODE(st.st_mode) & 0o077) and st.st_uid == os.getuid()


def _tighten(path: Path, st: os.stat_result, mode: int) -> str | None:
    if not _too_open(st):
        return None
    os.chmod(path, mode)
    return f"{path} was mode {stat.S_IMODE(st.st_mode):04o}: tightened to {mode:04o}"


def private_dir(path: Path) -> str | None:
    """Create ``path`` (and missing parents) with the leaf 0700, or tighten an existing one we own."""
    try:
        path.mkdir(parents=True, mode=DIR_MODE)
    except FileExistsError:
        return _tighten(path, os.stat(path), DIR_MODE)
    os.chmod(path, DIR_MODE)  # mkdir's mode goes through the umask
    return None


def make_private(path: Path) -> str | None:
    """Tighten an existing file we own to 0600; None when it is missing or already private."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _tighten(path, st, FILE_MODE)


def open_private(path: Path, flags: int) -> int:
    """``os.open`` with O_CREAT and mode 0600; a file that existed with a wider mode is tightened."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        if _too_open(os.fstat(fd)):
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
