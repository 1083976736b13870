"""Regressions for what schemathesis found over /openapi.json
(tests/api/test_openapi_schemathesis.py): a 500, or a valid request refused with an internal
error as its detail. Each now gets its precise answer."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

ENTITY = "urn:ngsi-ld:Streetlight:f1"
PROBLEM = "application/problem+json"


@pytest.fixture
def seeded(client: TestClient) -> TestClient:
    body = {"id": ENTITY, "type": "Streetlight", "status": {"type": "Property", "value": "on"}}
    assert client.post("/ngsi-ld/v1/entities", json=body).status_code == 201
    return client


def _bad_request(response: Any) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"


@pytest.mark.parametrize("kind", [{}, [], [1]])
def test_an_instance_whose_type_is_not_a_string_is_a_400(seeded: TestClient, kind: Any) -> None:
    """`type` an object or array was hashed against the attribute types: TypeError, 500."""
    url = f"/ngsi-ld/v1/entities/{ENTITY}/attrs/status"
    _bad_request(seeded.put(url, json=[{"type": kind, "value": 1}]))
    _bad_request(seeded.put(url, json={"type": kind, "value": 1}))
    assert seeded.get(f"/ngsi-ld/v1/entities/{ENTITY}").json()["status"]["value"] == "on"


def test_values_whose_type_member_is_an_object_are_plain_values(seeded: TestClient) -> None:
    """Not instances, not GeoJSON: concise Property values, stored as sent (a 500 before)."""
    odd = [{"type": {"a": 1}}]
    url = f"/ngsi-ld/v1/entities/{ENTITY}"
    response = seeded.post(url + "/attrs", json={"odd": odd, "location": {"value": odd[0]}})
    assert response.status_code == 204, response.text
    doc = seeded.get(url, params={"options": "keyValues"}).json()
    assert doc["odd"] == odd and doc["location"] == odd[0]


@pytest.mark.parametrize("update", ["", "  ", "PREFIX ex: <urn:ex:>", "# nothing"])
def test_an_update_without_operations_is_a_valid_no_op(client: TestClient, update: str) -> None:
    """SPARQL 1.1 allows an update of no operation; it was refused with the parser's internal
    "'list' object has no attribute 'algebra'" as the detail."""
    headers = {"Content-Type": "application/sparql-update"}
    response = client.post("/sparql/update", content=update, headers=headers)
    assert response.status_code == 204, response.text
    ask = client.get("/sparql", params={"query": "ASK { ?s ?p ?o }"})
    assert ask.status_code == 200 and ask.json()["boolean"] is False
