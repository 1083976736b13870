"""Entity type selection (clause 4.17): `A,B` and `A|B` mean either, `A;B` both, with brackets.

Parsed into a small tree and translated to SPARQL over the `rdf:type` triples.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from twin.errors import BadRequestData
from twin.query.sparql import iri

_TOKEN = re.compile(r"\s*([(),;|]|[^(),;|\s]+)")


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


def parse_types(text: str, expand: Callable[[str], str]) -> TypeExpr:
    tokens = [m.group(1) for m in _TOKEN.finditer(text)]
    if not tokens or "".join(tokens) != re.sub(r"\s+", "", text):
        raise BadRequestData(f"invalid type selection {text!r}")
    pos = 0

    def disjunction() -> TypeExpr:
        nonlocal pos
        items = [conjunction()]
        while pos < len(tokens) and tokens[pos] in (",", "|"):
            pos += 1
            items.append(conjunction())
        return items[0] if len(items) == 1 else TypeAny(tuple(items))

    def conjunction() -> TypeExpr:
        nonlocal pos
        items = [atom()]
        while pos < len(tokens) and tokens[pos] == ";":
            pos += 1
            items.append(atom())
        return items[0] if len(items) == 1 else TypeAll(tuple(items))

    def atom() -> TypeExpr:
        nonlocal pos
        if pos >= len(tokens):
            raise BadRequestData(f"type selection {text!r} ends where a type name was expected")
        token = tokens[pos]
        pos += 1
        if token == "(":
            inner = disjunction()
            if pos >= len(tokens) or tokens[pos] != ")":
                raise BadRequestData(f"type selection {text!r}: missing ')'")
            pos += 1
            return inner
        if token in "),;|":
            raise BadRequestData(f"type selection {text!r}: unexpected {token!r}")
        return TypeName(expand(token))

    expr = disjunction()
    if pos != len(tokens):
        raise BadRequestData(f"type selection {text!r}: unexpected {tokens[pos]!r}")
    return expr


def type_names(expr: TypeExpr) -> list[str] | None:
    """The IRIs of a plain either-of list, or None when the expression needs more."""
    if isinstance(expr, TypeName):
        return [expr.iri]
    if isinstance(expr, TypeAny) and all(isinstance(i, TypeName) for i in expr.items):
        return [i.iri for i in expr.items if isinstance(i, TypeName)]
    return None


def type_filter(expr: TypeExpr, var: str = "e") -> str:
    """A SPARQL boolean expression true when `?var` satisfies the selection."""
    if isinstance(expr, TypeName):
        return f"EXISTS {{ ?{var} a {iri(expr.iri)} }}"
    joiner = " && " if isinstance(expr, TypeAll) else " || "
    return "(" + joiner.join(type_filter(i, var) for i in expr.items) + ")"
