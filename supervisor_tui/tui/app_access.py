"""``sup_app``: the running app typed as SupervisorApp, for the screens and providers of this TUI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from textual.app import App

    from supervisor_tui.tui.app import SupervisorApp


class _HasApp(Protocol):
    @property
    def app(self) -> App[Any]: ...


class SupervisorAppAccess:
    """Mixin for Textual nodes and command providers that only ever run inside a SupervisorApp."""

    @property
    def sup_app(self: _HasApp) -> SupervisorApp:
        from supervisor_tui.tui.app import SupervisorApp  # app.py imports the screens: import it late

        app = self.app
        assert isinstance(app, SupervisorApp)
        return app
