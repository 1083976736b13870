"""Quarantine: the records a sync could not turn into entities, with the reason, per source.

Bad records never stop a sync and are never dropped silently. Each run replaces its source's
quarantine with what it found (a fixed record leaves it), except an incremental run, which
only adds or replaces entries by record key. Stored as JSON lines under
`<data dir>/connectors/<source>/quarantine.jsonl`, or in memory.
"""

from __future__ import annotations

import builtins
import json
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from urbis.connectors.base import Feature, NgsiEntity, Record

MAX_RAW_CHARS = 4096


@dataclass
class QuarantineEntry:
    source: str
    key: str | None
    reason: str
    raw: Any  # the record as the source gave it, cut to MAX_RAW_CHARS of JSON
    time: str
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def raw_record(record: Record | Any) -> Any:
    """A JSON-able, size-bounded copy of a record, for people to read."""
    if isinstance(record, Feature):
        data: Any = {
            "key": record.key,
            "properties": dict(record.properties),
            "geometry": record.geometry,
            "crs": record.crs,
        }
    elif isinstance(record, NgsiEntity):
        data = dict(record.entity)
    else:
        data = record
    text = json.dumps(data, default=str, ensure_ascii=False)
    if len(text) <= MAX_RAW_CHARS:
        return json.loads(text)
    return {"truncated": True, "json": text[:MAX_RAW_CHARS]}


def record_key(record: Record | Any) -> str | None:
    if isinstance(record, Feature):
        return record.key
    if isinstance(record, NgsiEntity):
        value = record.entity.get("id")
        return value if isinstance(value, str) else None
    return None


class Quarantine:
    """Per-source quarantined records, persisted as JSON lines (or in memory)."""

    def __init__(self, directory: Path | None) -> None:
        """`directory`: where per-source folders go (`<data dir>/connectors`); None: memory."""
        self.directory = directory
        self._memory: dict[str, builtins.list[QuarantineEntry]] = {}
        self._lock = threading.Lock()

    def _path(self, source: str) -> Path | None:
        return self.directory / source / "quarantine.jsonl" if self.directory else None

    def list(
        self, source: str, *, limit: int | None = None, offset: int = 0
    ) -> builtins.list[QuarantineEntry]:
        entries = self._read(source)
        return entries[offset : None if limit is None else offset + limit]

    def count(self, source: str) -> int:
        return len(self._read(source))

    def _read(self, source: str) -> builtins.list[QuarantineEntry]:
        path = self._path(source)
        if path is None:
            return list(self._memory.get(source, []))
        if not path.is_file():
            return []
        with path.open(encoding="utf-8") as f:
            return [QuarantineEntry(**json.loads(line)) for line in f if line.strip()]

    def replace(self, source: str, entries: Iterable[QuarantineEntry], *, merge: bool) -> None:
        """Store a run's entries: all of them (full run) or merged by key (incremental run)."""
        new = list(entries)
        with self._lock:
            if merge:
                keys = {e.key for e in new}
                new = [e for e in self._read(source) if e.key not in keys] + new
            self._write(source, new)

    def clear(self, source: str) -> int:
        with self._lock:
            count = len(self._read(source))
            self._write(source, [])
            return count

    def _write(self, source: str, entries: builtins.list[QuarantineEntry]) -> None:
        path = self._path(source)
        if path is None:
            self._memory[source] = entries
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for entry in entries:
                f.write(json.dumps(entry.to_dict(), ensure_ascii=False, default=str) + "\n")
        tmp.replace(path)
