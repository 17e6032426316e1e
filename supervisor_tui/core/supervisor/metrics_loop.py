"""The metrics loop: every process plugin's tree sampled on the bus (plugins.metrics sets the pace), and the
adopted children that exited reaped on the way."""

from __future__ import annotations

import asyncio

from supervisor_tui.core.events import EventBus
from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.supervisor.process_tracking import ProcessTracking
from supervisor_tui.core.supervisor.registry import PluginRegistry
from supervisor_tui.plugins.metrics import sample_interval


async def sample_metrics(registry: PluginRegistry, bus: EventBus, logs: LogHub, tracking: ProcessTracking) -> None:
    """Sample the folder plugins of ``registry`` onto ``bus`` until cancelled."""
    while True:
        await asyncio.sleep(sample_interval(len(registry.from_folders)))
        for runner in list(registry.from_folders.values()):
            try:
                sample = runner.sample()
            except Exception as exc:  # psutil surprises must not stop sampling
                logs.warning(f"{runner.key}: metrics sample failed: {exc!r}", plugin=runner.key)
                continue
            if sample is not None:
                bus.publish(sample)
        busy: set[int] = set()
        for r in registry.from_folders.values():
            busy |= r.pids()
        tracking.reap(busy)
