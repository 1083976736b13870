"""Scope queries (clause 4.19): `/City/District`, `+` for one level, `#` for a whole subtree.

`;` joins conditions that must all hold and `,` offers alternatives, with brackets. Scopes are
plain `ngsi-ld:scope` literals in the researchers' view, so a scope query is an exact SPARQL
filter of regular expressions (`scope_filter`); `ScopeQuery` evaluates the same expressions on
a document's scopes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from urbis.ontology import ns
from urbis.twin.errors import BadRequestData
from urbis.twin.query.boolexpr import parse_boolean
from urbis.twin.query.sparql import iri, string

_SEGMENT = re.compile(r"^[^\s/+#,;()]+$")


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

    def condition(pattern: str) -> str:
        return (
            f"EXISTS {{ ?{var} {iri(ns.NGSI_LD + 'scope')} ?scope "
            f"FILTER(REGEX(STR(?scope), {string(scope_regex(pattern))})) }}"
        )

    return parse_boolean(
        text,
        atom=condition,
        all_of=lambda items: "(" + " && ".join(items) + ")",
        any_of=lambda items: "(" + " || ".join(items) + ")",
        any_ops=",",
        what="scopeQ",
    )


ScopeTest = Callable[[Sequence[str]], bool]


def _all_of(tests: Sequence[ScopeTest]) -> ScopeTest:
    return lambda scopes: all(test(scopes) for test in tests)


def _any_of(tests: Sequence[ScopeTest]) -> ScopeTest:
    return lambda scopes: any(test(scopes) for test in tests)


class ScopeQuery:
    """A parsed scopeQ; `matches(scopes)` says whether an entity with these scopes is selected.

    Each pattern is the regular expression `scope_regex` gives the store: anchored, with no
    nested repetition, so Python's engine runs it in linear time.
    """

    __slots__ = ("_test", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._test: ScopeTest = parse_boolean(
            text,
            atom=_scope_test,
            all_of=_all_of,
            any_of=_any_of,
            any_ops=",",
            what="scopeQ",
        )

    def matches(self, scopes: Sequence[str]) -> bool:
        return self._test(scopes)

    def __repr__(self) -> str:
        return f"ScopeQuery({self.text!r})"


def _scope_test(pattern: str) -> ScopeTest:
    regex = re.compile(scope_regex(pattern))
    return lambda scopes: any(regex.search(s) for s in scopes)
