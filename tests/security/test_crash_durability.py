"""kill -9 in the middle of writes loses no acknowledged entity and leaves no partial one.

Each test drives a real process on an on-disk twin, kills it with SIGKILL while it writes, then
reopens the twin with a fresh `urbis serve` and checks what it holds. Entities carry three
attributes written together with one generation number: after the crash every entity has all
three, equal, and no older than the last generation the server acknowledged for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from urbis.testing.server import running_server, start_server

TOKEN = "crash-test-token"
ENV = {"URBIS_ADMIN_TOKEN": TOKEN}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TYPE = "CrashProbe"
ATTRS = ("alpha", "beta", "gamma")


def entity(i: int, generation: int) -> dict[str, object]:
    doc: dict[str, object] = {"id": f"urn:ngsi-ld:{TYPE}:{i}", "type": TYPE}
    for name in ATTRS:
        doc[name] = {"type": "Property", "value": generation}
    return doc


def start(data: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = start_server("--data-dir", str(data), log=log, env=ENV)
    return server.process, server.base


def all_probes(base: str) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    offset = 0
    while True:
        page = httpx.get(
            base + "/ngsi-ld/v1/entities",
            params={"type": TYPE, "limit": 1000, "offset": offset, "options": "keyValues"},
            timeout=30,
        )
        assert page.status_code == 200, page.text
        rows = page.json()
        found.update({row["id"]: row for row in rows})
        if len(rows) < 1000:
            return found
        offset += 1000


def assert_whole(entities: dict[str, dict[str, object]]) -> None:
    for entity_id, row in entities.items():
        values = {row.get(name) for name in ATTRS}
        assert len(values) == 1 and None not in values, f"partial entity {entity_id}: {row}"


def size(data: Path) -> int:
    return sum(f.stat().st_size for f in data.rglob("*") if f.is_file()) if data.exists() else 0


def kill_once_written(proc: subprocess.Popen[bytes], data: Path, grown: int) -> None:
    """SIGKILL `proc` once the twin grew by `grown` bytes: inside the run, not before or after."""
    start = size(data)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and size(data) - start < grown:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_kill_during_batch_upserts_keeps_every_acknowledged_generation(tmp_path: Path) -> None:
    data = tmp_path / "twin"
    proc, base = start(data, tmp_path / "first.log")
    acknowledged: dict[str, int] = {}  # entity id -> newest generation the server confirmed
    stop = threading.Event()
    batches = 0

    def writer() -> None:
        nonlocal batches
        with httpx.Client(base_url=base, headers=AUTH, timeout=30) as http:
            generation = 0
            while not stop.is_set():
                generation += 1
                ids = range((generation % 4) * 50, (generation % 4) * 50 + 200)  # overlapping sets
                body = [entity(i, generation) for i in ids]
                try:
                    answer = http.post(
                        "/ngsi-ld/v1/entityOperations/upsert",
                        params={"options": "update"},
                        json=body,
                    )
                except httpx.TransportError:
                    return  # the server died under us: this batch was never acknowledged
                assert answer.status_code in (201, 204), answer.text
                for doc in body:
                    acknowledged[str(doc["id"])] = generation
                batches += 1

    thread = threading.Thread(target=writer)
    try:
        thread.start()
        while batches < 8 and thread.is_alive():
            time.sleep(0.01)
        time.sleep(0.037)  # land inside a batch rather than between two
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop.set()
        thread.join(timeout=60)
        if proc.poll() is None:
            proc.kill()
    assert batches >= 8

    with running_server("--data-dir", str(data), env=ENV, log=tmp_path / "second.log") as again:
        found = all_probes(again)
    assert_whole(found)
    for entity_id, generation in acknowledged.items():
        assert entity_id in found, f"acknowledged {entity_id} lost"
        assert int(str(found[entity_id]["alpha"])) >= generation, f"{entity_id} went back in time"


def test_kill_during_urbis_load_leaves_no_partial_entity(tmp_path: Path) -> None:
    source = tmp_path / "probes.json"
    source.write_text(json.dumps([entity(i, 7) for i in range(30_000)]))
    data = tmp_path / "twin"
    load = subprocess.Popen(
        [sys.executable, "-m", "urbis.cli", "load", str(source), "--data-dir", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_once_written(load, data, 2_000_000)  # the first transactions, well before 30,000

    with running_server("--data-dir", str(data), env=ENV, log=tmp_path / "after.log") as again:
        found = all_probes(again)
    assert len(found) < 30_000
    assert_whole(found)


def test_kill_during_sync_then_resume_converges(tmp_path: Path) -> None:
    data = tmp_path / "twin"
    records = tmp_path / "probes.geojson"
    features = [
        {
            "type": "Feature",
            "id": i,
            "geometry": {"type": "Point", "coordinates": [3.8 + i / 1e6, 43.6]},
            "properties": {name: 3 for name in ATTRS},
        }
        for i in range(20_000)
    ]
    records.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    definition = tmp_path / "probes.toml"
    definition.write_text(
        f'id = "probes"\nkind = "file"\nendpoint = "{records}"\nentity_type = "{TYPE}"\n'
        f'id_template = "urn:ngsi-ld:{TYPE}:{{key}}"\nbatch_size = 500\n'
    )

    def urbis(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "urbis.cli", *args, "--data-dir", str(data)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    assert urbis("sources", "add", str(definition)).wait(timeout=60) == 0
    sync = urbis("sync", "probes")
    kill_once_written(sync, data, 2_000_000)

    with running_server("--data-dir", str(data), env=ENV, log=tmp_path / "mid.log") as mid:
        interrupted = all_probes(mid)
    assert_whole(interrupted)
    assert len(interrupted) < 20_000

    assert urbis("sync", "probes").wait(timeout=300) == 0
    with running_server("--data-dir", str(data), env=ENV, log=tmp_path / "end.log") as end:
        found = all_probes(end)
    assert len(found) == 20_000
    assert_whole(found)
