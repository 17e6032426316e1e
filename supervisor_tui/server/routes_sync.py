"""Keeps the gateway's RouteTable in step with a Supervisor.

``RouteSync(sup, table, default_timeout=30.0, default_max_body=10 MiB)``: ``await sync.start()`` subscribes to
``plugin.*`` events, builds every route from ``sup.plugins()`` and then rebuilds one key from ``sup.plugin(key)``
whenever an event names it (a key that is gone is removed); an in-process plugin's route serves
``sup.asgi_app(key)``. ``await sync.stop()`` ends it. ``sync.on_change`` holds callables run after every
change of the table (the route export follows it so). ``route_for(snapshot)`` is the one place that decides how a
plugin snapshot becomes a route: it is available only in state RUNNING with an upstream URL (an external plugin
that went LOST answers 503 like a stopped one); a plugin of several replicas routes to its RUNNING replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from supervisor_tui.core.events import Event, EventBus, EventsDropped
from supervisor_tui.server.gateway import DEFAULT_MAX_BODY, DEFAULT_TIMEOUT, PluginRoute, RouteTable, Upstream

log = logging.getLogger(__name__)

# Events that cannot change a route: skipping them keeps the 2 s metrics stream from rebuilding routes.
_IGNORED_TOPICS = frozenset({"plugin.metrics"})


class RoutedEndpoint(Protocol):
    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...


class RoutedReplica(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def state(self) -> str: ...

    @property
    def upstream(self) -> str | None: ...


class RoutedUpstream(Protocol):
    """One place serving a key when other fleet nodes serve it too (plugins.model.PluginUpstream)."""

    @property
    def node(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def up(self) -> bool: ...

    @property
    def remote(self) -> bool: ...  # another node's gateway


class RoutedPlugin(Protocol):
    """The PluginSnapshot fields a route is made of (docs/architecture.md)."""

    @property
    def key(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def detail(self) -> str: ...

    @property
    def upstream(self) -> str | None: ...

    @property
    def endpoints(self) -> Sequence[RoutedEndpoint]: ...

    @property
    def timeout(self) -> float | None: ...  # None: the default

    @property
    def max_body(self) -> int | None: ...  # None: the default

    @property
    def replicas(self) -> Sequence[RoutedReplica]: ...

    @property
    def upstreams(self) -> Sequence[RoutedUpstream]: ...


class SupervisorView(Protocol):
    """What RouteSync needs from the Supervisor: snapshots, the event bus, in-process plugins' ASGI apps."""

    bus: EventBus

    def plugins(self) -> Sequence[RoutedPlugin]: ...

    def plugin(self, key: str) -> RoutedPlugin: ...

    def asgi_app(self, key: str) -> Any: ...


def route_for(
    snapshot: RoutedPlugin,
    default_timeout: float = DEFAULT_TIMEOUT,
    default_max_body: int = DEFAULT_MAX_BODY,
    app: Any = None,
) -> PluginRoute:
    """The gateway route for one PluginSnapshot (``app``: an in-process plugin's ASGI app, served directly)."""
    state = str(snapshot.state)
    upstream = snapshot.upstream
    replicas = snapshot.replicas
    # A plugin of several replicas: the gateway balances over those that are RUNNING.
    local: tuple[Upstream, ...] = ()
    if len(replicas) > 1:
        local = tuple(
            Upstream(f"replica {r.index}", r.upstream) for r in replicas if r.state == "RUNNING" and r.upstream
        )
        upstream = upstream if local else None
    # Other fleet nodes serving the key too: one upstream per place (this node's place is its replicas, if several)
    places = snapshot.upstreams
    elsewhere = tuple(Upstream(u.node, u.url, u.up, via_node=u.remote) for u in places if u.remote or not local)
    upstreams = local + elsewhere
    served_elsewhere = any(u.up and u.via_node for u in upstreams)
    available = (state == "RUNNING" and (bool(upstream) or app is not None)) or served_elsewhere
    reason = ""
    if not available:
        reason = f"state is {state}" if upstream or state != "RUNNING" else "it has no upstream address"
        if snapshot.detail:
            reason += f" ({snapshot.detail})"
    return PluginRoute(
        key=snapshot.key,
        upstream_base_url=upstream or None,
        upstreams=upstreams if app is None else (),
        endpoints=tuple((str(e.method).upper(), str(e.path)) for e in snapshot.endpoints),
        available=available,
        unavailable_reason=reason,
        timeout=float(snapshot.timeout or default_timeout),
        max_body=int(snapshot.max_body or default_max_body),
        app=app if available else None,
    )


class RouteSync:
    """Builds the route table from the supervisor, then follows its ``plugin.*`` events."""

    def __init__(
        self,
        sup: SupervisorView,
        table: RouteTable,
        *,
        default_timeout: float = DEFAULT_TIMEOUT,
        default_max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.sup = sup
        self.table = table
        self.default_timeout = default_timeout
        self.default_max_body = default_max_body
        self._task: asyncio.Task[None] | None = None
        self.on_change: list[Callable[[], None]] = []

    def _changed(self) -> None:
        for callback in self.on_change:
            try:
                callback()
            except Exception:  # a broken follower must not stop the gateway's own routes
                log.exception("gateway: a route table follower failed")

    def _set(self, snapshot: RoutedPlugin) -> None:
        app = self.sup.asgi_app(snapshot.key) if snapshot.kind == "inprocess" else None
        route = route_for(snapshot, self.default_timeout, self.default_max_body, app)
        try:
            self.table.set(route)
        except ValueError as exc:  # an upstream URL the gateway cannot use: keep the routes, answer 503
            log.warning("gateway: %s", exc)
            self.table.set(
                PluginRoute(
                    route.key,
                    None,
                    route.endpoints,
                    available=False,
                    unavailable_reason=f"unusable upstream address {route.upstream_base_url!r}",
                    timeout=route.timeout,
                    max_body=route.max_body,
                )
            )

    def rebuild_all(self) -> None:
        """Replace the whole table with routes for ``sup.plugins()``."""
        snapshots = list(self.sup.plugins())
        keys = {s.key for s in snapshots}
        for key in self.table.keys():
            if key not in keys:
                self.table.remove(key)
        for snapshot in snapshots:
            self._set(snapshot)
        self._changed()

    def rebuild(self, key: str) -> None:
        """Rebuild one key from ``sup.plugin(key)``; a plugin that no longer exists loses its routes."""
        try:
            snapshot = self.sup.plugin(key)
        except KeyError:  # PluginNotFound is a KeyError
            self.table.remove(key)
            return
        self._set(snapshot)

    async def start(self) -> None:
        """Subscribe first (so no change is missed), build every route, then follow events in a task."""
        if self._task is not None:
            return
        subscription = self.sup.bus.subscribe(["plugin"])
        self.rebuild_all()
        self._task = asyncio.get_running_loop().create_task(self._follow(subscription), name="gateway-routes")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, subscription: Any) -> None:
        try:
            while True:
                batch = await subscription.get_batch()
                if not batch and subscription.closed:
                    return
                self.apply(batch)
        finally:
            subscription.close()

    def apply(self, events: Iterable[Event]) -> None:
        """Apply a batch of events: each named key is rebuilt once; lost events mean a full rebuild."""
        keys: dict[str, None] = {}
        for event in events:
            if isinstance(event, EventsDropped):
                self.rebuild_all()
                keys.clear()
                continue
            if event.topic in _IGNORED_TOPICS:
                continue
            key = getattr(event, "key", None)
            if isinstance(key, str):
                keys[key] = None
        for key in keys:
            try:
                self.rebuild(key)
            except Exception:  # one bad snapshot must not stop the gateway from following the others
                log.exception("gateway: cannot rebuild the routes of %r", key)
        if keys:
            self._changed()
