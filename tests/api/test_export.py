"""Export and backup: `urbis export` / `urbis restore` as a user runs them, and the dataset
routes (`GET /datasets`, `GET /datasets/{name}/dump`)."""

from __future__ import annotations

import json
import queue
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
from urbis.testing.receiver import receiving

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
    assert sorted(p.name for p in out.iterdir()) == ["_default.trig", "other.trig", "state.jsonl"]
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


# -- the state beside the RDF -----------------------------------------------------------------

LOOPBACK = ["127.0.0.1"]  # the receiver and the registered source are on loopback
SENSOR = "urn:ngsi-ld:Sensor:1"


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue[Any]]]:
    """A real HTTP server on loopback that keeps every notification POSTed to it."""
    with receiving() as (url, inbox):
        yield url, inbox


def city_app(data: Path) -> TestClient:
    settings = Settings(
        data_dir=data,
        admin_token=TOKEN,
        demo=False,
        outbound_allow=LOOPBACK,
        sources_scheduler=False,
    )
    return TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"})


def state_seen(client: TestClient, context_id: str) -> dict[str, Any]:
    """What a client sees of the state: subscriptions, registrations, a context, sources."""

    def ok(path: str, **params: str) -> Any:
        answer = client.get(path, params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    context = ok(f"{NGSI}/jsonldContexts/{context_id}", details="true")
    return {
        "subscriptions": ok(f"{NGSI}/subscriptions", options="sysAttrs"),
        "registrations": ok(f"{NGSI}/csourceRegistrations", options="sysAttrs"),
        "context": ok(f"{NGSI}/jsonldContexts/{context_id}"),
        "context kind": (context["kind"], context["createdAt"]),
        "sources": [s["id"] for s in ok("/sources")],
        "report": ok("/sources/lights/report"),
        "quarantine": ok("/sources/lights/quarantine"),
    }


def test_the_state_comes_back_with_the_twin(
    tmp_path: Path, receiver: tuple[str, queue.Queue[Any]]
) -> None:
    endpoint, inbox = receiver
    data = tmp_path / "twin"
    lights = tmp_path / "lights.csv"
    lights.write_text("ref,lat,lon,h\n1,43.61,3.87,8\n2,43.62,3.88,9\n3,43.63,3.89,x\n")
    with city_app(data) as client:
        sensor = {"id": SENSOR, "type": "Sensor", "temperature": {"type": "Property", "value": 20}}
        assert client.post(f"{NGSI}/entities", json=sensor).status_code == 201
        subscription = {
            "type": "Subscription",
            "entities": [{"type": "Sensor"}],
            "notification": {"endpoint": {"uri": endpoint}},
        }
        assert client.post(f"{NGSI}/subscriptions", json=subscription).status_code == 201
        registration = {
            "id": "urn:ngsi-ld:ContextSourceRegistration:vendor",
            "type": "ContextSourceRegistration",
            "information": [{"entities": [{"type": "WasteContainer"}]}],
            "endpoint": "http://127.0.0.1:9",
        }
        assert client.post(f"{NGSI}/csourceRegistrations", json=registration).status_code == 201
        hosted = client.post(
            f"{NGSI}/jsonldContexts", json={"@context": {"speed": "https://example.org/speed"}}
        )
        assert hosted.status_code == 201, hosted.text
        context_id = hosted.headers["location"].rsplit("/", 1)[1]
        source = {
            "id": "lights",
            "kind": "file",
            "endpoint": str(lights),
            "entity_type": "Streetlight",
            "key": "ref",
            "id_template": "urn:ngsi-ld:Streetlight:{key}",
            "mapping": [{"source": "h", "attribute": "height", "convert": "int"}],
        }
        assert client.post("/sources", json=source).status_code == 201
        first = client.post("/sources/lights/sync").json()
        assert (first["status"], first["created"], first["quarantined"]) == ("ok", 2, 1)
        before = state_seen(client, context_id)
    assert len(before["subscriptions"]) == 1 and len(before["registrations"]) == 1

    backup = tmp_path / "backup"
    exported = urbis("export", str(backup), "--all-tenants", "--data-dir", str(data))
    assert exported.returncode == 0, exported.stderr
    assert b"exported the state" in exported.stderr
    restored = tmp_path / "restored"
    loaded = urbis("restore", str(backup), "--data-dir", str(restored))
    assert loaded.returncode == 0, loaded.stderr
    assert b"restored the state" in loaded.stderr

    with city_app(restored) as client:
        assert state_seen(client, context_id) == before
        again = client.post("/sources/lights/sync").json()
        assert again["status"] == "ok" and again["full"] is False  # the file's cursor is back
        assert (again["created"], again["updated"], again["removed"]) == (0, 0, 0)
        changed = {"temperature": {"type": "Property", "value": 31}}
        patched = client.patch(f"{NGSI}/entities/{SENSOR}/attrs", json=changed)
        assert patched.status_code == 204, patched.text
        notified = inbox.get(timeout=10)
        assert notified["subscriptionId"] == before["subscriptions"][0]["id"]
        assert notified["data"][0]["temperature"]["value"] == 31


def test_restoring_the_state_is_all_or_nothing_and_old_exports_still_restore(
    twin_dir: Path, tmp_path: Path
) -> None:
    dump = tmp_path / "backup.nq"
    exported = urbis("export", str(dump), "--data-dir", str(twin_dir))
    assert exported.returncode == 0, exported.stderr
    state_file = tmp_path / "backup.state.jsonl"
    lines = state_file.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[0])["urbisState"] == 1 and json.loads(lines[-1])["end"]

    state_file.write_bytes(b"".join(lines[:-1]))  # cut short: refused before anything is written
    retried = tmp_path / "retried"
    refused = urbis("restore", str(dump), "--data-dir", str(retried))
    assert refused.returncode == 1 and b"cut short" in refused.stderr
    state_file.write_bytes(b"".join(lines))  # the whole file: the same directory takes it
    again = urbis("restore", str(dump), "--data-dir", str(retried))
    assert again.returncode == 0, again.stderr  # neither "already holds data" nor "... state"
    assert len(api_entities(retried)) == 300

    state_file.unlink()  # an export written before the state was part of it: RDF only
    old = tmp_path / "old"
    restored = urbis("restore", str(dump), "--data-dir", str(old))
    assert restored.returncode == 0, restored.stderr
    assert b"restored the state" not in restored.stderr
    assert len(api_entities(old)) == 300


def test_a_data_directory_that_holds_state_is_not_restored_into(
    twin_dir: Path, tmp_path: Path
) -> None:
    backup = tmp_path / "backup"
    assert (
        urbis("export", str(backup), "--all-tenants", "--data-dir", str(twin_dir)).returncode == 0
    )
    target = tmp_path / "busy"
    with city_app(target) as client:
        hosted = client.post(f"{NGSI}/jsonldContexts", json={"@context": {"a": "https://a.org/a"}})
        assert hosted.status_code == 201
    refused = urbis("restore", str(backup), "--data-dir", str(target))
    assert refused.returncode == 1 and b"already holds state" in refused.stderr
    assert not (target / "tenants").exists() or api_entities_count(target) == 0


def api_entities_count(data: Path) -> int:
    with city_app(data) as client:
        found = client.get(f"{NGSI}/entities", params={"type": "Streetlight", "limit": 1000})
        assert found.status_code == 200, found.text
        return len(found.json())


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
