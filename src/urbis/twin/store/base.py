"""The store contract: what the twin needs from an RDF engine.

A backend holds tenants; a tenant is an RDF dataset (named graphs) that shares nothing with
other tenants. The twin writes through `apply` (atomic delete + insert of quads) and reads
through `document` lookups and SPARQL SELECT. Everything NGSI-LD-specific lives above this
line, so a remote SPARQL 1.1 Protocol + Graph Store backend only has to implement these methods.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from pyoxigraph import Quad, QueryBoolean, QuerySolutions, QueryTriples, Triple

from urbis.twin.errors import BadRequestData

DEFAULT_TENANT = ""
# What a SPARQL query answers: solutions (SELECT), a boolean (ASK) or triples (CONSTRUCT,
# DESCRIBE). A remote backend parses its engine's answer into the same pyoxigraph types
# (`pyoxigraph.parse_query_results`, `pyoxigraph.parse`), so the endpoint serialises one way.
SparqlResult = QuerySolutions | QueryBoolean | QueryTriples | Iterator[Triple]
CustomFunction = Callable[..., Any]
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def check_tenant(name: str) -> str:
    """Tenant names become directory or graph names: keep them to a safe alphabet."""
    if name != DEFAULT_TENANT and not _TENANT.match(name):
        raise BadRequestData(
            f"invalid tenant {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


class TenantStore(ABC):
    """One tenant's dataset."""

    @abstractmethod
    def documents(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Stored JSON text and dataset graph of each entity that exists.

        Called by every entity read and before every write (GET/PATCH/PUT/DELETE /entities/{id},
        batch operations, query result pages).
        """

    @abstractmethod
    def apply(self, remove: Iterable[Quad], add: Iterable[Quad], *, bulk: bool = False) -> None:
        """Delete then insert quads in one transaction: all of it or nothing.

        `bulk=True` (offline loads only, `urbis load`) may trade that guarantee for speed.
        """

    @abstractmethod
    def select(self, query: str) -> Iterator[Sequence[str | None]]:
        """Rows of a SPARQL SELECT over the union of all graphs, as lexical values.

        Called by GET /entities (ids of a page), /types and /attributes (aggregates).
        """

    @abstractmethod
    def having_type(self, ids: Iterable[str], types: Sequence[str]) -> set[str]:
        """The ids whose entity has one of `types` (geoQ hits filtered by type)."""

    @abstractmethod
    def count(self, query: str) -> int:
        """The single integer a `SELECT (COUNT(...) AS ?n)` query returns."""

    # -- researchers' access (issue 3): /sparql, exports -----------------------------------

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
        """Any SPARQL 1.1 query, lazily: the default graph is the union of the tenant's graphs
        unless `default_graphs` names them (SPARQL Protocol `default-graph-uri`).

        Called by /sparql. Raises twin.errors.InvalidRequest-style errors for bad queries and a
        timeout error when `timeout` seconds pass: the work must really stop. With `max_rows`,
        TooManyResults is raised (here, or while iterating) once the answer has more rows or
        triples than that: never a silently shortened answer.
        """
        raise NotImplementedError

    def sparql_update(self, update: str, *, timeout: float | None = None) -> None:
        """A SPARQL 1.1 Update, atomically. Called by the admin-only update endpoint."""
        raise NotImplementedError

    def graphs(self) -> list[str]:
        """The tenant's named graphs (datasets, documents, metadata). Called by exports."""
        raise NotImplementedError

    def dump(self, graph: str | None = None) -> Iterator[Quad]:
        """Every quad of the tenant, or of one graph, streamed. Called by `urbis export`."""
        raise NotImplementedError

    @abstractmethod
    def close(self) -> None: ...


class StoreBackend(ABC):
    """Opens tenants; one backend per running server."""

    name: str = "abstract"

    @abstractmethod
    def tenant(self, name: str, *, create: bool) -> TenantStore:
        """The tenant's store; raises NonexistentTenant when it is unknown and not `create`."""

    @abstractmethod
    def tenants(self) -> list[str]: ...

    @abstractmethod
    def close(self) -> None: ...
