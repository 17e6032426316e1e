"""msgspec Structs on FastAPI: answers encoded by msgspec, their schemas in /openapi.json generated from the Structs.

FastAPI documents pydantic models only. With this bridge a route answers with a Struct and declares it; the
app's OpenAPI then carries the Struct's JSON Schema (``msgspec.json.schema_components``) under
``components.schemas``, so the documented shape is the encoded shape and cannot drift from it::

    schemas = StructSchemas()
    router = APIRouter()

    @router.get("/things/{id}", response_class=StructResponse, responses=schemas.responses({200: (Thing, "it")}))
    async def thing(id: str) -> StructResponse:
        return StructResponse(await load(id))

    app.include_router(router)
    schemas.install(app)  # after the app's own ``app.openapi`` is set: it wraps it

Routes served outside FastAPI (raw ASGI fast paths) are documented from the same Structs: build their path
items with ``content``/``responses``/``request_body`` and pass them to ``install(app, paths=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from fastapi import FastAPI
from fastapi.responses import JSONResponse

REF_TEMPLATE = "#/components/schemas/{name}"
JSON = "application/json"

_encode = msgspec.json.Encoder().encode


class StructResponse(JSONResponse):
    """A JSON answer encoded by msgspec: a Struct, or anything msgspec encodes (lists, dicts of Structs...).

    A JSONResponse so FastAPI documents it as JSON (its own default schema for other classes is a string)."""

    def render(self, content: Any) -> bytes:
        return _encode(content)


class SchemaConflict(Exception):
    """Two different schemas under one component name (two Structs with the same name, or a pydantic model)."""


class StructSchemas:
    """The Structs some routes declare, and their JSON Schemas for an app's OpenAPI components.

    Every method that returns a schema piece registers the type it names; ``install`` puts the components of all
    of them into the app's /openapi.json.
    """

    def __init__(self) -> None:
        self._types: list[Any] = []

    def schema(self, tp: Any) -> dict[str, Any]:
        """The JSON Schema of ``tp`` as it appears in an operation: a ``$ref`` for a Struct, inline otherwise
        (``list[Thing]`` is an array of refs)."""
        if tp not in self._types:
            self._types.append(tp)
        (schema,), _ = msgspec.json.schema_components((tp,), ref_template=REF_TEMPLATE)
        return schema

    def content(self, tp: Any) -> dict[str, Any]:
        """``{"content": {"application/json": {"schema": ...}}}`` for ``tp``."""
        return {"content": {JSON: {"schema": self.schema(tp)}}}

    def responses(self, answers: Mapping[int, tuple[Any, str]]) -> dict[int | str, dict[str, Any]]:
        """FastAPI's ``responses=`` (or an OpenAPI operation's ``responses``) from ``{status: (type, description)}``."""
        return {status: {"description": text, **self.content(tp)} for status, (tp, text) in answers.items()}

    def request_body(self, tp: Any, required: bool = True) -> dict[str, Any]:
        """An OpenAPI ``requestBody`` whose JSON schema is ``tp``'s."""
        return {"required": required, **self.content(tp)}

    def components(self) -> dict[str, Any]:
        """``components.schemas`` entries for every type registered so far."""
        _, components = msgspec.json.schema_components(self._types, ref_template=REF_TEMPLATE)
        return components

    def install(self, app: FastAPI, paths: Mapping[str, Any] | None = None) -> None:
        """Add the registered Structs' schemas (and ``paths``, path items of routes FastAPI does not serve) to
        ``app``'s OpenAPI. Wraps the ``app.openapi`` set at this point, so call it after the app sets its own."""
        previous: Callable[[], dict[str, Any]] = app.openapi
        merged: list[dict[str, Any]] = []  # the schema dicts already extended (the app caches its first one)

        def openapi() -> dict[str, Any]:
            schema = previous()
            if any(done is schema for done in merged):
                return schema
            target = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, component in self.components().items():
                if name in target and target[name] != component:
                    raise SchemaConflict(f"two different OpenAPI schemas are named {name!r}")
                target[name] = component
            for path, item in (paths or {}).items():
                schema["paths"].setdefault(path, {}).update(item)
            merged.append(schema)
            return schema

        app.openapi = openapi  # type: ignore[method-assign]
