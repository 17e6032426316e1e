"""A cancelled probe ends cancelled, whatever it is doing: the stop of a plugin cancels its probe loops and waits
for them, so a probe that swallowed the cancellation and went on probing made the stop wait forever (seen once
under load in test_probes' liveness stop test: the plugin was still running 14 minutes later)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import close_within, plugin_processes, wait_until

from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.plugins.cancellation import cancel_until_done
from supervisor_tui.plugins.health import probe_exec


def bounded_readers() -> list[asyncio.Task[object]]:
    """The exec probes' output readers still running (health._read_bounded)."""
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "_read_bounded"]


def pipes() -> set[str]:
    """The pipes this process holds open."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if (target := os.readlink(f"/proc/self/fd/{fd}")).startswith("pipe:"):
                found.add(target)
    return found


async def test_an_exec_probe_cancelled_while_it_ends_its_output_reader_ends_cancelled(tmp_path: Path) -> None:
    # The command exits 0 at once, leaving a child that holds its output open: the reader is still running when
    # the probe, in its cleanup, cancels it and waits for it. That is when the stop's cancel is sent (seen at the
    # first loop iteration where the reader is being cancelled and not done: the probe is between the two).
    before = pipes()
    probe = asyncio.create_task(probe_exec("sleep 30 & exit 0", tmp_path, {"PATH": "/usr/bin:/bin"}, 10.0))
    while not probe.done():
        readers = bounded_readers()
        if readers and all(r.cancelling() for r in readers):
            probe.cancel()
            break
        await asyncio.sleep(0)
    else:
        pytest.fail(f"the probe ended before its reader was cancelled: {probe.result()}")
    done, _ = await asyncio.wait([probe], timeout=10)
    assert done, "the cancelled probe did not end"
    assert probe.cancelled(), f"the cancellation was swallowed: the probe returned {probe.result()}"
    # the probe killed its command's group: once that is gone, its output pipe ends and its transport closes it
    await wait_until(lambda: not plugin_processes(tmp_path) and pipes() <= before)


async def test_cancel_until_done_ends_a_task_that_swallows_its_first_cancellation() -> None:
    swallowed: list[str] = []
    probes = 0

    async def stubborn() -> None:
        nonlocal probes
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # what a swallowed cancellation looks like to the loop around it: it goes on
        while True:
            probes += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(stubborn(), name="liveness:x")
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_until_done([task], lambda t: swallowed.append(t.get_name())), 30)
    assert task.cancelled() and probes > 0
    assert swallowed == ["liveness:x"]


async def test_a_supervisor_close_that_does_not_return_in_time_fails_naming_what_is_still_up(
    supervisor: Supervisor, add_plugin: Callable[..., Any]
) -> None:
    # ignore_term.py ignores SIGTERM: its stop takes stopwaitsecs (3 s) before the SIGKILL, longer than 0.5 s
    await add_plugin("stubborn", "ignore_term.py")
    await supervisor.start("stubborn")
    with pytest.raises(pytest.fail.Exception) as failed:
        await close_within(supervisor, 0.5)
    message = str(failed.value)
    assert "supervisor.close() did not return within 0.5s" in message
    assert "stubborn STOPPING pid" in message and "tasks still running: [" in message
