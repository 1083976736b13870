"""The write path's Point fast paths give exactly what the general GeoJSON path gives."""

from __future__ import annotations

import math
from typing import Any

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.twin.test_geo import MALFORMED, VALID
from urbis.twin.errors import BadRequestData
from urbis.twin.geo import (
    GeoQuery,
    SpatialIndex,
    geojson_wkt,
    parse_geometry,
    parse_geoq,
    point_position,
    wkt_literal,
)
from urbis.twin.geo.geometry import _Parser

numbers = st.one_of(
    st.floats(-180, 180, allow_nan=False),
    st.integers(-180, 180),
    st.sampled_from([0.0, -0.0, 1e-7, -1e-300, 179.99999999999997]),
)
lats = st.one_of(st.floats(-90, 90, allow_nan=False), st.integers(-90, 90))
alts = st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.integers(-(10**6), 10**6))


def general_wkt(value: Any) -> str:
    """The general path (the parser every geometry type goes through), as a reference."""
    return wkt_literal(_Parser("GeoProperty value").geometry(value, "", nested=False))


@settings(max_examples=300, deadline=None)
@given(numbers, lats, st.one_of(st.none(), alts))
def test_point_fast_path_writes_the_same_wkt_and_geometry(
    lon: float, lat: float, alt: float | None
) -> None:
    coords: list[float] = [lon, lat] if alt is None else [lon, lat, alt]
    value = {"type": "Point", "coordinates": coords}
    assert point_position(value) == tuple(float(c) for c in coords)
    assert geojson_wkt(value) == general_wkt(value)
    fast = parse_geometry(value)
    slow = _Parser("x").geometry(value, "", nested=False)
    assert shapely.equals_exact(fast, slow, tolerance=0)
    assert bool(shapely.has_z(fast)) == (alt is not None)


@pytest.mark.parametrize(("value", "message"), MALFORMED)
def test_malformed_values_leave_the_fast_path_for_the_precise_error(
    value: object, message: str
) -> None:
    assert point_position(value) is None
    with pytest.raises(BadRequestData) as error:
        geojson_wkt(value, what="GeoProperty 'location'")
    assert message in error.value.detail


@pytest.mark.parametrize(("value", "wkt"), VALID)
def test_geojson_wkt_of_every_type_matches_wkt_literal(value: dict[str, Any], wkt: str) -> None:
    assert geojson_wkt(value).endswith(" " + wkt)
    assert geojson_wkt(value) == wkt_literal(parse_geometry(value))


def test_non_list_coordinates_and_big_integers_are_not_fast_points() -> None:
    assert point_position({"type": "Point", "coordinates": (1.0, 2.0)}) is None
    assert point_position({"type": "Point", "coordinates": [1, 2, 10**400]}) is None
    assert point_position({"type": "Point", "coordinates": [1.0, math.inf]}) is None
    assert point_position({"type": "MultiPoint", "coordinates": [[1.0, 2.0]]}) is None


def query(georel: str, geometry: str, coordinates: Any) -> GeoQuery:
    result = parse_geoq(georel, geometry, coordinates, None)
    assert result is not None
    return result


def test_add_geojson_indexes_like_add_one_by_one() -> None:
    values: dict[str, dict[str, Any]] = {
        "a": {"type": "Point", "coordinates": [3.87, 43.61]},
        "b": {"type": "Point", "coordinates": [3.88, 43.62, 27.5]},
        "c": {
            "type": "Polygon",
            "coordinates": [[[3.8, 43.6], [3.9, 43.6], [3.9, 43.7], [3.8, 43.6]]],
        },
        "d": {"type": "Point", "coordinates": [-70.0, -33.0]},
    }
    batched, single = SpatialIndex(), SpatialIndex()
    batched.add("a", shapely.Point(0, 0))  # replaced by the batch
    batched.add_geojson(values.items())
    for key, value in values.items():
        single.add(key, parse_geometry(value))
    assert len(batched) == len(single) == 4
    for key in values:
        got, want = batched.geometry(key), single.geometry(key)
        assert got is not None and want is not None
        assert shapely.equals_exact(got, want, tolerance=0)
        assert bool(shapely.has_z(got)) == bool(shapely.has_z(want))
    for q in (
        query("near;maxDistance==2000", "Point", [3.875, 43.615]),
        query("within", "Polygon", [[[3.7, 43.5], [4.0, 43.5], [4.0, 43.8], [3.7, 43.5]]]),
        query("disjoint", "Point", [3.87, 43.61]),
    ):
        assert batched.query(q) == single.query(q)
    batched.remove("b")
    assert batched.geometry("b") is None and "b" not in batched.query(q)


def test_add_geojson_rejects_invalid_values_like_add() -> None:
    index = SpatialIndex()
    with pytest.raises(BadRequestData):
        index.add_geojson([("x", {"type": "Polygon", "coordinates": []})])
    assert len(index) == 0
