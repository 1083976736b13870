"""GeoProperty validation, WKT literals, geo-queries (clause 4.10) and the spatial index."""

from __future__ import annotations

import math
import random
import threading
from typing import Any

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod

from urbis.twin.errors import BadRequestData
from urbis.twin.geo import (
    CRS84,
    GeoQuery,
    SpatialIndex,
    match_points,
    matches,
    parse_geometry,
    parse_geoq,
    wkt_literal,
)

GEOD = Geod(ellps="WGS84")
COMEDIE = (3.8767, 43.6108)  # Place de la Comédie, Montpellier
NORTH_1100 = (3.8767, 43.6207)  # 1099.94 m north of it on the ellipsoid
SQUARE = [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]

lons = st.floats(-180, 180, allow_nan=False)
lats = st.floats(-90, 90, allow_nan=False)
alts = st.floats(-1e4, 1e4, allow_nan=False)


def point(lon: float, lat: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat]}


def polygon(*rings: list[list[float]]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": list(rings)}


def box(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def query(georel: str, geometry: str, coordinates: Any) -> GeoQuery:
    result = parse_geoq(georel, geometry, coordinates, None)
    assert result is not None
    return result


# -- parse_geometry: what is rejected, and why -----------------------------------------------

MALFORMED = [
    ([3.8, 43.6], "expected a GeoJSON geometry object"),
    ({"coordinates": [1, 2]}, "missing member 'type'"),
    ({"type": "Feature", "coordinates": [1, 2]}, 'type: unknown geometry type "Feature"'),
    ({"type": "Point"}, "a Point needs a member 'coordinates'"),
    ({"type": "Point", "coordinates": "3.8,43.6"}, "coordinates: expected a position [longitude"),
    ({"type": "Point", "coordinates": [1]}, "coordinates: a position has 2 or 3 numbers, got 1"),
    ({"type": "Point", "coordinates": [1, 2, 3, 4]}, "2 or 3 numbers, got 4"),
    ({"type": "Point", "coordinates": [True, 2]}, "longitude must be a number, got true"),
    ({"type": "Point", "coordinates": [1, "2"]}, 'latitude must be a number, got "2"'),
    ({"type": "Point", "coordinates": [1, 2, None]}, "altitude must be a number, got null"),
    ({"type": "Point", "coordinates": [math.nan, 2]}, "longitude must be a finite number"),
    ({"type": "Point", "coordinates": [1, math.inf]}, "latitude must be a finite number"),
    ({"type": "Point", "coordinates": [1, 2, 10**400]}, "altitude must be a finite number"),
    ({"type": "Point", "coordinates": [180.5, 2]}, "longitude 180.5 is outside [-180, 180]"),
    ({"type": "Point", "coordinates": [1, -91]}, "latitude -91 is outside [-90, 90]"),
    (
        {"type": "MultiPoint", "coordinates": [[1, 2], [1, 95]]},
        "coordinates[1]: latitude 95 is outside",
    ),
    ({"type": "MultiPoint", "coordinates": []}, "a MultiPoint needs at least one position"),
    ({"type": "LineString", "coordinates": [[1, 2]]}, "at least 2 positions, got 1"),
    (
        {"type": "MultiLineString", "coordinates": [[[1, 2], [3, 4]], [[1, 2]]]},
        "coordinates[1]: a LineString needs at least 2 positions",
    ),
    ({"type": "Polygon", "coordinates": []}, "a Polygon needs at least one linear ring"),
    (
        polygon([[0, 0], [1, 0], [0, 0]]),
        "coordinates[0]: exterior ring: a linear ring needs at least 4 positions, got 3",
    ),
    (
        polygon([[0, 0], [1, 0], [1, 1], [0, 1]]),
        "exterior ring is not closed: the first position [0, 0] differs from the last [0, 1]",
    ),
    (
        polygon(box(0, 0, 4, 4), box(1, 1, 2, 2), [[2, 2], [3, 2], [3, 3], [2.5, 3]]),
        "coordinates[2]: interior ring 2 is not closed",
    ),
    (
        {"type": "MultiPolygon", "coordinates": [SQUARE, [[[5, 5], [6, 5], [6, 6, 1, 2], [5, 5]]]]},
        "coordinates[1][0][2]: a position has 2 or 3 numbers, got 4",
    ),
    (
        polygon([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]),
        "is not a valid geometry: Self-intersection",
    ),
    (polygon(box(0, 0, 1, 1), box(2, 2, 3, 3)), "is not a valid geometry: Hole lies outside shell"),
    ({"type": "GeometryCollection", "geometries": []}, "geometries: expected a non-empty array"),
    (
        {"type": "GeometryCollection", "geometries": [point(1, 2), {"type": "Point"}]},
        "geometries[1]: a Point needs a member 'coordinates'",
    ),
    (
        {
            "type": "GeometryCollection",
            "geometries": [{"type": "GeometryCollection", "geometries": [point(1, 2)]}],
        },
        "geometries[0]: a GeometryCollection inside a GeometryCollection is not supported",
    ),
]


@pytest.mark.parametrize(("value", "message"), MALFORMED)
def test_malformed_geometry_is_rejected_with_a_precise_detail(value: object, message: str) -> None:
    with pytest.raises(BadRequestData) as error:
        parse_geometry(value, what="GeoProperty 'location'")
    assert error.value.detail.startswith("GeoProperty 'location'")
    assert message in error.value.detail


def test_a_deeply_nested_value_gives_a_clean_error() -> None:
    nested: Any = [1, 2]
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(BadRequestData, match="longitude must be a number, got a deeply nested"):
        parse_geometry({"type": "Point", "coordinates": [nested, 1]})


# -- parse_geometry and wkt_literal: what is accepted, and how it is written ----------------

VALID = [
    (point(3.87, 43.61), "POINT(3.87 43.61)"),
    ({"type": "Point", "coordinates": [3.87, 43.61, 27.5]}, "POINT Z(3.87 43.61 27.5)"),
    ({"type": "Point", "coordinates": [1e-7, -0.0]}, "POINT(0.0000001 -0)"),
    ({"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]}, "MULTIPOINT((1 2),(3 4))"),
    ({"type": "LineString", "coordinates": [[1, 2], [3, 4.5]]}, "LINESTRING(1 2,3 4.5)"),
    (
        {"type": "MultiLineString", "coordinates": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]},
        "MULTILINESTRING((1 2,3 4),(5 6,7 8))",
    ),
    (
        polygon(box(0, 0, 4, 4), box(1, 1, 2, 2)),
        "POLYGON((0 0,4 0,4 4,0 4,0 0),(1 1,2 1,2 2,1 2,1 1))",
    ),
    (
        {"type": "MultiPolygon", "coordinates": [SQUARE, [box(5, 5, 6, 6)]]},
        "MULTIPOLYGON(((0 0,1 0,1 1,0 1,0 0)),((5 5,6 5,6 6,5 6,5 5)))",
    ),
    (
        {"type": "LineString", "coordinates": [[1, 2, 3], [3, 4]]},
        "LINESTRING(1 2,3 4)",  # a geometry with some altitudes missing is 2D
    ),
    (
        {
            "type": "GeometryCollection",
            "geometries": [
                {"type": "Point", "coordinates": [1, 2, 3]},
                {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
            ],
        },
        "GEOMETRYCOLLECTION(POINT Z(1 2 3),LINESTRING(0 0,1 1))",
    ),
]


@pytest.mark.parametrize(("value", "wkt"), VALID)
def test_valid_geometries_are_written_as_crs84_wkt(value: dict[str, Any], wkt: str) -> None:
    geom = parse_geometry(value)
    literal = wkt_literal(geom)
    assert literal == f"<http://www.opengis.net/def/crs/OGC/1.3/CRS84> {wkt}"
    assert shapely.equals_exact(shapely.from_wkt(wkt), geom, tolerance=0)
    assert bool(shapely.has_z(shapely.from_wkt(wkt))) == bool(shapely.has_z(geom))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(lons, lats, alts), min_size=1, max_size=5), st.booleans())
def test_positions_survive_parse_and_wkt_exactly(
    positions: list[tuple[float, float, float]], with_altitude: bool
) -> None:
    coords = [list(p) if with_altitude else list(p[:2]) for p in positions]
    one = {"type": "Point", "coordinates": coords[0]}
    many = {"type": "MultiPoint", "coordinates": coords}
    for value, expected in ((one, coords[:1]), (many, coords)):
        literal = wkt_literal(parse_geometry(value))
        back = shapely.from_wkt(literal.removeprefix(CRS84 + " "))
        assert shapely.get_coordinates(back, include_z=with_altitude).tolist() == expected


# -- parse_geoq --------------------------------------------------------------------------------


def test_no_geo_query_gives_none() -> None:
    assert parse_geoq(None, None, None, None) is None


def test_query_string_and_geoq_object_forms() -> None:
    near = parse_geoq("near;maxDistance==2000", "Point", "[3.8767,43.6108]", None)
    assert near is not None
    assert (near.georel, near.max_distance, near.min_distance) == ("near", 2000.0, None)
    assert near.geoproperty == "location"
    assert shapely.equals_exact(near.geometry, shapely.Point(COMEDIE), tolerance=0)

    both = parse_geoq("near;minDistance==10;maxDistance==1.5e3", "Point", [8, 40], "observedAt")
    assert both is not None
    assert (both.min_distance, both.max_distance, both.geoproperty) == (10.0, 1500.0, "observedAt")

    within = parse_geoq("within", "Polygon", [box(3.8, 43.5, 3.9, 43.7)], "myArea")
    assert within is not None
    assert within.georel == "within" and within.geometry.geom_type == "Polygon"
    assert within.geoproperty == "myArea"
    for georel in ("contains", "intersects", "equals", "disjoint", "overlaps"):
        parsed = parse_geoq(georel, "LineString", "[[1,2],[3,4]]", None)
        assert parsed is not None and parsed.georel == georel


GEOQ_ERRORS = [
    (("within", None, None, None), "missing: geometry, coordinates"),
    ((None, "Point", "[1,2]", None), "missing: georel"),
    ((None, None, None, "location"), "geoproperty is only meaningful in a geo-query"),
    (("nearby", "Point", "[1,2]", None), "unknown relation 'nearby'"),
    (("near", "Point", "[1,2]", None), "near needs ;maxDistance==<metres>"),
    (("near;maxDistance=2", "Point", "[1,2]", None), "'maxDistance=2' is not maxDistance=="),
    (("near;maxDistance==-5", "Point", "[1,2]", None), "non-negative number of metres, got '-5'"),
    (("near;maxDistance==abc", "Point", "[1,2]", None), "got 'abc'"),
    (("near;maxDistance==1e999", "Point", "[1,2]", None), "got '1e999'"),
    (("near;maxDistance==1;maxDistance==2", "Point", "[1,2]", None), "maxDistance is given twice"),
    (("near;minDistance==9;maxDistance==2", "Point", "[1,2]", None), "minDistance 9 exceeds"),
    (("within;maxDistance==2", "Point", "[1,2]", None), "'within' takes no ';' modifiers"),
    ((5, "Point", "[1,2]", None), "georel must be a string"),
    (("within", "point", "[1,2]", None), 'geometry "point" is not supported'),
    (("within", "GeometryCollection", "[]", None), "is not supported"),
    (("within", "Point", "[1,2", None), "'[1,2' is not valid JSON"),
    (
        ("within", "Point", "{}", None),
        "coordinates must be a JSON array such as [8.0,40.0], got {}",
    ),
    (("within", "Point", "[" * 100_000, None), "is not valid JSON"),
    (("within", "Point", "[1,200]", None), "geo-query: coordinates: latitude 200 is outside"),
    (("within", "Polygon", "[[[0,0],[1,0]]]", None), "coordinates[0]: exterior ring: a linear"),
    (("within", "Point", "[1,2]", ""), "geoproperty must be a non-empty attribute name"),
    (("within", "Point", "[1,2]", 7), "geoproperty must be a non-empty attribute name, got 7"),
]


@pytest.mark.parametrize(("args", "message"), GEOQ_ERRORS)
def test_bad_geo_queries_are_rejected_with_a_precise_detail(
    args: tuple[Any, Any, Any, Any], message: str
) -> None:
    with pytest.raises(BadRequestData) as error:
        parse_geoq(*args)
    assert message in error.value.detail


def test_a_geo_query_built_by_hand_is_checked() -> None:
    with pytest.raises(ValueError, match="near needs"):
        GeoQuery("near", shapely.Point(COMEDIE))
    with pytest.raises(ValueError, match="unknown georel"):
        GeoQuery("inside", shapely.Point(COMEDIE))


# -- matches -----------------------------------------------------------------------------------


def near(center: tuple[float, float], bound: str, metres: float) -> GeoQuery:
    return query(f"near;{bound}=={metres!r}", "Point", list(center))


def test_near_two_montpellier_points_1100_m_apart() -> None:
    target = shapely.Point(NORTH_1100)
    assert not matches(near(COMEDIE, "maxDistance", 1000), target)
    assert matches(near(COMEDIE, "maxDistance", 1200), target)
    assert matches(near(COMEDIE, "minDistance", 1000), target)
    assert not matches(near(COMEDIE, "minDistance", 1200), target)
    both = query("near;minDistance==1000;maxDistance==1200", "Point", list(COMEDIE))
    assert matches(both, target)
    assert not matches(both, shapely.Point(COMEDIE))


@settings(max_examples=200, deadline=None)
@given(
    st.floats(-179, 179),
    st.floats(-80, 80),
    st.floats(-0.05, 0.05),
    st.floats(-0.05, 0.05),
)
def test_point_distances_agree_with_the_geodesic(
    lon: float, lat: float, dlon: float, dlat: float
) -> None:
    other = (lon + dlon, lat + dlat)
    metres = GEOD.inv(lon, lat, *other)[2]
    if metres < 1:
        return
    target = shapely.Point(other)
    assert matches(near((lon, lat), "maxDistance", metres * 1.005), target)
    assert not matches(near((lon, lat), "maxDistance", metres * 0.995), target)
    assert matches(near((lon, lat), "minDistance", metres * 0.995), target)


def test_near_an_extended_geometry_measures_to_its_nearest_point() -> None:
    # A 1 km square block and a point 500 m east of its east edge, at the same latitude.
    block = [box(3.87, 43.60, 3.88, 43.61)]
    east = GEOD.fwd(3.88, 43.605, 90, 500)[:2]
    expected = GEOD.inv(3.88, 43.605, *east)[2]
    target = shapely.Point(east)
    within_05 = query(f"near;maxDistance=={expected * 1.005}", "Polygon", block)
    short_05 = query(f"near;maxDistance=={expected * 0.995}", "Polygon", block)
    assert matches(within_05, target) and not matches(short_05, target)
    # The same, with the roles swapped: a polygon target near a point.
    square = parse_geometry(polygon(*block))
    assert matches(near(east, "maxDistance", expected * 1.005), square)
    assert not matches(near(east, "maxDistance", expected * 0.995), square)
    # Inside the block, the distance is zero.
    assert matches(query("near;maxDistance==0", "Polygon", block), shapely.Point(3.875, 43.605))


def geom(value: dict[str, Any]) -> shapely.Geometry:
    return parse_geometry(value)


DISTRICT = [box(3.86, 43.60, 3.89, 43.62)]
INSIDE = geom(point(3.87, 43.61))
OUTSIDE = geom(point(3.95, 43.61))
ON_EDGE = geom(point(3.86, 43.61))
HALF_OUT = geom(polygon(box(3.88, 43.61, 3.90, 43.615)))
SMALL_BLOCK = geom(polygon(box(3.87, 43.605, 3.875, 43.61)))
CROSSING = geom({"type": "LineString", "coordinates": [[3.85, 43.61], [3.95, 43.61]]})

RELATIONS = [
    ("within", INSIDE, True),
    ("within", ON_EDGE, False),
    ("within", OUTSIDE, False),
    ("within", SMALL_BLOCK, True),
    ("within", HALF_OUT, False),
    ("contains", SMALL_BLOCK, False),
    ("contains", INSIDE, False),
    ("contains", geom(polygon(box(3.8, 43.5, 3.9, 43.7))), True),
    ("intersects", ON_EDGE, True),
    ("intersects", CROSSING, True),
    ("intersects", OUTSIDE, False),
    ("disjoint", OUTSIDE, True),
    ("disjoint", HALF_OUT, False),
    ("disjoint", ON_EDGE, False),
    ("overlaps", HALF_OUT, True),
    ("overlaps", SMALL_BLOCK, False),
    ("overlaps", INSIDE, False),
    ("equals", geom(polygon(box(3.86, 43.60, 3.89, 43.62))), True),
    # The same ring walked from another vertex is the same geometry.
    (
        "equals",
        geom(polygon([[3.89, 43.60], [3.89, 43.62], [3.86, 43.62], [3.86, 43.60], [3.89, 43.60]])),
        True,
    ),
    ("equals", SMALL_BLOCK, False),
]


@pytest.mark.parametrize(("georel", "target", "expected"), RELATIONS)
def test_topological_relations_against_a_district(
    georel: str, target: shapely.Geometry, expected: bool
) -> None:
    assert matches(query(georel, "Polygon", DISTRICT), target) is expected


def test_relations_with_a_point_reference() -> None:
    here = [3.87, 43.61]
    assert matches(query("equals", "Point", here), geom(point(3.87, 43.61)))
    assert matches(query("equals", "Point", here), shapely.Point(3.87, 43.61, 12.0))
    assert not matches(query("equals", "Point", here), geom(point(3.87, 43.6100001)))
    assert matches(query("contains", "Point", here), SMALL_BLOCK.buffer(0.01))
    assert matches(query("contains", "Point", here), geom(point(3.87, 43.61)))
    assert not matches(query("within", "Point", here), geom(point(3.87, 43.61)).buffer(0.01))


def test_a_query_is_safe_to_share_between_threads() -> None:
    shared = query("within", "Polygon", DISTRICT)
    rng = np.random.default_rng(3)
    xs, ys = rng.uniform(3.85, 3.90, 20_000), rng.uniform(43.59, 43.63, 20_000)
    expected = (xs > 3.86) & (xs < 3.89) & (ys > 43.60) & (ys < 43.62)
    results: list[bool] = []

    def work() -> None:
        results.append(bool((match_points(shared, xs, ys) == expected).all()))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 4


# -- SpatialIndex ------------------------------------------------------------------------------

AREA = (3.80, 43.55, 3.95, 43.67)  # Montpellier, about 12 km x 13 km
N_POINTS = 20_000


def brute_force(geoms: dict[Any, shapely.Geometry], q: GeoQuery) -> set[Any]:
    """Every key whose geometry matches: points vectorised, other geometries one by one."""
    point_keys = [k for k, g in geoms.items() if isinstance(g, shapely.Point)]
    xy = shapely.get_coordinates([geoms[k] for k in point_keys])
    hits = match_points(q, xy[:, 0], xy[:, 1])
    found = {k for k, hit in zip(point_keys, hits.tolist(), strict=True) if hit}
    shapes = geoms.keys() - set(point_keys)
    return found | {k for k in shapes if matches(q, geoms[k])}


@pytest.fixture(scope="module")
def city() -> tuple[SpatialIndex, dict[Any, shapely.Geometry]]:
    rng = random.Random(7)
    geoms: dict[Any, shapely.Geometry] = {}
    for i in range(N_POINTS):
        lon = rng.uniform(AREA[0], AREA[2])
        lat = rng.uniform(AREA[1], AREA[3])
        geoms[(f"urn:ngsi-ld:Sensor:{i}", "location")] = shapely.Point(lon, lat)
    for i in range(300):  # buildings, streets, and a few districts spanning many cells
        lon, lat = rng.uniform(AREA[0], AREA[2]), rng.uniform(AREA[1], AREA[3])
        size = rng.choice([0.0005, 0.002, 0.01, 0.05, 0.1])
        if i % 2:
            shape = parse_geometry(polygon(box(lon, lat, lon + size, lat + size * 0.8)))
        else:
            line = [[lon, lat], [lon + size, lat + size / 3], [lon + size / 2, lat + size]]
            shape = parse_geometry({"type": "LineString", "coordinates": line})
        geoms[(f"urn:ngsi-ld:Building:{i}", "location")] = shape
    index = SpatialIndex()
    for key, shape in geoms.items():
        index.add(key, shape)
    return index, geoms


coordinate = st.tuples(st.floats(AREA[0], AREA[2]), st.floats(AREA[1], AREA[3]))


@st.composite
def city_queries(draw: st.DrawFn) -> GeoQuery:
    kind = draw(st.sampled_from(["near-max", "near-min", "near-line", "polygon", "line"]))
    lon, lat = draw(coordinate)
    if kind.startswith("near"):
        metres = draw(st.floats(20, 3000))
        bound = "minDistance" if kind == "near-min" else "maxDistance"
        if kind == "near-line":
            line = [[lon, lat], [lon + 0.004, lat + 0.002]]
            return query(f"near;{bound}=={metres}", "LineString", line)
        return near((lon, lat), bound, metres)
    dx, dy = draw(st.floats(0.001, 0.03)), draw(st.floats(0.001, 0.03))
    georel = draw(st.sampled_from(["within", "intersects", "disjoint", "contains", "overlaps"]))
    if kind == "line":
        return query(georel, "LineString", [[lon, lat], [lon + dx, lat + dy]])
    triangle = [[lon, lat], [lon + dx, lat], [lon + dx / 2, lat + dy], [lon, lat]]
    return query(georel, "Polygon", [triangle])


@settings(max_examples=60, deadline=None)
@given(city_queries())
def test_index_answers_exactly_like_brute_force(
    city: tuple[SpatialIndex, dict[Any, shapely.Geometry]], q: GeoQuery
) -> None:
    index, geoms = city
    expected = brute_force(geoms, q)
    assert index.query(q) == expected
    assert index.candidates(q) >= expected


def test_index_candidates_are_pruned_and_points_checked_one_by_one(
    city: tuple[SpatialIndex, dict[Any, shapely.Geometry]],
) -> None:
    index, geoms = city
    q = near(COMEDIE, "maxDistance", 500)
    candidates = index.candidates(q)
    exact = {k for k in candidates if matches(q, geoms[k])}
    assert exact == index.query(q)
    assert 0 < len(exact) < len(candidates) < len(geoms) / 10


def test_index_follows_adds_moves_and_removes() -> None:
    index = SpatialIndex()
    q = near(COMEDIE, "maxDistance", 1200)
    far = query("near;minDistance==1200", "Point", list(COMEDIE))
    index.add(("a", "location"), shapely.Point(NORTH_1100))
    index.add(("b", "location"), shapely.Point(3.95, 43.61))
    index.add(("c", "location"), geom(polygon(box(3.87, 43.60, 3.88, 43.61))))
    assert len(index) == 3
    assert index.query(q) == {("a", "location"), ("c", "location")}
    assert index.query(far) == {("b", "location")}
    index.add(("a", "location"), shapely.Point(3.95, 43.62))  # moved away
    index.add(("b", "location"), shapely.Point(COMEDIE))  # moved here
    assert len(index) == 3
    assert index.query(q) == {("b", "location"), ("c", "location")}
    assert index.query(far) == {("a", "location")}
    index.remove(("c", "location"))
    index.remove(("never", "added"))
    assert index.query(q) == {("b", "location")}
    assert index.geometry(("c", "location")) is None
    assert index.geometry(("a", "location")) == shapely.Point(3.95, 43.62)
    assert len(index) == 2


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), coordinate), min_size=1, max_size=200))
def test_index_stays_consistent_through_random_updates(
    updates: list[tuple[int, tuple[float, float]]],
) -> None:
    index = SpatialIndex(cell_size=0.005)
    current: dict[Any, shapely.Geometry] = {}
    for n, (lon, lat) in updates:
        key = ("urn:e", n)
        if n % 7 == 0 and key in current:
            index.remove(key)
            del current[key]
        else:
            shape = shapely.Point(lon, lat) if n % 3 else shapely.Point(lon, lat).buffer(0.002)
            index.add(key, shape)
            current[key] = shape
    assert len(index) == len(current)
    for q in (near(COMEDIE, "maxDistance", 3000), query("disjoint", "Polygon", DISTRICT)):
        assert index.query(q) == brute_force(current, q)


def test_index_finds_long_geometries_whose_edges_bulge_in_the_projection() -> None:
    # Between two points of the 60th parallel the geodesic runs ~420 m north of it; ``near``
    # measures along straight edges of the local projection, which follow the geodesic.
    street = parse_geometry({"type": "LineString", "coordinates": [[9.0, 60.0], [11.0, 60.0]]})
    index = SpatialIndex()
    index.add("street", street)
    north_of_it = GEOD.fwd(10.0, 60.0, 0, 400)[:2]
    q = near(north_of_it, "maxDistance", 50)
    assert matches(q, street)
    assert index.query(q) == {"street"}


def test_index_near_the_antimeridian_and_the_pole() -> None:
    index = SpatialIndex()
    index.add("west", shapely.Point(-179.999, 10))
    index.add("east", shapely.Point(179.999, 10))
    index.add("pole", shapely.Point(120, 89.999))
    index.add("other side", shapely.Point(-60, 89.999))
    gap = GEOD.inv(179.999, 10, -179.999, 10)[2]
    assert index.query(near((179.999, 10), "maxDistance", gap + 1)) == {"west", "east"}
    assert index.query(near((0, 90), "maxDistance", 500)) == {"pole", "other side"}


def test_index_is_thread_safe_under_concurrent_writes_and_queries() -> None:
    index = SpatialIndex()
    q = near(COMEDIE, "maxDistance", 2000)
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(3000):
                key = (seed, i % 500)
                if i % 5 == 0:
                    index.remove(key)
                else:
                    lon, lat = rng.uniform(AREA[0], AREA[2]), rng.uniform(AREA[1], AREA[3])
                    index.add(key, shapely.Point(lon, lat))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    every = {(s, i) for s in (1, 2) for i in range(500)}

    def read() -> None:
        try:
            for _ in range(200):
                assert index.query(q) <= every and index.candidates(q) <= every
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s,)) for s in (1, 2)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    geoms = {k: index.geometry(k) for k in every}
    current = {k: g for k, g in geoms.items() if g is not None}
    assert len(index) == len(current)
    assert index.query(q) == brute_force(current, q)
