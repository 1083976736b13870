"""Every dataset graph is described with DCAT and PROV-O in the metadata graph."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from urbis.ontology import ns
from urbis.ontology.shapes import vocabulary_graph
from urbis.twin.provenance import (
    METADATA_GRAPH,
    DatasetInfo,
    SyncRun,
    dataset_quads,
    describe_dataset,
    record_run,
    run_iri,
    run_quads,
)
from urbis.twin.store.oxigraph import OxigraphBackend, OxigraphTenant

PREFIXES = """
PREFIX dcat: <http://www.w3.org/ns/dcat#>
PREFIX dct: <http://purl.org/dc/terms/>
PREFIX prov: <http://www.w3.org/ns/prov#>
PREFIX foaf: <http://xmlns.com/foaf/0.1/>
PREFIX urbis: <https://urbis.city/ns#>
"""
GRAPH = "urn:urbis:dataset:bins"
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
T1 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
T2 = datetime(2025, 3, 1, 10, 30, tzinfo=UTC)


@pytest.fixture
def store() -> OxigraphTenant:
    tenant = OxigraphBackend(None).tenant("", create=True)
    assert isinstance(tenant, OxigraphTenant)
    return tenant


def info(**changes: str | None) -> DatasetInfo:
    fields: dict[str, str | None] = {
        "graph": GRAPH,
        "title": "Waste containers",
        "source": "https://broker.example.org/ngsi-ld/v1/entities?type=WasteContainer",
        "connector": "ngsi-ld",
        "publisher": "City Waste Department",
        "licence": "https://creativecommons.org/licenses/by/4.0/",
        "description": "Fill levels of the city's bins",
    }
    fields.update(changes)
    return DatasetInfo(**fields)  # type: ignore[arg-type]


def run(run_id: str, ended: datetime, status: str = "ok") -> SyncRun:
    return SyncRun(
        run_id=run_id,
        graph=GRAPH,
        connector="ngsi-ld",
        source="https://broker.example.org/ngsi-ld/v1/entities?type=WasteContainer",
        started=T0,
        ended=ended,
        created=3,
        updated=2,
        removed=1,
        quarantined=4,
        status=status,
    )


def rows(store: OxigraphTenant, query: str) -> list[list[str | None]]:
    return [list(r) for r in store.select(PREFIXES + query)]


def metadata_quads(store: OxigraphTenant) -> set[str]:
    return {str(q) for q in store.store.quads_for_pattern(None, None, None, None)}


def test_metadata_graph_constant_is_shared() -> None:
    assert METADATA_GRAPH == ns.METADATA_GRAPH == "urn:urbis:graph:metadata"


def test_all_quads_land_in_metadata_graph() -> None:
    quads = dataset_quads(info(), T0) + run_quads(run("r1", T1))
    assert quads
    assert {q.graph_name.value for q in quads} == {METADATA_GRAPH}  # type: ignore[union-attr]


def test_described_dataset_answers_the_catalogue_query(store: OxigraphTenant) -> None:
    describe_dataset(store, info(), T0)
    found = rows(
        store,
        """SELECT ?title ?licence ?name ?source ?connector ?modified WHERE {
          GRAPH <urn:urbis:graph:metadata> {
            ?ds a dcat:Dataset ; dct:title ?title ; dct:license ?licence ;
                dct:publisher ?pub ; prov:hadPrimarySource ?source ; urbis:connector ?connector ;
                dct:modified ?modified .
            ?pub a foaf:Agent ; foaf:name ?name .
          } }""",
    )
    assert found == [
        [
            "Waste containers",
            "https://creativecommons.org/licenses/by/4.0/",
            "City Waste Department",
            "https://broker.example.org/ngsi-ld/v1/entities?type=WasteContainer",
            "ngsi-ld",
            "2025-03-01T08:00:00Z",
        ]
    ]


def test_publisher_iri_is_referenced_not_named(store: OxigraphTenant) -> None:
    describe_dataset(store, info(publisher="https://city.example.org/#waste"), T0)
    assert rows(store, "SELECT ?p WHERE { ?ds dct:publisher ?p . ?p a foaf:Agent }") == [
        ["https://city.example.org/#waste"]
    ]


def test_file_source_stays_a_literal(store: OxigraphTenant) -> None:
    describe_dataset(store, info(source="data/bins.csv"), T0)
    assert rows(store, "SELECT ?s WHERE { ?ds prov:hadPrimarySource ?s FILTER isLiteral(?s) }") == [
        ["data/bins.csv"]
    ]
    assert rows(store, "SELECT ?s WHERE { ?ds dcat:landingPage ?s }") == []


def test_redescribing_replaces_the_old_description(store: OxigraphTenant) -> None:
    describe_dataset(store, info(), T0)
    describe_dataset(store, info(title="Bins", licence=None, description=None), T1)
    assert rows(store, "SELECT ?t WHERE { ?ds dct:title ?t }") == [["Bins"]]
    assert rows(store, "SELECT ?l WHERE { ?ds dct:license ?l }") == []
    assert rows(store, "SELECT ?d WHERE { ?ds dct:description ?d }") == []
    assert rows(store, "SELECT ?m WHERE { ?ds dct:modified ?m }") == [["2025-03-01T09:00:00Z"]]


def test_redescribing_the_same_way_changes_nothing_but_time(store: OxigraphTenant) -> None:
    describe_dataset(store, info(), T0)
    before = metadata_quads(store)
    describe_dataset(store, info(), T0)
    assert metadata_quads(store) == before


def test_run_is_an_activity_and_dataset_points_at_latest(store: OxigraphTenant) -> None:
    describe_dataset(store, info(), T0)
    record_run(store, run("r1", T1))
    record_run(store, run("r2", T2, status="partial"))
    found = rows(
        store,
        """SELECT ?run ?status ?start ?end ?created ?updated ?removed ?quarantined ?agent ?used
        WHERE { GRAPH <urn:urbis:graph:metadata> {
          ?ds prov:wasGeneratedBy ?run .
          ?run a prov:Activity ; urbis:status ?status ; prov:startedAtTime ?start ;
               prov:endedAtTime ?end ; urbis:created ?created ; urbis:updated ?updated ;
               urbis:removed ?removed ; urbis:quarantined ?quarantined ;
               prov:wasAssociatedWith ?agent ; prov:used ?used .
          ?agent a prov:SoftwareAgent } }""",
    )
    assert found == [
        [
            run_iri("r2"),
            "partial",
            "2025-03-01T08:00:00Z",
            "2025-03-01T10:30:00Z",
            "3",
            "2",
            "1",
            "4",
            "urn:urbis:connector:ngsi-ld",
            "https://broker.example.org/ngsi-ld/v1/entities?type=WasteContainer",
        ]
    ]
    # history is kept: both runs remain, only the latest generated the current graph state
    assert len(rows(store, "SELECT ?r WHERE { ?r a prov:Activity }")) == 2
    assert rows(store, "SELECT ?m WHERE { ?ds dct:modified ?m }") == [["2025-03-01T10:30:00Z"]]


def test_redescribing_keeps_the_latest_run(store: OxigraphTenant) -> None:
    describe_dataset(store, info(), T0)
    record_run(store, run("r1", T1))
    describe_dataset(store, info(title="Bins"), T2)
    assert rows(store, "SELECT ?r WHERE { ?ds prov:wasGeneratedBy ?r }") == [[run_iri("r1")]]
    assert rows(store, "SELECT ?m WHERE { ?ds dct:modified ?m }") == [["2025-03-01T10:30:00Z"]]


def test_run_before_description_still_makes_a_dataset(store: OxigraphTenant) -> None:
    record_run(store, run("only", T1))
    assert rows(store, "SELECT ?ds WHERE { ?ds a dcat:Dataset }") == [[GRAPH]]


def test_odd_run_ids_make_valid_iris(store: OxigraphTenant) -> None:
    record_run(store, run("2025-03-01 09:00 #1 <x>", T1))
    (iri,) = rows(store, "SELECT ?r WHERE { ?r a prov:Activity }")[0]
    assert iri is not None and " " not in iri and "<" not in iri


def test_naive_datetimes_are_taken_as_utc(store: OxigraphTenant) -> None:
    describe_dataset(store, info(), datetime(2025, 1, 2, 3, 4, 5))
    assert rows(store, "SELECT ?m WHERE { ?ds dct:modified ?m }") == [["2025-01-02T03:04:05Z"]]


def test_every_urbis_term_written_is_in_the_vocabulary() -> None:
    declared = {str(s) for s in vocabulary_graph().subjects()}
    quads = dataset_quads(info(), T0) + run_quads(run("r1", T1))
    used = {q.predicate.value for q in quads if q.predicate.value.startswith(ns.URBIS)}
    assert used and used <= declared
