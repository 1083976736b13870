"""The NGSI-LD API on the embedded store vs a remote Oxigraph server vs Virtuoso.

    python -m bench.remote_store_bench [--entities 10000] [--json out.json]

Starts each engine on a loopback port (as the contract tests do), drives the app in-process
(FastAPI TestClient, so HTTP framing of the API itself is not measured, the engine's is), and
reports batch-upsert throughput, GET latency, a typical q query and a count.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from urbis.api.app import create_app
from urbis.api.settings import Settings
from urbis.testing.sparql_servers import Engine, oxigraph_server, virtuoso_server

TOKEN = "bench"
OPS = "/ngsi-ld/v1/entityOperations"
ENTITIES = "/ngsi-ld/v1/entities"
BATCH = 500


def bins(start: int, count: int) -> list[dict[str, Any]]:
    rng = random.Random(start)
    return [
        {
            "id": f"urn:ngsi-ld:WasteContainer:{n}",
            "type": "WasteContainer",
            "fillingLevel": {
                "type": "Property",
                "value": round(rng.random(), 3),
                "observedAt": "2026-11-22T10:00:00Z",
            },
            "status": {"type": "Property", "value": rng.choice(["ok", "full", "broken"])},
            "refDevice": {"type": "Relationship", "object": f"urn:ngsi-ld:Device:{n}"},
            "location": {
                "type": "GeoProperty",
                "value": {
                    "type": "Point",
                    "coordinates": [3.80 + rng.random() * 0.1, 43.56 + rng.random() * 0.1],
                },
            },
            "name": {"type": "Property", "value": f"Bac n°{n} — rue de la Loge"},
        }
        for n in range(start, start + count)
    ]


def timed(action: Callable[[], Any], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1], 2),
    }


def run(settings: Settings, entities: int) -> dict[str, Any]:
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        started = time.perf_counter()
        for start in range(0, entities, BATCH):
            reply = c.post(OPS + "/upsert", json=bins(start, min(BATCH, entities - start)))
            assert reply.status_code in (201, 204), reply.text[:300]
        upsert = entities / (time.perf_counter() - started)
        rng = random.Random(7)

        def get() -> None:
            n = rng.randrange(entities)
            assert c.get(f"{ENTITIES}/urn:ngsi-ld:WasteContainer:{n}").status_code == 200

        q = {"type": "WasteContainer", "q": 'fillingLevel>0.8;status=="full"', "limit": 100}

        def query() -> None:
            assert c.get(ENTITIES, params=q).status_code == 200

        counted = {"type": "WasteContainer", "count": "true", "limit": 0, "q": "fillingLevel>0.1"}

        def count() -> None:
            assert c.get(ENTITIES, params=counted).status_code == 200

        geo = {
            "type": "WasteContainer",
            "georel": "near;maxDistance==300",
            "geometry": "Point",
            "coordinates": "[3.85,43.61]",
            "limit": 100,
        }

        def near() -> None:
            assert c.get(ENTITIES, params=geo).status_code == 200

        return {
            "entities": entities,
            "upsert_entities_per_s": round(upsert, 1),
            "get": summary(timed(get, 300)),
            "q_query": summary(timed(query, 30)),
            "count": summary(timed(count, 20)),
            "geoq_near": summary(timed(near, 30)),
        }


@contextmanager
def engines(work: Path) -> Iterator[dict[str, Settings]]:
    base = {"admin_token": TOKEN, "demo": False}
    found = {"embedded-memory": Settings(**base)}  # type: ignore[arg-type]
    found["embedded-disk"] = Settings(**base, data_dir=work / "disk")  # type: ignore[arg-type]
    (work / "oxigraph").mkdir()
    (work / "virtuoso").mkdir()
    with oxigraph_server(work / "oxigraph") as oxigraph, virtuoso_server(work / "virtuoso") as v:
        engine: Engine
        for engine in (oxigraph, v):
            found[engine.name] = Settings(**base, **engine.settings())  # type: ignore[arg-type]
        yield found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, engines(Path(tmp)) as settings:
        for name, each in settings.items():
            results[name] = run(each, args.entities)
            print(name, json.dumps(results[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
