"""The admin API (`/api/v1/...`, the plugin manager API's shape), liveness/readiness, and the live event stream.

FastAPI gives typed routes and /openapi.json; it is kept off the hot paths (gateway, heartbeat ingest),
which the top-level app (server/app.py) dispatches before a request ever reaches this app. /docs is Swagger UI
with its files served from /docs/assets (no CDN), without a token like /openapi.json. This module builds the app,
its error answers and its documentation; the routes are in admin_status.py (health, status, routes, fleet,
metrics, groups and graph), admin_plugins.py (plugins, external plugins) and admin_logs.py (logs, events).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from supervisor_tui import __version__
from supervisor_tui.server.admin_context import SCHEMAS, ApiContext, Guards
from supervisor_tui.server.admin_logs import events_router, log_router
from supervisor_tui.server.admin_plugins import external_router, plugin_router
from supervisor_tui.server.admin_status import group_router, health_router, status_router
from supervisor_tui.server.consoles_routes import include_console_api
from supervisor_tui.server.errors import ApiError, internal_error_body, report_internal_error

__all__ = ["ApiContext", "create_admin_app"]


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
    guards = Guards(ctx)
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
            guards.run_before_body(request)
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

    for router in (
        health_router(ctx),
        status_router(ctx, guards),
        plugin_router(ctx, guards),
        group_router(ctx, guards),
        log_router(ctx, guards),
        external_router(ctx, guards),
        events_router(ctx),
    ):
        # The routes themselves, not include_router: newer FastAPI keeps an included router as one entry of
        # app.routes, and the 405 answer's Allow header walks app.routes.
        app.router.routes.extend(router.routes)

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
    SCHEMAS.install(app)  # the answers encoded by msgspec (plugin snapshots, log lines...): their Structs' schemas
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


def _unreadable_body(reason: BaseException) -> str:
    if isinstance(reason, RecursionError):
        return "the body is nested too deeply"
    return f"the body is not valid JSON: {reason}"[:300]
