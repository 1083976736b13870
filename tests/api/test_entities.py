"""Entity CRUD and attribute operations through the HTTP API (clauses 5.6, 6.4-6.7)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

ERR = "https://uri.etsi.org/ngsi-ld/errors/"
LD = {"Content-Type": "application/ld+json"}
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"


def bin_entity(n: int = 1, fill: float = 0.5) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:WasteContainer:{n}",
        "type": "WasteContainer",
        "fillingLevel": {
            "type": "Property",
            "value": fill,
            "observedAt": "2026-11-22T10:00:00Z",
            "unitCode": "P1",
            "accuracy": {"type": "Property", "value": 0.05},
        },
        "status": {"type": "Property", "value": "ok"},
        "refDevice": {"type": "Relationship", "object": f"urn:ngsi-ld:Device:{n}"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [3.87, 43.61]},
        },
        "name": {"type": "LanguageProperty", "languageMap": {"fr": "Bac", "en": "Bin"}},
    }


def problem(response: Any, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == ERR + kind, body
    assert body["detail"]
    return body


def test_create_then_retrieve_round_trips(client: TestClient) -> None:
    entity = bin_entity()
    created = client.post("/ngsi-ld/v1/entities", json=entity)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1"
    got = client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1")
    assert got.status_code == 200
    assert got.json() == entity
    assert CORE in got.headers["link"]


def test_trailing_slash_and_duplicate(client: TestClient) -> None:
    assert client.post("/ngsi-ld/v1/entities/", json=bin_entity()).status_code == 201
    problem(client.post("/ngsi-ld/v1/entities", json=bin_entity()), 409, "AlreadyExists")


def test_representations(client: TestClient) -> None:
    client.post("/ngsi-ld/v1/entities", json=bin_entity())
    url = "/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1"
    kv = client.get(url, params={"options": "keyValues"}).json()
    assert kv["fillingLevel"] == 0.5
    assert kv["refDevice"] == "urn:ngsi-ld:Device:1"
    assert kv["location"] == {"type": "Point", "coordinates": [3.87, 43.61]}
    concise = client.get(url, params={"format": "concise"}).json()
    assert concise["status"] == "ok"
    assert concise["refDevice"] == {"object": "urn:ngsi-ld:Device:1"}
    assert concise["fillingLevel"]["accuracy"] == 0.05
    assert concise["location"] == {"type": "Point", "coordinates": [3.87, 43.61]}
    sys = client.get(url, params={"options": "sysAttrs"}).json()
    assert sys["createdAt"].endswith("Z") and "modifiedAt" in sys["fillingLevel"]
    fr = client.get(url, params={"lang": "fr"}).json()
    assert fr["name"] == {"type": "Property", "value": "Bac", "lang": "fr"}
    ld = client.get(url, headers={"Accept": "application/ld+json"})
    assert ld.headers["content-type"].startswith("application/ld+json")
    assert ld.json()["@context"] == CORE
    geo = client.get(url, headers={"Accept": "application/geo+json"}).json()
    assert geo["type"] == "Feature" and geo["geometry"]["type"] == "Point"
    picked = client.get(url, params={"pick": "id,status"}).json()
    assert picked == {"id": "urn:ngsi-ld:WasteContainer:1", "status": bin_entity()["status"]}
    omitted = client.get(url, params={"omit": "location,name"}).json()
    assert "location" not in omitted and "status" in omitted
    problem(client.get(url, params={"options": "bogus"}), 400, "BadRequestData")
    problem(client.get(url, headers={"Accept": "text/csv"}), 406, "NotAcceptable")


def test_concise_input_is_understood(client: TestClient) -> None:
    concise = {
        "id": "urn:ngsi-ld:Streetlight:9",
        "type": "Streetlight",
        "status": "ok",
        "lanternHeight": {"value": 8, "unitCode": "MTR"},
        "refGroup": {"object": "urn:ngsi-ld:StreetlightGroup:1"},
        "location": {"type": "Point", "coordinates": [3.88, 43.6]},
    }
    assert client.post("/ngsi-ld/v1/entities", json=concise).status_code == 201
    got = client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Streetlight:9").json()
    assert got["status"] == {"type": "Property", "value": "ok"}
    assert got["lanternHeight"] == {"type": "Property", "value": 8, "unitCode": "MTR"}
    assert got["refGroup"]["type"] == "Relationship"
    assert got["location"]["type"] == "GeoProperty"


def test_bad_input_is_rejected_precisely(client: TestClient) -> None:
    url = "/ngsi-ld/v1/entities"
    assert (
        "URI"
        in problem(client.post(url, json={"id": "not a uri", "type": "T"}), 400, "BadRequestData")[
            "detail"
        ]
    )
    problem(client.post(url, json={"id": "urn:a:1"}), 400, "BadRequestData")
    bad_geo = {
        "id": "urn:a:1",
        "type": "T",
        "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [200, 1]}},
    }
    problem(client.post(url, json=bad_geo), 400, "BadRequestData")
    bad_rel = {"id": "urn:a:1", "type": "T", "r": {"type": "Relationship", "object": "no uri"}}
    problem(client.post(url, json=bad_rel), 400, "BadRequestData")
    bad_kind = {"id": "urn:a:1", "type": "T", "p": {"type": "Propertee", "value": 1}}
    problem(client.post(url, json=bad_kind), 400, "BadRequestData")
    bad_time = {
        "id": "urn:a:1",
        "type": "T",
        "p": {"type": "Property", "value": 1, "observedAt": "yesterday"},
    }
    problem(client.post(url, json=bad_time), 400, "BadRequestData")
    malformed = client.post(url, content=b'{"id": ', headers={"Content-Type": "application/json"})
    assert "not valid JSON" in problem(malformed, 400, "BadRequestData")["detail"]
    problem(
        client.post(url, content=b"{}", headers={"Content-Type": "text/plain"}),
        415,
        "UnsupportedMediaType",
    )
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    problem(
        client.post(url, json={"id": "urn:a:1", "type": "T", "p": {"value": deep}}),
        400,
        "BadRequestData",
    )
    ld_without_context = client.post(url, json={"id": "urn:a:1", "type": "T"}, headers=LD)
    problem(ld_without_context, 400, "BadRequestData")
    both = client.post(
        url,
        json={"id": "urn:a:1", "type": "T", "@context": CORE},
        headers={"Link": f'<{CORE}>; rel="http://www.w3.org/ns/json-ld#context"'},
    )
    problem(both, 400, "BadRequestData")
    assert client.get("/ngsi-ld/v1/entities/urn:a:1").status_code == 404


def test_oversized_body(settings: Any) -> None:
    from urbis.api.app import create_app

    settings.max_body_bytes = 1000
    with TestClient(
        create_app(settings), headers={"Authorization": "Bearer test-admin-token"}
    ) as c:
        big = {"id": "urn:a:1", "type": "T", "p": {"value": "x" * 2000}}
        problem(c.post("/ngsi-ld/v1/entities", json=big), 413, "BadRequestData")


def test_access_gate(client: TestClient, anonymous: TestClient) -> None:
    problem(anonymous.post("/ngsi-ld/v1/entities", json=bin_entity()), 401, "Unauthorized")
    wrong = anonymous.post(
        "/ngsi-ld/v1/entities", json=bin_entity(), headers={"Authorization": "Bearer nope"}
    )
    problem(wrong, 401, "Unauthorized")
    client.post("/ngsi-ld/v1/entities", json=bin_entity())
    assert anonymous.get("/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1").status_code == 200
    problem(
        anonymous.delete("/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1"), 401, "Unauthorized"
    )


def test_open_mode_allows_anonymous_writes(settings: Any) -> None:
    from urbis.api.app import create_app

    settings.open = True
    with TestClient(create_app(settings)) as c:
        assert c.post("/ngsi-ld/v1/entities", json=bin_entity()).status_code == 201


def test_tenants_are_isolated(client: TestClient) -> None:
    tenant = {"NGSILD-Tenant": "police"}
    problem(
        client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1", headers=tenant),
        404,
        "NonexistentTenant",
    )
    assert client.post("/ngsi-ld/v1/entities", json=bin_entity(), headers=tenant).status_code == 201
    assert (
        client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1", headers=tenant).status_code
        == 200
    )
    problem(
        client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1"), 404, "ResourceNotFound"
    )
    problem(
        client.get("/ngsi-ld/v1/entities/urn:x:1", headers={"NGSILD-Tenant": "../etc"}),
        400,
        "BadRequestData",
    )


def test_append_update_and_delete_attributes(client: TestClient) -> None:
    client.post("/ngsi-ld/v1/entities", json=bin_entity())
    url = "/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1"
    appended = client.post(url + "/attrs", json={"temperature": {"type": "Property", "value": 12}})
    assert appended.status_code == 204
    no_overwrite = client.post(
        url + "/attrs",
        params={"options": "noOverwrite"},
        json={"status": {"type": "Property", "value": "full"}},
    )
    assert no_overwrite.status_code == 207
    assert no_overwrite.json()["notUpdated"][0]["attributeName"] == "status"
    assert client.get(url).json()["status"]["value"] == "ok"
    partial = client.patch(
        url + "/attrs",
        json={
            "status": {"type": "Property", "value": "full"},
            "missing": {"type": "Property", "value": 1},
        },
    )
    assert partial.status_code == 207
    assert partial.json()["updated"] == ["status"]
    assert client.get(url).json()["status"]["value"] == "full"
    # partial attribute update keeps the metadata it does not mention
    assert client.patch(url + "/attrs/fillingLevel", json={"value": 0.9}).status_code == 204
    level = client.get(url).json()["fillingLevel"]
    assert (
        level["value"] == 0.9 and level["unitCode"] == "P1" and level["accuracy"]["value"] == 0.05
    )
    problem(client.patch(url + "/attrs/nothing", json={"value": 1}), 404, "ResourceNotFound")
    # datasetId instances
    client.post(
        url + "/attrs",
        json={
            "temperature": {"type": "Property", "value": 14, "datasetId": "urn:ngsi-ld:Dataset:b"}
        },
    )
    both = client.get(url).json()["temperature"]
    assert isinstance(both, list) and len(both) == 2
    assert (
        client.delete(
            url + "/attrs/temperature", params={"datasetId": "urn:ngsi-ld:Dataset:b"}
        ).status_code
        == 204
    )
    assert client.get(url).json()["temperature"]["value"] == 12
    client.post(
        url + "/attrs",
        json={
            "temperature": {"type": "Property", "value": 14, "datasetId": "urn:ngsi-ld:Dataset:b"}
        },
    )
    assert (
        client.delete(url + "/attrs/temperature", params={"deleteAll": "true"}).status_code == 204
    )
    assert "temperature" not in client.get(url).json()
    problem(client.delete(url + "/attrs/temperature"), 404, "ResourceNotFound")


def test_merge_patch_and_replace(client: TestClient) -> None:
    client.post("/ngsi-ld/v1/entities", json=bin_entity())
    url = "/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1"
    merged = client.patch(
        url,
        json={"status": "urn:ngsi-ld:null", "fillingLevel": {"value": 0.7}, "color": "green"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert merged.status_code == 204, merged.text
    got = client.get(url).json()
    assert "status" not in got
    assert got["fillingLevel"]["value"] == 0.7 and got["fillingLevel"]["unitCode"] == "P1"
    assert got["color"] == {"type": "Property", "value": "green"}
    replaced = client.put(
        url, json={"type": "WasteContainer", "status": {"type": "Property", "value": "new"}}
    )
    assert replaced.status_code == 204
    assert set(client.get(url).json()) == {"id", "type", "status"}
    problem(client.put(url, json={"id": "urn:other:1", "type": "T"}), 400, "BadRequestData")
    problem(client.patch("/ngsi-ld/v1/entities/urn:none:1", json={"a": 1}), 404, "ResourceNotFound")


def test_delete_entity(client: TestClient) -> None:
    client.post("/ngsi-ld/v1/entities", json=bin_entity())
    url = "/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1"
    assert client.delete(url).status_code == 204
    problem(client.get(url), 404, "ResourceNotFound")
    problem(client.delete(url), 404, "ResourceNotFound")
    problem(client.get("/ngsi-ld/v1/entities/not%20a%20uri"), 400, "BadRequestData")


def test_swapped_coordinates_are_refused_inside_a_service_area(settings: Any) -> None:
    from urbis.api.app import create_app

    settings.service_area = "3.7,43.5,4.0,43.7"  # Montpellier
    with TestClient(
        create_app(settings), headers={"Authorization": "Bearer test-admin-token"}
    ) as c:
        swapped = {
            "id": "urn:a:1",
            "type": "T",
            "location": {"type": "Point", "coordinates": [43.61, 3.87]},
        }
        detail = problem(c.post("/ngsi-ld/v1/entities", json=swapped), 400, "BadRequestData")[
            "detail"
        ]
        assert "[longitude, latitude]" in detail
        right = {**swapped, "location": {"type": "Point", "coordinates": [3.87, 43.61]}}
        assert c.post("/ngsi-ld/v1/entities", json=right).status_code == 201
        elsewhere = {
            "id": "urn:a:2",
            "type": "T",
            "location": {"type": "Point", "coordinates": [2.35, 48.85]},
        }
        assert c.post("/ngsi-ld/v1/entities", json=elsewhere).status_code == 201  # far, not swapped
