"""Provenance of the twin's datasets: PROV-O and DCAT in the metadata graph.

Researchers joining data from several vendors need to know where each named graph came from,
who publishes it, under which licence and when it was last retrieved. Every dataset graph is
described as a `dcat:Dataset` (the graph IRI itself is the subject), and every connector sync
run as a `prov:Activity` that the dataset `prov:wasGeneratedBy` (the latest run only), all in
one graph, `urn:urbis:graph:metadata`, so one SPARQL query answers "which graph holds what".
The model is documented, with a query, in ontology/README.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

from pyoxigraph import BlankNode, Literal, NamedNode, Quad

from urbis.ontology import ns
from urbis.twin.store.base import TenantStore

METADATA_GRAPH = ns.METADATA_GRAPH
RUN_PREFIX = "urn:urbis:run:"
AGENT_PREFIX = "urn:urbis:agent:"
CONNECTOR_PREFIX = "urn:urbis:connector:"

PROV = "http://www.w3.org/ns/prov#"
DCAT = "http://www.w3.org/ns/dcat#"
DCT = "http://purl.org/dc/terms/"
FOAF = "http://xmlns.com/foaf/0.1/"
RDFS = "http://www.w3.org/2000/01/rdf-schema#"

_G = NamedNode(METADATA_GRAPH)
_TYPE = NamedNode(ns.RDF + "type")
_DATETIME = NamedNode(ns.XSD + "dateTime")
_INTEGER = NamedNode(ns.XSD + "integer")
_GENERATED_BY = NamedNode(PROV + "wasGeneratedBy")
_MODIFIED = NamedNode(DCT + "modified")
# Run-maintained statements of a dataset: a new description keeps them.
_RUN_OWNED = frozenset({_GENERATED_BY.value, _MODIFIED.value})


@dataclass
class DatasetInfo:
    """What a publisher says about one dataset (named graph)."""

    graph: str
    title: str | None = None
    source: str | None = None  # URL or path the data is read from
    connector: str | None = None  # connector kind, e.g. "ngsi-ld", "wfs", "csv"
    publisher: str | None = None  # an IRI (foaf:Agent) or a name
    licence: str | None = None  # licence URL
    description: str | None = None


@dataclass
class SyncRun:
    """One connector run that wrote into a dataset graph."""

    run_id: str
    graph: str
    connector: str
    source: str | None
    started: datetime
    ended: datetime
    created: int
    updated: int
    removed: int
    quarantined: int
    status: str


def _iri(text: str) -> bool:
    """A URL or URN is referenced as an IRI; anything else (a name, a path) stays a literal."""
    parts = urlsplit(text)
    return bool(parts.scheme) and len(parts.scheme) > 1 and " " not in text


def _when(t: datetime) -> Literal:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return Literal(t.astimezone(UTC).isoformat().replace("+00:00", "Z"), datatype=_DATETIME)


def _count(n: int) -> Literal:
    return Literal(str(n), datatype=_INTEGER)


def run_iri(run_id: str) -> str:
    return RUN_PREFIX + quote(run_id, safe="")


def connector_iri(kind: str) -> str:
    return CONNECTOR_PREFIX + quote(kind, safe="")


def publisher_iri(publisher: str) -> str:
    """A publisher given by name becomes a deterministic foaf:Agent IRI (DCAT-AP wants one)."""
    return publisher if _iri(publisher) else AGENT_PREFIX + quote(publisher, safe="")


def _source_term(source: str) -> NamedNode | Literal:
    return NamedNode(source) if _iri(source) else Literal(source)


def _connector_quads(kind: str) -> list[Quad]:
    agent = NamedNode(connector_iri(kind))
    return [
        Quad(agent, _TYPE, NamedNode(PROV + "SoftwareAgent"), _G),
        Quad(agent, NamedNode(RDFS + "label"), Literal(kind), _G),
    ]


def dataset_quads(info: DatasetInfo, now: datetime) -> list[Quad]:
    """The DCAT/PROV description of a dataset, `dct:modified` set to `now`."""
    ds = NamedNode(info.graph)
    out = [
        Quad(ds, _TYPE, NamedNode(DCAT + "Dataset"), _G),
        Quad(ds, _TYPE, NamedNode(PROV + "Entity"), _G),
        Quad(ds, _MODIFIED, _when(now), _G),
    ]
    if info.title is not None:
        out.append(Quad(ds, NamedNode(DCT + "title"), Literal(info.title), _G))
    if info.description is not None:
        out.append(Quad(ds, NamedNode(DCT + "description"), Literal(info.description), _G))
    if info.licence is not None:
        out.append(Quad(ds, NamedNode(DCT + "license"), _source_term(info.licence), _G))
    if info.publisher is not None:
        agent = NamedNode(publisher_iri(info.publisher))
        out.append(Quad(ds, NamedNode(DCT + "publisher"), agent, _G))
        out.append(Quad(agent, _TYPE, NamedNode(FOAF + "Agent"), _G))
        if not _iri(info.publisher):
            out.append(Quad(agent, NamedNode(FOAF + "name"), Literal(info.publisher), _G))
    if info.source is not None:
        source = _source_term(info.source)
        out.append(Quad(ds, NamedNode(PROV + "hadPrimarySource"), source, _G))
        if isinstance(source, NamedNode):
            out.append(Quad(ds, NamedNode(DCAT + "landingPage"), source, _G))
        else:
            out.append(Quad(ds, NamedNode(DCT + "source"), source, _G))
    if info.connector is not None:
        out.append(Quad(ds, NamedNode(ns.URBIS + "connector"), Literal(info.connector), _G))
        out.append(
            Quad(
                ds,
                NamedNode(PROV + "wasAttributedTo"),
                NamedNode(connector_iri(info.connector)),
                _G,
            )
        )
        out.extend(_connector_quads(info.connector))
    return out


def run_quads(run: SyncRun) -> list[Quad]:
    """One sync run as a `prov:Activity` (without the dataset's link to it)."""
    act = NamedNode(run_iri(run.run_id))
    ds = NamedNode(run.graph)
    out = [
        Quad(act, _TYPE, NamedNode(PROV + "Activity"), _G),
        Quad(act, NamedNode(PROV + "startedAtTime"), _when(run.started), _G),
        Quad(act, NamedNode(PROV + "endedAtTime"), _when(run.ended), _G),
        Quad(
            act, NamedNode(PROV + "wasAssociatedWith"), NamedNode(connector_iri(run.connector)), _G
        ),
        Quad(act, NamedNode(PROV + "generated"), ds, _G),
        Quad(act, NamedNode(ns.URBIS + "runId"), Literal(run.run_id), _G),
        Quad(act, NamedNode(ns.URBIS + "status"), Literal(run.status), _G),
        Quad(act, NamedNode(ns.URBIS + "created"), _count(run.created), _G),
        Quad(act, NamedNode(ns.URBIS + "updated"), _count(run.updated), _G),
        Quad(act, NamedNode(ns.URBIS + "removed"), _count(run.removed), _G),
        Quad(act, NamedNode(ns.URBIS + "quarantined"), _count(run.quarantined), _G),
    ]
    if run.source is not None:
        out.append(Quad(act, NamedNode(PROV + "used"), _source_term(run.source), _G))
    out.extend(_connector_quads(run.connector))
    return out


def _term(
    value: str, is_iri: str | None, datatype: str | None, lang: str | None
) -> NamedNode | BlankNode | Literal:
    if is_iri == "true":
        return NamedNode(value)
    if lang:
        return Literal(value, language=lang)
    if datatype:
        return Literal(value, datatype=NamedNode(datatype))
    return Literal(value)


def _statements(store: TenantStore, subject: str) -> list[Quad]:
    """The metadata graph's statements about `subject`, rebuilt as exact quads.

    `TenantStore.select` answers lexical values only, so each object's kind, datatype and
    language are selected beside it: the same code then works on every backend.
    """
    query = (
        f"SELECT ?p ?o (IF(isIRI(?o), 'true', 'false') AS ?iri) (STR(DATATYPE(?o)) AS ?dt) "
        f"(LANG(?o) AS ?lang) WHERE {{ GRAPH <{METADATA_GRAPH}> {{ <{subject}> ?p ?o "
        f"FILTER(!isBlank(?o)) }} }}"
    )
    s = NamedNode(subject)
    out = []
    for p, o, is_iri, dt, lang in store.select(query):
        if p is None or o is None:
            continue
        out.append(Quad(s, NamedNode(p), _term(o, is_iri, dt, lang), _G))
    return out


def describe_dataset(store: TenantStore, info: DatasetInfo, now: datetime) -> None:
    """Replace the dataset's description in one transaction (its run history stays)."""
    old = [q for q in _statements(store, info.graph) if q.predicate != _GENERATED_BY]
    store.apply(old, dataset_quads(info, now))


def record_run(store: TenantStore, run: SyncRun, *, replacing: SyncRun | None = None) -> None:
    """Add a sync run; the dataset now `prov:wasGeneratedBy` it and was modified at its end.

    `replacing`: the previous record of the same activity (a live session brought up to
    date), whose counts and end time are removed in the same transaction.
    """
    ds = NamedNode(run.graph)
    old = [q for q in _statements(store, run.graph) if q.predicate.value in _RUN_OWNED]
    if replacing is not None:
        activity = NamedNode(run_iri(run.run_id))
        fresh = set(run_quads(run))
        old += [q for q in run_quads(replacing) if q.subject == activity and q not in fresh]
    new = [
        *run_quads(run),
        Quad(ds, _GENERATED_BY, NamedNode(run_iri(run.run_id)), _G),
        Quad(ds, _MODIFIED, _when(run.ended), _G),
        Quad(ds, _TYPE, NamedNode(DCAT + "Dataset"), _G),
    ]
    store.apply(old, new)


def describe_all(store: TenantStore, infos: Iterable[DatasetInfo], now: datetime) -> None:
    """Describe several datasets (one transaction each)."""
    for info in infos:
        describe_dataset(store, info, now)


def default_dataset_info() -> DatasetInfo:
    """The dataset that entities written through the NGSI-LD API land in."""
    return DatasetInfo(
        graph=ns.DEFAULT_DATASET,
        title="Entities written through the NGSI-LD API",
        connector="ngsi-ld-api",
        description="Entities created or updated by NGSI-LD clients without a dataset of their own",
    )
