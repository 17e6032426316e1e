"""``KeyOrderApp``: keys typed right after one that moves the focus reach the widget that key focused, in order.

Why: Textual routes a key to the widget focused when the app's queue gets to it (``App.on_event``), but the key's
binding runs only once the key has gone through that widget and bubbled back up to the app, and
``Widget.focus()`` moves the focus later still (``call_later``, through the app's queue). So keys that arrive in
one read ("/abc" over a slow SSH link, every byte at once) are all routed before the first one's binding ran:
"abc" go to the plugins table the "/" is about to leave, where "s" starts a plugin. The same holds for every
binding that opens a screen or moves the focus (palette, dialogs, detail screens, pane switches).

So a key that arrives while an earlier one is in flight waits here, and keys go one at a time: a probe posted
behind the key follows it up the DOM, node by node (a message bubbles to ``_parent`` after the node's handlers
ran), to the app, where it waits one more round for what the binding queued (the focus change). A key that put up
another screen (or took one down) also waits for that screen to have taken its focus (its mount and resume).
Then the next key is routed, to whatever holds the focus by then. A key on its own is routed at once, as before.

A fenced hack: it relies on Textual's key routing in ``App.on_event`` (``is_forwarded``), on bubbling through
``_parent`` and on ``call_later`` callbacks running in queue order; scripts/test_pins.sh runs its tests
(tests/test_tui_key_order.py) at both ends of pyproject.toml's textual pin. A probe that never comes back (a node
closed with it still queued) holds the keys behind it for ``HOLD_SECONDS`` at most. At most ``HELD_KEYS`` wait;
more ring the bell and are dropped (only a paste without bracketed paste types that fast).
"""

from __future__ import annotations

import time
from collections import deque
from typing import TypeVar

from textual import events
from textual.app import App
from textual.message_pump import MessagePump
from textual.screen import Screen
from textual.timer import Timer

HELD_KEYS = 4096
HOLD_SECONDS = 1.0

ReturnType = TypeVar("ReturnType")


class KeyOrderApp(App[ReturnType]):
    """An App that routes a key only once the key before it has been handled, and what it moved has moved."""

    def __init__(self) -> None:
        super().__init__()
        self._held_keys: deque[events.Key] = deque()
        self._in_flight = 0  # the number of the key being handled; 0 when none is
        self._keys_routed = 0
        self._flight_started = 0.0
        self._hold_timer: Timer | None = None

    async def on_event(self, event: events.Event) -> None:
        if not isinstance(event, events.Key) or event.is_forwarded:
            await super().on_event(event)  # a key bubbling back up is the one in flight, on its way
        elif self._in_flight:
            if len(self._held_keys) >= HELD_KEYS:
                self.bell()
                return
            self._held_keys.append(event)
            if self._hold_timer is None:
                self._hold_timer = self.set_timer(HOLD_SECONDS, self._hold_expired, name="held keys")
        else:
            await self._route(event)

    async def _route(self, key: events.Key) -> None:
        self._keys_routed += 1
        flight = self._in_flight = self._keys_routed
        self._flight_started = time.monotonic()
        screen = self.screen
        target: MessagePump = self.focused or screen
        await super().on_event(key)  # priority bindings run here; otherwise the key goes to ``target``
        if key.is_forwarded:
            self._follow(target, flight, screen)
        else:
            self._follow(self, flight, screen)

    def _follow(self, node: MessagePump | None, flight: int, screen: Screen[object]) -> None:
        """Queue the probe behind the key at ``node`` (the app when the chain ends or breaks)."""
        if node is None or not node.call_later(self._passed, node, flight, screen):
            self.call_later(self._passed, self, flight, screen)

    def _passed(self, node: MessagePump, flight: int, screen: Screen[object]) -> None:
        """``node`` has handled the key (and handed it to its parent if it bubbles)."""
        if node is self:
            self.call_later(self._settled, flight, screen)  # after what the key's binding queued here
        else:
            self._follow(node._parent, flight, screen)

    async def _settled(self, flight: int, screen: Screen[object]) -> None:
        if flight != self._in_flight:
            return  # cut by the hold timer meanwhile
        current = self.screen
        if current is not screen and current.call_later(self._follow, self, flight, current):
            return  # another screen is up: once it has mounted and resumed, it has taken its focus
        self._in_flight = 0
        if self._held_keys:
            await self._route(self._held_keys.popleft())

    async def _hold_expired(self) -> None:
        self._hold_timer = None
        if self._held_keys and (not self._in_flight or time.monotonic() - self._flight_started >= HOLD_SECONDS):
            self._in_flight = 0  # the probe of the key in flight is lost: let the keys behind it go
            await self._route(self._held_keys.popleft())
        if self._held_keys:
            self._hold_timer = self.set_timer(HOLD_SECONDS, self._hold_expired, name="held keys")
