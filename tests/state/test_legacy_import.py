"""A data directory written by Urbis before the state store keeps its state on upgrade.

The files are built here exactly as the old code wrote them (one JSON file per tenant for
subscriptions and registrations, one per context, TOML definitions, per-source JSON state and
a JSON Lines quarantine); the first start imports them once, renames the old folders, and the
API answers as it did before the upgrade.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.conftest import TOKEN
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.connectors.files import fingerprint
from urbis.twin.state import open_state_store

NGSI = "/ngsi-ld/v1"
SUBSCRIPTION = "urn:ngsi-ld:Subscription:old"
REGISTRATION = "urn:ngsi-ld:ContextSourceRegistration:old"
CONTEXT_ID = "5e0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b"
CREATED = "2025-06-01T10:00:00.000000Z"
REPORT = {
    "source": "lights",
    "run_id": "lights:2025-06-01T10:00:00Z",
    "status": "ok",
    "started": "2025-06-01T10:00:00Z",
    "ended": "2025-06-01T10:00:01Z",
    "created": 2,
    "updated": 0,
    "unchanged": 0,
    "removed": 0,
    "quarantined": 1,
    "repaired": 0,
    "retries": 0,
    "duration": 0.4,
    "full": True,
    "resumed": None,
    "errors": [],
}


def subscription_file_entry(tenant_receiver: str) -> dict[str, Any]:
    """`Subscription.to_json()` as the old SubscriptionStore wrote it."""
    return {
        "body": {
            "type": "Subscription",
            "entities": [{"type": "Sensor"}],
            "notification": {"endpoint": {"uri": tenant_receiver}},
            "id": SUBSCRIPTION,
        },
        "context": None,
        "createdAt": CREATED,
        "modifiedAt": CREATED,
        "delivery": {"timesSent": 3, "timesFailed": 1, "lastSuccess": CREATED, "status": "ok"},
    }


def write_old_data_dir(data: Path, csv: Path) -> None:
    (data / "subscriptions").mkdir(parents=True)
    for tenant in ("_default", "city"):  # SubscriptionStore._save: orjson, indented by 2
        entries = [subscription_file_entry("http://127.0.0.1:9/notify")]
        (data / "subscriptions" / f"{tenant}.json").write_bytes(
            orjson.dumps(entries, option=orjson.OPT_INDENT_2)
        )
    (data / "registrations").mkdir()
    registration = {  # render(reg, _IdentityTerms()) plus the timestamps, json.dumps indent=1
        "id": REGISTRATION,
        "type": "ContextSourceRegistration",
        "information": [
            {
                "entities": [{"type": "https://uri.etsi.org/ngsi-ld/default-context/Bin"}],
                "propertyNames": ["https://uri.etsi.org/ngsi-ld/default-context/fillingLevel"],
            }
        ],
        "endpoint": "http://127.0.0.1:9",
        "mode": "inclusive",
        "operations": ["federationOps"],
        "createdAt": CREATED,
        "modifiedAt": CREATED,
    }
    (data / "registrations" / "_default.json").write_text(json.dumps([registration], indent=1))
    (data / "contexts").mkdir()
    context = {"kind": "Hosted", "createdAt": 1748772000.25, "@context": {"speed": "ex:speed"}}
    (data / "contexts" / f"{CONTEXT_ID}.json").write_bytes(orjson.dumps(context))
    (data / "sources").mkdir()
    (data / "sources" / "lights.toml").write_text(
        "# the city's street lights\n"
        f'id = "lights"\nkind = "file"\nendpoint = "{csv}"\nentity_type = "Streetlight"\n'
        'key = "ref"\nid_template = "urn:ngsi-ld:Streetlight:{key}"\n',
        encoding="utf-8",
    )
    state = data / "connectors" / "lights"
    state.mkdir(parents=True)  # SyncState.put: json.dumps(value, ensure_ascii=False, default=str)
    (state / "cursor.json").write_text(json.dumps({"file": fingerprint(csv)}))
    (state / "report.json").write_text(json.dumps(REPORT))
    (state / "tombstones.json").write_text(json.dumps({"urn:ngsi-ld:Streetlight:9": CREATED}))
    entry = {  # Quarantine._write: one QuarantineEntry.to_dict() a line
        "source": "lights",
        "key": "3",
        "reason": "cannot convert 'x' to int",
        "raw": {"ref": "3", "h": "x"},
        "time": CREATED,
        "run_id": REPORT["run_id"],
    }
    (state / "quarantine.jsonl").write_text(json.dumps(entry, ensure_ascii=False) + "\n")


@pytest.fixture
def old_dir(tmp_path: Path) -> Path:
    csv = tmp_path / "lights.csv"
    csv.write_text("ref,lat,lon\n1,43.61,3.87\n2,43.62,3.88\n")
    data = tmp_path / "twin"
    write_old_data_dir(data, csv)
    return data


def app(data: Path) -> TestClient:
    settings = Settings(
        data_dir=data, admin_token=TOKEN, demo=False, sources_scheduler=False, open=False
    )
    return TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def client(old_dir: Path) -> Iterator[TestClient]:
    with app(old_dir) as started:
        yield started


def test_the_first_start_imports_every_old_file(client: TestClient, old_dir: Path) -> None:
    sub = client.get(f"{NGSI}/subscriptions/{SUBSCRIPTION}", params={"options": "sysAttrs"})
    assert sub.status_code == 200, sub.text
    body = sub.json()
    assert body["createdAt"] == CREATED and body["notification"]["timesSent"] == 3
    tenant = {"NGSILD-Tenant": "city"}  # its twin holds data: a write made it, old or new
    sensor = {"id": "urn:ngsi-ld:Sensor:1", "type": "Sensor"}
    assert client.post(f"{NGSI}/entities", json=sensor, headers=tenant).status_code == 201
    city = client.get(f"{NGSI}/subscriptions", headers=tenant)
    assert [s["id"] for s in city.json()] == [SUBSCRIPTION]  # the other tenant's file too

    reg = client.get(f"{NGSI}/csourceRegistrations/{REGISTRATION}")
    assert reg.status_code == 200, reg.text
    assert reg.json()["endpoint"] == "http://127.0.0.1:9"

    context = client.get(f"{NGSI}/jsonldContexts/{CONTEXT_ID}")
    assert context.json() == {"@context": {"speed": "ex:speed"}}
    details = client.get(f"{NGSI}/jsonldContexts/{CONTEXT_ID}", params={"details": "true"})
    assert details.json()["createdAt"] == "2025-06-01T10:00:00.250000Z"

    assert [s["id"] for s in client.get("/sources").json()] == ["lights"]
    assert client.get("/sources/lights/report").json() == REPORT
    [quarantined] = client.get("/sources/lights/quarantine").json()
    assert quarantined["key"] == "3" and "cannot convert" in quarantined["reason"]
    assert client.get("/sources/lights").json()["quarantined"] == 1
    again = client.post("/sources/lights/sync").json()
    assert again["status"] == "ok" and again["full"] is False  # the old cursor: file unchanged

    for folder in ("subscriptions", "registrations", "contexts", "sources", "connectors"):
        assert not (old_dir / folder).exists()
        assert (old_dir / f"{folder}.imported").is_dir()  # kept, for a downgrade


def test_the_import_happens_once(old_dir: Path) -> None:
    with app(old_dir) as first:
        assert first.delete(f"{NGSI}/subscriptions/{SUBSCRIPTION}").status_code == 204
        assert first.delete(f"{NGSI}/jsonldContexts/{CONTEXT_ID}").status_code == 204
    # A start that stopped between the import and the rename: the folders are back.
    for folder in ("subscriptions", "contexts"):
        (old_dir / f"{folder}.imported").rename(old_dir / folder)
    with app(old_dir) as second:
        assert second.get(f"{NGSI}/subscriptions/{SUBSCRIPTION}").status_code == 404
        assert second.get(f"{NGSI}/jsonldContexts/{CONTEXT_ID}").status_code == 404
    assert (old_dir / "subscriptions.imported").is_dir()
    assert not (old_dir / "subscriptions").exists()


def test_a_definition_file_put_in_the_old_folder_later_is_reported(client: TestClient) -> None:
    settings: Settings = client.app.state.urbis.settings  # type: ignore[attr-defined]
    assert settings.data_dir is not None
    (settings.data_dir / "sources").mkdir()
    (settings.data_dir / "sources" / "late.toml").write_text('id = "late"\nkind = "file"\n')
    listed = client.get("/sources")
    assert [s["id"] for s in listed.json()] == ["lights"]
    assert listed.headers["Urbis-Invalid-Sources"] == "1"


def test_an_unreadable_old_file_stops_the_start_and_imports_nothing(old_dir: Path) -> None:
    (old_dir / "subscriptions" / "city.json").write_text("[{not json")
    with pytest.raises(ValueError, match=r"subscriptions file .*city\.json"):
        create_app(Settings(data_dir=old_dir, admin_token=TOKEN, demo=False))
    state = open_state_store(old_dir)
    assert state.list("subscriptions", "") == []  # not even the good file of the other tenant
    assert (old_dir / "subscriptions" / "_default.json").is_file()  # nothing was moved
    assert state.get("contexts", "", CONTEXT_ID) is not None  # the other folders went in
