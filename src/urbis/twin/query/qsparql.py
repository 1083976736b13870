"""Translate a q expression to a SPARQL FILTER over the plain current-value triples.

The filter reads only `<e> <attr> ?o` triples (ontology/README.md), so it decides a term exactly
when the term is about a top-level attribute's value and the triples carry what the evaluator
looks at. Everything else (metadata, sub-attributes, keys, `!=`, `!~=`) becomes a SUPERSET
condition with `exact=False`, and the caller keeps the candidates that twin.query.qeval accepts.

Exactness relies on what twin.rdf writes: one triple per comparable element of each attribute
instance (typed as in qeval._element), and at least one triple per attribute instance.
Per-element tests are guarded by type checks (and COALESCE) so that they never raise a SPARQL
error, which keeps `!` and `||` around them two-valued.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from urbis.ontology import ns
from urbis.twin.iri import valid_iri
from urbis.twin.query.qlang import (
    EQUALITY_OPS,
    INT64,
    ORDER_OPS,
    And,
    Compare,
    Exists,
    Op,
    Or,
    Path,
    QExpr,
    QValue,
    Range,
    Scalar,
    Temporal,
    ValueList,
    xsd_lexical,
)
from urbis.twin.query.sparql import string

_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Predicates the store also writes for other purposes than attribute values.
_RESERVED = frozenset({ns.RDF + "type", ns.GEO + "hasGeometry"})
_GEOMETRY_NODES = "urn:urbis:geometry:"
_XSD_STRING = f"<{ns.XSD}string>"
_RDF_LANG_STRING = f"<{ns.RDF}langString>"


@dataclass(frozen=True)
class SparqlFilter:
    """A SPARQL boolean expression over `?<entity_var>`; a superset when not `exact`."""

    expression: str
    exact: bool


def to_sparql(expr: QExpr, *, entity_var: str = "e") -> SparqlFilter:
    """The FILTER expression for `expr` (names already expanded with qlang.expand_q)."""
    return _Translator(entity_var).translate(expr)


def simple_patterns(expr: QExpr, *, entity_var: str = "e") -> str | None:
    """Triple patterns and FILTERs for an AND of exact, positive-value terms, else None.

    The result goes into a WHERE clause next to the caller's patterns; it may repeat an entity
    (one row per matching value), so the caller selects DISTINCT.
    """
    translator = _Translator(entity_var)
    parts: list[str] = []
    for item in expr.items if isinstance(expr, And) else (expr,):
        if isinstance(item, And | Or) or not translator.decidable(item.path):
            return None
        if isinstance(item, Exists):
            triple = translator.triple(item.path.attr)
            parts.append(f"FILTER NOT EXISTS {{ {triple} }}" if item.negated else triple + " .")
            continue
        if item.op not in (*ORDER_OPS, "==", "~="):
            return None
        var = translator.fresh()
        condition, exact = translator.condition(var, item)
        if not exact:
            return None
        parts.append(f"{translator.triple(item.path.attr, var)} . FILTER({condition})")
    return " ".join(parts)


class _Translator:
    def __init__(self, entity_var: str) -> None:
        if not _VAR.fullmatch(entity_var):
            raise ValueError(f"not a SPARQL variable name: {entity_var!r}")
        self.entity = "?" + entity_var
        self.count = 0

    def fresh(self) -> str:
        """A variable of this translation only, distinct from the caller's names."""
        self.count += 1
        return f"{self.entity}_q{self.count}"

    def triple(self, attr: str, var: str | None = None) -> str:
        return f"{self.entity} <{attr}> {var or self.fresh()}"

    @staticmethod
    def decidable(path: Path) -> bool:
        """The plain triples hold exactly this path's values."""
        attr = path.attr
        reserved = attr in _RESERVED or attr.startswith(ns.URBIS)
        return path.plain and valid_iri(attr) and not reserved

    def translate(self, expr: QExpr) -> SparqlFilter:
        if isinstance(expr, And | Or):
            parts = [self.translate(i) for i in expr.items]
            joiner = " && " if isinstance(expr, And) else " || "
            text = "(" + joiner.join(p.expression for p in parts) + ")"
            return SparqlFilter(text, all(p.exact for p in parts))
        if not valid_iri(expr.path.attr):
            # The store cannot hold such an attribute, so no entity has it.
            absent = isinstance(expr, Exists) and expr.negated
            return SparqlFilter("true" if absent else "false", True)
        if isinstance(expr, Exists):
            return self.exists(expr)
        return self.compare(expr)

    def exists(self, expr: Exists) -> SparqlFilter:
        pattern = f"EXISTS {{ {self.triple(expr.path.attr)} }}"
        if self.decidable(expr.path):
            return SparqlFilter("NOT " + pattern if expr.negated else pattern, True)
        # The attribute must exist for its sub-parts to; nothing narrows a negation.
        return SparqlFilter("true" if expr.negated else pattern, False)

    def compare(self, expr: Compare) -> SparqlFilter:
        var = self.fresh()
        triple = self.triple(expr.path.attr, var)
        anything = SparqlFilter(f"EXISTS {{ {triple} }}", False)
        if not self.decidable(expr.path):
            return anything
        if expr.op == "!~=":
            # Per instance in the evaluator; any non-matching string is a superset of that.
            test = f"{_is_text(var)} && !REGEX(STR({var}), {string(str(expr.value))})"
            return SparqlFilter(f"EXISTS {{ {triple} FILTER({test}) }}", False)
        condition, exact = self.condition(var, expr)
        if expr.op == "!=":
            # "Not included" holds per instance, which the flat triples cannot see; a value
            # that is not equal is a superset as long as the equality test is exact.
            if not exact:
                return anything
            return SparqlFilter(f"EXISTS {{ {triple} FILTER(!{condition}) }}", False)
        return SparqlFilter(f"EXISTS {{ {triple} FILTER({condition}) }}", exact)

    def condition(self, var: str, expr: Compare) -> tuple[str, bool]:
        """A per-value test of `var` and whether it agrees with the evaluator exactly."""
        if expr.op in EQUALITY_OPS:
            return _equal(var, expr.value, expr.vocab_value)
        if expr.op == "~=":
            return f"({_is_text(var)} && REGEX(STR({var}), {string(str(expr.value))}))", True
        assert not isinstance(expr.value, bool | Range | ValueList)
        return _order(var, expr.op, expr.value), True


def _equal(var: str, value: QValue, vocab: QValue | None) -> tuple[str, bool]:
    if isinstance(value, ValueList):
        vocab_items = vocab.items if isinstance(vocab, ValueList) else (None,) * len(value.items)
        parts = [_equal(var, i, v) for i, v in zip(value.items, vocab_items, strict=True)]
        return "(" + " || ".join(p for p, _ in parts) + ")", all(e for _, e in parts)
    if isinstance(value, Range):
        return f"({_order(var, '>=', value.low)} && {_order(var, '<=', value.high)})", True
    if isinstance(value, bool):
        return f"sameTerm({var}, {_literal(value)})", True
    if isinstance(value, str):
        return _equal_text(var, value, vocab if isinstance(vocab, str) else None)
    return _order(var, "=", value), True


def _equal_text(var: str, value: str, vocab: str | None) -> tuple[str, bool]:
    """A string equals string literals, language-tagged ones, and IRIs (objects, vocab)."""
    text = string(value)
    parts = [
        f"sameTerm({var}, {text})",
        f'(isLiteral({var}) && lang({var}) != "" && STR({var}) = {text})',
    ]
    exact = True
    for iri in dict.fromkeys((value, vocab or value)):
        if valid_iri(iri):
            parts.append(f"sameTerm({var}, <{iri}>)")
            exact = exact and not iri.startswith(_GEOMETRY_NODES)  # GeoProperty nodes
    return "(" + " || ".join(parts) + ")", exact


def _order(var: str, op: Op | str, value: Scalar) -> str:
    """`var op value` when var holds a value of value's type, else false (never an error)."""
    sparql_op = "=" if op == "==" else op
    literal = _literal(value)
    if isinstance(value, Temporal):
        datatype = f"<{ns.XSD}{value.kind}>"
        naive_as_utc = f'IF(tz({var}) = "", STRDT(CONCAT(STR({var}), "Z"), {datatype}), {var})'
        return (
            f"(isLiteral({var}) && datatype({var}) = {datatype} && "
            f"COALESCE({naive_as_utc} {sparql_op} {literal}, false))"
        )
    if isinstance(value, str):
        return f"({_is_text(var)} && STR({var}) {sparql_op} {literal})"
    return f"(isNumeric({var}) && {var} {sparql_op} {literal})"


def _is_text(var: str) -> str:
    return (
        f"isLiteral({var}) && (datatype({var}) = {_XSD_STRING} || "
        f"datatype({var}) = {_RDF_LANG_STRING})"
    )


def _literal(value: Scalar) -> str:
    if isinstance(value, bool):
        return f'"{str(value).lower()}"^^<{ns.XSD}boolean>'
    if isinstance(value, int) and INT64[0] <= value <= INT64[1]:
        return f'"{value}"^^<{ns.XSD}integer>'
    if isinstance(value, int | float):  # the store's integers are 64-bit
        return f'"{float(value)!r}"^^<{ns.XSD}double>'
    if isinstance(value, Temporal):
        return f'"{xsd_lexical(value.kind, value.text)}"^^<{ns.XSD}{value.kind}>'
    return string(value)
