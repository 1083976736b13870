"""Hosted @contexts (clause 5.13) and the generated demo city."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.test_entities import problem
from urbis.demo.loading import load_demo

CTX = "/ngsi-ld/v1/jsonldContexts"
REL = 'rel="http://www.w3.org/ns/json-ld#context"'


def test_hosted_context_lifecycle(client: TestClient) -> None:
    body = {"@context": {"fill": "https://example.org/vocab#fillingLevel"}}
    created = client.post(CTX, json=body)
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    assert client.get(location).json() == body
    listed = client.get(CTX).json()
    assert any(str(u).endswith(location) for u in listed)
    # a client can now cite the hosted context; the server resolves it without any fetch
    link = f"<http://testserver{location}>; {REL}"
    entity = {"id": "urn:ngsi-ld:Bin:1", "type": "Bin", "fill": 0.4}
    assert (
        client.post("/ngsi-ld/v1/entities", json=entity, headers={"Link": link}).status_code == 201
    )
    default = client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Bin:1").json()
    assert "https://example.org/vocab#fillingLevel" in default
    assert (
        client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Bin:1", headers={"Link": link}).json()["fill"][
            "value"
        ]
        == 0.4
    )
    assert client.delete(location).status_code == 204
    problem(client.get(location), 404, "ResourceNotFound")
    problem(client.post(CTX, json={"no": "context"}), 400, "BadRequestData")


def test_packaged_context_cannot_be_deleted(client: TestClient) -> None:
    assert client.get(CTX + "/urbis-smart-city").status_code == 200
    problem(client.delete(CTX + "/urbis-smart-city"), 422, "OperationNotSupported")


def test_unreachable_remote_context_is_503(client: TestClient) -> None:
    link = f"<http://127.0.0.1:9/none.jsonld>; {REL}"
    response = client.get("/ngsi-ld/v1/entities", params={"type": "T"}, headers={"Link": link})
    problem(response, 503, "LdContextNotAvailable")


def test_demo_city_is_queryable(client: TestClient) -> None:
    state: Any = client.app.state.urbis  # type: ignore[attr-defined]
    loaded = load_demo(state.sources)
    assert loaded > 500
    link = f"<http://testserver{CTX}/urbis-smart-city>; {REL}"
    types = client.get("/ngsi-ld/v1/types", headers={"Link": link}).json()["typeList"]
    for expected in (
        "WasteContainer",
        "Streetlight",
        "AirQualityObserved",
        "ParkingSpot",
        "FloodMonitoring",
    ):
        assert expected in types
    full = client.get(
        "/ngsi-ld/v1/entities",
        params={"type": "WasteContainer", "q": "fillingLevel>0.8", "count": "true", "limit": 0},
        headers={"Link": link},
    )
    assert int(full.headers["NGSILD-Results-Count"]) > 0
    near_school = client.get(
        "/ngsi-ld/v1/entities",
        params={
            "type": "WasteContainer",
            "georel": "near;maxDistance==500",
            "geometry": "Point",
            "coordinates": "[3.8767,43.6108]",
            "count": "true",
            "limit": 0,
        },
        headers={"Link": link},
    )
    assert int(near_school.headers["NGSILD-Results-Count"]) > 0
