"""How a plugin's main process is started (plugins.child_process): a vfork spawn that joins the run's cgroup through
a shell before the command runs, with no descriptor of the supervisor's in it; the per-plugin subreaper only
without a cgroup. Real headless supervisors (uvloop) and in-process ones (asyncio's loop), real cgroups."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import HeadlessProcess, cgroup_tree, open_supervisor, wait_until, write_plugin
from test_faults_process import CGROUPS_UNUSABLE, _cgroup_of, cgroups_on, living, needs_cgroups

from supervisor_tui.config import Settings
from supervisor_tui.core.supervisor import PluginActionError

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")
__all__ = ["cgroups_on"]  # a fixture, imported to be found here

Headless = Callable[..., HeadlessProcess]

# Forks before anything else (a daemon in a session of its own, whose parent exits at once), then becomes sleep.
FORKS_AT_ONCE = ["/bin/sh", "-c", "setsid -f /bin/sh -c 'echo $$ > daemon.pid; exec sleep 3600'; exec sleep 3600"]


def _forking_plugin(make_plugin: Callable[..., Path], key: str, command: list[str] = FORKS_AT_ONCE) -> Path:
    folder = make_plugin(key, "sleeper.py")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["command"] = command
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


async def _daemon_of(folder: Path) -> int:
    pidfile = folder / "daemon.pid"
    return int(await wait_until(lambda: pidfile.exists() and pidfile.read_text().strip()))


@needs_cgroups
@pytest.mark.usefixtures("cgroups_on")
async def test_what_a_plugin_forks_first_thing_is_in_its_cgroup_and_reaped_by_the_supervisor(
    headless: Headless, make_plugin: Callable[..., Path], settings: Settings
) -> None:
    folder = _forking_plugin(make_plugin, "forker")
    proc = headless()
    record = await proc.wait_state("forker", "RUNNING")
    main = int(record["pid"])
    daemon = await _daemon_of(folder)
    tree = cgroup_tree(settings)
    assert tree is not None
    cgroup = _cgroup_of(tree, "forker")
    assert set(cgroup.pids()) == {main, daemon}  # joined before the first fork: nothing escaped it
    # No per-plugin subreaper with a cgroup: the orphan went to the supervisor (a subreaper), not to the plugin.
    assert psutil.Process(daemon).ppid() == proc.pid
    url = str((await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"])
    token = (settings.data_dir / "admin.token").read_text().strip()
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        assert (await client.post("/api/v1/plugins/forker/stop")).status_code == 200
    assert not living([main, daemon]) and not cgroup.path.exists()
    # Killed and reaped by the supervisor, which is still running: no zombie of it is left.
    await wait_until(lambda: not psutil.pid_exists(daemon), timeout=15)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


@needs_cgroups
@pytest.mark.usefixtures("cgroups_on")
async def test_an_orphan_that_exits_while_its_plugin_runs_is_reaped(
    headless: Headless, make_plugin: Callable[..., Path]
) -> None:
    # The daemon lives 2 s, then exits by itself; nothing but the cgroup it died in says it was the plugin's.
    command = [*FORKS_AT_ONCE[:2], FORKS_AT_ONCE[2].replace("exec sleep 3600'", "exec sleep 2'", 1)]
    folder = _forking_plugin(make_plugin, "forker", command)
    proc = headless()
    await proc.wait_state("forker", "RUNNING")
    daemon = await _daemon_of(folder)
    assert psutil.Process(daemon).ppid() == proc.pid
    # Not left a zombie of the supervisor for as long as the plugin runs.
    await wait_until(lambda: not psutil.pid_exists(daemon), timeout=20)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


async def test_without_cgroups_the_plugin_is_the_subreaper_of_what_it_forks(
    headless: Headless, make_plugin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERVISOR_TUI_PLUGINS_CGROUPS", "false")
    folder = _forking_plugin(make_plugin, "forker")
    proc = headless()
    record = await proc.wait_state("forker", "RUNNING")
    daemon = await _daemon_of(folder)
    # Nothing else would find this daemon (own session, no parent of the plugin's): it stays in the plugin's tree.
    assert psutil.Process(daemon).ppid() == int(record["pid"])
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert not living([daemon])


def _descriptors(pid: int) -> dict[int, str]:
    fds = Path(f"/proc/{pid}/fd")
    return {int(fd.name): os.readlink(fd) for fd in fds.iterdir()}


@pytest.mark.parametrize("cgroups", [True, False])
async def test_a_plugin_process_has_only_its_stdio_and_its_own_session(
    cgroups: bool, make_settings: Callable[..., Settings]
) -> None:
    """The in-process supervisor (asyncio's event loop): nothing of the supervisor's (cgroup.procs, sockets,
    the database) is open in the plugin, with the shell's cgroup join and with the preexec path."""
    settings = make_settings(**{"plugins.cgroups": cgroups})
    folder = write_plugin(settings.plugins_dir, "plain", "sleeper.py")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["command"] = ["sleep", "3600"]  # found on PATH, as exec would
    (folder / "manifest.json").write_text(json.dumps(manifest))
    async with open_supervisor(settings) as sup:
        snap = await sup.start("plain")
        assert snap.pid is not None
        fds = _descriptors(snap.pid)
        assert set(fds) == {0, 1, 2}, fds
        assert fds[0] == "/dev/null" and fds[1].startswith("pipe:") and fds[2].startswith("pipe:")
        assert os.getsid(snap.pid) == snap.pid and os.getpgid(snap.pid) == snap.pid
        assert psutil.Process(snap.pid).cmdline() == ["sleep", "3600"]  # the shell exec'd it: same pid, same argv
        tree = sup.tracking.cgroups
        assert (tree is not None) == (cgroups and not CGROUPS_UNUSABLE)
        if tree is not None:
            assert snap.pid in _cgroup_of(tree, "plain").pids()
        await sup.stop("plain")


@pytest.mark.parametrize("command", [["./no-such-program"], ["no-such-program-on-path"], ["./plugin.py"]])
async def test_a_program_that_cannot_run_says_why_through_the_cgroup_join(
    command: list[str], settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    """Through the shell, exec's error would only be a line on the plugin's stderr and exit 127: the spawn
    itself says it, as a direct exec does."""
    folder = make_plugin("ghost", "import time\ntime.sleep(3600)\n", command=command, startretries=0)
    (folder / "plugin.py").chmod(0o644)  # not executable
    async with open_supervisor(settings) as sup:
        with pytest.raises(PluginActionError):
            await sup.start("ghost")
        snap = sup.plugin("ghost")
        assert snap.state == "FATAL" and command[0] in snap.last_error
        why = "Permission denied" if command[0] == "./plugin.py" else "No such file"
        assert why in snap.last_error, snap.last_error
