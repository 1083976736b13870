"""The researcher cookbook's SPARQL queries on every store backend, through the store contract.

    python -m bench.sparql_backends_bench [--scale 13] [--runs 7] [--json out.json]

Loads the demo city scaled up (`twin.demo.generate(seed=42, scale=N)`, 796 entities per unit)
through the entity service, as `urbis load` does, into: the embedded store in memory, the
embedded store on disk, an `oxigraph serve` and a Virtuoso 7 (`URBIS_STORE=sparql`, both
started on loopback ports as the contract tests do). Then times each query of
ontology/README.md's cookbook through `TenantStore.sparql` (every row consumed), p50/p95 over
`--runs` runs after one warm-up, and a 100,000-row SELECT streamed (rows/s).

Spatial filters go through `twin.geosparql.prepare` as the /sparql route does: on the embedded
store with the index's default cap and pyoxigraph's custom `geof:` functions; on the remote
engines with `max_values=None` (constant-geometry filters become VALUES) and no functions. A
query that still calls `geof:` after that needs Python functions and is skipped there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyoxigraph import QueryBoolean, QuerySolutions

from urbis.api.app import build_state
from urbis.api.settings import Settings
from urbis.demo import city as demo
from urbis.demo.loading import demo_terms
from urbis.ontology import ns
from urbis.ontology.shapes import sparql_prefixes
from urbis.testing.sparql_servers import oxigraph_server, virtuoso_server
from urbis.twin.changes import WriteContext
from urbis.twin.entities import EntityService
from urbis.twin.geo.geosparql import prepare
from urbis.twin.model import EntityReader
from urbis.twin.provenance import default_dataset_info, describe_dataset
from urbis.twin.rdf import dataset_graph
from urbis.twin.store.base import DEFAULT_TENANT

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "src" / "urbis" / "ontology" / "README.md").read_text(encoding="utf-8")
COOKBOOK: dict[str, str] = dict(
    re.findall(r"<!-- cookbook: ([\w-]+) -->\n(?:(?!```).)*?```sparql\n(.*?)```", README, re.S)
)
# A constant-geometry filter (an irregular district of about 1.5 km x 2 km in the demo city):
# what the spatial-index rewrite turns into VALUES, so remote engines can answer it too.
DISTRICT = (
    "POLYGON((3.866 43.603, 3.884 43.601, 3.893 43.612, 3.885 43.621, 3.871 43.619, 3.866 43.603))"
)
EXTRA: dict[str, str] = {
    "bins-in-district (constant polygon)": (
        "SELECT ?bin ?fill WHERE { ?bin a waste:WasteContainer ; waste:fillingLevel ?fill ;"
        " geo:hasGeometry/geo:asWKT ?w . "
        f'FILTER(geof:sfWithin(?w, "<{ns.CRS84}> {DISTRICT}"^^geo:wktLiteral)) }}'
    ),
}
STREAM_ROWS = 100_000
STREAM = f"SELECT ?s ?p ?o WHERE {{ ?s ?p ?o }} LIMIT {STREAM_ROWS}"
BATCH = 1000
REMOTE_TIMEOUT_S = 120.0


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


BENCH = WriteContext(reason="sparql_backends_bench load")


def load_city(service: EntityService, reader: EntityReader, scale: int) -> int:
    """The scaled demo city in the "demo" dataset, in bulk batches, plus its catalogue entry."""
    graph = dataset_graph("demo")
    loaded = 0
    batch: list[tuple[str | None, Any]] = []

    def flush() -> None:
        nonlocal loaded
        result = service.upsert_many(batch, context=BENCH, mode="replace", graph=graph, bulk=True)
        if result.errors:
            raise RuntimeError(f"load rejected {result.errors[:3]}")
        loaded += len(result.success)
        batch.clear()

    for item in demo.generate(seed=42, scale=scale):
        doc = reader.entity(item)
        batch.append((doc["id"], doc))
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    describe_dataset(service.store, default_dataset_info(), datetime.now(UTC))
    return loaded


def consume(result: Any) -> int:
    """Every row (or triple) read: what a client of the contract pays for."""
    if isinstance(result, QueryBoolean):
        return 1
    if isinstance(result, QuerySolutions):
        names = [v.value for v in result.variables]
        count = 0
        for row in result:
            for name in names:
                row[name]
            count += 1
        return count
    return sum(1 for _ in result)


def calls_geof(query: str) -> bool:
    """Whether the query body (prologue left out) still calls a GeoSPARQL function."""
    body = re.sub(r"(?im)^\s*PREFIX\s+\S*:\s*<[^>]*>\s*$", "", query)
    return "geof:" in body or ns.GEOF in body


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def time_query(service: EntityService, text: str, remote: bool, runs: int) -> dict[str, Any]:
    """p50/p95 in ms over `runs` runs after one warm-up, or why the query cannot run here."""
    full = sparql_prefixes() + text
    if remote:
        query, _ = prepare(full, service.index, max_values=None)
        if calls_geof(query):
            return {"skipped": "needs geof: functions written in Python"}
        functions = None
        timeout: float | None = REMOTE_TIMEOUT_S
    else:
        query, all_functions = prepare(full, service.index)
        functions = all_functions if calls_geof(query) else None
        timeout = None
    times: list[float] = []
    rows = 0
    load_before = load_average()
    try:
        for attempt in range(runs + 1):
            started = time.perf_counter()
            # prepare() is part of the work the /sparql route does per query: time it too.
            if remote:
                prepared, _ = prepare(full, service.index, max_values=None)
            else:
                prepared, _ = prepare(full, service.index)
            rows = consume(
                service.store.sparql(prepared, custom_functions=functions, timeout=timeout)
            )
            if attempt:
                times.append((time.perf_counter() - started) * 1000)
    except Exception as error:  # an engine refusing a query is a result to report
        return {"error": f"{type(error).__name__}: {str(error)[:300]}"}
    ordered = sorted(times)
    return {
        "rows": rows,
        "p50_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(percentile(ordered, 0.95), 1),
        "load": [load_before, load_average()],
    }


def time_stream(service: EntityService, remote: bool, runs: int) -> dict[str, Any]:
    rates = []
    rows = 0
    for _ in range(runs):
        started = time.perf_counter()
        rows = consume(service.store.sparql(STREAM, timeout=REMOTE_TIMEOUT_S if remote else None))
        rates.append(rows / (time.perf_counter() - started))
    return {
        "rows": rows,
        "rows_per_s_median": round(statistics.median(rates)),
        "rows_per_s_best": round(max(rates)),
        "load": load_average(),
    }


@contextmanager
def backends(work: Path, which: list[str]) -> Iterator[Iterator[tuple[str, Settings]]]:
    base: dict[str, Any] = {"admin_token": "bench", "demo": False, "open": True}

    def each() -> Iterator[tuple[str, Settings]]:
        if "embedded-memory" in which:
            yield "embedded-memory", Settings.model_validate(base)
        if "embedded-disk" in which:
            yield "embedded-disk", Settings.model_validate({**base, "data_dir": work / "disk"})
        if "oxigraph-server" in which:
            (work / "oxigraph").mkdir()
            with oxigraph_server(work / "oxigraph") as engine:
                yield engine.name, Settings.model_validate({**base, **engine.settings()})
        if "virtuoso" in which:
            (work / "virtuoso").mkdir()
            with virtuoso_server(work / "virtuoso") as engine:
                yield engine.name, Settings.model_validate({**base, **engine.settings()})

    yield each()


def run(name: str, settings: Settings, scale: int, runs: int, queries: dict[str, str]) -> Any:
    remote = settings.store == "sparql"
    state = build_state(settings)
    try:
        service = state.twin.tenant(DEFAULT_TENANT, create=True)
        reader = EntityReader(demo_terms(state.resolver, state.registry))
        started = time.perf_counter()
        entities = load_city(service, reader, scale)
        load_s = time.perf_counter() - started
        print(f"{name}: loaded {entities} entities in {load_s:.1f} s", flush=True)
        found: dict[str, Any] = {
            "entities": entities,
            "load_s": round(load_s, 1),
            "load_average": load_average(),
            "queries": {},
        }
        for query_name, text in queries.items():
            found["queries"][query_name] = timing = time_query(service, text, remote, runs)
            print(f"  {query_name}: {json.dumps(timing)}", flush=True)
        found["stream"] = time_stream(service, remote, 3)
        print(f"  stream: {json.dumps(found['stream'])}", flush=True)
        return found
    finally:
        state.twin.close()


def table(results: dict[str, Any]) -> str:
    names = list(results)
    head = "| query | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    lines = []
    queries = list(next(iter(results.values()))["queries"])
    for query in queries:
        cells = []
        for name in names:
            t = results[name]["queries"][query]
            if "skipped" in t:
                cells.append("skipped (geof:)")
            elif "error" in t:
                cells.append("error")
            else:
                cells.append(f"{t['p50_ms']} / {t['p95_ms']} ({t['rows']})")
        lines.append(f"| {query} | " + " | ".join(cells) + " |")
    stream = [f"{results[n]['stream']['rows_per_s_median']:,}" for n in names]
    lines.append(
        f"| {STREAM_ROWS:,}-row SELECT, rows/s (median of 3) | " + " | ".join(stream) + " |"
    )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=13, help="796 entities per unit")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--backends", default="embedded-memory,embedded-disk,oxigraph-server,virtuoso"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    queries = {**COOKBOOK, **EXTRA}
    results: dict[str, Any] = {"uptime_before": Path("/proc/loadavg").read_text().strip()}
    measured: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, backends(Path(tmp), args.backends.split(",")) as it:
        for name, settings in it:
            measured[name] = run(name, settings, args.scale, args.runs, queries)
    results["uptime_after"] = Path("/proc/loadavg").read_text().strip()
    results["backends"] = measured
    print(table(measured))
    print("loadavg before:", results["uptime_before"], "after:", results["uptime_after"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
