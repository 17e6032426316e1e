"""Ending a run's tasks on a stop: ``cancel_until_done`` cancels them and waits, and cancels again what is left.

One ``Task.cancel()`` is not always enough on Python 3.11: a cancellation that arrives while the task awaits a
sub-task it is itself cancelling lands on that sub-task (``suppress(CancelledError)`` around it then swallows it),
and ``asyncio.wait_for`` returns the result when its awaitable finishes in the same loop iteration as the cancel.
A task that swallowed one goes on (a probe loop probes again); a stop that awaited it once waited forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

RECANCEL_S = 1.0  # seconds a cancelled task has to end before it is cancelled again


async def cancel_until_done(
    tasks: Collection[asyncio.Task[None]], on_swallowed: Callable[[asyncio.Task[None]], None] | None = None
) -> None:
    """Cancel ``tasks`` and return once all ended; a task still running ``RECANCEL_S`` after a cancel is cancelled
    again (``on_swallowed`` is told which). Cancelling the caller cancels nothing more: its own cancel propagates."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
        if on_swallowed is not None:
            for task in pending:
                on_swallowed(task)
