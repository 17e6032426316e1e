"""The metrics loop: every process plugin's tree sampled on the bus (plugins.metrics sets the pace), and the
adopted children that exited reaped on the way."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from supervisor_tui.core.supervisor.managed import folder_plugins
from supervisor_tui.plugins.metrics import sample_interval
from supervisor_tui.plugins.process import ProcessRunner
from supervisor_tui.plugins.replicas import ReplicatedRunner

if TYPE_CHECKING:
    from supervisor_tui.core.supervisor.root import Supervisor


async def sample_metrics(sup: Supervisor) -> None:
    """Sample until cancelled."""
    while True:
        await asyncio.sleep(sample_interval(len(folder_plugins(sup.registry))))
        for runner in list(folder_plugins(sup.registry).values()):
            try:
                sample = runner.sample()
            except Exception as exc:  # psutil surprises must not stop sampling
                sup.logs.warning(f"{runner.key}: metrics sample failed: {exc!r}", plugin=runner.key)
                continue
            if sample is not None:
                sup.bus.publish(sample)
        busy: set[int] = set()
        for r in folder_plugins(sup.registry).values():
            if isinstance(r, ReplicatedRunner):
                busy |= r.pids
            elif isinstance(r, ProcessRunner) and r.pid:
                busy.add(r.pid)
        sup.tracking.reap(busy)
