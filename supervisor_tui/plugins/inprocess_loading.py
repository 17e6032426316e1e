"""Loading an in-process plugin's code: import (a fresh synthetic package per version of a folder plugin), the
interface check, construction, and the endpoints its ASGI app exposes. No state: ``InProcessPlugin`` keeps the
versions it imported and drops the old ones with ``forget_versions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import itertools
import re
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor_tui.plugins.manifest import Endpoint

_gen = itertools.count(1)


class LoadError(Exception):
    """A load step failed: ``phase`` (import, interface, construct, validate_configuration, initialize) and why."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase, self.message = phase, message


def describe_error(exc: BaseException) -> str:
    """An exception as one line: its type, and its message when it has one."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class ImportedVersion:
    """One imported version of a plugin's code."""

    cls: type
    package: str | None  # the synthetic package of a folder plugin (dropped from sys.modules when replaced)
    fingerprint: tuple[tuple[str, int, int], ...]


async def import_version(key: str, module: str, folder: Path | None) -> ImportedVersion:
    """Import ``module`` ("path.to.module:Class") in a thread, so a slow import cannot stall the loop; a folder
    plugin's files are imported anew inside a fresh synthetic package. Raises LoadError."""
    if ":" not in module:
        raise LoadError("import", f"module must look like 'module:Class', got {module!r}")
    module_name, class_name = module.split(":", 1)
    package = f"{package_prefix(key)}{next(_gen)}" if folder else None
    fingerprint = folder_fingerprint(folder) if folder is not None else ()
    try:
        loaded = await asyncio.to_thread(_import_module, module_name, folder, package)
    except Exception as exc:
        if package is not None:
            _forget_package(package)
        raise LoadError("import", f"cannot import {module_name!r}: {describe_error(exc)}") from None
    cls = getattr(loaded, class_name, None)
    if not isinstance(cls, type):
        raise LoadError("import", f"{module_name!r} has no class {class_name!r}")
    for required in ("initialize", "shutdown", "get_status"):
        if not callable(getattr(cls, required, None)):
            raise LoadError("interface", f"{class_name} must implement {required}() (see PluginInterface)")
    return ImportedVersion(cls=cls, package=package, fingerprint=fingerprint)


def package_prefix(key: str) -> str:
    """The start of the synthetic package names of plugin ``key``'s versions."""
    return f"_supervisor_plugin_{re.sub(r'[^a-zA-Z0-9_]', '_', key)}_"


def forget_versions(key: str, keep: set[str | None]) -> None:
    """Drop from ``sys.modules`` every imported version of plugin ``key`` but the packages in ``keep``."""
    prefix = package_prefix(key)
    for name in list(sys.modules):
        if name.startswith(prefix) and name.split(".", 1)[0] not in keep:
            sys.modules.pop(name, None)


def construct(cls: type, config: Mapping[str, Any]) -> Any:
    """``cls(config)`` when the constructor takes it (the plugin interface's constructor), else ``cls()``."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    takes = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params.values())
    return cls(dict(config)) if takes else cls()


def _import_module(module_name: str, folder: Path | None, package: str | None) -> types.ModuleType:
    """Import a folder plugin's module inside a fresh synthetic package (so every version is imported anew and
    relative imports between its files work); other modules are imported by their dotted name."""
    if folder is None or package is None:
        return importlib.import_module(module_name)
    pkg = types.ModuleType(package)
    pkg.__path__ = [str(folder)]
    pkg.__file__ = str(folder / "__init__.py")
    sys.modules[package] = pkg
    importlib.invalidate_caches()
    return importlib.import_module(f"{package}.{module_name}")


def _forget_package(package: str) -> None:
    for name in list(sys.modules):
        if name == package or name.startswith(package + "."):
            sys.modules.pop(name, None)


def folder_fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    with contextlib.suppress(OSError):
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            with contextlib.suppress(OSError):
                st = path.stat()
                out.append((str(path.relative_to(folder)), st.st_mtime_ns, st.st_size))
    return tuple(out)


def routes_of(instance: Any) -> Any:
    """The ASGI app a plugin instance serves (``get_routes()`` or a callable ``routes``), or None."""
    getter = getattr(instance, "get_routes", None)
    if callable(getter):
        with contextlib.suppress(Exception):
            return getter()
        return None
    routes = getattr(instance, "routes", None)
    return routes if callable(routes) else None


_CONVERTER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[^}]*\}")


def endpoints_of(app: Any) -> tuple[Endpoint, ...]:
    """The endpoints a Starlette app or router exposes (``Route`` objects with methods; mounts are skipped)."""
    out: list[Endpoint] = []
    seen: set[tuple[str, str]] = set()
    for route in getattr(app, "routes", None) or ():
        path, methods = getattr(route, "path", None), getattr(route, "methods", None)
        if not isinstance(path, str) or not methods:
            continue
        path = _CONVERTER.sub(r"{\1}", path) or "/"
        doc = inspect.getdoc(getattr(route, "endpoint", None)) or ""
        for method in sorted(m for m in methods if m != "HEAD"):
            if (method, path) not in seen:
                seen.add((method, path))
                out.append(Endpoint(method, path, doc.splitlines()[0] if doc else ""))
    return tuple(out)
