"""The sync engine: one source's records -> its own named graph of the twin.

Semantics, per run of one source (docs/connectors.md says the same for users):

* fetch with retries and exponential backoff on `SourceUnavailable`; a source that stays down
  ends its run `failed` (nothing removed, cursor kept) and the other sources go on;
* harmonise each record; a bad one goes to the quarantine with the reason, never stops the run;
* upsert in transactions of `batch_size` entities into `urn:urbis:dataset:<source id>`;
  an entity whose content did not change is not written at all (idempotent re-runs);
* after a full fetch, entities of the source's graph that the source no longer holds are
  tombstoned: deleted from the twin (NGSI-LD clients get 404, as for any deleted entity) and
  recorded, with the time and run, in the source's tombstone list;
* resumable: the cursor is saved only when a run ends well and a journal marks a run in
  progress, so a crashed run is detected and the next one, re-fetching from the last good
  cursor, converges to the source's state (already written entities count as unchanged);
* PROV-O provenance of each run and a DCAT description of the dataset in the metadata graph.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.base import BadRecord, Cursor, Record, SourceUnavailable
from connectors.definition import SourceDefinition
from connectors.harmonize import Harmonizer
from connectors.quarantine import Quarantine, QuarantineEntry, raw_record, record_key
from connectors.registry import ConnectorRegistry, default_registry
from connectors.sources import SourceCatalog
from twin import ns
from twin.context import ContextRegistry, ContextResolver
from twin.core import Twin
from twin.entities import EntityService
from twin.errors import NgsiLdError, ResourceNotFound
from twin.model import SYSTEM_MEMBERS, now_iso
from twin.provenance import DatasetInfo, SyncRun, describe_dataset, record_run
from twin.query.sparql import iri
from twin.terms import Terms

log = logging.getLogger("urbis.connectors")
Doc = dict[str, Any]
Progress = Callable[[int], None]  # records handled so far in this run


@dataclass
class SyncReport:
    """What one run did; `errors` says why a run failed (or what it survived)."""

    source: str
    run_id: str
    status: str = "running"  # running, ok, failed
    started: str = ""
    ended: str | None = None
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    quarantined: int = 0
    repaired: int = 0  # geometries repaired with make_valid (recorded on the entities)
    retries: int = 0
    duration: float = 0.0
    full: bool = True
    resumed: str | None = None  # the run id of a crashed run this one takes over from
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyncReport:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class SourceBusy(RuntimeError):
    """A sync of this source is already running."""


# -- per-source state: cursor, journal, last report, tombstones -------------------------------


class SyncState:
    """What the framework keeps per source between runs (files, or memory)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._memory: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _path(self, source: str, name: str) -> Path | None:
        return self.directory / source / f"{name}.json" if self.directory else None

    def get(self, source: str, name: str) -> Any:
        path = self._path(source, name)
        if path is None:
            return self._memory.get((source, name))
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def put(self, source: str, name: str, value: Any) -> None:
        path = self._path(source, name)
        with self._lock:
            if path is None:
                if value is None:
                    self._memory.pop((source, name), None)
                else:
                    self._memory[(source, name)] = value
                return
            if value is None:
                path.unlink(missing_ok=True)
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(value, ensure_ascii=False, default=str), encoding="utf-8")
            tmp.replace(path)  # atomic: a crash leaves the old or the new state, never half


# -- comparing documents ----------------------------------------------------------------------


def content(value: Any) -> Any:
    """A document without its system members (createdAt, modifiedAt...), to compare content."""
    if isinstance(value, dict):
        return {k: content(v) for k, v in value.items() if k not in SYSTEM_MEMBERS}
    if isinstance(value, list):
        return [content(v) for v in value]
    return value


def carry_timestamps(old: Doc, new: Doc) -> Doc:
    """Keep createdAt, and the timestamps of attribute instances whose content is the same."""
    new["createdAt"] = old.get("createdAt", new.get("createdAt"))
    for name, instances in new.items():
        before = old.get(name)
        same_kind = isinstance(instances, list) and isinstance(before, list) and name != "type"
        if same_kind and content(before) == content(instances):
            new[name] = before
    return new


# -- one run of one source ---------------------------------------------------------------------


class SyncRunner:
    """Runs one sync of one source; `SyncManager` builds it with the shared pieces."""

    def __init__(
        self,
        source: SourceDefinition,
        service: EntityService,
        harmonizer: Harmonizer,
        *,
        registry: ConnectorRegistry,
        quarantine: Quarantine,
        state: SyncState,
        progress: Progress | None = None,
        sleep: Callable[[float], None] = time.sleep,
        bulk: bool = False,
    ) -> None:
        self.source = source
        self.service = service
        self.harmonizer = harmonizer
        self.registry = registry
        self.quarantine = quarantine
        self.state = state
        self.progress = progress
        self.sleep = sleep
        self.bulk = bulk
        self.graph = source.graph
        self.seen: set[str] = set()
        self.entries: dict[tuple[str | None, str], QuarantineEntry] = {}
        self.handled = 0

    def run(self) -> SyncReport:
        source = self.source
        started = datetime.now(UTC)
        run_id = f"{source.id}:{started:%Y%m%dT%H%M%S}Z:{uuid.uuid4().hex[:8]}"
        report = SyncReport(source=source.id, run_id=run_id, started=_iso(started))
        crashed = self.state.get(source.id, "journal")
        if crashed is not None:
            report.resumed = crashed.get("run_id")
            log.warning(
                "source %s: run %s did not finish; this run takes over", source.id, report.resumed
            )
        self.state.put(
            source.id, "journal", {"run_id": run_id, "started": report.started, "batches": 0}
        )
        clock = time.monotonic()
        cursor = Cursor(state=dict(self.state.get(source.id, "cursor") or {}))
        try:
            describe_dataset(self.service.store, dataset_info(source), started)
            self._fetch_with_retries(cursor, report)
            report.full = cursor.full
            if report.status == "running":
                if cursor.full:
                    self._tombstone(report)
                self.state.put(source.id, "cursor", cursor.state)
                report.status = "ok"
        except Exception as exc:  # a connector or store bug: report it, never crash the caller
            log.exception("source %s: sync failed", source.id)
            report.status = "failed"
            report.errors.append(f"{type(exc).__name__}: {exc}")
        self.quarantine.replace(
            source.id,
            self.entries.values(),
            merge=not (report.full and report.status == "ok"),
        )
        report.quarantined = len(self.entries)
        ended = datetime.now(UTC)
        report.ended = _iso(ended)
        report.duration = round(time.monotonic() - clock, 3)
        try:
            record_run(self.service.store, sync_run(source, report, started, ended))
        except Exception as exc:
            report.errors.append(f"provenance not recorded: {exc}")
        self.state.put(source.id, "report", report.to_dict())
        self.state.put(source.id, "journal", None)
        return report

    def _fetch_with_retries(self, cursor: Cursor, report: SyncReport) -> None:
        """Fetch, retrying on SourceUnavailable; a retry starts over from the same cursor."""
        saved = dict(cursor.state)
        secret = None
        if self.source.credentials:
            secret = os.environ.get(self.source.credentials)
            if secret is None:
                report.status = "failed"
                report.errors.append(
                    f"environment variable {self.source.credentials} (credentials) is not set"
                )
                return
        attempt = 0
        while True:
            connector = self.registry.create(self.source, secret)
            try:
                self.entries.clear()  # a retry meets the same bad records again
                self._consume(connector.fetch(cursor), report)
                return
            except SourceUnavailable as exc:
                attempt += 1
                if attempt > self.source.retries:
                    report.status = "failed"
                    report.errors.append(f"source unavailable after {attempt} attempts: {exc}")
                    return
                report.retries += 1
                delay = self.source.backoff * 2 ** (attempt - 1)
                log.warning(
                    "source %s unavailable (%s); retry %d in %.1f s",
                    self.source.id,
                    exc,
                    attempt,
                    delay,
                )
                self.sleep(delay)
                cursor.state = dict(saved)
                cursor.full = True
            finally:
                connector.close()

    def _consume(self, records: Iterable[Record], report: SyncReport) -> None:
        batch: list[Record] = []
        for record in records:
            batch.append(record)
            if len(batch) >= self.source.batch_size:
                self._flush(batch, report)
                batch = []
        if batch:
            self._flush(batch, report)

    def _bad(self, record: Record, reason: str) -> None:
        key = record_key(record)
        self.entries[(key, reason)] = QuarantineEntry(
            source=self.source.id,
            key=key,
            reason=reason,
            raw=raw_record(record),
            time=now_iso(),
            run_id=None,
        )

    def _flush(self, records: Sequence[Record], report: SyncReport) -> None:
        docs: dict[str, Doc] = {}
        for record in records:
            try:
                harmonized = self.harmonizer.document(record)
            except BadRecord as exc:
                self._bad(record, str(exc))
                continue
            except NgsiLdError as exc:
                self._bad(record, exc.detail)
                continue
            except (ValueError, TypeError, KeyError) as exc:
                self._bad(record, f"{type(exc).__name__}: {exc}")
                continue
            entity_id = harmonized.doc["id"]
            if entity_id in self.seen or entity_id in docs:
                self._bad(
                    record,
                    f"duplicate id {entity_id}: an earlier record of this run "
                    "has it (is the key unique?)",
                )
                continue
            docs[entity_id] = harmonized.doc
            if harmonized.repair is not None:
                report.repaired += 1
        existing = self.service.get_many(list(docs))
        changed: list[tuple[str | None, Doc | NgsiLdError]] = []
        created: list[str] = []
        for entity_id, doc in docs.items():
            old = existing.get(entity_id)
            if old is None:
                changed.append((entity_id, doc))
                created.append(entity_id)
            elif old[1] != self.graph:
                self._bad_doc(
                    doc,
                    f"entity {entity_id} belongs to dataset {old[1]}, "
                    f"not to this source's {self.graph}",
                )
                continue
            elif content(old[0]) == content(doc):
                report.unchanged += 1
            else:
                changed.append((entity_id, carry_timestamps(old[0], doc)))
                report.updated += 1
            self.seen.add(entity_id)
        if changed:
            result = self.service.batch(
                changed, lambda new, _old: new, graph=self.graph, bulk=self.bulk
            )
            for entity_id, error in result.errors:
                self._bad_doc({"id": entity_id}, error.detail)
        report.created += len(created)
        if created:
            self._untombstone(created)
        self.handled += len(records)
        journal = self.state.get(self.source.id, "journal") or {}
        journal["batches"] = journal.get("batches", 0) + 1
        journal["records"] = self.handled
        self.state.put(self.source.id, "journal", journal)
        if self.progress is not None:
            self.progress(self.handled)

    def _bad_doc(self, doc: Doc, reason: str) -> None:
        entity_id = doc.get("id")
        self.entries[(entity_id, reason)] = QuarantineEntry(
            source=self.source.id,
            key=entity_id,
            reason=reason,
            raw={"id": entity_id},
            time=now_iso(),
        )

    def _tombstone(self, report: SyncReport) -> None:
        """Delete the graph's entities that the full fetch did not yield, and record them."""
        query = (
            f"SELECT ?e WHERE {{ GRAPH {iri(ns.ENTITIES_GRAPH)} "
            f"{{ ?e {iri(ns.URBIS + 'dataset')} {iri(self.graph)} }} }}"
        )
        present = {row[0] for row in self.service.store.select(query) if row[0] is not None}
        gone = sorted(present - self.seen)
        if not gone:
            return
        for start in range(0, len(gone), self.source.batch_size):
            chunk = gone[start : start + self.source.batch_size]
            self.service.batch([(e, {}) for e in chunk], lambda _new, _old: None, graph=self.graph)
        now = now_iso()
        tombstones = self.state.get(self.source.id, "tombstones") or {}
        for entity_id in gone:
            tombstones[entity_id] = {"removedAt": now, "runId": report.run_id}
        self.state.put(self.source.id, "tombstones", tombstones)
        report.removed = len(gone)

    def _untombstone(self, ids: list[str]) -> None:
        tombstones = self.state.get(self.source.id, "tombstones")
        if tombstones and any(i in tombstones for i in ids):
            for entity_id in ids:
                tombstones.pop(entity_id, None)
            self.state.put(self.source.id, "tombstones", tombstones)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dataset_info(source: SourceDefinition) -> DatasetInfo:
    return DatasetInfo(
        graph=source.graph,
        title=source.title or source.id,
        source=source.endpoint,
        connector=source.kind,
        publisher=source.publisher,
        licence=source.licence,
        description=source.description,
    )


def sync_run(
    source: SourceDefinition, report: SyncReport, started: datetime, ended: datetime
) -> SyncRun:
    return SyncRun(
        run_id=report.run_id,
        graph=source.graph,
        connector=source.kind,
        source=source.endpoint,
        started=started,
        ended=ended,
        created=report.created,
        updated=report.updated,
        removed=report.removed,
        quarantined=report.quarantined,
        status=report.status,
    )


# -- every source of a deployment --------------------------------------------------------------


class SyncManager:
    """The deployment's sources: their definitions, syncs, reports, quarantine, schedule."""

    def __init__(
        self,
        twin: Twin,
        resolver: ContextResolver,
        contexts: ContextRegistry,
        *,
        data_dir: Path | None,
        sources_dir: Path | None = None,
        registry: ConnectorRegistry | None = None,
        area: tuple[float, float, float, float] | None = None,
    ) -> None:
        """Definitions in `sources_dir` (default <data_dir>/sources); state under
        <data_dir>/connectors; everything in memory when `data_dir` is None."""
        self.twin = twin
        self.resolver = resolver
        self.contexts = contexts
        self.registry = registry or default_registry()
        self.area = area
        if sources_dir is None and data_dir is not None:
            sources_dir = data_dir / "sources"
        self.catalog = SourceCatalog(sources_dir, check=self.registry.check)
        state_dir = data_dir / "connectors" if data_dir is not None else None
        self.quarantine = Quarantine(state_dir)
        self.state = SyncState(state_dir)
        self._running: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def context_terms(self, context: Any) -> Terms:
        """Terms of a context given as a hosted id ('urbis-smart-city'), URL, list or object."""
        if isinstance(context, str) and ":" not in context:
            try:
                context = self.contexts.get(context)["@context"]
            except (ResourceNotFound, NgsiLdError):
                raise BadRecord(f"no hosted @context {context!r}") from None
        return self.resolver.resolve(context)

    def harmonizer(self, source: SourceDefinition) -> Harmonizer:
        return Harmonizer(
            source,
            self.context_terms(source.context),
            context_terms=self.context_terms,
            now=now_iso(),
            area=self.area,
        )

    def sync(
        self,
        source_id: str,
        *,
        progress: Progress | None = None,
        sleep: Callable[[float], None] = time.sleep,
        bulk: bool = False,
    ) -> SyncReport:
        """Run one source now; SourceBusy if it is already running."""
        source = self.catalog.get(source_id)
        with self._lock:
            lock = self._running.setdefault(source.id, threading.Lock())
        if not lock.acquire(blocking=False):
            raise SourceBusy(f"source {source.id!r} is already syncing")
        try:
            service = self.twin.tenant(source.tenant, create=True)
            try:
                harmonizer = self.harmonizer(source)
            except (BadRecord, NgsiLdError) as exc:
                return self._failed(source, f"@context {source.context!r}: {exc}")
            runner = SyncRunner(
                source,
                service,
                harmonizer,
                registry=self.registry,
                quarantine=self.quarantine,
                state=self.state,
                progress=progress,
                sleep=sleep,
                bulk=bulk,
            )
            return runner.run()
        finally:
            lock.release()

    def _failed(self, source: SourceDefinition, error: str) -> SyncReport:
        now = _iso(datetime.now(UTC))
        report = SyncReport(
            source=source.id,
            run_id=f"{source.id}:failed",
            status="failed",
            started=now,
            ended=now,
            errors=[error],
        )
        self.state.put(source.id, "report", report.to_dict())
        return report

    def sync_many(
        self,
        source_ids: Sequence[str] | None = None,
        *,
        progress: Callable[[str], Progress | None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> list[SyncReport]:
        """Run several sources one after the other; a failing source never stops the next."""
        ids = list(source_ids) if source_ids is not None else [s.id for s in self.catalog.list()]
        reports = []
        for source_id in ids:
            try:
                reports.append(
                    self.sync(
                        source_id, progress=progress(source_id) if progress else None, sleep=sleep
                    )
                )
            except (ResourceNotFound, SourceBusy) as exc:
                now = _iso(datetime.now(UTC))
                reports.append(
                    SyncReport(
                        source=source_id,
                        run_id="",
                        status="failed",
                        started=now,
                        ended=now,
                        errors=[str(exc)],
                    )
                )
        return reports

    def last_report(self, source_id: str) -> SyncReport | None:
        data = self.state.get(source_id, "report")
        return SyncReport.from_dict(data) if data else None

    def tombstones(self, source_id: str) -> dict[str, Any]:
        return dict(self.state.get(source_id, "tombstones") or {})

    def running(self, source_id: str) -> bool:
        lock = self._running.get(source_id)
        return lock is not None and lock.locked()

    def due(self, now: datetime | None = None) -> list[str]:
        """Sources whose schedule says they should run now."""
        now = now or datetime.now(UTC)
        due = []
        for source in self.catalog.list():
            interval = source.interval()
            if interval is None or self.running(source.id):
                continue
            last = self.last_report(source.id)
            if last is None or not last.started:
                due.append(source.id)
                continue
            started = datetime.fromisoformat(last.started.replace("Z", "+00:00"))
            if (now - started).total_seconds() >= interval:
                due.append(source.id)
        return due
