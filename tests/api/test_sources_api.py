"""The admin API of connector sources: definitions, sync, report, quarantine."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from tests.conftest import TOKEN


def geojson(path: Path, heights: list[str]) -> None:
    features = [
        {
            "type": "Feature",
            "id": f"t{i}",
            "properties": {"height": h},
            "geometry": {"type": "Point", "coordinates": [3.87 + i / 1000, 43.61]},
        }
        for i, h in enumerate(heights)
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def definition(path: Path) -> dict[str, object]:
    return {
        "id": "trees",
        "kind": "file",
        "endpoint": str(path),
        "entity_type": "Tree",
        "mapping": [{"source": "height", "attribute": "height", "convert": "float", "unit": "m"}],
    }


def test_add_sync_report_quarantine(client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "trees.geojson"
    geojson(path, ["12", "tall", "7,5"])
    created = client.post("/sources", json=definition(path))
    assert created.status_code == 201, created.text
    assert created.headers["Location"] == "/sources/trees"
    assert client.post("/sources", json=definition(path)).status_code == 409
    listed = client.get("/sources").json()
    assert [s["id"] for s in listed] == ["trees"] and listed[0]["lastSync"] is None
    assert client.get("/sources/trees/report").status_code == 404
    report = client.post("/sources/trees/sync")
    assert report.status_code == 200
    body = report.json()
    assert (body["status"], body["created"], body["quarantined"]) == ("ok", 2, 1)
    assert client.get("/sources/trees/report").json()["run_id"] == body["run_id"]
    entries = client.get("/sources/trees/quarantine").json()
    assert entries[0]["key"] == "t1" and "cannot convert 'tall'" in entries[0]["reason"]
    detail = client.get("/sources/trees").json()
    assert detail["quarantined"] == 1 and detail["graph"] == "urn:urbis:dataset:trees"
    entity = client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Tree:trees-t2").json()
    assert entity["height"]["value"] == 7.5 and entity["height"]["unitCode"] == "MTR"


def test_bad_definition_is_a_400_with_field_paths(client: TestClient, tmp_path: Path) -> None:
    bad = {**definition(tmp_path / "x.geojson"), "kind": "nosuch", "schedule": "often"}
    bad["mapping"] = [{"source": "h", "attribute": "h", "unit": "furlongs"}]
    response = client.post("/sources", json=bad)
    assert response.status_code == 400
    problem = response.json()
    assert problem["type"].endswith("BadRequestData")
    fields = {e["field"] for e in problem["errors"]}
    assert {"schedule", "mapping[0].unit"} <= fields
    assert client.get("/sources/nosuch").status_code == 404


def test_sources_need_the_admin_token(client: TestClient) -> None:
    anonymous = TestClient(client.app)
    assert anonymous.get("/sources").status_code == 401
    wrong = TestClient(client.app, headers={"Authorization": f"Bearer {TOKEN}x"})
    assert wrong.post("/sources/x/sync").status_code == 401
