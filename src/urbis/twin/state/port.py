"""The durable state port: JSON documents in named collections, and append logs.

Everything Urbis keeps that is not city data (subscriptions, registrations, hosted contexts,
source definitions and their sync state, the quarantine; later parties, agreements, the
notification outbox, audit) goes through this small protocol, so one engine makes all of it
crash-safe and one export carries all of it. The protocol names no engine type: SQLite
implements it today (`state/sqlite.py`), a PostgreSQL backend can implement it when a city
runs several API nodes.

* documents: JSON objects keyed by (collection, tenant, key); `list` answers them in the order
  their keys were first put (replacing a document keeps its place);
* append logs: JSON objects keyed by (log, tenant) and a sequence number the store assigns,
  increasing and never reused, so a reader can resume after the last one it saw;
* `transaction()`: several changes that commit together or not at all; reads inside it see
  its own writes, and no other writer (thread or process) interleaves.

Tenant is the NGSI-LD tenant for per-tenant state, "" for the default tenant and for state of
the whole deployment (contexts, sources).
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final, Protocol

from urbis.twin.errors import BadRequestData, NgsiLdError, PayloadTooLarge, StateError

Document = dict[str, Any]

MAX_KEY_CHARS: Final = 1024  # an NGSI-LD id is a URI; a longer one is a mistake or an attack
MAX_TENANT_CHARS: Final = 256
MAX_DOCUMENT_BYTES: Final = 16 * 1024 * 1024  # serialised; above the API's 8 MiB body limit
_NAME: Final = re.compile(r"^[a-z][a-z0-9._/-]{0,127}$")  # collection and log names


class StateKeyInvalid(BadRequestData):
    """A key or tenant the store cannot keep (too long, empty): the caller's id is at fault."""


class StateDocumentTooLarge(PayloadTooLarge):
    """A document larger than MAX_DOCUMENT_BYTES once serialised."""


class StateStoreBusy(NgsiLdError):
    """Another process held the store's write lock longer than the store waits: retry."""

    error_type, status, title = "InternalError", 503, "State store busy"


class StateNotEmpty(StateError, RuntimeError):
    """`load` refuses a store that already holds state (restore into a new data directory)."""

    error_type, status, title = "StateNotEmpty", 409, "State store not empty"


@dataclass(frozen=True, slots=True)
class LogRecord:
    seq: int
    record: Document


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """One document with its address: what `dump` yields and `load` takes."""

    collection: str
    tenant: str
    key: str
    document: Document


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One log record with its address and sequence number."""

    log: str
    tenant: str
    seq: int
    record: Document


StateItem = StoredDocument | StoredRecord


class StateOperations(Protocol):
    """What a store and a transaction both offer; each call on the store commits by itself."""

    def get(self, collection: str, tenant: str, key: str) -> Document | None: ...

    def put(self, collection: str, tenant: str, key: str, document: Document) -> None: ...

    def delete(self, collection: str, tenant: str, key: str) -> bool:
        """True if there was a document to delete."""
        ...

    def list(self, collection: str, tenant: str) -> builtins.list[tuple[str, Document]]:
        """(key, document) pairs in the order the keys were first put."""
        ...

    def tenants(self, collection: str) -> builtins.list[str]:
        """Tenants that hold at least one document of `collection`, sorted."""
        ...

    def append(self, log: str, tenant: str, records: Sequence[Document]) -> builtins.list[int]:
        """Adds records at the end of the log; their sequence numbers, increasing."""
        ...

    def read(
        self, log: str, tenant: str, *, after: int = 0, limit: int | None = None
    ) -> builtins.list[LogRecord]:
        """Records with a sequence number above `after`, oldest first."""
        ...

    def trim(self, log: str, tenant: str, *, through: int | None = None) -> int:
        """Drops records up to sequence `through` (None: all of them); how many were dropped."""
        ...


class StateTransaction(StateOperations, Protocol):
    """Changes made through it commit together when the `with` block ends without error."""


class StateStore(StateOperations, Protocol):
    location: str  # where the state lives, for messages ("/var/lib/urbis/state.sqlite3")

    def transaction(self) -> AbstractContextManager[StateTransaction]: ...

    def dump(self) -> Iterator[StateItem]:
        """Every document (in list order) and every log record (in sequence order)."""
        ...

    def load(self, items: Iterable[StateItem]) -> int:
        """Writes a dump into this empty store in one transaction (StateNotEmpty otherwise),
        keeping the records' sequence numbers; how many items it wrote."""
        ...

    def is_empty(self) -> bool: ...

    def close(self) -> None: ...


# -- checks every backend applies ---------------------------------------------------------


def check_name(name: str, what: str) -> str:
    """Collection and log names are chosen by code, never by callers: a bad one is a bug."""
    if not _NAME.match(name):
        raise ValueError(f"invalid state {what} name {name!r}: use a-z 0-9 . _ / -")
    return name


def check_address(tenant: str, key: str) -> None:
    if len(tenant) > MAX_TENANT_CHARS:
        raise StateKeyInvalid(
            f"the tenant name is {len(tenant)} characters long; the state store keeps tenant "
            f"names of at most {MAX_TENANT_CHARS}"
        )
    if not key:
        raise StateKeyInvalid("an empty id cannot be stored")
    if len(key) > MAX_KEY_CHARS:
        raise StateKeyInvalid(
            f"the id {key[:60]!r}... is {len(key)} characters long; the state store keeps ids "
            f"of at most {MAX_KEY_CHARS} characters"
        )
    if "\x00" in key or "\x00" in tenant:
        raise StateKeyInvalid("an id with a NUL character cannot be stored")


def check_size(what: str, size: int) -> None:
    if size > MAX_DOCUMENT_BYTES:
        raise StateDocumentTooLarge(
            f"the {what} is {size:,} bytes as JSON; the state store keeps documents of at most "
            f"{MAX_DOCUMENT_BYTES:,} bytes"
        )
