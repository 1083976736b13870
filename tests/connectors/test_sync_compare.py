"""The sync engine's fast paths: unchanged entities recognised by text, batches written while
the next is prepared, the garbage collector paused only while syncs run."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.connectors.test_framework import ScriptedConnector, add, light, manager
from urbis.connectors.sync import SyncManager
from urbis.twin.changes import WriteContext
from urbis.twin.rdf import dump_document
from urbis.twin.writes import content, content_text, same_content_text

__all__ = ["manager"]  # the fixture, shared with the framework's tests

SYSTEM = ["createdAt", "modifiedAt", "deletedAt", "instanceId"]
keys = st.sampled_from(["id", "type", "value", "a", "createdAt", "modifiedAt", "x:y", 'q"'])
texts = st.text(alphabet='ab"\\:,{}createdAt', max_size=12)
leaves = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), texts)
documents = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(documents, documents)
def test_equal_texts_imply_equal_content(a: Any, b: Any) -> None:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return
    if same_content_text(dump_document(a), b):
        assert content(a) == content(b)


clean = st.text(alphabet="0123456789-:TZ.", max_size=12)  # timestamps as the twin writes them


@settings(max_examples=200, deadline=None)
@given(documents, st.lists(clean, min_size=1, max_size=4), st.lists(clean, min_size=1))
def test_new_timestamps_alone_keep_texts_equal(doc: Any, old: list[str], new: list[str]) -> None:
    if not isinstance(doc, dict):
        return

    def restamp(value: Any, stamps: list[str], n: int = 0) -> Any:
        if isinstance(value, dict):
            return {
                k: stamps[n % len(stamps)] if k in SYSTEM else restamp(v, stamps, n + 1)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [restamp(v, stamps, n + 1) for v in value]
        return value

    stored, incoming = restamp(doc, old), restamp(doc, new)
    assert content(stored) == content(incoming)
    assert same_content_text(dump_document(stored), incoming)


def test_a_value_that_looks_like_a_timestamp_member_is_content() -> None:
    old = {"id": "urn:x:1", "a": [{"value": '"createdAt":"1"', "createdAt": "t0"}]}
    new = {"id": "urn:x:1", "a": [{"value": '"createdAt":"2"', "createdAt": "t1"}]}
    assert not same_content_text(dump_document(old), new)
    assert content_text(dump_document(old)) == (
        '{"id":"urn:x:1","a":[{"value":"\\"createdAt\\":\\"1\\""}]}'
    )


def test_batches_are_booked_in_order_and_gc_is_back_on(manager: SyncManager) -> None:
    assert gc.isenabled()
    add(manager, "lights", [light(n) for n in range(1, 6)])  # batches of 2: 2 + 2 + 1
    seen: list[int] = []
    report = manager.sync("lights", progress=seen.append)
    assert (report.status, report.created) == ("ok", 5)
    assert seen == [2, 4, 5]
    assert manager.state.get("lights", "journal") is None
    assert gc.isenabled()
    ids = [f"urn:ngsi-ld:Streetlight:{n}" for n in range(1, 6)]
    assert set(manager.twin.tenant("").get_many(ids)) == set(ids)


def test_a_crash_books_the_batch_already_written_and_restores_gc(manager: SyncManager) -> None:
    add(manager, "lights", [light(n) for n in range(1, 6)])
    ScriptedConnector.CRASH_AFTER["lights"] = 3  # batch [1, 2] is written, then the crash
    with pytest.raises(KeyboardInterrupt):
        manager.sync("lights")
    assert gc.isenabled()
    journal = manager.state.get("lights", "journal")
    assert journal is not None and journal["batches"] == 1 and journal["records"] == 2
    found = manager.twin.tenant("").get_many([f"urn:ngsi-ld:Streetlight:{n}" for n in range(1, 4)])
    assert set(found) == {"urn:ngsi-ld:Streetlight:1", "urn:ngsi-ld:Streetlight:2"}


def test_same_content_in_another_key_order_is_unchanged(manager: SyncManager) -> None:
    add(manager, "lights", [light(1)])
    manager.sync("lights")
    service = manager.twin.tenant("")
    entity_id = "urn:ngsi-ld:Streetlight:1"
    old, _ = service.get_many([entity_id])[entity_id]
    reordered = dict(reversed(list(old.items())))
    service.replace(entity_id, reordered, context=WriteContext(reason="test"))
    assert service.store.documents([entity_id])[entity_id][0] != dump_document(old)
    report = manager.sync("lights")
    assert (report.created, report.updated, report.unchanged) == (0, 0, 1)
    ScriptedConnector.SCRIPT["lights"] = [light(1, status="broken")]
    changed = manager.sync("lights")
    assert (changed.updated, changed.unchanged) == (1, 0)
