"""The OGC API - Features connector against a real pygeoapi 0.21."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from pyproj import Transformer

from urbis.connectors.base import Feature, SourceUnavailable
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.ogcapi import OgcApiConnector, with_params
from urbis.testing.ogc import (
    KNOWN_SENSOR,
    KNOWN_SENSOR_LONLAT,
    SENSOR_COUNT,
    fetch_features,
    pygeoapi_url,
    sensor_lonlat,
)
from urbis.testing.server import free_port
from urbis.twin.outbound import OutboundGuard

__all__ = ["pygeoapi_url"]  # the fixture this module uses


LOOPBACK = OutboundGuard(allow_loopback=True)  # the test servers listen on loopback (--open)


def ogcapi_source(endpoint: str, **options: Any) -> SourceDefinition:
    return SourceDefinition(
        id="flood-sensors",
        kind="ogcapi",
        endpoint=endpoint,
        entity_type="FloodMonitoring",
        id_template="urn:ngsi-ld:FloodMonitoring:{key}",
        options=options,
    )


def fetch_all(endpoint: str, **options: Any) -> list[Feature]:
    return fetch_features(OgcApiConnector(ogcapi_source(endpoint, **options), guard=LOOPBACK))


def test_every_feature_by_following_next_links(pygeoapi_url: str) -> None:
    features = fetch_all(pygeoapi_url, collection="floodsensors", page_size=20)
    assert len(features) == SENSOR_COUNT  # 13 pages of 20, the last one of 13
    assert sorted(f.key or "" for f in features) == [f"flood-{i:04d}" for i in range(253)]
    by_key = {f.key: f for f in features}
    known = by_key[KNOWN_SENSOR]
    assert known.crs == "OGC:CRS84"
    assert known.geometry == {"type": "Point", "coordinates": list(KNOWN_SENSOR_LONLAT)}
    assert known.properties == {"name": "Lez gauge 0", "waterLevel": 0.25, "status": "alert"}
    assert by_key["flood-0252"].geometry["coordinates"] == list(sensor_lonlat(252))  # type: ignore[index]


def test_bbox_is_kept_on_every_page(pygeoapi_url: str) -> None:
    bbox = (3.87, 43.6, 3.88, 43.62)
    features = fetch_all(pygeoapi_url, collection="floodsensors", page_size=3, bbox=bbox)
    expected = {
        f"flood-{i:04d}"
        for i in range(SENSOR_COUNT)
        if bbox[0] <= sensor_lonlat(i)[0] <= bbox[2] and bbox[1] <= sensor_lonlat(i)[1] <= bbox[3]
    }
    assert len(expected) > 3  # several pages
    assert {f.key for f in features} == expected


def test_crs_parameter_where_the_collection_offers_it(pygeoapi_url: str) -> None:
    features = fetch_all(pygeoapi_url, collection="floodsensors", page_size=100, crs="EPSG:2154")
    assert len(features) == SENSOR_COUNT
    known = next(f for f in features if f.key == KNOWN_SENSOR)
    assert known.crs == "EPSG:2154"  # read from the Content-Crs header
    expected = Transformer.from_crs("OGC:CRS84", "EPSG:2154", always_xy=True).transform(
        *KNOWN_SENSOR_LONLAT
    )
    assert known.geometry is not None
    assert known.geometry["coordinates"] == pytest.approx(list(expected), abs=1e-3)


def test_a_crs_the_collection_does_not_offer_falls_back_to_crs84(pygeoapi_url: str) -> None:
    features = fetch_all(pygeoapi_url, collection="floodsensors", page_size=500, crs="EPSG:3857")
    assert {f.crs for f in features} == {"OGC:CRS84"}
    assert len(features) == SENSOR_COUNT


def test_queryables_filter(pygeoapi_url: str) -> None:
    features = fetch_all(
        pygeoapi_url, collection="floodsensors", page_size=7, query={"status": "alert"}
    )
    assert {f.key for f in features} == {f"flood-{i:04d}" for i in range(0, SENSOR_COUNT, 10)}


def test_unknown_collection_is_a_precise_error(pygeoapi_url: str) -> None:
    with pytest.raises(ValueError, match="'rivers' does not exist"):
        fetch_all(pygeoapi_url, collection="rivers")


def test_server_down_is_source_unavailable() -> None:
    with pytest.raises(SourceUnavailable, match="cannot be reached"):
        fetch_all(f"http://127.0.0.1:{free_port()}", collection="floodsensors")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "collection"),
        ({"collection": "x", "bbox": [3.9, 43.6, 3.8, 43.7]}, "min before max"),
        ({"collection": "x", "bbox": [3.8, 43.6]}, "bbox"),
        ({"collection": "x", "query": {"offset": "5"}}, "may not set offset"),
        ({"collection": "x", "limit": 5}, "limit"),
    ],
)
def test_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OgcApiConnector(ogcapi_source("http://127.0.0.1:1", **options))


def test_next_links_get_back_the_parameters_the_server_dropped() -> None:
    url = with_params(
        "http://h/items?offset=20&limit=10", {"f": "json", "limit": "5"}, replace=False
    )
    assert url == "http://h/items?offset=20&limit=10&f=json"
