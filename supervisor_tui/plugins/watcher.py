"""Live reload: watch the plugins folder and apply what changed without restarting the supervisor.

A new folder loads (and starts when it should), a removed folder stops and unloads, a changed ``manifest.json``
or a changed ``.py`` file of an in-process plugin reloads that plugin alone. Changes are debounced: the reload
runs once nothing changed for ``debounce`` seconds (2 s), so an editor's burst of writes causes one reload. A
reload that fails keeps the running version (``Supervisor.reload(keep_on_error=True)``).

``watchfiles`` (inotify) reports the changes; where it cannot run, a cheap poll of modification times does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from supervisor_tui.core.actions import acting_as
from supervisor_tui.core.logs import LogHub
from supervisor_tui.plugins.manifest import MANIFEST_FILE

DEBOUNCE = 2.0
POLL_INTERVAL = 1.0


def relevant(path: str, root: Path) -> bool:
    """Changes that can matter to a reload: manifests, Python files, and plugin folders themselves."""
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        return False
    parts = rel.parts
    if not parts or any(p.startswith(".") or p == "__pycache__" for p in parts):
        return False
    if len(parts) == 1:
        return True  # a plugin folder appeared or went away
    return parts[-1] == MANIFEST_FILE or parts[-1].endswith(".py")


class PluginWatcher:
    """Calls ``reload`` (debounced) whenever the plugins folder changes; ``start()``/``stop()``."""

    def __init__(
        self,
        root: Path,
        reload: Callable[[], Awaitable[Any]],
        logs: LogHub,
        debounce: float = DEBOUNCE,
        force_polling: bool = False,
    ) -> None:
        self.root = root
        self.reload = reload
        self.logs = logs
        self.debounce = debounce
        self.force_polling = force_polling
        self.reloads = 0  # how many reloads the watcher ran
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._watch(), name="plugins-watch"),
            asyncio.create_task(self._apply(), name="plugins-reload"),
        ]
        # One turn of the loop: the watch task's first step sets up the inotify watch synchronously, so a change
        # made as soon as start() returns is seen.
        await asyncio.sleep(0)
        self.logs.info(f"watching {self.root} for plugin changes", event="watch_started")

    async def stop(self) -> None:
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def changed(self) -> None:
        """Note a change (the reload follows once things are quiet for ``debounce`` seconds)."""
        self._changed.set()

    async def _apply(self) -> None:
        while True:
            await self._changed.wait()
            while True:  # debounce: wait until a whole quiet period passes without a change
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), self.debounce)
                except TimeoutError:
                    break
            self.reloads += 1
            try:
                with acting_as("reload", "plugins watcher"):
                    await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a reload problem is reported; watching goes on
                self.logs.error(f"live reload failed: {exc!r}", event="reload_failed")

    async def _watch(self) -> None:
        while not self.root.is_dir():  # the folder may be created later
            if self._stop.is_set():
                # Python 3.11's wait_for swallows a cancel that races with a set event, so stop() alone could
                # leave this loop spinning: it ends here instead.
                return
            await self._sleep(POLL_INTERVAL)
        if not self.force_polling:
            try:
                await self._watch_inotify()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. out of inotify watches: fall back to polling
                self.logs.warning(f"file watching unavailable ({exc!r}): polling {self.root}", event="watch_polling")
        await self._watch_polling()

    async def _watch_inotify(self) -> None:
        from watchfiles import awatch

        root = self.root.resolve()
        async for changes in awatch(
            root,
            watch_filter=lambda _change, path: relevant(path, root),
            stop_event=self._stop,
            debounce=200,
            # How often its thread looks for the stop event (and for the end of a burst): every 50 ms was a fifth
            # of an idle supervisor's wake-ups; a reload waits for 2 s of quiet anyway.
            step=250,
            recursive=True,
        ):
            if changes:
                self.changed()

    async def _watch_polling(self) -> None:
        seen = _scan(self.root)
        while not self._stop.is_set():
            await self._sleep(POLL_INTERVAL)
            now = _scan(self.root)
            if now != seen:
                seen = now
                self.changed()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


def _scan(root: Path) -> dict[str, tuple[int, int]]:
    """Modification times and sizes of what ``relevant`` looks at."""
    out: dict[str, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for folder in os.scandir(root):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            out[folder.path] = (0, 0)
            for dirpath, dirnames, filenames in os.walk(folder.path):
                dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
                for name in filenames:
                    if name == MANIFEST_FILE or name.endswith(".py"):
                        path = os.path.join(dirpath, name)
                        with contextlib.suppress(OSError):
                            st = os.stat(path)
                            out[path] = (st.st_mtime_ns, st.st_size)
    return out
