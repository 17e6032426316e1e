"""The console ingest as a raw ASGI app: registration and heartbeats of the Spanish console API and their English twins.

No framework on the ingest path (routing is a few string checks, bodies are decoded by msgspec). The top-level
server app sends the paths ``is_ingest`` names here; the admin reads (``GET /api/consoles...``, removal) are
FastAPI routes (server.consoles_routes), which this app also serves when it runs on its own. The same object is
the server's fast route set (``match``/``handle``, see server.fast_http): a plain heartbeat request is checked and
queued straight from the HTTP protocol, without ASGI, and answered from the group commit's callback; both ways
share the checks (``_check_heartbeat``) and the answers. /openapi.json documents these routes from the body and
answer Structs (server.consoles_openapi).

    POST /api/consolas/registrar                 Spanish registration    {id, nombre, estado, sistema, ultimaActividad}
    POST /api/consolas/{id}/heartbeat            Spanish heartbeat       {estado, sistema, ultimaActividad, ...}
    POST /api/consoles/register                  English registration    {id, name, state, system, last_activity}
    POST /api/consoles/{id}/heartbeat            English heartbeat       {state, system, last_activity, ...}
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from supervisor_tui.config import Settings
from supervisor_tui.consoles.batch_plan import HeartbeatAck
from supervisor_tui.consoles.errors import ConsoleError, ConsoleNotFound
from supervisor_tui.consoles.models import HeartbeatInput, decode_heartbeat, decode_registration, iso
from supervisor_tui.consoles.service import ConsoleService
from supervisor_tui.consoles.wire import HeartbeatAnswer, Registered, RegisteredConsole
from supervisor_tui.server.consoles_http import (
    RETRY_SOON,
    HttpError,
    decode,
    decompress,
    from_console_error,
    request_headers,
    require_json,
)
from supervisor_tui.server.errors import send_json
from supervisor_tui.server.fast_http import Answer
from supervisor_tui.server.limits import RateLimit, retry_after

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 64 * 1024
RESERVED_IDS = frozenset({"register", "registrar", "stats"})
SPANISH_PREFIX = "/api/consolas/"
ENGLISH_PREFIX = "/api/consoles/"
_encode = msgspec.json.Encoder().encode


def is_ingest(path: str) -> bool:
    """Whether this app serves ``path``: anything under /api/consolas/ (the Spanish API is ingest only),
    /api/consoles/register and /api/consoles/{id}/heartbeat (a trailing slash allowed)."""
    if path.startswith(SPANISH_PREFIX):
        return True
    if not path.startswith(ENGLISH_PREFIX):
        return False
    rest = path[14:].rstrip("/")
    return rest == "register" or (rest.endswith("/heartbeat") and rest.count("/") == 1 and rest[0] != "/")


class ConsolesAPI:
    """ASGI app for the console ingest (see the module docstring).

    ``reads`` serves every other path it is given (the admin reads); on its own (tests, the benchmark) it builds
    them with ``admin_token`` (server.consoles_routes.reads_app). In the server, the top-level app sends it only
    ingest paths and the admin app serves the reads.
    """

    def __init__(
        self,
        service: ConsoleService,
        settings: Settings,
        admin_token: str,
        max_body: int = MAX_BODY,
        reads: ASGIApp | None = None,
    ) -> None:
        self.service = service
        self.settings = settings
        self.admin_token = admin_token
        self.max_body = max_body
        self._reads = reads
        # Registration writes before any credential (a new console needs none unless an enrollment token is set).
        self.registrations = RateLimit(settings.consoles.register_rate, settings.consoles.register_rate_global)

    @property
    def reads(self) -> ASGIApp:
        if self._reads is None:
            from supervisor_tui.server.consoles_routes import reads_app

            self._reads = reads_app(self.service, self.admin_token)
        return self._reads

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
        if not is_ingest(scope["path"]):
            await self.reads(scope, receive, send)
            return
        path: str = scope["path"].rstrip("/")
        method: str = scope["method"]
        try:
            if path.startswith(SPANISH_PREFIX):
                rest = path[14:]
                if rest == "registrar":
                    self._allow(method, "POST")
                    await self._register(scope, receive, send, spanish=True)
                    return
                if rest.endswith("/heartbeat") and rest.count("/") == 1:
                    self._allow(method, "POST")
                    await self._heartbeat(rest[:-10], scope, receive, send, spanish=True)
                    return
                raise HttpError(404, "not_found", f"no console route {scope['method']} {scope['path']}")
            rest = path[14:]
            self._allow(method, "POST")
            if rest == "register":
                await self._register(scope, receive, send, spanish=False)
            else:
                await self._heartbeat(rest[:-10], scope, receive, send, spanish=False)
        except HttpError as refused:
            await send_json(send, refused.status, refused.body(), refused.headers)
        except ConsoleError as exc:
            err = from_console_error(exc)
            await send_json(send, err.status, err.body(), err.headers)
        except sqlite3.Error as exc:  # a write the database could not take: retryable, still in the error shape
            failed = HttpError(503, "unavailable", f"database error: {exc}", RETRY_SOON)
            await send_json(send, failed.status, failed.body(), failed.headers)

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise HttpError(
                405,
                "method_not_allowed",
                f"{method} is not allowed here; use {' or '.join(allowed)}",
                ((b"allow", ", ".join(allowed).encode()),),
            )

    async def _body(self, scope: Scope, receive: Receive) -> tuple[bytes, str | None, str | None]:
        """The request body (decompressed), the bearer token and the enrollment token header."""
        token, enrollment, encoding, declared, is_json = request_headers(scope["headers"])
        require_json(is_json)
        limit = self.max_body
        if declared > limit:
            raise HttpError(413, "too_large", f"the body is over {limit // 1024} KiB")
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
                    raise HttpError(413, "too_large", f"the body is over {limit // 1024} KiB")
                chunks.append(chunk)
            body = b"".join(chunks)
        if len(body) > limit:
            raise HttpError(413, "too_large", f"the body is over {limit // 1024} KiB")
        return decompress(body, encoding, limit), token, enrollment

    # -- heartbeats ----------------------------------------------------------------------------------------
    async def _heartbeat(self, cid: str, scope: Scope, receive: Receive, send: Send, spanish: bool) -> None:
        try:
            body, token, _ = await self._body(scope, receive)
            hb = self._check_heartbeat(cid, token, body, spanish)
            ack = await self.service.heartbeat(cid, hb)
        except (HttpError, ConsoleError) as exc:
            self.service.count_rejection(exc.code)
            raise
        await send_json(send, 200, _heartbeat_answer(ack))

    def _check_heartbeat(self, cid: str, token: str | None, body: bytes, spanish: bool) -> HeartbeatInput:
        """The heartbeat of ``body`` once ``cid`` is known and ``token`` is its token (else HttpError or a
        ConsoleError); nothing is queued yet."""
        try:
            self.service.authorize_heartbeat(cid, token)
        except ConsoleNotFound:
            where = "POST /api/consolas/registrar" if spanish else "POST /api/consoles/register"
            raise HttpError(
                404,
                "console_not_found",
                f"console {cid!r} is not registered (or was removed): register it with {where}, then send heartbeats",
            ) from None
        hb: HeartbeatInput = decode(decode_heartbeat, body, spanish)
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
            token, _, encoding, _, is_json = request_headers(headers)
            require_json(is_json)
            hb = self._check_heartbeat(cid, token, decompress(body, encoding, self.max_body), spanish)
            fut = service.submit_heartbeat(cid, hb)
        except (HttpError, ConsoleError) as exc:
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

    def _refuse(self, exc: HttpError | ConsoleError, answer: Answer) -> None:
        self.service.count_rejection(exc.code)
        err = exc if isinstance(exc, HttpError) else from_console_error(exc)
        answer(err.status, err.body(), err.headers)

    # -- registration ----------------------------------------------------------------------------------------
    async def _register(self, scope: Scope, receive: Receive, send: Send, spanish: bool) -> None:
        # The body (and its Content-Type) first: a cross-site text/plain flood is refused without using up the
        # registration budget that real consoles need.
        body, token, enrollment = await self._body(scope, receive)
        client = scope.get("client")
        limit = self.registrations
        wait = limit.take(client[0] if client else "")
        if wait:
            raise HttpError(
                429,
                "rate_limited",
                f"too many console registrations: at most {limit.per_client} a minute from one address and "
                f"{limit.total} from all (consoles.register_rate, consoles.register_rate_global; 0 = no limit); "
                f"retry in {retry_after(wait).decode()} s",
                ((b"retry-after", retry_after(wait)),),
            )
        reg = decode(decode_registration, body, spanish)
        if reg.id in RESERVED_IDS:
            raise HttpError(
                422, "invalid_field", f"`id` {reg.id!r} is reserved; use another id (a UUID v4 is usual)", field="id"
            )
        result = await self.service.register(reg, token, enrollment)
        answer = Registered(
            console=msgspec.convert(result.console, RegisteredConsole), token=result.token, created=result.created
        )
        await send_json(send, 201 if result.created else 200, _encode(answer))


def _heartbeat_answer(ack: HeartbeatAck) -> bytes:
    # ack.state is one of ConsoleState's values already: no enum lookup on the hot path (msgspec encodes it as is).
    state: Any = ack.state
    return _encode(HeartbeatAnswer(ok=True, console_id=ack.console_id, state=state, received_at=iso(ack.received_at)))
