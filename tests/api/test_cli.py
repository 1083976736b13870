"""`urbis load` into a data directory and `urbis sparql` against it, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from urbis.cli.jsonstream import iter_json_items


def urbis(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "urbis.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_load_then_sparql(tmp_path: Path) -> None:
    entities = [
        {
            "id": f"urn:ngsi-ld:Streetlight:{i}",
            "type": "Streetlight",
            "powerState": "on" if i % 2 else "off",
            "location": {"type": "Point", "coordinates": [3.87 + i / 1000, 43.61]},
        }
        for i in range(2500)
    ]
    entities.append({"id": "bad id", "type": "Streetlight"})
    source = tmp_path / "lights.json"
    source.write_text(json.dumps(entities, indent=1))
    data = tmp_path / "twin"
    loaded = urbis(
        "load", str(source), "--data-dir", str(data), "--dataset", "lights", "--batch-size", "1000"
    )
    assert loaded.returncode == 1, loaded.stderr  # one entity rejected
    assert "loaded 2500 entities, rejected 1" in loaded.stdout
    assert "bad id" in loaded.stderr
    query = (
        "SELECT (COUNT(?s) AS ?n) WHERE { GRAPH <urn:urbis:dataset:lights> { ?s "
        '<https://uri.etsi.org/ngsi-ld/default-context/powerState> "on" } }'
    )
    answered = urbis("sparql", query, "--data-dir", str(data))
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.splitlines()[1].startswith('"1250"')
    bad = urbis("sparql", "SELEKT nothing", "--data-dir", str(data))
    assert bad.returncode == 2 and "invalid SPARQL" in bad.stderr


def test_stream_reader_yields_items_across_chunks(tmp_path: Path) -> None:
    items = [{"id": f"urn:x:{i}", "text": "é" * (i % 300)} for i in range(5000)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(items))
    assert list(iter_json_items(path)) == items
    single = tmp_path / "one.json"
    single.write_text(json.dumps(items[0]))
    assert list(iter_json_items(single)) == [items[0]]
