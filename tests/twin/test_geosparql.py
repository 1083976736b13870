"""GeoSPARQL functions and the spatial-index rewrite, checked against brute-force shapely/pyproj
and against the engine's own scan of the same store."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import shapely
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyoxigraph import Literal, NamedNode, Quad, QuerySolutions, Store
from pyproj import Geod

from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.ontology import ns
from urbis.twin.entities import EntityService
from urbis.twin.geo import wkt_literal
from urbis.twin.geo.geosparql import (
    FUNCTIONS,
    VALUES_CHUNK,
    distance_metres,
    parse_wkt,
    prepare,
    stored_literals,
)
from urbis.twin.rdf import GEO_AS_WKT, GEO_HAS_GEOMETRY, GEO_WKT_LITERAL, RDF_TYPE, geometry_node
from urbis.twin.store.oxigraph import OxigraphTenant

GEOD = Geod(ellps="WGS84")
PREFIXES = (
    "PREFIX geo: <http://www.opengis.net/ont/geosparql#>\n"
    "PREFIX geof: <http://www.opengis.net/def/function/geosparql/>\n"
    "PREFIX uom: <http://www.opengis.net/def/uom/OGC/1.0/>\n"
)
LOCATION = ns.NGSI_LD + "location"
CENTRE = (3.8767, 43.6108)
DISTRICT = (
    "POLYGON((3.866 43.603, 3.884 43.601, 3.893 43.612, 3.885 43.621, 3.871 43.619, 3.866 43.603))"
)


def lit(geom: shapely.Geometry | str) -> str:
    text = geom if isinstance(geom, str) else shapely.to_wkt(geom, rounding_precision=-1)
    return f'"<{ns.CRS84}> {text}"^^geo:wktLiteral'


def term(text: str) -> Literal:
    return Literal(f"<{ns.CRS84}> {text}", datatype=GEO_WKT_LITERAL)


def fill(points: list[tuple[float, float]]) -> EntityService:
    """A store with one entity per point, in the twin's layout; the index is built the way
    start-up builds it (from the stored literals)."""
    graph = NamedNode("urn:urbis:dataset:points")
    kind = NamedNode("https://example.org/Bin")
    quads: list[Quad] = []
    for i, (lon, lat) in enumerate(points):
        entity = NamedNode(f"urn:ngsi-ld:Bin:{i}")
        node = geometry_node(entity.value, LOCATION, None)
        wkt = Literal(wkt_literal(shapely.Point(lon, lat)), datatype=GEO_WKT_LITERAL)
        quads += [
            Quad(entity, RDF_TYPE, kind, graph),
            Quad(entity, GEO_HAS_GEOMETRY, node, graph),
            Quad(node, GEO_AS_WKT, wkt, graph),
        ]
    store = Store()
    store.bulk_extend(quads)
    return EntityService(OxigraphTenant(store))


def run(service: EntityService, query: str) -> set[tuple[str | None, ...]]:
    """Rows of a query with the custom functions registered, as a set of lexical tuples."""
    store = service.store
    assert isinstance(store, OxigraphTenant)
    functions = {NamedNode(iri): f for iri, f in FUNCTIONS.items()}
    result = store.store.query(query, use_default_graph_as_union=True, custom_functions=functions)
    assert isinstance(result, QuerySolutions)
    names = [v.value for v in result.variables]
    return {tuple(None if row[n] is None else row[n].value for n in names) for row in result}


def both(service: EntityService, query: str) -> tuple[set[Any], set[Any], str]:
    """Rows of the query as the engine scans it and as rewritten, and the rewritten text."""
    rewritten, _ = prepare(query, service.index)
    return run(service, query), run(service, rewritten), rewritten


def random_points(n: int, seed: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [
        (CENTRE[0] + rng.uniform(-0.04, 0.04), CENTRE[1] + rng.uniform(-0.03, 0.03))
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def points() -> list[tuple[float, float]]:
    return random_points(3000, seed=7)


@pytest.fixture(scope="module")
def service(points: list[tuple[float, float]]) -> EntityService:
    return fill(points)


def entity_ids(points: list[tuple[float, float]], keep: np.ndarray[Any, Any]) -> set[Any]:
    return {(f"urn:ngsi-ld:Bin:{i}",) for i in np.flatnonzero(keep).tolist()}


# -- the custom functions ------------------------------------------------------------------


def call(name: str, *args: Any) -> Any:
    return FUNCTIONS[ns.GEOF + name](*args)


METRE = NamedNode("http://www.opengis.net/def/uom/OGC/1.0/metre")


def test_distance_between_points_is_geodesic() -> None:
    got = call("distance", term("POINT(3.87 43.61)"), term("POINT(3.88 43.62)"), METRE)
    assert got.datatype == NamedNode(ns.XSD + "double")
    assert float(got.value) == pytest.approx(GEOD.inv(3.87, 43.61, 3.88, 43.62)[2], abs=1e-6)
    km = call(
        "distance",
        term("POINT(3.87 43.61)"),
        term("POINT(3.88 43.62)"),
        NamedNode("http://www.opengis.net/def/uom/OGC/1.0/kilometre"),
    )
    assert float(km.value) == pytest.approx(float(got.value) / 1000)


def test_distance_to_a_polygon_in_metres() -> None:
    """pyoxigraph answers nothing for point-polygon distances; ours matches a brute force over
    the polygon's edge, sampled densely, to 0.1 %."""
    polygon = shapely.from_wkt(DISTRICT)
    point = shapely.Point(3.90, 43.60)
    got = float(call("distance", term(point.wkt), term(DISTRICT), METRE).value)
    edge = shapely.segmentize(polygon.exterior, 1e-5)
    xy = shapely.get_coordinates(edge)
    brute = min(
        GEOD.inv(np.full(len(xy), point.x), np.full(len(xy), point.y), xy[:, 0], xy[:, 1])[2]
    )
    assert got == pytest.approx(brute, rel=1e-3)
    inside = call("distance", term("POINT(3.88 43.61)"), term(DISTRICT), METRE)
    assert float(inside.value) == 0.0
    assert distance_metres(polygon, polygon.buffer(-0.001)) == 0.0


def test_distance_errors_are_unbound() -> None:
    assert call("distance", term("POINT(3.87 43.61)"), Literal("POINT(1 2)"), METRE) is None
    assert (
        call("distance", term("POINT(3.87 43.61)"), term("POINT(1 2)"), NamedNode("urn:x")) is None
    )
    assert call("distance", term("POINT(3.87 43.61)"), term("NOT WKT"), METRE) is None


@given(
    lon=st.floats(-170, 170),
    lat=st.floats(-80, 80),
    radius=st.floats(1, 50_000),
    azimuth=st.floats(0, 360),
)
@settings(max_examples=60, deadline=None)
def test_buffer_holds_points_within_the_radius(
    lon: float, lat: float, radius: float, azimuth: float
) -> None:
    out = call("buffer", term(f"POINT({lon!r} {lat!r})"), Literal(repr(radius)), METRE)
    shape = parse_wkt(out.value)
    assert out.value.startswith(f"<{ns.CRS84}> POLYGON")
    near_lon, near_lat, _ = GEOD.fwd(lon, lat, azimuth, radius * 0.99)
    far_lon, far_lat, _ = GEOD.fwd(lon, lat, azimuth, radius * 1.01)
    assert shapely.contains_xy(shape, near_lon, near_lat)
    assert not shapely.contains_xy(shape, far_lon, far_lat)


def test_boundary_and_set_operations() -> None:
    square = term("POLYGON((0 0, 1 0, 1 1, 0 1, 0 0))")
    other = term("POLYGON((0.5 0, 2 0, 2 1, 0.5 1, 0.5 0))")
    boundary = parse_wkt(call("boundary", square).value)
    assert boundary is not None and boundary.equals(
        shapely.from_wkt("LINESTRING(0 0, 1 0, 1 1, 0 1, 0 0)")
    )
    expected = {
        "intersection": "POLYGON((0.5 0, 1 0, 1 1, 0.5 1, 0.5 0))",
        "union": "POLYGON((0 0, 2 0, 2 1, 0 1, 0 0))",
        "difference": "POLYGON((0 0, 0.5 0, 0.5 1, 0 1, 0 0))",
    }
    for name, wkt in expected.items():
        result = parse_wkt(call(name, square, other).value)
        assert result is not None and result.equals(shapely.from_wkt(wkt)), name
    empty = call("intersection", term("POINT(5 5)"), square)
    assert empty.value == f"<{ns.CRS84}> POINT EMPTY"


def test_functions_run_inside_queries(service: EntityService) -> None:
    point, outside = lit("POINT(3.87 43.61)"), lit("POINT(3.90 43.60)")
    rows = run(
        service,
        PREFIXES + f"SELECT ?b ?d WHERE {{ BIND(geof:buffer({point}, 100, uom:metre) AS ?b) "
        f"BIND(geof:distance({outside}, {lit(DISTRICT)}, uom:metre) AS ?d) }}",
    )
    ((buffer, distance),) = rows
    assert buffer is not None and buffer.startswith(f"<{ns.CRS84}> POLYGON")
    assert distance is not None and float(distance) > 0


def test_epsg_4326_literals_are_read_latitude_first() -> None:
    swapped = Literal(
        "<http://www.opengis.net/def/crs/EPSG/0/4326> POINT(43.62 3.88)", datatype=GEO_WKT_LITERAL
    )
    got = call("distance", term("POINT(3.87 43.61)"), swapped, METRE)
    assert float(got.value) == pytest.approx(GEOD.inv(3.87, 43.61, 3.88, 43.62)[2])


# -- the rewrite: same rows as the scan and as brute force ---------------------------------


def test_within_a_district(service: EntityService, points: list[tuple[float, float]]) -> None:
    query = (
        PREFIXES + "SELECT ?e WHERE { ?e a <https://example.org/Bin> ; "
        f"geo:hasGeometry/geo:asWKT ?w . FILTER(geof:sfWithin(?w, {lit(DISTRICT)})) }}"
    )
    scan, fast, rewritten = both(service, query)
    assert "sfWithin" not in rewritten and "VALUES ?w" in rewritten
    xy = np.array(points)
    brute = entity_ids(points, shapely.contains_xy(shapely.from_wkt(DISTRICT), xy[:, 0], xy[:, 1]))
    assert len(brute) > 100
    assert fast == scan == brute


@pytest.mark.parametrize(
    "expression",
    [
        "geof:sfIntersects(?w, {c})",
        "geof:sfIntersects({c}, ?w)",
        "geof:sfContains({c}, ?w)",
        "geof:sfWithin(?w, {c}) && ?e != <urn:ngsi-ld:Bin:1>",
        "(geof:sfWithin(?w, {c}))",
    ],
)
def test_relations_and_argument_orders(service: EntityService, expression: str) -> None:
    c = lit(DISTRICT)
    query = (
        PREFIXES + "SELECT ?e ?w WHERE { ?e geo:hasGeometry ?g . ?g geo:asWKT ?w . "
        f"FILTER({expression.format(c=c)}) }}"
    )
    scan, fast, rewritten = both(service, query)
    assert rewritten != query and len(scan) > 100
    assert fast == scan


def test_contains_a_point(service: EntityService, points: list[tuple[float, float]]) -> None:
    lon, lat = points[42]
    query = (
        PREFIXES + "SELECT ?e WHERE { ?e geo:hasGeometry/geo:asWKT ?w "
        f"FILTER geof:sfContains(?w, {lit(shapely.Point(lon, lat))}) }}"
    )
    scan, fast, rewritten = both(service, query)
    assert "VALUES" in rewritten
    assert fast == scan == {("urn:ngsi-ld:Bin:42",)}


@pytest.mark.parametrize(
    "template",
    [
        "geof:distance(?w, {c}, uom:metre) < {n}",
        "geof:distance({c}, ?w, <http://www.opengis.net/def/uom/OGC/1.0/metre>) <= {n}",
        "{n} > geof:distance(?w, {c}, uom:metre)",
        "{n} >= geof:distance({c}, ?w, uom:metre) && STRSTARTS(STR(?e), 'urn:')",
    ],
)
@pytest.mark.parametrize("reference", ["POINT(3.8767 43.6108)", DISTRICT])
def test_distances(
    service: EntityService, points: list[tuple[float, float]], template: str, reference: str
) -> None:
    query = (
        PREFIXES + "SELECT ?e WHERE { ?e geo:hasGeometry ?g . ?g geo:asWKT ?w . "
        f"FILTER({template.format(c=lit(reference), n=900)}) }}"
    )
    scan, fast, rewritten = both(service, query)
    assert "VALUES" in rewritten
    ref = shapely.from_wkt(reference)
    metres = np.array([distance_metres(shapely.Point(p), ref) for p in points])
    assert fast == scan == entity_ids(points, metres < 900)


@given(
    seed=st.integers(0, 10_000),
    corners=st.lists(
        st.tuples(st.floats(3.83, 3.92), st.floats(43.58, 43.64)), min_size=3, max_size=8
    ),
    relation=st.sampled_from(["sfWithin", "sfIntersects"]),
)
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_polygons_match_brute_force(
    seed: int, corners: list[tuple[float, float]], relation: str
) -> None:
    hull = shapely.MultiPoint(corners).convex_hull
    if not isinstance(hull, shapely.Polygon):
        return
    points = random_points(300, seed)
    service = fill(points)
    query = (
        PREFIXES + "SELECT ?e WHERE { ?e geo:hasGeometry/geo:asWKT ?w . "
        f"FILTER(geof:{relation}(?w, {lit(hull)})) }}"
    )
    scan, fast, _ = both(service, query)
    xy = np.array(points)
    predicate = shapely.contains_xy if relation == "sfWithin" else shapely.intersects_xy
    assert fast == scan == entity_ids(points, predicate(hull, xy[:, 0], xy[:, 1]))


# -- what the rewrite leaves alone -----------------------------------------------------------

UNCHANGED = [
    "SELECT * WHERE { ?s ?p ?o } LIMIT 10",
    "PREFIX ex: <http://example.org/> SELECT ?s WHERE { ?s ex:distance ?d FILTER(?d < 5) }",
    # variable against variable: a spatial join, left to the engine
    "SELECT ?a WHERE { ?a geo:asWKT ?x . ?b geo:asWKT ?y FILTER(geof:sfWithin(?x, ?y)) }",
    # a disjunction cannot be split
    "SELECT ?a WHERE { ?a geo:asWKT ?w FILTER(geof:sfWithin(?w, {c}) || ?a = <urn:x>) }",
    # ?w is not bound by a triple pattern of the filter's group
    "SELECT ?a WHERE { ?a geo:hasGeometry ?g OPTIONAL { ?g geo:asWKT ?w } "
    "FILTER(geof:sfWithin(?w, {c})) }",
    # remote data and EXISTS bodies are never touched
    "SELECT ?a WHERE { SERVICE <http://example.org/sparql> { ?a geo:asWKT ?w "
    "FILTER(geof:sfWithin(?w, {c})) } }",
    "SELECT ?a WHERE { ?a ?p ?o FILTER EXISTS { ?a geo:asWKT ?w FILTER(geof:sfWithin(?w, {c})) } }",
    # greater-than distances, other units, non-CRS84 constants
    "SELECT ?a WHERE { ?a geo:asWKT ?w FILTER(geof:distance(?w, {p}, uom:metre) > 10) }",
    "SELECT ?a WHERE { ?a geo:asWKT ?w FILTER(geof:distance(?w, {p}, uom:radian) < 1) }",
    'SELECT ?a WHERE { ?a geo:asWKT ?w FILTER(geof:sfWithin(?w, "<http://www.opengis.net/def/'
    'crs/EPSG/0/4326> POINT(43 3)"^^geo:wktLiteral)) }',
    # an invalid constant geometry (self-intersecting) stays with the engine
    'SELECT ?a WHERE { ?a geo:asWKT ?w FILTER(geof:sfWithin(?w, "POLYGON((0 0, 1 1, 1 0, 0 1, '
    '0 0))"^^geo:wktLiteral)) }',
    # a string that merely mentions the function
    "SELECT ?a WHERE { ?a ?p 'geof:sfWithin(?w, x)' } # sfWithin distance",
    # unbalanced text is not ours to judge
    "SELECT ?a WHERE { ?a geo:asWKT ?w FILTER(geof:sfWithin(?w, {c})) ",
]


@pytest.mark.parametrize("template", UNCHANGED)
def test_queries_the_rewrite_leaves_byte_identical(service: EntityService, template: str) -> None:
    query = PREFIXES + template.replace("{c}", lit(DISTRICT)).replace(
        "{p}", lit("POINT(3.87 43.6)")
    )
    assert prepare(query, service.index)[0] == query


def test_too_many_matches_are_left_to_the_engine(service: EntityService) -> None:
    query = (
        PREFIXES + "SELECT ?e WHERE { ?e geo:hasGeometry/geo:asWKT ?w . "
        f"FILTER(geof:sfWithin(?w, {lit(DISTRICT)})) }}"
    )
    assert prepare(query, service.index, max_values=10)[0] == query
    assert prepare(query, service.index, max_values=None)[0] != query


@pytest.fixture(scope="module")
def ten_thousand() -> EntityService:
    return fill(random_points(10_000, seed=5))


# A third of the ten thousand points: over one VALUES block (VALUES_CHUNK rows).
WEST = "POLYGON((3.8367 43.58, 3.8607 43.58, 3.8607 43.64, 3.8367 43.64, 3.8367 43.58))"


def test_a_large_match_set_with_a_type_pattern_is_rewritten(ten_thousand: EntityService) -> None:
    """Thousands of matches: the group is copied into a UNION, one block of at most
    VALUES_CHUNK literals per copy (pyoxigraph joins a larger block row by row)."""
    query = (
        PREFIXES + "SELECT ?e WHERE { ?e a <https://example.org/Bin> ; "
        f"geo:hasGeometry/geo:asWKT ?w . FILTER(geof:sfWithin(?w, {lit(WEST)})) }}"
    )
    scan, fast, rewritten = both(ten_thousand, query)
    assert len(scan) > 2 * VALUES_CHUNK
    assert "sfWithin" not in rewritten and rewritten.count("UNION") >= 2
    assert all(block.count("^^") <= VALUES_CHUNK for block in rewritten.split("VALUES")[1:])
    assert fast == scan


def test_copies_keep_outer_variables_of_optional_filters(ten_thousand: EntityService) -> None:
    """The filters of a copied group stay outside the UNION: in an OPTIONAL they may name the
    outer group's variables; a second, small spatial block goes into every copy."""
    near = f"geof:distance(?w, {lit('POINT(3.85 43.61)')}, uom:metre) < 300"
    query = (
        PREFIXES + "SELECT ?e ?w WHERE { ?e a <https://example.org/Bin> . "
        "BIND(STRLEN(STR(?e)) AS ?n) "
        "OPTIONAL { ?e geo:hasGeometry ?g . ?g geo:asWKT ?w . ?e a ?type "
        f"FILTER(?n > 18 && geof:sfWithin(?w, {lit(WEST)})) FILTER({near}) }} }}"
    )
    scan, fast, rewritten = both(ten_thousand, query)
    assert "UNION" in rewritten and "geof:" not in rewritten[len(PREFIXES) :].replace(
        "PREFIX geof", ""
    )
    assert "FILTER(?n > 18)" in rewritten
    assert any(w is not None for _, w in scan) and any(w is None for _, w in scan)
    assert fast == scan


def test_copied_groups_nest(ten_thousand: EntityService) -> None:
    """A copied group inside a copied group: the inner copies are repeated in each outer one."""
    query = (
        PREFIXES + "SELECT ?e ?w2 WHERE { ?e a <https://example.org/Bin> ; "
        "geo:hasGeometry/geo:asWKT ?w . OPTIONAL { ?e geo:hasGeometry ?g . ?g geo:asWKT ?w2 "
        f"FILTER(geof:sfIntersects(?w2, {lit(WEST)})) }} "
        f"FILTER(geof:sfWithin(?w, {lit(WEST)})) }}"
    )
    scan, fast, rewritten = both(ten_thousand, query)
    assert "geof:sf" not in rewritten and rewritten.count("OPTIONAL") >= 3
    assert fast == scan and len(scan) > 2 * VALUES_CHUNK


def test_groups_with_blank_node_labels_are_not_copied(ten_thousand: EntityService) -> None:
    query = (
        PREFIXES + "SELECT ?e WHERE { ?e a <https://example.org/Bin> ; geo:hasGeometry _:g . "
        f"_:g geo:asWKT ?w . FILTER(geof:sfWithin(?w, {lit(WEST)})) }}"
    )
    assert prepare(query, ten_thousand.index)[0] == query


def test_the_rewrite_needs_no_geof_support(service: EntityService) -> None:
    """Engines without geof: (Virtuoso 7) get a query that mentions none when all is answered."""
    spatial = f"FILTER(geof:sfWithin(?w, {lit(DISTRICT)}))"
    outside = (
        "SELECT ?e WHERE { GRAPH ?graph { ?e geo:hasGeometry ?g . ?g geo:asWKT ?w } "
        f"{spatial} }}"
    )
    inside = (
        "SELECT ?e WHERE { GRAPH ?graph { ?e geo:hasGeometry ?g . ?g geo:asWKT ?w "
        f"{spatial} }} }}"
    )
    # ?w is bound in the nested group only: the outer filter is left to the engine
    assert prepare(PREFIXES + outside, service.index)[0] == PREFIXES + outside
    rewritten = prepare(PREFIXES + inside, service.index)[0]
    assert "geof:" not in rewritten[len(PREFIXES) :]
    assert run(service, rewritten) == run(service, PREFIXES + inside)
    assert run(service, rewritten) == run(service, PREFIXES + outside)


# -- end to end: the demo city through the real entity service, and 100k points --------------


@pytest.fixture(scope="module")
def demo() -> Iterator[EntityService]:
    app = create_app(Settings(demo=True, demo_live_seconds=0, admin_token="t"))
    with TestClient(app):
        yield app.state.urbis.twin.tenant("")


def test_demo_city_bins_near_the_centre(demo: EntityService) -> None:
    query = (
        PREFIXES
        + "PREFIX waste: <https://smartdatamodels.org/dataModel.WasteManagement/>\n"
        + "SELECT ?bin ?fill WHERE { ?bin a waste:WasteContainer ; waste:fillingLevel ?fill ; "
        + "geo:hasGeometry/geo:asWKT ?w . "
        + f"FILTER(?fill > 0.5 && geof:distance(?w, {lit('POINT(3.8767 43.6108)')}, uom:metre) "
        + "< 1500) }"
    )
    scan, fast, rewritten = both(demo, query)
    assert "VALUES ?w" in rewritten and "?fill > 0.5" in rewritten
    assert fast == scan and len(fast) > 3


def test_hundred_thousand_points_same_rows_as_the_scan() -> None:
    points = random_points(100_000, seed=11)
    service = fill(points)
    assert len(service.index) == 100_000
    query = (
        PREFIXES + "SELECT ?e WHERE { ?e geo:hasGeometry/geo:asWKT ?w . "
        f"FILTER(geof:sfWithin(?w, {lit(DISTRICT)})) }}"
    )
    rewritten, _ = prepare(query, service.index, max_values=None)
    assert rewritten != query
    fast, scan = run(service, rewritten), run(service, query)
    assert len(fast) > 1000
    assert fast == scan


@given(
    st.lists(
        st.tuples(st.floats(-180, 180), st.floats(-90, 90), st.floats(-1e3, 1e3)),
        min_size=1,
        max_size=20,
    ),
    st.booleans(),
)
def test_literals_are_rebuilt_byte_identical(coords: list[tuple[float, ...]], z: bool) -> None:
    """The rewrite names stored literals: regenerated from the index's geometries (as rebuilt
    from the stored text at start-up), they must be the stored bytes."""
    geometries = [shapely.Point(c if z else c[:2]) for c in coords]
    geometries.append(shapely.LineString([c[:2] for c in coords] * 2))
    stored = {wkt_literal(g) for g in geometries}
    rebuilt = [shapely.from_wkt(text.split("> ", 1)[1]) for text in stored]
    assert stored_literals(rebuilt) == stored
