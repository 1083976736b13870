"""Context source registrations: CRUD, validation, persistence, and the cache after changes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TOKEN
from urbis.api.app import create_app
from urbis.api.settings import Settings

URL = "/ngsi-ld/v1/csourceRegistrations"
NS = "https://example.org/city#"
INLINE_CONTEXT = {"WasteContainer": f"{NS}WasteContainer", "fillingLevel": f"{NS}fillingLevel"}
LOOPBACK = ["127.0.0.1"]  # the registrations name loopback endpoints: past the outbound guard


@pytest.fixture
def settings() -> Settings:
    return Settings(admin_token=TOKEN, demo=False, outbound_allow=LOOPBACK)


def registration(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "urn:ngsi-ld:ContextSourceRegistration:r1",
        "type": "ContextSourceRegistration",
        "information": [
            {"entities": [{"type": "WasteContainer"}], "propertyNames": ["fillingLevel"]}
        ],
        "endpoint": "http://127.0.0.1:9",
    }
    body.update(changes)
    return body


def ld(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "@context": [INLINE_CONTEXT]}


def create(client: TestClient, body: dict[str, Any], **headers: str) -> Any:
    return client.post(
        URL, json=ld(body), headers={"Content-Type": "application/ld+json", **headers}
    )


def test_create_then_retrieve_compacts_with_the_callers_context(client: TestClient) -> None:
    r = create(client, registration(mode="auxiliary", registrationName="bins"))
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{URL}/urn:ngsi-ld:ContextSourceRegistration:r1"
    # Without the context, names come back expanded: they were stored as IRIs.
    got = client.get(r.headers["location"]).json()
    assert got["information"][0]["entities"][0]["type"] == f"{NS}WasteContainer"
    assert got["information"][0]["propertyNames"] == [f"{NS}fillingLevel"]
    assert got["mode"] == "auxiliary"
    assert got["operations"] == ["federationOps"]
    assert got["registrationName"] == "bins"


def test_generated_id_and_default_mode(client: TestClient) -> None:
    body = registration()
    del body["id"]
    r = create(client, body)
    assert r.status_code == 201
    location = r.headers["location"]
    assert location.startswith(f"{URL}/urn:ngsi-ld:ContextSourceRegistration:")
    assert client.get(location).json()["mode"] == "inclusive"


def test_duplicate_id_is_409(client: TestClient) -> None:
    assert create(client, registration()).status_code == 201
    r = create(client, registration())
    assert r.status_code == 409
    assert r.json()["type"].endswith("AlreadyExists")


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"type": "Registration"}, 'type must be "ContextSourceRegistration"'),
        ({"information": []}, "at least one RegistrationInfo"),
        ({"information": {"entities": []}}, "information must be a JSON array"),
        ({"information": [{}]}, "needs at least one of entities"),
        ({"information": [{"entities": [{"id": "urn:a"}]}]}, "needs a type"),
        (
            {"information": [{"entities": [{"type": "T", "id": "urn:a", "idPattern": ".*"}]}]},
            "both id and idPattern",
        ),
        ({"information": [{"entities": [{"type": "T", "idPattern": "("}]}]}, "regular expression"),
        ({"information": [{"entities": [{"type": "T", "id": "not a uri"}]}]}, "entities[0].id"),
        ({"information": [{"propertyNames": []}]}, "must not be empty"),
        ({"information": [{"colour": "red"}]}, "unknown members: colour"),
        ({"endpoint": "ftp://example.org"}, "absolute http(s) URL"),
        ({"endpoint": 5}, "endpoint must be a URL string"),
        ({"mode": "sometimes"}, "mode must be one of"),
        ({"operations": ["fly"]}, "unknown operation 'fly'"),
        ({"operations": []}, "operations must not be empty"),
        ({"contextSourceInfo": [{"key": "X-A"}]}, "contextSourceInfo[0] must be"),
        ({"contextSourceInfo": [{"key": "bad key", "value": "v"}]}, "not a valid HTTP header"),
        ({"contextSourceInfo": [{"key": "Host", "value": "v"}]}, "reserved"),
        ({"contextSourceInfo": [{"key": "X-A", "value": "a\r\nB: c"}]}, "line break"),
        ({"expiresAt": "tomorrow"}, "expiresAt must be an ISO 8601"),
        ({"tenant": "no spaces"}, "invalid tenant"),
        ({"management": {"timeout": -1}}, "management.timeout must be a positive"),
        ({"management": {"retries": 3}}, "unknown members: retries"),
        (
            {
                "observationInterval": {
                    "startAt": "2024-01-02T00:00:00Z",
                    "endAt": "2024-01-01T00:00:00Z",
                }
            },
            "endAt must be after startAt",
        ),
        ({"mode": "exclusive"}, "names each entity by id"),
        (
            {
                "mode": "exclusive",
                "information": [{"entities": [{"type": "T", "id": "urn:a"}]}],
            },
            "no propertyNames or relationshipNames",
        ),
    ],
)
def test_validation_errors_are_precise(
    client: TestClient, changes: dict[str, Any], detail: str
) -> None:
    body = registration(**changes)
    if "information" in changes and changes["information"] is None:
        del body["information"]
    r = create(client, body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert detail in r.json()["detail"]


def test_missing_endpoint_and_non_object(client: TestClient) -> None:
    body = registration()
    del body["endpoint"]
    assert "needs 'endpoint'" in create(client, body).json()["detail"]
    r = client.post(URL, json=[1], headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert "JSON object" in r.json()["detail"]


def test_writes_need_the_admin_token(anonymous: TestClient, client: TestClient) -> None:
    r = anonymous.post(
        URL, json=ld(registration()), headers={"Content-Type": "application/ld+json"}
    )
    assert r.status_code == 401
    assert create(client, registration()).status_code == 201
    rid = registration()["id"]
    assert anonymous.delete(f"{URL}/{rid}").status_code == 401
    assert anonymous.patch(f"{URL}/{rid}", json={"mode": "auxiliary"}).status_code == 401
    assert anonymous.get(f"{URL}/{rid}").status_code == 200  # reads are public


def test_context_source_info_values_are_for_the_admin_only(
    anonymous: TestClient, client: TestClient
) -> None:
    info = [{"key": "Authorization", "value": "Bearer secret"}]
    assert create(client, registration(contextSourceInfo=info)).status_code == 201
    rid = registration()["id"]
    assert client.get(f"{URL}/{rid}").json()["contextSourceInfo"] == info
    shown = anonymous.get(f"{URL}/{rid}").json()["contextSourceInfo"]
    assert shown == [{"key": "Authorization", "value": "********"}]


def test_query_filters_by_type_id_pattern_and_attrs(client: TestClient) -> None:
    bins = registration()
    lights = registration(
        id="urn:ngsi-ld:ContextSourceRegistration:r2",
        information=[{"entities": [{"type": "StreetLight", "idPattern": "^urn:light:"}]}],
    )
    one = registration(
        id="urn:ngsi-ld:ContextSourceRegistration:r3",
        information=[{"entities": [{"type": "StreetLight", "id": "urn:light:9"}]}],
    )
    for body in (bins, lights, one):
        assert create(client, body).status_code == 201

    def ids(**params: str) -> list[str]:
        r = client.get(URL, params=params)
        assert r.status_code == 200, r.text
        return sorted(x["id"][-2:] for x in r.json())

    light = "https://uri.etsi.org/ngsi-ld/default-context/StreetLight"
    assert ids() == ["r1", "r2", "r3"]
    assert ids(type=f"{NS}WasteContainer") == ["r1"]
    assert ids(type=light) == ["r2", "r3"]
    assert ids(type=light, id="urn:light:1") == ["r2"]
    assert ids(id="urn:light:9") == ["r1", "r2", "r3"]  # r1 holds any WasteContainer
    assert ids(idPattern="^urn:bin") == ["r1", "r2"]  # r3 names urn:light:9 only
    assert ids(attrs=f"{NS}fillingLevel") == ["r1", "r2", "r3"]
    assert ids(attrs="somethingElse") == ["r2", "r3"]
    r = client.get(f"{URL}?limit=1&offset=1&count=true")
    assert r.headers["NGSILD-Results-Count"] == "3"
    assert len(r.json()) == 1
    assert client.get(f"{URL}?idPattern=(").status_code == 400
    assert client.get(f"{URL}?limit=5000").status_code == 403


def test_patch_changes_what_the_next_read_sees(client: TestClient) -> None:
    """Registration cache errors: after PATCH/DELETE the very next read uses the new state."""
    rid = registration()["id"]
    assert create(client, registration()).status_code == 201
    r = client.patch(
        f"{URL}/{rid}",
        json={"endpoint": "http://127.0.0.1:10", "mode": "auxiliary", "expiresAt": None},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 204, r.text
    got = client.get(f"{URL}/{rid}").json()
    assert (got["endpoint"], got["mode"]) == ("http://127.0.0.1:10", "auxiliary")
    # information kept: the patch did not name it
    assert got["information"][0]["propertyNames"] == [f"{NS}fillingLevel"]
    bad = client.patch(f"{URL}/{rid}", json={"mode": "often"})
    assert bad.status_code == 400
    assert client.get(f"{URL}/{rid}").json()["mode"] == "auxiliary"  # nothing half-written
    assert client.patch(f"{URL}/{rid}", json={"endpoint": None}).status_code == 400
    assert client.patch(f"{URL}/{rid}", json={"id": "urn:other"}).status_code == 400
    assert client.patch(f"{URL}/{rid}", json={"timesSent": 3}).status_code == 400
    assert client.delete(f"{URL}/{rid}").status_code == 204
    assert client.get(f"{URL}/{rid}").status_code == 404
    assert client.get(URL).json() == []
    assert client.delete(f"{URL}/{rid}").status_code == 404
    assert client.patch(f"{URL}/{rid}", json={"mode": "auxiliary"}).status_code == 404


def test_patch_information_uses_the_request_context(client: TestClient) -> None:
    rid = registration()["id"]
    assert create(client, registration()).status_code == 201
    r = client.patch(
        f"{URL}/{rid}",
        json={
            "information": [{"entities": [{"type": "WasteContainer"}]}],
            "@context": [INLINE_CONTEXT],
        },
        headers={"Content-Type": "application/ld+json"},
    )
    assert r.status_code == 204, r.text
    got = client.get(f"{URL}/{rid}").json()
    assert got["information"] == [{"entities": [{"type": f"{NS}WasteContainer"}]}]


def test_json_ld_response_carries_the_context(client: TestClient) -> None:
    assert create(client, registration()).status_code == 201
    r = client.get(URL, headers={"Accept": "application/ld+json"})
    assert r.headers["content-type"].startswith("application/ld+json")
    assert "@context" in r.json()[0]
    sys_attrs = client.get(f"{URL}?options=sysAttrs").json()[0]
    assert sys_attrs["createdAt"] and sys_attrs["modifiedAt"]


def test_tenants_are_apart(client: TestClient) -> None:
    assert create(client, registration(), **{"NGSILD-Tenant": "east"}).status_code == 201
    assert client.get(URL).json() == []
    assert len(client.get(URL, headers={"NGSILD-Tenant": "east"}).json()) == 1
    assert client.get(URL, headers={"NGSILD-Tenant": "nowhere"}).status_code == 404


@pytest.fixture
def on_disk(tmp_path: Path) -> Iterator[Settings]:
    yield Settings(admin_token=TOKEN, data_dir=tmp_path / "twin", outbound_allow=LOOPBACK)


def test_registrations_survive_a_restart(on_disk: Settings) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(on_disk), headers=headers) as first:
        assert create(first, registration(management={"timeout": 250})).status_code == 201
        rid = registration()["id"]
        patched = first.patch(f"{URL}/{rid}", json={"mode": "auxiliary"})
        assert patched.status_code == 204
    with TestClient(create_app(on_disk), headers=headers) as second:
        got = second.get(f"{URL}/{rid}").json()
        assert got["mode"] == "auxiliary"
        assert got["management"] == {"timeout": 250}
        assert got["information"][0]["propertyNames"] == [f"{NS}fillingLevel"]
        assert second.delete(f"{URL}/{rid}").status_code == 204
    with TestClient(create_app(on_disk), headers=headers) as third:
        assert third.get(URL).json() == []


def test_exclusive_or_redirect_over_local_data_is_409(client: TestClient) -> None:
    """Clause 5.9.2.4: such a registration would hide data the local twin holds."""
    bin_ = {"id": "urn:bin:1", "type": "WasteContainer", "fillingLevel": 0.5}
    r = client.post(
        "/ngsi-ld/v1/entities", json=ld(bin_), headers={"Content-Type": "application/ld+json"}
    )
    assert r.status_code == 201, r.text
    exclusive = registration(
        mode="exclusive",
        information=[
            {
                "entities": [{"type": "WasteContainer", "id": "urn:bin:1"}],
                "propertyNames": ["fillingLevel"],
            }
        ],
    )
    r = create(client, exclusive)
    assert r.status_code == 409
    assert "fillingLevel" in r.json()["detail"] and "urn:bin:1" in r.json()["detail"]
    other_attr = registration(
        mode="exclusive",
        information=[
            {
                "entities": [{"type": "WasteContainer", "id": "urn:bin:1"}],
                "propertyNames": ["colour"],
            }
        ],
    )
    assert create(client, other_attr).status_code == 201
    redirect = registration(id="urn:ngsi-ld:ContextSourceRegistration:r9", mode="redirect")
    assert create(client, redirect).status_code == 409
    inclusive = registration(id="urn:ngsi-ld:ContextSourceRegistration:r9")
    assert create(client, inclusive).status_code == 201
    patched = client.patch(
        f"{URL}/urn:ngsi-ld:ContextSourceRegistration:r9", json={"mode": "redirect"}
    )
    assert patched.status_code == 409
    got = client.get(f"{URL}/urn:ngsi-ld:ContextSourceRegistration:r9").json()
    assert got["mode"] == "inclusive"
