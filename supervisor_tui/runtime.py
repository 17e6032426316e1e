"""A running supervisor and its HTTP server in one event loop: what headless mode and the embedded TUI share.

Start order: the supervisor opens (data-dir lock, database, manifests), then the API socket is bound (a port in
use ends startup with one line and exit 2, before any plugin runs), then the cleanup of what a previous (killed)
run left behind begins in the background while the console service, in-process plugins and the plugins folder
watcher start; then, in the background, the plugins start once the cleanup is over, while the gateway and the
server start: the API answers (``/ready`` 503) during the cleanup. The admin app (FastAPI) is built at its first
request (server.admin_lazy), or its modules are imported before the plugins start when they could use up the file
descriptors.

Stop order (three exit stacks, see ``Runtime.start``): first what acts on plugins and other nodes (the plugin
starts, the folder watcher, in-process plugins' on_shutdown hooks, the fleet, which still tells the others its
plugins go), then the HTTP surface, then the console writer is drained before the supervisor stops the
plugins and closes the database, so nothing acknowledged is lost; the in-process plugin host closes last so its
plugins see the shutdown. A failed start unwinds what it had started the same way.

Ready (``/ready`` 200) means serving: the cleanup is over, every plugin start_all starts was launched (it is
RUNNING, or failed once and is being retried or gave up, or waits for a dependency that did) and the database
is open. One plugin in a crash loop does not hold readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

from supervisor_tui.config import Settings, local_url
from supervisor_tui.consoles.console_store import ConsoleStore
from supervisor_tui.consoles.open_store import open_console_store
from supervisor_tui.consoles.service import ConsoleService
from supervisor_tui.core.inprocess_host import InProcessHost
from supervisor_tui.core.status import RouteExportStatus
from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.plugins.process import become_subreaper
from supervisor_tui.plugins.watcher import PluginWatcher
from supervisor_tui.server.admin_lazy import LazyAdmin, import_modules
from supervisor_tui.server.auth import load_or_create_token
from supervisor_tui.server.limits import is_loopback_name
from supervisor_tui.server.listen import BindError, bind_socket

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from supervisor_tui.fleet.node import FleetNode
    from supervisor_tui.server.caddy_export import CaddyExport
    from supervisor_tui.server.gateway import Gateway
    from supervisor_tui.server.routes_sync import RouteSync
    from supervisor_tui.server.serve import HttpServer

# What the HTTP server needs before it serves: imported in a worker thread while the orphans of a previous run are
# looked for (plugins start meanwhile).
HTTP_SURFACE_MODULES = (
    "supervisor_tui.server.serve",  # uvicorn
    "supervisor_tui.server.app",
    "supervisor_tui.server.consoles_api",
    "supervisor_tui.server.gateway",
    "supervisor_tui.server.routes_sync",
)
# The admin app's heavy imports (FastAPI, pydantic, opentelemetry-api, prometheus-client: about 20 MiB): loaded at
# the first admin request other than /health and /ready (server.admin_lazy), or before the plugins start when so
# many could use up the file descriptors the import needs that the admin API could not load any more.
ADMIN_MODULES = (
    "supervisor_tui.server.admin",
    "supervisor_tui.server.inprocess_api",
    "supervisor_tui.server.metrics",
    "fastapi_offline",  # /docs' files: the admin app finds them at its build
)


# What one running plugin may hold open in this process (pipes, pidfd, health and gateway sockets), and what the
# supervisor keeps for itself beyond that.
FDS_PER_PLUGIN = 8
FDS_RESERVED = 256


def _descriptors_to_spare(plugins: int) -> bool:
    """Whether ``plugins`` running plugins leave enough file descriptors for the imports still to come; then they
    start while the HTTP surface imports and the admin app loads when first asked, else both go first."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft == resource.RLIM_INFINITY or plugins * FDS_PER_PLUGIN + FDS_RESERVED <= soft


class StartupError(Exception):
    """Startup cannot go on; the message is the one line the operator sees."""


@dataclass
class Tokens:
    admin: str
    plugin: str


class Runtime:
    """Owns the Supervisor, the console service and the HTTP surface for one process.

    ``start()`` opens everything; with ``start_plugins`` it also starts the plugins (in the background), else the
    caller does it with ``start_plugins()``: the one path by which plugins start at startup. ``stop()`` stops the
    plugins and closes everything, in the order the module docstring gives.
    """

    def __init__(self, settings: Settings, mode: str, echo: TextIO | None = None, echo_output: bool = False) -> None:
        self.settings = settings
        self.mode = mode
        self.sup = Supervisor(settings, echo=echo, echo_output=echo_output)
        self.server: HttpServer | None = None  # from _start_http on
        self.gateway: Gateway | None = None
        self.admin: LazyAdmin | None = None  # the admin app, built at its first request
        self.route_sync: RouteSync | None = None
        self.route_export: CaddyExport | None = None
        self.consoles: ConsoleService | None = None
        self.console_store: ConsoleStore | None = None
        self.inprocess_host: InProcessHost | None = None
        self.watcher: PluginWatcher | None = None
        self.fleet: FleetNode | None = None
        self.tokens: Tokens | None = None
        self._created_tokens: list[tuple[str, Path]] = []  # token files this start created: (name, path)
        self.url = ""
        self.ready = False
        self.closing = False
        self.starting: asyncio.Task[None] | None = None  # the orphan cleanup, then start_plugins when asked
        self._cleaning: asyncio.Future[None] | None = None  # the orphan cleanup, from the API socket's bind on
        self._stack: contextlib.AsyncExitStack | None = None  # what start() opened, closed by stop()

    async def start(self, start_plugins: bool = False) -> None:
        """Open the supervisor and the HTTP surface; raises StartupError (bind failure) with nothing left open.

        ``start_plugins``: also start the plugins (in the background, after the orphan cleanup) as soon as the
        API socket is bound and in-process plugins are loaded, while the HTTP app is still being built.

        Each part is entered on one of three exit stacks, stopped in this order, each in the reverse order of its
        starts: ``work`` (what acts on plugins and other nodes: the plugin starts, the folder watcher, in-process
        plugins' hooks, the fleet), ``http`` (the server, the gateway and what follows its table), ``core`` (the
        console service, the supervisor, the in-process plugin host). A step that fails unwinds what the steps before it
        opened, the same way."""
        # What plugins double-fork away becomes this process's child, not init's (see plugins.process).
        become_subreaper()
        stack = contextlib.AsyncExitStack()
        try:
            core = await stack.enter_async_context(contextlib.AsyncExitStack())
            http = await stack.enter_async_context(contextlib.AsyncExitStack())
            work = await stack.enter_async_context(contextlib.AsyncExitStack())
            core.push_async_callback(self._close_inprocess_host)  # last, so its plugins see the whole shutdown
            await self.sup.open(clean_orphans=False)
            core.push_async_callback(self.sup.close)
            sock = self._bind()
            http.callback(self._close_unserved, sock)
            # The cleanup of what a previous run left behind (a scan of the machine's processes, in a worker
            # thread) runs while the rest starts; start_plugins waits for it (it runs once), and closing the
            # supervisor cancels it.
            self._cleaning = asyncio.ensure_future(self.sup.clean_orphans())
            # Plugins may start before the server serves (see start_plugins): they get the bound port already,
            # and their first requests wait in the socket's backlog.
            self.sup.set_api_url(local_url(self.settings.server.host, sock.getsockname()[1]))
            await self._start_core(core, work, sock.getsockname()[1])
            modules: tuple[str, ...] = HTTP_SURFACE_MODULES
            if not _descriptors_to_spare(len(self.sup.registry)):
                modules += ADMIN_MODULES  # and the plugins wait for it (start_plugins)
            imported = asyncio.ensure_future(asyncio.to_thread(import_modules, modules))
            starting = self.start_plugins(imported) if start_plugins else self.sup.clean_orphans()
            self.starting = asyncio.create_task(starting, name="start-plugins")
            work.push_async_callback(self._cancel_starting)
            await imported
            await self._start_http(http, sock)
        except BaseException:
            self.ready, self.closing = False, True
            await stack.aclose()
            raise
        self._stack = stack

    async def start_plugins(self, imported: asyncio.Future[None] | None = None) -> None:
        """After the orphan cleanup, start every plugin that should run (``sup.start_all``); ready from then on,
        whatever the outcome. ``imported``: the HTTP surface's import, which goes first when plugins could use up
        the file descriptors it needs."""
        try:
            await self.sup.clean_orphans()
            if imported is not None and not _descriptors_to_spare(len(self.sup.registry)):
                await asyncio.wait([imported])  # its failure is start()'s to report
                if imported.cancelled() or imported.exception() is not None:
                    return
            await self.sup.start_all()
        except Exception as exc:  # start_all reports each plugin's failure; this is anything else
            self.sup.logs.error(f"starting plugins failed: {exc!r}", event="internal_error")
        finally:
            self.ready = True

    async def _cancel_starting(self) -> None:
        if self.starting is not None:
            self.starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.starting

    def _close_unserved(self, sock: socket.socket) -> None:
        """The API socket, when the server never took it over (the server closes it otherwise)."""
        if self.server is None or self.server.bound is None:
            sock.close()

    async def _close_inprocess_host(self) -> None:
        if self.inprocess_host is not None:
            await self.inprocess_host.close()

    def _bind(self) -> socket.socket:
        """The API socket, bound before any plugin runs (a port in use is StartupError, not a half start)."""
        host, port = self.settings.server.host, self.settings.server.port
        try:
            return bind_socket(host, port)
        except BindError as exc:
            # A port in use or privileged is the port's fault; an unknown or foreign address is the host's.
            port_problem = exc.errno in (errno.EADDRINUSE, errno.EACCES)
            hint = "choose another with --port or server.port" if port_problem else "check --host or server.host"
            raise StartupError(f"{exc.strerror} ({hint})") from None

    async def _start_core(self, core: contextlib.AsyncExitStack, work: contextlib.AsyncExitStack, port: int) -> None:
        """Tokens, the console service, the fleet's saved registrations, in-process plugins and the plugins folder
        watcher: all but HTTP (``port``: the bound API port). A stop callback is pushed before each start: it
        also undoes a start that failed half way."""
        sup, settings = self.sup, self.settings
        self.tokens = self._load_tokens()
        sup.logs.secrets.extend([self.tokens.admin, self.tokens.plugin])
        # The socket is bound by now, so this is the run that works: it says where the new tokens are.
        for name, path in self._created_tokens:
            sup.logs.info(f"{name} token created in {path} (mode 0600)", event="token_created")
        console_store = self.console_store = await open_console_store(settings, sup.store)
        core.push_async_callback(console_store.close)
        shared = " (a store several supervisors can share)" if console_store.shared else ""
        sup.logs.info(
            f"consoles kept in {console_store.where}{shared}", event="console_store", store=console_store.where
        )
        consoles = self.consoles = ConsoleService(console_store, sup.bus, settings, sup.logs)
        core.push_async_callback(consoles.stop)  # drained before the database closes: nothing acknowledged is lost
        await consoles.start()
        sup.attach_consoles(self.consoles)
        if settings.redis.url:
            # Only a supervisor in a fleet loads the Redis client (and hiredis): several MiB of RSS otherwise.
            from supervisor_tui.fleet.node import FleetNode

            advertise = settings.fleet.advertise_url or local_url(settings.server.host, port)
            fleet = self.fleet = FleetNode(sup, settings, advertise, console_counts=consoles.counts_by_state)
            # Stopped before the HTTP server: the fleet hears this node's plugins go while it can still say so.
            work.push_async_callback(fleet.stop)
            await fleet.restore()
        # In-process plugins load now: after the supervisor opened, before the other plugins start.
        host = self.inprocess_host = InProcessHost(sup)  # closed by start()'s first callback
        work.push_async_callback(host.begin_shutdown)
        await host.load()
        if settings.plugins.watch:
            watcher = self.watcher = PluginWatcher(
                settings.plugins_dir, lambda: sup.reload(keep_on_error=True), sup.logs
            )
            work.push_async_callback(watcher.stop)
            await watcher.start()

    async def _start_http(self, http: contextlib.AsyncExitStack, sock: socket.socket) -> None:
        from supervisor_tui.server.app import RootApp
        from supervisor_tui.server.consoles_api import ConsolesAPI
        from supervisor_tui.server.errors import InternalErrorShield
        from supervisor_tui.server.gateway import Gateway, RouteTable
        from supervisor_tui.server.limits import ConnectionLimits
        from supervisor_tui.server.routes_sync import RouteSync
        from supervisor_tui.server.serve import HttpServer

        sup, settings = self.sup, self.settings
        assert self.tokens is not None and self.consoles is not None
        gateway = self.gateway = Gateway(RouteTable(), on_result=sup.report_upstream)
        http.push_async_callback(gateway.close)
        route_sync = self.route_sync = RouteSync(
            sup,
            gateway.table,
            default_timeout=settings.gateway.timeout,
            default_max_body=settings.gateway.max_body,
        )
        http.push_async_callback(route_sync.stop)
        await route_sync.start()
        admin = self.admin = LazyAdmin(self._build_admin, ADMIN_MODULES, self._readiness)
        consoles_api = ConsolesAPI(self.consoles, settings, self.tokens.admin)
        root = InternalErrorShield(RootApp(admin, gateway, consoles_api, max_body=settings.server.max_body))
        # Heartbeats skip ASGI (the same checks and answers, less loop time per request: see server.fast_http).
        limits = ConnectionLimits.from_settings(settings, lambda line: sup.logs.warning(line, event="connection_limit"))
        server = self.server = HttpServer()
        http.push_async_callback(server.stop)
        _, port = await server.start(root, sock=sock, fast=consoles_api, limits=limits)
        self.url = local_url(settings.server.host, port)
        sup.set_api_url(self.url)  # plugins get it as SUPERVISOR_URL
        sup.logs.info(f"API listening on {self.url}", event="api_listening", url=self.url)
        if settings.routes.export == "caddy":
            await self._start_route_export(http)
        if self.fleet is not None:
            self.fleet.start()  # routes are served from here on: other nodes may be told about them
        if settings.consoles.auth == "none" and not is_loopback_name(settings.server.host.lower()):
            sup.logs.warning(
                f"consoles.auth = none while listening on {settings.server.host}: anyone who can reach this port "
                "can report heartbeats for any console",
                event="insecure_consoles_auth",
            )

    def _build_admin(self) -> ASGIApp:
        """The admin app (FastAPI) with the in-process plugins' routes and the action origin: LazyAdmin calls it
        at the first request that needs it, once ADMIN_MODULES are imported."""
        from supervisor_tui.server.admin import ApiContext, create_admin_app
        from supervisor_tui.server.inprocess_api import ActionOriginMiddleware, install_inprocess_api
        from supervisor_tui.server.metrics import MetricsEndpoint

        sup, gateway = self.sup, self.gateway
        assert self.tokens is not None and self.consoles is not None and gateway is not None
        metrics = MetricsEndpoint(sup, gateway.stats, consoles=self.consoles, fleet=self.fleet)
        ctx = ApiContext(
            sup=sup,
            settings=self.settings,
            consoles=self.consoles,
            admin_token=self.tokens.admin,
            plugin_token=self.tokens.plugin,
            mode=self.mode,
            api_url=self.url,
            request_counts=lambda: gateway.stats().requests_by_plugin(),
            ready=self._readiness,
            metrics=metrics.render,
            closing=lambda: self.closing,
            routes=lambda: [r for r in (gateway.table.get(k) for k in gateway.table.keys()) if r is not None],
            route_export=self.route_export_status,
            fleet=self.fleet,
        )
        admin = create_admin_app(ctx)
        install_inprocess_api(
            admin,
            self.tokens.admin,
            lambda: self.inprocess_host,
            lambda line: sup.logs.warning(line, event="deprecated_name"),
        )
        admin.add_middleware(ActionOriginMiddleware)
        return admin

    async def _start_route_export(self, http: contextlib.AsyncExitStack) -> None:
        """Caddy in front (routes.export = caddy): its server follows the gateway's table from now on."""
        from supervisor_tui.server.caddy_export import CaddyExport

        assert self.gateway is not None and self.route_sync is not None
        admin_password = urlsplit(self.settings.routes.caddy_admin).password
        if admin_password:  # whatever a transport error quotes of the URL, the password is never logged
            self.sup.logs.secrets.append(admin_password)
        export = self.route_export = CaddyExport(
            self.gateway.table,
            admin_url=self.settings.routes.caddy_admin,
            server=self.settings.routes.caddy_server,
            listen=self.settings.routes.caddy_listen,
            self_url=lambda: self.url,
            logs=self.sup.logs,
        )
        self.route_sync.on_change.append(export.changed)
        http.push_async_callback(export.stop)
        await export.start()

    def route_export_status(self) -> RouteExportStatus:
        """``/api/v1/status``'s ``route_export``: target "none" unless routes are exported."""
        if self.route_export is None:
            return RouteExportStatus()
        return self.route_export.status()

    def _load_tokens(self) -> Tokens:
        """Tokens from settings, else from data/<name>.token (created 0600 on first start)."""
        found = {}
        for name, token in (("admin", self.settings.auth.admin_token), ("plugin", self.settings.auth.plugin_token)):
            if not token:
                path = self.settings.data_dir / f"{name}.token"
                token, created = load_or_create_token(path)
                if created:
                    self._created_tokens.append((name, path))
            found[name] = token
        return Tokens(admin=found["admin"], plugin=found["plugin"])

    def _readiness(self) -> tuple[bool, str]:
        if self.closing:
            return False, "stopping"
        if not self.sup.orphans_cleaned:
            return False, "starting: stopping processes left over by a previous run"
        if not (self.ready or self.sup.launched()):
            return False, "starting: plugins are being started"
        if not self.sup.store.is_open:
            return False, "database is closed"
        return True, ""

    async def stop(self) -> None:
        """Stop what start() started: the plugin starts, watcher, in-process plugins' hooks and fleet; then the HTTP
        surface; then the console service (drained), the supervisor (plugins stopped, database closed) and the
        in-process plugin host."""
        self.ready = False
        self.closing = True  # log followers and event streams end now rather than hold the shutdown
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
