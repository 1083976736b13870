"""What a committed write tells the rest of the system: who wrote, and which entities changed.

Every entity write carries a `WriteContext` (who: the admin, an anonymous client, a connector
source and its run, the demo) and, once committed, becomes one `ChangeEvent` per entity it
changed. Listeners (subscriptions today; history, audit and alerts later) register once on the
`Twin` and receive the events of every tenant, including tenants opened later.

A listener is called after the commit, in commit order, holding the tenant's write lock and
nothing else: it must only hand the events on (to a queue, a thread) and never block or write.
A listener that raises is logged; the write stays committed and the next listener runs.
The documents in an event are shared with the twin: read them, never change them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

log = logging.getLogger("urbis")
Doc = dict[str, Any]
ChangeKind = Literal["created", "updated", "deleted"]


@dataclass(frozen=True)
class WriteContext:
    """Who wrote and why: carried by every write into the events it causes.

    `party`: "admin", "anonymous" (an open server), "source:<id>" (a connector), "demo";
    later a dataspace party id. `source` and `run`: the connector source and its sync run (or
    live session). `reason`: free text for the humans reading an audit trail.
    """

    party: str | None = None
    source: str | None = None
    run: str | None = None
    reason: str | None = None

    @classmethod
    def admin(cls, reason: str | None = None) -> WriteContext:
        return cls(party="admin", reason=reason)

    @classmethod
    def anonymous(cls, reason: str | None = None) -> WriteContext:
        return cls(party="anonymous", reason=reason)

    @classmethod
    def of_source(cls, source: str, run: str | None, reason: str | None = None) -> WriteContext:
        return cls(party=f"source:{source}", source=source, run=run, reason=reason)

    @classmethod
    def demo(cls, reason: str | None = None) -> WriteContext:
        return cls(party="demo", reason=reason)


@dataclass(frozen=True)
class ChangeEvent:
    """One entity changed by one committed write: its document before and after."""

    tenant: str
    entity_id: str
    old: Doc | None  # None: the write created it
    new: Doc | None  # None: the write deleted it
    graph: str  # the dataset (named graph) the entity is in, or was in
    context: WriteContext
    committed_at: str  # ISO 8601 UTC; the same for every event of one transaction

    @property
    def kind(self) -> ChangeKind:
        if self.old is None:
            return "created"
        return "deleted" if self.new is None else "updated"


class ChangeListener(Protocol):
    """Receives the events of one committed transaction (one tenant), in commit order."""

    def __call__(self, events: Sequence[ChangeEvent], /) -> None: ...


class ChangeListeners:
    """The listeners of a twin, shared by every tenant's EntityService.

    Registering swaps in a new tuple, so a write in progress tells the listeners it started
    with and never waits for a registration.
    """

    def __init__(self) -> None:
        self._listeners: tuple[ChangeListener, ...] = ()
        self._lock = threading.Lock()

    def add(self, listener: ChangeListener) -> None:
        """Register a listener (again: no effect)."""
        with self._lock:
            if listener not in self._listeners:
                self._listeners = (*self._listeners, listener)

    def remove(self, listener: ChangeListener) -> None:
        with self._lock:
            self._listeners = tuple(x for x in self._listeners if x != listener)

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def __len__(self) -> int:
        return len(self._listeners)

    def publish(self, events: Sequence[ChangeEvent]) -> None:
        """Tell every listener; one that raises is logged and never stops the others."""
        if not events:
            return
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:  # a listener's bug must never fail a committed write
                log.exception("change listener %r failed", listener)
