"""GeoSPARQL spatial filters over 100,000 points on the embedded store: the engine's scan against
the spatial-index rewrite (twin/geo/geosparql.py). Prints p50/p95 in milliseconds.

    python -m bench.geosparql_bench [--points 100000] [--runs 30] [--sweep]

The rewrite's time includes `prepare` (index lookup, exact test, building the VALUES block) and
the query itself; both sides return the same rows (checked on every run).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

import shapely
from pyoxigraph import Literal, NamedNode, Quad, QuerySolutions, Store

from urbis.ontology import ns
from urbis.twin.entities import EntityService
from urbis.twin.geo import wkt_literal
from urbis.twin.geo.geosparql import FUNCTIONS, MAX_VALUES, prepare
from urbis.twin.rdf import GEO_AS_WKT, GEO_HAS_GEOMETRY, GEO_WKT_LITERAL, RDF_TYPE, geometry_node
from urbis.twin.store.oxigraph import OxigraphTenant

PREFIXES = (
    "PREFIX geo: <http://www.opengis.net/ont/geosparql#>\n"
    "PREFIX geof: <http://www.opengis.net/def/function/geosparql/>\n"
    "PREFIX uom: <http://www.opengis.net/def/uom/OGC/1.0/>\n"
)
CENTRE = (3.8767, 43.6108)
# An irregular district of about 1.5 km x 2 km in a city of about 8 km x 7 km.
DISTRICT = (
    "POLYGON((3.866 43.603, 3.884 43.601, 3.893 43.612, 3.885 43.621, 3.871 43.619, 3.866 43.603))"
)
# A quarter of about 1.6 km x 5 km: some 15,000 of the 100,000 points.
QUARTER = (
    "POLYGON((3.8267 43.5808, 3.8467 43.5808, 3.8467 43.6258, 3.8267 43.6258, 3.8267 43.5808))"
)
NEIGHBOURHOOD = "POLYGON((3.870 43.606, 3.878 43.605, 3.880 43.611, 3.872 43.612, 3.870 43.606))"
TYPED = "SELECT ?e WHERE { ?e a <https://example.org/Bin> ; geo:hasGeometry/geo:asWKT ?w . "
UNTYPED = "SELECT ?e WHERE { ?e geo:hasGeometry/geo:asWKT ?w . "
# name -> (query, max_values given to prepare)
QUERIES: dict[str, tuple[str, int | None]] = {
    "sfWithin district, typed (UNION of 7 copies)": (
        TYPED + f'FILTER(geof:sfWithin(?w, "<{ns.CRS84}> {DISTRICT}"^^geo:wktLiteral)) }}',
        MAX_VALUES,
    ),
    "sfWithin district, untyped, no cap": (
        UNTYPED + f'FILTER(geof:sfWithin(?w, "<{ns.CRS84}> {DISTRICT}"^^geo:wktLiteral)) }}',
        None,
    ),
    "sfWithin quarter, typed (over the cap: scan kept)": (
        TYPED + f'FILTER(geof:sfWithin(?w, "<{ns.CRS84}> {QUARTER}"^^geo:wktLiteral)) }}',
        MAX_VALUES,
    ),
    "sfWithin neighbourhood, typed": (
        TYPED + f'FILTER(geof:sfWithin(?w, "<{ns.CRS84}> {NEIGHBOURHOOD}"^^geo:wktLiteral)) }}',
        MAX_VALUES,
    ),
    "distance < 250 m, typed": (
        TYPED + f'FILTER(geof:distance(?w, "<{ns.CRS84}> POINT({CENTRE[0]} {CENTRE[1]})"'
        "^^geo:wktLiteral, uom:metre) < 250) }",
        MAX_VALUES,
    ),
}


def build(n: int, seed: int = 1) -> EntityService:
    rng = random.Random(seed)
    graph = NamedNode("urn:urbis:dataset:bench")
    kind = NamedNode("https://example.org/Bin")
    quads: list[Quad] = []
    for i in range(n):
        lon = CENTRE[0] + rng.uniform(-0.05, 0.05)
        lat = CENTRE[1] + rng.uniform(-0.03, 0.03)
        entity = NamedNode(f"urn:ngsi-ld:Bin:{i}")
        node = geometry_node(entity.value, ns.NGSI_LD + "location", None)
        wkt = Literal(wkt_literal(shapely.Point(lon, lat)), datatype=GEO_WKT_LITERAL)
        quads += [
            Quad(entity, RDF_TYPE, kind, graph),
            Quad(entity, GEO_HAS_GEOMETRY, node, graph),
            Quad(node, GEO_AS_WKT, wkt, graph),
        ]
    store = Store()
    store.bulk_extend(quads)
    return EntityService(OxigraphTenant(store))  # builds the spatial index as start-up does


def rows(store: Store, query: str) -> set[str]:
    functions = {NamedNode(iri): f for iri, f in FUNCTIONS.items()}
    result = store.query(query, use_default_graph_as_union=True, custom_functions=functions)
    assert isinstance(result, QuerySolutions)
    return {row[0].value for row in result if row[0] is not None}


def timed(runs: int, work: Callable[[], set[str]]) -> tuple[list[float], set[str]]:
    times: list[float] = []
    answer: set[str] = set()
    for _ in range(runs):
        start = time.perf_counter()
        answer = work()
        times.append((time.perf_counter() - start) * 1000)
    return times, answer


def percentiles(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):7.1f} ms  p95 {p95:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--sweep", action="store_true", help="also time the rewrite by the size of the match set"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    service = build(args.points)
    tenant = service.store
    assert isinstance(tenant, OxigraphTenant)
    store = tenant.store
    print(f"{args.points} points loaded and indexed in {time.perf_counter() - started:.1f} s")
    for name, (body, cap) in QUERIES.items():
        query = PREFIXES + body

        def scan_rows(q: str = query) -> set[str]:
            return rows(store, q)

        def prepare_only(q: str = query, cap: int | None = cap) -> set[str]:
            return {prepare(q, service.index, max_values=cap)[0]}

        def rewritten(q: str = query, cap: int | None = cap) -> set[str]:
            return rows(store, prepare(q, service.index, max_values=cap)[0])

        scan_times, scan = timed(3, scan_rows)
        prepare_times, _ = timed(args.runs, prepare_only)
        fast_times, fast = timed(args.runs, rewritten)
        assert fast == scan, f"{name}: the rewrite changed the answer"
        load = os.getloadavg()[0]
        print(f"{name} ({len(scan)} rows, load {load:.1f})", flush=True)
        print(f"  engine scan        {percentiles(scan_times)}")
        print(f"  prepare only       {percentiles(prepare_times)}")
        print(f"  rewrite (total)    {percentiles(fast_times)}")
    if args.sweep:
        sweep(service, store, args.runs)


def sweep(service: EntityService, store: Store, runs: int) -> None:
    """The rewrite (prepare and query) over strips of growing width, with a type pattern."""
    x0, y0, y1 = 3.8267, 43.5808, 43.6408
    for width in (0.0009, 0.0018, 0.0027, 0.0045, 0.0063, 0.009):
        strip = f"POLYGON(({x0} {y0}, {x0 + width} {y0}, {x0 + width} {y1}, {x0} {y1}, {x0} {y0}))"
        query = (
            PREFIXES
            + TYPED
            + f'FILTER(geof:sfWithin(?w, "<{ns.CRS84}> {strip}"^^geo:wktLiteral)) }}'
        )

        def prepare_only(q: str = query) -> set[str]:
            return {prepare(q, service.index)[0]}

        def rewritten(q: str = query) -> set[str]:
            return rows(store, prepare(q, service.index)[0])

        prepare_times, (text,) = timed(runs, prepare_only)
        fast_times, fast = timed(runs, rewritten)
        copies = text.count(" UNION ") + 1 if "VALUES" in text else 0
        load = os.getloadavg()[0]
        print(f"strip of {len(fast)} rows, {copies} copies (load {load:.1f})", flush=True)
        print(f"  prepare only       {percentiles(prepare_times)}")
        print(f"  rewrite (total)    {percentiles(fast_times)}")


if __name__ == "__main__":
    main()
