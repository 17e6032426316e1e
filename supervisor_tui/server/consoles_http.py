"""What both console apps (the raw ingest and the admin-read router) share: the error they raise, the console
service's errors as HTTP answers, and reading a console client's request (headers, JSON body, gzip).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from supervisor_tui.consoles.errors import (
    ConsoleError,
    ConsoleForbidden,
    ConsoleNotFound,
    ConsoleUnauthorized,
    ConsoleUnavailable,
)
from supervisor_tui.consoles.models import InvalidField
from supervisor_tui.server.auth import bearer_from_header
from supervisor_tui.server.errors import error_body

Headers = tuple[tuple[bytes, bytes], ...]
RETRY_SOON: Headers = ((b"retry-after", b"1"),)


class HttpError(Exception):
    """An answer in the error shape: status, code, message, headers and extra fields of the error (``field``)."""

    def __init__(self, status: int, code: str, message: str, headers: Headers = (), **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers, extra

    def body(self) -> bytes:
        return error_body(self.code, self.message, **self.extra)


_STATUS_OF: dict[type[ConsoleError], tuple[int, Headers]] = {
    ConsoleNotFound: (404, ()),
    ConsoleUnauthorized: (401, ((b"www-authenticate", b"Bearer"),)),
    ConsoleForbidden: (403, ()),
    ConsoleUnavailable: (503, RETRY_SOON),
}


def from_console_error(exc: ConsoleError) -> HttpError:
    status, headers = _STATUS_OF.get(type(exc), (400, ()))
    return HttpError(status, exc.code, exc.message, headers)


def unauthorized() -> HttpError:
    return HttpError(
        401,
        "unauthorized",
        "this needs the admin token (Authorization: Bearer <token from admin.token in the data directory>)",
        ((b"www-authenticate", b"Bearer"),),
    )


def request_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str | None, str | None, str | None, int, bool]:
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


def require_json(is_json: bool) -> None:
    # A browser sends text/plain or a form cross-site without asking first; application/json needs a CORS
    # preflight this server never grants, so a web page cannot post registrations or heartbeats.
    if not is_json:
        raise HttpError(415, "unsupported_media_type", "the body must be JSON: send Content-Type: application/json")


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise HttpError(
            415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; use gzip or none"
        )
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HttpError(400, "invalid_json", f"the gzip body cannot be decompressed: {exc}") from None
    if len(out) > limit:
        raise HttpError(413, "too_large", f"the body is over {limit // 1024} KiB once decompressed")
    if not d.eof:
        raise HttpError(400, "invalid_json", "the gzip body is truncated")
    return out


def decode(decoder: Callable[[bytes, bool], Any], body: bytes, spanish: bool) -> Any:
    """``decoder(body, spanish)`` with its failures as HttpErrors (422 naming the field, 400 for bad JSON)."""
    try:
        return decoder(body, spanish)
    except InvalidField as exc:
        raise HttpError(422, "invalid_field", exc.message, field=exc.field) from None
    except msgspec.DecodeError as exc:
        raise HttpError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec decodes `system` and `last_error` (free-form JSON) by recursion
        raise HttpError(400, "invalid_json", "the body is nested too deeply") from None
