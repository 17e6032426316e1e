"""What a process plugin's start needs beyond its command: its env file, its working directory, its user.

``prepare_launch(manifest)`` checks all three before anything is spawned and answers a ``Launch``, or raises
``LaunchRefused`` with the reason: a missing env file, a working directory that is not there, a user that does
not exist or a supervisor that is not root. Such a start cannot succeed until the operator changes something, so
the runner makes the plugin FATAL at once instead of retrying it.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path

from supervisor_tui.plugins.env_file import EnvFileError, read_env_file
from supervisor_tui.plugins.manifest import Manifest


class LaunchRefused(Exception):
    """A start that cannot succeed as the manifest stands (the message says what to fix)."""


@dataclass(frozen=True, slots=True)
class RunAs:
    """The user a plugin process runs as, with its groups and the variables a login would set."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    def environment(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}

    def become(self) -> None:
        """Between fork and exec: take this user's groups, group and uid (in that order, while still root)."""
        os.setgroups(list(self.groups))
        os.setgid(self.gid)
        os.setuid(self.uid)


@dataclass(frozen=True, slots=True)
class Launch:
    """The checked parts of one start: the env file's variables, the directory, the user (None: the supervisor's)."""

    cwd: Path
    env_file: dict[str, str] = field(default_factory=dict)
    run_as: RunAs | None = None


def prepare_launch(manifest: Manifest) -> Launch:
    """The env file read, the working directory and the user checked; LaunchRefused names what is wrong."""
    folder = manifest.folder
    env: dict[str, str] = {}
    if manifest.env_file is not None:
        try:
            env = read_env_file(folder / manifest.env_file)
        except EnvFileError as exc:
            raise LaunchRefused(str(exc)) from None
    cwd = folder
    if manifest.working_dir is not None:
        cwd = folder / manifest.working_dir
        if not cwd.is_dir():
            what = "does not exist" if not cwd.exists() else "is not a directory"
            raise LaunchRefused(f"working_dir {cwd}: {what}")
    run_as = resolve_user(manifest.user) if manifest.user is not None else None
    return Launch(cwd=cwd, env_file=env, run_as=run_as)


def resolve_user(user: str) -> RunAs:
    """The account ``user`` (a name or a numeric uid) names; LaunchRefused when unknown or when not root."""
    euid = os.geteuid()
    try:
        entry = pwd.getpwuid(int(user)) if user.isdecimal() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise LaunchRefused(f"user {user!r}: no such user on this machine") from None
    if euid != 0 and entry.pw_uid != euid:
        try:
            me = pwd.getpwuid(euid).pw_name
        except KeyError:
            me = str(euid)
        raise LaunchRefused(
            f"user {user!r}: running a plugin as another user needs the supervisor to run as root (it runs as {me})"
        )
    groups = tuple(sorted({entry.pw_gid, *os.getgrouplist(entry.pw_name, entry.pw_gid)}))
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or "/")
