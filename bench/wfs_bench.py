"""WFS ingestion of the 29,969 Montpellier street lights: MapServer -> connector -> twin.

    python -m bench.wfs_bench [--page-size 10000] [--batch-size 1000] [--disk] [--json OUT]

Times each stage on its own, then the whole sync, so the report says what limits it:
1. `mapserver`: the GetFeature pages as bytes only (MapServer's GeoJSON generation + HTTP);
2. `connector`: the WFS connector's fetch (1 + parsing into Feature records);
3. `sync`: end to end through the framework (2 + reprojection Lambert-93 -> CRS84, validation,
   mapping, upserts into the twin), in memory or, with --disk, on disk in a fresh directory.
Needs mapserv (Debian mapserver-bin) and ../shared/fixtures (the real Shapefile). The sync's
figures come with this process's CPU time and the load average: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from urbis.api.app import build_state
from urbis.api.settings import Settings
from urbis.connectors.base import Cursor
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.sync import SyncManager
from urbis.connectors.wfs import WfsConnector
from urbis.testing.ogc import Layer, extract_montpellier_lights, running_mapserver
from urbis.testing.paths import FIXTURES

EXPECTED = 29_969


def definition(endpoint: str, page_size: int, batch_size: int = 1000) -> dict[str, Any]:
    return {
        "id": "mtp-streetlights",
        "kind": "wfs",
        "endpoint": endpoint,
        "entity_type": "Streetlight",
        "id_template": "urn:ngsi-ld:Streetlight:mtp-{key}",
        "mapping": [{"source": "type_lante", "attribute": "lanternType"}],
        "options": {
            "typename": "streetlights",
            "page_size": page_size,
            "key_property": "@position",
        },
        "batch_size": batch_size,
    }


def time_mapserver(endpoint: str, page_size: int) -> dict[str, Any]:
    started, total_bytes, pages = time.perf_counter(), 0, 0
    with httpx.Client(timeout=120) as http:
        for start in range(0, EXPECTED + 1, page_size):
            r = http.get(
                endpoint,
                params={
                    "SERVICE": "WFS",
                    "VERSION": "2.0.0",
                    "REQUEST": "GetFeature",
                    "TYPENAMES": "streetlights",
                    "COUNT": str(page_size),
                    "STARTINDEX": str(start),
                    "OUTPUTFORMAT": "application/json; subtype=geojson",
                },
            )
            r.raise_for_status()
            total_bytes += len(r.content)
            pages += 1
    return {"s": round(time.perf_counter() - started, 3), "pages": pages, "bytes": total_bytes}


def time_connector(endpoint: str, page_size: int) -> dict[str, Any]:
    source = SourceDefinition.model_validate(definition(endpoint, page_size))
    connector = WfsConnector(source)
    started = time.perf_counter()
    count = sum(1 for _ in connector.fetch(Cursor()))
    connector.close()
    return {"s": round(time.perf_counter() - started, 3), "features": count}


def time_sync(
    endpoint: str, page_size: int, batch_size: int, data_dir: Path | None
) -> dict[str, Any]:
    state = build_state(Settings(open=True, demo=False, data_dir=data_dir))
    try:
        manager = SyncManager(state.twin, state.resolver, state.registry, data_dir=data_dir)
        manager.catalog.save(manager.catalog.parse(definition(endpoint, page_size, batch_size)))
        load = os.getloadavg()[0]
        started, cpu = time.perf_counter(), time.process_time()
        report = manager.sync("mtp-streetlights")
        first, first_cpu = time.perf_counter() - started, time.process_time() - cpu
        started = time.perf_counter()
        again = manager.sync("mtp-streetlights")
        second = time.perf_counter() - started
    finally:
        state.twin.close()
    return {
        "s": round(first, 3),
        "cpu_s": round(first_cpu, 3),
        "load": round(load, 2),
        "status": report.status,
        "created": report.created,
        "quarantined": report.quarantined,
        "errors": report.errors[:3],
        "resync_unchanged_s": round(second, 3),
        "resync_unchanged": again.unchanged,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1000, help="entities per transaction")
    parser.add_argument("--disk", action="store_true", help="on-disk twin (default: memory)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    if not FIXTURES.exists():
        raise SystemExit(f"{FIXTURES} is absent: the real Shapefile is needed")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lights = extract_montpellier_lights(FIXTURES, work / "data")
        layer = Layer("streetlights", lights, featureid=None, encoding="CP1252")
        with running_mapserver(work / "ms", {"montpellier": [layer]}) as server:
            endpoint = server.url("montpellier")
            results = {
                "page_size": args.page_size,
                "batch_size": args.batch_size,
                "store": "disk" if args.disk else "memory",
                "mapserver": time_mapserver(endpoint, args.page_size),
                "connector": time_connector(endpoint, args.page_size),
                "sync": time_sync(
                    endpoint, args.page_size, args.batch_size, work / "twin" if args.disk else None
                ),
            }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
