"""NGSI-LD write semantics: how each write mode turns the stored entity into the new one.

Pure functions over documents. `EntityService` (twin/entities.py) runs them under the tenant's
write lock and commits what they return, so the semantics of a mode live here once, whoever
writes: the HTTP routes, the connectors, the demo.

* attribute-level operations (`append_attributes`, `update_attributes`, `partial_update`,
  `replace_attribute`, `delete_attribute`, `merge_entity`) change a copy of one document;
* batch operations (`create_op`, `upsert_op`, `update_op`, `merge_op`, `delete_op`) map an
  incoming document and the entity the batch found (`Current`, or None) to an `Outcome`: the
  new document, None to delete it, or `KEEP` when there is nothing to write.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from urbis.twin.errors import AlreadyExists, BadRequestData, ResourceNotFound
from urbis.twin.model import NULL_URI, SYSTEM_MEMBERS, VALUE_MEMBER, now_iso
from urbis.twin.rdf import dump_document, load_document

Doc = dict[str, Any]
VALUE_MEMBERS = frozenset(VALUE_MEMBER.values())
UpsertMode = Literal["update", "replace"]


class Keep(Enum):
    """An operation's answer when the entity is already as it should be: nothing is written."""

    KEEP = "keep"


KEEP = Keep.KEEP
Outcome = Doc | None | Keep


class Current:
    """An entity as a batch found it: its dataset graph and its document, decoded on first use
    (a re-sync compares the stored text, and most unchanged entities are never decoded)."""

    __slots__ = ("_doc", "graph", "text")

    def __init__(self, graph: str, *, text: str | None = None, doc: Doc | None = None) -> None:
        self.graph = graph
        self.text = text  # the stored JSON text; None once the batch changed the entity
        self._doc = doc

    @property
    def doc(self) -> Doc:
        if self._doc is None:
            assert self.text is not None
            self._doc = load_document(self.text)
        return self._doc


Operation = Callable[[Doc, Current | None], Outcome]


@dataclass
class UpdateResult:
    """Attributes updated and not updated (UpdateResult, clause 5.2.18)."""

    updated: list[str] = field(default_factory=list)
    not_updated: list[tuple[str, str]] = field(default_factory=list)


def copy_document(doc: Doc) -> Doc:
    """A deep copy to change in place (what the store would give back)."""
    return load_document(dump_document(doc))


# -- batch operations ---------------------------------------------------------------------------


def create_op(new: Doc, current: Current | None) -> Outcome:
    """POST /entityOperations/create: an entity that exists is an error."""
    if current is not None:
        raise AlreadyExists(f"entity {new['id']!r} already exists")
    return new


def upsert_op(
    mode: UpsertMode | Callable[[Doc], UpsertMode],
    *,
    graph: str,
    idempotent: bool = False,
    own_graph: bool = False,
) -> Operation:
    """POST /entityOperations/upsert; every connector writes through it too.

    `mode` (or, per document, what `mode(doc)` says): "update" adds or overwrites the
    attributes sent and keeps the others (FIWARE IoT agents, `options=update`); "replace"
    writes the new content, keeping `createdAt`. A new entity is created either way.
    `idempotent` (connectors): an entity whose content would not change is not written
    (`KEEP`), and a replace keeps the timestamps of attribute instances whose content is the
    same. `own_graph`: a replace refuses an entity of another dataset than `graph`, so a
    source never takes over another source's entity (an update may change it in place).
    """

    def upsert(new: Doc, current: Current | None) -> Outcome:
        if current is None:
            return new
        chosen = mode(new) if callable(mode) else mode
        if chosen == "update":
            return _add_attributes(new, current.doc, idempotent=idempotent)
        if own_graph and current.graph != graph:
            raise BadRequestData(
                f"entity {new['id']} belongs to dataset {current.graph}, not to {graph}: "
                "a replace would take it over"
            )
        if idempotent:
            if current.text is not None and same_content_text(current.text, new):
                return KEEP  # the common case of a re-sync: no JSON decoded
            if content(current.doc) == content(new):
                return KEEP
            return carry_timestamps(current.doc, new)
        new["createdAt"] = current.doc.get("createdAt", new["createdAt"])
        return new

    return upsert


def _add_attributes(new: Doc, existing: Doc, *, idempotent: bool) -> Outcome:
    attrs = dict(attribute_items(new))
    types = list(dict.fromkeys([*existing["type"], *new["type"]]))
    if (
        idempotent
        and types == existing["type"]
        and all(content(existing.get(name)) == content(given) for name, given in attrs.items())
    ):
        return KEEP
    doc = dict(existing)
    doc["type"] = types
    append_attributes(doc, attrs, overwrite=True, now=new.get("modifiedAt") or now_iso())
    return doc


def update_op(*, overwrite: bool, now: str) -> Operation:
    """POST /entityOperations/update: attributes of existing entities; with `overwrite`
    False (noOverwrite) only attributes the entity does not have yet are added."""

    def update(new: Doc, current: Current | None) -> Outcome:
        if current is None:
            raise ResourceNotFound(f"entity {new['id']!r} not found")
        doc = dict(current.doc)
        attrs = dict(attribute_items(new))
        if not overwrite:
            append_attributes(doc, attrs, overwrite=False, now=now)
            return doc
        outcome = update_attributes(doc, attrs, now=now)
        if outcome.not_updated and not outcome.updated:
            names = ", ".join(n for n, _ in outcome.not_updated)
            raise ResourceNotFound(f"entity {new['id']!r} has none of: {names}")
        return doc

    return update


def merge_op(*, now: str) -> Operation:
    """POST /entityOperations/merge: merge-patch of existing entities."""

    def merge(patch: Doc, current: Current | None) -> Outcome:
        if current is None:
            raise ResourceNotFound(f"entity {patch['id']!r} not found")
        doc = dict(current.doc)
        merge_entity(doc, patch, now=now)
        return doc

    return merge


def delete_op(target: Doc, current: Current | None) -> Outcome:
    """POST /entityOperations/delete: an entity that does not exist is an error."""
    if current is None:
        raise ResourceNotFound(f"entity {target['id']!r} not found")
    return None


# -- comparing documents (connectors write only what changed) ---------------------------------


def content(value: Any) -> Any:
    """A document without its system members (createdAt, modifiedAt...), to compare content."""
    if isinstance(value, dict):
        return {k: content(v) for k, v in value.items() if k not in SYSTEM_MEMBERS}
    if isinstance(value, list):
        return [content(v) for v in value]
    return value


# A system member with a string value, as orjson writes it in a stored document. Inside a JSON
# string a quote is always escaped, so this only ever matches a real member.
_SYSTEM_MEMBER_TEXT = re.compile(r',?"(?:' + "|".join(sorted(SYSTEM_MEMBERS)) + r')":"[^"\\]*"')


def content_text(text: str) -> str:
    """A stored document's JSON text without its system members (the text form of `content`).

    Equal results imply equal `content`; different ones may still be equal content (other
    key order, a system member that is not a string), so callers decode and compare then.
    """
    return _SYSTEM_MEMBER_TEXT.sub("", text)


def same_content_text(stored: str, doc: Doc) -> bool:
    """`content(load_document(stored)) == content(doc)` when True, without decoding `stored`."""
    return content_text(stored) == content_text(dump_document(doc))


def carry_timestamps(old: Doc, new: Doc) -> Doc:
    """Keep createdAt, and the timestamps of attribute instances whose content is the same."""
    new["createdAt"] = old.get("createdAt", new.get("createdAt"))
    for name, instances in new.items():
        before = old.get(name)
        same_kind = isinstance(instances, list) and isinstance(before, list) and name != "type"
        if same_kind and content(before) == content(instances):
            new[name] = before
    return new


# -- attribute-level operations -----------------------------------------------------------------


def stamp(doc: Doc, now: str) -> None:
    doc["modifiedAt"] = now


def attribute_items(doc: Doc) -> Iterable[tuple[str, list[Doc]]]:
    return ((k, v) for k, v in doc.items() if isinstance(v, list) and k not in ("type", "scope"))


def upsert_instances(current: list[Doc], incoming: list[Doc], *, keep_created: bool) -> list[Doc]:
    """Replace instances with the same datasetId, keep the others (clause 5.6.3)."""
    merged = list(current)
    for inst in incoming:
        dataset = inst.get("datasetId")
        for i, old in enumerate(merged):
            if old.get("datasetId") == dataset:
                if keep_created and "createdAt" in old:
                    inst["createdAt"] = old["createdAt"]
                merged[i] = inst
                break
        else:
            merged.append(inst)
    return merged


def append_attributes(doc: Doc, attrs: Doc, *, overwrite: bool, now: str) -> UpdateResult:
    """POST /entities/{id}/attrs and upsert with options=update."""
    result = UpdateResult()
    for name, instances in attrs.items():
        current = doc.get(name)
        if current is not None and not overwrite:
            existing = {i.get("datasetId") for i in current}
            fresh = [i for i in instances if i.get("datasetId") not in existing]
            if not fresh:
                result.not_updated.append((name, "attribute exists and noOverwrite is set"))
                continue
            instances = fresh
        doc[name] = upsert_instances(current or [], instances, keep_created=True)
        result.updated.append(name)
    stamp(doc, now)
    return result


def update_attributes(doc: Doc, attrs: Doc, *, now: str) -> UpdateResult:
    """PATCH /entities/{id}/attrs: only attributes (and datasetIds) that exist are updated."""
    result = UpdateResult()
    for name, instances in attrs.items():
        current = doc.get(name)
        if current is None:
            result.not_updated.append((name, "attribute does not exist"))
            continue
        existing = {i.get("datasetId") for i in current}
        known = [i for i in instances if i.get("datasetId") in existing]
        if not known:
            result.not_updated.append((name, "no instance with this datasetId"))
            continue
        doc[name] = upsert_instances(current, known, keep_created=True)
        result.updated.append(name)
    stamp(doc, now)
    return result


def merge_instance(old: Doc, patch: Doc) -> Doc | None:
    """Merge-patch of one instance (clause 5.6.17): given members replace, null deletes."""
    if _is_null(patch):  # deletes the instance whatever else it carries (datasetId, observedAt)
        return None
    merged = dict(old)
    if patch.get("type") and patch["type"] != old.get("type"):
        merged = {k: v for k, v in merged.items() if k not in VALUE_MEMBERS}
    for key, value in patch.items():
        if key == "createdAt":
            continue
        if isinstance(value, list) and key not in ("type",) and ":" in key:
            sub = merged.get(key)
            merged[key] = merge_attribute(sub, value) if sub else value
            if not merged[key]:
                del merged[key]
        elif value == NULL_URI:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def merge_attribute(current: list[Doc], patch: list[Doc]) -> list[Doc]:
    out = list(current)
    for inst in patch:
        for i, old in enumerate(out):
            if old.get("datasetId") == inst.get("datasetId"):
                merged = merge_instance(old, inst)
                if merged is None:
                    out.pop(i)
                else:
                    out[i] = merged
                break
        else:
            if not _is_null(inst):
                out.append(inst)
    return out


def merge_entity(doc: Doc, patch: Doc, *, now: str) -> None:
    """PATCH /entities/{id} and batch merge: merge-patch semantics over attributes."""
    for name, instances in patch.items():
        if name in ("id", "type", "scope", "createdAt", "modifiedAt"):
            continue
        current = doc.get(name)
        merged = (
            merge_attribute(current, instances)
            if current
            else [i for i in instances if not _is_null(i)]
        )
        if merged:
            doc[name] = merged
        else:
            doc.pop(name, None)
    if "type" in patch:
        doc["type"] = list(dict.fromkeys(doc["type"] + patch["type"]))
    if "scope" in patch:
        doc["scope"] = patch["scope"]
    stamp(doc, now)


def _is_null(inst: Doc) -> bool:
    return any(inst.get(m) == NULL_URI for m in VALUE_MEMBERS)


def delete_attribute(
    doc: Doc, name: str, *, dataset_id: str | None, delete_all: bool, now: str
) -> None:
    """DELETE /entities/{id}/attrs/{attr} (clause 5.6.5)."""
    current = doc.get(name)
    if not isinstance(current, list) or name in ("type", "scope"):
        raise ResourceNotFound(f"attribute {name!r} not found")
    if delete_all:
        del doc[name]
    else:
        kept = [i for i in current if i.get("datasetId") != dataset_id]
        if len(kept) == len(current):
            which = (
                f"with datasetId {dataset_id!r}" if dataset_id else "without datasetId (default)"
            )
            raise ResourceNotFound(f"attribute {name!r} has no instance {which}")
        if kept:
            doc[name] = kept
        else:
            del doc[name]
    stamp(doc, now)


def partial_update(doc: Doc, name: str, patch: list[Doc], *, now: str) -> None:
    """PATCH /entities/{id}/attrs/{attr}: merge the given members into the existing instance."""
    current = doc.get(name)
    if not isinstance(current, list):
        raise ResourceNotFound(f"attribute {name!r} not found")
    for inst in patch:
        target = next((o for o in current if o.get("datasetId") == inst.get("datasetId")), None)
        if target is None:
            raise ResourceNotFound(
                f"attribute {name!r} has no instance with datasetId {inst.get('datasetId')!r}"
            )
        if inst.get("type") and inst["type"] != target.get("type") and not _is_null(inst):
            raise BadRequestData(
                f"attribute {name!r} is a {target.get('type')}, not a {inst['type']}"
            )
    doc[name] = merge_attribute(current, patch)
    if not doc[name]:  # its last instance deleted by urn:ngsi-ld:null: the attribute goes
        del doc[name]
    for inst in doc.get(name, ()):
        inst["modifiedAt"] = now
    stamp(doc, now)


def replace_attribute(doc: Doc, name: str, instances: list[Doc], *, label: str, now: str) -> None:
    """PUT /entities/{id}/attrs/{attr}: the attribute's instances replaced by the given ones;
    `label` names the attribute as the client wrote it (in the error)."""
    if name not in doc:
        raise ResourceNotFound(f"attribute {label!r} not found")
    doc[name] = instances
    stamp(doc, now)
