"""Who acts: the origin of an operator action (tui, api, ctl, reload ...) travels in a context variable.

The admin API, the TUI's in-process client and the plugins watcher set it around their calls; the Supervisor's
action methods publish an ``OperatorAction`` event naming it, so the audit log can say who did what from where.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from supervisor_tui.core.events import OperatorAction


@dataclass(frozen=True, slots=True)
class ActionOrigin:
    """Where an action comes from (``origin``) and who asked (``actor``: a user, an address, a client)."""

    origin: str = "supervisor"
    actor: str = ""


_NOBODY = ActionOrigin()
action_origin: contextvars.ContextVar[ActionOrigin] = contextvars.ContextVar("action_origin", default=_NOBODY)


@contextlib.contextmanager
def acting_as(origin: str, actor: str = "") -> Iterator[ActionOrigin]:
    """Run the block's supervisor actions on behalf of ``origin``/``actor``."""
    value = ActionOrigin(origin, actor)
    token = action_origin.set(value)
    try:
        yield value
    finally:
        action_origin.reset(token)


T = TypeVar("T")


def operator_action(action: str, key_of: Callable[..., str] | None = None) -> Callable[[Any], Any]:
    """Decorate a Supervisor action method: publish an OperatorAction (ok or not) on ``self.bus`` after it ran."""

    def decorate(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(method)
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
            key = key_of(*args, **kwargs) if key_of is not None else str(args[0] if args else kwargs.get("key", ""))
            who = action_origin.get()
            try:
                result = await method(self, *args, **kwargs)
            except Exception as exc:
                message = getattr(exc, "message", None) or str(exc)
                self.bus.publish(OperatorAction(action, key, who.origin, who.actor, False, message))
                raise
            self.bus.publish(OperatorAction(action, key, who.origin, who.actor, True))
            return result

        return wrapper

    return decorate


def install_key(manifest: Any, *args: Any, **kwargs: Any) -> str:
    """The key an install names (``key`` or its alias ``id``)."""
    if isinstance(manifest, dict):
        return str(manifest.get("key", manifest.get("id", "")))
    return ""
