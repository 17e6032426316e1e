"""The admin console reads as a FastAPI router: list/search/page/sort, one console, its history, statistics,
removal. Parameters are declared, answers are the Structs of consoles.wire, and /openapi.json is generated from
both (server.struct_openapi).

    GET    /api/consoles[?state=&q=&limit=&offset=&sort=]
    GET    /api/consoles/stats | /{consoleId} | /{consoleId}/heartbeats?limit= | /{consoleId}/transitions?limit=
    DELETE /api/consoles/{consoleId}

Every route needs the admin token. The routes answer their own errors in the console API's error shape (with
``field`` for a bad parameter), whatever app includes them: ``ConsoleRoute`` turns a refused parameter, a console
service error or a database error into that answer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal, get_args

import msgspec
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from supervisor_tui.consoles.errors import ConsoleError
from supervisor_tui.consoles.models import ALL_STATES, CONSOLE_ID_PATTERN, SPANISH_TO_ENGLISH
from supervisor_tui.consoles.queries import SORTS
from supervisor_tui.consoles.service import ConsoleService
from supervisor_tui.consoles.wire import (
    ConsoleHeartbeats,
    ConsolePage,
    ConsoleSnapshot,
    ConsoleStats,
    ConsoleTransitions,
    RemovedConsole,
    heartbeat_records,
    snapshot,
    snapshots,
    transition_records,
)
from supervisor_tui.server.auth import bearer_from_header, token_matches
from supervisor_tui.server.consoles_http import RETRY_SOON, HttpError, from_console_error, unauthorized
from supervisor_tui.server.consoles_openapi import SCHEMAS, errors, ingest_paths
from supervisor_tui.server.errors import error_body
from supervisor_tui.server.struct_openapi import StructResponse

# The values the list takes: every state, in English or in the Spanish console API's words.
StateFilter = Literal["active", "busy", "idle", "error", "inactive", "activa", "ocupada", "esperando", "inactiva"]
Sort = Literal["-last_seen", "last_seen", "name", "-name"]
if set(get_args(StateFilter)) != {*ALL_STATES, *SPANISH_TO_ENGLISH} or set(get_args(Sort)) != set(SORTS):
    raise ImportError("consoles_routes: StateFilter or Sort no longer lists the states or sorts the store knows")

ConsoleId = Annotated[
    str, Path(pattern=CONSOLE_ID_PATTERN, description="the console's id (a UUID v4 for the Spanish console clients)")
]
HistoryLimit = Annotated[int, Query(ge=1, le=10_000, description="at most this many, newest first")]
ADMIN = "Needs the admin token (Authorization: Bearer)."


def _error_answer(err: HttpError) -> Response:
    return Response(err.body(), err.status, {k.decode(): v.decode() for k, v in err.headers}, "application/json")


def _parameter_error(exc: RequestValidationError) -> HttpError:
    """The first refused parameter, named as the client sent it, with what is allowed."""
    first = exc.errors()[0]
    name = str(first.get("loc", ("", "parameter"))[-1])
    given = str(first.get("input", ""))[:64]
    return HttpError(422, "invalid_parameter", f"`{name}`: {first.get('msg', 'invalid')}; got {given!r}", field=name)


def _drop_blank_parameters(request: Request) -> None:
    """``?limit=`` means "not given" (the default), as it always has on the console reads; FastAPI would refuse
    it as an integer. Done before the request's parameters are first read."""
    raw: bytes = request.scope.get("query_string", b"")
    if raw:
        given = b"&".join(pair for pair in raw.split(b"&") if pair.partition(b"=")[2])  # `k=` and a bare `k` go
        if given != raw:
            request.scope["query_string"] = given


class ConsoleRoute(APIRoute):
    """A route answering its own refusals in the console API's error shape (see the module docstring)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            _drop_blank_parameters(request)
            try:
                return await handler(request)
            except HttpError as err:
                return _error_answer(err)
            except RequestValidationError as exc:
                return _error_answer(_parameter_error(exc))
            except ConsoleError as exc:
                return _error_answer(from_console_error(exc))
            except sqlite3.Error as exc:  # a read the database could not serve: retryable
                return _error_answer(HttpError(503, "unavailable", f"database error: {exc}", RETRY_SOON))

        return answer


def console_router(service: ConsoleService, admin_token: str) -> APIRouter:
    """The admin console reads over ``service``, guarded by ``admin_token``."""

    def require_admin(request: Request) -> None:
        if not token_matches(bearer_from_header(request.headers.get("authorization")), admin_token):
            raise unauthorized()

    router = APIRouter(
        prefix="/api/consoles",
        tags=["consoles"],
        route_class=ConsoleRoute,
        dependencies=[Depends(require_admin)],
        default_response_class=StructResponse,
    )

    @router.get(
        "",
        summary="List consoles",
        description="Filter by state, search by name, host or id, page, sort by last seen. " + ADMIN,
        operation_id="consoles_list",
        responses={**SCHEMAS.responses({200: (ConsolePage, "one page")}), **errors(401, 422)},
    )
    async def list_consoles(
        state: Annotated[StateFilter | None, Query(description="a state, in English or Spanish")] = None,
        q: Annotated[str | None, Query(description="name, host or id (case-insensitive)")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        sort: Annotated[Sort, Query()] = "-last_seen",
    ) -> StructResponse:
        english = SPANISH_TO_ENGLISH.get(state, state) if state is not None else None
        records, total = await service.list_consoles(english, q or None, limit, offset, sort)
        return StructResponse(ConsolePage(consoles=snapshots(records), total=total, limit=limit, offset=offset))

    @router.get(
        "/stats",
        summary="Console statistics",
        description="Count and latest activity by state (the Spanish console API's statistics query). " + ADMIN,
        operation_id="consoles_stats",
        responses={**SCHEMAS.responses({200: (ConsoleStats, "statistics")}), **errors(401)},
    )
    async def stats() -> StructResponse:
        return StructResponse(msgspec.convert(await service.stats(), ConsoleStats))

    @router.get(
        "/{consoleId}",
        summary="One console",
        description=ADMIN,
        operation_id="consoles_get",
        responses={**SCHEMAS.responses({200: (ConsoleSnapshot, "the console")}), **errors(401, 404, 422)},
    )
    async def one(consoleId: ConsoleId) -> StructResponse:
        return StructResponse(snapshot(await service.get(consoleId)))

    @router.delete(
        "/{consoleId}",
        summary="Remove a console with its history",
        description=ADMIN,
        operation_id="consoles_delete",
        responses={**SCHEMAS.responses({200: (RemovedConsole, "removed")}), **errors(401, 404, 422, 503)},
    )
    async def remove(consoleId: ConsoleId) -> StructResponse:
        if not await service.remove(consoleId):
            raise HttpError(404, "console_not_found", f"no console {consoleId!r}")
        return StructResponse(RemovedConsole(removed=consoleId))

    @router.get(
        "/{consoleId}/heartbeats",
        summary="A console's latest heartbeats, newest first",
        description=ADMIN,
        operation_id="consoles_heartbeats",
        responses={**SCHEMAS.responses({200: (ConsoleHeartbeats, "heartbeats")}), **errors(401, 404, 422)},
    )
    async def heartbeats(consoleId: ConsoleId, limit: HistoryLimit = 100) -> StructResponse:
        rows = heartbeat_records(await service.heartbeats(consoleId, limit))
        return StructResponse(ConsoleHeartbeats(console_id=consoleId, heartbeats=rows))

    @router.get(
        "/{consoleId}/transitions",
        summary="A console's state transitions, newest first",
        description=ADMIN,
        operation_id="consoles_transitions",
        responses={**SCHEMAS.responses({200: (ConsoleTransitions, "transitions")}), **errors(401, 404, 422)},
    )
    async def transitions(consoleId: ConsoleId, limit: HistoryLimit = 100) -> StructResponse:
        rows = transition_records(await service.transitions(consoleId, limit))
        return StructResponse(ConsoleTransitions(console_id=consoleId, transitions=rows))

    return router


def include_console_api(app: FastAPI, service: ConsoleService, admin_token: str) -> None:
    """Serve the admin console reads in ``app`` and document the whole console API in its /openapi.json (the
    ingest routes too, which the raw app serves). Call it once the app has set its own ``app.openapi``."""
    app.include_router(console_router(service, admin_token))
    SCHEMAS.install(app, paths=ingest_paths())


def reads_app(service: ConsoleService, admin_token: str) -> FastAPI:
    """The admin reads as an app of their own (the console API without the admin app: tests, the benchmark),
    answering unknown routes and methods in the same error shape."""
    app = FastAPI(docs_url=None, redoc_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = error_body(code, f"no console route {request.method} {request.url.path}")
        return Response(body, exc.status_code, dict(exc.headers or {}), "application/json")

    include_console_api(app, service, admin_token)
    return app
