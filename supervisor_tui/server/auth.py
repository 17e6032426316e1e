"""Bearer tokens: the admin token, the plugin (external registration) token, and their constant-time check."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from supervisor_tui.core.private import make_private, new_token, open_private, private_dir


def bearer_from_header(value: str | bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    if not value:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison; an empty expected token never matches."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """Read the token file (tightened to 0600 if it was wider), or create it 0600. Returns (token, created)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            make_private(path)
            return token, False
    except FileNotFoundError:
        pass
    private_dir(path.parent)
    token = new_token()
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token, True
