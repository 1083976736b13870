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

import gc
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from urbis.connectors.base import BadRecord, Cursor, LiveConnector, Record, SourceUnavailable
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.errors import ConnectorError
from urbis.connectors.harmonize import Harmonizer
from urbis.connectors.quarantine import Quarantine, QuarantineEntry, raw_record, record_key
from urbis.connectors.registry import ConnectorRegistry, UnknownKind, default_registry
from urbis.connectors.sources import SourceCatalog
from urbis.twin.changes import WriteContext
from urbis.twin.context import ContextResolver, ContextStore
from urbis.twin.core import Twin
from urbis.twin.entities import EntityService
from urbis.twin.errors import ERROR_BASE, NgsiLdError, ResourceNotFound
from urbis.twin.model import now_iso
from urbis.twin.outbound import OutboundGuard
from urbis.twin.provenance import DatasetInfo, SyncRun
from urbis.twin.state import StateStore, memory_state_store, open_state_store
from urbis.twin.terms import Terms

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


class SourceBusy(ConnectorError, RuntimeError):
    """A sync of this source is already running."""

    type_base = ERROR_BASE
    error_type, status, title = "Conflict", 409, "Sync already running"


class LiveSource(SourceBusy):
    """A live source (a LiveConnector kind) is run by the server continuously, never synced."""

    error_type, status, title = "OperationNotSupported", 422, "Operation not supported"


# -- per-source state: cursor, journal, last report, tombstones -------------------------------


SYNC_STATE = "connector-state"  # the state store's collection: key "<source>/<name>"


def sync_state_key(source: str, name: str) -> str:
    return f"{source}/{name}"


class SyncState:
    """What the framework keeps per source between runs (cursor, journal, report, tombstones,
    live report): JSON objects in the state store, each written in one transaction."""

    def __init__(self, state: StateStore | None = None) -> None:
        self.state = state if state is not None else memory_state_store()

    def get(self, source: str, name: str) -> Any:
        return self.state.get(SYNC_STATE, "", sync_state_key(source, name))

    def put(self, source: str, name: str, value: dict[str, Any] | None) -> None:
        key = sync_state_key(source, name)
        if value is None:
            self.state.delete(SYNC_STATE, "", key)
            return
        # As the files were written: what JSON cannot say (a datetime) is kept as its text.
        self.state.put(SYNC_STATE, "", key, json.loads(json.dumps(value, default=str)))


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
        guard: OutboundGuard | None = None,
    ) -> None:
        self.source = source
        self.guard = guard
        self.service = service
        self.harmonizer = harmonizer
        self.registry = registry
        self.quarantine = quarantine
        self.state = state
        self.progress = progress
        self.sleep = sleep
        self.bulk = bulk
        self.graph = source.graph
        self.context = WriteContext.of_source(source.id, None)  # the run id once it starts
        self.seen: set[str] = set()
        self.entries: dict[tuple[str | None, str], QuarantineEntry] = {}
        self.handled = 0

    def run(self) -> SyncReport:
        source = self.source
        started = datetime.now(UTC)
        run_id = f"{source.id}:{started:%Y%m%dT%H%M%S}Z:{uuid.uuid4().hex[:8]}"
        report = SyncReport(source=source.id, run_id=run_id, started=iso(started))
        self.context = WriteContext.of_source(source.id, run_id)
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
            self.service.describe_dataset(dataset_info(source), started)
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
        report.ended = iso(ended)
        report.duration = round(time.monotonic() - clock, 3)
        try:
            self.service.record_run(sync_run(source, report, started, ended))
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
            connector = self.registry.create(self.source, secret, self.guard)
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
        """Records -> the twin, one transaction per batch."""
        iterator = iter(records)
        while self._next_batch(iterator, report):
            pass

    def _next_batch(self, records: Iterator[Record], report: SyncReport) -> bool:
        """Fetch, harmonise and write one batch; False when the records are exhausted.

        The cyclic garbage collector is paused for the batch only: the batch's objects are
        gone when it runs again, so it never scans them, and a long sync never keeps it off.
        """
        with _paused_gc():
            batch = list(islice(records, self.source.batch_size))
            if not batch:
                return False
            created = self._upsert(self._harmonize(batch, report), report)
            self._book(len(batch), created)
            del batch
        return True

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

    def _harmonize(self, records: Sequence[Record], report: SyncReport) -> dict[str, Doc]:
        """Canonical documents by entity id; bad and duplicate records go to the quarantine."""
        docs: dict[str, Doc] = {}
        for record in records:
            harmonized = self.harmonizer.attempt(record)
            if isinstance(harmonized, str):
                self._bad(record, harmonized)
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
        return docs

    def _upsert(self, docs: dict[str, Doc], report: SyncReport) -> list[str]:
        """Write what changed in one transaction; the ids created.

        An idempotent replace into the source's own graph: an unchanged entity is not written
        (recognised by its stored text, the common case of a re-sync, without decoding it), an
        entity of another dataset is quarantined rather than taken over.
        """
        result = self.service.upsert_many(
            docs.items(),
            context=self.context,
            mode="replace",
            graph=self.graph,
            idempotent=True,
            own_graph=True,
            bulk=self.bulk,
        )
        refused = set()
        for entity_id, error in result.errors:
            assert entity_id is not None
            refused.add(entity_id)
            self._bad_doc(docs[entity_id], error.detail)
        self.seen.update(e for e in docs if e not in refused)
        report.created += len(result.created)
        report.updated += len(result.updated)
        report.unchanged += len(result.unchanged)
        return result.created

    def _book(self, records: int, created: list[str]) -> None:
        """After a batch's transaction: tombstones, journal, progress."""
        if created:
            self._untombstone(created)
        self.handled += records
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
        gone = sorted(self.service.entity_ids_in(self.graph) - self.seen)
        if not gone:
            return
        for start in range(0, len(gone), self.source.batch_size):
            chunk = gone[start : start + self.source.batch_size]
            self.service.delete_many([(e, {"id": e}) for e in chunk], context=self.context)
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


class _GcPause:
    """Pauses the cyclic garbage collector during a sync's batch (reference counting goes on).

    A batch keeps thousands of fresh dicts alive, which the collector promotes and scans again
    and again: on the 29,969 street lights, collections cost 30 % of the sync's CPU time,
    while a whole run leaves only a few thousand objects in reference cycles. Counted, so
    overlapping batches of several syncs re-enable it when the last one ends, and never when
    something else had disabled it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._reenable = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._reenable = gc.isenabled()
                gc.disable()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0 and self._reenable:
                    gc.enable()


_paused_gc = _GcPause()


def iso(moment: datetime) -> str:
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
        contexts: ContextStore,
        *,
        data_dir: Path | None,
        sources_dir: Path | None = None,
        registry: ConnectorRegistry | None = None,
        area: tuple[float, float, float, float] | None = None,
        guard: OutboundGuard | None = None,
        state: StateStore | None = None,
    ) -> None:
        """Definitions, sync state and quarantine in `state` (default: the store of
        `data_dir`, in memory when it is None); definitions in the TOML files of
        `sources_dir` instead when it is given. `guard`: where connectors may connect
        (default: public addresses only)."""
        self.twin = twin
        self.guard = guard or OutboundGuard()
        self.resolver = resolver
        self.contexts = contexts
        self.registry = registry or default_registry()
        self.area = area
        store = state if state is not None else open_state_store(data_dir)
        self.catalog = SourceCatalog(
            store,
            directory=sources_dir,
            check=self.registry.check,
            legacy_dir=data_dir / "sources" if data_dir is not None else None,
        )
        self.quarantine = Quarantine(store)
        self.state = SyncState(store)
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
        if self.is_live(source):
            raise LiveSource(
                f"source {source.id!r} is live ({source.kind}): `urbis serve` runs it "
                f"continuously; its counters are in GET /sources/{source.id}/report"
            )
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
                guard=self.guard,
            )
            return runner.run()
        finally:
            lock.release()

    def _failed(self, source: SourceDefinition, error: str) -> SyncReport:
        now = iso(datetime.now(UTC))
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
                now = iso(datetime.now(UTC))
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

    def is_live(self, source: SourceDefinition) -> bool:
        """Whether the source's kind pushes (connectors/live.py runs it; a sync cannot)."""
        try:
            return issubclass(self.registry.get(source.kind), LiveConnector)
        except UnknownKind:
            return False

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
            if interval is None or self.running(source.id) or self.is_live(source):
                continue
            last = self.last_report(source.id)
            if last is None or not last.started:
                due.append(source.id)
                continue
            started = datetime.fromisoformat(last.started.replace("Z", "+00:00"))
            if (now - started).total_seconds() >= interval:
                due.append(source.id)
        return due
