"""Write throughput: batch upsert over HTTP, and pyoxigraph loading the same quads directly.

Only the work of the system under test is timed: generating and serialising a batch (HTTP) or
building its quads (raw) happens between the timed sections.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from pyoxigraph import Store

from bench.machine import CpuMeter, memory
from bench.server import Server
from bench.workload import Facts, batches
from urbis.twin.model import EntityReader, now_iso
from urbis.twin.rdf import dataset_graph, entity_quads
from urbis.twin.terms import Terms

UPSERT = "/ngsi-ld/v1/entityOperations/upsert"


@dataclass
class LoadResult:
    entities: int
    batches: int
    timed_s: float  # sum of the timed sections
    wall_s: float  # including the untimed preparation
    cpu: dict[str, float] | None = None  # cores used per party (machine.CpuMeter)
    body_bytes: int = 0
    quads: int = 0
    rss_trace: list[tuple[int, int]] = field(default_factory=list)  # (entities, server VmRSS)
    stopped: str | None = None  # why the load ended before the city did

    @property
    def per_second(self) -> float:
        return self.entities / self.timed_s if self.timed_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "entities_per_s": round(self.per_second, 1)}


def http_upsert(
    server: Server, scale: int, batch_size: int, facts: Facts, *, max_rss: int
) -> LoadResult:
    """POST every batch to /entityOperations/upsert and fill `facts` on the way.

    Stops early once the server's resident memory passes `max_rss` bytes: the machine is
    shared, and a server that big has already answered the memory question.
    """
    headers = {"Content-Type": "application/json", "Link": server.link}
    result = LoadResult(entities=0, batches=0, timed_s=0.0, wall_s=0.0)
    meter = CpuMeter(server.pid)
    wall = time.perf_counter()
    with httpx.Client(base_url=server.base, timeout=600) as client:
        for batch in batches(scale, batch_size):
            facts.observe(batch)
            body = orjson.dumps(batch)
            start = time.perf_counter()
            response = client.post(UPSERT, content=body, headers=headers)
            result.timed_s += time.perf_counter() - start
            if response.status_code not in (201, 204):
                raise RuntimeError(
                    f"upsert batch {result.batches} answered {response.status_code}: "
                    f"{response.text[:2000]}"
                )
            result.entities += len(batch)
            result.batches += 1
            result.body_bytes += len(body)
            rss = memory(server.pid)["VmRSS"]
            if result.batches % 10 == 0:
                result.rss_trace.append((result.entities, rss))
            if rss > max_rss:
                result.stopped = f"server RSS {rss / 2**30:.2f} GiB passed the --max-rss-gib guard"
                break
    result.wall_s = time.perf_counter() - wall
    result.cpu = meter.stop()
    facts.sort()
    return result


def raw_store_load(
    terms: Terms, scale: int, batch_size: int, work_dir: Path, *, limit: int
) -> LoadResult:
    """`Store(path).extend(quads)` per batch, with the quads the API wrote for the first
    `limit` entities."""
    reader = EntityReader(terms, now=now_iso())
    graph = dataset_graph("default")
    path = Path(tempfile.mkdtemp(prefix="raw-oxigraph-", dir=work_dir))
    result = LoadResult(entities=0, batches=0, timed_s=0.0, wall_s=0.0)
    wall = time.perf_counter()
    try:
        store = Store(str(path))
        for batch in batches(scale, batch_size):
            if result.entities >= limit:
                break
            quads = [q for entity in batch for q in entity_quads(reader.entity(entity), graph)]
            start = time.perf_counter()
            store.extend(quads)
            result.timed_s += time.perf_counter() - start
            result.entities += len(batch)
            result.batches += 1
            result.quads += len(quads)
        result.wall_s = time.perf_counter() - wall
        del store
        gc.collect()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return result
