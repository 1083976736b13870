"""Batch operations, queries and discovery through the HTTP API (clauses 5.6.7-5.7.8)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.test_entities import CORE, bin_entity, problem

OPS = "/ngsi-ld/v1/entityOperations"


def city(client: TestClient, n: int = 30) -> None:
    """n bins along a line east of Montpellier's centre, fill levels 0.0 .. 0.97."""
    items = []
    for i in range(n):
        e = bin_entity(i, fill=round(i / n, 2))
        e["location"]["value"]["coordinates"] = [3.87 + i * 0.001, 43.61]
        e["status"]["value"] = "full" if i % 3 == 0 else "ok"
        items.append(e)
    assert client.post(OPS + "/create", json=items).status_code == 201


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [e["id"] for e in response.json()]


def test_batch_create_reports_each_entity(client: TestClient) -> None:
    good = bin_entity(1)
    bad = {
        "id": "urn:ngsi-ld:WasteContainer:2",
        "type": "WasteContainer",
        "p": {"type": "Relationship", "object": "x y"},
    }
    result = client.post(OPS + "/create", json=[good, bad, {"id": "nope"}])
    assert result.status_code == 207
    body = result.json()
    assert body["success"] == ["urn:ngsi-ld:WasteContainer:1"]
    assert [e["entityId"] for e in body["errors"]] == ["urn:ngsi-ld:WasteContainer:2", "nope"]
    assert body["errors"][0]["error"]["type"].endswith("BadRequestData")
    assert client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:2").status_code == 404
    again = client.post(OPS + "/create", json=[good])
    assert again.status_code == 207
    assert again.json()["errors"][0]["error"]["type"].endswith("AlreadyExists")


def test_batch_upsert_like_an_iot_agent(client: TestClient) -> None:
    headers = {"Content-Type": "application/ld+json", "NGSILD-Tenant": "water", "NGSILD-Path": "/"}
    first = [
        {
            "id": "urn:ngsi-ld:Device:t1",
            "type": "Device",
            "temperature": {"type": "Property", "value": 12},
            "@context": CORE,
        }
    ]
    created = client.post(
        OPS + "/upsert/", params={"options": "update"}, json=first, headers=headers
    )
    assert created.status_code == 201 and created.json() == ["urn:ngsi-ld:Device:t1"]
    update = [
        {
            "id": "urn:ngsi-ld:Device:t1",
            "type": "Device",
            "humidity": {"type": "Property", "value": 40},
            "@context": CORE,
        }
    ]
    assert (
        client.post(
            OPS + "/upsert/", params={"options": "update"}, json=update, headers=headers
        ).status_code
        == 204
    )
    got = client.get(
        "/ngsi-ld/v1/entities/urn:ngsi-ld:Device:t1", headers={"NGSILD-Tenant": "water"}
    ).json()
    assert got["temperature"]["value"] == 12 and got["humidity"]["value"] == 40
    # replace (the default) drops what the new version does not carry
    assert client.post(OPS + "/upsert", json=[{**update[0]}], headers=headers).status_code == 204
    got = client.get(
        "/ngsi-ld/v1/entities/urn:ngsi-ld:Device:t1", headers={"NGSILD-Tenant": "water"}
    ).json()
    assert "temperature" not in got
    problem(
        client.post(OPS + "/upsert", params={"options": "bogus"}, json=first, headers=headers),
        400,
        "BadRequestData",
    )


def test_batch_update_merge_delete(client: TestClient) -> None:
    city(client, 3)
    upd = [
        {"id": "urn:ngsi-ld:WasteContainer:0", "status": {"type": "Property", "value": "emptied"}},
        {"id": "urn:ngsi-ld:WasteContainer:99", "status": {"type": "Property", "value": "x"}},
    ]
    result = client.post(OPS + "/update", json=upd)
    assert result.status_code == 207
    assert result.json()["success"] == ["urn:ngsi-ld:WasteContainer:0"]
    merge = [{"id": "urn:ngsi-ld:WasteContainer:1", "status": "urn:ngsi-ld:null", "color": "red"}]
    assert client.post(OPS + "/merge", json=merge).status_code == 204
    got = client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:1").json()
    assert "status" not in got and got["color"]["value"] == "red"
    deleted = client.post(
        OPS + "/delete", json=["urn:ngsi-ld:WasteContainer:0", "urn:ngsi-ld:WasteContainer:77"]
    )
    assert deleted.status_code == 207
    assert deleted.json()["errors"][0]["error"]["type"].endswith("ResourceNotFound")
    problem(client.post(OPS + "/delete", json={"id": "x"}), 400, "BadRequestData")


def test_batch_limit(settings: Any) -> None:
    from urbis.api.app import create_app

    settings.max_batch_size = 2
    with TestClient(
        create_app(settings), headers={"Authorization": "Bearer test-admin-token"}
    ) as c:
        problem(
            c.post(OPS + "/create", json=[bin_entity(i) for i in range(3)]), 400, "BadRequestData"
        )


def test_query_by_type_q_and_count(client: TestClient) -> None:
    city(client)
    url = "/ngsi-ld/v1/entities"
    found = client.get(
        url,
        params={"type": "WasteContainer", "q": "fillingLevel>0.8", "count": "true", "limit": 100},
    )
    assert found.headers["NGSILD-Results-Count"] == "5"
    assert sorted(ids(found)) == sorted(f"urn:ngsi-ld:WasteContainer:{i}" for i in range(25, 30))
    both = client.get(
        url, params={"type": "WasteContainer", "q": 'fillingLevel>0.5;status=="full"', "limit": 100}
    )
    assert sorted(ids(both)) == sorted(f"urn:ngsi-ld:WasteContainer:{i}" for i in (18, 21, 24, 27))
    meta = client.get(
        url, params={"type": "WasteContainer", "q": "fillingLevel.accuracy==0.05", "count": "true"}
    )
    assert meta.headers["NGSILD-Results-Count"] == "30"
    rng = client.get(
        url, params={"type": "WasteContainer", "q": "fillingLevel==0.1..0.2", "limit": 100}
    )
    assert len(ids(rng)) == 4
    problem(
        client.get(url, params={"type": "WasteContainer", "q": "fillingLevel>>1"}),
        400,
        "BadRequestData",
    )
    problem(client.get(url), 400, "BadRequestData")
    problem(
        client.get(url, params={"type": "WasteContainer", "limit": 100000}), 403, "TooManyResults"
    )
    zero = client.get(url, params={"type": "None", "limit": 0, "count": "true"})
    assert (
        zero.status_code == 200
        and zero.json() == []
        and zero.headers["NGSILD-Results-Count"] == "0"
    )


def test_paging_links(client: TestClient) -> None:
    city(client, 5)
    first = client.get("/ngsi-ld/v1/entities", params={"type": "WasteContainer", "limit": 2})
    assert len(ids(first)) == 2
    assert 'rel="next"' in first.headers["link"] and "offset=2" in first.headers["link"]
    last = client.get(
        "/ngsi-ld/v1/entities", params={"type": "WasteContainer", "limit": 2, "offset": 4}
    )
    assert len(ids(last)) == 1 and 'rel="prev"' in last.headers["link"]
    everything = []
    for offset in range(0, 6, 2):
        everything += ids(
            client.get(
                "/ngsi-ld/v1/entities",
                params={"type": "WasteContainer", "limit": 2, "offset": offset},
            )
        )
    assert len(set(everything)) == 5


def test_type_expressions_ids_and_patterns(client: TestClient) -> None:
    city(client, 3)
    client.post(
        "/ngsi-ld/v1/entities",
        json={"id": "urn:ngsi-ld:Streetlight:1", "type": ["Streetlight", "Device"], "status": "on"},
    )
    url = "/ngsi-ld/v1/entities"
    assert len(ids(client.get(url, params={"type": "WasteContainer,Streetlight"}))) == 4
    assert ids(client.get(url, params={"type": "Streetlight;Device"})) == [
        "urn:ngsi-ld:Streetlight:1"
    ]
    assert ids(client.get(url, params={"type": "(WasteContainer;Device)|Streetlight"})) == [
        "urn:ngsi-ld:Streetlight:1"
    ]
    listed = {"id": "urn:ngsi-ld:WasteContainer:2,urn:ngsi-ld:WasteContainer:1,urn:ngsi-ld:X:9"}
    assert sorted(ids(client.get(url, params={**listed, "count": "true"}))) == [
        "urn:ngsi-ld:WasteContainer:1",
        "urn:ngsi-ld:WasteContainer:2",
    ]
    assert (
        client.get(url, params={**listed, "count": "true"}).headers["NGSILD-Results-Count"] == "2"
    )
    assert len(ids(client.get(url, params={"idPattern": ".*Waste.*:[01]$"}))) == 2
    attrs = client.get(url, params={"type": "WasteContainer", "attrs": "status"}).json()
    assert all(set(e) == {"id", "type", "status"} for e in attrs)
    problem(client.get(url, params={"type": "(A,B"}), 400, "BadRequestData")


def test_geo_queries_and_geojson(client: TestClient) -> None:
    city(client, 30)
    url = "/ngsi-ld/v1/entities"
    near = {
        "type": "WasteContainer",
        "georel": "near;maxDistance==250",
        "geometry": "Point",
        "coordinates": "[3.87,43.61]",
        "limit": 100,
    }
    # 0.001 degree of longitude at 43.61 N is about 80.5 m: bins 0..3 lie within 250 m
    assert sorted(ids(client.get(url, params=near))) == [
        f"urn:ngsi-ld:WasteContainer:{i}" for i in range(4)
    ]
    poly = "[[[3.8745,43.6],[3.8795,43.6],[3.8795,43.62],[3.8745,43.62],[3.8745,43.6]]]"
    within = {
        "type": "WasteContainer",
        "georel": "within",
        "geometry": "Polygon",
        "coordinates": poly,
    }
    assert sorted(ids(client.get(url, params=within))) == sorted(
        f"urn:ngsi-ld:WasteContainer:{i}" for i in range(5, 10)
    )
    geo = client.get(url, params=near, headers={"Accept": "application/geo+json"})
    assert geo.headers["content-type"].startswith("application/geo+json")
    assert geo.json()["type"] == "FeatureCollection" and len(geo.json()["features"]) == 4
    problem(client.get(url, params={**near, "georel": "nearby"}), 400, "BadRequestData")
    problem(client.get(url, params={**near, "coordinates": "[3.87"}), 400, "BadRequestData")


def test_post_query(client: TestClient) -> None:
    city(client, 10)
    body = {
        "type": "Query",
        "entities": [{"type": "WasteContainer"}],
        "q": "fillingLevel>=0.5",
        "geoQ": {
            "georel": "near;maxDistance==2000",
            "geometry": "Point",
            "coordinates": [3.87, 43.61],
        },
    }
    found = client.post(OPS + "/query", json=body, params={"count": "true"})
    assert found.status_code == 200, found.text
    assert found.headers["NGSILD-Results-Count"] == "5"
    problem(client.post(OPS + "/query", json={"entities": []}), 400, "BadRequestData")


def test_discovery(client: TestClient) -> None:
    city(client, 4)
    types = client.get("/ngsi-ld/v1/types").json()
    assert types["type"] == "EntityTypeList" and types["typeList"] == ["WasteContainer"]
    info = client.get("/ngsi-ld/v1/types/WasteContainer").json()
    assert info["entityCount"] == 4
    details = {a["attributeName"]: a["attributeTypes"] for a in info["attributeDetails"]}
    assert details["refDevice"] == ["Relationship"] and details["location"] == ["GeoProperty"]
    attrs = client.get("/ngsi-ld/v1/attributes").json()
    assert "fillingLevel" in attrs["attributeList"]
    one = client.get("/ngsi-ld/v1/attributes/fillingLevel").json()
    assert one["attributeCount"] == 4 and one["typeNames"] == ["WasteContainer"]
    problem(client.get("/ngsi-ld/v1/types/Nothing"), 404, "ResourceNotFound")


def test_scope_queries(client: TestClient) -> None:
    for i, scope in enumerate(
        ["/Montpellier/Centre", "/Montpellier/Centre/Ecusson", "/Montpellier/Nord", "/Lyon"]
    ):
        entity = {"id": f"urn:ngsi-ld:Bin:{i}", "type": "Bin", "scope": scope, "n": i}
        assert client.post("/ngsi-ld/v1/entities", json=entity).status_code == 201
    url = "/ngsi-ld/v1/entities"

    def scoped(expr: str) -> list[int]:
        return sorted(
            int(e["id"].rsplit(":", 1)[1]) for e in client.get(url, params={"scopeQ": expr}).json()
        )

    assert scoped("/Montpellier/Centre") == [0]
    assert scoped("/Montpellier/Centre/#") == [0, 1]
    assert scoped("/Montpellier/+") == [0, 2]
    assert scoped("/#") == [0, 1, 2, 3]
    assert scoped("/Lyon,/Montpellier/Nord") == [2, 3]
    assert scoped("/Montpellier/#;/Montpellier/Nord") == [2]
    assert client.get(url + "/urn:ngsi-ld:Bin:1").json()["scope"] == "/Montpellier/Centre/Ecusson"
    problem(client.get(url, params={"scopeQ": "Montpellier"}), 400, "BadRequestData")


def test_post_query_selectors_are_alternatives(client: TestClient) -> None:
    city(client, 4)
    client.post(
        "/ngsi-ld/v1/entities",
        json={"id": "urn:ngsi-ld:Streetlight:1", "type": "Streetlight", "status": "on"},
    )
    body = {
        "type": "Query",
        "entities": [
            {"type": "Streetlight"},
            {"type": "WasteContainer", "idPattern": ".*:[23]$"},
        ],
    }
    found = client.post(OPS + "/query", json=body)
    assert sorted(ids(found)) == [
        "urn:ngsi-ld:Streetlight:1",
        "urn:ngsi-ld:WasteContainer:2",
        "urn:ngsi-ld:WasteContainer:3",
    ]
    problem(
        client.post(OPS + "/query", json={"type": "Query", "entities": [{}]}), 400, "BadRequestData"
    )
