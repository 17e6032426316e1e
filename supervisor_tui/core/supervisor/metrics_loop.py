"""The metrics loop: every process plugin's tree sampled on the bus (plugins.metrics sets the pace), and the
adopted children that exited reaped on the way."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from supervisor_tui.core.events import EventBus
from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.supervisor.managed import ManagedPlugin, folder_plugins
from supervisor_tui.core.supervisor.process_tracking import ProcessTracking
from supervisor_tui.plugins.metrics import sample_interval
from supervisor_tui.plugins.process import ProcessRunner
from supervisor_tui.plugins.replicas import ReplicatedRunner


async def sample_metrics(
    registry: Mapping[str, ManagedPlugin], bus: EventBus, logs: LogHub, tracking: ProcessTracking
) -> None:
    """Sample the folder plugins of ``registry`` onto ``bus`` until cancelled."""
    while True:
        await asyncio.sleep(sample_interval(len(folder_plugins(registry))))
        for runner in list(folder_plugins(registry).values()):
            try:
                sample = runner.sample()
            except Exception as exc:  # psutil surprises must not stop sampling
                logs.warning(f"{runner.key}: metrics sample failed: {exc!r}", plugin=runner.key)
                continue
            if sample is not None:
                bus.publish(sample)
        busy: set[int] = set()
        for r in folder_plugins(registry).values():
            if isinstance(r, ReplicatedRunner):
                busy |= r.pids
            elif isinstance(r, ProcessRunner) and r.pid:
                busy.add(r.pid)
        tracking.reap(busy)
