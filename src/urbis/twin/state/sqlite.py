"""The state port on SQLite (stdlib `sqlite3`): `<data dir>/state.sqlite3`, or `:memory:`.

Crash safety comes from the engine, not from us: WAL journal, `synchronous=FULL` (each commit
is on disk before the call returns), one transaction per change. Threads share one connection
under a lock; processes on the same machine share the file (WAL needs shared memory, so not
over a network file system), each write taking the database's write lock with
`BEGIN IMMEDIATE` and waiting up to BUSY_SECONDS for another process to release it.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import orjson

from urbis.twin.state.port import (
    Document,
    LogRecord,
    StateItem,
    StateNotEmpty,
    StateStoreBusy,
    StoredDocument,
    StoredRecord,
    check_address,
    check_name,
    check_size,
)

FILE_NAME: Final = "state.sqlite3"
MEMORY: Final = ":memory:"
BUSY_SECONDS: Final = 30.0
SCHEMA_VERSION: Final = 1
_PAGE: Final = 1000  # rows per read while dumping

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    collection TEXT NOT NULL,
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    document TEXT NOT NULL,
    UNIQUE (collection, tenant, key)
);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    log TEXT NOT NULL,
    tenant TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_log ON records (log, tenant, seq);
"""


def _text(what: str, document: Document) -> str:
    if not isinstance(document, dict):
        raise TypeError(f"a state {what} is a JSON object, got {type(document).__name__}")
    data = orjson.dumps(document)
    check_size(what, len(data))
    return data.decode()


class _Operations:
    """The port's operations on one connection; the caller holds the lock (and transaction)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.db = connection

    def get(self, collection: str, tenant: str, key: str) -> Document | None:
        row = self.db.execute(
            "SELECT document FROM documents WHERE collection = ? AND tenant = ? AND key = ?",
            (check_name(collection, "collection"), tenant, key),
        ).fetchone()
        return None if row is None else _loads(row[0])

    def put(self, collection: str, tenant: str, key: str, document: Document) -> None:
        check_name(collection, "collection")
        check_address(tenant, key)
        self.db.execute(
            "INSERT INTO documents (collection, tenant, key, document) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (collection, tenant, key) DO UPDATE SET document = excluded.document",
            (collection, tenant, key, _text(f"{collection} document", document)),
        )

    def delete(self, collection: str, tenant: str, key: str) -> bool:
        cursor = self.db.execute(
            "DELETE FROM documents WHERE collection = ? AND tenant = ? AND key = ?",
            (check_name(collection, "collection"), tenant, key),
        )
        return cursor.rowcount > 0

    def list(self, collection: str, tenant: str) -> builtins.list[tuple[str, Document]]:
        rows = self.db.execute(
            "SELECT key, document FROM documents WHERE collection = ? AND tenant = ? ORDER BY id",
            (check_name(collection, "collection"), tenant),
        )
        return [(key, _loads(text)) for key, text in rows]

    def tenants(self, collection: str) -> builtins.list[str]:
        rows = self.db.execute(
            "SELECT DISTINCT tenant FROM documents WHERE collection = ? ORDER BY tenant",
            (check_name(collection, "collection"),),
        )
        return [tenant for (tenant,) in rows]

    def append(self, log: str, tenant: str, records: Sequence[Document]) -> builtins.list[int]:
        check_name(log, "log")
        check_address(tenant, log)
        texts = [_text(f"{log} record", record) for record in records]
        seqs = []
        for text in texts:
            cursor = self.db.execute(
                "INSERT INTO records (log, tenant, record) VALUES (?, ?, ?)", (log, tenant, text)
            )
            assert cursor.lastrowid is not None
            seqs.append(cursor.lastrowid)
        return seqs

    def read(
        self, log: str, tenant: str, *, after: int = 0, limit: int | None = None
    ) -> builtins.list[LogRecord]:
        rows = self.db.execute(
            "SELECT seq, record FROM records WHERE log = ? AND tenant = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (check_name(log, "log"), tenant, after, -1 if limit is None else max(limit, 0)),
        )
        return [LogRecord(seq, _loads(text)) for seq, text in rows]

    def trim(self, log: str, tenant: str, *, through: int | None = None) -> int:
        query = "DELETE FROM records WHERE log = ? AND tenant = ?"
        params: tuple[object, ...] = (check_name(log, "log"), tenant)
        if through is not None:
            query, params = query + " AND seq <= ?", (*params, through)
        return self.db.execute(query, params).rowcount

    def is_empty(self) -> bool:
        documents = self.db.execute("SELECT 1 FROM documents LIMIT 1").fetchone()
        return (
            documents is None
            and self.db.execute("SELECT 1 FROM records LIMIT 1").fetchone() is None
        )

    def load(self, items: Iterable[StateItem]) -> int:
        written = 0
        for item in items:
            if isinstance(item, StoredDocument):
                self.put(item.collection, item.tenant, item.key, item.document)
            else:
                check_name(item.log, "log")
                check_address(item.tenant, item.log)
                self.db.execute(
                    "INSERT INTO records (seq, log, tenant, record) VALUES (?, ?, ?, ?)",
                    (item.seq, item.log, item.tenant, _text(f"{item.log} record", item.record)),
                )
            written += 1
        return written


def _loads(text: str) -> Document:
    value: Document = orjson.loads(text)
    return value


def _connect(target: str) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; we say BEGIN IMMEDIATE / COMMIT ourselves.
    db = sqlite3.connect(
        target, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
    )
    db.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")
    if target != MEMORY:
        db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    return db


class SqliteStateStore:
    """The state store in one SQLite database; `SqliteStateStore(MEMORY)` keeps it in memory."""

    def __init__(self, path: Path | str) -> None:
        self.location = str(path)
        if self.location != MEMORY:
            file = Path(path)
            file.parent.mkdir(parents=True, exist_ok=True)
            # Subscriptions may carry receivers' credentials: only the owner reads the state.
            os.close(os.open(file, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock = threading.RLock()
        self._depth = 0  # transactions open on the owning thread (the lock is re-entrant)
        self._open: sqlite3.Connection | None = _connect(self.location)
        with self.transaction() as tx:
            version = tx.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.location} was written by a newer Urbis (state schema {version}, "
                    f"this one knows {SCHEMA_VERSION}): upgrade Urbis to open it"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    tx.db.execute(statement)
            tx.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection (the caller holds the lock); reopened after `close`."""
        if self._open is None:
            self._open = _connect(self.location)
        return self._open

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[_Operations]:
        with self._lock:
            if self._depth:  # nested on the same thread: part of the outer transaction
                self._depth += 1
                try:
                    yield _Operations(self._db)
                finally:
                    self._depth -= 1
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                raise StateStoreBusy(
                    f"the state store {self.location} stayed locked by another process for "
                    f"{BUSY_SECONDS:.0f} s ({error}); retry"
                ) from None
            self._depth = 1
            try:
                yield _Operations(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    @contextmanager
    def _reading(self) -> Iterator[_Operations]:
        with self._lock:  # autocommit: each SELECT reads the last committed state
            yield _Operations(self._db)

    # -- the port's operations, each its own transaction --------------------------------

    def get(self, collection: str, tenant: str, key: str) -> Document | None:
        with self._reading() as ops:
            return ops.get(collection, tenant, key)

    def put(self, collection: str, tenant: str, key: str, document: Document) -> None:
        with self.transaction() as tx:
            tx.put(collection, tenant, key, document)

    def delete(self, collection: str, tenant: str, key: str) -> bool:
        with self.transaction() as tx:
            return tx.delete(collection, tenant, key)

    def list(self, collection: str, tenant: str) -> builtins.list[tuple[str, Document]]:
        with self._reading() as ops:
            return ops.list(collection, tenant)

    def tenants(self, collection: str) -> builtins.list[str]:
        with self._reading() as ops:
            return ops.tenants(collection)

    def append(self, log: str, tenant: str, records: Sequence[Document]) -> builtins.list[int]:
        with self.transaction() as tx:
            return tx.append(log, tenant, records)

    def read(
        self, log: str, tenant: str, *, after: int = 0, limit: int | None = None
    ) -> builtins.list[LogRecord]:
        with self._reading() as ops:
            return ops.read(log, tenant, after=after, limit=limit)

    def trim(self, log: str, tenant: str, *, through: int | None = None) -> int:
        with self.transaction() as tx:
            return tx.trim(log, tenant, through=through)

    # -- whole-store operations ---------------------------------------------------------

    def is_empty(self) -> bool:
        with self._reading() as ops:
            return ops.is_empty()

    def load(self, items: Iterable[StateItem]) -> int:
        with self.transaction() as tx:
            if not tx.is_empty():
                raise StateNotEmpty(f"the state store {self.location} already holds state")
            return tx.load(items)

    def dump(self) -> Iterator[StateItem]:
        """One consistent snapshot: a read transaction of its own (file) or a copy (memory)."""
        if self.location == MEMORY:
            with self._lock:
                items = builtins.list(_dump(self._db))
            yield from items
            return
        snapshot = _connect(self.location)
        try:
            snapshot.execute("BEGIN")  # WAL: this reader sees one state while writers go on
            yield from _dump(snapshot)
            snapshot.execute("COMMIT")
        finally:
            snapshot.close()

    def close(self) -> None:
        """Releases the file (a later call opens it again); a memory store keeps its state."""
        with self._lock:
            if self.location != MEMORY and self._open is not None:
                self._open.close()
                self._open = None


def _dump(db: sqlite3.Connection) -> Iterator[StateItem]:
    last = 0
    while True:
        rows = db.execute(
            "SELECT id, collection, tenant, key, document FROM documents WHERE id > ? "
            "ORDER BY id LIMIT ?",
            (last, _PAGE),
        ).fetchall()
        for row_id, collection, tenant, key, text in rows:
            last = row_id
            yield StoredDocument(collection, tenant, key, _loads(text))
        if len(rows) < _PAGE:
            break
    last = 0
    while True:
        rows = db.execute(
            "SELECT seq, log, tenant, record FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
            (last, _PAGE),
        ).fetchall()
        for seq, log, tenant, text in rows:
            last = seq
            yield StoredRecord(log, tenant, seq, _loads(text))
        if len(rows) < _PAGE:
            break


def open_state_store(data_dir: Path | None) -> SqliteStateStore:
    """The deployment's state: `<data_dir>/state.sqlite3`, or in memory without a data dir."""
    return SqliteStateStore(MEMORY if data_dir is None else Path(data_dir) / FILE_NAME)
