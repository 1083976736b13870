"""The connector framework: definitions, registry, harmonisation, sync semantics, quarantine."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, ClassVar

import pytest

from urbis.api.app import build_state
from urbis.api.settings import Settings
from urbis.connectors.base import (
    BadRecord,
    Connector,
    Cursor,
    Feature,
    NgsiEntity,
    Record,
    SourceUnavailable,
)
from urbis.connectors.definition import DefinitionError, parse_definition, read_definition, to_toml
from urbis.connectors.harmonize import Harmonizer, harmonize_geometry, to_utc
from urbis.connectors.registry import ConnectorRegistry
from urbis.connectors.sync import SyncManager
from urbis.connectors.units import unit_code
from urbis.ontology import ns
from urbis.twin.context import ContextResolver
from urbis.twin.provenance import METADATA_GRAPH

# -- a scripted source, so each sync semantic can be driven exactly -----------------------------


class ScriptedConnector(Connector):
    """Yields the Features in SCRIPT[source id]; can be down or crash on demand."""

    kind = "scripted"
    SCRIPT: ClassVar[dict[str, list[Feature]]] = {}
    DOWN: ClassVar[dict[str, int]] = {}  # failures left before the source answers
    CRASH_AFTER: ClassVar[dict[str, int]] = {}  # raise after yielding this many records

    def fetch(self, cursor: Cursor) -> Iterator[Record]:
        sid = self.source.id
        if self.DOWN.get(sid, 0) > 0:
            self.DOWN[sid] -= 1
            raise SourceUnavailable("connection refused")
        for n, feature in enumerate(self.SCRIPT[sid]):
            if sid in self.CRASH_AFTER and n == self.CRASH_AFTER[sid]:
                raise KeyboardInterrupt("simulated crash")  # not caught: the process "dies"
            yield feature


def light(n: int, *, status: str = "ok", x: float = 3.88, y: float = 43.61) -> Feature:
    return Feature(
        key=str(n),
        properties={"status": status, "height": "8", "lit": "oui"},
        geometry={"type": "Point", "coordinates": [x, y]},
    )


DEFINITION: dict[str, Any] = {
    "kind": "scripted",
    "entity_type": "Streetlight",
    "id_template": "urn:ngsi-ld:Streetlight:{key}",
    "mapping": [
        {"source": "status", "attribute": "status"},
        {"source": "height", "attribute": "lanternHeight", "convert": "int", "unit": "m"},
        {"source": "lit", "attribute": "lit", "convert": "bool"},
    ],
    "backoff": 0,
    "batch_size": 2,
}


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[SyncManager]:
    state = build_state(Settings(open=True, data_dir=tmp_path / "twin"))
    registry = ConnectorRegistry(modules=(), plugins=[])
    registry.register(ScriptedConnector)
    m = SyncManager(
        state.twin, state.resolver, state.registry, data_dir=tmp_path / "twin", registry=registry
    )
    ScriptedConnector.SCRIPT.clear()
    ScriptedConnector.DOWN.clear()
    ScriptedConnector.CRASH_AFTER.clear()
    yield m
    state.twin.close()


def add(manager: SyncManager, source_id: str, features: list[Feature], **extra: Any) -> None:
    ScriptedConnector.SCRIPT[source_id] = features
    manager.catalog.save(manager.catalog.parse({**DEFINITION, "id": source_id, **extra}))


# -- definitions -------------------------------------------------------------------------------


def test_definition_errors_name_file_field_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "lights.toml"
    path.write_text(
        'id = "Lights!"\nkind = "file"\ncredentials = "s3cr3t value"\nschedule = "sometimes"\n'
        'crs = "EPSG:999999"\nid_template = "urn:x:{key:>3}"\ncolour = "red"\n'
        'entity_type = "Streetlight"\n'
        '[[mapping]]\nsource = "t"\nattribute = "temperature"\nunit = "furlongs"\n'
        '[[mapping]]\nsource = "u"\nattribute = "temperature"\nconvert = "decimal"\n'
    )
    with pytest.raises(DefinitionError) as caught:
        read_definition(path)
    error = caught.value
    paths = {p for p, _ in error.problems}
    assert {"id", "credentials", "schedule", "crs", "id_template", "colour"} <= paths
    assert {"mapping[0].unit", "mapping[1].convert"} <= paths
    text = str(error)
    assert f"{path}: mapping[0].unit: unknown unit 'furlongs'" in text
    assert "environment variable" in text and "typo" in text


def test_definition_toml_syntax_error_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('id = "x"\nkind = \n')
    with pytest.raises(DefinitionError, match="not valid TOML"):
        read_definition(path)
    source = parse_definition({**DEFINITION, "id": "lights", "options": {"a": [1, "b"]}})
    assert source.mapping[1].unit == "MTR"  # "m" normalised to its UN/CEFACT code
    (tmp_path / "lights.toml").write_text(to_toml(source))
    assert read_definition(tmp_path / "lights.toml") == source


def test_duplicate_attribute_and_mapping_without_type() -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(
            {
                "id": "x",
                "kind": "file",
                "mapping": [
                    {"source": "a", "attribute": "t"},
                    {"source": "b", "attribute": "t"},
                ],
            }
        )
    assert "already written by mapping[0]" in str(caught.value)


def test_catalog_checks_kind_and_options(manager: SyncManager) -> None:
    with pytest.raises(DefinitionError) as caught:
        manager.catalog.parse({"id": "x", "kind": "nosuch"})
    assert caught.value.problems[0][0] == "kind" and "scripted" in caught.value.problems[0][1]
    files = ConnectorRegistry(modules=("urbis.connectors.files",), plugins=[])
    with pytest.raises(DefinitionError) as caught:
        SyncManager(
            manager.twin, manager.resolver, manager.contexts, data_dir=None, registry=files
        ).catalog.parse({"id": "x", "kind": "file", "options": {"delimter": ";"}})
    assert caught.value.problems[0][0] == "options.delimter"


# -- registry ------------------------------------------------------------------------------------


def test_entry_point_plugin_resolves_and_broken_modules_do_not_break_others() -> None:
    module = types.ModuleType("urbis_test_plugin")

    class Parkings(ScriptedConnector):
        kind = "parkings"

    Parkings.__module__ = module.__name__
    module.Parkings = Parkings  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        point = EntryPoint(
            name="parkings", value="urbis_test_plugin:Parkings", group="urbis.connectors"
        )
        registry = ConnectorRegistry(
            modules=("urbis.connectors.files", "connectors.no_such_module"), plugins=[point]
        )
        assert registry.get("parkings") is Parkings
        assert registry.kinds()["file"] == "urbis.connectors.files"
        assert "connectors.no_such_module" in registry.failures
    finally:
        del sys.modules[module.__name__]


def test_builtin_kinds_are_found_lazily() -> None:
    registry = ConnectorRegistry(plugins=[])
    assert "file" in registry.kinds()


# -- harmonisation -------------------------------------------------------------------------------


def test_lambert93_to_crs84_known_point() -> None:
    # Lambert-93's false origin (700 000, 6 600 000) is, by definition, 3°E 46°30'N.
    geometry, repair = harmonize_geometry(
        {"type": "Point", "coordinates": [700000.0, 6600000.0]}, "EPSG:2154"
    )
    lon, lat = geometry["coordinates"]
    assert repair is None
    assert abs(lon - 3.0) < 1e-9 and abs(lat - 46.5) < 1e-9
    polygon, _ = harmonize_geometry(
        {
            "type": "Polygon",
            "coordinates": [[[7e5, 66e5], [701e3, 66e5], [7e5, 6601e3], [7e5, 66e5]]],
        },
        "urn:ogc:def:crs:EPSG::2154",
    )
    assert polygon["type"] == "Polygon" and abs(polygon["coordinates"][0][0][0] - 3.0) < 1e-9


def test_wrong_crs_is_a_bad_record_with_a_hint() -> None:
    with pytest.raises(BadRecord, match="is the source CRS right"):
        harmonize_geometry({"type": "Point", "coordinates": [770580.7, 6279430.2]}, None)


def test_bowtie_polygon_is_repaired_and_recorded() -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    geometry, repair = harmonize_geometry(bowtie, "EPSG:4326")
    assert geometry["type"] == "MultiPolygon"
    assert repair is not None and "Self-intersection" in repair and "make_valid" in repair


def test_units_table() -> None:
    assert [unit_code(u) for u in ("°C", "%", "m", "ug/m3", "µg/m³", "lux", "km/h", "CEL")] == [
        "CEL",
        "P1",
        "MTR",
        "GQ",
        "GQ",
        "LUX",
        "KMH",
        "CEL",
    ]
    with pytest.raises(ValueError, match="UN/CEFACT"):
        unit_code("furlongs")


def test_timestamps_to_utc() -> None:
    assert to_utc("2024-03-01T10:00:00+01:00") == "2024-03-01T09:00:00Z"
    assert to_utc("2024-07-01 10:00:00", "Europe/Paris") == "2024-07-01T08:00:00Z"
    assert to_utc(1700000000000) == "2023-11-14T22:13:20Z"


def harmonizer(extra: dict[str, Any]) -> Harmonizer:
    resolver = ContextResolver()
    source = parse_definition({**DEFINITION, "id": "x", **extra})
    return Harmonizer(
        source, resolver.resolve(None), context_terms=resolver.resolve, now="2024-01-01T00:00:00Z"
    )


def test_feature_to_entity_with_units_conversion_and_observed_at() -> None:
    h = harmonizer({"observed_at": "seen", "timezone": "Europe/Paris"})
    feature = Feature(
        key="12",
        properties={"status": "ok", "height": "8,0", "lit": "non", "seen": "2024-01-05T12:00:00"},
        geometry={"type": "Point", "coordinates": [3.88, 43.61]},
    )
    entity, _ = h.to_ngsi(feature)
    assert entity["id"] == "urn:ngsi-ld:Streetlight:12"
    assert entity["lanternHeight"] == {
        "type": "Property",
        "value": 8,
        "unitCode": "MTR",
        "observedAt": "2024-01-05T11:00:00Z",
    }
    assert entity["lit"]["value"] is False
    assert entity["location"]["value"]["coordinates"] == [3.88, 43.61]
    doc = h.document(feature).doc
    assert doc["https://uri.etsi.org/ngsi-ld/location"][0]["type"] == "GeoProperty"


def test_bad_conversion_names_the_field() -> None:
    with pytest.raises(BadRecord, match="field 'height' -> lanternHeight: cannot convert"):
        harmonizer({}).to_ngsi(Feature(key="1", properties={"height": "tall"}))


def test_ngsi_entities_pass_through_with_their_context() -> None:
    h = harmonizer({})
    record = NgsiEntity(
        entity={
            "id": "urn:ngsi-ld:T:1",
            "type": "T",
            "temp": {"type": "Property", "value": 3, "observedAt": "2024-01-01T01:00:00+01:00"},
        },
        context={"T": "https://example.org/T", "temp": "https://example.org/temp"},
    )
    doc = h.document(record).doc
    assert doc["type"] == ["https://example.org/T"]
    assert doc["https://example.org/temp"][0]["observedAt"] == "2024-01-01T00:00:00Z"


# -- sync semantics ----------------------------------------------------------------------------


def test_idempotent_second_run(manager: SyncManager) -> None:
    add(manager, "lights", [light(n) for n in range(1, 6)])
    first = manager.sync("lights")
    assert (first.status, first.created, first.updated) == ("ok", 5, 0)
    second = manager.sync("lights")
    assert (second.created, second.updated, second.unchanged) == (0, 0, 5)
    service = manager.twin.tenant("")
    doc = service.get("urn:ngsi-ld:Streetlight:1")
    assert doc["https://uri.etsi.org/ngsi-ld/default-context/lanternHeight"][0]["unitCode"] == "MTR"
    assert service.get_many(["urn:ngsi-ld:Streetlight:1"])["urn:ngsi-ld:Streetlight:1"][1] == (
        ns.DATASET_PREFIX + "lights"
    )


def test_changed_record_is_updated_and_keeps_created_at(manager: SyncManager) -> None:
    add(manager, "lights", [light(1)])
    manager.sync("lights")
    before = manager.twin.tenant("").get("urn:ngsi-ld:Streetlight:1")
    ScriptedConnector.SCRIPT["lights"] = [light(1, status="broken")]
    report = manager.sync("lights")
    assert (report.created, report.updated, report.unchanged) == (0, 1, 0)
    after = manager.twin.tenant("").get("urn:ngsi-ld:Streetlight:1")
    assert after["createdAt"] == before["createdAt"]
    status = next(v for k, v in after.items() if k.endswith("status"))
    assert status[0]["value"] == "broken"


def test_removed_record_is_tombstoned(manager: SyncManager) -> None:
    add(manager, "lights", [light(1), light(2), light(3)])
    manager.sync("lights")
    ScriptedConnector.SCRIPT["lights"] = [light(1), light(3)]
    report = manager.sync("lights")
    assert report.removed == 1
    service = manager.twin.tenant("")
    assert "urn:ngsi-ld:Streetlight:2" not in service.get_many(["urn:ngsi-ld:Streetlight:2"])
    tombstone = manager.tombstones("lights")["urn:ngsi-ld:Streetlight:2"]
    assert tombstone["runId"] == report.run_id
    ScriptedConnector.SCRIPT["lights"] = [light(1), light(2), light(3)]
    back = manager.sync("lights")
    assert back.created == 1 and manager.tombstones("lights") == {}


def test_crash_mid_run_then_resume_converges(manager: SyncManager) -> None:
    add(manager, "lights", [light(n) for n in range(1, 4)])
    manager.sync("lights")
    # The source changed: 1 updated, 2 removed, 3 kept, 4 and 5 new; the run dies after 3 records.
    ScriptedConnector.SCRIPT["lights"] = [
        light(1, status="x"),
        light(3),
        light(4),
        light(5),
    ]
    ScriptedConnector.CRASH_AFTER["lights"] = 3
    with pytest.raises(KeyboardInterrupt):
        manager.sync("lights")
    assert manager.state.get("lights", "journal") is not None  # the crash is visible
    del ScriptedConnector.CRASH_AFTER["lights"]
    report = manager.sync("lights")
    assert report.status == "ok" and report.resumed is not None
    ids = {
        row[0]
        for row in manager.twin.tenant("").store.select(
            "SELECT ?e WHERE { GRAPH <urn:urbis:graph:entities> "
            "{ ?e <https://urbis.city/ns#dataset> <urn:urbis:dataset:lights> } }"
        )
    }
    assert ids == {f"urn:ngsi-ld:Streetlight:{n}" for n in (1, 3, 4, 5)}
    # The first batch (1 updated, 3) was committed before the crash: now unchanged.
    assert (report.removed, report.created, report.updated, report.unchanged) == (1, 2, 0, 2)
    assert manager.state.get("lights", "journal") is None
    again = manager.sync("lights")
    assert (again.created, again.updated, again.removed, again.unchanged) == (0, 0, 0, 4)


def test_bad_records_are_quarantined_counted_and_listed(manager: SyncManager) -> None:
    bad_height = Feature(key="2", properties={"status": "ok", "height": "tall"})
    far = light(3, x=770580.7, y=6279430.2)  # Lambert-93 metres read as lon/lat
    no_key = Feature(key=None, properties={"status": "ok"})
    add(manager, "lights", [light(1), bad_height, far, no_key, light(1)])
    report = manager.sync("lights")
    assert report.created == 1 and report.quarantined == 4
    reasons = {e.key: e.reason for e in manager.quarantine.list("lights")}
    assert "cannot convert 'tall' to int" in reasons["2"]
    assert "is the source CRS right" in reasons["3"]
    assert "no key" in reasons[None]
    assert "duplicate id" in reasons["1"]
    assert manager.quarantine.list("lights")[0].raw["properties"]["status"] == "ok"
    ScriptedConnector.SCRIPT["lights"] = [light(1)]
    assert manager.sync("lights").quarantined == 0
    assert manager.quarantine.count("lights") == 0


def test_down_source_is_retried_then_reported_and_others_go_on(manager: SyncManager) -> None:
    add(manager, "flaky", [light(1)], retries=2)
    add(manager, "dead", [light(2)], retries=1, id_template="urn:ngsi-ld:Streetlight:d{key}")
    add(manager, "fine", [light(3)], id_template="urn:ngsi-ld:Streetlight:f{key}")
    ScriptedConnector.DOWN.update({"flaky": 2, "dead": 99})
    delays: list[float] = []
    reports = {r.source: r for r in manager.sync_many(sleep=delays.append)}
    assert reports["flaky"].status == "ok" and reports["flaky"].retries == 2
    assert (
        reports["dead"].status == "failed"
        and "unavailable after 2 attempts" in (reports["dead"].errors[0])
    )
    assert reports["fine"].status == "ok" and reports["fine"].created == 1
    assert delays == [0.0, 0.0, 0.0]  # backoff 0 in tests; 2 retries + 1 retry


def test_provenance_in_metadata_graph(manager: SyncManager) -> None:
    add(manager, "lights", [light(1)], publisher="Ville de Montpellier", licence="https://x.org/l")
    report = manager.sync("lights")
    rows = list(
        manager.twin.tenant("").store.select(
            f"SELECT ?run WHERE {{ GRAPH <{METADATA_GRAPH}> "
            "{ <urn:urbis:dataset:lights> <http://www.w3.org/ns/prov#wasGeneratedBy> ?run } }"
        )
    )
    assert len(rows) == 1 and rows[0][0] is not None and "lights" in rows[0][0]
    assert manager.last_report("lights") == report
