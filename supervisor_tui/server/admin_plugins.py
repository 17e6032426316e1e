"""The plugin routes of the admin API: list, read, act (start/stop/restart/scale), install, remove, configure,
metrics, and the external plugins' registration protocol over HTTP. Answers are the core's PluginSnapshot Structs
(plugins/model.py), encoded by msgspec as they are."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from supervisor_tui.core.supervisor import PluginActionError, PluginNotFound
from supervisor_tui.plugins.manifest import ManifestError
from supervisor_tui.plugins.model import MetricsHistory, PluginEnvelope, PluginList, PluginSnapshot
from supervisor_tui.server import schemas
from supervisor_tui.server.admin_context import (
    ApiContext,
    Guards,
    error_responses,
    struct_answer,
    struct_content,
)
from supervisor_tui.server.errors import ApiError


def plugin_router(ctx: ApiContext, guards: Guards) -> APIRouter:
    """``/api/v1/plugins...``."""
    sup = ctx.sup
    router = APIRouter(tags=["plugins"])
    envelope = struct_content(PluginEnvelope)

    def answer(key: str, snap: Any = None, status: int = 200) -> Response:
        """The plugin's envelope, with a warning when its desired state could not be saved (full disk)."""
        plugin = ctx.plugin_view(snap) if snap is not None else ctx.plugin(key)
        return struct_answer(PluginEnvelope(plugin, sup.unsaved_desired(key) or None), status)

    @router.get(
        "/api/v1/plugins",
        response_model=None,
        dependencies=guards.admin,
        responses={200: struct_content(PluginList), **error_responses(401)},
    )
    async def list_plugins() -> Response:
        """Every plugin: local processes, external (self-registered) and in-process ones."""
        return struct_answer(PluginList([ctx.plugin_view(s) for s in sup.plugins()]))

    @router.get(
        "/api/v1/plugins/{key}",
        response_model=None,
        dependencies=guards.admin,
        responses={200: struct_content(PluginSnapshot), **error_responses(401, 404)},
    )
    async def get_plugin(key: str) -> Response:
        """One plugin: state, pid, port, uptime, restarts, health, last metrics, endpoints and gateway URLs."""
        return struct_answer(ctx.plugin(key))

    async def act(key: str, action: str, wait: bool) -> Response:
        ctx.plugin(key)  # 404 first
        method = getattr(sup, action)
        try:
            if wait:
                return answer(key, await method(key, wait=True))
            await method(key, wait=False)
        except PluginNotFound:
            raise ApiError(404, "plugin_not_found", f"no plugin with key {key!r}") from None
        except PluginActionError as exc:
            raise ApiError(409, "action_failed", str(exc)) from None
        return answer(key, status=202)

    action_responses: dict[int | str, dict[str, Any]] = {
        200: envelope,
        202: struct_content(PluginEnvelope, "Accepted (wait=false)"),
        **error_responses(401, 403, 404, 409),
    }
    wait_q = Query(True, description="Wait for the resulting state (RUNNING or STOPPED); false answers 202 at once")

    @router.post(
        "/api/v1/plugins/{key}/start", response_model=None, dependencies=guards.control, responses=action_responses
    )
    async def start_plugin(key: str, wait: bool = wait_q) -> Response:
        """Start a plugin (an operator start also leaves FATAL)."""
        return await act(key, "start", wait)

    @router.post(
        "/api/v1/plugins/{key}/stop", response_model=None, dependencies=guards.control, responses=action_responses
    )
    async def stop_plugin(key: str, wait: bool = wait_q) -> Response:
        """Stop a plugin; it stays stopped across supervisor restarts until started again."""
        return await act(key, "stop", wait)

    @router.post(
        "/api/v1/plugins/{key}/restart", response_model=None, dependencies=guards.control, responses=action_responses
    )
    async def restart_plugin(key: str, wait: bool = wait_q) -> Response:
        """Stop then start a plugin."""
        return await act(key, "restart", wait)

    @router.post(
        "/api/v1/plugins/{key}/scale",
        response_model=None,
        dependencies=guards.control,
        responses={200: envelope, **error_responses(400, 401, 403, 404, 409, 422)},
    )
    async def scale_plugin(key: str, body: schemas.ScaleIn) -> Response:
        """Run `replicas` processes of a process plugin, remembered across restarts (like a stop). New replicas
        start when the plugin is meant to run; scaling down stops the highest ones. 409 when it cannot run that
        many (a fixed port, not enough free ports in the range): nothing changes then."""
        ctx.plugin(key)  # 404 first
        try:
            snap = await sup.scale(key, body.replicas)
        except PluginActionError as exc:
            raise ApiError(409, "action_failed", str(exc)) from None
        return struct_answer(PluginEnvelope(ctx.plugin_view(snap)))

    @router.post(
        "/api/v1/plugins/install",
        response_model=None,
        status_code=201,
        dependencies=guards.control,
        responses={201: envelope, **error_responses(400, 401, 403, 409, 422)},
    )
    async def install_plugin(body: schemas.InstallIn) -> Response:
        """Validate a manifest, write plugins/<key>/manifest.json, load it, and start it when autoStart."""
        manifest = dict(body.manifest)
        # The plugin manager API's body: its `basePath` was the prefix of the plugin's routes in Kong; here every
        # plugin is served under /api/plugins/<key> (see the answer's gateway_url), so it has nothing to say.
        manifest.pop("basePath", None)
        if "image" in manifest and "command" not in manifest:
            raise ApiError(
                422, "invalid_manifest", "image: container images are not run here; give the plugin's command instead"
            )
        try:
            snap = await sup.install(manifest, autostart=body.auto_start)
        except ManifestError as exc:
            raise ApiError(422, "invalid_manifest", str(exc)) from None
        except PluginActionError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        return struct_answer(PluginEnvelope(ctx.plugin_view(snap)), 201)

    @router.delete(
        "/api/v1/plugins/{key}",
        response_model=schemas.RemovedOut,
        dependencies=guards.control,
        responses=error_responses(401, 403, 404, 409),
    )
    async def delete_plugin(
        key: str, purge: bool = Query(False, description="Also delete the plugin folder")
    ) -> dict[str, Any]:
        """Stop and unload a plugin; its folder is kept unless purge=true."""
        ctx.plugin(key)
        try:
            await sup.remove(key, purge=purge)
        except PluginActionError as exc:
            raise ApiError(409, "action_failed", str(exc)) from None
        return {"removed": key, "purged": purge}

    @router.put(
        "/api/v1/plugins/{key}/config",
        response_model=None,
        dependencies=guards.control,
        responses={200: envelope, **error_responses(400, 401, 403, 404, 409, 422)},
    )
    async def put_config(key: str, body: schemas.ConfigIn) -> Response:
        """Change a plugin's environment (persisted) and restart that plugin."""
        ctx.plugin(key)
        try:
            snap = await sup.set_config(key, body.env)
        except PluginActionError as exc:
            raise ApiError(409, "action_failed", str(exc)) from None
        except ManifestError as exc:
            raise ApiError(422, "invalid_config", str(exc)) from None
        return struct_answer(PluginEnvelope(ctx.plugin_view(snap)))

    @router.get(
        "/api/v1/plugins/{key}/metrics",
        response_model=None,
        dependencies=guards.admin,
        responses={200: struct_content(MetricsHistory), **error_responses(401, 404)},
    )
    async def plugin_metrics(key: str) -> Response:
        """CPU, memory, threads, fds and process count of the plugin's process tree (2 s samples, >= 5 min)."""
        ctx.plugin(key)
        return struct_answer(MetricsHistory(list(sup.metrics(key))))

    return router


def external_router(ctx: ApiContext, guards: Guards) -> APIRouter:
    """The registration protocol over HTTP: an external plugin registers, beats and leaves (the plugin token)."""
    sup = ctx.sup
    router = APIRouter(tags=["external plugins"])
    envelope = struct_content(PluginEnvelope)

    @router.post(
        "/api/v1/plugins/register",
        response_model=None,
        status_code=201,
        dependencies=guards.plugin_auth,
        responses={201: envelope, **error_responses(400, 401, 403, 409, 422)},
    )
    async def register_external(body: schemas.RegisterIn) -> Response:
        """An external plugin announces itself; its declared endpoints join the gateway."""
        try:
            snap = await sup.register_external(body.model_dump())
        except ManifestError as exc:
            raise ApiError(422, "invalid_registration", str(exc)) from None
        except PermissionError as exc:
            raise ApiError(403, "upstream_not_allowed", str(exc)) from None
        except PluginActionError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        return struct_answer(PluginEnvelope(ctx.plugin_view(snap)), 201)

    @router.post(
        "/api/v1/plugins/{key}/heartbeat",
        response_model=None,
        dependencies=guards.plugin_auth,
        responses={200: envelope, **error_responses(401, 404, 409)},
    )
    async def external_heartbeat(key: str) -> Response:
        """An external plugin is alive (a LOST one comes back)."""
        try:
            snap = sup.heartbeat_external(key)
        except PluginNotFound:
            raise ApiError(404, "plugin_not_found", f"no external plugin {key!r}: register first") from None
        except PluginActionError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        return struct_answer(PluginEnvelope(ctx.plugin_view(snap)))

    @router.post(
        "/api/v1/plugins/{key}/unregister",
        response_model=schemas.OkOut,
        dependencies=guards.plugin_auth,
        responses=error_responses(401, 404, 409),
    )
    async def unregister_external(key: str) -> dict[str, Any]:
        """An external plugin leaves; its routes go away."""
        try:
            await sup.unregister_external(key)
        except PluginNotFound:
            raise ApiError(404, "plugin_not_found", f"no external plugin {key!r}") from None
        except PluginActionError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        return {"ok": True}

    return router
