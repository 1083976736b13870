"""Scope queries (clause 4.19): `/City/District`, `+` for one level, `#` for a whole subtree.

`;` joins conditions that must all hold and `,` offers alternatives, with brackets. Scopes are
plain `ngsi-ld:scope` literals in the researchers' view, so a scope query is an exact SPARQL
filter of regular expressions.
"""

from __future__ import annotations

import re

from twin import ns
from twin.errors import BadRequestData
from twin.query.sparql import iri, string

_SEGMENT = re.compile(r"^[^\s/+#,;()]+$")
_TOKEN = re.compile(r"\s*([(),;]|[^(),;\s]+)")


def scope_regex(pattern: str) -> str:
    """A regular expression matching the scopes that `pattern` selects."""
    if not pattern.startswith("/"):
        raise BadRequestData(f"scope pattern {pattern!r} must start with '/'")
    if pattern == "/#":
        return "^/.*$"
    parts = pattern[1:].split("/")
    out: list[str] = []
    for i, part in enumerate(parts):
        if part == "#" and i == len(parts) - 1:
            return "^" + "".join(out) + "(/.*)?$"
        if part == "+":
            out.append("/[^/]+")
        elif _SEGMENT.match(part):
            out.append("/" + re.escape(part))
        else:
            raise BadRequestData(f"scope pattern {pattern!r}: invalid segment {part!r}")
    return "^" + "".join(out) + "$"


def scope_filter(text: str, var: str = "e") -> str:
    """The SPARQL boolean expression of a scope query over `?var`."""
    tokens = [m.group(1) for m in _TOKEN.finditer(text)]
    pos = 0
    if not tokens:
        raise BadRequestData("scopeQ is empty")

    def condition(pattern: str) -> str:
        regex = scope_regex(pattern)
        return (
            f"EXISTS {{ ?{var} {iri(ns.NGSI_LD + 'scope')} ?scope "
            f"FILTER(REGEX(STR(?scope), {string(regex)})) }}"
        )

    def disjunction() -> str:
        nonlocal pos
        items = [conjunction()]
        while pos < len(tokens) and tokens[pos] == ",":
            pos += 1
            items.append(conjunction())
        return items[0] if len(items) == 1 else "(" + " || ".join(items) + ")"

    def conjunction() -> str:
        nonlocal pos
        items = [atom()]
        while pos < len(tokens) and tokens[pos] == ";":
            pos += 1
            items.append(atom())
        return items[0] if len(items) == 1 else "(" + " && ".join(items) + ")"

    def atom() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise BadRequestData(f"scopeQ {text!r} ends where a scope was expected")
        token = tokens[pos]
        pos += 1
        if token == "(":
            inner = disjunction()
            if pos >= len(tokens) or tokens[pos] != ")":
                raise BadRequestData(f"scopeQ {text!r}: missing ')'")
            pos += 1
            return inner
        if token in "),;":
            raise BadRequestData(f"scopeQ {text!r}: unexpected {token!r}")
        return condition(token)

    expr = disjunction()
    if pos != len(tokens):
        raise BadRequestData(f"scopeQ {text!r}: unexpected {tokens[pos]!r}")
    return expr
