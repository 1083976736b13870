"""Quarantine: the records a sync could not turn into entities, with the reason, per source.

Bad records never stop a sync and are never dropped silently. Each run replaces its source's
quarantine with what it found (a fixed record leaves it), except an incremental run, which
only adds or replaces entries by record key. Stored as an append log of the state store per
source (`quarantine/<source>`): a full run trims the log and appends its entries, an
incremental run (and a live source's flush) only appends, and reading folds the log (the
entries of a later batch replace earlier ones with the same key). When dead entries outnumber
live ones, the log is rewritten in the same transaction, so it stays bounded.
"""

from __future__ import annotations

import builtins
import json
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from itertools import groupby
from typing import Any

from urbis.connectors.base import Feature, NgsiEntity, Record
from urbis.twin.state import LogRecord, StateStore, memory_state_store

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


BATCH = "batch"  # member of each log record: the write it came with (one replace call)
_COMPACT_SLACK = 64  # dead records tolerated before a log is rewritten whatever its size


def quarantine_log(source: str) -> str:
    return f"quarantine/{source}"


def quarantine_record(entry: QuarantineEntry, batch: str) -> dict[str, Any]:
    return {BATCH: batch, **entry.to_dict()}


def _entry(record: dict[str, Any]) -> QuarantineEntry:
    return QuarantineEntry(**{k: v for k, v in record.items() if k != BATCH})


def _fold(records: Iterable[LogRecord]) -> builtins.list[QuarantineEntry]:
    """The entries a log holds now: each batch replaces earlier entries with its keys."""
    entries: builtins.list[QuarantineEntry] = []
    for _, group in groupby(records, key=lambda r: r.record.get(BATCH)):
        batch = [_entry(r.record) for r in group]
        keys = {e.key for e in batch}
        entries = [e for e in entries if e.key not in keys] + batch
    return entries


class Quarantine:
    """Per-source quarantined records, in the state store (memory when none is given)."""

    def __init__(self, state: StateStore | None = None) -> None:
        self.state = state if state is not None else memory_state_store()

    def list(
        self, source: str, *, limit: int | None = None, offset: int = 0
    ) -> builtins.list[QuarantineEntry]:
        entries = self._read(source)
        return entries[offset : None if limit is None else offset + limit]

    def count(self, source: str) -> int:
        return len(self._read(source))

    def _read(self, source: str) -> builtins.list[QuarantineEntry]:
        return _fold(self.state.read(quarantine_log(source), ""))

    def replace(self, source: str, entries: Iterable[QuarantineEntry], *, merge: bool) -> None:
        """Store a run's entries: all of them (full run) or merged by key (incremental run)."""
        batch = uuid.uuid4().hex
        records = [quarantine_record(e, batch) for e in entries]
        log = quarantine_log(source)
        with self.state.transaction() as tx:
            if not merge:
                tx.trim(log, "")
            tx.append(log, "", records)
            if merge:
                stored = tx.read(log, "")
                live = _fold(stored)
                if len(stored) > 2 * len(live) + _COMPACT_SLACK:
                    tx.trim(log, "")
                    tx.append(log, "", [quarantine_record(e, batch) for e in live])

    def clear(self, source: str) -> int:
        with self.state.transaction() as tx:
            count = len(_fold(tx.read(quarantine_log(source), "")))
            tx.trim(quarantine_log(source), "")
            return count
