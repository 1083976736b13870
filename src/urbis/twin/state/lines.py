"""The state as JSON Lines: what `urbis export` writes beside the RDF and `urbis restore` reads.

One JSON object a line, readable with any tool (`jq`, `grep`):

    {"urbisState": 1, "exportedAt": "2026-03-01T10:00:00+00:00"}
    {"collection": "subscriptions", "tenant": "", "key": "urn:…", "document": {…}}
    {"log": "quarantine/lights", "tenant": "", "seq": 42, "record": {…}}
    {"end": {"documents": 12, "records": 3}}

The last line counts what came before it, so a truncated file is refused, not half restored.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any, Final

import orjson

from urbis.twin.errors import StateError
from urbis.twin.state.port import StateItem, StoredDocument, StoredRecord

FORMAT_VERSION: Final = 1


class StateFileError(StateError, ValueError):
    """A state file that is not one `write_lines` wrote (or was cut short)."""

    error_type, status, title = "StateFileError", 400, "Invalid state file"


def write_lines(items: Iterable[StateItem], out: IO[bytes]) -> tuple[int, int]:
    """Writes a header, every item and the end line; (documents, records) written."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    out.write(orjson.dumps({"urbisState": FORMAT_VERSION, "exportedAt": stamp}) + b"\n")
    documents = records = 0
    for item in items:
        if isinstance(item, StoredDocument):
            line: dict[str, Any] = {
                "collection": item.collection,
                "tenant": item.tenant,
                "key": item.key,
                "document": item.document,
            }
            documents += 1
        else:
            line = {"log": item.log, "tenant": item.tenant, "seq": item.seq, "record": item.record}
            records += 1
        out.write(orjson.dumps(line) + b"\n")
    out.write(orjson.dumps({"end": {"documents": documents, "records": records}}) + b"\n")
    return documents, records


def read_lines(lines: Iterable[bytes], where: str) -> Iterator[StateItem]:
    """The items of a state file, checked line by line; StateFileError says where it is wrong."""
    counts = {"documents": 0, "records": 0}
    started = ended = False
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if ended:
            raise StateFileError(f"{where}:{number}: lines after the end line")
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise StateFileError(f"{where}:{number}: not JSON ({error})") from None
        if not isinstance(line, dict):
            raise StateFileError(f"{where}:{number}: not a JSON object")
        if not started:
            started = True
            if line.get("urbisState") != FORMAT_VERSION:
                raise StateFileError(
                    f"{where}: not an Urbis state file of version {FORMAT_VERSION} "
                    f"(first line {raw[:80]!r})"
                )
            continue
        if "end" in line:
            if line["end"] != counts:
                raise StateFileError(
                    f"{where}:{number}: the end line counts {line['end']}, the file holds {counts}"
                )
            ended = True
            continue
        yield _item(line, f"{where}:{number}")
        counts["documents" if "collection" in line else "records"] += 1
    if not ended:
        raise StateFileError(f"{where}: no end line: the file was cut short")


def _item(line: dict[str, Any], where: str) -> StateItem:
    tenant = line.get("tenant")
    if not isinstance(tenant, str):
        raise StateFileError(f"{where}: no tenant")
    if "collection" in line:
        collection, key, document = line.get("collection"), line.get("key"), line.get("document")
        if isinstance(collection, str) and isinstance(key, str) and isinstance(document, dict):
            return StoredDocument(collection, tenant, key, document)
    elif "log" in line:
        log, seq, record = line.get("log"), line.get("seq"), line.get("record")
        if isinstance(log, str) and isinstance(seq, int) and seq > 0 and isinstance(record, dict):
            return StoredRecord(log, tenant, seq, record)
    raise StateFileError(f"{where}: neither a document nor a log record")
