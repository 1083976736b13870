"""Loads the generated demo city and keeps it alive with periodic sensor updates."""

from __future__ import annotations

import asyncio
import atexit
import csv
import json
import logging
import random
import shutil
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from urbis.connectors.definition import SourceDefinition, parse_definition
from urbis.connectors.sync import SyncManager
from urbis.demo import city as demo
from urbis.twin.changes import WriteContext
from urbis.twin.context import ContextResolver, ContextStore
from urbis.twin.core import Twin
from urbis.twin.entities import BatchItem
from urbis.twin.model import EntityReader, now_iso
from urbis.twin.provenance import default_dataset_info
from urbis.twin.store.base import DEFAULT_TENANT
from urbis.twin.terms import Terms

log = logging.getLogger("urbis")
DEMO_DATASET = "urn:urbis:dataset:demo"


def demo_terms(resolver: ContextResolver, registry: ContextStore) -> Terms:
    """The packaged smart-city context, resolved from the registry (never fetched)."""
    return resolver.resolve(registry.get(demo.CONTEXT_ID)["@context"])


def write_demo_files(directory: Path, *, seed: int = 42) -> tuple[Path, Path]:
    """The generated city as a vendor would publish it: NGSI-LD GeoJSON and a flat CSV.

    Street lights go to a CSV table (one column per attribute, lon/lat columns), as a GIS
    department's export would; every other entity to an NGSI-LD GeoJSON FeatureCollection.
    """
    directory.mkdir(parents=True, exist_ok=True)
    city = directory / "demo-city.geojson"
    lights = directory / "demo-streetlights.csv"
    rows: list[dict[str, Any]] = []
    with city.open("w", encoding="utf-8") as out:
        out.write('{"type": "FeatureCollection", "features": [\n')
        first = True
        for entity in demo.generate(seed=seed):
            if entity["type"] == "Streetlight":
                rows.append(_flat(entity))
                continue
            feature = {
                "type": "Feature",
                "id": entity["id"],
                "geometry": entity["location"]["value"],
                "properties": {k: v for k, v in entity.items() if k != "id"},
            }
            out.write(("" if first else ",\n") + json.dumps(feature, ensure_ascii=False))
            first = False
        out.write("\n]}\n")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with lights.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter=";")
        writer.writeheader()
        writer.writerows(rows)
    return city, lights


def _flat(entity: dict[str, Any]) -> dict[str, Any]:
    """One street light as a CSV row: plain values, JSON for structured ones, lon/lat."""
    lon, lat = entity["location"]["value"]["coordinates"]
    row: dict[str, Any] = {"ref": entity["id"].rsplit("demo-", 1)[1], "lon": lon, "lat": lat}
    for name, attr in entity.items():
        if name in ("id", "type", "location"):
            continue
        if attr["type"] == "Relationship":
            row[name] = attr["object"]
            continue
        value = attr["value"]
        if isinstance(value, dict) and "@value" in value:
            value = value["@value"]
        row[name] = (
            json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
        )
        if "observedAt" in attr:
            row["observedAt"] = attr["observedAt"]
    return row


def _light_mapping(entity: dict[str, Any]) -> list[dict[str, Any]]:
    """The CSV columns back to Streetlight attributes, with their conversion and unit."""
    mapping: list[dict[str, Any]] = []
    for name, attr in entity.items():
        if name in ("id", "type", "location"):
            continue
        item: dict[str, Any] = {"source": name, "attribute": name}
        if attr["type"] == "Relationship":
            item["type"] = "Relationship"
        else:
            value = attr["value"]
            if isinstance(value, dict) and value.get("@type") in ("DateTime", "Date"):
                item["convert"] = "datetime" if value["@type"] == "DateTime" else "date"
            elif isinstance(value, dict | list):
                item["convert"] = "json"
            elif isinstance(value, bool):
                item["convert"] = "bool"
            elif isinstance(value, int | float):
                item["convert"] = type(value).__name__
            if "unitCode" in attr:
                item["unit"] = attr["unitCode"]
        mapping.append(item)
    return mapping


def demo_sources(directory: Path, *, seed: int = 42) -> list[SourceDefinition]:
    """The demo city's two sources: its files, written into `directory`."""
    city, lights = write_demo_files(directory, seed=seed)
    info = demo.dataset_info(DEMO_DATASET)
    common: dict[str, Any] = {
        "kind": "file",
        "context": demo.CONTEXT_ID,
        "publisher": info.publisher,
        "licence": info.licence,
        "description": info.description,
    }
    sample = next(e for e in demo.generate(seed=seed) if e["type"] == "Streetlight")
    return [
        parse_definition({**common, "id": "demo", "endpoint": str(city), "title": info.title}),
        parse_definition(
            {
                **common,
                "id": "demo-streetlights",
                "endpoint": str(lights),
                "title": "Urbis demo city: street lights (CSV export)",
                "entity_type": "Streetlight",
                "id_template": "urn:ngsi-ld:Streetlight:demo-{key}",
                "key": "ref",
                "observed_at": "observedAt",
                "mapping": _light_mapping(sample),
            }
        ),
    ]


def load_demo(manager: SyncManager, *, directory: Path | None = None, seed: int = 42) -> int:
    """Write the demo city out as files into `directory` (None: a temporary directory, removed
    at exit) and sync them through the file connector of `manager`, into its twin.

    So the demo shows federation at work: each file is a source with its own named graph,
    provenance, report and quarantine (`GET /sources`). Returns the entities in the twin from
    those sources. The live readings come from `run_live_demo`, or, with URBIS_DEMO_MQTT_URL,
    from simulated devices through a broker and the "demo-mqtt" source (`start_demo_devices`).
    """
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="urbis-demo-"))
        atexit.register(shutil.rmtree, directory, True)
    total = 0
    for source in demo_sources(directory, seed=seed):
        manager.catalog.remember(source)
        report = manager.sync(source.id)
        if report.status != "ok" or report.quarantined:
            log.warning("demo source %s: %s", source.id, report.to_dict())
        total += report.created + report.updated + report.unchanged
    service = manager.twin.tenant(DEFAULT_TENANT, create=True)
    service.describe_dataset(default_dataset_info(), datetime.now(UTC))
    log.info("demo city synced from %s: %d entities", directory, total)
    return total


def apply_updates(twin: Twin, terms: Terms, rng: random.Random) -> int:
    """One tick of the living demo (`terms`: `demo_terms`): the sensors' readings, upserted
    with options=update."""
    service = twin.tenant(DEFAULT_TENANT, create=True)
    reader = EntityReader(terms, now=now_iso())
    items: list[BatchItem] = []
    for entity_id, fragment in demo.updates(rng, datetime.now(UTC)):
        kind = entity_id.split(":")[2]  # urn:ngsi-ld:<type>:demo-<n>
        items.append((entity_id, reader.entity({"id": entity_id, "type": kind, **fragment})))
    result = service.upsert_many(
        items, context=WriteContext.demo("sensor readings"), mode="update", graph=DEMO_DATASET
    )
    return len(result.success)


def start_demo_devices(manager: SyncManager, broker_url: str, period: float) -> Callable[[], None]:
    """The demo's sensors as MQTT devices (URBIS_DEMO_MQTT_URL), publishing every `period`
    seconds: the simulator publishes each tick to the broker and the "demo-mqtt" source of
    `manager`, a live source like any other, brings the measures back into the twin. Returns
    what stops the simulator; the source is started and stopped with the other live sources."""
    from urbis.demo.devices import demo_source, run_simulator

    info = demo.dataset_info(DEMO_DATASET)
    source = demo_source(broker_url, demo.CONTEXT_ID).model_copy(
        update={
            "context": demo.CONTEXT_ID,
            "publisher": info.publisher,
            "licence": info.licence,
            "description": "Simulated IoT Agent JSON devices of the demo city's sensors",
        }
    )
    manager.catalog.remember(source)  # started by the live manager with the others
    stop = threading.Event()
    thread = threading.Thread(
        target=run_simulator, args=(broker_url, stop, period), name="demo-sim", daemon=True
    )
    thread.start()
    log.info("demo sensors publish to %s; source %s brings them back", broker_url, source.id)

    def halt() -> None:
        stop.set()
        thread.join(timeout=10)

    return halt


async def run_live_demo(twin: Twin, terms: Terms, period: float) -> None:
    """Apply the sensors' updates every `period` seconds, until cancelled."""
    rng = random.Random(7)
    while True:
        await asyncio.sleep(period)
        try:
            await asyncio.to_thread(apply_updates, twin, terms, rng)
        except Exception:  # the demo must never take the server down
            log.exception("demo update failed")
