"""The one error of settings: a key, the value (secrets already masked), what is allowed, where it came from."""

from __future__ import annotations


class ConfigError(Exception):
    """A setting has a value that is not allowed (the CLI prints it as one line and exits 2)."""

    def __init__(self, key: str, value: object, allowed: str, source: str = "") -> None:
        self.key, self.value, self.allowed, self.source = key, value, allowed, source
        where = f" (from {source})" if source else ""
        super().__init__(f"invalid setting {key}={value!r}{where}: expected {allowed}")
