"""Export and backup: `urbis export` / `urbis restore` as a user runs them, and the dataset
routes (`GET /datasets`, `GET /datasets/{name}/dump`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pyoxigraph import RdfFormat, parse

from tests.conftest import TOKEN
from urbis.api.app import create_app
from urbis.api.settings import Settings

NGSI = "/ngsi-ld/v1"
LINK = (
    "<https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld>; "
    'rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
)


def urbis(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "urbis.cli", *args], capture_output=True, timeout=120
    )


def entities(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"urn:ngsi-ld:Streetlight:{i}",
            "type": "Streetlight",
            "powerState": {
                "type": "Property",
                "value": "on" if i % 2 else "off",
                "observedAt": "2026-01-15T09:00:00Z",
            },
            "location": {"type": "Point", "coordinates": [3.87 + i / 1000, 43.61]},
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An on-disk twin with 300 lights in dataset `lights` and 2 in tenant `other` (read only
    by the tests)."""
    tmp_path = tmp_path_factory.mktemp("export")
    source = tmp_path / "lights.json"
    source.write_text(json.dumps(entities(300)))
    data = tmp_path / "twin"
    loaded = urbis("load", str(source), "--data-dir", str(data), "--dataset", "lights")
    assert loaded.returncode == 0, loaded.stderr
    app = create_app(Settings(data_dir=data, admin_token=TOKEN, demo=False))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for entity in entities(2):
            created = client.post(
                f"{NGSI}/entities",
                json=entity,
                headers={"NGSILD-Tenant": "other", "Link": LINK},
            )
            assert created.status_code == 201, created.text
    return data


def api_entities(data: Path, tenant: str | None = None) -> list[dict[str, Any]]:
    app = create_app(Settings(data_dir=data, admin_token=TOKEN, demo=False))
    headers = {"NGSILD-Tenant": tenant} if tenant else {}
    with TestClient(app) as client:
        found = client.get(
            f"{NGSI}/entities",
            params={
                "type": "https://uri.etsi.org/ngsi-ld/default-context/Streetlight",
                "limit": 1000,
                "options": "sysAttrs",
            },
            headers=headers,
        )
        assert found.status_code == 200, found.text
        near = client.get(
            f"{NGSI}/entities",
            params={
                "georel": "near;maxDistance==100",
                "geometry": "Point",
                "coordinates": "[3.87,43.61]",
                "limit": 1000,
            },
            headers=headers,
        )
        assert near.status_code == 200, near.text
        assert len(near.json()) >= 1  # the spatial index is back
    return sorted(found.json(), key=lambda e: e["id"])


def test_export_then_restore_gives_back_identical_entities(twin_dir: Path, tmp_path: Path) -> None:
    before = api_entities(twin_dir)
    assert len(before) == 300
    dump = tmp_path / "backup.nq"
    exported = urbis("export", str(dump), "--data-dir", str(twin_dir))
    assert exported.returncode == 0, exported.stderr
    assert b"exported" in exported.stderr
    assert not dump.with_name("backup.nq.part").exists()
    restored_dir = tmp_path / "restored"
    restored = urbis("restore", str(dump), "--data-dir", str(restored_dir))
    assert restored.returncode == 0, restored.stderr
    assert api_entities(restored_dir) == before
    again = urbis("restore", str(dump), "--data-dir", str(restored_dir))
    assert again.returncode == 1 and b"already holds data" in again.stderr


def test_all_tenants_into_a_directory_and_back(twin_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "backup"
    exported = urbis(
        "export", str(out), "--all-tenants", "--format", "trig", "--data-dir", str(twin_dir)
    )
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in out.iterdir()) == ["_default.trig", "other.trig"]
    restored_dir = tmp_path / "restored"
    restored = urbis("restore", str(out), "--data-dir", str(restored_dir))
    assert restored.returncode == 0, restored.stderr
    assert api_entities(restored_dir, "other") == api_entities(twin_dir, "other")
    assert len(api_entities(restored_dir)) == 300


def test_one_dataset_to_stdout_as_nquads(twin_dir: Path) -> None:
    exported = urbis("export", "-", "--dataset", "lights", "--data-dir", str(twin_dir))
    assert exported.returncode == 0, exported.stderr
    quads = list(parse(exported.stdout, format=RdfFormat.N_QUADS))
    assert quads and {q.graph_name.value for q in quads} == {"urn:urbis:dataset:lights"}
    missing = urbis("export", "-", "--dataset", "nope", "--data-dir", str(twin_dir))
    assert missing.returncode == 1 and b"no dataset 'nope'" in missing.stderr


def test_trig_by_file_suffix(twin_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "lights.trig"
    exported = urbis("export", str(target), "--dataset", "lights", "--data-dir", str(twin_dir))
    assert exported.returncode == 0, exported.stderr
    text = target.read_text()
    assert text.startswith("<urn:urbis:dataset:lights> {")
    assert len(list(parse(path=str(target), format=RdfFormat.TRIG))) > 300 * 4


# -- the API ---------------------------------------------------------------------------------


@pytest.fixture
def demo_client() -> Iterator[TestClient]:
    app = create_app(Settings(admin_token=TOKEN, demo=True, demo_live_seconds=0))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_datasets_are_listed_with_entity_counts(demo_client: TestClient) -> None:
    listed = demo_client.get("/datasets")
    assert listed.status_code == 200
    demo = [d for d in listed.json() if d["name"] == "demo"]
    assert demo == [
        {
            "name": "demo",
            "graph": "urn:urbis:dataset:demo",
            "entities": demo[0]["entities"],
            "dump": "/datasets/demo/dump",
        }
    ]
    store = demo_client.app.state.urbis.twin.tenant("").store  # type: ignore[attr-defined]
    typed = store.count(
        "SELECT (COUNT(DISTINCT ?e) AS ?n) WHERE { GRAPH <urn:urbis:dataset:demo> { ?e a ?t } "
        "FILTER(?t != <http://www.opengis.net/ont/geosparql#Geometry>) }"
    )
    assert demo[0]["entities"] == typed > 500


def test_dump_streams_nquads_or_trig_by_accept(demo_client: TestClient) -> None:
    nquads = demo_client.get("/datasets/demo/dump")
    assert nquads.status_code == 200
    assert nquads.headers["content-type"].startswith("application/n-quads")
    assert 'filename="demo.nq"' in nquads.headers["content-disposition"]
    quads = list(parse(nquads.content, format=RdfFormat.N_QUADS))
    assert len(quads) > 10_000  # more than one chunk
    trig = demo_client.get("/datasets/demo/dump", headers={"Accept": "application/trig"})
    assert trig.headers["content-type"].startswith("application/trig")
    assert set(parse(trig.content, format=RdfFormat.TRIG)) == set(quads)


def test_dump_errors(demo_client: TestClient) -> None:
    missing = demo_client.get("/datasets/nope/dump")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert "nope" in missing.json()["detail"]
    refused = demo_client.get("/datasets/demo/dump", headers={"Accept": "text/html"})
    assert refused.status_code == 406
    anonymous = TestClient(demo_client.app).get("/datasets/demo/dump")
    assert anonymous.status_code == 401
