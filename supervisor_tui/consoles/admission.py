"""Console credentials: who may send heartbeats, register a new console, or re-register a known one.

    admission = Admission(auth_mode="token", enrollment_token="")    # consoles.auth, consoles.enrollment_token
    admission.check_heartbeat(console_id, entry, bearer_token)       # ConsoleNotFound, ...Unauthorized, ...Forbidden
    token = admission.registration_token(console_id, entry, bearer_token, enrollment_token)

Only a token's SHA-256 is kept (``hash_console_token``). In token mode a heartbeat carries its console's token;
re-registering a known console needs its token (one console cannot take another's id), and with
``auth_mode == "none"`` a re-registration without it (or with another) gets a new token. A new console needs
the enrollment token when one is set (the X-Enrollment-Token header, or else the bearer token).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from supervisor_tui.consoles.errors import ConsoleForbidden, ConsoleNotFound, ConsoleUnauthorized

if TYPE_CHECKING:
    from supervisor_tui.consoles.batch import ConsoleEntry


def hash_console_token(token: str) -> str:
    """What is stored for a console's token (the same SHA-256 hex the server uses for every token)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _is_token_of(entry: ConsoleEntry, token: str) -> bool:
    return entry.token_hash is not None and hmac.compare_digest(hash_console_token(token), entry.token_hash)


class Admission:
    """The credential rules of ``consoles.auth`` and ``consoles.enrollment_token`` (see the module docstring)."""

    __slots__ = ("auth_mode", "enrollment_token")

    def __init__(self, auth_mode: str, enrollment_token: str) -> None:
        self.auth_mode = auth_mode
        self.enrollment_token = enrollment_token

    def check_heartbeat(self, console_id: str, entry: ConsoleEntry | None, token: str | None) -> None:
        """Raise unless the console (``entry``) is registered and (in token mode) ``token`` is its token."""
        if entry is None:
            raise ConsoleNotFound(f"console {console_id!r} is not registered: register it first, then send heartbeats")
        if self.auth_mode == "none":
            return
        if token is None:
            raise ConsoleUnauthorized(
                f"heartbeats for console {console_id!r} must carry its token (Authorization: Bearer <token> "
                "from the registration answer)"
            )
        if not _is_token_of(entry, token):
            raise ConsoleForbidden(f"that token is not the token of console {console_id!r}")

    def registration_token(self, entry: ConsoleEntry | None, presented: str | None, enrollment: str | None) -> str:
        """The token the console will use from now on, or raise when it may not (re-)register.

        ``entry`` is the console when it is already known, ``presented`` the bearer token, ``enrollment`` the
        enrollment token header."""
        if entry is not None:
            if presented is not None and _is_token_of(entry, presented):
                return presented
            if self.auth_mode == "none":
                return secrets.token_urlsafe(32)
            if presented is None:
                raise ConsoleUnauthorized(
                    f"console {entry.id!r} is already registered: "
                    "re-registering needs its token (Authorization: Bearer)"
                )
            raise ConsoleForbidden(f"console {entry.id!r} is already registered with a different token")
        if self.enrollment_token:
            offered = enrollment if enrollment is not None else presented
            if offered is None:
                raise ConsoleUnauthorized(
                    "registering a new console needs the enrollment token "
                    "(X-Enrollment-Token header or Authorization: Bearer)"
                )
            if not hmac.compare_digest(offered.encode(), self.enrollment_token.encode()):
                raise ConsoleForbidden("that is not the enrollment token")
        return secrets.token_urlsafe(32)
