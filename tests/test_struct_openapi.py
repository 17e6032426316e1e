"""server.struct_openapi: a FastAPI route answering a msgspec Struct, served on a real socket, documented in
/openapi.json by the Struct's own JSON Schema (and a raw route's path item built from the same Structs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from fastapi import APIRouter, FastAPI

from supervisor_tui.server.serve import HttpServer
from supervisor_tui.server.struct_openapi import SchemaConflict, StructResponse, StructSchemas


class Part(msgspec.Struct):
    name: str
    size: int = 0


class Box(msgspec.Struct):
    label: str
    parts: list[Part]
    note: str | None = None


def make_app(schemas: StructSchemas) -> FastAPI:
    app = FastAPI()
    router = APIRouter()

    @router.get("/box", response_class=StructResponse, responses=schemas.responses({200: (Box, "a box")}))
    async def box() -> StructResponse:
        return StructResponse(Box("b", [Part("p", 3)]))

    @router.get("/parts", response_class=StructResponse, responses=schemas.responses({201: (list[Part], "parts")}))
    async def parts() -> StructResponse:
        return StructResponse([Part("a"), Part("b", 1)], status_code=201)

    app.include_router(router)
    raw = {
        "/raw": {
            "post": {"requestBody": schemas.request_body(Part), "responses": schemas.responses({200: (Box, "ok")})}
        }
    }
    schemas.install(app, paths=raw)
    return app


@pytest.fixture
async def served() -> AsyncIterator[httpx.AsyncClient]:
    server = HttpServer()
    _, port = await server.start(make_app(StructSchemas()), "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        await server.stop()


async def test_a_struct_answer_is_encoded_by_msgspec(served: httpx.AsyncClient) -> None:
    r = await served.get("/box")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {"label": "b", "parts": [{"name": "p", "size": 3}], "note": None}
    r = await served.get("/parts")
    assert r.status_code == 201 and r.json() == [{"name": "a", "size": 0}, {"name": "b", "size": 1}]


async def test_openapi_carries_the_structs_schemas(served: httpx.AsyncClient) -> None:
    spec: dict[str, Any] = (await served.get("/openapi.json")).json()
    _, expected = msgspec.json.schema_components((Box, Part), ref_template="#/components/schemas/{name}")
    components = spec["components"]["schemas"]
    assert components["Box"] == expected["Box"] and components["Part"] == expected["Part"]
    box = spec["paths"]["/box"]["get"]["responses"]["200"]
    assert box["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Box"}
    parts = spec["paths"]["/parts"]["get"]["responses"]["201"]["content"]["application/json"]["schema"]
    assert parts == {"type": "array", "items": {"$ref": "#/components/schemas/Part"}}
    raw = spec["paths"]["/raw"]["post"]
    assert raw["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Part"}
    assert (await served.get("/openapi.json")).json() == spec  # merged once, not again on every read


def test_a_field_added_to_a_struct_appears_in_the_schema() -> None:
    class Part(msgspec.Struct):  # the same name, one field more
        name: str
        size: int = 0
        colour: str = "red"

    schemas = StructSchemas()
    app = FastAPI()
    schemas.schema(Part)
    schemas.install(app)
    assert app.openapi()["components"]["schemas"]["Part"]["properties"]["colour"] == {
        "type": "string",
        "default": "red",
    }


def test_two_schemas_under_one_name_are_refused() -> None:
    class Box(msgspec.Struct):  # not the module's Box
        width: int

    app = make_app(StructSchemas())
    other = StructSchemas()
    other.schema(Box)
    other.install(app)
    with pytest.raises(SchemaConflict, match="'Box'"):
        app.openapi()
