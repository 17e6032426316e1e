"""The console API as a raw ASGI app: the Spanish console API's endpoints, their English twins, and the admin reads.

No framework on the ingest path (routing is a few string checks, bodies are decoded by msgspec). The top-level
server app dispatches ``/api/consolas/...`` and ``/api/consoles...`` here; ``OPENAPI_PATHS`` documents every
route. The same object is also the server's fast route set (``match``/``handle``, see server.fast_http): a plain
heartbeat request is checked and queued straight from the HTTP protocol, without ASGI, and answered from the
group commit's callback; both ways share the checks (``_check_heartbeat``) and the answers.

    POST /api/consolas/registrar                 Spanish registration    {id, nombre, estado, sistema, ultimaActividad}
    POST /api/consolas/{id}/heartbeat            Spanish heartbeat       {estado, sistema, ultimaActividad, ...}
    POST /api/consoles/register                  English registration    {id, name, state, system, last_activity}
    POST /api/consoles/{id}/heartbeat            English heartbeat       {state, system, last_activity, ...}
    GET  /api/consoles[?state=&q=&limit=&offset=&sort=]      admin token
    GET  /api/consoles/stats | /{id} | /{id}/heartbeats?limit= | /{id}/transitions?limit=   admin token
    DELETE /api/consoles/{id}                                 admin token
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import msgspec

from supervisor_tui.config import Settings
from supervisor_tui.consoles.errors import (
    ConsoleError,
    ConsoleForbidden,
    ConsoleNotFound,
    ConsoleUnauthorized,
    ConsoleUnavailable,
)
from supervisor_tui.consoles.models import (
    ALL_STATES,
    CONSOLE_ID_PATTERN,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    REPORTED_STATES,
    SPANISH_REPORTED_STATES,
    SPANISH_TO_ENGLISH,
    HeartbeatInput,
    InvalidField,
    decode_heartbeat,
    decode_registration,
    iso,
)
from supervisor_tui.consoles.queries import SORTS
from supervisor_tui.consoles.service import ConsoleService, HeartbeatAck
from supervisor_tui.server.auth import bearer_from_header, token_matches
from supervisor_tui.server.errors import ERROR_SCHEMA, error_body, send_json
from supervisor_tui.server.fast_http import Answer
from supervisor_tui.server.limits import RateLimit, retry_after

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY = 64 * 1024
_RESERVED_IDS = frozenset({"register", "registrar", "stats"})
_encode = msgspec.json.Encoder().encode


class _HttpError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: tuple[tuple[bytes, bytes], ...] = (), **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers, extra


_STATUS_OF: dict[type[ConsoleError], tuple[int, tuple[tuple[bytes, bytes], ...]]] = {
    ConsoleNotFound: (404, ()),
    ConsoleUnauthorized: (401, ((b"www-authenticate", b"Bearer"),)),
    ConsoleForbidden: (403, ()),
    ConsoleUnavailable: (503, ((b"retry-after", b"1"),)),
}


def _from_console_error(exc: ConsoleError) -> _HttpError:
    status, headers = _STATUS_OF.get(type(exc), (400, ()))
    return _HttpError(status, exc.code, exc.message, headers)


async def _respond(send: Send, status: int, payload: Any, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    await send_json(send, status, _encode(payload), headers)


async def _respond_error(send: Send, err: _HttpError) -> None:
    await send_json(send, err.status, error_body(err.code, err.message, **err.extra), err.headers)


class ConsolesAPI:
    """ASGI app for the console routes (see the module docstring); ``admin_token`` guards the reads."""

    def __init__(self, service: ConsoleService, settings: Settings, admin_token: str, max_body: int = MAX_BODY) -> None:
        self.service = service
        self.settings = settings
        self.admin_token = admin_token
        self.max_body = max_body
        # Registration writes before any credential (a new console needs none unless an enrollment token is set).
        self.registrations = RateLimit(settings.consoles.register_rate, settings.consoles.register_rate_global)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":  # standalone use; when mounted, the top-level app owns the lifespan
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            return
        path: str = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/")
        method: str = scope["method"]
        try:
            if path.startswith("/api/consolas/"):
                rest = path[14:]
                if rest == "registrar":
                    self._allow(method, "POST")
                    await self._register(scope, receive, send, spanish=True)
                    return
                if rest.endswith("/heartbeat") and rest.count("/") == 1:
                    self._allow(method, "POST")
                    await self._heartbeat(rest[:-10], scope, receive, send, spanish=True)
                    return
            elif path == "/api/consoles":
                self._allow(method, "GET")
                await self._list(scope, send)
                return
            elif path.startswith("/api/consoles/"):
                rest = path[14:]
                parts = rest.split("/")
                if len(parts) == 1:
                    if rest == "register":
                        self._allow(method, "POST")
                        await self._register(scope, receive, send, spanish=False)
                        return
                    if rest == "stats":
                        self._allow(method, "GET")
                        self._admin(scope)
                        await _respond(send, 200, await self.service.stats())
                        return
                    self._allow(method, "GET", "DELETE")
                    await self._one(rest, method, scope, send)
                    return
                if len(parts) == 2 and parts[0]:
                    cid, what = parts
                    if what == "heartbeat":
                        self._allow(method, "POST")
                        await self._heartbeat(cid, scope, receive, send, spanish=False)
                        return
                    if what in ("heartbeats", "transitions"):
                        self._allow(method, "GET")
                        await self._history(cid, what, scope, send)
                        return
            raise _HttpError(404, "not_found", f"no console route {scope['method']} {scope['path']}")
        except _HttpError as err:
            await _respond_error(send, err)
        except ConsoleError as exc:
            await _respond_error(send, _from_console_error(exc))
        except sqlite3.Error as exc:  # a read the database could not serve: retryable, still in the error shape
            await _respond_error(
                send, _HttpError(503, "unavailable", f"database error: {exc}", ((b"retry-after", b"1"),))
            )

    # -- helpers -----------------------------------------------------------------------------------------
    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise _HttpError(
                405,
                "method_not_allowed",
                f"{method} is not allowed here; use {' or '.join(allowed)}",
                ((b"allow", ", ".join(allowed).encode()),),
            )

    def _admin(self, scope: Scope) -> None:
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = bearer_from_header(value)
                break
        if not token_matches(token, self.admin_token):
            raise _HttpError(
                401,
                "unauthorized",
                "this needs the admin token (Authorization: Bearer <token from admin.token in the data directory>)",
                ((b"www-authenticate", b"Bearer"),),
            )

    async def _body(self, scope: Scope, receive: Receive) -> tuple[bytes, str | None, str | None]:
        """The request body (decompressed), the bearer token and the enrollment token header."""
        token, enrollment, encoding, declared, is_json = _request_headers(scope["headers"])
        _require_json(is_json)
        limit = self.max_body
        if declared > limit:
            raise _HttpError(413, "too_large", f"the body is over {limit // 1024} KiB")
        message = await receive()
        body: bytes = message.get("body", b"")
        if message.get("more_body"):
            chunks = [body]
            size = len(body)
            while message.get("more_body"):
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _HttpError(413, "too_large", f"the body is over {limit // 1024} KiB")
                chunks.append(chunk)
            body = b"".join(chunks)
        if len(body) > limit:
            raise _HttpError(413, "too_large", f"the body is over {limit // 1024} KiB")
        return self._decompress(body, encoding), token, enrollment

    def _decompress(self, body: bytes, encoding: str | None) -> bytes:
        if not encoding or encoding == "identity":
            return body
        if encoding not in ("gzip", "x-gzip"):
            raise _HttpError(
                415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; use gzip or none"
            )
        return _gunzip(body, self.max_body)

    # -- ingest ------------------------------------------------------------------------------------------
    async def _heartbeat(self, cid: str, scope: Scope, receive: Receive, send: Send, spanish: bool) -> None:
        try:
            body, token, _ = await self._body(scope, receive)
            hb = self._check_heartbeat(cid, token, body, spanish)
            ack = await self.service.heartbeat(cid, hb)
        except (_HttpError, ConsoleError) as exc:
            self.service.count_rejection(exc.code)
            raise
        await send_json(send, 200, _heartbeat_answer(ack))

    def _check_heartbeat(self, cid: str, token: str | None, body: bytes, spanish: bool) -> HeartbeatInput:
        """The heartbeat of ``body`` once ``cid`` is known and ``token`` is its token (else _HttpError or a
        ConsoleError); nothing is queued yet."""
        try:
            self.service.authorize_heartbeat(cid, token)
        except ConsoleNotFound:
            where = "POST /api/consolas/registrar" if spanish else "POST /api/consoles/register"
            raise _HttpError(
                404,
                "console_not_found",
                f"console {cid!r} is not registered (or was removed): register it with {where}, then send heartbeats",
            ) from None
        hb: HeartbeatInput = _decode(decode_heartbeat, body, spanish)
        return hb

    # -- the same heartbeat routes without ASGI (server.fast_http's FastRoutes) -------------------------------
    def match(self, target: bytes) -> tuple[str, bool] | None:
        """(console id, Spanish?) for a plain heartbeat request target; None sends it down the ASGI path, which
        also answers whatever this does not take (query strings, escapes, odd ids) exactly as before."""
        if target.startswith(b"/api/consolas/"):
            spanish = True
        elif target.startswith(b"/api/consoles/"):
            spanish = False
        else:
            return None
        rest = target[14:]
        if not rest.endswith(b"/heartbeat") or b"?" in rest or b"%" in rest:
            return None
        cid = rest[:-10]
        if not cid or b"/" in cid or not cid.isascii():
            return None
        return cid.decode("ascii"), spanish

    def handle(self, route: tuple[str, bool], headers: list[tuple[bytes, bytes]], body: bytes, answer: Answer) -> None:
        """Check and queue one heartbeat; ``answer`` is called once its batch is committed (or it is refused)."""
        cid, spanish = route
        service = self.service
        try:
            token, _, encoding, _, is_json = _request_headers(headers)
            _require_json(is_json)
            hb = self._check_heartbeat(cid, token, self._decompress(body, encoding), spanish)
            fut = service.submit_heartbeat(cid, hb)
        except (_HttpError, ConsoleError) as exc:
            self._refuse(exc, answer)
            return

        def committed(f: asyncio.Future[Any]) -> None:
            try:
                ack = service.acknowledged(f)
            except ConsoleError as exc:
                self._refuse(exc, answer)
                return
            answer(200, _heartbeat_answer(ack), ())

        fut.add_done_callback(committed)

    def _refuse(self, exc: _HttpError | ConsoleError, answer: Answer) -> None:
        self.service.count_rejection(exc.code)
        err = exc if isinstance(exc, _HttpError) else _from_console_error(exc)
        answer(err.status, error_body(err.code, err.message, **err.extra), err.headers)

    async def _register(self, scope: Scope, receive: Receive, send: Send, spanish: bool) -> None:
        # The body (and its Content-Type) first: a cross-site text/plain flood is refused without using up the
        # registration budget that real consoles need.
        body, token, enrollment = await self._body(scope, receive)
        client = scope.get("client")
        limit = self.registrations
        wait = limit.take(client[0] if client else "")
        if wait:
            raise _HttpError(
                429,
                "rate_limited",
                f"too many console registrations: at most {limit.per_client} a minute from one address and "
                f"{limit.total} from all (consoles.register_rate, consoles.register_rate_global; 0 = no limit); "
                f"retry in {retry_after(wait).decode()} s",
                ((b"retry-after", retry_after(wait)),),
            )
        reg = _decode(decode_registration, body, spanish)
        if reg.id in _RESERVED_IDS:
            raise _HttpError(
                422, "invalid_field", f"`id` {reg.id!r} is reserved; use another id (a UUID v4 is usual)", field="id"
            )
        result = await self.service.register(reg, token, enrollment)
        await _respond(
            send,
            201 if result.created else 200,
            {"console": result.console, "token": result.token, "created": result.created},
        )

    # -- admin reads -------------------------------------------------------------------------------------
    async def _list(self, scope: Scope, send: Send) -> None:
        self._admin(scope)
        q = _query(scope)
        state = q.get("state")
        if state is not None:
            state = SPANISH_TO_ENGLISH.get(state, state)
            if state not in ALL_STATES:
                raise _HttpError(
                    422,
                    "invalid_parameter",
                    f"`state` must be one of {', '.join(ALL_STATES)}; got {state[:64]!r}",
                    field="state",
                )
        sort = q.get("sort", "-last_seen")
        if sort not in SORTS:
            raise _HttpError(
                422, "invalid_parameter", f"`sort` must be one of {', '.join(SORTS)}; got {sort[:64]!r}", field="sort"
            )
        limit = _int_param(q, "limit", 100, 1, 1000)
        offset = _int_param(q, "offset", 0, 0, 10**9)
        search = q.get("q") or None
        consoles, total = await self.service.list_consoles(state, search, limit, offset, sort)
        await _respond(send, 200, {"consoles": consoles, "total": total, "limit": limit, "offset": offset})

    async def _one(self, cid: str, method: str, scope: Scope, send: Send) -> None:
        self._admin(scope)
        if method == "DELETE":
            if not await self.service.remove(cid):
                raise _HttpError(404, "console_not_found", f"no console {cid!r}")
            await _respond(send, 200, {"removed": cid})
            return
        await _respond(send, 200, await self.service.get(cid))

    async def _history(self, cid: str, what: str, scope: Scope, send: Send) -> None:
        self._admin(scope)
        limit = _int_param(_query(scope), "limit", 100, 1, 10_000)
        if what == "heartbeats":
            await _respond(send, 200, {"console_id": cid, "heartbeats": await self.service.heartbeats(cid, limit)})
        else:
            await _respond(send, 200, {"console_id": cid, "transitions": await self.service.transitions(cid, limit)})


def _heartbeat_answer(ack: HeartbeatAck) -> bytes:
    return _encode({"ok": True, "console_id": ack.console_id, "state": ack.state, "received_at": iso(ack.received_at)})


def _request_headers(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[str | None, str | None, str | None, int, bool]:
    """(bearer token, enrollment token, content encoding, declared length or -1, JSON content type?) from a
    request's headers."""
    token = enrollment = encoding = None
    declared = -1
    is_json = False
    for name, value in headers:
        if name == b"authorization":
            token = bearer_from_header(value)
        elif name == b"content-type":
            is_json = value.partition(b";")[0].strip().lower() == b"application/json"
        elif name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = -1
        elif name == b"content-encoding":
            encoding = value.decode("latin-1").strip().lower()
        elif name == b"x-enrollment-token":
            enrollment = value.decode("latin-1").strip() or None
    return token, enrollment, encoding, declared, is_json


def _require_json(is_json: bool) -> None:
    # A browser sends text/plain or a form cross-site without asking first; application/json needs a CORS
    # preflight this server never grants, so a web page cannot post registrations or heartbeats.
    if not is_json:
        raise _HttpError(415, "unsupported_media_type", "the body must be JSON: send Content-Type: application/json")


def _decode(decoder: Callable[[bytes, bool], Any], body: bytes, spanish: bool) -> Any:
    try:
        return decoder(body, spanish)
    except InvalidField as exc:
        raise _HttpError(422, "invalid_field", exc.message, field=exc.field) from None
    except msgspec.DecodeError as exc:
        raise _HttpError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec decodes `system` and `last_error` (free-form JSON) by recursion
        raise _HttpError(400, "invalid_json", "the body is nested too deeply") from None


def _gunzip(body: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise _HttpError(400, "invalid_json", f"the gzip body cannot be decompressed: {exc}") from None
    if len(out) > limit:
        raise _HttpError(413, "too_large", f"the body is over {limit // 1024} KiB once decompressed")
    if not d.eof:
        raise _HttpError(400, "invalid_json", "the gzip body is truncated")
    return out


def _query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"")
    if not raw:
        return {}
    return {k: v[-1] for k, v in parse_qs(raw.decode("latin-1"), keep_blank_values=True).items()}


def _int_param(q: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    value = q.get(name)
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        n = lo - 1
    if not lo <= n <= hi:
        raise _HttpError(
            422, "invalid_parameter", f"`{name}` must be an integer {lo}-{hi}; got {value[:32]!r}", field=name
        )
    return n


# -- OpenAPI ---------------------------------------------------------------------------------------------------
# JSON Schema in OpenAPI 3.1 style (type lists for null), merged into the top-level /openapi.json.

_TS = {"type": ["string", "null"], "format": "date-time", "description": "ISO-8601 UTC"}
_TS_IN = {
    # parse_timestamp also reads Unix seconds, so the schema says so (clients were told "string" only).
    "type": ["string", "number", "null"],
    "format": "date-time",
    "minimum": MIN_TIMESTAMP,
    "maximum": MAX_TIMESTAMP,
    "description": "ISO-8601 timestamp like 2025-12-03T10:30:00.000Z (no offset = UTC), or Unix seconds",
    "example": "2025-12-03T10:30:00.000Z",
}
_SYSTEM = {
    "type": ["object", "null"],
    "description": "system information (free-form; hostname is used for search)",
    "additionalProperties": True,
    "example": {"hostname": "worker-1", "platform": "linux", "arch": "x64", "cpus": 8},
}
_ERROR_VALUE = {"type": ["string", "object", "null"], "description": "the last error: a string, an object or null"}
_ID_PARAM = {
    "name": "consoleId",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": CONSOLE_ID_PATTERN},
    "description": "the console's id (a UUID v4 for the Spanish console clients)",
}
_CONSOLE = {
    "type": "object",
    "required": ["id", "name", "state", "first_seen", "last_seen", "heartbeats"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "state": {"type": "string", "enum": list(ALL_STATES)},
        "reported_state": {"type": "string", "enum": list(REPORTED_STATES)},
        "system": {"type": ["object", "null"]},
        "hostname": {"type": ["string", "null"]},
        "last_activity": _TS,
        "last_error": _ERROR_VALUE,
        "current_job": {"type": ["string", "null"]},
        "first_seen": _TS,
        "last_seen": _TS,
        "heartbeats": {"type": "integer"},
        "inactive_at": _TS,
    },
}
_REG_CONSOLE = {
    "type": "object",
    "required": ["id", "name", "state"],
    "properties": {k: _CONSOLE["properties"][k] for k in ("id", "name", "state", "hostname", "last_activity")}  # type: ignore[index]
    | {"first_seen": _TS, "last_seen": _TS, "inactive_at": _TS},
}
_REGISTERED = {
    "type": "object",
    "required": ["console", "token", "created"],
    "properties": {
        "console": _REG_CONSOLE,
        "token": {"type": "string", "description": "send it as Authorization: Bearer on heartbeats"},
        "created": {"type": "boolean"},
    },
}
_ACK = {
    "type": "object",
    "required": ["ok", "console_id", "state", "received_at"],
    "properties": {
        "ok": {"type": "boolean"},
        "console_id": {"type": "string"},
        "state": {"type": "string", "enum": list(REPORTED_STATES)},
        "received_at": _TS,
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "malformed JSON or gzip",
        401: "token missing",
        403: "token wrong",
        404: "no such console (heartbeat: register first)",
        405: "method not allowed",
        413: "body over 64 KiB (after decompression too)",
        415: "Content-Type is not application/json, or unsupported Content-Encoding",
        429: "too many registrations (consoles.register_rate, consoles.register_rate_global); retry after Retry-After",
        422: "a field has a wrong type or value; the message names it and what is allowed",
        503: "not committed (database error or shutting down); retry after Retry-After",
    }
    return {str(s): {"description": text[s], **_json(ERROR_SCHEMA)} for s in statuses}


def _body_schema(fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"required": True, **_json({"type": "object", "required": required, "properties": fields})}


_NEW_ID = {"type": "string", "pattern": CONSOLE_ID_PATTERN, "not": {"enum": sorted(_RESERVED_IDS)}}
_NAME = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "[^ \\t\\r\\n]"}
_ES_STATE = {"type": "string", "enum": list(SPANISH_REPORTED_STATES)}
_EN_STATE = {"type": "string", "enum": list(REPORTED_STATES)}
_INGEST_ERRORS = (400, 401, 403, 404, 413, 415, 422, 503)
_REGISTER_ERRORS = (*_INGEST_ERRORS, 429)
_ADMIN = "Needs the admin token (Authorization: Bearer)."

OPENAPI_PATHS: dict[str, Any] = {
    "/api/consolas/registrar": {
        "post": {
            "tags": ["consoles"],
            "summary": "Register a console (Spanish console API)",
            "description": "The Spanish registration. Re-registering an existing id needs its token; a new console "
            "needs the enrollment token when one is configured (X-Enrollment-Token).",
            "operationId": "consolas_registrar",
            "requestBody": _body_schema(
                {
                    "id": _NEW_ID,
                    "nombre": _NAME,
                    "estado": _ES_STATE,
                    "sistema": _SYSTEM,
                    "ultimaActividad": _TS_IN,
                },
                ["id", "nombre"],
            ),
            "responses": {
                "201": {"description": "registered", **_json(_REGISTERED)},
                "200": {"description": "re-registered", **_json(_REGISTERED)},
                **_errors(*_REGISTER_ERRORS),
            },
        }
    },
    "/api/consolas/{consoleId}/heartbeat": {
        "post": {
            "tags": ["consoles"],
            "summary": "Heartbeat (Spanish console API)",
            "description": "Committed durably before the 2xx. Needs the console's token unless consoles.auth = none.",
            "operationId": "consolas_heartbeat",
            "parameters": [_ID_PARAM],
            "requestBody": _body_schema(
                {
                    "estado": _ES_STATE,
                    "sistema": _SYSTEM,
                    "ultimaActividad": _TS_IN,
                    "ultimoError": _ERROR_VALUE,
                    "videoEnProceso": {"type": ["string", "null"], "maxLength": 500},
                },
                ["estado"],
            ),
            "responses": {"200": {"description": "committed", **_json(_ACK)}, **_errors(*_INGEST_ERRORS)},
        }
    },
    "/api/consoles/register": {
        "post": {
            "tags": ["consoles"],
            "summary": "Register a console",
            "description": "Re-registering an existing id needs its token; a new console needs the enrollment "
            "token when one is configured (X-Enrollment-Token).",
            "operationId": "consoles_register",
            "requestBody": _body_schema(
                {
                    "id": _NEW_ID,
                    "name": _NAME,
                    "state": _EN_STATE,
                    "system": _SYSTEM,
                    "last_activity": _TS_IN,
                },
                ["id", "name"],
            ),
            "responses": {
                "201": {"description": "registered", **_json(_REGISTERED)},
                "200": {"description": "re-registered", **_json(_REGISTERED)},
                **_errors(*_REGISTER_ERRORS),
            },
        }
    },
    "/api/consoles/{consoleId}/heartbeat": {
        "post": {
            "tags": ["consoles"],
            "summary": "Heartbeat",
            "description": "Committed durably before the 2xx. Needs the console's token unless consoles.auth = none.",
            "operationId": "consoles_heartbeat",
            "parameters": [_ID_PARAM],
            "requestBody": _body_schema(
                {
                    "state": _EN_STATE,
                    "system": _SYSTEM,
                    "last_activity": _TS_IN,
                    "last_error": _ERROR_VALUE,
                    "current_job": {"type": ["string", "null"], "maxLength": 500},
                },
                ["state"],
            ),
            "responses": {"200": {"description": "committed", **_json(_ACK)}, **_errors(*_INGEST_ERRORS)},
        }
    },
    "/api/consoles": {
        "get": {
            "tags": ["consoles"],
            "summary": "List consoles",
            "description": "Filter by state, search by name, host or id, page, sort by last seen. " + _ADMIN,
            "operationId": "consoles_list",
            "parameters": [
                {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(ALL_STATES)}},
                {"name": "q", "in": "query", "schema": {"type": "string"}, "description": "name, host or id"},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 10**9}},
                {"name": "sort", "in": "query", "schema": {"type": "string", "enum": list(SORTS)}},
            ],
            "responses": {
                "200": {
                    "description": "one page",
                    **_json(
                        {
                            "type": "object",
                            "required": ["consoles", "total", "limit", "offset"],
                            "properties": {
                                "consoles": {"type": "array", "items": _CONSOLE},
                                "total": {"type": "integer"},
                                "limit": {"type": "integer"},
                                "offset": {"type": "integer"},
                            },
                        }
                    ),
                },
                **_errors(401, 422),
            },
        }
    },
    "/api/consoles/stats": {
        "get": {
            "tags": ["consoles"],
            "summary": "Console statistics",
            "description": "Count and latest activity by state (the Spanish console API's statistics query). " + _ADMIN,
            "operationId": "consoles_stats",
            "responses": {
                "200": {
                    "description": "statistics",
                    **_json(
                        {
                            "type": "object",
                            "required": ["total", "states"],
                            "properties": {
                                "total": {"type": "integer"},
                                "states": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["state", "count", "last_activity"],
                                        "properties": {
                                            "state": {"type": "string", "enum": list(ALL_STATES)},
                                            "count": {"type": "integer"},
                                            "last_activity": _TS,
                                        },
                                    },
                                },
                            },
                        }
                    ),
                },
                **_errors(401),
            },
        }
    },
    "/api/consoles/{consoleId}": {
        "get": {
            "tags": ["consoles"],
            "summary": "One console",
            "description": _ADMIN,
            "operationId": "consoles_get",
            "parameters": [_ID_PARAM],
            "responses": {"200": {"description": "the console", **_json(_CONSOLE)}, **_errors(401, 404)},
        },
        "delete": {
            "tags": ["consoles"],
            "summary": "Remove a console with its history",
            "description": _ADMIN,
            "operationId": "consoles_delete",
            "parameters": [_ID_PARAM],
            "responses": {
                "200": {
                    "description": "removed",
                    **_json({"type": "object", "required": ["removed"], "properties": {"removed": {"type": "string"}}}),
                },
                **_errors(401, 404, 503),
            },
        },
    },
    "/api/consoles/{consoleId}/heartbeats": {
        "get": {
            "tags": ["consoles"],
            "summary": "A console's latest heartbeats, newest first",
            "description": _ADMIN,
            "operationId": "consoles_heartbeats",
            "parameters": [
                _ID_PARAM,
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
            ],
            "responses": {
                "200": {
                    "description": "heartbeats",
                    **_json(
                        {
                            "type": "object",
                            "required": ["console_id", "heartbeats"],
                            "properties": {
                                "console_id": {"type": "string"},
                                "heartbeats": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["received_at", "state"],
                                        "properties": {
                                            "received_at": _TS,
                                            "state": {"type": "string"},
                                            "last_activity": _TS,
                                            "last_error": _ERROR_VALUE,
                                            "current_job": {"type": ["string", "null"]},
                                            "system": {"type": ["object", "null"]},
                                        },
                                    },
                                },
                            },
                        }
                    ),
                },
                **_errors(401, 404, 422),
            },
        }
    },
    "/api/consoles/{consoleId}/transitions": {
        "get": {
            "tags": ["consoles"],
            "summary": "A console's state transitions, newest first",
            "description": _ADMIN,
            "operationId": "consoles_transitions",
            "parameters": [
                _ID_PARAM,
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
            ],
            "responses": {
                "200": {
                    "description": "transitions",
                    **_json(
                        {
                            "type": "object",
                            "required": ["console_id", "transitions"],
                            "properties": {
                                "console_id": {"type": "string"},
                                "transitions": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["from", "to", "at", "reason"],
                                        "properties": {
                                            "from": {"type": ["string", "null"]},
                                            "to": {"type": "string"},
                                            "at": _TS,
                                            "reason": {"type": "string", "enum": ["heartbeat", "timeout", "register"]},
                                        },
                                    },
                                },
                            },
                        }
                    ),
                },
                **_errors(401, 404, 422),
            },
        }
    },
}
