"""Durable state: one store for everything Urbis keeps beside the RDF twin (docs/state.md)."""

from urbis.twin.state.legacy import import_once
from urbis.twin.state.port import (
    MAX_DOCUMENT_BYTES,
    MAX_KEY_CHARS,
    Document,
    LogRecord,
    StateDocumentTooLarge,
    StateItem,
    StateKeyInvalid,
    StateNotEmpty,
    StateStore,
    StateStoreBusy,
    StateTransaction,
    StoredDocument,
    StoredRecord,
)
from urbis.twin.state.sqlite import FILE_NAME, MEMORY, SqliteStateStore, open_state_store


def memory_state_store() -> StateStore:
    """A private in-memory store: what a component uses when it is given none."""
    return SqliteStateStore(MEMORY)


__all__ = [
    "FILE_NAME",
    "MAX_DOCUMENT_BYTES",
    "MAX_KEY_CHARS",
    "MEMORY",
    "Document",
    "LogRecord",
    "SqliteStateStore",
    "StateDocumentTooLarge",
    "StateItem",
    "StateKeyInvalid",
    "StateNotEmpty",
    "StateStore",
    "StateStoreBusy",
    "StateTransaction",
    "StoredDocument",
    "StoredRecord",
    "import_once",
    "memory_state_store",
    "open_state_store",
]
