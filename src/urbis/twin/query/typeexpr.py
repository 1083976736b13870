"""Entity type selection (clause 4.17): `A,B` and `A|B` mean either, `A;B` both, with brackets.

Parsed into a small tree, translated to SPARQL over the `rdf:type` triples (`type_filter`) and
evaluated on a document's types (`type_matches`) with the same meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from urbis.twin.query.boolexpr import parse_boolean
from urbis.twin.query.sparql import iri


@dataclass(frozen=True)
class TypeName:
    iri: str


@dataclass(frozen=True)
class TypeAll:
    items: tuple[TypeExpr, ...]


@dataclass(frozen=True)
class TypeAny:
    items: tuple[TypeExpr, ...]


TypeExpr = TypeName | TypeAll | TypeAny


def parse_types(
    text: str, expand: Callable[[str], str], *, max_terms: int = 100, max_depth: int = 32
) -> TypeExpr:
    def atom(name: str) -> TypeExpr:
        return TypeName(expand(name))

    def all_of(items: list[TypeExpr]) -> TypeExpr:
        return TypeAll(tuple(items))

    def any_of(items: list[TypeExpr]) -> TypeExpr:
        return TypeAny(tuple(items))

    return parse_boolean(
        text,
        atom=atom,
        all_of=all_of,
        any_of=any_of,
        any_ops=",|",
        what="type selection",
        max_terms=max_terms,
        max_depth=max_depth,
    )


def type_names(expr: TypeExpr) -> list[str] | None:
    """The IRIs of a plain either-of list, or None when the expression needs more."""
    if isinstance(expr, TypeName):
        return [expr.iri]
    if isinstance(expr, TypeAny) and all(isinstance(i, TypeName) for i in expr.items):
        return [i.iri for i in expr.items if isinstance(i, TypeName)]
    return None


def type_size(expr: TypeExpr) -> int:
    """The number of type names in the selection (its share of a query's terms)."""
    if isinstance(expr, TypeName):
        return 1
    return sum(type_size(i) for i in expr.items)


def type_filter(expr: TypeExpr, var: str = "e") -> str:
    """A SPARQL boolean expression true when `?var` satisfies the selection."""
    if isinstance(expr, TypeName):
        return f"EXISTS {{ ?{var} a {iri(expr.iri)} }}"
    joiner = " && " if isinstance(expr, TypeAll) else " || "
    return "(" + joiner.join(type_filter(i, var) for i in expr.items) + ")"


def type_matches(expr: TypeExpr, types: Collection[str]) -> bool:
    """Whether an entity with these types (expanded IRIs) satisfies the selection."""
    if isinstance(expr, TypeName):
        return expr.iri in types
    if isinstance(expr, TypeAll):
        return all(type_matches(i, types) for i in expr.items)
    return any(type_matches(i, types) for i in expr.items)


def type_iris(expr: TypeExpr) -> frozenset[str]:
    """Every type the selection names, whatever the operators between them."""
    if isinstance(expr, TypeName):
        return frozenset([expr.iri])
    return frozenset().union(*(type_iris(i) for i in expr.items))
