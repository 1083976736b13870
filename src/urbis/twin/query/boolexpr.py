"""The small boolean grammar shared by type selections and scope queries.

`;` binds tighter than the alternatives operators (`,`, and `|` where allowed); brackets group.
Callers give what an atom becomes and how all-of / any-of lists combine.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from urbis.twin.errors import BadRequestData, TooComplexQuery

T = TypeVar("T")

# Far above what max_terms names need; keeps a hostile POST body from being tokenized at all.
MAX_LENGTH = 32 * 1024


def parse_boolean(
    text: str,
    *,
    atom: Callable[[str], T],
    all_of: Callable[[list[T]], T],
    any_of: Callable[[list[T]], T],
    any_ops: str,
    what: str,
    max_terms: int = 100,
    max_depth: int = 32,
) -> T:
    if len(text) > MAX_LENGTH:
        raise BadRequestData(f"{what} is {len(text)} characters long; the limit is {MAX_LENGTH}")
    specials = "();" + any_ops
    # No leading \s*: it made a long run of spaces cost quadratic time. Whitespace is what
    # the tokens leave out, as every other character is a special or part of a name.
    token = re.compile(rf"[{re.escape(specials)}]|[^{re.escape(specials)}\s]+")
    tokens = token.findall(text)
    if not tokens:
        raise BadRequestData(f"invalid {what} {text[:80]!r}")
    names = sum(1 for t in tokens if t not in specials)
    if names > max_terms:
        raise TooComplexQuery(f"{what} has {names} names; the limit is {max_terms}")
    pos, depth = 0, 0

    def disjunction() -> T:
        nonlocal pos
        items = [conjunction()]
        while pos < len(tokens) and tokens[pos] in any_ops:
            pos += 1
            items.append(conjunction())
        return items[0] if len(items) == 1 else any_of(items)

    def conjunction() -> T:
        nonlocal pos
        items = [primary()]
        while pos < len(tokens) and tokens[pos] == ";":
            pos += 1
            items.append(primary())
        return items[0] if len(items) == 1 else all_of(items)

    def primary() -> T:
        nonlocal pos, depth
        if pos >= len(tokens):
            raise BadRequestData(f"{what} {text!r} ends where a name was expected")
        current = tokens[pos]
        pos += 1
        if current == "(":
            depth += 1
            if depth > max_depth:
                raise TooComplexQuery(f"{what} nests brackets deeper than {max_depth} levels")
            inner = disjunction()
            depth -= 1
            if pos >= len(tokens) or tokens[pos] != ")":
                raise BadRequestData(f"{what} {text!r}: missing ')'")
            pos += 1
            return inner
        if current in specials:
            raise BadRequestData(f"{what} {text!r}: unexpected {current!r}")
        return atom(current)

    expr = disjunction()
    if pos != len(tokens):
        raise BadRequestData(f"{what} {text!r}: unexpected {tokens[pos]!r}")
    return expr
