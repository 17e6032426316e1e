"""What can go wrong for a console or a reader of consoles; the HTTP layer maps each to a status and code."""

from __future__ import annotations


class ConsoleError(Exception):
    """Base: ``code`` is stable and machine-readable, the message says what to do."""

    code = "console_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConsoleNotFound(ConsoleError):
    code = "console_not_found"


class ConsoleUnauthorized(ConsoleError):
    """No token was presented where one is required."""

    code = "unauthorized"


class ConsoleForbidden(ConsoleError):
    """A token was presented but it is not the right one."""

    code = "forbidden"


class ConsoleUnavailable(ConsoleError):
    """The change could not be committed (database error, shutting down): nothing was written; retry later."""

    code = "unavailable"
