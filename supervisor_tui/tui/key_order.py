"""``KeyOrderApp``: keys typed right after one that moves the focus reach the widget that key focused, in order.

Why: Textual routes a key to the widget focused when the app's queue gets to it (``App.on_event``), but the key's
binding runs only once the key has gone through that widget and bubbled back up to the app, and
``Widget.focus()`` moves the focus later still (``call_later``, through the app's queue). So keys that arrive in
one read ("/abc" over a slow SSH link, every byte at once) are all routed before the first one's binding ran:
"abc" go to the plugins table the "/" is about to leave, where "s" starts a plugin. The same holds for every
binding that opens a screen or moves the focus (palette, dialogs, detail screens, pane switches).

So keys go one at a time. A key is done once it has bubbled back up to the app and the app has run what its
binding queued (one more round of the app's queue: the focus change); a key some widget kept (a field typing it)
never comes back, so when another key arrives behind it, a probe follows it up the DOM, node by node (a message
bubbles to ``_parent`` after the node's handlers ran), to the app. A key that put up another screen (or took one
down) also waits for that screen to have taken its focus (its mount and resume). Then the next key is routed, to
whatever holds the focus by then. A key on its own is routed at once, as before.

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
        self._flight_key: events.Key | None = None
        self._flight_target: MessagePump | None = None  # where it was routed
        self._flight_screen: Screen[object] | None = None  # the screen on top when it was (then: once it settled)
        self._flight_started = 0.0  # when it was routed, or its probe sent
        self._probing = False  # a probe follows it
        self._awaiting_screen = False  # it put up another screen; done once that one has taken its focus
        self._hold_timer: Timer | None = None

    async def on_event(self, event: events.Event) -> None:
        if not isinstance(event, events.Key):
            await super().on_event(event)
        elif event.is_forwarded:
            await super().on_event(event)  # a key bubbled back up: its binding, if it has one, runs here
            if event is self._flight_key:
                self.call_later(self._settled, self._in_flight)  # after what the binding queued
        elif self._in_flight:
            if len(self._held_keys) >= HELD_KEYS:
                self.bell()
                return
            self._held_keys.append(event)
            if not self._probing:  # it may never come back: follow it
                self._probing = True
                self._flight_started = time.monotonic()
                self._follow(self._flight_target, self._in_flight)
            if self._hold_timer is None:
                self._hold_timer = self.set_timer(HOLD_SECONDS, self._hold_expired, name="held keys")
        else:
            await self._route(event)

    async def _route(self, key: events.Key) -> None:
        self._keys_routed += 1
        flight = self._in_flight = self._keys_routed
        self._flight_key, self._flight_screen = key, self.screen
        self._flight_target = self.focused or self.screen
        self._flight_started = time.monotonic()
        self._probing = self._awaiting_screen = False
        await super().on_event(key)  # priority bindings run here; otherwise the key goes to ``_flight_target``
        if not key.is_forwarded:
            self.call_later(self._settled, flight)  # after what the binding queued

    def _follow(self, node: MessagePump | None, flight: int) -> None:
        """Queue the probe behind the key at ``node`` (the app when the chain ends or breaks)."""
        if node is None or not node.call_later(self._passed, node, flight):
            self.call_later(self._passed, self, flight)

    def _passed(self, node: MessagePump, flight: int) -> None:
        """``node`` has handled the key (and handed it to its parent if it bubbles)."""
        if flight != self._in_flight:
            return
        if node is self:
            self.call_later(self._settled, flight)  # after what the key's binding queued here
        else:
            self._follow(node._parent, flight)

    async def _settled(self, flight: int, screen_ready: bool = False) -> None:
        if flight != self._in_flight or (self._awaiting_screen and not screen_ready):
            return  # done already, or cut by the hold timer, or waiting for a screen
        current = self.screen
        if current is not self._flight_screen:
            self._flight_screen = current
            self._awaiting_screen = current.call_later(self._screen_resumed, flight)
            if self._awaiting_screen:
                return  # once it has mounted and resumed, it has taken its focus
        self._in_flight = 0
        self._flight_key = self._flight_target = None
        self._awaiting_screen = False
        if self._held_keys:
            await self._route(self._held_keys.popleft())

    def _screen_resumed(self, flight: int) -> None:
        self.call_later(self._settled, flight, True)  # after the focus change it queued, if any

    async def _hold_expired(self) -> None:
        self._hold_timer = None
        if self._held_keys and (not self._in_flight or time.monotonic() - self._flight_started >= HOLD_SECONDS):
            self._in_flight = 0  # the key in flight never settled: let the keys behind it go
            await self._route(self._held_keys.popleft())
        if self._held_keys:
            self._hold_timer = self.set_timer(HOLD_SECONDS, self._hold_expired, name="held keys")
