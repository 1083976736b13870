"""File ingestion end to end: the 29,969 Montpellier street lights (Lambert-93 zipped Shapefile).

Read (pyshp), reproject to CRS84 (pyproj), validate, harmonise, upsert into the twin in batches
of 1,000 through the sync engine, on an on-disk twin (as `urbis sync` does) or in memory.
Issue 4's target: under 10 s on the 2-core machine.

    python -m bench.ingest_bench [--memory] [--runs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from api.app import build_state
from api.settings import Settings
from connectors.definition import parse_definition

LIGHTS = (
    Path(__file__).resolve().parents[2]
    / "shared/fixtures/montpellier/VilleMTP_MTP_EclairagePublic/VilleMTP_MTP_EclairagePublic.zip"
)


def run_once(memory: bool) -> tuple[float, float, int]:
    """(first sync s, idempotent re-read s, entities created)."""
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
                }
            )
        )
        start = time.perf_counter()
        first = manager.sync("streetlights")
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        second = manager.sync("streetlights")
        second_s = time.perf_counter() - start
        assert first.status == "ok" and second.unchanged == first.created, (first, second)
        state.twin.close()
        return first_s, second_s, first.created


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", action="store_true", help="in-memory twin")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not LIGHTS.exists():
        raise SystemExit(f"{LIGHTS} is absent (../shared/fixtures)")
    results = [run_once(args.memory) for _ in range(args.runs)]
    best = min(results)
    where = "memory" if args.memory else "disk"
    print(
        f"street lights ({where}): {best[2]} entities, first sync best {best[0]:.2f} s "
        f"({best[2] / best[0]:.0f}/s), unchanged re-sync {min(r[1] for r in results):.2f} s; "
        f"all first syncs: {', '.join(f'{r[0]:.2f}' for r in results)} s"
    )


if __name__ == "__main__":
    main()
