"""The /sparql endpoint against pyoxigraph itself, over loopback, on a real `urbis serve`.

Two measurements (issue 3):

* **Overhead.** For a few queries that take at least 10 ms on raw pyoxigraph: the direct
  in-process query (`Store.read_only` on the server's tenant directory, every solution
  consumed) against the `/sparql` round trip (httpx over 127.0.0.1, keep-alive, the whole
  SPARQL JSON body read). Target: the round trip within 1.15x of the direct query.
* **Memory while streaming.** A 1,000,000-row SELECT read through `/sparql` while a thread
  samples VmRSS of the server and of its query processes (/proc). Target: the server grows by
  less than 100 MB.

    python -m bench.sparql_bench [--entities 100000] [--runs 9] [--stores demo-disk,big-disk,
        demo-memory] [--code DIR] [--work DIR] [--out bench/results/sparql.json]

`--code DIR` runs the server from another source tree (e.g. an export of an earlier commit:
`git archive HEAD | tar -x -C DIR`), for before/after figures with the same client.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pyoxigraph import QuerySolutions, Store

from bench.server import cli_module
from urbis.testing.processes import children
from urbis.testing.server import serving

REPO = Path(__file__).resolve().parent.parent
WASTE = "https://smartdatamodels.org/dataModel.WasteManagement/"
PREFIXES = f"PREFIX waste: <{WASTE}>\n"
# Queries of several shapes (aggregate over everything, join + filter, 2-hop, wide answer).
QUERIES: dict[str, str] = {
    "count-by-type": "SELECT ?t (COUNT(?e) AS ?n) WHERE { ?e a ?t } GROUP BY ?t",
    "triples-per-type": (
        "SELECT ?t (COUNT(*) AS ?n) WHERE { ?e a ?t . ?e ?p ?o } GROUP BY ?t ORDER BY DESC(?n)"
    ),
    "full-bins": PREFIXES
    + (
        "SELECT ?e ?level WHERE { ?e a waste:WasteContainer ; waste:fillingLevel ?level . "
        "FILTER(?level > 0.5) } ORDER BY DESC(?level)"
    ),
    "distinct-predicates": "SELECT ?p (COUNT(*) AS ?n) WHERE { ?s ?p ?o } GROUP BY ?p",
    "two-hop": PREFIXES
    + "SELECT ?t (COUNT(*) AS ?n) WHERE { ?a a waste:WasteContainer ; ?p ?b . ?b a ?t } "
    + "GROUP BY ?t",
    "page-of-triples": "SELECT ?s ?p ?o WHERE { ?s ?p ?o } LIMIT 5000",
}
MILLION = (
    f"SELECT ?s ?p ?o ?bin WHERE {{ ?s ?p ?o . ?bin a <{WASTE}WasteContainer> }} LIMIT 1000000"
)


@dataclass
class Timing:
    query: str
    direct_min_ms: float
    direct_median_ms: float
    endpoint_min_ms: float
    endpoint_median_ms: float
    rows: int
    ratio_median: float = 0.0
    ratio_min: float = 0.0
    load: float = 0.0


@dataclass
class Stream:
    rows_bytes: int
    seconds: float
    server_rss_before_mb: float
    server_rss_peak_mb: float
    server_growth_mb: float
    workers_rss_peak_mb: float
    load: float


@dataclass
class StoreRun:
    name: str
    entities: int
    triples: int
    timings: list[Timing] = field(default_factory=list)
    stream: Stream | None = None


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@contextmanager
def serve(args: list[str], code: Path, log: Path) -> Iterator[tuple[str, int]]:
    """`urbis serve --open ARGS` from the source tree `code`; (base URL, pid)."""
    env = {"URBIS_DEMO_LIVE_SECONDS": "0"}
    with serving(
        "--open", *args, log=log, env=env, code=code, module=cli_module(code), timeout=300
    ) as server:
        yield server.base, server.pid


def build_big_store(data_dir: Path, entities: int) -> int:
    """The demo city scaled to about `entities`, written as `urbis load` does (bulk)."""
    from bench.workload import batches, scale_for
    from urbis.api.app import build_state
    from urbis.api.settings import Settings
    from urbis.demo.loading import demo_terms
    from urbis.twin.changes import WriteContext
    from urbis.twin.model import EntityReader, now_iso
    from urbis.twin.rdf import dataset_graph

    state = build_state(Settings(data_dir=data_dir, open=True, demo_live_seconds=0))
    service = state.twin.tenant("", create=True)
    reader = EntityReader(demo_terms(state.resolver, state.registry), now=now_iso())
    graph = dataset_graph("demo")
    loaded = 0
    for batch in batches(scale_for(entities), 2000):
        docs = [reader.entity(entity) for entity in batch]
        service.upsert_many(
            [(d["id"], d) for d in docs],
            context=WriteContext(reason="sparql_bench load"),
            mode="replace",
            graph=graph,
            bulk=True,
        )
        loaded += len(docs)
    state.twin.close()
    return loaded


def _direct(store: Store, query: str) -> tuple[float, int]:
    started = time.perf_counter()
    result = store.query(query, use_default_graph_as_union=True)
    assert isinstance(result, QuerySolutions)
    rows = sum(1 for _ in result)
    return (time.perf_counter() - started) * 1000, rows


def _endpoint(client: httpx.Client, base: str, query: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = client.get(base + "/sparql", params={"query": query})
    body = response.content
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed, len(json.loads(body)["results"]["bindings"])


def measure_overhead(base: str, tenant_dir: Path | None, runs: int) -> list[Timing]:
    """Direct and endpoint runs interleaved (same load for both), after two warm-ups."""
    store = Store.read_only(str(tenant_dir)) if tenant_dir is not None else None
    timings: list[Timing] = []
    with httpx.Client(timeout=120) as client:
        for name, query in QUERIES.items():
            direct: list[float] = []
            endpoint: list[float] = []
            rows = 0
            for run in range(runs + 2):
                d_ms, d_rows = _direct(store, query) if store is not None else (0.0, 0)
                e_ms, rows = _endpoint(client, base, query)
                if store is not None and d_rows != rows:
                    raise RuntimeError(f"{name}: {d_rows} rows direct, {rows} by /sparql")
                if run >= 2:
                    direct.append(d_ms)
                    endpoint.append(e_ms)
            timing = Timing(
                name,
                round(min(direct), 1),
                round(statistics.median(direct), 1),
                round(min(endpoint), 1),
                round(statistics.median(endpoint), 1),
                rows,
                load=os.getloadavg()[0],
            )
            if store is not None and timing.direct_min_ms > 0:
                timing.ratio_median = round(timing.endpoint_median_ms / timing.direct_median_ms, 2)
                timing.ratio_min = round(timing.endpoint_min_ms / timing.direct_min_ms, 2)
            timings.append(timing)
            print(asdict(timing), flush=True)
    return timings


def measure_stream(base: str, pid: int) -> Stream:
    """Read the million-row answer slowly enough to be realistic; sample RSS meanwhile."""
    peak = {"server": 0.0, "workers": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["server"] = max(peak["server"], _rss_mb(pid))
            workers = sum(_rss_mb(child) for child in children(pid))
            peak["workers"] = max(peak["workers"], workers)
            time.sleep(0.05)

    before = _rss_mb(pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    size = 0
    with (
        httpx.Client(timeout=600) as client,
        client.stream("GET", base + "/sparql", params={"query": MILLION}) as response,
    ):
        response.raise_for_status()
        for chunk in response.iter_bytes(1 << 16):
            size += len(chunk)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    stream = Stream(
        rows_bytes=size,
        seconds=round(seconds, 1),
        server_rss_before_mb=round(before, 1),
        server_rss_peak_mb=round(peak["server"], 1),
        server_growth_mb=round(peak["server"] - before, 1),
        workers_rss_peak_mb=round(peak["workers"], 1),
        load=os.getloadavg()[0],
    )
    print(asdict(stream), flush=True)
    return stream


def _triples(tenant_dir: Path) -> int:
    store = Store.read_only(str(tenant_dir))
    return len(store)


def run_store(name: str, args: argparse.Namespace, work: Path) -> StoreRun:
    data_dir = work / name
    entities = 0
    if name == "big-disk" and (data_dir / "tenants").exists():
        entities = args.entities  # built by an earlier run (--work)
        serve_args = ["--data-dir", str(data_dir)]
    elif name == "big-disk":
        started = time.perf_counter()
        entities = build_big_store(data_dir, args.entities)
        print(f"built {entities} entities in {time.perf_counter() - started:.0f} s", flush=True)
        serve_args = ["--data-dir", str(data_dir)]
    elif name == "demo-disk":
        shutil.rmtree(data_dir, ignore_errors=True)
        serve_args = ["--demo", "--data-dir", str(data_dir)]
    else:
        serve_args = ["--demo", "--memory"]
    tenant_dir = data_dir / "tenants" / "_default" if name != "demo-memory" else None
    with serve(serve_args, args.code, work / f"{name}.log") as (base, pid):
        run = StoreRun(name, entities, _triples(tenant_dir) if tenant_dir else 0)
        print(f"{name}: {run.triples} triples", flush=True)
        if tenant_dir is not None:
            run.timings = measure_overhead(base, tenant_dir, args.runs)
        if not args.skip_stream:
            run.stream = measure_stream(base, pid)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--stores", default="demo-disk,big-disk,demo-memory")
    parser.add_argument("--code", type=Path, default=REPO)
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--work", type=Path, help="keep the stores here; an existing big-disk store is reused"
    )
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sparql-bench-") as tmp:
        work = args.work or Path(tmp)
        for name in args.stores.split(","):
            results.append(asdict(run_store(name, args, work)))
    report = {"code": str(args.code), "load": os.getloadavg(), "stores": results}
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
