"""The store contract: what the twin needs from an RDF engine.

A backend holds tenants; a tenant is an RDF dataset (named graphs) that shares nothing with
other tenants. The twin writes through `apply` (atomic delete + insert of quads) and reads
through `document` lookups and SPARQL SELECT. Everything NGSI-LD-specific lives above this
line, so a remote SPARQL 1.1 Protocol + Graph Store backend only has to implement these methods.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence

from pyoxigraph import Quad

from twin.errors import BadRequestData

DEFAULT_TENANT = ""
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
