"""A real access policy for the access-port tests, and the city it is tried on.

`CityPolicy` implements `urbis.twin.access.AccessPolicy` the way the dataspace will: it hides
one dataset (named graph) entirely, drops one attribute, coarsens the location, hides entities
marked `classified`, and leaves one dataset readable as stored (so SPARQL and dumps have
something to show). Callers it exempts (the admin, unless told otherwise) read everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.conftest import TOKEN
from urbis.api.app import create_app
from urbis.api.deps import AppState
from urbis.api.settings import Settings
from urbis.ontology import ns
from urbis.twin.access import REMOTE_GRAPH, AccessDenied, Caller
from urbis.twin.changes import WriteContext

Doc = dict[str, Any]
DEFAULT = ns.DEFAULT_DATASET  # what the API writes: readable, transformed
PUBLIC = ns.DATASET_PREFIX + "public"  # readable as stored
SECRET = ns.DATASET_PREFIX + "secret"  # hidden
TERMS = ns.DEFAULT_CONTEXT
OWNER = TERMS + "owner"  # dropped for restricted callers
CLASSIFIED = TERMS + "classified"  # an entity carrying it is hidden
LOCATION = ns.NGSI_LD + "location"  # coarsened to 0.01 degree

ENTITIES = "/ngsi-ld/v1/entities"
EXACT = [4.35671, 50.84512]  # Bin:1's location; 0.01 degree coarser it is ~600 m away
COARSE = [4.36, 50.85]


def coarse(value: Any) -> Any:
    """Every coordinate of a GeoJSON geometry rounded to 0.01 degree."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        return round(float(value), 2)
    if isinstance(value, list):
        return [coarse(v) for v in value]
    if isinstance(value, dict):
        return {k: (coarse(v) if k == "coordinates" else v) for k, v in value.items()}
    return value


class CityPolicy:
    """Hides SECRET and `classified` entities, drops `owner`, coarsens `location`."""

    def __init__(self, *, exempt_admin: bool = True) -> None:
        self.exempt_admin = exempt_admin
        self.documents_seen = 0  # how often `document` was asked: the port is really consulted

    def restricted(self, caller: Caller) -> bool:
        return not (caller.admin and self.exempt_admin)

    def graphs(self, caller: Caller, tenant: str) -> frozenset[str] | None:
        return frozenset({DEFAULT, PUBLIC, REMOTE_GRAPH}) if self.restricted(caller) else None

    def raw_graphs(self, caller: Caller, tenant: str) -> frozenset[str] | None:
        return frozenset({PUBLIC}) if self.restricted(caller) else None

    def document(self, caller: Caller, doc: Doc, graph: str) -> Doc | None:
        self.documents_seen += 1
        assert graph in (DEFAULT, REMOTE_GRAPH), f"asked about {graph}, which it hides or shows"
        if CLASSIFIED in doc:
            return None
        doc.pop(OWNER, None)
        for instance in doc.get(LOCATION, []):
            instance["value"] = coarse(instance["value"])
        return doc


class DenyingPolicy:
    """Refuses every caller but the admin, with a reason."""

    REASON = "no agreement covers this data for your purpose"

    def graphs(self, caller: Caller, tenant: str) -> frozenset[str] | None:
        if not caller.admin:
            raise AccessDenied(self.REASON)
        return None

    def raw_graphs(self, caller: Caller, tenant: str) -> frozenset[str] | None:
        return self.graphs(caller, tenant)

    def document(self, caller: Caller, doc: Doc, graph: str) -> Doc | None:
        return doc


# -- the city -----------------------------------------------------------------------------------


def point(coordinates: list[float]) -> Doc:
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": coordinates}}


def prop(value: Any) -> Doc:
    return {"type": "Property", "value": value}


BIN_1 = {
    "id": "urn:ngsi-ld:WasteBin:1",
    "type": "WasteBin",
    "fill": prop(0.5),
    "owner": prop("alice"),
    "location": point(EXACT),
}
BIN_2 = {
    "id": "urn:ngsi-ld:WasteBin:2",
    "type": "WasteBin",
    "fill": prop(0.9),
    "owner": prop("bob"),
    "location": point([4.40123, 50.86789]),
}
BIN_CLASSIFIED = {  # in the readable graph, hidden by its content
    "id": "urn:ngsi-ld:WasteBin:9",
    "type": "WasteBin",
    "fill": prop(0.8),
    "classified": prop(True),
    "location": point([4.30101, 50.80202]),
}
BENCH = {  # PUBLIC: readable as stored
    "id": "urn:ngsi-ld:Bench:1",
    "type": "Bench",
    "seats": prop(4),
    "owner": prop("city"),
    "location": point([4.35001, 50.84001]),
}
CAMERA = {  # SECRET: a type and an attribute only hidden entities have
    "id": "urn:ngsi-ld:SecretCamera:1",
    "type": "SecretCamera",
    "feed": prop("rtsp://camera-1"),
    "location": point([4.35002, 50.84002]),
}
BIN_SECRET = {  # SECRET: a visible type, counted nowhere for restricted callers
    "id": "urn:ngsi-ld:WasteBin:3",
    "type": "WasteBin",
    "fill": prop(0.7),
    "owner": prop("carol"),
    "location": point([4.35003, 50.84003]),
}
RESTRICTED_VISIBLE = {BIN_1["id"], BIN_2["id"], BENCH["id"]}
HIDDEN = {CAMERA["id"], BIN_SECRET["id"], BIN_CLASSIFIED["id"]}


def state_of(app: FastAPI) -> AppState:
    state: AppState = app.state.urbis
    return state


def store_entity(app: FastAPI, raw: Doc, graph: str, tenant: str = "") -> None:
    """Write an entity into a dataset graph through the tenant's entity service (its one write
    path, listeners included): the API writes into the default dataset only."""
    state = state_of(app)
    doc = state.reader(state.resolver.resolve(None)).entity(dict(raw))
    state.twin.tenant(tenant, create=True).create(doc, context=WriteContext.admin(), graph=graph)


def load_city(admin: TestClient) -> None:
    for raw in (BIN_1, BIN_2, BIN_CLASSIFIED):
        answer = admin.post(ENTITIES, json=raw)
        assert answer.status_code == 201, answer.text
    store_entity(admin.app, BENCH, PUBLIC)  # type: ignore[arg-type]
    store_entity(admin.app, CAMERA, SECRET)  # type: ignore[arg-type]
    store_entity(admin.app, BIN_SECRET, SECRET)  # type: ignore[arg-type]


@contextmanager
def city_app(
    policy: Any, settings: Settings | None = None, *, load: bool = True
) -> Iterator[tuple[TestClient, TestClient]]:
    """(admin, anonymous) clients of an app with `policy` installed through create_app."""
    app = create_app(settings or Settings(admin_token=TOKEN, demo=False), access=policy)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as admin:
        if load:
            load_city(admin)
        yield admin, TestClient(app)
