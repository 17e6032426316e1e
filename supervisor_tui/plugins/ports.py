"""Port allocation: a plugin's fixed port, or the first port of the range that can actually be bound."""

from __future__ import annotations

import socket


class PortUnavailable(Exception):
    """No port can be given to a plugin (its fixed port is taken, or the range is exhausted)."""


def can_bind(host: str, port: int) -> bool:
    """True when a TCP listener could bind ``host:port`` right now (with SO_REUSEADDR, as servers do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out ports to plugins; a port held by one plugin is never given to another."""

    def __init__(self, start: int, end: int, host: str = "127.0.0.1", reserved: tuple[int, ...] = ()) -> None:
        self.start, self.end, self.host = start, end, host
        self._held: dict[str, int] = {}
        self._reserved = set(reserved)  # e.g. the API's own port
        self._fixed: dict[str, int] = {}  # ports that manifests ask for: kept out of the automatic range

    def declare_fixed(self, key: str, port: int | None) -> None:
        """Remember that ``key``'s manifest asks for ``port`` so no other plugin is assigned it."""
        if port is None:
            self._fixed.pop(key, None)
        else:
            self._fixed[key] = port

    def held(self, key: str) -> int | None:
        return self._held.get(key)

    def acquire(self, key: str, fixed: int | None = None, prefer: int | None = None) -> int:
        """A port for ``key``: ``fixed`` when given (it must be bindable), else ``prefer`` if still free, else
        the first bindable port of the range. Raises PortUnavailable."""
        self.release(key)
        taken = set(self._held.values()) | self._reserved
        if fixed is not None:
            owner = next((k for k, p in self._held.items() if p == fixed), None)
            if owner is not None:
                raise PortUnavailable(f"port {fixed} is already used by plugin {owner!r}")
            if fixed in self._reserved:
                raise PortUnavailable(f"port {fixed} is the supervisor's own API port")
            if not can_bind(self.host, fixed):
                raise PortUnavailable(f"port {fixed} on {self.host} is already in use by another program")
            self._held[key] = fixed
            return fixed
        others_fixed = {p for k, p in self._fixed.items() if k != key}
        if prefer is not None and self.start <= prefer <= self.end and prefer not in taken | others_fixed:
            if can_bind(self.host, prefer):
                self._held[key] = prefer
                return prefer
        # The first bindable port: plugins get the same ports run after run (a port in TIME_WAIT still binds,
        # as the check uses SO_REUSEADDR like the servers plugins run).
        for port in range(self.start, self.end + 1):
            if port in taken or port in others_fixed:
                continue
            if can_bind(self.host, port):
                self._held[key] = port
                return port
        raise PortUnavailable(f"no free port in the range {self.start}-{self.end} on {self.host}")

    def free_count(self) -> int:
        """How many ports of the range no plugin holds or asks for (whether they bind is seen when taken)."""
        taken = set(self._held.values()) | self._reserved | set(self._fixed.values())
        return sum(1 for port in range(self.start, self.end + 1) if port not in taken)

    def release(self, key: str) -> None:
        self._held.pop(key, None)
