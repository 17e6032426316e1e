"""Plugin groups: the plugins whose manifests name one ``group``, started, stopped and restarted together.

Every action on a group is the supervisor's own action on each member (so each is remembered, audited and
waited for as it is for one plugin). Start and restart run the members in parallel (each waits for its own
dependencies, as a single start does); stop goes level by level from the dependents down to what they depend
on, so no member loses a dependency while it still runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from supervisor_tui.core.graph import graph_of
from supervisor_tui.plugins.model import GroupNotFound, PluginActionError, PluginNotFound, PluginSnapshot

if TYPE_CHECKING:
    from supervisor_tui.core.supervisor import Supervisor

GROUP_ACTIONS = ("start", "stop", "restart")


@dataclass
class GroupResult:
    """What a group action left: every member's snapshot, and the members whose action failed (with why)."""

    group: str
    plugins: list[PluginSnapshot] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    def failure_message(self) -> str:
        """One line naming each failed member."""
        parts = "; ".join(f"{key}: {why}" for key, why in sorted(self.failures.items()))
        return f"{len(self.failures)} of {len(self.plugins)} failed: {parts}"


def groups_of(snapshots: list[PluginSnapshot]) -> dict[str, list[str]]:
    """Each group's member keys (groups and members sorted)."""
    out: dict[str, list[str]] = {}
    for snap in snapshots:
        if snap.group is not None:
            out.setdefault(snap.group, []).append(snap.key)
    return {g: sorted(keys) for g, keys in sorted(out.items())}


def members(sup: Supervisor, group: str) -> list[PluginSnapshot]:
    """The plugins of ``group``; GroupNotFound when there are none."""
    found = [s for s in sup.plugins() if s.group == group]
    if not found:
        raise GroupNotFound(group)
    return found


async def act_on_group(sup: Supervisor, action: str, group: str) -> GroupResult:
    """``action`` (start, stop, restart) on every member of ``group``; GroupNotFound when it has none."""
    if action not in GROUP_ACTIONS:
        raise ValueError(f"unknown group action {action!r} (known: {', '.join(GROUP_ACTIONS)})")
    snaps = members(sup, group)
    result = GroupResult(group)
    method: Callable[[str], Awaitable[PluginSnapshot]] = getattr(sup, action)

    async def one(key: str) -> None:
        try:
            await method(key)
        except PluginActionError as exc:
            result.failures[key] = exc.message
        except PluginNotFound:  # removed meanwhile
            result.failures[key] = "removed while the group action ran"

    if action == "stop":
        graph = graph_of(snaps)
        for level in reversed(graph.levels()):
            await asyncio.gather(*(one(n.key) for n in level if n.key in {s.key for s in snaps}))
    else:
        await asyncio.gather(*(one(s.key) for s in snaps))
    result.plugins = [s for s in sup.plugins() if s.key in {m.key for m in snaps}]
    return result
