"""Plugin processes are tracked so that none outlives its supervisor: cgroups where possible, the child subreaper,
the environment marker, and the pids recorded in the database (see plugins.process and plugins.cgroups).

``clean_orphans`` stops what a previous, killed run left behind before any plugin starts; ``stop_adopted`` stops
what plugins of this run left behind when the supervisor closes.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import psutil

from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.plugin_state import PluginStateStore
from supervisor_tui.plugins.cgroups import CgroupTree, PluginCgroup
from supervisor_tui.plugins.metrics import marked_processes
from supervisor_tui.plugins.process import adopted_children, orphans_of, reap_adopted, stop_orphans


class ProcessTracking:
    """This run's cgroups, every pid seen below a plugin's main process, and the cleanup of a previous run."""

    def __init__(self, plugin_state: PluginStateStore, logs: LogHub, owner: str, use_cgroups: bool) -> None:
        self.plugin_state = plugin_state
        self.logs = logs
        self.owner = owner
        self.use_cgroups = use_cgroups
        self.cgroups: CgroupTree | None = None  # this run's plugin cgroups (None: not used, see open_cgroups)
        self.descendants: set[int] = set()  # every pid seen below a plugin's main process
        self._orphans: asyncio.Task[None] | None = None  # the cleanup of a previous run's processes (once)

    def open_cgroups(self) -> str:
        """Set up cgroup tracking of plugin processes where possible; says which tracking is used. Forks: call it
        before threads start (the store's)."""
        fallback = "plugin processes tracked by process group, environment marker and child subreaper"
        if not self.use_cgroups:
            return f"{fallback} (cgroups off: plugins.cgroups = false)"
        self.cgroups, why = CgroupTree.open(self.owner)
        if self.cgroups is None:
            return f"{fallback} (no cgroups: {why})"
        return f"plugin processes tracked in cgroups under {self.cgroups.path}; their orphans come to the supervisor"

    async def close_cgroups(self) -> None:
        """Remove this run's cgroups (what is still in them is SIGKILLed); one still busy is left and logged."""
        cgroups, self.cgroups = self.cgroups, None
        if cgroups is not None and not await asyncio.to_thread(cgroups.clear):  # still ours: the lock is held
            self.logs.warning(f"cgroup {cgroups.path} still busy, left in place", event="cgroup_failed")

    @property
    def orphans_cleaned(self) -> bool:
        """Whether the cleanup of a previous run's processes is over (plugins may start)."""
        return self._orphans is not None and self._orphans.done()

    async def clean_orphans(self) -> None:
        """Stop what a previous run spawned (it was killed before it could stop it). Runs once; a second call
        waits for the first."""
        if self._orphans is None:
            self._orphans = asyncio.create_task(self._clean_orphans(), name="orphans")
        await asyncio.shield(self._orphans)

    def cleanup_in_flight(self) -> asyncio.Task[None] | None:
        """The orphan cleanup while it runs (cancelled, it SIGKILLs the orphans at once), else None."""
        return self._orphans if self._orphans is not None and not self._orphans.done() else None

    async def _clean_orphans(self) -> None:
        try:
            rows = await self.plugin_state.spawned()
            found, marked, cgroups = await asyncio.to_thread(self._find_orphans, rows)
            if rows:
                await self.plugin_state.clear_pids()
            await stop_orphans([p for procs in found.values() for p in procs] + marked)
            await asyncio.to_thread(lambda: [cgroup.clear() for cgroup in cgroups])  # SIGKILL what forked meanwhile
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # plugins start regardless; their ports tell if something still runs
            self.logs.error(f"cleaning up a previous run's processes failed: {exc!r}", event="internal_error")
            return
        for key, procs in found.items():
            self._report_orphans(f"{key}: stopped {{n}} process(es) left over from a previous run", procs, plugin=key)
        if marked:
            self._report_orphans("stopped {n} process(es) spawned by plugins of a previous run", marked)

    def _report_orphans(self, what: str, procs: list[psutil.Process], **fields: Any) -> None:
        """One ``orphans_killed`` warning: ``what`` with ``{n}`` for the count, then the pids."""
        pids = [p.pid for p in procs]
        message = f"{what.format(n=len(pids))} (pids {', '.join(map(str, pids))})"
        self.logs.warning(message, event="orphans_killed", pids=pids, **fields)

    def _find_orphans(
        self, rows: list[tuple[str, int, float | None]]
    ) -> tuple[dict[str, list[psutil.Process]], list[psutil.Process], list[PluginCgroup]]:
        """Each plugin's leftovers by the pid recorded for it and in its cgroup of the previous run, then the
        processes that left their plugin's group and lost their parent but still carry the marker, then the
        previous run's cgroups. Blocking."""
        found: dict[str, list[psutil.Process]] = {}
        for key, pid, started in rows:
            procs = orphans_of(pid, started)
            if procs:
                found[key] = procs
        seen = {p.pid for procs in found.values() for p in procs}
        cgroups = self.cgroups.plugin_cgroups() if self.cgroups is not None else []
        for cgroup in cgroups:
            # What nothing else finds: a daemon that left the group, cleared its environment, lost its plugin.
            procs = [p for p in cgroup.members() if p.pid not in seen]
            if procs:
                found.setdefault(cgroup.key, []).extend(procs)
                seen.update(p.pid for p in procs)
        marked = [p for p in marked_processes(f"{self.owner}:", True) if p.pid not in seen]
        return found, marked, cgroups

    async def stop_adopted(self) -> None:
        """What plugins left behind that became this process's children (see plugins.process): killed now."""
        leftovers = adopted_children(self.descendants)
        if leftovers:
            self._report_orphans("stopping {n} process(es) plugins left behind", leftovers)
            await stop_orphans(leftovers, grace=1.0)
        reap_adopted(self.descendants)

    def reap(self, busy: set[int]) -> None:
        """Reap adopted children that exited (``busy``: the plugins' main processes, which their runners reap)."""
        reap_adopted(self.descendants, busy=busy)


def owner_id(data_dir: Path) -> str:
    """The identity of the supervisor of ``data_dir`` in its plugins' environment marker and cgroup names."""
    return hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
