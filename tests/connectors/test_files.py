"""The file connector on generated GeoJSON, CSV and zipped Shapefiles, and on real data."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import shapefile
from pyproj import CRS

from tests.conftest import FIXTURES, shared_or_skip
from urbis.api.app import build_state
from urbis.api.settings import Settings
from urbis.connectors.base import Cursor, Feature, NgsiEntity
from urbis.connectors.definition import parse_definition
from urbis.connectors.files import FileConnector, iter_geojson
from urbis.connectors.sync import SyncManager

LIGHTS = (
    FIXTURES / "montpellier" / "VilleMTP_MTP_EclairagePublic" / "VilleMTP_MTP_EclairagePublic.zip"
)


@pytest.fixture
def manager() -> Iterator[SyncManager]:
    state = build_state(Settings(open=True))
    assert state.sources is not None
    yield state.sources
    state.twin.close()


def define(manager: SyncManager, endpoint: Path, **extra: Any) -> str:
    source = manager.catalog.parse(
        {"id": "src", "kind": "file", "endpoint": str(endpoint), **extra}
    )
    manager.catalog.remember(source)
    return source.id


def entity(manager: SyncManager, entity_id: str) -> dict[str, Any]:
    return manager.twin.tenant("").get(entity_id)


def test_geojson_streams_features_with_crs_member(tmp_path: Path) -> None:
    path = tmp_path / "f.geojson"
    features = [
        {
            "type": "Feature",
            "id": i,
            "properties": {"n": i},
            "geometry": {"type": "Point", "coordinates": [7e5 + i, 66e5]},
        }
        for i in range(2500)
    ]
    doc = {
        "type": "FeatureCollection",
        "name": "x",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::2154"}},
        "features": features,
    }
    path.write_text(json.dumps(doc))
    with path.open() as f:
        items = list(iter_geojson(f))
    assert items[0] == ("crs", doc["crs"]) and len(items) == 2501
    assert items[-1][1]["properties"] == {"n": 2499}
    source = parse_definition({"id": "f", "kind": "file", "endpoint": str(path)})
    records = list(FileConnector(source).fetch(Cursor()))
    assert isinstance(records[3], Feature) and records[3].crs == "urn:ogc:def:crs:EPSG::2154"


def test_geojson_sync_reprojects_and_skips_an_unchanged_file(
    manager: SyncManager, tmp_path: Path
) -> None:
    path = tmp_path / "trees.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "id": "t1",
                        "properties": {"height": "12,5", "planted": "2001-03-04"},
                        "geometry": {"type": "Point", "coordinates": [700000, 6600000]},
                    },
                    {
                        "type": "Feature",
                        "id": "t2",
                        "properties": {"height": "?"},
                        "geometry": {"type": "Point", "coordinates": [700000, 6600000]},
                    },
                ],
            }
        )
    )
    define(
        manager,
        path,
        entity_type="Tree",
        id_template="urn:ngsi-ld:Tree:{key}",
        crs="EPSG:2154",
        mapping=[
            {"source": "height", "attribute": "height", "convert": "float", "unit": "m"},
            {"source": "planted", "attribute": "planted", "convert": "date"},
        ],
    )
    report = manager.sync("src")
    assert (report.created, report.quarantined) == (1, 1)
    doc = entity(manager, "urn:ngsi-ld:Tree:t1")
    height = next(v for k, v in doc.items() if k.endswith("height"))[0]
    assert height["value"] == 12.5 and height["unitCode"] == "MTR"
    location = doc["https://uri.etsi.org/ngsi-ld/location"][0]["value"]["coordinates"]
    assert abs(location[0] - 3.0) < 1e-9 and abs(location[1] - 46.5) < 1e-9
    again = manager.sync("src")
    assert again.full is False and again.created == again.unchanged == again.removed == 0


def test_ngsi_ld_geojson_passes_through(manager: SyncManager, tmp_path: Path) -> None:
    path = tmp_path / "city.geojson"
    feature = {
        "type": "Feature",
        "id": "urn:ngsi-ld:WasteContainer:1",
        "geometry": {"type": "Point", "coordinates": [3.87, 43.61]},
        "properties": {
            "type": "WasteContainer",
            "fillingLevel": {"type": "Property", "value": 0.5},
        },
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    source = parse_definition({"id": "c", "kind": "file", "endpoint": str(path)})
    record = next(iter(FileConnector(source).fetch(Cursor())))
    assert isinstance(record, NgsiEntity) and "location" in record.entity
    define(manager, path, context="urbis-smart-city")
    assert manager.sync("src").created == 1
    assert entity(manager, "urn:ngsi-ld:WasteContainer:1")["type"][0].endswith("WasteContainer")


def test_csv_with_sniffed_delimiter_latin1_and_wkt(manager: SyncManager, tmp_path: Path) -> None:
    path = tmp_path / "bancs.csv"
    path.write_bytes(
        (
            "nom;état;lat;lon\nBanc Comédie;neuf;43,6085;3,8797\nBanc Arceaux;usé;43.611;3.862\n"
        ).encode("cp1252")
    )
    define(
        manager,
        path,
        entity_type="Bench",
        mapping=[{"source": "nom", "attribute": "name"}, {"source": "état", "attribute": "state"}],
    )
    report = manager.sync("src")
    assert report.created == 2, manager.quarantine.list("src")
    doc = entity(manager, "urn:ngsi-ld:Bench:src-1")
    assert next(v for k, v in doc.items() if k.endswith("state"))[0]["value"] == "neuf"
    assert doc["https://uri.etsi.org/ngsi-ld/location"][0]["value"]["coordinates"] == [
        3.8797,
        43.6085,
    ]
    wkt = tmp_path / "zones.csv"
    wkt.write_text('id,wkt\nz1,"POLYGON((0 0,1 1,1 0,0 1,0 0))"\nz2,"POINT(3.8 43.6)"\n')
    manager.catalog.remember(
        manager.catalog.parse(
            {
                "id": "zones",
                "kind": "file",
                "endpoint": str(wkt),
                "entity_type": "Zone",
                "key": "id",
            }
        )
    )
    report = manager.sync("zones")
    assert report.created == 2 and report.repaired == 1
    bowtie = entity(manager, "urn:ngsi-ld:Zone:zones-z1")["https://uri.etsi.org/ngsi-ld/location"][
        0
    ]
    assert bowtie["value"]["type"] == "MultiPolygon"
    assert "Self-intersection" in bowtie["https://urbis.city/ns#geometryRepair"][0]["value"]


def zipped_shapefile(path: Path, points: list[tuple[float, float, str]]) -> None:
    shp, shx, dbf = io.BytesIO(), io.BytesIO(), io.BytesIO()
    with shapefile.Writer(
        shp=shp, shx=shx, dbf=dbf, shapeType=shapefile.POINT, encoding="cp1252"
    ) as writer:
        writer.field("NOM", "C", size=40)
        for x, y, name in points:
            writer.point(x, y)
            writer.record(name)
    with zipfile.ZipFile(path, "w") as archive:
        for suffix, data in ((".shp", shp), (".shx", shx), (".dbf", dbf)):
            archive.writestr("layer" + suffix, data.getvalue())
        archive.writestr("layer.prj", CRS.from_epsg(2154).to_wkt("WKT1_ESRI"))


def test_zipped_shapefile_with_prj(manager: SyncManager, tmp_path: Path) -> None:
    path = tmp_path / "fontaines.zip"
    zipped_shapefile(path, [(700000, 6600000, "Fontaine Éole"), (770580, 6279430, "Trois Grâces")])
    define(manager, path, entity_type="Fountain", mapping=[{"source": "NOM", "attribute": "name"}])
    report = manager.sync("src")
    assert report.created == 2 and report.quarantined == 0
    doc = entity(manager, "urn:ngsi-ld:Fountain:src-1")
    lon, lat = doc["https://uri.etsi.org/ngsi-ld/location"][0]["value"]["coordinates"]
    assert abs(lon - 3.0) < 1e-9 and abs(lat - 46.5) < 1e-9
    name = next(v for k, v in doc.items() if k.endswith("name"))[0]["value"]
    assert name == "Fontaine Éole"
    zipped_shapefile(path, [(700000, 6600000, "Fontaine Éole")])  # one fountain removed
    report = manager.sync("src")
    assert report.removed == 1 and report.unchanged == 1
    assert "urn:ngsi-ld:Fountain:src-2" in manager.tombstones("src")


def test_montpellier_street_lights_lambert93(manager: SyncManager) -> None:
    """The real 29,969 street lights: Lambert-93 in a zipped Shapefile, cp1252 DBF."""
    path = shared_or_skip(LIGHTS)
    define(
        manager,
        path,
        entity_type="Streetlight",
        context="urbis-smart-city",
        id_template="urn:ngsi-ld:Streetlight:mtp-{key}",
        mapping=[{"source": "type_lante", "attribute": "lanternType"}],
        publisher="Ville de Montpellier",
        licence="https://www.etalab.gouv.fr/licence-ouverte-open-licence",
    )
    report = manager.sync("src")
    assert report.status == "ok" and report.created == 29969 and report.quarantined == 0
    service = manager.twin.tenant("")
    west, south, east, north = 3.80, 43.56, 3.95, 43.66  # the commune of Montpellier
    sample = service.get_many([f"urn:ngsi-ld:Streetlight:mtp-{n}" for n in (1, 15000, 29969)])
    assert len(sample) == 3
    for doc, graph in sample.values():
        lon, lat = doc["https://uri.etsi.org/ngsi-ld/location"][0]["value"]["coordinates"]
        assert west < lon < east and south < lat < north
        assert graph == "urn:urbis:dataset:src"


def test_csv_rows_the_csv_module_would_pass_silently_are_quarantined(
    manager: SyncManager, tmp_path: Path
) -> None:
    """A stray delimiter, a short row and a half coordinate each go to the quarantine."""
    path = tmp_path / "parkings.csv"
    path.write_text(
        "id,lat,lon,capacity\n"
        "P1,43.61,3.87,20\n"
        "P2,43.6,3.9,85,5\n"  # the decimal comma of 85,5 was not quoted
        "P3,43.6\n"
        "P4,,3.89,20\n"
    )
    define(manager, path, entity_type="ParkingSite", key="id")
    report = manager.sync("src")
    assert (report.created, report.quarantined) == (1, 3)
    reasons = {e.key: e.reason for e in manager.quarantine.list("src")}
    assert "5 values, the header 4" in reasons["2"], reasons
    assert "2 values, the header 4" in reasons["3"]
    assert "'lon' is given without 'lat'" in reasons["4"]
