"""SHACL shapes of the city types, checked on the plain RDF view the twin writes.

The demo city and the Smart Data Models examples the API accepts must conform; entities broken
by hand (a fill level of 1.7, no location, a status outside the enumeration) must be reported
on the right property path.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import rdflib
from fastapi.testclient import TestClient

from tests.api.test_smart_data_models import MALFORMED, examples, local_contexts
from tests.conftest import REFERENCE, shared_or_skip
from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.demo import city as demo
from urbis.demo.loading import demo_terms, load_demo
from urbis.ontology.shapes import (
    Report,
    dataset_quads,
    graph_from_quads,
    prefixes,
    shapes_graph,
    sparql_prefixes,
    validate,
    vocabulary_graph,
)
from urbis.twin.changes import WriteContext
from urbis.twin.context import ContextResolver
from urbis.twin.model import EntityReader

SH = rdflib.Namespace("http://www.w3.org/ns/shacl#")
SDM = "https://smartdatamodels.org/"
WASTE = SDM + "dataModel.WasteManagement/"
LIGHT = SDM + "dataModel.Streetlighting/"
PARK = SDM + "dataModel.Parking/"
ENV = SDM + "dataModel.Environment/"
DEV = SDM + "dataModel.Device/"
ALERT = SDM + "dataModel.Alert/"
NGSI = "https://uri.etsi.org/ngsi-ld/"
GEO = "http://www.opengis.net/ont/geosparql#"
REQUIRED_TYPES = (
    "WasteContainer",
    "Streetlight",
    "AirQualityObserved",
    "FloodMonitoring",
    "WaterObserved",
    "ParkingSpot",
    "Alert",
    "Device",
)


@pytest.fixture(scope="module")
def app_client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(admin_token="t", demo=False))) as client:
        yield client


@pytest.fixture(scope="module")
def city() -> list[dict[str, Any]]:
    return list(demo.generate(seed=42))


def write(client: TestClient, entities: list[dict[str, Any]], tenant: str) -> rdflib.Graph:
    """Write compacted demo-style entities through the entity service of a fresh tenant."""
    state = client.app.state.urbis  # type: ignore[attr-defined]
    service = state.twin.tenant(tenant, create=True)
    reader = EntityReader(demo_terms(state.resolver, state.registry))
    docs = [reader.entity(e) for e in entities]
    result = service.upsert_many(
        [(d["id"], d) for d in docs],
        context=WriteContext(reason="test"),
        mode="replace",
        graph="urn:urbis:dataset:t",
    )
    assert len(result.success) == len(docs), result.errors
    return graph_from_quads(dataset_quads(service.store.store))


def first(city: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(e for e in city if e["type"] == kind))


# --- the packaged files ------------------------------------------------------------------------


def test_every_required_type_has_a_shape() -> None:
    targets = {str(t).rsplit("/", 1)[-1] for t in shapes_graph().objects(None, SH.targetClass)}
    assert set(REQUIRED_TYPES) <= targets


def test_shapes_are_valid_shacl() -> None:
    """The shapes graph itself conforms to the SHACL-for-SHACL constraints pyshacl checks."""
    report = validate(rdflib.Graph())  # an empty data graph: no target, nothing to report
    assert report.conforms and not report.violations


def test_vocabulary_declares_the_twin_namespaces() -> None:
    declared = prefixes()
    assert declared["urbis"] == "https://urbis.city/ns#"
    assert declared["geo"] == GEO
    assert declared["waste"] == WASTE
    for p in ("sosa", "ssn", "prov", "dcat", "dct", "qudt", "unit", "ngsi", "sdm"):
        assert p in declared
    assert "PREFIX urbis: <https://urbis.city/ns#>" in sparql_prefixes()
    vocab = vocabulary_graph()
    sosa = rdflib.Namespace("http://www.w3.org/ns/sosa/")
    assert (rdflib.URIRef(ENV + "no2"), rdflib.RDF.type, sosa.ObservableProperty) in vocab
    assert (
        rdflib.URIRef(WASTE + "WasteContainer"),
        rdflib.RDFS.subClassOf,
        rdflib.URIRef(GEO + "Feature"),
    ) in vocab


def test_vocabulary_covers_the_urbis_terms_the_twin_writes() -> None:
    """Every urbis: predicate written by twin/rdf.py and twin/provenance.py is declared."""
    root = Path(__file__).resolve().parents[2]
    source = (root / "src/urbis/twin/rdf.py").read_text() + (
        root / "src/urbis/twin/provenance.py"
    ).read_text()
    vocab = vocabulary_graph()
    declared = {str(s) for s in vocab.subjects(rdflib.RDF.type, None)}
    used = {"https://urbis.city/ns#" + n for n in ("document", "dataset", "connector", "status")}
    for name in ("runId", "created", "updated", "removed", "quarantined"):
        assert f'"{name}"' in source
        used.add("https://urbis.city/ns#" + name)
    assert used <= declared


# --- what must conform ------------------------------------------------------------------------


def test_demo_city_conforms(app_client: TestClient) -> None:
    state = app_client.app.state.urbis  # type: ignore[attr-defined]
    load_demo(state.sources)
    data = graph_from_quads(dataset_quads(state.twin.tenant("").store.store))
    kinds = {str(o).rsplit("/", 1)[-1] for o in data.objects(None, rdflib.RDF.type)}
    assert set(REQUIRED_TYPES) <= kinds
    report = validate(data)
    assert report.conforms, report.text


def accepted_examples() -> list[Path]:
    return [p for p in examples() if p.parent.name not in MALFORMED]


@pytest.mark.parametrize("path", accepted_examples(), ids=lambda p: p.parent.name)
def test_smart_data_models_example_conforms(path: Path) -> None:
    shared_or_skip(REFERENCE / "smart-data-models")
    with TestClient(create_app(Settings(admin_token="t", demo=False))) as client:
        state = client.app.state.urbis  # type: ignore[attr-defined]
        state.resolver = ContextResolver(
            registry=state.registry, transport=httpx.MockTransport(local_contexts)
        )
        created = client.post(
            "/ngsi-ld/v1/entities",
            content=path.read_bytes(),
            headers={"Content-Type": "application/ld+json", "Authorization": "Bearer t"},
        )
        assert created.status_code == 201, created.text
        data = graph_from_quads(dataset_quads(state.twin.tenant("").store.store))
    entity = rdflib.URIRef(orjson.loads(path.read_bytes())["id"])
    assert (entity, rdflib.RDF.type, None) in data
    report = validate(data)
    assert report.conforms, report.text


# --- what must not ------------------------------------------------------------------------------


def broken(report: Report, entity: dict[str, Any], path: str) -> None:
    assert not report.conforms
    assert path in report.paths(entity["id"]), report.text


def test_overfull_bin_violates_filling_level(app_client: TestClient, city: list[Any]) -> None:
    bin_ = first(city, "WasteContainer")
    bin_["fillingLevel"]["value"] = 1.7
    report = validate(write(app_client, [bin_], "overfull"))
    broken(report, bin_, WASTE + "fillingLevel")
    assert report.paths(bin_["id"]) == {WASTE + "fillingLevel"}


def test_negative_and_textual_fill_levels_violate(app_client: TestClient, city: list[Any]) -> None:
    low, text = first(city, "WasteContainer"), first(city, "WasteContainer")
    low["fillingLevel"]["value"] = -0.1
    text["id"] = text["id"] + "-text"
    text["refDevice"]["object"] = low["refDevice"]["object"]
    text["fillingLevel"]["value"] = "full"
    report = validate(write(app_client, [low, text], "fills"))
    broken(report, low, WASTE + "fillingLevel")
    broken(report, text, WASTE + "fillingLevel")


@pytest.mark.parametrize(
    "kind", ["Streetlight", "WasteContainer", "ParkingSpot", "AirQualityObserved"]
)
def test_missing_location_violates(app_client: TestClient, city: list[Any], kind: str) -> None:
    entity = first(city, kind)
    del entity["location"]
    report = validate(write(app_client, [entity], f"noloc-{kind.lower()}"))
    broken(report, entity, GEO + "hasGeometry")


def test_missing_location_is_fine_where_the_schema_allows_it(
    app_client: TestClient, city: list[Any]
) -> None:
    device = first(city, "Device")
    del device["location"]
    assert validate(write(app_client, [device], "noloc-device")).conforms


@pytest.mark.parametrize(
    ("kind", "attr", "value", "path"),
    [
        ("Streetlight", "status", "exploded", NGSI + "status"),
        ("Streetlight", "powerState", "dimmed", LIGHT + "powerState"),
        ("WasteContainer", "status", "full", NGSI + "status"),
        ("WasteContainer", "storedWasteKind", "nuclear", WASTE + "storedWasteKind"),
        ("ParkingSpot", "status", "parked", NGSI + "status"),
        ("Alert", "severity", "apocalyptic", ALERT + "severity"),
        ("Device", "batteryLevel", 1.5, DEV + "batteryLevel"),
        ("AirQualityObserved", "no2", -3.0, ENV + "no2"),
        ("AirQualityObserved", "relativeHumidity", 54, ENV + "relativeHumidity"),
        ("WaterObserved", "waterLevel", -1.0, ENV + "waterLevel"),
        ("FloodMonitoring", "currentLevel", "high", ENV + "currentLevel"),
    ],
)
def test_bad_value_violates_on_its_path(
    app_client: TestClient, city: list[Any], kind: str, attr: str, value: Any, path: str
) -> None:
    entity = first(city, kind)
    entity[attr]["value"] = value
    report = validate(write(app_client, [entity], f"bad-{kind.lower()}-{attr.lower()}"))
    broken(report, entity, path)


@pytest.mark.parametrize(
    ("kind", "attr", "path"),
    [
        ("Streetlight", "status", NGSI + "status"),
        ("ParkingSpot", "refParkingSite", PARK + "refParkingSite"),
        ("Alert", "dateIssued", ALERT + "dateIssued"),
        ("Alert", "alertSource", ALERT + "alertSource"),
        ("Device", "controlledProperty", DEV + "controlledProperty"),
        ("AirQualityObserved", "dateObserved", SDM + "dateObserved"),
        ("WaterObserved", "dateObserved", SDM + "dateObserved"),
    ],
)
def test_missing_required_attribute_violates(
    app_client: TestClient, city: list[Any], kind: str, attr: str, path: str
) -> None:
    entity = first(city, kind)
    del entity[attr]
    report = validate(write(app_client, [entity], f"missing-{kind.lower()}-{attr.lower()}"))
    broken(report, entity, path)


def test_alert_category_checked_under_either_iri(app_client: TestClient, city: list[Any]) -> None:
    """The packaged context expands an Alert's category to WasteManagement's IRI."""
    alert = first(city, "Alert")
    alert["category"]["value"] = "zombies"
    report = validate(write(app_client, [alert], "bad-alert-category"))
    assert not report.conforms
    assert any(v.focus == alert["id"] and "category" in v.message for v in report.violations)
