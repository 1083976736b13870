"""The scalable backend: the store contract over the SPARQL 1.1 Protocol, for a remote engine.

Measured on Oxigraph server 0.5 and Virtuoso 7.2.5 (docs/remote-store.md has the figures):
- Tenants share the engine's one dataset. A tenant's graphs are stored as
  `urn:urbis:tenant:T:<graph>` (the default tenant keeps natural names), a registry graph says
  which stored graph is whose, and every request pins its dataset with the protocol's
  `default-graph-uri`/`named-graph-uri` (`using-…` for updates) to exactly the tenant's graphs:
  both engines honour that, so even `GRAPH ?g` sees only the tenant.
- Oxigraph server runs one update request (several operations) in one transaction, so an
  `apply` is one `DELETE DATA ; INSERT DATA` request.
- Virtuoso commits each operation of a request on its own (a failing second operation left the
  first one's triples; one rejected operation leaves nothing of itself), refuses an operation
  whose generated SQL passes 10,000 lines (about 1,500 quads), compiles several operations of
  one request slowly, and its one-operation `DELETE {…} INSERT {…} WHERE {}` silently keeps
  language-tagged and rdf:JSON literals. There an apply is a sequence of requests, each one
  DELETE DATA / INSERT DATA of one graph and at most 100 quads, undone as a whole if one fails:
  all or nothing, but readers may glimpse the middle, and a crash of Urbis between the failure
  and the undo is not covered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, cast

from pyoxigraph import (
    NamedNode,
    Quad,
    QueryResultsFormat,
    QuerySolutions,
    RdfFormat,
    Triple,
    parse,
    parse_query_results,
)

from urbis.ontology import ns
from urbis.twin.errors import BadRequestData, NonexistentTenant, TooManyResults
from urbis.twin.iri import valid_iri
from urbis.twin.store.base import (
    DEFAULT_TENANT,
    CustomFunction,
    SparqlResult,
    StoreBackend,
    TenantStore,
    check_tenant,
)
from urbis.twin.store.sparql_http import (
    CountingReader,
    EngineRefused,
    ReplacingReader,
    SparqlClient,
)
from urbis.twin.store.sparql_text import (
    NO_GRAPH,
    REGISTRY_GRAPH,
    STORE_PREFIX,
    GraphNames,
    LiteralCodec,
    expand_same_term,
    quads_text,
    query_form,
    rewrite,
)

log = logging.getLogger("urbis.store")
TENANT_OF = f"<{ns.URBIS}storeTenant>"
TENANT_MARKER = STORE_PREFIX + "tenant:"
JSON_RESULTS = "application/sparql-results+json"
XML_RESULTS = "application/sparql-results+xml"
GRAPH_ACCEPT = "application/n-triples, text/plain;q=0.9, text/turtle;q=0.8"
# Virtuoso compiles each operation to SQL: it refuses more than 10,000 lines (1,200 quads of
# INSERT DATA passed, 1,600 failed) and compiles several operations of one request slowly (6,000
# quads: 25 s as 120 operations in one request, 1.5 s as 120 requests; 6 x 1,000 failed).
VIRTUOSO_OPERATION_QUADS = 100
BULK_CHUNK_QUADS = 20_000  # quads per operation (and per request for bulk) elsewhere
IDS_PER_QUERY = 200


@dataclass(frozen=True)
class Dialect:
    """What differs between engines, decided once from the engine's Server header."""

    name: str
    codec: LiteralCodec = field(default_factory=LiteralCodec)
    atomic_requests: bool = True  # the operations of one update request commit together
    operation_quads: int = BULK_CHUNK_QUADS  # quads per INSERT/DELETE DATA operation
    timeout_param: str | None = None  # the engine's own per-query timeout, in milliseconds
    same_term_broken: bool = False  # sameTerm must be spelt out (expand_same_term)
    values_on_predicates: bool = False  # documents() shape: see there

    def query_text(self, text: str) -> str:
        text = self.codec.encode_text(text)
        return expand_same_term(text) if self.same_term_broken else text


GENERIC = Dialect("generic")
VIRTUOSO = Dialect(
    "virtuoso",
    codec=LiteralCodec(
        {ns.GEO + "wktLiteral": ns.URBIS + "wktLiteral", ns.XSD + "time": ns.URBIS + "time"}
    ),
    atomic_requests=False,
    operation_quads=VIRTUOSO_OPERATION_QUADS,
    timeout_param="timeout",
    same_term_broken=True,
    values_on_predicates=True,
)


class SparqlTenant(TenantStore):
    """One tenant's graphs in the shared engine."""

    def __init__(self, backend: SparqlBackend, name: str, stored: set[str]) -> None:
        self.backend = backend
        self.client = backend.client
        self.dialect = backend.dialect
        self.names = GraphNames(name)
        self.stored = stored  # the stored names of the tenant's registered graphs
        self._lock = threading.Lock()
        self.entities = self.names.stored(ns.ENTITIES_GRAPH)

    # -- reads ------------------------------------------------------------------------------

    def documents(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """200 ids per query. The fast shape differs by engine (10k entities, 100-200 ids):
        Oxigraph server 37 ms with constant predicates vs 500 ms with VALUES over them;
        Virtuoso 16 ms with VALUES over them vs 192 ms with constants."""
        found: dict[str, tuple[str, str]] = {}
        wanted = [i for i in dict.fromkeys(ids) if valid_iri(i)]
        document, dataset = ns.URBIS + "document", ns.URBIS + "dataset"
        for start in range(0, len(wanted), IDS_PER_QUERY):
            values = " ".join(f"<{i}>" for i in wanted[start : start + IDS_PER_QUERY])
            if not self.dialect.values_on_predicates:
                query = (
                    f"SELECT ?e ?d ?g WHERE {{ VALUES ?e {{ {values} }} "
                    f"?e <{document}> ?d . ?e <{dataset}> ?g }}"
                )
                for entity, doc, graph in self._rows(query, [self.entities], None):
                    if entity is not None and doc is not None and graph is not None:
                        found[entity] = (doc, graph)
                continue
            query = (
                f"SELECT ?e ?p ?o WHERE {{ VALUES ?e {{ {values} }} "
                f"VALUES ?p {{ <{document}> <{dataset}> }} ?e ?p ?o }}"
            )
            texts: dict[str, str] = {}
            graphs: dict[str, str] = {}
            for entity, predicate, obj in self._rows(query, [self.entities], None):
                if entity is not None and obj is not None:
                    (texts if predicate == document else graphs)[entity] = obj
            found.update((e, (t, graphs[e])) for e, t in texts.items() if e in graphs)
        return found

    def select(self, query: str) -> Iterator[Sequence[str | None]]:
        rewritten = rewrite(self.dialect.query_text(query), self.names.stored)
        graphs = self._dataset_graphs()
        return self._rows(rewritten.text, graphs, graphs)

    def having_type(self, ids: Iterable[str], types: Sequence[str]) -> set[str]:
        """Types as constants (a UNION for several): 12 ms for 200 ids on Oxigraph server,
        where a second VALUES over the types took 150 ms."""
        wanted = [i for i in ids if valid_iri(i)]
        kinds = [f"{{ ?e a <{t}> }}" for t in dict.fromkeys(types) if valid_iri(t)]
        if not kinds:
            return set()
        graphs = self._dataset_graphs()
        hits: set[str] = set()
        for start in range(0, len(wanted), IDS_PER_QUERY):
            values = " ".join(f"<{i}>" for i in wanted[start : start + IDS_PER_QUERY])
            union = " UNION ".join(kinds)
            query = f"SELECT DISTINCT ?e WHERE {{ VALUES ?e {{ {values} }} {union} }}"
            hits.update(row[0] for row in self._rows(query, graphs, None) if row[0] is not None)
        return hits

    def count(self, query: str) -> int:
        for row in self.select(query):
            return int(row[0]) if row[0] is not None else 0
        return 0

    def _dataset_graphs(self) -> list[str]:
        with self._lock:
            return sorted(self.stored) or [NO_GRAPH]

    def _rows(
        self, query: str, default: Sequence[str], named: Sequence[str] | None
    ) -> Iterator[Sequence[str | None]]:
        """`named=None`: no named-graph-uri, for Urbis's own queries without GRAPH (Virtuoso
        took twice as long with one)."""
        solutions = self._solutions(query, default, named, None, None)
        assert isinstance(solutions, QuerySolutions)
        width = len(solutions.variables)
        for solution in solutions:
            yield [None if (t := solution[i]) is None else t.value for i in range(width)]

    def _solutions(
        self,
        query: str,
        default: Sequence[str],
        named: Sequence[str] | None,
        extra: Mapping[str, str] | None,
        timeout: float | None,
    ) -> SparqlResult:
        dataset = {"default-graph-uri": list(default)}
        if named is not None:
            dataset["named-graph-uri"] = list(named) or [NO_GRAPH]
        response, reader = self.client.query(
            query, accept=JSON_RESULTS, dataset=dataset, extra=extra, timeout=timeout
        )
        return parse_query_results(self._restored(reader, quote=b'"'), format=_results(response))

    def _restored(self, reader: Any, *, quote: bytes) -> Any:
        """Stored graph names and engine-specific datatypes renamed back, while streaming."""
        replacements = {
            quote + s.encode() + _closing(quote): quote + n.encode() + _closing(quote)
            for s in self._stored_snapshot()
            if (n := self.names.natural(s)) is not None and n != s
        }
        for stored, natural in self.dialect.codec.back.items():
            replacements[stored.encode()] = natural.encode()
        return ReplacingReader(reader, replacements) if replacements else reader

    def _stored_snapshot(self) -> list[str]:
        with self._lock:
            return list(self.stored)

    # -- writes -----------------------------------------------------------------------------

    def apply(self, remove: Iterable[Quad], add: Iterable[Quad], *, bulk: bool = False) -> None:
        removed = list(remove)
        added = list(add)
        if not removed and not added:
            return
        self._register(q.graph_name for q in added)
        operations = self._data("DELETE", removed) + self._data("INSERT", added)
        if bulk:  # offline loads: several requests, no atomicity asked for
            for operation in operations:
                self.client.update(operation)
        elif self.dialect.atomic_requests:
            self.client.update(" ; ".join(operations))
        else:
            self._compensated(removed, added, operations)

    def _data(self, verb: str, quads: list[Quad]) -> list[str]:
        """INSERT/DELETE DATA operations of one graph and at most `operation_quads` each."""
        by_graph: dict[Any, list[Quad]] = {}
        for quad in quads:
            by_graph.setdefault(quad.graph_name, []).append(quad)
        codec, names, size = self.dialect.codec, self.names, self.dialect.operation_quads
        return [
            f"{verb} DATA {{ {quads_text(part, names, codec)} }}"
            for graph_quads in by_graph.values()
            for part in _chunks(graph_quads, size)
        ]

    def _compensated(self, removed: list[Quad], added: list[Quad], operations: list[str]) -> None:
        """One request per operation; if one fails, everything is undone, one request each.

        The undo re-inserts every removed quad and deletes every added one. It is idempotent
        and exact under the twin's invariant (it removes only quads that are stored and adds
        only quads that are absent), whichever operations had been committed.
        """
        try:
            for operation in operations:
                self.client.update(operation)
        except Exception:
            try:
                for operation in self._data("INSERT", removed) + self._data("DELETE", added):
                    self.client.update(operation)
            except Exception:
                log.error("a failed write could not be undone: the tenant may be inconsistent")
                raise
            raise

    def _register(self, graphs: Iterable[Any]) -> None:
        """Record new graphs in the registry before writing to them (an empty registered
        graph is harmless; an unregistered one would be invisible)."""
        self._register_stored(
            {self.names.stored(g.value) for g in graphs if isinstance(g, NamedNode)}
        )

    def _register_stored(self, stored: set[str]) -> None:
        with self._lock:
            fresh = stored - self.stored
        if fresh:
            self.backend.register(self.names.tenant, fresh)
            with self._lock:
                self.stored |= fresh

    # -- researchers' access ----------------------------------------------------------------

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
        """Custom functions cannot run inside a remote engine: they are not registered there,
        and a query calling one fails with the engine's message."""
        given = default_graphs is not None or named_graphs is not None
        rewritten = rewrite(self.dialect.query_text(query), self.names.stored, drop_dataset=given)
        mine = self._dataset_graphs()
        if given:
            default = [self.names.stored(g) for g in default_graphs or []] or [NO_GRAPH]
            named = [self.names.stored(g) for g in named_graphs or []] or [NO_GRAPH]
            dataset: dict[str, list[str]] = {"default-graph-uri": default, "named-graph-uri": named}
        elif rewritten.has_dataset:
            dataset = {}  # the query's own FROM / FROM NAMED, moved into the tenant
        else:
            dataset = {"default-graph-uri": mine, "named-graph-uri": mine}
        extra = {}
        if timeout is not None and self.dialect.timeout_param:
            extra[self.dialect.timeout_param] = str(max(1, int(timeout * 1000)))
        form = query_form(rewritten.text)
        if form in ("CONSTRUCT", "DESCRIBE"):
            response, reader = self.client.query(
                rewritten.text, accept=GRAPH_ACCEPT, dataset=dataset, extra=extra, timeout=timeout
            )
            media = response.headers.get("content-type", "").split(";")[0].strip()
            rdf_format = RdfFormat.from_media_type(media) or RdfFormat.N_TRIPLES
            quads = parse(self._restored(reader, quote=b"<"), format=rdf_format)
            return _limited((Triple(q.subject, q.predicate, q.object) for q in quads), max_rows)
        accept = JSON_RESULTS if max_rows is None else XML_RESULTS
        response, reader = self.client.query(
            rewritten.text, accept=accept, dataset=dataset, extra=extra, timeout=timeout
        )
        source = self._restored(reader, quote=b'"' if max_rows is None else b">")
        if max_rows is not None:
            source = CountingReader(source, b"<result>", max_rows)
        return parse_query_results(source, format=_results(response))

    def sparql_update(self, update: str, *, timeout: float | None = None) -> None:
        """Graphs named by the update are registered first; its WHERE reads only the tenant."""
        rewritten = rewrite(update, self.names.stored)
        if rewritten.engine_wide:
            raise BadRequestData(
                "ALL, NAMED and DEFAULT would reach past this tenant on a shared engine: "
                "name the graphs (CLEAR GRAPH <g>)"
            )
        if rewritten.default_graph_data:
            raise BadRequestData(
                "the remote store keeps data in named graphs only: put the triples in "
                "GRAPH <g> { ... } or name the graph with WITH <g>"
            )
        self._register_stored(rewritten.graphs)
        mine = self._dataset_graphs()
        dataset = (
            {}
            if rewritten.has_dataset
            else {
                "using-graph-uri": mine,
                "using-named-graph-uri": mine,
            }
        )
        self.client.update(rewritten.text, dataset=dataset, timeout=timeout)

    def graphs(self) -> list[str]:
        """The tenant's graphs that hold at least one quad."""
        out = []
        for stored in self._dataset_graphs():
            if stored == NO_GRAPH:
                continue
            rows = list(
                self._rows(
                    f"SELECT ?s WHERE {{ GRAPH <{stored}> {{ ?s ?p ?o }} }} LIMIT 1",
                    [NO_GRAPH],
                    [stored],
                )
            )
            natural = self.names.natural(stored)
            if rows and natural is not None:
                out.append(natural)
        return sorted(out)

    def dump(self, graph: str | None = None) -> Iterator[Quad]:
        names = [graph] if graph is not None else self.graphs()
        for name in names:
            stored = self.names.stored(name)
            if stored not in self._stored_snapshot():
                continue
            query = f"CONSTRUCT {{ ?s ?p ?o }} WHERE {{ GRAPH <{stored}> {{ ?s ?p ?o }} }}"
            response, reader = self.client.query(
                query, accept=GRAPH_ACCEPT, dataset={"named-graph-uri": [stored]}
            )
            media = response.headers.get("content-type", "").split(";")[0].strip()
            rdf_format = RdfFormat.from_media_type(media) or RdfFormat.N_TRIPLES
            node = NamedNode(name)
            for quad in parse(self._restored(reader, quote=b"<"), format=rdf_format):
                yield Quad(quad.subject, quad.predicate, quad.object, node)

    def close(self) -> None:
        """The connection pool belongs to the backend."""


def _limited(triples: Iterator[Triple], limit: int | None) -> Iterator[Triple]:
    for count, triple in enumerate(triples, 1):
        if limit is not None and count > limit:
            raise TooManyResults(f"the answer has more than {limit} triples: narrow the query")
        yield triple


def _results(response: Any) -> QueryResultsFormat:
    media = response.headers.get("content-type", "").split(";")[0].strip()
    found = QueryResultsFormat.from_media_type(media) if media else None
    return found or QueryResultsFormat.JSON


def _closing(quote: bytes) -> bytes:
    """The byte that ends a graph IRI: `<iri>` in N-Triples, `"iri"` in JSON, `>iri<` in XML."""
    return {b"<": b">", b">": b"<"}.get(quote, quote)


def _chunks(items: list[Quad], size: int) -> Iterator[list[Quad]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SparqlBackend(StoreBackend):
    """Tenants of one remote SPARQL 1.1 engine (Oxigraph server, Virtuoso, any other)."""

    name = "sparql"

    def __init__(
        self,
        query_url: str,
        update_url: str | None = None,
        store_url: str | None = None,
        *,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 120.0,
        retries: int = 5,
    ) -> None:
        self.client = SparqlClient(
            query_url,
            update_url,
            store_url,
            user=user,
            password=password,
            timeout=timeout,
            retries=retries,
        )
        server = self.client.probe()
        self.dialect = VIRTUOSO if "virtuoso" in server.lower() else GENERIC
        self._tenants: dict[str, SparqlTenant] = {}
        self._lock = threading.Lock()
        self.tenant(DEFAULT_TENANT, create=True)

    @classmethod
    def from_settings(cls, settings: Any) -> SparqlBackend:
        """Read api.settings.Settings by attribute (twin never imports api)."""
        password = getattr(settings, "sparql_password", None)
        if password is not None and hasattr(password, "get_secret_value"):
            password = password.get_secret_value()
        return cls(
            settings.sparql_url,
            getattr(settings, "sparql_update_url", None),
            getattr(settings, "sparql_store_url", None),
            user=getattr(settings, "sparql_user", None),
            password=password,
        )

    def tenant(self, name: str, *, create: bool) -> TenantStore:
        check_tenant(name)
        with self._lock:
            found = self._tenants.get(name)
            if found is not None:
                return found
            registered = self._registered(name)
            if registered is None:
                if not create:
                    raise NonexistentTenant(f"tenant {name!r} does not exist; a write creates it")
                self.register(name, set())
                registered = set()
            self._tenants[name] = SparqlTenant(self, name, registered)
            return self._tenants[name]

    def register(self, tenant: str, graphs: set[str]) -> None:
        """Idempotent: INSERT DATA of triples already there changes nothing."""
        literal = _string(tenant)
        triples = [f"<{TENANT_MARKER}{tenant}> {TENANT_OF} {literal} ."]
        triples += [f"<{g}> {TENANT_OF} {literal} ." for g in sorted(graphs)]
        self.client.update(f"INSERT DATA {{ GRAPH <{REGISTRY_GRAPH}> {{ {' '.join(triples)} }} }}")

    def _registered(self, tenant: str) -> set[str] | None:
        """The stored graphs of a tenant, None when the tenant was never created."""
        query = (
            f"SELECT ?g WHERE {{ GRAPH <{REGISTRY_GRAPH}> {{ ?g {TENANT_OF} {_string(tenant)} }} }}"
        )
        rows = [r[0] for r in self._registry_rows(query) if r[0] is not None]
        if not rows:
            return None
        return {g for g in rows if not g.startswith(STORE_PREFIX)}

    def _registry_rows(self, query: str) -> list[Sequence[str | None]]:
        response, reader = self.client.query(
            query, accept=JSON_RESULTS, dataset={"named-graph-uri": [REGISTRY_GRAPH]}
        )
        solutions = parse_query_results(cast(IO[bytes], reader), format=_results(response))
        assert isinstance(solutions, QuerySolutions)
        width = len(solutions.variables)
        return [[None if (t := s[i]) is None else t.value for i in range(width)] for s in solutions]

    def tenants(self) -> list[str]:
        query = f"SELECT DISTINCT ?t WHERE {{ GRAPH <{REGISTRY_GRAPH}> {{ ?g {TENANT_OF} ?t }} }}"
        names = {r[0] for r in self._registry_rows(query) if r[0] is not None}
        return sorted(names | set(self._tenants))

    def close(self) -> None:
        with self._lock:
            self._tenants.clear()
        self.client.close()


def _string(value: str) -> str:
    """Tenant names are check_tenant's safe alphabet: no escaping needed, but be strict."""
    if '"' in value or "\\" in value:
        raise EngineRefused(f"invalid tenant name {value!r}")
    return f'"{value}"'
