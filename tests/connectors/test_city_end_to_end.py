"""Issue 4's acceptance test: a city federates five vendors' sources into one twin.

Done as a city would: one TOML file per source, `urbis sources add`, `urbis sync --all`, then
`urbis serve` on the same directory and plain HTTP (NGSI-LD, the sources API, SPARQL). The
sources are real servers on loopback: MapServer (WFS 2.0 over a Lambert-93 Shapefile), pygeoapi
(OGC API - Features), a second Urbis (a vendor's NGSI-LD broker) and local GeoJSON and CSV files,
the CSV with one bad row. Then a re-sync must change nothing and a feature removed from the
GeoJSON must be tombstoned. The CLI and the server run as subprocesses, like in production: one
process owns the on-disk store at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from urbis.testing.ogc import (
    KNOWN_LIGHT,
    KNOWN_LIGHT_LONLAT,
    KNOWN_SENSOR,
    KNOWN_SENSOR_LONLAT,
    LIGHT_COUNT,
    SENSOR_COUNT,
    Layer,
    make_lambert_shapefiles,
    pygeoapi_url,
    running_mapserver,
)
from urbis.testing.server import running_server

__all__ = ["pygeoapi_url"]  # the session fixture this module uses

TOKEN = "city-admin-token"
VENDOR_TOKEN = "vendor-token"
VENDOR_TENANT = "wastecorp"
SDM_WASTE = "https://smartdatamodels.org/dataModel.WasteManagement/"
BINS = 6
BENCH_GRAPH = "urn:urbis:dataset:benches"
PUBLISHERS = {
    "gis-lights": "GIS department",
    "flood-sensors": "Water utility",
    "wastecorp-bins": "WasteCorp",
    "benches": "Parks department",
    "parkings": "Mobility department",
}
LICENCE = "https://www.etalab.gouv.fr/licence-ouverte-open-licence"
BENCHES = [("B1", 3.8771, 43.6101), ("B2", 3.8782, 43.6112), ("B3", 3.8793, 43.6123)]
BENCHES += [("B4", 3.8804, 43.6134)]
# ref, lat, lon, capacity: P3's capacity is not a number, so that row is quarantined.
PARKING_ROWS = [
    ("P1", "43.6050", "3.8800", "120"),
    ("P2", "43.6060", "3.8810", '"85,5"'),  # a decimal comma, quoted, is fine
    ("P3", "43.6070", "3.8820", "lots"),
    ("P4", "43.6080", "3.8830", "40"),
]
EXPECTED_CREATED = {
    "gis-lights": LIGHT_COUNT,
    "flood-sensors": SENSOR_COUNT,
    "wastecorp-bins": BINS,
    "benches": len(BENCHES),
    "parkings": len(PARKING_ROWS) - 1,
}
TYPES = {  # source -> (type as queried, entity id prefix)
    "gis-lights": ("Streetlight", "urn:ngsi-ld:Streetlight:"),
    "flood-sensors": ("FloodMonitoring", "urn:ngsi-ld:FloodMonitoring:"),
    "wastecorp-bins": (SDM_WASTE + "WasteContainer", "urn:ngsi-ld:WasteContainer:"),
    "benches": ("Bench", "urn:ngsi-ld:Bench:"),
    "parkings": ("ParkingSpot", "urn:ngsi-ld:ParkingSpot:"),
}


@dataclass
class City:
    """The city's twin directory and the GeoJSON file it edits."""

    data: Path
    benches: Path


def urbis(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, as an operator types it."""
    return subprocess.run(
        [sys.executable, "-m", "urbis.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        # The vendor's secret reaches the sync through the environment, never the files.
        env={**os.environ, "COLUMNS": "160", "URBIS_DEMO": "0", "WASTECORP_TOKEN": VENDOR_TOKEN},
    )


def report_rows(output: str) -> dict[str, dict[str, str]]:
    """The final report table of `urbis sync`: source -> its columns."""
    names = ["source", "status", "created", "updated", "unchanged", "removed", "quarantined"]
    rows: dict[str, dict[str, str]] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == len(names) + 1 and cells[0] in PUBLISHERS:
            rows[cells[0]] = dict(zip(names, cells, strict=False))
    return rows


def sync_all(city: City) -> dict[str, dict[str, str]]:
    done = urbis("sync", "--all", "--data-dir", str(city.data))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = report_rows(done.stdout)
    assert set(rows) == set(PUBLISHERS), done.stdout + done.stderr
    assert all(r["status"] == "ok" for r in rows.values()), done.stdout
    return rows


def bench_feature(ref: str, lon: float, lat: float) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"ref": ref, "seats": 3, "material": "wood"},
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
    }


def metadata(source_id: str, title: str) -> str:
    """The DCAT lines every definition carries."""
    return (
        f'id = "{source_id}"\ntitle = "{title}"\npublisher = "{PUBLISHERS[source_id]}"\n'
        f'licence = "{LICENCE}"\n'
    )


def write_city(root: Path, wfs: str, ogcapi: str, broker: str, vendor_context: str) -> Path:
    """The five definitions, as the city writes them, and the two local files they read.

    Returns the definitions folder; the file endpoints are relative to it.
    """
    definitions = root / "definitions"
    definitions.mkdir()
    features = [bench_feature(*b) for b in BENCHES]
    (definitions / "benches.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": features})
    )
    (definitions / "parkings.csv").write_text(
        "ref,lat,lon,capacity\n" + "".join(",".join(row) + "\n" for row in PARKING_ROWS)
    )
    texts = {
        "gis-lights": f"""{metadata("gis-lights", "Street lights")}kind = "wfs"
endpoint = "{wfs}"
entity_type = "Streetlight"
id_template = "urn:ngsi-ld:Streetlight:{{key}}"
crs = "EPSG:2154"

[options]
typename = "lights"
page_size = 100

[[mapping]]
source = "height"
attribute = "lanternHeight"
convert = "float"
unit = "m"

[[mapping]]
source = "kind"
attribute = "lanternType"
""",
        "flood-sensors": f"""{metadata("flood-sensors", "Flood sensors")}kind = "ogcapi"
endpoint = "{ogcapi}"
entity_type = "FloodMonitoring"
id_template = "urn:ngsi-ld:FloodMonitoring:{{key}}"

[options]
collection = "floodsensors"
page_size = 100

[[mapping]]
source = "waterLevel"
attribute = "currentLevel"
unit = "m"
""",
        "wastecorp-bins": f"""{metadata("wastecorp-bins", "Waste containers")}kind = "ngsild"
endpoint = "{broker}"
credentials = "WASTECORP_TOKEN"

[options]
type = "WasteContainer"
context = "{vendor_context}"
tenant = "{VENDOR_TENANT}"
page_size = 4
""",
        "benches": f"""{metadata("benches", "Benches")}kind = "file"
endpoint = "benches.geojson"
entity_type = "Bench"
key = "ref"
id_template = "urn:ngsi-ld:Bench:{{key}}"
""",
        "parkings": f"""{metadata("parkings", "Car parks")}kind = "file"
endpoint = "parkings.csv"
entity_type = "ParkingSpot"
key = "ref"
id_template = "urn:ngsi-ld:ParkingSpot:{{key}}"

[[mapping]]
source = "capacity"
attribute = "totalSpotNumber"
convert = "float"
""",
    }
    for source_id, text in texts.items():
        (definitions / f"{source_id}.toml").write_text(text, encoding="utf-8")
    return definitions


@pytest.fixture
def vendor_broker(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A second Urbis as WasteCorp's broker: (base URL, its @context URL), with BINS bins."""
    env = {"URBIS_ADMIN_TOKEN": VENDOR_TOKEN, "URBIS_DEMO": "0"}
    with running_server("--memory", env=env, log=tmp_path / "vendor.log") as base:
        auth = {"Authorization": f"Bearer {VENDOR_TOKEN}", "NGSILD-Tenant": VENDOR_TENANT}
        context = {"@context": {"WasteContainer": SDM_WASTE + "WasteContainer"}}
        context["@context"]["fillingLevel"] = SDM_WASTE + "fillingLevel"
        r = httpx.post(f"{base}/ngsi-ld/v1/jsonldContexts", json=context, headers=auth)
        assert r.status_code == 201, r.text
        context_url = base + r.headers["Location"]
        bins = [
            {
                "id": f"urn:ngsi-ld:WasteContainer:wc-{i}",
                "type": "WasteContainer",
                "fillingLevel": {"type": "Property", "value": 0.1 * i},
                "location": {
                    "type": "GeoProperty",
                    "value": {"type": "Point", "coordinates": [3.87 + i * 1e-3, 43.61]},
                },
            }
            for i in range(BINS)
        ]
        link = f'<{context_url}>; rel="http://www.w3.org/ns/json-ld#context"'
        r = httpx.post(
            f"{base}/ngsi-ld/v1/entityOperations/upsert",
            json=bins,
            headers={**auth, "Link": link},
        )
        assert r.status_code == 201, r.text
        yield base, context_url


def sparql(base: str, query: str) -> list[dict[str, str]]:
    """Rows of a SELECT as {variable: lexical value}."""
    r = httpx.post(
        f"{base}/sparql",
        data={"query": query},
        headers={
            "Accept": "application/sparql-results+json",
            "Authorization": f"Bearer {TOKEN}",
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return [
        {name: cell["value"] for name, cell in binding.items()}
        for binding in r.json()["results"]["bindings"]
    ]


PREFIXES = """PREFIX dcat: <http://www.w3.org/ns/dcat#>
PREFIX dct: <http://purl.org/dc/terms/>
PREFIX foaf: <http://xmlns.com/foaf/0.1/>
PREFIX prov: <http://www.w3.org/ns/prov#>
PREFIX urbis: <https://urbis.city/ns#>
"""
DATASETS = (
    PREFIXES
    + """SELECT ?dataset ?title ?licence ?publisher ?run ?status ?created ?removed WHERE {
  GRAPH <urn:urbis:graph:metadata> {
    ?dataset a dcat:Dataset ; dct:title ?title ; dct:license ?licence ;
             dct:publisher/foaf:name ?publisher ; prov:wasGeneratedBy ?run .
    ?run a prov:Activity ; urbis:status ?status ; urbis:created ?created ;
         urbis:removed ?removed ; prov:endedAtTime ?ended ; prov:generated ?dataset .
  }
} ORDER BY ?dataset"""
)
ENTITIES_PER_GRAPH = (
    PREFIXES
    + """SELECT ?dataset (COUNT(DISTINCT ?e) AS ?entities) WHERE {
  GRAPH <urn:urbis:graph:entities> { ?e urbis:dataset ?dataset }
} GROUP BY ?dataset"""
)
SUBJECTS_PER_GRAPH = """SELECT ?g (COUNT(DISTINCT ?e) AS ?n) WHERE {
  GRAPH ?g { ?e a ?type }
  FILTER(STRSTARTS(STR(?g), "urn:urbis:dataset:") && STRSTARTS(STR(?e), "urn:ngsi-ld:"))
} GROUP BY ?g"""


def serve(city: City, log: Path) -> Any:
    env = {"URBIS_ADMIN_TOKEN": TOKEN, "URBIS_DEMO": "0", "URBIS_SOURCES_SCHEDULER": "0"}
    env["URBIS_OUTBOUND_ALLOW"] = "127.0.0.1"  # the vendors' servers are on loopback
    return running_server("--data-dir", str(city.data), env=env, log=log)


def entities_of(base: str, type_: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{base}/ngsi-ld/v1/entities",
        params={"type": type_, "limit": 1000, "count": "true"},
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body: list[dict[str, Any]] = r.json()
    assert int(r.headers["NGSILD-Results-Count"]) == len(body)
    return body


def check_the_twin(base: str, rows: dict[str, dict[str, str]]) -> None:
    """What partner agencies and researchers see once the city has synced."""
    for source, (type_, prefix) in TYPES.items():
        found = entities_of(base, type_)
        assert len(found) == EXPECTED_CREATED[source], source
        assert all(e["id"].startswith(prefix) for e in found), source

    light = next(e for e in entities_of(base, "Streetlight") if e["id"].endswith(KNOWN_LIGHT))
    lon, lat = light["location"]["value"]["coordinates"]  # Lambert-93 became CRS84 lon/lat
    assert abs(lon - KNOWN_LIGHT_LONLAT[0]) < 1e-6 and abs(lat - KNOWN_LIGHT_LONLAT[1]) < 1e-6
    assert light["lanternHeight"] == {"type": "Property", "value": 4.0, "unitCode": "MTR"}
    sensor = next(e for e in entities_of(base, "FloodMonitoring") if e["id"].endswith(KNOWN_SENSOR))
    assert sensor["location"]["value"]["coordinates"] == list(KNOWN_SENSOR_LONLAT)
    bin_ = httpx.get(
        f"{base}/ngsi-ld/v1/entities/urn:ngsi-ld:WasteContainer:wc-3",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).json()
    assert bin_[SDM_WASTE + "fillingLevel"]["value"] == pytest.approx(0.3)  # vendor's terms
    parking = httpx.get(
        f"{base}/ngsi-ld/v1/entities/urn:ngsi-ld:ParkingSpot:P2",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).json()
    assert parking["totalSpotNumber"]["value"] == 85.5

    r = httpx.get(
        f"{base}/sources/parkings/quarantine", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert r.status_code == 200 and r.headers["Urbis-Total-Count"] == "1", r.text
    (entry,) = r.json()
    assert "cannot convert 'lots' to float" in entry["reason"]
    assert entry["raw"]["properties"]["ref"] == "P3"
    assert httpx.get(f"{base}/sources/parkings/quarantine").status_code in (401, 403)

    datasets = sparql(base, DATASETS)
    graphs = {f"urn:urbis:dataset:{s}" for s in PUBLISHERS}
    mine = [d for d in datasets if d["dataset"] in graphs]
    assert sorted(d["dataset"] for d in mine) == sorted(graphs)  # one row each: the latest run
    for d in mine:
        source = d["dataset"].removeprefix("urn:urbis:dataset:")
        assert d["publisher"] == PUBLISHERS[source] and d["licence"] == LICENCE
        assert d["status"] == "ok" and d["run"].startswith("urn:urbis:run:")
        assert int(d["created"]) == int(rows[source]["created"]) == EXPECTED_CREATED[source]
    counts = {d["dataset"]: int(d["entities"]) for d in sparql(base, ENTITIES_PER_GRAPH)}
    subjects = {d["g"]: int(d["n"]) for d in sparql(base, SUBJECTS_PER_GRAPH)}
    for source, created in EXPECTED_CREATED.items():
        assert counts[f"urn:urbis:dataset:{source}"] == created, source
        assert subjects[f"urn:urbis:dataset:{source}"] == created, source


def test_a_city_federates_its_sources_into_one_twin(
    tmp_path: Path, pygeoapi_url: str, vendor_broker: tuple[str, str]
) -> None:
    broker, vendor_context = vendor_broker
    shapefiles = make_lambert_shapefiles(tmp_path / "gis")
    with running_mapserver(
        tmp_path / "mapserver", {"city": [Layer("lights", shapefiles["lights"])]}
    ) as mapserver:
        definitions = write_city(
            tmp_path, mapserver.url("city"), pygeoapi_url, broker, vendor_context
        )
        city = City(tmp_path / "twin", definitions / "benches.geojson")
        for path in sorted(definitions.glob("*.toml")):
            added = urbis("sources", "add", str(path), "--data-dir", str(city.data))
            assert added.returncode == 0, added.stderr
        first = sync_all(city)
        for source, created in EXPECTED_CREATED.items():
            assert int(first[source]["created"]) == created, first[source]
            expected_bad = 1 if source == "parkings" else 0
            assert int(first[source]["quarantined"]) == expected_bad, first[source]
        quarantined = urbis("sources", "quarantine", "parkings", "--data-dir", str(city.data))
        assert "cannot convert 'lots' to float" in quarantined.stdout

        with serve(city, tmp_path / "serve-1.log") as base:
            check_the_twin(base, first)

        again = sync_all(city)  # nothing changed anywhere: nothing written
        for row in again.values():
            assert (row["created"], row["updated"], row["removed"]) == ("0", "0", "0"), row

        kept = [bench_feature(*b) for b in BENCHES if b[0] != "B2"]
        city.benches.write_text(json.dumps({"type": "FeatureCollection", "features": kept}))
        after = sync_all(city)
        assert (after["benches"]["removed"], after["benches"]["created"]) == ("1", "0")
        assert all(after[s]["removed"] == "0" for s in PUBLISHERS if s != "benches")

    with serve(city, tmp_path / "serve-2.log") as base:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        gone = httpx.get(f"{base}/ngsi-ld/v1/entities/urn:ngsi-ld:Bench:B2", headers=auth)
        assert gone.status_code == 404, gone.text
        kept_bench = httpx.get(f"{base}/ngsi-ld/v1/entities/urn:ngsi-ld:Bench:B1", headers=auth)
        assert kept_bench.status_code == 200
        source = httpx.get(f"{base}/sources/benches", headers=auth).json()
        assert source["tombstones"] == 1
        (row,) = [d for d in sparql(base, ENTITIES_PER_GRAPH) if d["dataset"] == BENCH_GRAPH]
        assert row["entities"] == str(len(BENCHES) - 1)
        runs = sparql(base, DATASETS)  # three runs later, still one row (the latest) per graph
        latest = {d["dataset"]: d for d in runs}
        assert len(runs) == len(latest) and len(latest) >= len(PUBLISHERS)
        assert (latest[BENCH_GRAPH]["removed"], latest[BENCH_GRAPH]["created"]) == ("1", "0")
        # The unchanged CSV was not read again: its quarantined row is still there to fix.
        r = httpx.get(f"{base}/sources/parkings/quarantine", headers=auth)
        assert [e["raw"]["properties"]["ref"] for e in r.json()] == ["P3"]
