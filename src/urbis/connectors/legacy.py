"""The connectors' state files before the state store, for the one-time import.

`<data dir>/connectors/<source>/<name>.json` held SyncState's objects (cursor, journal, report,
tombstones, live) and `<data dir>/connectors/<source>/quarantine.jsonl` the quarantine, one
JSON entry a line. Definitions (`<data dir>/sources/*.toml`) are `sources.import_legacy_sources`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from urbis.connectors.quarantine import QuarantineEntry, quarantine_log, quarantine_record
from urbis.connectors.sync import SYNC_STATE, sync_state_key
from urbis.twin.state import StateTransaction

QUARANTINE_FILE = "quarantine.jsonl"


def import_legacy_connector_state(tx: StateTransaction, directory: Path) -> int:
    count = 0
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        source = folder.name
        for path in sorted(folder.glob("*.json")):
            value = _object(path, path.read_text(encoding="utf-8"))
            tx.put(SYNC_STATE, "", sync_state_key(source, path.stem), value)
            count += 1
        quarantined = folder / QUARANTINE_FILE
        if quarantined.is_file():
            lines = quarantined.read_text(encoding="utf-8").splitlines()
            try:
                entries = [QuarantineEntry(**_object(quarantined, x)) for x in lines if x.strip()]
            except TypeError as error:
                raise ValueError(f"cannot import {quarantined}: {error}") from None
            tx.append(
                quarantine_log(source), "", [quarantine_record(e, "imported") for e in entries]
            )
            count += len(entries)
    return count


def _object(path: Path, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(f"cannot import {path}: not JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"cannot import {path}: not a JSON object")
    return value
