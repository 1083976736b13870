"""/openapi.json describes every operation: parameters, bodies, media types, problems."""

from __future__ import annotations

from typing import Any

import schemathesis
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from schemathesis.core.result import Err, Ok
from starlette.responses import Response

from urbis.api import openapi
from urbis.api.app import create_app
from urbis.api.settings import Settings


def _document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]


def test_every_route_has_a_description(settings: Settings) -> None:
    app = create_app(settings)
    assert openapi.missing(app, settings) == []
    published = set(openapi.published(app))
    described = set(openapi.operations(settings))
    assert described == published, f"described but not routed: {described - published}"
    assert len(published) >= 51  # the count; more once new routes are described


def test_a_new_route_without_a_description_is_reported(settings: Settings) -> None:
    app = create_app(settings)
    extra = APIRouter()

    @extra.get("/forgotten")
    def forgotten() -> Response:
        return Response()

    app.include_router(extra)
    assert openapi.missing(app, settings) == [("GET", "/forgotten")]


def test_the_document_loads_with_stable_unique_ids(client: TestClient) -> None:
    doc = _document(client)
    loaded = list(schemathesis.openapi.from_dict(doc).get_all_operations())
    assert len(loaded) == len(_operations(doc))
    assert all(isinstance(r, Ok) for r in loaded), [r.err() for r in loaded if isinstance(r, Err)]
    ids = [op["operationId"] for _, _, op in _operations(doc)]
    assert len(ids) == len(set(ids)) >= 51
    assert {"queryEntity", "createEntity", "retrieveEntity", "batchEntityUpsert"} <= set(ids)


def test_every_operation_says_what_it_takes_and_answers(client: TestClient) -> None:
    doc = _document(client)
    problems = doc["components"]["responses"]
    for method, path, op in _operations(doc):
        where = f"{method} {path}"
        codes = {int(c) for c in op["responses"]}
        assert any(200 <= c < 300 for c in codes), where
        names = {p["name"] for p in op.get("parameters", [])}
        for template in (part[1:-1] for part in path.split("/") if part.startswith("{")):
            assert template in names, f"{where}: path parameter {template} undeclared"
        if method in ("POST", "PUT", "PATCH") and "/sync" not in path:
            assert op["requestBody"]["content"], where
        if path.startswith("/ngsi-ld/"):
            assert 400 in codes, where
            tenanted = not path.startswith("/ngsi-ld/v1/jsonldContexts")
            assert ("NGSILD-Tenant" in names) == tenanted, where
        for code in codes - {c for c in codes if c < 300}:
            ref = op["responses"][str(code)]["$ref"].rsplit("/", 1)[-1]
            content = problems[ref]["content"]
            assert list(content) == ["application/problem+json"], where
        writes = method in ("POST", "PUT", "PATCH", "DELETE") and not path.endswith(
            ("/query", "/sparql")
        )
        if op["security"] == [{"bearerAuth": []}] or writes:
            assert 401 in codes, f"{where}: an operation for the admin without 401"


def test_ngsi_ld_bodies_and_answers_have_their_media_types(client: TestClient) -> None:
    doc = _document(client)
    ops = {(m, p): op for m, p, op in _operations(doc)}
    entity = "/ngsi-ld/v1/entities/{entity_id}"
    create = ops[("POST", "/ngsi-ld/v1/entities")]["requestBody"]["content"]
    assert set(create) == {"application/json", "application/ld+json"}
    merge = ops[("PATCH", entity)]["requestBody"]["content"]
    assert "application/merge-patch+json" in merge
    sparql = ops[("POST", "/sparql")]["requestBody"]["content"]
    assert set(sparql) == {"application/sparql-query", "application/x-www-form-urlencoded"}
    query = ops[("GET", "/ngsi-ld/v1/entities")]
    answers = query["responses"]["200"]["content"]
    assert set(answers) == {"application/json", "application/ld+json", "application/geo+json"}
    params = {p["name"]: p for p in query["parameters"]}
    assert params["limit"]["schema"]["maximum"] == 1000
    assert params["options"]["schema"]["items"]["enum"] == [
        "keyValues",
        "concise",
        "normalized",
        "sysAttrs",
    ]
    assert params["Link"]["in"] == "header"
    problem = doc["components"]["schemas"]["ProblemDetails"]
    assert set(problem["properties"]) == {"type", "title", "detail", "status"}


def test_limits_come_from_the_settings() -> None:
    settings = Settings(admin_token="t", max_page_size=50, default_page_size=10)
    app: FastAPI = create_app(settings)
    doc = TestClient(app).get("/openapi.json").json()
    limit = next(
        p for p in doc["paths"]["/ngsi-ld/v1/entities"]["get"]["parameters"] if p["name"] == "limit"
    )
    assert limit["schema"] == {"type": "integer", "minimum": 0, "maximum": 50, "default": 10}
