"""The admin API (`/api/v1/...`, the plugin manager API's shape), liveness/readiness, and the live event stream.

FastAPI gives typed routes and /openapi.json; it is kept off the hot paths (gateway, heartbeat ingest),
which the top-level app (server/app.py) dispatches before a request ever reaches this app. /docs is Swagger UI
with its files served from /docs/assets (no CDN), without a token like /openapi.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from supervisor_tui import __version__
from supervisor_tui.config import Settings
from supervisor_tui.consoles.service import ConsoleService
from supervisor_tui.core import log_search
from supervisor_tui.core.events import LogLine
from supervisor_tui.core.graph import graph_of
from supervisor_tui.core.groups import GROUP_ACTIONS, act_on_group, groups_of
from supervisor_tui.core.log_search import MAX_PATTERN, LogSearchError, compile_pattern
from supervisor_tui.core.logs import LogRecord
from supervisor_tui.core.supervisor import PluginActionError, PluginNotFound, Supervisor
from supervisor_tui.plugins.manifest import ManifestError
from supervisor_tui.plugins.model import GroupNotFound
from supervisor_tui.server import schemas
from supervisor_tui.server.auth import bearer_from_header, token_matches
from supervisor_tui.server.consoles_routes import include_console_api
from supervisor_tui.server.errors import ERROR_SCHEMA, ApiError, internal_error_body, report_internal_error
from supervisor_tui.server.gateway import PluginRoute

if TYPE_CHECKING:
    from supervisor_tui.fleet.node import FleetNode  # the Redis client loads only with redis.url set

MAX_LOG_LINES = 10_000


@dataclass
class ApiContext:
    """What the HTTP surface needs from the running process."""

    sup: Supervisor
    settings: Settings
    admin_token: str
    plugin_token: str
    mode: str  # "headless" | "embedded"
    api_url: str  # base URL clients use, for gateway URLs
    request_counts: Callable[[], dict[str, int]] = dict
    ready: Callable[[], tuple[bool, str]] = lambda: (True, "")
    metrics: Callable[[], bytes] | None = None  # renders Prometheus text
    # True once the server is shutting down: a logs?follow stream ends instead of holding the shutdown for the
    # server's whole grace period (uvicorn closes WebSockets itself).
    closing: Callable[[], bool] = lambda: False
    consoles: ConsoleService | None = None  # the console service, when one runs (counts on /api/v1/status)
    routes: Callable[[], list[PluginRoute]] = list  # the gateway's route table
    route_export: Callable[[], dict[str, Any]] = lambda: {"target": "none"}  # ExportStatus.to_dict()
    fleet: FleetNode | None = None  # this node's part in the fleet, when redis.url is set


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"description": "Error", "content": {"application/json": {"schema": ERROR_SCHEMA}}} for c in codes}


def _json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def create_admin_app(ctx: ApiContext) -> FastAPI:
    """The FastAPI app for everything that is not the gateway or the console ingest."""
    app = FastAPI(
        title="supervisor-tui",
        version=__version__,
        description="Admin API of supervisor-tui. Every `/api/v1` route needs `Authorization: Bearer <admin token>`.",
        # /docs is served below from local files; ReDoc stays off (one browsable page is enough).
        docs_url=None,
        redoc_url=None,
    )
    sup = ctx.sup
    _install_docs(app)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _json_error(exc.status, exc.code, exc.message, exc.headers)

    def allowed_methods(path: str) -> list[str]:
        """Every method some route serves at ``path``; a literal route (/plugins/install) hides a templated one
        (/plugins/{key}) that happens to match the same path, as it does when routing."""
        literal: set[str] = set()
        templated: set[str] = set()
        for route in app.routes:
            regex, methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
            if regex is not None and methods and regex.match(path):
                (templated if getattr(route, "param_convertors", None) else literal).update(methods)
        return sorted(literal or templated)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI could not read the JSON body at all (it keeps the reason as the cause).
            return _json_error(400, "malformed_json", _unreadable_body(exc.__cause__))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; a client needs all of them.
            methods = allowed_methods(request.url.path)
            if methods:
                headers["Allow"] = ", ".join(methods)
                message = f"{request.method} is not allowed here (allowed: {', '.join(methods)})"
        return _json_error(exc.status_code, code, message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI reads and validates the body before it runs a route's dependencies: run the route's token and
        # read-only checks first, so a client without the token gets its 401, not a description of the body.
        try:
            for dep in getattr(request.scope.get("route"), "dependencies", ()):
                if dep.dependency in (require_admin, require_plugin_token):
                    dep.dependency(request)
                elif dep.dependency is require_writable:
                    require_writable()
        except ApiError as refused:
            return _json_error(refused.status, refused.code, refused.message, refused.headers)
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        status = 400 if any(e.get("type") == "json_invalid" for e in exc.errors()) else 422
        code = "malformed_json" if status == 400 else "validation_error"
        return _json_error(status, code, "; ".join(problems))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        error_id = report_internal_error(f"the admin API, {request.method} {request.url.path[:200]}", exc)
        sup.logs.error(f"admin API error {error_id}: {type(exc).__name__}: {exc}", event="api_error", error_id=error_id)
        return Response(internal_error_body(error_id), status_code=500, media_type="application/json")

    def require_admin(request: Request) -> None:
        if not token_matches(bearer_from_header(request.headers.get("authorization")), ctx.admin_token):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong admin token (send Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
            )

    def require_plugin_token(request: Request) -> None:
        presented = bearer_from_header(request.headers.get("authorization"))
        if not (token_matches(presented, ctx.plugin_token) or token_matches(presented, ctx.admin_token)):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong plugin token (send Authorization: Bearer <token>)",
                {"WWW-Authenticate": "Bearer"},
            )

    def require_writable() -> None:
        if ctx.settings.read_only:
            raise ApiError(403, "read_only", "this supervisor is read-only: actions that change state are refused")

    admin = [Depends(require_admin)]
    control = [Depends(require_admin), Depends(require_writable)]

    def plugin_out(key: str) -> dict[str, Any]:
        try:
            snap = sup.plugin(key)
        except PluginNotFound:
            raise ApiError(404, "plugin_not_found", f"no plugin with key {key!r}") from None
        return _plugin_dict(snap, ctx)

    # -- liveness and readiness ----------------------------------------------------------------------------
    @app.get("/health", response_model=schemas.HealthOut, tags=["health"])
    async def health() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/ready", response_model=schemas.ReadyOut, tags=["health"], responses={503: {"model": schemas.NotReadyOut}}
    )
    async def ready() -> Response:
        """Readiness: plugins are loaded and the database is open."""
        ok, detail = ctx.ready()
        if ok:
            return JSONResponse({"ready": True, "detail": ""})
        # A 503 is an error like any other: it carries the error object too.
        not_ready = {"ready": False, "detail": detail, "error": {"code": "not_ready", "message": detail}}
        return JSONResponse(not_ready, status_code=503)

    # -- status and plugins ----------------------------------------------------------------------------------
    @app.get(
        "/api/v1/status",
        response_model=schemas.StatusOut,
        dependencies=admin,
        tags=["status"],
        responses=_error_responses(401),
    )
    async def status() -> dict[str, Any]:
        """Counts of plugins and consoles by state, mode and API address."""
        plugins = sup.plugins()
        by_state: dict[str, int] = {}
        for p in plugins:
            by_state[p.state] = by_state.get(p.state, 0) + 1
        consoles = ctx.consoles.counts_by_state() if ctx.consoles is not None else {}
        return {
            "version": __version__,
            "mode": ctx.mode,
            "api": ctx.api_url,
            "read_only": ctx.settings.read_only,
            "plugins": {"total": len(plugins), "by_state": by_state},
            "consoles": {"total": sum(consoles.values()), "by_state": consoles},
            "damaged_tables": ctx.consoles.damaged_history() if ctx.consoles is not None else {},
            "route_export": ctx.route_export(),
            "fleet": ctx.fleet.status() if ctx.fleet is not None else {"redis": "off"},
            "console_store": ctx.consoles.store_status() if ctx.consoles is not None else None,
        }

    @app.get(
        "/api/v1/routes",
        response_model=schemas.RoutesOut,
        dependencies=admin,
        tags=["status"],
        responses=_error_responses(401),
    )
    async def routes() -> dict[str, Any]:
        """The route table the gateway serves (and exports): one row per declared endpoint, and the export."""
        return {"routes": route_rows(ctx.routes(), sup), "export": ctx.route_export()}

    @app.get(
        "/api/v1/fleet/nodes",
        response_model=schemas.NodeList,
        dependencies=admin,
        tags=["fleet"],
        responses=_error_responses(401, 404),
    )
    async def fleet_nodes() -> dict[str, Any]:
        """Every node of the fleet seen through Redis: up or lost, when last seen, its plugin and console counts."""
        if ctx.fleet is None:
            raise ApiError(404, "fleet_off", "this supervisor is in no fleet: set redis.url")
        return {"nodes": [n.to_dict() for n in await ctx.fleet.nodes()]}

    @app.get(
        "/api/v1/plugins",
        response_model=schemas.PluginList,
        dependencies=admin,
        tags=["plugins"],
        responses=_error_responses(401),
    )
    async def list_plugins() -> dict[str, Any]:
        """Every plugin: local processes, external (self-registered) and in-process ones."""
        return {"plugins": [_plugin_dict(s, ctx) for s in sup.plugins()]}

    @app.get(
        "/api/v1/plugins/{key}",
        response_model=schemas.PluginOut,
        dependencies=admin,
        tags=["plugins"],
        responses=_error_responses(401, 404),
    )
    async def get_plugin(key: str) -> dict[str, Any]:
        """One plugin: state, pid, port, uptime, restarts, health, last metrics, endpoints and gateway URLs."""
        return plugin_out(key)

    async def _act(key: str, action: str, wait: bool) -> Response:
        plugin_out(key)  # 404 first
        method = getattr(sup, action)
        try:
            if wait:
                snap = await method(key, wait=True)
                return JSONResponse(with_warning({"plugin": _plugin_dict(snap, ctx)}, key))
            await method(key, wait=False)
        except PluginNotFound:
            raise ApiError(404, "plugin_not_found", f"no plugin with key {key!r}") from None
        except PluginActionError as exc:
            raise ApiError(409, "action_failed", str(exc)) from None
        return JSONResponse(with_warning({"plugin": plugin_out(key)}, key), status_code=202)

    def with_warning(body: dict[str, Any], key: str) -> dict[str, Any]:
        """The action was done, but its desired state could not be saved (full disk): the answer says so."""
        warning = sup.unsaved_desired(key)
        return {**body, "warning": warning} if warning else body

    action_responses: dict[int | str, dict[str, Any]] = {
        202: {"model": schemas.PluginEnvelope, "description": "Accepted (wait=false)"},
        **_error_responses(401, 403, 404, 409),
    }
    wait_q = Query(True, description="Wait for the resulting state (RUNNING or STOPPED); false answers 202 at once")

    @app.post(
        "/api/v1/plugins/{key}/start",
        response_model=schemas.PluginEnvelope,
        dependencies=control,
        tags=["plugins"],
        responses=action_responses,
    )
    async def start_plugin(key: str, wait: bool = wait_q) -> Response:
        """Start a plugin (an operator start also leaves FATAL)."""
        return await _act(key, "start", wait)

    @app.post(
        "/api/v1/plugins/{key}/stop",
        response_model=schemas.PluginEnvelope,
        dependencies=control,
        tags=["plugins"],
        responses=action_responses,
    )
    async def stop_plugin(key: str, wait: bool = wait_q) -> Response:
        """Stop a plugin; it stays stopped across supervisor restarts until started again."""
        return await _act(key, "stop", wait)

    @app.post(
        "/api/v1/plugins/{key}/restart",
        response_model=schemas.PluginEnvelope,
        dependencies=control,
        tags=["plugins"],
        responses=action_responses,
    )
    async def restart_plugin(key: str, wait: bool = wait_q) -> Response:
        """Stop then start a plugin."""
        return await _act(key, "restart", wait)

    # -- groups and the dependency graph ---------------------------------------------------------------------
    @app.get(
        "/api/v1/groups",
        response_model=schemas.GroupList,
        dependencies=admin,
        tags=["groups"],
        responses=_error_responses(401),
    )
    async def list_groups() -> dict[str, Any]:
        """Every group named by a manifest, with its plugins."""
        return {"groups": [{"name": g, "plugins": keys} for g, keys in groups_of(sup.plugins()).items()]}

    for group_action in GROUP_ACTIONS:
        app.add_api_route(
            f"/api/v1/groups/{{group}}/{group_action}",
            _group_route(sup, ctx, group_action),
            methods=["POST"],
            response_model=schemas.GroupActionOut,
            dependencies=control,
            tags=["groups"],
            responses=_error_responses(401, 403, 404, 409),
            summary=f"{group_action.capitalize()} a group",
        )

    @app.get(
        "/api/v1/graph",
        response_model=schemas.GraphOut,
        dependencies=admin,
        tags=["groups"],
        responses=_error_responses(401),
    )
    async def dependency_graph() -> dict[str, Any]:
        """The plugins' dependency graph: each plugin with its level, and an edge to each plugin it depends on."""
        return graph_of(sup.plugins()).to_dict()

    @app.post(
        "/api/v1/plugins/{key}/scale",
        response_model=schemas.PluginEnvelope,
        dependencies=control,
        tags=["plugins"],
        responses=_error_responses(400, 401, 403, 404, 409, 422),
    )
    async def scale_plugin(key: str, body: schemas.ScaleIn) -> dict[str, Any]:
        """Run `replicas` processes of a process plugin, remembered across restarts (like a stop). New replicas
        start when the plugin is meant to run; scaling down stops the highest ones. 409 when it cannot run that
        many (a fixed port, not enough free ports in the range): nothing changes then."""
        plugin_out(key)  # 404 first
        try:
            snap = await sup.scale(key, body.replicas)
        except PluginActionError as exc:
            raise ApiError(409, "action_failed", str(exc)) from None
        return {"plugin": _plugin_dict(snap, ctx)}

    @app.post(
        "/api/v1/plugins/install",
        response_model=schemas.PluginEnvelope,
        status_code=201,
        dependencies=control,
        tags=["plugins"],
        responses=_error_responses(400, 401, 403, 409, 422),
    )
    async def install_plugin(body: schemas.InstallIn) -> dict[str, Any]:
        """Validate a manifest, write plugins/<key>/manifest.json, load it, and start it when autoStart."""
        manifest = dict(body.manifest)
        # The plugin manager API's body: its `basePath` was the prefix of the plugin's routes in Kong; here every
        # plugin is served under /api/plugins/<key> (see the answer's gateway_url), so it has nothing to say.
        manifest.pop("basePath", None)
        if "image" in manifest and "command" not in manifest:
            raise ApiError(
                422, "invalid_manifest", "image: container images are not run here; give the plugin's command instead"
            )
        try:
            snap = await sup.install(manifest, autostart=body.auto_start)
        except ManifestError as exc:
            raise ApiError(422, "invalid_manifest", str(exc)) from None
        except PluginActionError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        return {"plugin": _plugin_dict(snap, ctx)}

    @app.delete(
        "/api/v1/plugins/{key}",
        response_model=schemas.RemovedOut,
        dependencies=control,
        tags=["plugins"],
        responses=_error_responses(401, 403, 404, 409),
    )
    async def delete_plugin(
        key: str, purge: bool = Query(False, description="Also delete the plugin folder")
    ) -> dict[str, Any]:
        """Stop and unload a plugin; its folder is kept unless purge=true."""
        plugin_out(key)
        try:
            await sup.remove(key, purge=purge)
        except PluginActionError as exc:
            raise ApiError(409, "action_failed", str(exc)) from None
        return {"removed": key, "purged": purge}

    @app.put(
        "/api/v1/plugins/{key}/config",
        response_model=schemas.PluginEnvelope,
        dependencies=control,
        tags=["plugins"],
        responses=_error_responses(400, 401, 403, 404, 409, 422),
    )
    async def put_config(key: str, body: schemas.ConfigIn) -> dict[str, Any]:
        """Change a plugin's environment (persisted) and restart that plugin."""
        plugin_out(key)
        try:
            snap = await sup.set_config(key, body.env)
        except PluginActionError as exc:
            raise ApiError(409, "action_failed", str(exc)) from None
        except ManifestError as exc:
            raise ApiError(422, "invalid_config", str(exc)) from None
        return {"plugin": _plugin_dict(snap, ctx)}

    @app.get(
        "/api/v1/plugins/{key}/metrics",
        response_model=schemas.MetricsHistory,
        dependencies=admin,
        tags=["plugins"],
        responses=_error_responses(401, 404),
    )
    async def plugin_metrics(key: str) -> dict[str, Any]:
        """CPU, memory, threads, fds and process count of the plugin's process tree (2 s samples, >= 5 min)."""
        plugin_out(key)
        return {"samples": [_sample_dict(m) for m in sup.metrics(key)]}

    lines_q = Query(200, ge=0, le=MAX_LOG_LINES, description="How many of the newest lines")
    grep_q = Query(
        None,
        max_length=MAX_PATTERN,
        description="Only lines whose message matches this regular expression (searched over the in-memory tail)",
    )

    @app.get(
        "/api/v1/plugins/{key}/logs",
        response_model=schemas.LogLines,
        dependencies=admin,
        tags=["logs"],
        responses={200: {"content": {"application/x-ndjson": {}}}, **_error_responses(400, 401, 404, 422)},
    )
    async def plugin_logs(
        request: Request,
        key: str,
        lines: int = lines_q,
        follow: bool = Query(False, description="Keep the response open and stream new lines as NDJSON"),
        grep: str | None = grep_q,
    ) -> Response:
        """The plugin's newest log lines; with follow=true, then every new line as it comes."""
        plugin_out(key)
        if grep is not None:
            if follow:
                raise ApiError(400, "bad_request", "grep and follow cannot be combined")
            return JSONResponse({"lines": await _grep_logs(sup, key, lines, grep)})
        if not follow:
            return JSONResponse({"lines": [_log_dict(r) for r in sup.logs.tail(key, lines)]})
        return StreamingResponse(_follow_logs(sup, key, lines, request, ctx.closing), media_type="application/x-ndjson")

    @app.get(
        "/api/v1/logs",
        response_model=schemas.LogLines,
        dependencies=admin,
        tags=["logs"],
        responses=_error_responses(400, 401, 422),
    )
    async def all_logs(
        lines: int = lines_q,
        source: str | None = Query(None, description="Only this source"),
        grep: str | None = grep_q,
    ) -> dict[str, Any]:
        """The newest lines of every source merged by time (or of one source); with grep, the newest matching."""
        if grep is not None:
            return {"lines": await _grep_logs(sup, source, lines, grep)}
        return {"lines": [_log_dict(r) for r in sup.logs.tail(source, lines)]}

    # -- external plugins (the registration protocol over HTTP) -----------------------------------------------------
    plugin_auth = [Depends(require_plugin_token)]

    @app.post(
        "/api/v1/plugins/register",
        response_model=schemas.PluginEnvelope,
        status_code=201,
        dependencies=plugin_auth,
        tags=["external plugins"],
        responses=_error_responses(400, 401, 403, 409, 422),
    )
    async def register_external(body: schemas.RegisterIn) -> dict[str, Any]:
        """An external plugin announces itself; its declared endpoints join the gateway."""
        try:
            snap = await sup.register_external(body.model_dump())
        except ManifestError as exc:
            raise ApiError(422, "invalid_registration", str(exc)) from None
        except PermissionError as exc:
            raise ApiError(403, "upstream_not_allowed", str(exc)) from None
        except PluginActionError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        return {"plugin": _plugin_dict(snap, ctx)}

    @app.post(
        "/api/v1/plugins/{key}/heartbeat",
        response_model=schemas.PluginEnvelope,
        dependencies=plugin_auth,
        tags=["external plugins"],
        responses=_error_responses(401, 404, 409),
    )
    async def external_heartbeat(key: str) -> dict[str, Any]:
        """An external plugin is alive (a LOST one comes back)."""
        try:
            snap = sup.heartbeat_external(key)
        except PluginNotFound:
            raise ApiError(404, "plugin_not_found", f"no external plugin {key!r}: register first") from None
        except PluginActionError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        return {"plugin": _plugin_dict(snap, ctx)}

    @app.post(
        "/api/v1/plugins/{key}/unregister",
        response_model=schemas.OkOut,
        dependencies=plugin_auth,
        tags=["external plugins"],
        responses=_error_responses(401, 404, 409),
    )
    async def unregister_external(key: str) -> dict[str, Any]:
        """An external plugin leaves; its routes go away."""
        try:
            await sup.unregister_external(key)
        except PluginNotFound:
            raise ApiError(404, "plugin_not_found", f"no external plugin {key!r}") from None
        except PluginActionError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        return {"ok": True}

    # -- metrics -----------------------------------------------------------------------------------------------
    @app.get(
        "/metrics",
        tags=["status"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, **_error_responses(401)},
    )
    async def metrics(request: Request) -> Response:
        """Prometheus text: plugin states, restarts, CPU, RSS, health; gateway traffic; consoles."""
        if not ctx.settings.get("auth.public_metrics"):
            require_admin(request)
        body = ctx.metrics() if ctx.metrics is not None else b""
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- live events -------------------------------------------------------------------------------------------
    @app.websocket("/ws/events")
    async def events(ws: WebSocket) -> None:
        """JSON events as they happen; `?topics=plugin,log,console` filters by topic prefix (old names such as
        `plugin-failed` are delivered under that name: core.events.TOPIC_ALIASES)."""
        if not token_matches(bearer_from_header(ws.headers.get("authorization")), ctx.admin_token):
            await ws.close(code=4401, reason="missing or wrong admin token")
            return
        raw = ws.query_params.get("topics")
        topics = [t.strip() for t in raw.split(",") if t.strip()] if raw else None
        # Subscribed before the handshake completes: whatever the client does once connected, it sees the events.
        with sup.bus.subscribe(topics, maxsize=5000) as sub:
            await ws.accept()
            receiver = asyncio.create_task(_drain_client(ws))
            try:
                while not receiver.done():
                    batch = await sub.get_batch(max_wait=1.0)
                    for event in batch:
                        message = event.to_dict()
                        message["topic"] = sub.topic_name(event)
                        await ws.send_text(json.dumps(message, default=str))
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
            finally:
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await receiver

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if ctx.consoles is not None:
        include_console_api(app, ctx.consoles, ctx.admin_token)
    return app


DOCS_ASSETS = "/docs/assets"


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs (no token, like /openapi.json) with its script, style and icon served from the
    fastapi-offline package: FastAPI's page loads them from a CDN, a blank page on a server without internet."""
    app.mount(DOCS_ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            oauth2_redirect_url=None,
            # Swagger UI would send a public spec to validator.swagger.io for its badge: nothing leaves the host.
            swagger_ui_parameters={"validatorUrl": None},
        )


async def _drain_client(ws: WebSocket) -> None:
    """Reads (and ignores) what the client sends, so a close is noticed."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await ws.receive_text()


async def _follow_logs(
    sup: Supervisor, key: str, lines: int, request: Request, closing: Callable[[], bool]
) -> AsyncIterator[bytes]:
    # Subscribe, then read the newest lines, with no await in between: every line is sent once, none is lost
    # (taking the tail before the response started streaming lost the lines logged meanwhile).
    with sup.bus.subscribe(["log"], maxsize=5000) as sub:
        for r in sup.logs.tail(key, lines):
            yield (json.dumps(_log_dict(r)) + "\n").encode()
        while not closing() and not await request.is_disconnected():
            for event in await sub.get_batch(max_wait=1.0):
                if isinstance(event, LogLine) and event.source == key:
                    line = {
                        "ts": event.ts,
                        "source": event.source,
                        "stream": event.stream,
                        "level": event.level,
                        "message": event.message,
                    }
                    yield (json.dumps(line) + "\n").encode()


def _group_route(sup: Supervisor, ctx: ApiContext, action: str) -> Callable[[str], Awaitable[dict[str, Any]]]:
    """The route of ``POST /api/v1/groups/{group}/<action>``: 404 for a group no plugin is in, 409 naming each
    member whose action failed (the others were done)."""

    async def route(group: str) -> dict[str, Any]:
        try:
            result = await act_on_group(sup, action, group)
        except GroupNotFound:
            raise ApiError(404, "group_not_found", f"no plugin is in group {group!r}") from None
        if result.failures:
            raise ApiError(409, "action_failed", result.failure_message())
        return {"group": group, "plugins": [_plugin_dict(s, ctx) for s in result.plugins]}

    route.__doc__ = f"{action.capitalize()} every plugin of a group (see docs/api.md for the order)."
    return route


async def _grep_logs(sup: Supervisor, source: str | None, lines: int, grep: str) -> list[dict[str, Any]]:
    """The newest ``lines`` matching lines of the in-memory tail; 400 for a bad pattern, 422 for a too slow one.
    Matched in a worker thread: the regex module releases the GIL, the loop keeps serving meanwhile."""
    try:
        pattern = compile_pattern(grep)
    except LogSearchError as exc:
        raise ApiError(400, exc.code, str(exc)) from None
    records = sup.logs.tail(source, sup.logs.ring_lines)
    try:
        found = await asyncio.to_thread(log_search.grep, records, pattern, lines)
    except LogSearchError as exc:
        raise ApiError(422, exc.code, str(exc)) from None
    return [_log_dict(r) for r in found]


def _unreadable_body(reason: BaseException) -> str:
    if isinstance(reason, RecursionError):
        return "the body is nested too deeply"
    return f"the body is not valid JSON: {reason}"[:300]


def _log_dict(r: LogRecord) -> dict[str, Any]:
    return {"ts": r.ts, "source": r.source, "stream": r.stream, "level": r.level, "message": r.message}


def _sample_dict(m: Any) -> dict[str, Any]:
    return {
        "ts": m.ts,
        "cpu_percent": m.cpu_percent,
        "rss": m.rss,
        "threads": m.threads,
        "fds": m.fds,
        "processes": m.processes,
    }


def route_rows(table: list[PluginRoute], sup: Supervisor) -> list[dict[str, Any]]:
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
                {
                    "key": route.key,
                    "method": method,
                    "path": path,
                    "gateway_path": f"/api/plugins/{route.key}{path}",
                    "upstream": upstream,
                    "state": state,
                    "available": route.available,
                    "reason": "" if route.available else route.unavailable_reason or "the plugin is not running",
                }
            )
    return rows


def _plugin_dict(snap: Any, ctx: ApiContext) -> dict[str, Any]:
    d: dict[str, Any] = snap.to_dict()
    base = ctx.api_url.rstrip("/")
    d["endpoints"] = [
        {
            "method": e["method"],
            "path": e["path"],
            "description": e.get("description", ""),
            "gateway_url": f"{base}/api/plugins/{snap.key}{e['path']}",
        }
        for e in d.get("endpoints", [])
    ]
    metrics = d.get("last_metrics")
    d["last_metrics"] = _sample_dict(snap.last_metrics) if metrics else None
    d["requests"] = ctx.request_counts().get(snap.key, 0)
    running = snap.state == "RUNNING" and snap.started_at
    d["uptime"] = round(time.time() - snap.started_at, 3) if running else None
    return d
