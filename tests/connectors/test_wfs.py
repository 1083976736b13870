"""The WFS 2.0 connector against a real MapServer serving Lambert-93 Shapefiles."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from urbis.api.app import build_state
from urbis.api.settings import Settings
from urbis.connectors.base import Feature, SourceUnavailable
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.sync import SyncManager
from urbis.connectors.wfs import WfsConnector
from urbis.testing.ogc import (
    KNOWN_LIGHT,
    KNOWN_LIGHT_L93,
    KNOWN_LIGHT_LONLAT,
    LIGHT_COUNT,
    PARCEL_COUNT,
    MapServerCGI,
    fetch_features,
    lambert_shapefiles,
    light_height,
    light_xy,
    mapserver,
)
from urbis.testing.server import free_port
from urbis.twin.outbound import OutboundGuard

__all__ = ["lambert_shapefiles", "mapserver"]  # fixtures used by this module

HEIGHT_AT_LEAST_6 = (
    '<fes:Filter xmlns:fes="http://www.opengis.net/fes/2.0"><fes:PropertyIsGreaterThanOrEqualTo>'
    "<fes:ValueReference>height</fes:ValueReference><fes:Literal>6</fes:Literal>"
    "</fes:PropertyIsGreaterThanOrEqualTo></fes:Filter>"
)
LOOPBACK = OutboundGuard(allow_loopback=True)  # the test servers listen on loopback (--open)


def wfs_source(endpoint: str, **options: Any) -> SourceDefinition:
    return SourceDefinition(
        id="gis-lights",
        kind="wfs",
        endpoint=endpoint,
        entity_type="Streetlight",
        id_template="urn:ngsi-ld:Streetlight:{key}",
        options=options,
    )


def fetch_all(endpoint: str, **options: Any) -> list[Feature]:
    return fetch_features(WfsConnector(wfs_source(endpoint, **options), guard=LOOPBACK))


def get_feature_requests(server: MapServerCGI, since: int) -> list[tuple[str, str]]:
    return [
        (method, path)
        for method, path in server.requests[since:]
        if method == "POST" or "GetFeature" in path
    ]


@pytest.mark.parametrize("fmt", ["geojson", "gml"])
def test_every_feature_across_pages_with_its_properties_and_lambert93_geometry(
    mapserver: MapServerCGI, fmt: str
) -> None:
    before = len(mapserver.requests)
    # MapServer's GeoJSON carries no feature id (its GML does): name the id property.
    key = {"key_property": "ident"} if fmt == "geojson" else {}
    features = fetch_all(mapserver.url("city"), typename="lights", page_size=50, format=fmt, **key)
    pages = get_feature_requests(mapserver, before)
    assert len(pages) == LIGHT_COUNT // 50 + 1  # 7 pages of 50 (the last one short)
    assert all(("json" in p) == (fmt == "geojson") for _, p in pages)
    assert len(features) == LIGHT_COUNT
    by_key = {f.key: f for f in features}
    assert sorted(by_key) == [f"L{i:04d}" for i in range(LIGHT_COUNT)]  # ids from gml:id
    for i in (0, 49, 50, 316):
        feature = by_key[f"L{i:04d}"]
        assert feature.crs == "EPSG:2154"
        assert feature.geometry == {"type": "Point", "coordinates": list(light_xy(i))}
        assert feature.properties["name"] == f"Candélabre n°{i}"
        assert feature.properties["height"] == light_height(i)  # typed: a float in GML too
        assert isinstance(feature.properties["height"], float)
    assert by_key[KNOWN_LIGHT].geometry["coordinates"] == list(KNOWN_LIGHT_L93)  # type: ignore[index]


def test_auto_prefers_geojson_when_the_server_offers_it(mapserver: MapServerCGI) -> None:
    before = len(mapserver.requests)
    features = fetch_all(
        mapserver.url("city"), typename="ms:lights", page_size=400, key_property="ident"
    )
    (page,) = get_feature_requests(mapserver, before)
    assert "OUTPUTFORMAT=application%2Fjson" in page[1]
    assert len(features) == LIGHT_COUNT


def test_auto_falls_back_to_gml_when_only_gml_has_the_feature_ids(
    mapserver: MapServerCGI,
) -> None:
    before = len(mapserver.requests)
    features = fetch_all(mapserver.url("city"), typename="lights", page_size=200)
    formats = ["json" in p for _, p in get_feature_requests(mapserver, before)]
    assert formats == [True, False, False, False]  # GeoJSON page, GML probe, 2 GML pages
    assert sorted(f.key or "" for f in features) == [f"L{i:04d}" for i in range(LIGHT_COUNT)]


def test_a_filter_goes_by_post_and_mapserver_honours_it(mapserver: MapServerCGI) -> None:
    before = len(mapserver.requests)
    features = fetch_all(
        mapserver.url("city"),
        typename="lights",
        page_size=40,
        filter=HEIGHT_AT_LEAST_6,
        key_property="ident",
    )
    expected = {f"L{i:04d}" for i in range(LIGHT_COUNT) if light_height(i) >= 6}
    assert {f.key for f in features} == expected
    assert all(f.properties["height"] >= 6 for f in features)
    methods = {m for m, _ in get_feature_requests(mapserver, before)}
    assert methods == {"POST"}
    assert len(get_feature_requests(mapserver, before)) == len(expected) // 40 + 1


def test_gml_polygons_with_holes_and_the_invalid_bowtie_are_read_as_served(
    mapserver: MapServerCGI,
) -> None:
    gml = {f.key: f for f in fetch_all(mapserver.url("city"), typename="parcels", format="gml")}
    geojson = {
        f.key: f
        for f in fetch_all(
            mapserver.url("city"), typename="parcels", format="geojson", key_property="ident"
        )
    }
    assert len(gml) == PARCEL_COUNT and gml.keys() == geojson.keys()
    hole = gml["P-HOLE"].geometry
    assert hole is not None and hole["type"] == "MultiPolygon"
    assert len(hole["coordinates"][0]) == 2  # exterior and the courtyard
    bowtie = gml["P-BOWTIE"].geometry
    assert bowtie == {
        "type": "Polygon",
        "coordinates": [
            [
                [772000.0, 6281000.0],
                [772100.0, 6281100.0],
                [772100.0, 6281000.0],
                [772000.0, 6281100.0],
                [772000.0, 6281000.0],
            ]
        ],
    }  # kept as served: repairing it (and saying so) is the framework's job
    assert geojson["P-BOWTIE"].geometry == bowtie
    assert gml["P003"].properties == {"ident": "P003", "label": "parcel 3"}


def test_unknown_typename_is_a_precise_error(mapserver: MapServerCGI) -> None:
    with pytest.raises(ValueError, match=r"'streetlamps' is not offered .* ms:lights"):
        fetch_all(mapserver.url("city"), typename="streetlamps")


def test_server_down_or_failing_is_source_unavailable(mapserver: MapServerCGI) -> None:
    with pytest.raises(SourceUnavailable, match="cannot be reached"):
        fetch_all(f"http://127.0.0.1:{free_port()}/city", typename="lights")
    with pytest.raises(SourceUnavailable):
        fetch_all(mapserver.url("unavailable"), typename="lights")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "typename"),
        ({"typename": "x", "page_size": 0}, "page_size"),
        ({"typename": "x", "format": "kml"}, "format"),
        ({"typename": "x", "filter": "<Filter/>"}, "fes:Filter"),
        ({"typename": "x", "filter": "<fes:Filter"}, "not well-formed"),
        ({"typename": "x", "pagesize": 10}, "pagesize"),
    ],
)
def test_options_are_validated_when_the_connector_is_built(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        WfsConnector(wfs_source("http://127.0.0.1:1/wfs", **options))


def test_montpellier_street_lights_all_29969_from_a_cp1252_shapefile_without_ids(
    mapserver: MapServerCGI,
) -> None:
    from tests.conftest import FIXTURES, shared_or_skip

    shared_or_skip(FIXTURES)
    features = fetch_all(
        mapserver.url("montpellier"),
        typename="streetlights",
        page_size=10_000,
        key_property="@position",
    )
    assert len(features) == 29_969
    assert [f.key for f in features[:3]] == ["0", "1", "2"]
    assert len({f.key for f in features}) == 29_969
    kinds = Counter(f.properties["type_lante"] for f in features)
    assert kinds["LANTERNE"] == 22_594 and kinds["LUMINAIRE AMBIANCE"] == 3_888
    assert all(f.crs == "EPSG:2154" for f in features)
    x, y = features[0].geometry["coordinates"]  # type: ignore[index]
    assert 760_000 < x < 780_000 and 6_270_000 < y < 6_290_000  # metres, in Montpellier


# -- end to end: MapServer -> connector -> framework (harmonise, upsert) -> twin -------------


LOCATION = "https://uri.etsi.org/ngsi-ld/location"
DEFAULT = "https://uri.etsi.org/ngsi-ld/default-context/"


@pytest.fixture
def manager() -> Iterator[tuple[SyncManager, Any]]:
    state = build_state(Settings(open=True, demo=False))
    sync = SyncManager(
        state.twin, state.resolver, state.registry, data_dir=None, guard=state.outbound
    )
    yield sync, state.twin
    state.twin.close()


def test_end_to_end_into_the_twin_in_crs84(
    mapserver: MapServerCGI, manager: tuple[SyncManager, Any]
) -> None:
    sync, twin = manager
    definition = {
        "id": "gis-lights",
        "kind": "wfs",
        "endpoint": mapserver.url("city"),
        "entity_type": "Streetlight",
        "id_template": "urn:ngsi-ld:Streetlight:{key}",
        "mapping": [{"source": "height", "attribute": "lanternHeight", "unit": "m"}],
        "options": {"typename": "lights", "page_size": 100},
    }
    sync.catalog.save(sync.catalog.parse(definition))
    report = sync.sync("gis-lights")
    assert report.status == "ok", report.errors
    assert (report.created, report.quarantined) == (LIGHT_COUNT, 0)
    entity = twin.tenant("").get(f"urn:ngsi-ld:Streetlight:{KNOWN_LIGHT}")
    (location,) = entity[LOCATION]  # the twin keeps canonical (expanded) documents
    lon, lat = location["value"]["coordinates"]
    assert lon == pytest.approx(KNOWN_LIGHT_LONLAT[0], abs=1e-6)
    assert lat == pytest.approx(KNOWN_LIGHT_LONLAT[1], abs=1e-6)
    assert entity[DEFAULT + "lanternHeight"][0]["value"] == light_height(0)
    again = sync.sync("gis-lights")
    assert (again.created, again.updated, again.removed) == (0, 0, 0)  # idempotent


def test_end_to_end_the_bowtie_parcel_is_repaired_not_dropped(
    mapserver: MapServerCGI, manager: tuple[SyncManager, Any]
) -> None:
    sync, twin = manager
    definition = {
        "id": "gis-parcels",
        "kind": "wfs",
        "endpoint": mapserver.url("city"),
        "entity_type": "LandParcel",
        "id_template": "urn:ngsi-ld:LandParcel:{key}",
        "options": {"typename": "parcels", "format": "gml"},
    }
    sync.catalog.save(sync.catalog.parse(definition))
    report = sync.sync("gis-parcels")
    assert report.status == "ok", report.errors
    assert report.created + report.quarantined == PARCEL_COUNT
    assert report.repaired == 1
    bowtie = twin.tenant("").get("urn:ngsi-ld:LandParcel:P-BOWTIE")
    assert bowtie[LOCATION][0]["value"]["type"] == "MultiPolygon"  # make_valid: two triangles
