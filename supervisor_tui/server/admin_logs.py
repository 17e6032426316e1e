"""The log routes of the admin API (newest lines, grep, follow as NDJSON) and the live event stream
(``/ws/events``). Lines are the core's LogEntry Structs (plugins/model.py), encoded by msgspec."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import msgspec
from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response, StreamingResponse

from supervisor_tui.core import log_search
from supervisor_tui.core.events import LogLine, encode_event
from supervisor_tui.core.log_search import MAX_PATTERN, LogSearchError, compile_pattern
from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.plugins.model import LogEntry, LogLines
from supervisor_tui.server.admin_context import ApiContext, Guards, error_responses, struct_answer, struct_content
from supervisor_tui.server.auth import bearer_from_header, token_matches
from supervisor_tui.server.errors import ApiError

MAX_LOG_LINES = 10_000
_encode_line = msgspec.json.Encoder().encode


def log_router(ctx: ApiContext, guards: Guards) -> APIRouter:
    """``/api/v1/logs`` and ``/api/v1/plugins/{key}/logs``."""
    sup = ctx.sup
    router = APIRouter(tags=["logs"])
    lines_q = Query(200, ge=0, le=MAX_LOG_LINES, description="How many of the newest lines")
    grep_q = Query(
        None,
        max_length=MAX_PATTERN,
        description="Only lines whose message matches this regular expression (searched over the in-memory tail)",
    )
    lines_answer = struct_content(LogLines)

    @router.get(
        "/api/v1/plugins/{key}/logs",
        response_model=None,
        dependencies=guards.admin,
        responses={
            200: {
                "description": lines_answer["description"],
                "content": {**lines_answer["content"], "application/x-ndjson": {}},
            },
            **error_responses(400, 401, 404, 422),
        },
    )
    async def plugin_logs(
        request: Request,
        key: str,
        lines: int = lines_q,
        follow: bool = Query(False, description="Keep the response open and stream new lines as NDJSON"),
        grep: str | None = grep_q,
    ) -> Response:
        """The plugin's newest log lines; with follow=true, then every new line as it comes."""
        ctx.plugin(key)  # 404 first
        if grep is not None:
            if follow:
                raise ApiError(400, "bad_request", "grep and follow cannot be combined")
            return struct_answer(LogLines(await _grep_logs(sup, key, lines, grep)))
        if not follow:
            return struct_answer(LogLines([LogEntry.of(r) for r in sup.logs.tail(key, lines)]))
        return StreamingResponse(_follow_logs(sup, key, lines, request, ctx.closing), media_type="application/x-ndjson")

    @router.get(
        "/api/v1/logs",
        response_model=None,
        dependencies=guards.admin,
        responses={200: lines_answer, **error_responses(400, 401, 422)},
    )
    async def all_logs(
        lines: int = lines_q,
        source: str | None = Query(None, description="Only this source"),
        grep: str | None = grep_q,
    ) -> Response:
        """The newest lines of every source merged by time (or of one source); with grep, the newest matching."""
        if grep is not None:
            return struct_answer(LogLines(await _grep_logs(sup, source, lines, grep)))
        return struct_answer(LogLines([LogEntry.of(r) for r in sup.logs.tail(source, lines)]))

    return router


def events_router(ctx: ApiContext) -> APIRouter:
    """``/ws/events``: JSON events as they happen, each the core's event Struct (core/events.py)."""
    sup = ctx.sup
    router = APIRouter()

    @router.websocket("/ws/events")
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
                        # Text frames: the event's Struct as msgspec encodes it, under the name asked for.
                        await ws.send_text(encode_event(event, sub.topic_name(event)).decode())
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
            finally:
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await receiver

    return router


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
            yield _encode_line(LogEntry.of(r)) + b"\n"
        while not closing() and not await request.is_disconnected():
            for event in await sub.get_batch(max_wait=1.0):
                if isinstance(event, LogLine) and event.source == key:
                    yield _encode_line(LogEntry.of(event)) + b"\n"


async def _grep_logs(sup: Supervisor, source: str | None, lines: int, grep: str) -> list[LogEntry]:
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
    return [LogEntry.of(r) for r in found]
