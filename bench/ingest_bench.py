"""File ingestion end to end: the 29,969 Montpellier street lights (Lambert-93 zipped Shapefile).

Read (pyshp), reproject to CRS84 (pyproj), validate, harmonise, upsert into the twin in
transactions of `--batch-size` entities through the sync engine, on an on-disk twin (as
`urbis sync` does) or in memory, then re-sync with nothing changed. Issue 4's target: under
10 s on the 2-core machine.

Each figure comes with the process's CPU time and the machine's load: on a shared machine the
wall time follows the load, the CPU time much less.

    python -m bench.ingest_bench [--memory] [--runs 3] [--batch-size 1000] [--bulk]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from urbis.api.app import build_state
from urbis.api.settings import Settings
from urbis.connectors.definition import parse_definition

LIGHTS = (
    Path(__file__).resolve().parents[2]
    / "shared/fixtures/montpellier/VilleMTP_MTP_EclairagePublic/VilleMTP_MTP_EclairagePublic.zip"
)


@dataclass
class Run:
    first_s: float
    first_cpu: float
    again_s: float
    again_cpu: float
    created: int
    load: float


def run_once(memory: bool, batch_size: int, bulk: bool) -> Run:
    """One fresh twin: a first sync, then an idempotent re-sync of the same file."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(open=True, data_dir=None if memory else Path(tmp))
        state = build_state(settings)
        manager = state.sources
        assert manager is not None
        manager.catalog.remember(
            parse_definition(
                {
                    "id": "streetlights",
                    "kind": "file",
                    "endpoint": str(LIGHTS),
                    "entity_type": "Streetlight",
                    "context": "urbis-smart-city",
                    "id_template": "urn:ngsi-ld:Streetlight:mtp-{key}",
                    "mapping": [{"source": "type_lante", "attribute": "lanternType"}],
                    "options": {"always_read": True},
                    "batch_size": batch_size,
                }
            )
        )
        load = os.getloadavg()[0]
        start, cpu = time.perf_counter(), time.process_time()
        first = manager.sync("streetlights", bulk=bulk)
        first_s, first_cpu = time.perf_counter() - start, time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        second = manager.sync("streetlights")
        again_s, again_cpu = time.perf_counter() - start, time.process_time() - cpu
        assert first.status == "ok" and second.unchanged == first.created, (first, second)
        state.twin.close()
        return Run(first_s, first_cpu, again_s, again_cpu, first.created, load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", action="store_true", help="in-memory twin")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1000, help="entities per transaction")
    parser.add_argument("--bulk", action="store_true", help="non-transactional bulk writes")
    args = parser.parse_args()
    if not LIGHTS.exists():
        raise SystemExit(f"{LIGHTS} is absent (../shared/fixtures)")
    runs = [run_once(args.memory, args.batch_size, args.bulk) for _ in range(args.runs)]
    best = min(runs, key=lambda r: r.first_s)
    again = min(runs, key=lambda r: r.again_s)
    where = ("memory" if args.memory else "disk") + (", bulk" if args.bulk else "")
    print(
        f"street lights ({where}, batches of {args.batch_size}): {best.created} entities, "
        f"first sync best {best.first_s:.2f} s ({best.created / best.first_s:.0f}/s, "
        f"CPU {best.first_cpu:.2f} s), unchanged re-sync {again.again_s:.2f} s "
        f"(CPU {again.again_cpu:.2f} s); all first syncs: "
        + ", ".join(f"{r.first_s:.2f} s at load {r.load:.1f}" for r in runs)
    )


if __name__ == "__main__":
    main()
