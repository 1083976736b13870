"""Entity operations on one tenant: every write mode of the twin, over the store contract.

`EntityService` owns every write: the NGSI-LD operations of the HTTP API, the connectors'
upserts, the demo's updates, the provenance records and checked SPARQL Updates. Each entity
write takes a `WriteContext` (who, which source and run, why) and, once committed, tells the
twin's listeners one `ChangeEvent` per entity changed (twin/changes.py); the semantics of each
mode are in twin/writes.py.

Every operation validates first and writes once: a batch's successful entities land in one
store transaction, and a failed entity leaves nothing behind. Writes of a tenant are serialised
by a lock so that read-modify-write operations (PATCH, append) never lose an update.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import shapely
from pyoxigraph import Quad

from urbis.ontology import ns
from urbis.twin import provenance, writes
from urbis.twin.changes import ChangeEvent, ChangeListeners, WriteContext
from urbis.twin.errors import AlreadyExists, NgsiLdError, ResourceNotFound, TooComplexQuery
from urbis.twin.geo import GeoQuery, SpatialIndex
from urbis.twin.model import now_iso
from urbis.twin.provenance import DatasetInfo, SyncRun
from urbis.twin.query.matcher import EntityMatcher
from urbis.twin.query.plan import EntityQuery, plan
from urbis.twin.query.sparql import iri
from urbis.twin.query.typeexpr import type_names
from urbis.twin.rdf import entity_quads, geometry_owner, load_document
from urbis.twin.store.base import (
    DEFAULT_TENANT,
    CustomFunction,
    SparqlResult,
    TenantStore,
)
from urbis.twin.writes import KEEP, Current, Operation, UpdateResult, UpsertMode, attribute_items

log = logging.getLogger("urbis")
Doc = dict[str, Any]
# A batch item: the entity's id and its parsed document, or the error found reading it.
BatchItem = tuple[str | None, Doc | NgsiLdError]
Change = tuple[Doc | None, Doc | None, str]  # old document, new document, dataset graph
T = TypeVar("T")

__all__ = ["BatchItem", "BatchResult", "EntityService", "QueryResult", "UpdateResult"]


@dataclass
class QueryResult:
    documents: list[Doc]
    total: int | None = None


@dataclass
class BatchResult:
    """Per-entity outcome of a batch (BatchOperationResult, clause 5.2.16), and what the
    successful entities were: created, written in another dataset, left unchanged."""

    success: list[str] = field(default_factory=list)
    errors: list[tuple[str | None, NgsiLdError]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # did not exist before the batch
    updated: list[str] = field(default_factory=list)  # existed, and were written
    unchanged: list[str] = field(default_factory=list)  # already as asked: not written
    foreign: list[str] = field(default_factory=list)  # of `updated`: in another dataset


class EntityService:
    """NGSI-LD entity semantics over one tenant's store, its spatial index and its lock.

    `listeners` are the twin's (shared by every tenant); a service built alone has its own.
    """

    def __init__(
        self,
        store: TenantStore,
        *,
        tenant: str = DEFAULT_TENANT,
        max_scan: int = 200_000,
        listeners: ChangeListeners | None = None,
    ) -> None:
        self.store = store
        self.tenant = tenant
        self.lock = threading.RLock()
        self.max_scan = max_scan
        self.listeners = listeners if listeners is not None else ChangeListeners()
        self.index = self._build_index()

    # -- reads ------------------------------------------------------------------------------

    def get(self, entity_id: str) -> Doc:
        found = self.store.documents([entity_id])
        if entity_id not in found:
            raise ResourceNotFound(f"entity {entity_id!r} not found")
        return load_document(found[entity_id][0])

    def get_many(self, ids: Sequence[str]) -> dict[str, tuple[Doc, str]]:
        return {k: (load_document(t), g) for k, (t, g) in self.store.documents(ids).items()}

    def query(self, query: EntityQuery) -> QueryResult:
        hits = self._geo_hits(query.geo) if query.geo is not None else None
        if hits is not None and not hits:
            return QueryResult([], 0 if query.count else None)
        if hits is not None and _only_types(query):
            return self._geo_by_type(query, hits)
        sparql = plan(query, hits)
        if sparql.exact:
            total = self.store.count(sparql.count()) if query.count else None
            if query.limit == 0:
                return QueryResult([], total)
            ids = [row[0] for row in self.store.select(sparql.page(query.limit, query.offset))]
            docs = self.get_many([i for i in ids if i is not None])
            return QueryResult([docs[i][0] for i in ids if i in docs], total)
        # Inexact: the store narrows the candidates, the matcher decides. The geo hits came
        # from the spatial index, which tests with the matcher's own function: not redone.
        matcher = EntityMatcher.for_query(query, geo=False)
        scan = sparql.page(self.max_scan + 1, 0)
        candidates = [row[0] for row in self.store.select(scan) if row[0] is not None]
        if len(candidates) > self.max_scan:
            raise TooComplexQuery(
                f"this q needs a scan of more than {self.max_scan} entities; narrow it with "
                "a type, ids or a simpler q"
            )
        matched: list[Doc] = []
        for start in range(0, len(candidates), 500):
            batch = self.get_many(candidates[start : start + 500])
            for entity_id in candidates[start : start + 500]:
                if entity_id in batch and matcher.matches(batch[entity_id][0]):
                    matched.append(batch[entity_id][0])
        total = len(matched) if query.count else None
        return QueryResult(matched[query.offset : query.offset + query.limit], total)

    def _geo_by_type(self, query: EntityQuery, hits: set[str]) -> QueryResult:
        """geoQ and types only: check each hit's type by key (measured: joining a VALUES
        block of 4k geo hits with the type in SPARQL cost 443 ms)."""
        if query.types is not None:
            hits = self.store.having_type(hits, type_names(query.types) or [])
        ordered = sorted(hits)
        total = len(ordered) if query.count else None
        page = ordered[query.offset : query.offset + query.limit]
        docs = self.get_many(page)
        return QueryResult([docs[i][0] for i in page if i in docs], total)

    def _geo_hits(self, query: GeoQuery) -> set[str]:
        """Entities whose `geoproperty` matches, from the spatial index (never a scan)."""
        hits: set[str] = set()
        for key in self.index.query(query):
            if isinstance(key, tuple) and key[1] == query.geoproperty:
                hits.add(key[0])
        return hits

    def _build_index(self) -> SpatialIndex:
        """One scan of `geo:asWKT`: geometry node IRIs name their entity and attribute."""
        index = SpatialIndex()
        keys: list[tuple[str, str, str]] = []
        texts: list[str] = []
        for node, wkt in self.store.select(
            f"SELECT ?g ?w WHERE {{ ?g {iri(ns.GEO + 'asWKT')} ?w }}"
        ):
            owner = geometry_owner(node) if node is not None else None
            if owner is None or wkt is None:
                continue
            keys.append(geo_key(*owner))
            texts.append(wkt.split(">", 1)[1].strip() if wkt.startswith("<") else wkt)
        for key, geom in zip(keys, shapely.from_wkt(texts), strict=True):
            index.add(key, geom)
        return index

    def entity_ids_in(self, graph: str) -> set[str]:
        """The ids of the entities of one dataset (a source's graph)."""
        query = (
            f"SELECT ?e WHERE {{ GRAPH {iri(ns.ENTITIES_GRAPH)} "
            f"{{ ?e {iri(ns.URBIS + 'dataset')} {iri(graph)} }} }}"
        )
        return {row[0] for row in self.store.select(query) if row[0] is not None}

    # -- reads of the RDF itself: SPARQL, dumps, discovery's aggregates -----------------------
    # The callers (api/routes/sparql.py, datasets.py, ngsild/discovery.py) narrow the graphs to
    # what the access port lets the caller see before they ask.

    def select(self, query: str) -> Iterator[Sequence[str | None]]:
        """Rows of a SELECT the twin's own code wrote (aggregates, id lists)."""
        return self.store.select(query)

    def sparql(
        self,
        query: str,
        *,
        default_graphs: Sequence[str] | None = None,
        named_graphs: Sequence[str] | None = None,
        custom_functions: Mapping[str, CustomFunction] | None = None,
        timeout: float | None = None,
        max_rows: int | None = None,
    ) -> SparqlResult:
        """A researcher's SPARQL query over the given dataset (the store's guards apply)."""
        return self.store.sparql(
            query,
            default_graphs=default_graphs,
            named_graphs=named_graphs,
            custom_functions=custom_functions,
            timeout=timeout,
            max_rows=max_rows,
        )

    def graphs(self) -> list[str]:
        """The tenant's named graphs."""
        return self.store.graphs()

    def dump(self, graph: str | None = None) -> Iterator[Quad]:
        """The quads of one graph, or of every named graph."""
        return self.store.dump(graph)

    def prestart_queries(self) -> None:
        """Start the store's on-disk SPARQL query workers now, so the first /sparql finds one."""
        pool = getattr(self.store, "disk_pool", None)
        if pool is not None:
            pool.prestart()

    # -- writes: one entity -------------------------------------------------------------------

    def create(self, doc: Doc, *, context: WriteContext, graph: str = ns.DEFAULT_DATASET) -> None:
        """POST /entities."""
        with self.lock:
            if self.store.documents([doc["id"]]):
                raise AlreadyExists(f"entity {doc['id']!r} already exists")
            self._commit([(None, doc, graph)], context)

    def replace(self, entity_id: str, doc: Doc, *, context: WriteContext) -> None:
        """PUT /entities/{id}: new content, same identity and createdAt."""
        with self.lock:
            old, graph = self._existing(entity_id)
            doc["createdAt"] = old.get("createdAt", doc["createdAt"])
            self._commit([(old, doc, graph)], context)

    def update_attributes(
        self, entity_id: str, attrs: Doc, *, context: WriteContext, now: str | None = None
    ) -> UpdateResult:
        """PATCH /entities/{id}/attrs: only the attributes (and datasetIds) that exist."""
        stamp = now or now_iso()
        return self._modify(
            entity_id, lambda doc: writes.update_attributes(doc, attrs, now=stamp), context
        )

    def append_attributes(
        self,
        entity_id: str,
        attrs: Doc,
        *,
        context: WriteContext,
        overwrite: bool = True,
        now: str | None = None,
    ) -> UpdateResult:
        """POST /entities/{id}/attrs; `overwrite` False is options=noOverwrite."""
        stamp = now or now_iso()
        return self._modify(
            entity_id,
            lambda doc: writes.append_attributes(doc, attrs, overwrite=overwrite, now=stamp),
            context,
        )

    def update_attribute(
        self,
        entity_id: str,
        name: str,
        patch: list[Doc],
        *,
        context: WriteContext,
        now: str | None = None,
    ) -> None:
        """PATCH /entities/{id}/attrs/{attr}: members merged into the existing instance."""
        stamp = now or now_iso()
        self._modify(
            entity_id, lambda doc: writes.partial_update(doc, name, patch, now=stamp), context
        )

    def replace_attribute(
        self,
        entity_id: str,
        name: str,
        instances: list[Doc],
        *,
        context: WriteContext,
        label: str | None = None,
        now: str | None = None,
    ) -> None:
        """PUT /entities/{id}/attrs/{attr}; `label`: the name as the client wrote it."""
        stamp = now or now_iso()
        self._modify(
            entity_id,
            lambda doc: writes.replace_attribute(
                doc, name, instances, label=label or name, now=stamp
            ),
            context,
        )

    def delete_attribute(
        self,
        entity_id: str,
        name: str,
        *,
        context: WriteContext,
        dataset_id: str | None = None,
        delete_all: bool = False,
        now: str | None = None,
    ) -> None:
        """DELETE /entities/{id}/attrs/{attr} (one instance by datasetId, or all of them)."""
        stamp = now or now_iso()
        self._modify(
            entity_id,
            lambda doc: writes.delete_attribute(
                doc, name, dataset_id=dataset_id, delete_all=delete_all, now=stamp
            ),
            context,
        )

    def merge(
        self, entity_id: str, patch: Doc, *, context: WriteContext, now: str | None = None
    ) -> None:
        """PATCH /entities/{id}: merge-patch (clause 5.6.17)."""
        stamp = now or now_iso()
        self._modify(entity_id, lambda doc: writes.merge_entity(doc, patch, now=stamp), context)

    def delete(self, entity_id: str, *, context: WriteContext) -> None:
        """DELETE /entities/{id}."""
        with self.lock:
            old, graph = self._existing(entity_id)
            self._commit([(old, None, graph)], context)

    def _modify(self, entity_id: str, change: Callable[[Doc], T], context: WriteContext) -> T:
        """Read, change a copy, write back what changed; `change` returns the mode's result."""
        with self.lock:
            old, graph = self._existing(entity_id)
            new = writes.copy_document(old)
            result = change(new)
            if new != old:
                self._commit([(old, new, graph)], context)
            return result

    def _existing(self, entity_id: str) -> tuple[Doc, str]:
        found = self.get_many([entity_id])
        if entity_id not in found:
            raise ResourceNotFound(f"entity {entity_id!r} not found")
        return found[entity_id]

    # -- writes: batches ----------------------------------------------------------------------

    def create_many(
        self,
        items: Iterable[BatchItem],
        *,
        context: WriteContext,
        graph: str = ns.DEFAULT_DATASET,
        bulk: bool = False,
    ) -> BatchResult:
        """POST /entityOperations/create: entities that exist already are errors."""
        return self._batch(items, writes.create_op, context=context, graph=graph, bulk=bulk)

    def upsert_many(
        self,
        items: Iterable[BatchItem],
        *,
        context: WriteContext,
        mode: UpsertMode | Callable[[Doc], UpsertMode] = "update",
        graph: str = ns.DEFAULT_DATASET,
        idempotent: bool = False,
        own_graph: bool = False,
        bulk: bool = False,
    ) -> BatchResult:
        """POST /entityOperations/upsert, and every connector's and the demo's writes.

        `mode` "update" adds or overwrites the attributes sent (options=update), "replace"
        writes the new content; a callable chooses per document. New entities go to `graph`.
        `idempotent` and `own_graph`: see `writes.upsert_op`. `bulk` (offline loads only)
        may trade the transaction for speed.
        """
        operation = writes.upsert_op(mode, graph=graph, idempotent=idempotent, own_graph=own_graph)
        return self._batch(items, operation, context=context, graph=graph, bulk=bulk)

    def update_many(
        self,
        items: Iterable[BatchItem],
        *,
        context: WriteContext,
        overwrite: bool = True,
        now: str | None = None,
    ) -> BatchResult:
        """POST /entityOperations/update; `overwrite` False is options=noOverwrite."""
        operation = writes.update_op(overwrite=overwrite, now=now or now_iso())
        return self._batch(items, operation, context=context, graph=ns.DEFAULT_DATASET)

    def merge_many(
        self, items: Iterable[BatchItem], *, context: WriteContext, now: str | None = None
    ) -> BatchResult:
        """POST /entityOperations/merge."""
        operation = writes.merge_op(now=now or now_iso())
        return self._batch(items, operation, context=context, graph=ns.DEFAULT_DATASET)

    def delete_many(self, items: Iterable[BatchItem], *, context: WriteContext) -> BatchResult:
        """POST /entityOperations/delete (and a sync's tombstones); each item's document
        needs only its id."""
        return self._batch(items, writes.delete_op, context=context, graph=ns.DEFAULT_DATASET)

    def _batch(
        self,
        items: Iterable[BatchItem],
        operation: Operation,
        *,
        context: WriteContext,
        graph: str,
        bulk: bool = False,
    ) -> BatchResult:
        """Apply `operation(incoming, current)` per entity, then write once.

        Errors of one entity never stop the others; a later item of the same entity sees what
        the earlier ones made of it. New entities go to `graph`, existing ones stay in theirs.
        """
        result = BatchResult()
        with self.lock:
            prepared = list(items)
            ids = [e for e, item in prepared if e is not None and not isinstance(item, NgsiLdError)]
            stored = self.store.documents(ids)
            before: dict[str, Current | None] = {}  # as the batch found them
            staged: dict[str, tuple[Doc | None, str]] = {}  # id -> (new document, graph)
            kept: list[str] = []
            for entity_id, item in prepared:
                if isinstance(item, NgsiLdError):
                    result.errors.append((entity_id, item))
                    continue
                assert entity_id is not None
                if entity_id not in before:
                    found = stored.get(entity_id)
                    before[entity_id] = Current(found[1], text=found[0]) if found else None
                first = before[entity_id]
                target = first.graph if first is not None else graph
                current = first
                if entity_id in staged:
                    doc = staged[entity_id][0]
                    current = Current(target, doc=doc) if doc is not None else None
                try:
                    outcome = operation(item, current)
                except NgsiLdError as error:
                    result.errors.append((entity_id, error))
                    continue
                result.success.append(entity_id)
                if outcome is KEEP:
                    kept.append(entity_id)
                else:
                    staged[entity_id] = (outcome, target)
            changes: list[Change] = []
            for entity_id, (new, target) in staged.items():
                first = before[entity_id]
                changes.append((first.doc if first is not None else None, new, target))
                if first is None:
                    if new is not None:
                        result.created.append(entity_id)
                elif new is not None:
                    result.updated.append(entity_id)
                    if target != graph:
                        result.foreign.append(entity_id)
            result.unchanged = [e for e in dict.fromkeys(kept) if e not in staged]
            self._commit(changes, context, bulk=bulk)
        return result

    # -- the commit: one transaction, the spatial index, the events ---------------------------

    def _commit(
        self, changes: Sequence[Change], context: WriteContext, *, bulk: bool = False
    ) -> None:
        """Replace old documents by new ones (None: absent) in one transaction, then tell the
        listeners (under the tenant's lock, so they hear the commits in order).

        Only the difference between the old and new quads reaches the store, so a PATCH of one
        attribute costs a handful of quads, not the whole entity.
        """
        remove: list[Quad] = []
        add: list[Quad] = []
        for old, new, graph in changes:
            if old is None:  # a new entity: nothing to compare with
                add.extend(entity_quads(new, graph) if new is not None else ())
                continue
            old_quads = set(entity_quads(old, graph))
            new_quads = set(entity_quads(new, graph)) if new is not None else set()
            remove.extend(old_quads - new_quads)
            add.extend(new_quads - old_quads)
        if not remove and not add:  # the document is part of the quads: nothing changed
            return
        self.store.apply(remove, add, bulk=bulk)
        for old, _, _ in changes:
            if old is not None:
                for key in _geo_keys(old):
                    self.index.remove(key)
        self.index.add_geojson(
            item for _, new, _ in changes if new is not None for item in _geo_values(new)
        )
        if self.listeners:
            self.listeners.publish(self._events(changes, context))

    def _events(self, changes: Sequence[Change], context: WriteContext) -> list[ChangeEvent]:
        committed = now_iso()
        events = []
        for old, new, graph in changes:
            doc = new if new is not None else old
            if doc is not None and old != new:
                events.append(
                    ChangeEvent(self.tenant, doc["id"], old, new, graph, context, committed)
                )
        return events

    # -- writes beside the entities: provenance, SPARQL Update --------------------------------

    def describe_dataset(self, info: DatasetInfo, now: datetime) -> None:
        """The dataset's DCAT description in the metadata graph (its run history stays)."""
        with self.lock:
            provenance.describe_dataset(self.store, info, now)

    def record_run(self, run: SyncRun, *, replacing: SyncRun | None = None) -> None:
        """A sync run (or live session) in the metadata graph; `replacing`: the same
        activity's previous record, whose counts and end time go (one transaction)."""
        with self.lock:
            provenance.record_run(self.store, run, replacing=replacing)

    def sparql_update(self, update: str) -> None:
        """A SPARQL Update that sparql/update.py checked (it never writes entity graphs),
        atomically under the write lock; the spatial index is rebuilt from the store after."""
        with self.lock:
            self.store.sparql_update(update)
            self.rebuild_index()

    def rebuild_index(self) -> None:
        """Build a fresh index from the store and swap it in: readers never see a partial one."""
        self.index = self._build_index()


# -- spatial index bookkeeping ----------------------------------------------------------------


def geo_key(entity_id: str, attr: str, dataset_id: str | None) -> tuple[str, str, str]:
    """Spatial index key of one GeoProperty instance; attribute IRIs interned (memory)."""
    return entity_id, sys.intern(attr), dataset_id or ""


def _geo_values(doc: Doc) -> Iterable[tuple[tuple[str, str, str], Any]]:
    """(index key, GeoJSON value) of each GeoProperty instance: parsed by the index, once."""
    for name, instances in attribute_items(doc):
        for inst in instances:
            if inst.get("type") == "GeoProperty":
                yield geo_key(doc["id"], name, inst.get("datasetId")), inst["value"]


def _geo_keys(doc: Doc) -> Iterable[tuple[str, str, str]]:
    return (key for key, _ in _geo_values(doc))


def _only_types(query: EntityQuery) -> bool:
    """A geo-query whose only other condition is a plain list of types."""
    others = (query.ids, query.id_pattern, query.attrs, query.q, query.scope, query.selectors)
    if any(x for x in others) or query.graphs is not None:
        return False
    return query.types is None or type_names(query.types) is not None
