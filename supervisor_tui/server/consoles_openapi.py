"""/openapi.json for the console API: every console schema comes from a Struct (the bodies of consoles.models,
the answers of consoles.wire) through server.struct_openapi. The admin reads are FastAPI routes that declare
theirs (server.consoles_routes); the ingest routes are served by the raw app, so their path items are built here
from the same Structs.
"""

from __future__ import annotations

from typing import Any

from supervisor_tui.consoles.models import CONSOLE_ID_PATTERN, HeartbeatEN, HeartbeatES, RegistrationEN, RegistrationES
from supervisor_tui.consoles.wire import HeartbeatAnswer, Registered
from supervisor_tui.server.errors import ERROR_SCHEMA
from supervisor_tui.server.struct_openapi import StructSchemas

SCHEMAS = StructSchemas()  # every Struct the console API documents; installed with the reads (consoles_routes)

_ERRORS = {
    400: "malformed JSON or gzip",
    401: "token missing",
    403: "token wrong",
    404: "no such console (heartbeat: register first)",
    405: "method not allowed",
    413: "body over 64 KiB (after decompression too)",
    415: "Content-Type is not application/json, or unsupported Content-Encoding",
    422: "a field or parameter has a wrong type or value; the message names it and what is allowed",
    429: "too many registrations (consoles.register_rate, consoles.register_rate_global); retry after Retry-After",
    503: "not committed or not read (database error or shutting down); retry after Retry-After",
}
_INGEST_ERRORS = (400, 401, 403, 404, 413, 415, 422, 503)
_REGISTER_ERRORS = (*_INGEST_ERRORS, 429)
_ID_PARAM = {
    "name": "consoleId",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": CONSOLE_ID_PATTERN},
    "description": "the console's id (a UUID v4 for the Spanish console clients)",
}
_REREGISTER = "Re-registering an existing id needs its token; a new console needs the enrollment token when one is "
_REREGISTER += "configured (X-Enrollment-Token)."
_DURABLE = "Committed durably before the 2xx. Needs the console's token unless consoles.auth = none."


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Error answers (the one error shape) for ``statuses``, described for the console API."""
    return {s: {"description": _ERRORS[s], "content": {"application/json": {"schema": ERROR_SCHEMA}}} for s in statuses}


def _register(operation_id: str, summary: str, body: type, description: str) -> dict[str, Any]:
    return {
        "post": {
            "tags": ["consoles"],
            "summary": summary,
            "description": description,
            "operationId": operation_id,
            "requestBody": SCHEMAS.request_body(body),
            "responses": _keyed(
                {**SCHEMAS.responses({201: (Registered, "registered"), 200: (Registered, "re-registered")})},
                errors(*_REGISTER_ERRORS),
            ),
        }
    }


def _heartbeat(operation_id: str, summary: str, body: type) -> dict[str, Any]:
    return {
        "post": {
            "tags": ["consoles"],
            "summary": summary,
            "description": _DURABLE,
            "operationId": operation_id,
            "parameters": [_ID_PARAM],
            "requestBody": SCHEMAS.request_body(body),
            "responses": _keyed(SCHEMAS.responses({200: (HeartbeatAnswer, "committed")}), errors(*_INGEST_ERRORS)),
        }
    }


def _keyed(*responses: dict[int | str, dict[str, Any]]) -> dict[str, Any]:
    """OpenAPI keys response codes by string."""
    return {str(status): answer for part in responses for status, answer in part.items()}


def ingest_paths() -> dict[str, Any]:
    """The path items of the routes the raw ingest app serves (server.consoles_api), both dialects."""
    return {
        "/api/consolas/registrar": _register(
            "consolas_registrar",
            "Register a console (Spanish console API)",
            RegistrationES,
            "The Spanish registration. " + _REREGISTER,
        ),
        "/api/consolas/{consoleId}/heartbeat": _heartbeat(
            "consolas_heartbeat", "Heartbeat (Spanish console API)", HeartbeatES
        ),
        "/api/consoles/register": _register("consoles_register", "Register a console", RegistrationEN, _REREGISTER),
        "/api/consoles/{consoleId}/heartbeat": _heartbeat("consoles_heartbeat", "Heartbeat", HeartbeatEN),
    }
