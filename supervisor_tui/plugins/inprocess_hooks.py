"""``HookQueue``: one in-process plugin's pending hook calls, run one at a time in order.

The queue is bounded (``hook_queue``): when full, the oldest call is dropped and counted. Heartbeat hooks
(``COALESCED_HOOK``) coalesce with one already waiting at the tail, so a burst of heartbeats costs one call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from supervisor_tui.plugins.inprocess_interface import COALESCED_HOOK

HookCall = tuple[str, tuple[Any, ...]]


class HookQueue:
    """Pending hook calls of one plugin; ``run(handler)`` calls ``handler(hook, args)`` for each, in order."""

    def __init__(self, limit: int, counters: dict[str, int]) -> None:
        self.limit = limit
        self.counters = counters  # the plugin's: "hooks_dropped" counts the calls a full queue dropped
        self._calls: deque[HookCall] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def put(self, hook: str, args: tuple[Any, ...]) -> None:
        """Queue one call; heartbeats coalesce with a queued one, a full queue drops the oldest call."""
        calls = self._calls
        if hook == COALESCED_HOOK and calls and calls[-1][0] == COALESCED_HOOK:
            count, ids = calls[-1][1]
            calls[-1] = (hook, (count + args[0], tuple(dict.fromkeys((*ids, *args[1])))))
        else:
            if len(calls) >= self.limit:
                calls.popleft()
                self.counters["hooks_dropped"] += 1
            calls.append((hook, args))
        self._idle.clear()
        self._wake.set()

    def clear(self) -> None:
        """Forget every waiting call (the plugin stopped)."""
        self._calls.clear()
        self._idle.set()

    async def drained(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every queued call ran (or ``timeout``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def run(self, handler: Callable[[str, tuple[Any, ...]], Awaitable[None]]) -> None:
        """Call ``handler`` for each queued call, forever (cancel the task to stop)."""
        while True:
            if not self._calls:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            hook, args = self._calls.popleft()
            await handler(hook, args)
