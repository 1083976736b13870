"""The small boolean grammar shared by type selections and scope queries.

`;` binds tighter than the alternatives operators (`,`, and `|` where allowed); brackets group.
Callers give what an atom becomes and how all-of / any-of lists combine.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from twin.errors import BadRequestData

T = TypeVar("T")


def parse_boolean(
    text: str,
    *,
    atom: Callable[[str], T],
    all_of: Callable[[list[T]], T],
    any_of: Callable[[list[T]], T],
    any_ops: str,
    what: str,
) -> T:
    specials = "();" + any_ops
    token = re.compile(rf"\s*([{re.escape(specials)}]|[^{re.escape(specials)}\s]+)")
    tokens = [m.group(1) for m in token.finditer(text)]
    if not tokens or "".join(tokens) != re.sub(r"\s+", "", text):
        raise BadRequestData(f"invalid {what} {text!r}")
    pos = 0

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
        nonlocal pos
        if pos >= len(tokens):
            raise BadRequestData(f"{what} {text!r} ends where a name was expected")
        current = tokens[pos]
        pos += 1
        if current == "(":
            inner = disjunction()
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
