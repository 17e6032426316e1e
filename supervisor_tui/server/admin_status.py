"""The admin API's routes about the whole supervisor: liveness and readiness, status counts, the gateway's route
table, the fleet's nodes, Prometheus metrics; and the plugin groups with the dependency graph."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from supervisor_tui import __version__
from supervisor_tui.core.graph import graph_of
from supervisor_tui.core.groups import GROUP_ACTIONS, act_on_group, groups_of
from supervisor_tui.core.status import (
    ConsoleStoreStatus,
    FleetStatus,
    NodeList,
    RouteList,
    RouteRow,
    StateCounts,
    SupervisorStatus,
)
from supervisor_tui.core.supervisor import PluginNotFound, Supervisor
from supervisor_tui.plugins.model import GroupActionResult, GroupNotFound
from supervisor_tui.server import schemas
from supervisor_tui.server.admin_context import ApiContext, Guards, error_responses, struct_answer, struct_content
from supervisor_tui.server.admin_lazy import health_answer, ready_answer
from supervisor_tui.server.errors import ApiError
from supervisor_tui.server.gateway import PluginRoute
from supervisor_tui.server.struct_openapi import StructResponse


def health_router(ctx: ApiContext) -> APIRouter:
    """``/health`` and ``/ready`` (no token: load balancers and orchestrators ask them)."""
    router = APIRouter(tags=["health"])

    @router.get("/health", response_model=schemas.HealthOut)
    async def health() -> dict[str, Any]:
        """Liveness: the process answers."""
        return health_answer()[1]

    @router.get("/ready", response_model=schemas.ReadyOut, responses={503: {"model": schemas.NotReadyOut}})
    async def ready() -> Response:
        """Readiness: plugins are loaded and the database is open."""
        # Served by admin_lazy.LazyAdmin before this app is built; documented here, answered the same way.
        status, content = ready_answer(ctx.ready)
        return JSONResponse(content, status_code=status)

    return router


def status_router(ctx: ApiContext, guards: Guards) -> APIRouter:
    """``/api/v1/status``, ``/api/v1/routes``, ``/api/v1/fleet/nodes`` and ``/metrics``."""
    sup = ctx.sup
    router = APIRouter()

    @router.get(
        "/api/v1/status",
        response_class=StructResponse,
        dependencies=guards.admin,
        tags=["status"],
        responses={200: struct_content(SupervisorStatus), **error_responses(401)},
    )
    async def status() -> StructResponse:
        """Counts of plugins and consoles by state, mode and API address."""
        plugins = sup.plugins()
        by_state: dict[str, int] = {}
        for p in plugins:
            by_state[p.state] = by_state.get(p.state, 0) + 1
        consoles = ctx.consoles.counts_by_state() if ctx.consoles is not None else {}
        store = msgspec.convert(ctx.consoles.store_status(), ConsoleStoreStatus) if ctx.consoles is not None else None
        return struct_answer(
            SupervisorStatus(
                version=__version__,
                mode=ctx.mode,
                api=ctx.api_url,
                read_only=ctx.settings.ui.read_only,
                plugins=StateCounts(len(plugins), by_state),
                consoles=StateCounts(sum(consoles.values()), consoles),
                damaged_tables=ctx.consoles.damaged_history() if ctx.consoles is not None else {},
                route_export=ctx.route_export(),
                fleet=ctx.fleet.status() if ctx.fleet is not None else FleetStatus(),
                console_store=store,
            )
        )

    @router.get(
        "/api/v1/routes",
        response_class=StructResponse,
        dependencies=guards.admin,
        tags=["status"],
        responses={200: struct_content(RouteList), **error_responses(401)},
    )
    async def routes() -> StructResponse:
        """The route table the gateway serves (and exports): one row per declared endpoint, and the export."""
        return struct_answer(RouteList(route_rows(ctx.routes(), sup), ctx.route_export()))

    @router.get(
        "/api/v1/fleet/nodes",
        response_class=StructResponse,
        dependencies=guards.admin,
        tags=["fleet"],
        responses={200: struct_content(NodeList), **error_responses(401, 404)},
    )
    async def fleet_nodes() -> StructResponse:
        """Every node of the fleet seen through Redis: up or lost, when last seen, its plugin and console counts."""
        if ctx.fleet is None:
            raise ApiError(404, "fleet_off", "this supervisor is in no fleet: set redis.url")
        return struct_answer(NodeList(await ctx.fleet.nodes()))

    @router.get(
        "/metrics",
        tags=["status"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, **error_responses(401)},
    )
    async def metrics(request: Request) -> Response:
        """Prometheus text: plugin states, restarts, CPU, RSS, health; gateway traffic; consoles."""
        if not ctx.settings.auth.public_metrics:
            guards.require_admin(request)
        body = ctx.metrics() if ctx.metrics is not None else b""
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return router


def group_router(ctx: ApiContext, guards: Guards) -> APIRouter:
    """``/api/v1/groups``, ``POST /api/v1/groups/{group}/<action>`` and ``/api/v1/graph``."""
    sup = ctx.sup
    router = APIRouter(tags=["groups"])

    @router.get(
        "/api/v1/groups", response_model=schemas.GroupList, dependencies=guards.admin, responses=error_responses(401)
    )
    async def list_groups() -> dict[str, Any]:
        """Every group named by a manifest, with its plugins."""
        return {"groups": [{"name": g, "plugins": keys} for g, keys in groups_of(sup.plugins()).items()]}

    for group_action in GROUP_ACTIONS:
        router.add_api_route(
            f"/api/v1/groups/{{group}}/{group_action}",
            _group_route(ctx, group_action),
            methods=["POST"],
            response_model=None,
            dependencies=guards.control,
            responses={200: struct_content(GroupActionResult), **error_responses(401, 403, 404, 409)},
            summary=f"{group_action.capitalize()} a group",
        )

    @router.get(
        "/api/v1/graph", response_model=schemas.GraphOut, dependencies=guards.admin, responses=error_responses(401)
    )
    async def dependency_graph() -> dict[str, Any]:
        """The plugins' dependency graph: each plugin with its level, and an edge to each plugin it depends on."""
        return graph_of(sup.plugins()).to_dict()

    return router


def _group_route(ctx: ApiContext, action: str) -> Callable[[str], Awaitable[Response]]:
    """The route of ``POST /api/v1/groups/{group}/<action>``: 404 for a group no plugin is in, 409 naming each
    member whose action failed (the others were done)."""

    async def route(group: str) -> Response:
        try:
            result = await act_on_group(ctx.sup, action, group)
        except GroupNotFound:
            raise ApiError(404, "group_not_found", f"no plugin is in group {group!r}") from None
        if result.failures:
            raise ApiError(409, "action_failed", result.failure_message())
        return struct_answer(GroupActionResult(group, [ctx.plugin_view(s) for s in result.plugins]))

    route.__doc__ = f"{action.capitalize()} every plugin of a group (see docs/api.md for the order)."
    return route


def route_rows(table: list[PluginRoute], sup: Supervisor) -> list[RouteRow]:
    """One row per declared endpoint of each route: key, method, path, upstream, the plugin's state."""
    rows = []
    for route in table:
        try:
            state = str(sup.plugin(route.key).state)
        except PluginNotFound:
            state = "REMOVED"
        upstream = route.upstream_base_url or ("in-process" if route.app is not None else None)
        for method, path in route.endpoints:
            rows.append(
                RouteRow(
                    key=route.key,
                    method=method,
                    path=path,
                    gateway_path=f"/api/plugins/{route.key}{path}",
                    upstream=upstream,
                    state=state,
                    available=route.available,
                    reason="" if route.available else route.unavailable_reason or "the plugin is not running",
                )
            )
    return rows
