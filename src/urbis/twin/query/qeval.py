"""Evaluate a q expression (twin.query.qlang) on one canonical entity document (clause 4.9).

A path reaches zero or more *targets*, one per attribute instance (datasetId) it addresses. A
term matches when any target does: `==`, the ordering operators and `~=` when any element of
the target value qualifies (arrays, object lists and language maps are sets of elements);
`!=` and `!~=` when a target contains no qualifying element, as clause 4.9 defines them for
arrays ("is not included in the target value"). A type mismatch never matches and never
raises. Values are read the way twin.rdf writes them as plain triples, so that the SPARQL
translation (twin.query.qsparql) can agree with this evaluator exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from urbis.twin.query.qlang import (
    EQUALITY_OPS,
    INT64,
    PATTERN_OPS,
    TEMPORAL_METADATA,
    And,
    Compare,
    Exists,
    Or,
    Path,
    QExpr,
    QValue,
    Range,
    Scalar,
    Temporal,
    TemporalKind,
    ValueList,
    instant,
    pattern_matches,
)

NGSI_LD = "https://uri.etsi.org/ngsi-ld/"
_TEMPORAL_TYPES: dict[str, TemporalKind] = {"DateTime": "dateTime", "Date": "date", "Time": "time"}
_TEMPORAL_TYPES.update({NGSI_LD + k: v for k, v in list(_TEMPORAL_TYPES.items())})


@dataclass(frozen=True)
class _Instant:
    kind: TemporalKind
    at: Decimal


class _Opaque:
    """A structured value, JSON, null or unparsable date: present, but equal to no q value."""


OPAQUE = _Opaque()
Element = bool | int | float | str | _Instant | _Opaque


@dataclass(frozen=True)
class _Target:
    elements: list[Element]
    uri: bool = False  # Relationship, ListRelationship, VocabProperty: only == and != apply


def evaluate(expr: QExpr, doc: dict[str, Any]) -> bool:
    """True when the canonical document `doc` satisfies `expr` (names already expanded)."""
    if isinstance(expr, And):
        return all(evaluate(item, doc) for item in expr.items)
    if isinstance(expr, Or):
        return any(evaluate(item, doc) for item in expr.items)
    targets = _targets(doc, expr.path)
    if isinstance(expr, Exists):
        return (next(targets, None) is not None) != expr.negated
    return any(_matches(expr, target) for target in targets)


# -- targets ------------------------------------------------------------------------------------


def _instances(value: Any) -> list[dict[str, Any]]:
    return [i for i in value if isinstance(i, dict)] if isinstance(value, list) else []


def _targets(doc: dict[str, Any], path: Path) -> Iterator[_Target]:
    instances = _instances(doc.get(path.attr))
    for sub in path.subs:
        instances = [s for i in instances for s in _instances(i.get(sub))]
    for inst in instances:
        target = _target(inst, path)
        if target is not None:
            yield target


def _target(inst: dict[str, Any], path: Path) -> _Target | None:
    """The target value of one instance, or None when the path does not reach one."""
    if path.meta is not None:
        if path.meta not in inst:
            return None
        raw = inst[path.meta]
        if path.meta in TEMPORAL_METADATA:
            return _Target([_temporal("dateTime", raw)])
        return _Target([raw if isinstance(raw, str) else OPAQUE])
    kind = inst.get("type", "Property")
    keys = path.keys
    if kind in ("Relationship", "ListRelationship", "VocabProperty"):
        if keys:
            return None
        member = {"Relationship": "object", "ListRelationship": "objectList"}.get(kind, "vocab")
        raw = inst.get(member)
        items = [i.get("object") if isinstance(i, dict) else i for i in _as_list(raw)]
        strings: list[Element] = [i if isinstance(i, str) else OPAQUE for i in items]
        return _Target(strings, uri=True)
    if kind == "LanguageProperty":
        return _language_target(inst.get("languageMap"), keys)
    if kind == "JsonProperty":
        if not keys:
            return _Target([OPAQUE])  # raw JSON: compared only through keys (clause 4.9 ex. 11)
        return _reached(inst.get("json"), keys)
    raw = inst.get("valueList" if kind == "ListProperty" else "value")
    return _reached(raw, keys) if keys else _Target(_elements(raw))


def _language_target(language_map: Any, keys: tuple[str, ...]) -> _Target | None:
    if not isinstance(language_map, dict) or len(keys) > 1:
        return None
    wanted = keys[0].lower() if keys else "*"
    texts = [v for k, v in language_map.items() if wanted in ("*", str(k).lower())]
    if not texts:
        return None
    items = [t for text in texts for t in _as_list(text)]
    return _Target([t if isinstance(t, str) else OPAQUE for t in items])


def _reached(value: Any, keys: tuple[str, ...]) -> _Target | None:
    """Members reached by a key path (ECMA-262 member access), through arrays element-wise."""
    current = [value]
    for key in keys:
        current = [
            item[key]
            for holder in current
            for item in _as_list(holder)
            if isinstance(item, dict) and key in item
        ]
    if not current:
        return None
    return _Target([e for v in current for e in _elements(v)])


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _elements(value: Any) -> list[Element]:
    return [_element(v) for v in _as_list(value)]


def _element(value: Any) -> Element:
    """One value as the store types it (twin.rdf.value_literal)."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):  # beyond 64 bits the store cannot compare it
        return value if INT64[0] <= value <= INT64[1] else OPAQUE
    if isinstance(value, float):
        return value if math.isfinite(value) else OPAQUE
    if isinstance(value, dict) and "@value" in value:
        inner = value["@value"]
        kind = _TEMPORAL_TYPES.get(str(value.get("@type", "")))
        if kind is not None and isinstance(inner, str):
            return _temporal(kind, inner)
        if not isinstance(inner, dict | list):
            return _element(inner)
    return OPAQUE


def _temporal(kind: TemporalKind, text: Any) -> Element:
    at = instant(kind, text) if isinstance(text, str) else None
    return OPAQUE if at is None else _Instant(kind, at)


# -- comparison -----------------------------------------------------------------------------


def _matches(expr: Compare, target: _Target) -> bool:
    op = expr.op
    if target.uri and op not in EQUALITY_OPS:
        return False  # clause 4.9: relationships match only == and !=
    value = expr.value
    if op in EQUALITY_OPS:
        found = any(_equal(e, value, target.uri) for e in target.elements)
        if target.uri and not found and expr.vocab_value is not None:
            # URIs also match the value expanded as vocabulary: a VocabProperty must (clause
            # 4.9), and for objects it only avoids false negatives (RFC 3986 section 6).
            found = any(_equal(e, expr.vocab_value, True) for e in target.elements)
        return found if op == "==" else not found
    if op in PATTERN_OPS:
        assert isinstance(value, str)
        texts = [e for e in target.elements if isinstance(e, str)]
        hit = any(pattern_matches(value, t) for t in texts)
        return hit if op == "~=" else bool(texts) and not hit
    assert not isinstance(value, Range | ValueList | bool)
    sign = {">": 1, ">=": 1, "<": -1, "<=": -1}[op]
    strict = op in (">", "<")
    for element in target.elements:
        order = _order(element, value)
        if order is not None and (order == sign or (order == 0 and not strict)):
            return True
    return False


def _equal(element: Element, value: QValue, uri: bool) -> bool:
    if isinstance(value, ValueList):
        return any(_equal(element, item, uri) for item in value.items)
    if isinstance(value, Range):
        if uri:
            return False
        low, high = _order(element, value.low), _order(element, value.high)
        return low is not None and high is not None and low >= 0 and high <= 0
    if isinstance(value, bool):
        return isinstance(element, bool) and element == value
    return _order(element, value) == 0


def _order(element: Element, value: Scalar) -> int | None:
    """-1, 0, 1 comparing element to value; None when their types do not compare."""
    a: Any
    b: Any
    if isinstance(element, bool) or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not isinstance(element, int | float):
            return None
        a, b = element, value
        if isinstance(b, int) and not INT64[0] <= b <= INT64[1]:
            b = float(b)  # as qsparql writes it
        if isinstance(a, float) or isinstance(b, float):  # as the store promotes to double
            a, b = float(a), float(b)
    elif isinstance(value, str):
        if not isinstance(element, str):
            return None
        a, b = element, value
    else:
        if not isinstance(element, _Instant) or element.kind != value.kind:
            return None
        a, b = element.at, _query_instant(value)
    return int(a > b) - int(a < b)


def _query_instant(value: Temporal) -> Decimal:
    at = instant(value.kind, value.text)
    assert at is not None, "parse_q only accepts valid dates and times"
    return at
