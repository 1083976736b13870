"""The researcher cookbook of ontology/README.md, run against the demo city.

Each `<!-- cookbook: name -->` query runs on the store the entity service wrote (the demo city
loaded as the API loads it), and its answer is compared with the same question answered in
plain Python over `twin.demo.generate()`: no expected number is written down here.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import shapely
from fastapi.testclient import TestClient
from pyoxigraph import Literal, NamedNode, QuerySolutions, QueryTriples, Store

from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.demo import city as demo
from urbis.demo.loading import load_demo
from urbis.ontology.shapes import prefixes, sparql_prefixes

README = Path(__file__).resolve().parents[2] / "src" / "urbis" / "ontology" / "README.md"
TEXT = README.read_text(encoding="utf-8")
COOKBOOK = dict(
    re.findall(r"<!-- cookbook: ([\w-]+) -->\n(?:(?!```).)*?```sparql\n(.*?)```", TEXT, re.S)
)
EARTH_RADIUS_M = 6_371_008.8  # mean radius: what pyoxigraph's geof:distance uses
Entity = dict[str, Any]
Row = dict[str, Any]


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    with TestClient(create_app(Settings(admin_token="t", demo=False))) as client:
        state = client.app.state.urbis  # type: ignore[attr-defined]
        load_demo(state.sources)
        oxigraph: Store = state.twin.tenant("").store.store
        yield oxigraph


@pytest.fixture(scope="module")
def city() -> list[Entity]:
    return list(demo.generate(seed=42))


def value(term: Any) -> Any:
    """A result term as Python: IRIs and strings as str, numbers as float."""
    if term is None:
        return None
    if isinstance(term, Literal) and term.datatype.value.rsplit("#", 1)[-1] in (
        "integer",
        "decimal",
        "double",
        "float",
    ):
        return float(term.value)
    return term.value


def select(store: Store, name: str) -> list[Row]:
    result = store.query(sparql_prefixes() + COOKBOOK[name], use_default_graph_as_union=True)
    assert isinstance(result, QuerySolutions)
    names = [v.value for v in result.variables]
    return [{n: value(row[n]) for n in names} for row in result]


def of(city: list[Entity], kind: str) -> list[Entity]:
    return [e for e in city if e["type"] == kind]


def v(entity: Entity, attr: str) -> Any:
    found = entity[attr]
    found = found[0] if isinstance(found, list) else found
    inner = found.get("value", found.get("object"))
    return inner["@value"] if isinstance(inner, dict) and "@value" in inner else inner


def coords(entity: Entity) -> list[float]:
    point: list[float] = entity["location"]["value"]["coordinates"]
    return point


def metres(a: list[float], b: list[float]) -> float:
    lon1, lat1, lon2, lat2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def by_id(city: list[Entity]) -> dict[str, Entity]:
    return {e["id"]: e for e in city}


# --- one check per cookbook query --------------------------------------------------------------


def check_bins_near_schools(store: Store, city: list[Entity]) -> None:
    schools = [coords(e) for e in of(city, "PointOfInterest") if v(e, "category") == ["school"]]
    expected = {}
    for b in of(city, "WasteContainer"):
        nearest = min(metres(coords(b), s) for s in schools)
        if v(b, "fillingLevel") > 0.8 and nearest < 500:
            expected[b["id"]] = nearest
    rows = select(store, "bins-near-schools")
    assert {r["bin"]: r["metres"] for r in rows}.keys() == expected.keys()
    for r in rows:
        assert r["metres"] == pytest.approx(expected[r["bin"]], abs=0.5)
    assert [r["fill"] for r in rows] == sorted((r["fill"] for r in rows), reverse=True)


def check_no2_per_district(store: Store, city: list[Entity]) -> None:
    districts = {
        v(e, "name"): shapely.geometry.shape(e["location"]["value"])
        for e in of(city, "PointOfInterest")
        if v(e, "category") == ["district"]
    }
    readings = defaultdict(list)
    for station in of(city, "AirQualityObserved"):
        point = shapely.Point(coords(station))
        (name,) = [n for n, polygon in districts.items() if polygon.contains(point)]
        assert name == v(station, "areaServed")  # the polygons agree with the labels
        readings[name].append(v(station, "no2"))
    rows = select(store, "no2-per-district")
    assert {r["district"] for r in rows} == set(readings)
    for r in rows:
        assert r["meanNO2"] == pytest.approx(
            sum(readings[r["district"]]) / len(readings[r["district"]])
        )
        assert r["stations"] == len(readings[r["district"]])


def check_lights_by_vendor_and_status(store: Store, city: list[Entity]) -> None:
    expected = Counter((v(e, "provider"), v(e, "status")) for e in of(city, "Streetlight"))
    rows = select(store, "lights-by-vendor-and-status")
    assert {(r["vendor"], r["status"]): r["lights"] for r in rows} == expected
    assert len({r["vendor"] for r in rows}) > 1 and len({r["status"] for r in rows}) > 1


def check_parking_occupancy_by_area(store: Store, city: list[Entity]) -> None:
    spots: Counter[str] = Counter()
    busy: Counter[str] = Counter()
    for spot in of(city, "ParkingSpot"):
        spots[v(spot, "areaServed")] += 1
        busy[v(spot, "areaServed")] += v(spot, "status") == "occupied"
    rows = select(store, "parking-occupancy-by-area")
    assert {r["area"]: (r["spots"], r["occupied"]) for r in rows} == {
        a: (spots[a], busy[a]) for a in spots
    }
    for r in rows:
        assert r["occupancy"] == pytest.approx(busy[r["area"]] / spots[r["area"]])
    assert [r["occupancy"] for r in rows] == sorted((r["occupancy"] for r in rows), reverse=True)


def check_latest_alerts_by_severity(store: Store, city: list[Entity]) -> None:
    rank = {"critical": 5, "high": 4, "medium": 3, "low": 2, "informational": 1}
    alerts = sorted(
        of(city, "Alert"), key=lambda a: (rank[v(a, "severity")], v(a, "dateIssued")), reverse=True
    )
    rows = select(store, "latest-alerts-by-severity")
    assert [(r["alert"], r["severity"], r["source"]) for r in rows] == [
        (a["id"], v(a, "severity"), v(a, "alertSource")) for a in alerts
    ]


def check_water_over_threshold(store: Store, city: list[Entity]) -> None:
    stations = of(city, "FloodMonitoring")
    expected = set()
    for gauge in of(city, "WaterObserved") + stations:
        level = v(gauge, "waterLevel" if gauge["type"] == "WaterObserved" else "currentLevel")
        nearest = min(stations, key=lambda s: metres(coords(gauge), coords(s)))
        if level > v(nearest, "alertLevel"):
            expected.add((gauge["id"], nearest["id"]))
    rows = select(store, "water-over-threshold")
    assert {(r["gauge"], r["station"]) for r in rows} == expected
    assert expected, "the demo city at its reference time has a gauge over the alert level"


def check_devices_per_owner_and_dataset(store: Store, city: list[Entity]) -> None:
    devices = of(city, "Device")
    owners = Counter(owner for d in devices for owner in v(d, "owner"))
    low = Counter(owner for d in devices for owner in v(d, "owner") if v(d, "batteryLevel") < 0.25)
    rows = select(store, "devices-per-owner-and-dataset")
    assert all(r["dataset"].startswith("urn:urbis:dataset:") for r in rows)
    total: Counter[str] = Counter()
    low_total: Counter[str] = Counter()
    for r in rows:
        total[r["owner"]] += int(r["devices"])
        low_total[r["owner"]] += int(r["lowBattery"])
    assert total == owners and low_total == low


def check_datasets_catalogue(store: Store, city: list[Entity]) -> None:
    rows = select(store, "datasets-catalogue")
    by_graph = {r["dataset"]: r for r in rows}
    assert sum(int(r["entities"]) for r in rows) == len(city)
    assert "urn:urbis:dataset:default" in by_graph
    info = demo.dataset_info("urn:urbis:dataset:demo")
    demo_row = by_graph["urn:urbis:dataset:demo"]
    assert demo_row["title"] == info.title
    assert demo_row["licence"] == info.licence
    assert demo_row["publisher"] == info.publisher
    for r in rows:  # every dataset that holds entities says who publishes it under what licence
        if r["entities"]:
            assert r["title"] and r["licence"] and r["publisher"] and r["connector"], r


def check_alert_source_sensor(store: Store, city: list[Entity]) -> None:
    index = by_id(city)
    expected = []
    for alert in sorted(of(city, "Alert"), key=lambda a: str(a["id"])):
        source = index[v(alert, "alertSource")]
        device = index[v(source, "refDevice")]
        expected.append(
            (
                alert["id"],
                source["id"],
                device["id"],
                v(device, "provider"),
                v(device, "batteryLevel"),
            )
        )
    rows = select(store, "alert-source-sensor")
    assert [
        (r["alert"], r["source"], r["device"], r["vendor"], r["battery"]) for r in rows
    ] == expected


def check_districts_with_full_bins(store: Store, city: list[Entity]) -> None:
    full = [b for b in of(city, "WasteContainer") if v(b, "fillingLevel") > 0.7]
    counts = Counter(v(b, "areaServed") for b in full)
    fullest: dict[str, float] = {}
    for b in full:
        area = v(b, "areaServed")
        fullest[area] = max(fullest.get(area, 0.0), v(b, "fillingLevel"))
    expected = {a: (n, fullest[a]) for a, n in counts.items() if n >= 3}
    rows = select(store, "districts-with-full-bins")
    assert {r["district"]: (r["fullBins"], r["fullest"]) for r in rows} == expected
    assert len(expected) < len(counts), "HAVING must filter some district out"


def check_sosa_view(store: Store, city: list[Entity]) -> None:
    result = store.query(sparql_prefixes() + COOKBOOK["sosa-view"], use_default_graph_as_union=True)
    assert isinstance(result, QueryTriples)
    triples = list(result)
    sosa = "http://www.w3.org/ns/sosa/"
    rdf_type = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"
    facts: dict[tuple[str, str], set[str]] = defaultdict(set)
    for t in triples:
        facts[(t.subject.value, t.predicate.value)].add(t.object.value)
    stations = of(city, "AirQualityObserved")
    observations = {s for (s, p), o in facts.items() if p == rdf_type and sosa + "Observation" in o}
    assert observations == {f"{s['id']}/observation/no2" for s in stations}
    for station in stations:
        obs = f"{station['id']}/observation/no2"
        assert {float(x) for x in facts[(obs, sosa + "hasSimpleResult")]} == {v(station, "no2")}
        assert facts[(obs, sosa + "madeBySensor")] == {v(station, "refDevice")}
        assert facts[(obs, sosa + "hasFeatureOfInterest")] == {station["id"]}
        assert sosa + "Sensor" in facts[(v(station, "refDevice"), rdf_type)]
        assert "http://www.opengis.net/ont/geosparql#Feature" in facts[(station["id"], rdf_type)]
        (geometry,) = facts[(station["id"], "http://www.opengis.net/ont/geosparql#hasGeometry")]
        (wkt,) = facts[(geometry, "http://www.opengis.net/ont/geosparql#asWKT")]
        lon, lat = coords(station)
        assert f"POINT({lon} {lat})" in wkt


CHECKS: dict[str, Callable[[Store, list[Entity]], None]] = {
    name.removeprefix("check_").replace("_", "-"): check
    for name, check in dict(globals()).items()
    if name.startswith("check_")
}


def test_cookbook_has_ten_checked_queries() -> None:
    assert len(COOKBOOK) >= 10
    assert set(COOKBOOK) == set(CHECKS)


def test_readme_prefixes_are_the_declared_ones() -> None:
    block = re.search(r"```text\n(PREFIX.*?)```", TEXT, re.S)
    assert block is not None
    declared = dict(re.findall(r"PREFIX\s+([\w-]*):\s+<([^>]+)>", block.group(1)))
    assert declared == prefixes()


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_cookbook_query(store: Store, city: list[Entity], name: str) -> None:
    CHECKS[name](store, city)


def test_provenance_query_finds_the_latest_runs(store: Store) -> None:
    query = TEXT.split("## Provenance", 1)[1].split("```sparql\n", 1)[1].split("```", 1)[0]
    result = store.query(sparql_prefixes() + query, use_default_graph_as_union=True)
    assert isinstance(result, QuerySolutions)
    rows = list(result)
    assert rows and all(isinstance(r["dataset"], NamedNode) for r in rows)
    assert all(r["status"].value == "ok" and int(r["created"].value) > 0 for r in rows)
    graphs = {r["dataset"].value for r in rows}
    held = store.query(
        "SELECT DISTINCT ?g WHERE { GRAPH <urn:urbis:graph:entities> "
        "{ ?e <https://urbis.city/ns#dataset> ?g } }"
    )
    assert isinstance(held, QuerySolutions)
    populated = {r[0].value for r in held}
    assert populated and populated <= graphs
