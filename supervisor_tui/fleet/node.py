"""This supervisor as a fleet node: the Redis link, the listener, the announcer and the presence record.

    node = FleetNode(sup, settings, advertise_url, console_counts=service.counts_by_state)
    await node.restore()      # registrations saved by the previous run come back LOST
    node.start()              # connects (and reconnects), subscribes, announces, refreshes presence
    ...
    await node.stop()         # plugin:unregistered for what it announced, presence withdrawn

Runs only when ``redis.url`` is set; ``status()`` is what ``/api/v1/status`` and the TUI header show.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from supervisor_tui.config import Settings, masked_url
from supervisor_tui.core.events import EventsDropped, PluginStateChanged
from supervisor_tui.core.status import FleetStatus, NodeStatus
from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.fleet.announcer import PluginAnnouncer
from supervisor_tui.fleet.link import RedisLink
from supervisor_tui.fleet.listener import RegistrationListener
from supervisor_tui.fleet.presence import NodePresence
from supervisor_tui.fleet.registrations import RegistrationStore


class FleetNode:
    """Owns the fleet's parts for one supervisor."""

    def __init__(
        self,
        sup: Supervisor,
        settings: Settings,
        advertise_url: str,
        console_counts: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.sup = sup
        self.node = settings.fleet.node
        self.advertise_url = advertise_url
        self.announce = settings.redis.announce
        self.interval = settings.redis.heartbeat_interval
        self.registrations = RegistrationStore(sup.store, sup.logs)
        self.listener = RegistrationListener(sup, self.registrations, self.node)
        self.link = RedisLink(settings.redis.url, sup.logs, sup.bus, self.listener.handle, self._connected)
        expire = max(1, int(3 * settings.redis.dead_after))
        self.announcer = PluginAnnouncer(sup, self.link, self.node, advertise_url, expire)
        self.listener.lookup = self.announcer.lookup
        self.presence = NodePresence(sup, self.link, self.node, advertise_url, console_counts)
        self._tasks: list[asyncio.Task[None]] = []

    async def restore(self) -> int:
        restored = await self.listener.restore()
        if restored:
            self.sup.logs.info(
                f"redis: {restored} plugin registration(s) restored LOST until their next heartbeat",
                event="redis_registration",
            )
        return restored

    def start(self) -> None:
        self.link.start()
        self._tasks = [
            asyncio.create_task(self._follow_states(), name="fleet-announcer"),
            asyncio.create_task(self._tick(), name="fleet-heartbeat"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.link.up:
            with contextlib.suppress(Exception):
                await self.announcer.unannounce_all()
                await self.presence.withdraw()
        await self.link.stop()
        await self.registrations.close()  # before the store closes: what was accepted is remembered

    async def _connected(self) -> None:
        """Redis is (again) there: tell it what runs here."""
        await self.presence.refresh()
        if self.announce:
            await self.announcer.announce_all()

    async def _follow_states(self) -> None:
        with self.sup.bus.subscribe(("plugin.state",), maxsize=10_000) as sub:
            async for event in sub:
                if not self.announce:
                    continue
                if isinstance(event, PluginStateChanged):
                    await self.announcer.on_event(event)
                elif isinstance(event, EventsDropped):
                    await self.announcer.announce_all()  # some changes were missed: say again what runs

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.presence.refresh()
            if self.announce:
                await self.announcer.heartbeat_all()

    async def nodes(self) -> list[NodeStatus]:
        return await self.presence.nodes()

    def status(self) -> FleetStatus:
        """The node's view of Redis: ``redis`` is "up" or "down", since when, and why."""
        return FleetStatus(
            node=self.node,
            advertise_url=self.advertise_url,
            redis="up" if self.link.up else "down",
            redis_url=masked_url(self.link.url),
            since=self.link.since,
            detail=self.link.detail,
        )
