"""Merging entities that several context sources hold (clauses 4.3.6, 4.5.5).

Documents here are the twin's canonical form (expanded names, lists of instances per
attribute). The rules, as the spec and the leading brokers read them:

- one entity per id: types and scopes are unioned, the attributes of every source are kept;
- two instances of one attribute with the same datasetId conflict: the one with the most recent
  `observedAt` wins, then the one with the most recent `modifiedAt`; when neither decides, the
  instance merged first wins, and local data is merged first ("local wins");
- auxiliary sources never override: their instances only fill attributes or datasetIds that
  nobody else provided;
- `createdAt` is the earliest and `modifiedAt` the latest of the parts.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

Doc = dict[str, Any]
_CORE = frozenset({"id", "type", "scope", "createdAt", "modifiedAt"})


def merge_entity(base: Doc | None, incoming: Doc, *, auxiliary: bool = False) -> Doc:
    """`incoming` merged into a copy of `base` (None: a copy of `incoming`)."""
    if base is None:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in incoming.items()}
    out = dict(base)
    out["type"] = list(dict.fromkeys([*base.get("type", []), *incoming.get("type", [])]))
    if "scope" in incoming:
        out["scope"] = list(dict.fromkeys([*base.get("scope", []), *incoming["scope"]]))
    created = [t for t in (base.get("createdAt"), incoming.get("createdAt")) if t]
    if created:
        out["createdAt"] = min(created, key=_time)
    modified = [t for t in (base.get("modifiedAt"), incoming.get("modifiedAt")) if t]
    if modified:
        out["modifiedAt"] = max(modified, key=_time)
    for name, instances in incoming.items():
        if name in _CORE or not isinstance(instances, list):
            continue
        current = out.get(name)
        out[name] = (
            list(instances) if current is None else _merge_attribute(current, instances, auxiliary)
        )
    return out


def _merge_attribute(current: list[Doc], incoming: list[Doc], auxiliary: bool) -> list[Doc]:
    merged = list(current)
    for inst in incoming:
        dataset = inst.get("datasetId")
        for i, old in enumerate(merged):
            if old.get("datasetId") == dataset:
                if not auxiliary and _newer(inst, old):
                    merged[i] = inst
                break
        else:
            merged.append(inst)
    return merged


def _newer(candidate: Doc, current: Doc) -> bool:
    """observedAt decides first, then modifiedAt; a tie keeps the current instance."""
    for member in ("observedAt", "modifiedAt"):
        a, b = candidate.get(member), current.get(member)
        if a and b and a != b:
            return _time(a) > _time(b)
        if a and not b:
            return True
        if b and not a:
            return False
    return False


def _time(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class EntityMerger:
    """Accumulates entities from several sources, in arrival order, one per id."""

    def __init__(self) -> None:
        self.entities: dict[str, Doc] = {}

    def add(self, docs: Iterable[Doc], *, auxiliary: bool = False) -> None:
        for doc in docs:
            self.entities[doc["id"]] = merge_entity(
                self.entities.get(doc["id"]), doc, auxiliary=auxiliary
            )

    def documents(self) -> list[Doc]:
        return list(self.entities.values())
