"""The access port: what a caller may read of a tenant, asked by every read path.

The twin does not decide who may see what; a policy does (the dataspace's usage control will
implement one with ODRL policies and agreements). Every read of entity data asks the policy
installed with `create_app(settings, access=policy)`: entity retrieval and queries (counts and
q/geoQ matching included), discovery, SPARQL, dataset lists and dumps, federated reads,
notifications and `urbis export`. Without one, `AllowAll` keeps everything readable, as before.

A policy answers three questions, in the shape of datasette's `permission_allowed`:

* `graphs`: which dataset graphs' entities this caller may read at all (None: every graph);
* `raw_graphs`: which graphs this caller may read as stored, quad by quad (SPARQL, dumps),
  with no document transformed (None: every graph);
* `document`: this entity as this caller may see it: the document, a changed copy (attributes
  dropped, values coarsened, aggregated) or None to hide it. Asked only for entities of graphs
  in `graphs` and not in `raw_graphs`.

Any of them may refuse with `AccessDenied(reason)` (403, the reason is shown to the caller).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from urbis.twin.errors import Forbidden

Doc = dict[str, Any]
# Entities that context sources answer (federated reads) have no graph here: the policy sees
# them under this name, so that it can hide or transform what other brokers hold too.
REMOTE_GRAPH = "urn:urbis:graph:remote"


class AccessDenied(Forbidden):
    """A policy's refusal: 403, with a reason written for the caller."""


@dataclass(frozen=True)
class Caller:
    """Who reads. The API's access gate builds it per request; the dataspace will name a party
    (its connector identity) and the purpose it declared."""

    admin: bool = False
    anonymous: bool = True
    party: str | None = None
    purpose: str | None = None

    def to_json(self) -> Doc:
        return {
            "admin": self.admin,
            "anonymous": self.anonymous,
            "party": self.party,
            "purpose": self.purpose,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Caller:
        return cls(
            admin=bool(raw.get("admin")),
            anonymous=bool(raw.get("anonymous", True)),
            party=raw.get("party"),
            purpose=raw.get("purpose"),
        )


# The operator at the command line (`urbis export`): reads through the port like anyone else.
OPERATOR = Caller(admin=True, anonymous=False, purpose="export")


class AccessPolicy(Protocol):
    """What the dataspace implements. Contract:

    * `graphs` and `raw_graphs` are asked once per request (or notification batch) and should
      answer from memory; `document` is asked per entity, in worker threads.
    * `raw_graphs` lists only graphs whose documents pass unchanged: SPARQL and dumps show them
      as stored. The documents graph (`urn:urbis:graph:entities`) holds every entity's JSON and
      the metadata graph describes every dataset: list them only for callers who may read all.
    * `document` gets a copy of its own, which it may change and return. It keeps `id`, `type`
      and `scope`, the entity's identity (queries select by them on the stored data), and may
      change or drop anything else. To hide an entity, return None.
    """

    def graphs(self, caller: Caller, tenant: str) -> frozenset[str] | None: ...

    def raw_graphs(self, caller: Caller, tenant: str) -> frozenset[str] | None: ...

    def document(self, caller: Caller, doc: Doc, graph: str) -> Doc | None: ...


class AllowAll:
    """The default: every caller reads everything, as stored."""

    def graphs(self, caller: Caller, tenant: str) -> frozenset[str] | None:
        return None

    def raw_graphs(self, caller: Caller, tenant: str) -> frozenset[str] | None:
        return None

    def document(self, caller: Caller, doc: Doc, graph: str) -> Doc | None:
        return doc


ALLOW_ALL = AllowAll()


@dataclass(frozen=True)
class ReadScope:
    """One caller's decision for one tenant, asked once and then applied to each document."""

    policy: AccessPolicy
    caller: Caller
    tenant: str
    graphs: frozenset[str] | None  # readable dataset graphs; None: all
    raw: frozenset[str] | None  # of those, readable as stored; None: all

    @classmethod
    def decide(cls, policy: AccessPolicy, caller: Caller, tenant: str) -> ReadScope:
        graphs = policy.graphs(caller, tenant)
        raw = policy.raw_graphs(caller, tenant)
        if raw is not None and graphs is not None:
            raw = raw & graphs  # nothing is raw that is not readable at all
        elif raw is None and graphs is not None:
            raw = graphs
        return cls(policy, caller, tenant, graphs, raw)

    @property
    def unrestricted(self) -> bool:
        return self.graphs is None and self.raw is None

    @property
    def transforms(self) -> bool:
        """Whether some readable entity goes through `document` (else the stored data is the
        caller's view, restricted to `graphs`, and the store's own counts and matching hold)."""
        if self.raw is None:
            return False
        return self.graphs is None or not self.graphs <= self.raw

    def readable(self, graph: str) -> bool:
        return self.graphs is None or graph in self.graphs

    def is_raw(self, graph: str) -> bool:
        return self.raw is None or graph in self.raw

    def seen(self, doc: Doc, graph: str) -> Doc | None:
        """The document as this caller sees it, or None when it is hidden."""
        if not self.readable(graph):
            return None
        if self.is_raw(graph):
            return doc
        # A copy: the same document may go on to other callers (notifications, caches).
        return self.policy.document(self.caller, orjson.loads(orjson.dumps(doc)), graph)
