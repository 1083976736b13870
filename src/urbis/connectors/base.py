"""The connector contract: a source definition in, records out.

A connector only talks to its source. It yields either `Feature`s (a row or GIS feature in the
source's own shape and CRS, which the framework maps, reprojects, validates and turns into an
NGSI-LD entity from the source definition) or `NgsiEntity`s (sources that already speak NGSI-LD:
brokers, IoT agents). Everything else (mapping, harmonisation, quarantine, upserts into the
source's graph, tombstones, provenance) is the framework's job, shared by every kind.

Kinds register as plugins through the `urbis.connectors` entry-point group (see
connectors/registry.py), so a city can add its own without forking.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from urbis.connectors.definition import SourceDefinition
from urbis.connectors.errors import ConnectorError
from urbis.twin.outbound import OutboundGuard


@dataclass(frozen=True)
class Feature:
    """One record of a tabular or GIS source, before harmonisation."""

    key: str | None  # the source's own id (feature id, row key); feeds the id template
    properties: Mapping[str, Any]
    geometry: Mapping[str, Any] | None = None  # GeoJSON geometry object, in `crs`
    crs: str | None = None  # e.g. "EPSG:2154"; None means the definition's CRS, else CRS84
    observed_at: str | None = None  # when the source says the values were observed
    problem: str | None = None  # the connector already knows why this record is bad: quarantine


@dataclass(frozen=True)
class NgsiEntity:
    """An entity from a source that already speaks NGSI-LD (normalized, with its @context)."""

    entity: Mapping[str, Any]
    context: Any = None  # the @context its terms are in; None: the core context


Record = Feature | NgsiEntity


@dataclass
class Cursor:
    """What a connector remembers between runs, to fetch incrementally (stored by the framework).

    `state` is the connector's own (e.g. {"modifiedSince": "...", "etag": "..."}); it is saved
    only when a run finishes, so a crashed run starts again from the last good cursor.
    """

    state: dict[str, Any] = field(default_factory=dict)
    full: bool = True  # False when the records are only what changed: no tombstones then


class Connector(ABC):
    """Pulls records from one source. One instance per source definition."""

    kind: ClassVar[str]  # the `kind` in source definitions, e.g. "wfs"
    # Optional pydantic model of `source.options`: the framework validates definitions with it
    # at load time, so a typo in [options] is reported with its field path before any sync.
    options_model: ClassVar[type[Any] | None] = None

    def __init__(
        self,
        source: SourceDefinition,
        secret: str | None = None,
        *,
        guard: OutboundGuard | None = None,
    ) -> None:
        self.source = source
        self.secret = secret  # resolved from source.credentials; never stored in the file
        # Where the connector may connect (twin/outbound.py): public addresses, or what the
        # operator allows. Sources come from the admin API too: a leaked token must not
        # turn connectors into a scanner of the city's network. Make HTTP clients with
        # twin.outbound.guarded_client(self.guard, ...).
        self.guard = guard or OutboundGuard()

    @abstractmethod
    def fetch(self, cursor: Cursor) -> Iterator[Record]:
        """Every record the source holds now, or only the changed ones when it can tell.

        Set `cursor.full = False` when yielding only changes; update `cursor.state` as you go.
        Raise `SourceUnavailable` when the source cannot be reached (the framework retries with
        backoff); raise `BadRecord` from inside the iteration only through `quarantine` below.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


Sink = Callable[[Sequence[Record]], None]


class LiveConnector(Connector):
    """A source that pushes (MQTT devices, NGSI-LD notifications): runs until `stop` is set."""

    @abstractmethod
    def run(self, sink: Sink, stop: threading.Event) -> None:
        """Deliver records to `sink` as they arrive; reconnect on your own after failures."""


class SourceUnavailable(ConnectorError):
    """The source could not be reached or answered with a server error: retry later."""

    error_type, status, title = "SourceUnavailable", 502, "Source unavailable"


class BadRecord(ConnectorError):
    """A record that cannot become an entity; the message is the quarantine reason."""

    error_type, status, title = "BadRecord", 422, "Record not usable"
