"""Live sources: push connectors (MQTT devices, NGSI-LD notifications) kept flowing into the twin.

A pull source is synced now and then (connectors/sync.py); a live source (a `LiveConnector`
kind) runs as long as the server does. Per live source:

* `LiveRunner` runs `connector.run(sink, stop)` in a daemon thread and starts a fresh connector
  with exponential backoff whenever it raises or returns while the source is still live;
* `LiveSink` takes the connector's record batches: harmonised like a pull sync (the same
  `Harmonizer`), bad records quarantined with the reason, then ONE idempotent
  `EntityService.upsert_many` per batch into the source's own named graph, with the source and
  its session as the write context:
  - a full record (a `Feature`, or an `NgsiEntity` without `partial`) replaces the entity, as a
    pull sync's upsert does; an entity of another source's dataset is quarantined, not taken;
  - a partial record (`partial = True`, e.g. `mqtt.MeasureUpdate`) changes only its attributes
    (upsert with options=update); an unknown entity is created when the record has a type, else
    quarantined; measures of an entity another source owns (the IoT Agent pattern: devices
    provisioned against the city's inventory) update it in place, in that source's graph, and
    are counted as `foreign`;
* provenance: the dataset is described (DCAT) when the runner starts, and the whole session,
  from start to stop, is ONE `prov:Activity` whose cumulative counts and `endedAtTime` are
  rewritten at most every `provenance_seconds` while something changed, and at stop (status
  `live`, then `stopped`). One activity per session keeps the metadata graph bounded however
  long the server runs; connector restarts stay inside the session and are counted.

`LiveManager` owns the runners of a deployment: `urbis serve` starts every live source at
start-up and when one is added, stops it on delete and at shutdown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from urbis.connectors.base import BadRecord, LiveConnector, NgsiEntity, Record
from urbis.connectors.definition import SourceDefinition
from urbis.connectors.harmonize import ContextTerms, Harmonizer
from urbis.connectors.quarantine import Quarantine, QuarantineEntry, raw_record
from urbis.connectors.registry import UnknownKind, construct
from urbis.connectors.sync import SyncManager, dataset_info, iso
from urbis.twin.changes import WriteContext
from urbis.twin.entities import BatchItem, EntityService
from urbis.twin.errors import NgsiLdError
from urbis.twin.model import now_iso
from urbis.twin.provenance import SyncRun
from urbis.twin.terms import Terms
from urbis.twin.writes import UpsertMode

log = logging.getLogger("urbis.connectors.live")
Doc = dict[str, Any]

RESTART_MIN = 1.0  # seconds before the first restart of a connector that died
RESTART_MAX = 60.0  # longest wait between two restarts
HEALTHY_RUN = 60.0  # a connector that ran this long before dying restarts after RESTART_MIN
PROVENANCE_SECONDS = 60.0  # how often the session's prov:Activity is brought up to date
TICK_SECONDS = 0.5  # housekeeping period: quarantine flush, provenance, dead threads
STOP_TIMEOUT = 15.0  # how long a stop waits for the connector to let go
MAX_ERRORS = 10  # the last errors a live report keeps


def is_partial(record: Record) -> bool:
    """A record that carries only some attributes of its entity (options=update semantics)."""
    return isinstance(record, NgsiEntity) and bool(getattr(record, "partial", False))


@dataclass
class LiveReport:
    """The counters of one live session (server start or source added, until stop)."""

    source: str
    run_id: str
    kind: str = "live"  # tells a live report from a pull sync's report
    connector: str = ""
    status: str = "starting"  # starting, running, restarting, stopped, failed
    started: str = ""
    last_seen: str | None = None  # when the last batch of records arrived
    received: int = 0  # records the connector delivered
    written: int = 0  # entities written (created + updated)
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    foreign: int = 0  # updates of entities another source owns (part of `updated`)
    quarantined: int = 0  # records sent to the quarantine in this session
    restarts: int = 0
    connected: bool | None = None  # what the connector says, when it says (MQTT, NGSI-LD)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def error(self, message: str) -> None:
        self.errors = [*self.errors[-(MAX_ERRORS - 1) :], f"{now_iso()} {message}"]


# -- the sink: record batches -> the source's graph --------------------------------------------


class LiveSink:
    """Harmonises, quarantines and writes a live source's batches (thread-safe)."""

    def __init__(
        self,
        source: SourceDefinition,
        service: EntityService,
        terms: Terms,
        *,
        context_terms: ContextTerms,
        quarantine: Quarantine,
        report: LiveReport,
        area: tuple[float, float, float, float] | None = None,
    ) -> None:
        self.source = source
        self.service = service
        self.terms = terms
        self.context_terms = context_terms
        self.store = quarantine
        self.report = report
        self.area = area
        self.graph = source.graph
        self.context = WriteContext.of_source(source.id, report.run_id)
        self.lock = threading.Lock()  # counters and pending quarantine entries
        self._pending: dict[str | None, QuarantineEntry] = {}

    # -- quarantine ----------------------------------------------------------------------

    def quarantine(self, raw: Mapping[str, Any] | Any, reason: str) -> None:
        """Called by connectors for what they could not read (an unknown device...)."""
        data = raw_record(dict(raw) if isinstance(raw, Mapping) else raw)
        key = _quarantine_key(data)
        with self.lock:
            self.report.quarantined += 1
            self._pending[key] = QuarantineEntry(
                source=self.source.id,
                key=key,
                reason=reason,
                raw=data,
                time=now_iso(),
                run_id=self.report.run_id,
            )

    def _bad(self, record: Record, reason: str) -> None:
        self.quarantine(raw_record(record), reason)

    def flush_quarantine(self) -> int:
        """Write pending entries to the framework's quarantine, merged by key (one per
        topic or entity: the latest reason wins). Batched because each write rewrites the
        source's quarantine file, and a flood of bad messages must not do that per message."""
        with self.lock:
            entries = list(self._pending.values())
            self._pending.clear()
        if entries:
            self.store.replace(self.source.id, entries, merge=True)
        return len(entries)

    # -- batches -------------------------------------------------------------------------

    def __call__(self, records: Sequence[Record]) -> None:
        now = now_iso()
        with self.lock:
            self.report.received += len(records)
            self.report.last_seen = now
        harmonizer = Harmonizer(  # per batch: documents are stamped with this batch's time
            self.source, self.terms, context_terms=self.context_terms, now=now, area=self.area
        )
        records = self._typed(coalesce(records))
        items: list[BatchItem] = []
        partial: dict[int, bool] = {}  # id(doc) -> the record was partial
        for record in records:
            harmonized = harmonizer.attempt(record)
            if isinstance(harmonized, str):
                self._bad(record, harmonized)
                continue
            doc = harmonized.doc
            partial[id(doc)] = is_partial(record)
            items.append((doc["id"], doc))
        if items:
            self._write(items, partial)
        self.flush_quarantine()

    def _typed(self, records: Sequence[Record]) -> list[Record]:
        """Partial records without a type take their entity's; an unknown one is quarantined."""
        untyped = [
            r.entity.get("id") for r in records if isinstance(r, NgsiEntity) and _untyped_partial(r)
        ]
        if not untyped:
            return list(records)
        known = self.service.get_many([i for i in untyped if isinstance(i, str)])
        out: list[Record] = []
        for record in records:
            if isinstance(record, NgsiEntity) and _untyped_partial(record):
                entity_id = record.entity.get("id")
                found = known.get(entity_id) if isinstance(entity_id, str) else None
                if found is None:
                    self._bad(
                        record,
                        f"unknown entity {entity_id!r}: an update without a type cannot create "
                        "it (provision the entity, or send its type)",
                    )
                    continue
                entity = {**record.entity, "type": list(found[0]["type"])}
                record = type(record)(entity, record.context)
            out.append(record)
        return out

    def _write(self, items: list[BatchItem], partial: dict[int, bool]) -> None:
        """One transaction: partial records update (options=update), full ones replace within
        the source's graph; what did not change is not written."""

        def mode(doc: Doc) -> UpsertMode:
            return "update" if partial[id(doc)] else "replace"

        result = self.service.upsert_many(
            items,
            context=self.context,
            mode=mode,
            graph=self.graph,
            idempotent=True,
            own_graph=True,
        )
        for entity_id, error in result.errors:
            self.quarantine({"id": entity_id}, error.detail)
        with self.lock:
            report = self.report
            report.created += len(result.created)
            report.updated += len(result.updated)
            report.unchanged += len(result.unchanged)
            report.foreign += len(result.foreign)
            report.written = report.created + report.updated


def coalesce(records: Sequence[Record]) -> list[Record]:
    """Partial records of one entity within a batch merged into one, later values winning.

    The twin keeps current values and a batch writes each entity once anyway, so this gives
    the same state for a fraction of the harmonisation work when devices report often. Only
    single-instance attributes (no datasetId) are merged, and never across a full record of
    the same entity, so the order of effects is kept.
    """
    out: list[Record] = []
    at: dict[str, int] = {}  # entity id -> position of its open partial record in `out`
    for record in records:
        entity_id = record.entity.get("id") if isinstance(record, NgsiEntity) else None
        if not isinstance(entity_id, str):
            out.append(record)
            continue
        assert isinstance(record, NgsiEntity)
        if not (is_partial(record) and _mergeable(record.entity)):
            at.pop(entity_id, None)
            out.append(record)
            continue
        index = at.get(entity_id)
        if index is not None:
            earlier = out[index]
            assert isinstance(earlier, NgsiEntity)
            same = earlier.context == record.context and earlier.entity.get(
                "type"
            ) == record.entity.get("type")
            if same:
                out[index] = type(earlier)({**earlier.entity, **record.entity}, record.context)
                continue
        at[entity_id] = len(out)
        out.append(record)
    return out


def _mergeable(entity: Mapping[str, Any]) -> bool:
    return all(
        isinstance(v, Mapping) and "datasetId" not in v
        for k, v in entity.items()
        if k not in ("id", "type", "@context")
    )


def _untyped_partial(record: NgsiEntity) -> bool:
    return is_partial(record) and "type" not in record.entity


def _quarantine_key(raw: Any) -> str | None:
    """An entity's id, a message's topic, else a digest: entries merge by key."""
    if isinstance(raw, Mapping):
        for name in ("id", "topic"):
            value = raw.get(name)
            if isinstance(value, str) and value:
                return value
    text = json.dumps(raw, sort_keys=True, default=str)
    return "sha1:" + hashlib.sha1(text.encode()).hexdigest()[:16]


# -- the runner: one live source's connector, kept alive --------------------------------------


class LiveRunner:
    """Runs one live source's connector in a daemon thread and restarts it when it dies."""

    def __init__(
        self,
        source: SourceDefinition,
        sink: LiveSink,
        create: Callable[[], LiveConnector],
        *,
        restart_min: float = RESTART_MIN,
        restart_max: float = RESTART_MAX,
        provenance_seconds: float = PROVENANCE_SECONDS,
        on_report: Callable[[LiveReport], None] | None = None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.report = sink.report
        self.create = create
        self.restart_min = restart_min
        self.restart_max = restart_max
        self.provenance_seconds = provenance_seconds
        self.on_report = on_report
        self.connector: LiveConnector | None = None
        self.started = datetime.now(UTC)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._recorded: tuple[Any, ...] | None = None
        self._last_run: SyncRun | None = None
        self._next_provenance = 0.0
        self._tick_lock = threading.Lock()

    def start(self) -> None:
        self.report.started = iso(self.started)
        try:
            self.sink.service.describe_dataset(dataset_info(self.source), self.started)
        except Exception as exc:  # provenance must never keep a source from running
            log.exception("live %s: dataset not described", self.source.id)
            self.report.error(f"provenance: dataset not described: {exc}")
        self._spawn()
        self._next_provenance = time.monotonic() + self.provenance_seconds

    def _spawn(self) -> None:
        self._thread = threading.Thread(
            target=self._loop, name=f"urbis-live-{self.source.id}", daemon=True
        )
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            error: str
            try:
                connector = self.create()
                self.connector = connector
                try:
                    self.report.status = "running"
                    connector.run(self.sink, self._stop)
                finally:
                    connector.close()
                if self._stop.is_set():
                    break
                error = "the connector returned while the source is live"
            except Exception as exc:
                if self._stop.is_set():
                    break
                log.exception("live %s: the connector died", self.source.id)
                error = f"the connector died: {type(exc).__name__}: {exc}"
            self._restart_wait(error, time.monotonic() - began)
        self.report.status = "stopped"

    def _restart_wait(self, error: str, ran: float) -> None:
        if ran >= HEALTHY_RUN:
            self._failures = 0
        delay = min(self.restart_max, self.restart_min * 2**self._failures)
        self._failures += 1
        with self.sink.lock:
            self.report.restarts += 1
            self.report.status = "restarting"
            self.report.error(f"{error}; restart in {delay:.1f} s")
        log.warning("live %s: %s; restart in %.1f s", self.source.id, error, delay)
        self._stop.wait(delay)

    def tick(self) -> None:
        """Housekeeping (the manager's ticker): quarantine, connection state, provenance,
        and a thread that died outside the connector (restarted like a crashed connector)."""
        with self._tick_lock:
            if self._stop.is_set():
                return
            self.sink.flush_quarantine()
            self.report.connected = _connected(self.connector)
            if not self.alive():
                with self.sink.lock:
                    self.report.restarts += 1
                    self.report.error("the runner thread ended; started again")
                self._spawn()
            if time.monotonic() >= self._next_provenance:
                self._next_provenance = time.monotonic() + self.provenance_seconds
                self.record("live")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the connector, then flush the quarantine and close the provenance activity."""
        self._stop.set()
        with self._tick_lock:
            if self._thread is not None:
                self._thread.join(timeout)
                if self._thread.is_alive():
                    log.warning("live %s: the connector did not stop in time", self.source.id)
            self.sink.flush_quarantine()
            self.report.status = "stopped"
            self.report.connected = None
            self.record("stopped")

    def record(self, status: str) -> None:
        """Bring the session's prov:Activity up to date (nothing when nothing changed)."""
        with self.sink.lock:
            r = self.report
            counts = (r.created, r.updated, r.quarantined, status)
        if counts == self._recorded:
            if self.on_report is not None:
                self.on_report(self.report)
            return
        run = SyncRun(
            run_id=self.report.run_id,
            graph=self.source.graph,
            connector=self.source.kind,
            source=self.source.endpoint,
            started=self.started,
            ended=datetime.now(UTC),
            created=counts[0],
            updated=counts[1],
            removed=0,
            quarantined=counts[2],
            status=status,
        )
        try:
            # The activity's previous counts and end time go in the same transaction.
            self.sink.service.record_run(run, replacing=self._last_run)
            self._last_run = run
            self._recorded = counts
        except Exception as exc:
            log.exception("live %s: provenance not recorded", self.source.id)
            self.report.error(f"provenance not recorded: {exc}")
        if self.on_report is not None:
            self.on_report(self.report)


def _connected(connector: LiveConnector | None) -> bool | None:
    """The connector's own connection flag: MQTT `connected`, NGSI-LD `ready` (Events)."""
    for name in ("connected", "ready"):
        flag = getattr(connector, name, None)
        if isinstance(flag, threading.Event):
            return flag.is_set()
    return None


# -- the manager: every live source of a deployment -------------------------------------------


class LiveManager:
    """Starts, stops and reports the live sources of a `SyncManager`'s catalogue."""

    def __init__(
        self,
        sources: SyncManager,
        *,
        restart_min: float = RESTART_MIN,
        restart_max: float = RESTART_MAX,
        provenance_seconds: float = PROVENANCE_SECONDS,
        tick_seconds: float = TICK_SECONDS,
    ) -> None:
        self.sources = sources
        self.restart_min = restart_min
        self.restart_max = restart_max
        self.provenance_seconds = provenance_seconds
        self.tick_seconds = tick_seconds
        self._runners: dict[str, LiveRunner] = {}
        self._failed: dict[str, LiveReport] = {}  # sources that could not start, and why
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._ticker: threading.Thread | None = None

    def is_live(self, source: SourceDefinition) -> bool:
        return self.sources.is_live(source)

    def start_all(self) -> list[str]:
        """Start every live source of the catalogue (server start-up); their ids."""
        started = []
        for source in self.sources.catalog.list():
            if self.is_live(source):
                self.start(source)
                started.append(source.id)
        return started

    def start(self, source: SourceDefinition) -> LiveReport:
        """Start (or restart, with this definition) one live source; its report."""
        with self._lock:
            self.stop(source.id)
            report = LiveReport(
                source=source.id,
                run_id=f"{source.id}:live:{datetime.now(UTC):%Y%m%dT%H%M%S}Z:{uuid.uuid4().hex[:8]}",
                connector=source.kind,
                started=now_iso(),
            )
            try:
                runner = self._runner(source, report)
            except _CannotStart as exc:
                report.status = "failed"
                report.error(str(exc))
                log.error("live source %s cannot start: %s", source.id, exc)
                self._failed[source.id] = report
                self._save(report)
                return report
            self._runners[source.id] = runner
            runner.start()
            self._ensure_ticker()
            log.info("live source %s (%s) started", source.id, source.kind)
            return report

    def _runner(self, source: SourceDefinition, report: LiveReport) -> LiveRunner:
        try:
            cls = self.sources.registry.get(source.kind)
        except UnknownKind as exc:
            raise _CannotStart(str(exc)) from None
        if not issubclass(cls, LiveConnector):
            raise _CannotStart(f"kind {source.kind!r} is not live: sync it instead")
        secret = None
        if source.credentials:
            secret = os.environ.get(source.credentials)
            if secret is None:
                raise _CannotStart(
                    f"environment variable {source.credentials} (credentials) is not set"
                )
        try:
            terms = self.sources.context_terms(source.context)
        except (BadRecord, NgsiLdError) as exc:
            raise _CannotStart(f"@context {source.context!r}: {exc}") from None
        sink = LiveSink(
            source,
            self.sources.twin.tenant(source.tenant, create=True),
            terms,
            context_terms=self.sources.context_terms,
            quarantine=self.sources.quarantine,
            report=report,
            area=self.sources.area,
        )

        def create() -> LiveConnector:
            connector = construct(cls, source, secret, self.sources.guard)
            assert isinstance(connector, LiveConnector)
            return connector

        return LiveRunner(
            source,
            sink,
            create,
            restart_min=self.restart_min,
            restart_max=self.restart_max,
            provenance_seconds=self.provenance_seconds,
            on_report=self._save,
        )

    def stop(self, source_id: str) -> bool:
        """Stop one live source (delete, replace, shutdown); False when it was not running."""
        with self._lock:
            self._failed.pop(source_id, None)
            runner = self._runners.pop(source_id, None)
        if runner is None:
            return False
        runner.stop()
        log.info("live source %s stopped", source_id)
        return True

    def close(self) -> None:
        """Stop every live source and the ticker (server shutdown)."""
        self._closing.set()
        for source_id in list(self._runners):
            self.stop(source_id)
        if self._ticker is not None:
            self._ticker.join(timeout=5)

    def running(self, source_id: str) -> bool:
        return source_id in self._runners

    def runner(self, source_id: str) -> LiveRunner | None:
        return self._runners.get(source_id)

    def report(self, source_id: str) -> LiveReport | None:
        """The session's report; after a stop, the last one saved (state `live`)."""
        runner = self._runners.get(source_id)
        if runner is not None:
            runner.report.connected = _connected(runner.connector)
            return runner.report
        if source_id in self._failed:
            return self._failed[source_id]
        data = self.sources.state.get(source_id, "live")
        if not data:
            return None
        known = {k: v for k, v in data.items() if k in LiveReport.__dataclass_fields__}
        return LiveReport(**known)

    def _save(self, report: LiveReport) -> None:
        self.sources.state.put(report.source, "live", report.to_dict())

    def _ensure_ticker(self) -> None:
        if self._ticker is not None and self._ticker.is_alive():
            return
        self._closing.clear()
        self._ticker = threading.Thread(target=self._tick, name="urbis-live-ticker", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._closing.wait(self.tick_seconds):
            for runner in list(self._runners.values()):
                try:
                    runner.tick()
                except Exception:  # housekeeping must never stop the others'
                    log.exception("live %s: housekeeping failed", runner.source.id)


class _CannotStart(Exception):
    """A live source whose definition cannot run (kind, credentials, @context)."""
