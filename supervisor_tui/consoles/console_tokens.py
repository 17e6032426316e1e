"""Console tokens: who may send a console's heartbeats, and which token a (re-)registration gets."""

from __future__ import annotations

import hashlib
import hmac

from supervisor_tui.consoles.console_entry import ConsoleEntry
from supervisor_tui.consoles.errors import ConsoleForbidden, ConsoleNotFound, ConsoleUnauthorized
from supervisor_tui.core.private import new_token


def hash_console_token(token: str) -> str:
    """What is stored for a console's token (the same SHA-256 hex the server uses for every token)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _is_token_of(entry: ConsoleEntry, token: str) -> bool:
    return entry.token_hash is not None and hmac.compare_digest(hash_console_token(token), entry.token_hash)


def authorize_heartbeat(entry: ConsoleEntry | None, console_id: str, token: str | None, auth_mode: str) -> None:
    """Raise unless ``console_id`` is registered (``entry``) and (in token mode) ``token`` is its token."""
    if entry is None:
        raise ConsoleNotFound(f"console {console_id!r} is not registered: register it first, then send heartbeats")
    if auth_mode == "none":
        return
    if token is None:
        raise ConsoleUnauthorized(
            f"heartbeats for console {console_id!r} must carry its token (Authorization: Bearer <token> "
            "from the registration answer)"
        )
    if not _is_token_of(entry, token):
        raise ConsoleForbidden(f"that token is not the token of console {console_id!r}")


def registration_token(
    entry: ConsoleEntry | None,
    presented: str | None,
    enrollment: str | None,
    auth_mode: str,
    enrollment_token: str | None,
) -> str:
    """The token the console will use from now on, or raise when it may not (re-)register.

    ``entry`` is the console as registered (None when new), ``presented`` the token it sent, ``enrollment`` the
    enrollment token it sent (a new console may send that as ``presented`` instead).
    """
    if entry is not None:
        if presented is not None and _is_token_of(entry, presented):
            return presented
        if auth_mode == "none":
            return new_token()
        if presented is None:
            raise ConsoleUnauthorized(
                f"console {entry.id!r} is already registered: re-registering needs its token (Authorization: Bearer)"
            )
        raise ConsoleForbidden(f"console {entry.id!r} is already registered with a different token")
    if enrollment_token:
        offered = enrollment if enrollment is not None else presented
        if offered is None:
            raise ConsoleUnauthorized(
                "registering a new console needs the enrollment token "
                "(X-Enrollment-Token header or Authorization: Bearer)"
            )
        if not hmac.compare_digest(offered.encode(), enrollment_token.encode()):
            raise ConsoleForbidden("that is not the enrollment token")
    return new_token()
