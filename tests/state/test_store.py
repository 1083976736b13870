"""The state store's contract, on every backend: documents, append logs, transactions, limits,
threads and processes sharing one file, dump and load, the JSON Lines file."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from urbis.twin.state import (
    MAX_DOCUMENT_BYTES,
    MAX_KEY_CHARS,
    SqliteStateStore,
    StateDocumentTooLarge,
    StateKeyInvalid,
    StateNotEmpty,
    StateStore,
    StoredDocument,
    StoredRecord,
    memory_state_store,
    open_state_store,
)
from urbis.twin.state.lines import StateFileError, read_lines, write_lines


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    made = memory_state_store() if request.param == "memory" else open_state_store(tmp_path)
    yield made
    made.close()


# -- documents -------------------------------------------------------------------------------


def test_documents_by_collection_tenant_and_key(store: StateStore) -> None:
    store.put("subscriptions", "", "b", {"n": 1})
    store.put("subscriptions", "", "a", {"n": 2})
    store.put("subscriptions", "city", "a", {"n": 3})
    store.put("registrations", "", "a", {"n": 4})
    store.put("subscriptions", "", "b", {"n": 5})  # replaced in place: keeps its position
    assert store.get("subscriptions", "", "b") == {"n": 5}
    assert store.get("subscriptions", "city", "a") == {"n": 3}
    assert store.get("subscriptions", "other", "a") is None
    assert store.list("subscriptions", "") == [("b", {"n": 5}), ("a", {"n": 2})]
    assert store.tenants("subscriptions") == ["", "city"]
    assert store.delete("subscriptions", "", "b") is True
    assert store.delete("subscriptions", "", "b") is False
    assert store.list("subscriptions", "") == [("a", {"n": 2})]
    store.put("subscriptions", "", "b", {"n": 6})  # deleted then put again: last
    assert [k for k, _ in store.list("subscriptions", "")] == ["a", "b"]


def test_documents_keep_json_as_given(store: StateStore) -> None:
    doc = {"text": "é\u2028\"'", "list": [1, 2.5, None, True], "nested": {"a": {"b": []}}}
    store.put("c", "", "urn:ngsi-ld:Thing:é", doc)
    assert store.get("c", "", "urn:ngsi-ld:Thing:é") == doc


def test_a_failed_transaction_changes_nothing(store: StateStore) -> None:
    store.put("c", "", "kept", {"v": 1})
    with pytest.raises(KeyError), store.transaction() as tx:
        tx.put("c", "", "kept", {"v": 2})
        tx.put("c", "", "new", {"v": 3})
        tx.append("log", "", [{"r": 1}])
        assert tx.get("c", "", "new") == {"v": 3}  # a transaction reads its own writes
        raise KeyError("boom")
    assert store.get("c", "", "kept") == {"v": 1}
    assert store.get("c", "", "new") is None
    assert store.read("log", "") == []


def test_nested_transactions_commit_with_the_outer_one(store: StateStore) -> None:
    with pytest.raises(RuntimeError), store.transaction() as outer:
        outer.put("c", "", "a", {})
        with store.transaction() as inner:
            inner.put("c", "", "b", {})
        store.put("c", "", "c", {})  # a plain call inside joins the open transaction
        raise RuntimeError
    assert store.list("c", "") == []
    with store.transaction() as outer:
        outer.put("c", "", "a", {})
        with store.transaction() as inner:
            inner.put("c", "", "b", {})
    assert [k for k, _ in store.list("c", "")] == ["a", "b"]


# -- append logs -----------------------------------------------------------------------------


def test_logs_append_read_from_a_sequence_and_trim(store: StateStore) -> None:
    first = store.append("outbox", "", [{"n": 1}, {"n": 2}, {"n": 3}])
    other = store.append("outbox", "city", [{"n": 10}])
    assert first == sorted(first) and len(set(first + other)) == 4
    assert [r.record for r in store.read("outbox", "")] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [r.record["n"] for r in store.read("outbox", "", after=first[0])] == [2, 3]
    assert [r.record["n"] for r in store.read("outbox", "", after=first[0], limit=1)] == [2]
    assert store.trim("outbox", "", through=first[1]) == 2
    assert [r.seq for r in store.read("outbox", "")] == [first[2]]
    later = store.append("outbox", "", [{"n": 4}])
    assert later[0] > max(first + other)  # sequence numbers are never reused after a trim
    assert store.trim("outbox", "") == 2
    assert store.read("outbox", "") == []
    assert [r.record for r in store.read("outbox", "city")] == [{"n": 10}]


# -- limits ----------------------------------------------------------------------------------


def test_limits_are_errors_a_caller_can_read(store: StateStore) -> None:
    long_key = "urn:ngsi-ld:Subscription:" + "x" * MAX_KEY_CHARS
    with pytest.raises(StateKeyInvalid) as too_long:
        store.put("subscriptions", "", long_key, {})
    assert too_long.value.status == 400
    assert f"at most {MAX_KEY_CHARS} characters" in too_long.value.detail
    assert str(len(long_key)) in too_long.value.detail
    with pytest.raises(StateKeyInvalid):
        store.put("subscriptions", "", "", {})
    big = {"blob": "x" * MAX_DOCUMENT_BYTES}
    with pytest.raises(StateDocumentTooLarge) as too_big:
        store.put("contexts", "", "k", big)
    assert too_big.value.status == 413
    assert "contexts document" in too_big.value.detail
    assert f"{MAX_DOCUMENT_BYTES:,} bytes" in too_big.value.detail
    with pytest.raises(StateDocumentTooLarge):
        store.append("log", "", [{"r": 1}, big])
    assert store.read("log", "") == []  # the batch is refused whole
    with pytest.raises(ValueError, match="invalid state collection name"):
        store.put("Bad Name", "", "k", {})
    with pytest.raises(TypeError, match="JSON object"):
        store.put("c", "", "k", ["not", "an", "object"])  # type: ignore[arg-type]


# -- dump and load ---------------------------------------------------------------------------


def test_dump_then_load_gives_the_same_state(store: StateStore) -> None:
    store.put("b", "", "k2", {"v": 2})
    store.put("a", "t", "k1", {"v": 1})
    seqs = store.append("log", "", [{"r": 1}, {"r": 2}])
    store.trim("log", "", through=seqs[0])
    items = list(store.dump())
    assert items == [
        StoredDocument("b", "", "k2", {"v": 2}),
        StoredDocument("a", "t", "k1", {"v": 1}),
        StoredRecord("log", "", seqs[1], {"r": 2}),
    ]
    copy = memory_state_store()
    assert copy.load(items) == 3
    assert list(copy.dump()) == items
    assert copy.append("log", "", [{"r": 3}])[0] > seqs[1]  # the copy continues the sequence
    with pytest.raises(StateNotEmpty):
        copy.load(items)


def test_json_lines_round_trip_and_a_cut_file_is_refused(store: StateStore) -> None:
    store.put("subscriptions", "city", "urn:x", {"body": {"id": "urn:x"}})
    store.append("quarantine/lights", "", [{"reason": "bad"}])
    out = io.BytesIO()
    assert write_lines(store.dump(), out) == (1, 1)
    lines = out.getvalue().splitlines(keepends=True)
    assert list(read_lines(lines, "s.jsonl")) == list(store.dump())
    with pytest.raises(StateFileError, match="cut short"):
        list(read_lines(lines[:-1], "s.jsonl"))
    with pytest.raises(StateFileError, match="end line counts"):
        list(read_lines([lines[0], lines[1], lines[3]], "s.jsonl"))
    with pytest.raises(StateFileError, match="not an Urbis state file"):
        list(read_lines(lines[1:], "s.jsonl"))
    target = memory_state_store()
    with pytest.raises(StateFileError):
        target.load(read_lines(lines[:-1], "s.jsonl"))
    assert target.is_empty()  # nothing of a refused file is written


# -- the SQLite file -------------------------------------------------------------------------


def test_the_file_is_private_and_survives_reopening(tmp_path: Path) -> None:
    first = open_state_store(tmp_path)
    first.put("contexts", "", "k", {"v": 1})
    first.close()
    mode = stat.S_IMODE(os.stat(tmp_path / "state.sqlite3").st_mode)
    assert mode == 0o600  # subscriptions may hold receivers' credentials
    assert first.get("contexts", "", "k") == {"v": 1}  # a closed store opens again on use
    assert open_state_store(tmp_path).get("contexts", "", "k") == {"v": 1}


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    open_state_store(tmp_path).close()
    import sqlite3

    db = sqlite3.connect(tmp_path / "state.sqlite3")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(RuntimeError, match="newer Urbis"):
        SqliteStateStore(tmp_path / "state.sqlite3")


def test_threads_share_one_store(tmp_path: Path) -> None:
    shared = open_state_store(tmp_path)

    def writer(n: int) -> None:
        for i in range(50):
            with shared.transaction() as tx:
                count = tx.get("counters", "", "total") or {"n": 0}
                tx.put("counters", "", "total", {"n": count["n"] + 1})
                tx.put("items", "", f"{n}-{i}", {"i": i})
            shared.append("log", "", [{"n": n, "i": i}])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert shared.get("counters", "", "total") == {"n": 300}  # no lost read-modify-write
    assert len(shared.list("items", "")) == 300
    assert len(shared.read("log", "")) == 300


WRITER = """
import sys
from pathlib import Path
from urbis.twin.state import open_state_store

store = open_state_store(Path(sys.argv[1]))
name = sys.argv[2]
for i in range(100):
    with store.transaction() as tx:
        count = tx.get("counters", "", "total") or {"n": 0}
        tx.put("counters", "", "total", {"n": count["n"] + 1})
    store.append("log", "", [{"writer": name, "i": i}])
"""


def test_processes_share_one_file(tmp_path: Path) -> None:
    open_state_store(tmp_path).close()
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(n)]) for n in range(3)
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    store = open_state_store(tmp_path)
    assert store.get("counters", "", "total") == {"n": 300}  # each increment under the lock
    records = store.read("log", "")
    assert len(records) == 300 and len({r.seq for r in records}) == 300
    for name in "012":
        mine = [r.record["i"] for r in records if r.record["writer"] == name]
        assert mine == list(range(100))  # each process's appends in its order
