"""Node presence: each supervisor's record in Redis (``fleet:node:<node>``), and the fleet's nodes as seen here.

The record is refreshed every ``redis.heartbeat_interval`` and set with an expiry (three times
``redis.dead_after``), so a node that dies leaves it to expire by itself. A node whose record is older than
``redis.dead_after`` is ``lost``; nodes seen once stay listed (as lost) after their record expired.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from redis.exceptions import RedisError

from supervisor_tui import __version__
from supervisor_tui.core.status import NodeStatus
from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.fleet.link import RedisLink
from supervisor_tui.fleet.messages import ENCODER, PRESENCE_DECODER, Presence

KEY_PREFIX = "fleet:node:"
MAX_NODES = 1000  # records read per listing; a fleet is a handful of nodes


class NodePresence:
    """Publishes this node's record and reads everyone's."""

    def __init__(
        self,
        sup: Supervisor,
        link: RedisLink,
        node: str,
        advertise_url: str,
        console_counts: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.sup, self.link, self.node, self.advertise_url = sup, link, node, advertise_url
        self.console_counts = console_counts or dict
        self.dead_after = sup.settings.redis.dead_after
        self.started_at = time.time()
        self.known: dict[str, Presence] = {}  # every node seen, by name

    def record(self) -> Presence:
        plugins: dict[str, int] = {}
        for snap in self.sup.plugins():
            if not snap.node:  # another node's plugins are its own
                plugins[snap.state] = plugins.get(snap.state, 0) + 1
        return Presence(
            node=self.node,
            advertise_url=self.advertise_url,
            version=__version__,
            started_at=self.started_at,
            last_seen=time.time(),
            plugins=plugins,
            consoles={k: v for k, v in self.console_counts().items() if v},
        )

    async def refresh(self) -> bool:
        """Write this node's record; False when Redis is down."""
        record = self.record()
        self.known[self.node] = record
        client = self.link.client
        if client is None:
            return False
        try:
            await client.set(f"{KEY_PREFIX}{self.node}", ENCODER.encode(record), ex=max(1, int(3 * self.dead_after)))
        except (RedisError, OSError):
            return False
        return True

    async def withdraw(self) -> None:
        client = self.link.client
        if client is not None:
            try:
                await client.delete(f"{KEY_PREFIX}{self.node}")
            except (RedisError, OSError):
                pass

    async def nodes(self) -> list[NodeStatus]:
        """Every node known, this one first; read from Redis when it is up."""
        client = self.link.client
        if client is not None:
            try:
                keys = [k async for k in client.scan_iter(match=f"{KEY_PREFIX}*", count=100)][:MAX_NODES]
                values = await client.mget(keys) if keys else []
            except (RedisError, OSError):
                values = []
            for value in values:
                if value is None:
                    continue
                try:
                    presence = PRESENCE_DECODER.decode(value)
                except msgspec.MsgspecError:
                    continue  # not ours to show: anyone can write to Redis
                if presence.node in self.known or len(self.known) < MAX_NODES:
                    self.known[presence.node] = presence
        self.known[self.node] = self.record()
        now = time.time()
        out = [
            NodeStatus(
                **msgspec.structs.asdict(p),  # a field added to Presence must be added to NodeStatus too
                status="up" if now - p.last_seen <= self.dead_after else "lost",
                this_node=p.node == self.node,
            )
            for p in self.known.values()
        ]
        return sorted(out, key=lambda n: (not n.this_node, n.node))
