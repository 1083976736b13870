"""idPattern: one meaning for queries, subscriptions and registrations, in linear time.

NGSI-LD (clause 5.2.33, EntitySelector) makes idPattern a regular expression (IEEE 1003.2, whose
`regexec` finds a match anywhere); SPARQL REGEX, which queries hand to the store, is a search
too. So everywhere a pattern matches when it matches some part of the id: `RD:1` matches
`urn:ngsi-ld:RD:12`; anchor with `^...$` for whole ids.

Queries run the pattern in the store (pyoxigraph: Rust `regex`; remote engines: their SPARQL
REGEX, XPath flavour, PCRE in Virtuoso); subscriptions, registrations and the queries'
post-filter run it here with RE2 (through `selector.EntitySelector`, docs/matching.md). All
are linear-time engines, but their dialects differ, so only the part of the syntax they all
read alike is accepted (anything else is a 400 naming the construct):

* characters other than the metacharacters `\\ . ^ $ | ? * + ( ) [ ] { }`; `.`; anchors `^ $`;
* escapes of a metacharacter or `-`, and `\\n \\r \\t`;
* groups `(...)` and alternatives `|` (no `(?...)`: flags, non-capturing groups, look-around);
* quantifiers `* + ? {n} {n,} {n,m}` (at most 1000), greedy or lazy (`?` after);
* classes `[...]` and `[^...]` of characters, escapes and ranges `a-z`, where `- [ ] ^ \\`
  are escaped and `&&`, `~~` do not occur (POSIX `[:alpha:]`, XPath subtraction and Rust's
  set operations read differently).

Refused because the engines disagree: `\\d \\w \\s \\b \\p{...}` (ASCII in RE2, Unicode in Rust
and XPath, whose `\\w` even excludes `_`): write `[0-9]` or `[A-Za-z0-9_]`; back-references and
look-around (RE2 and Rust have none).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2

from urbis.twin.errors import BadRequestData
from urbis.twin.query.qlang import valid_pattern

MAX_ID_PATTERN_LENGTH = 1024
MAX_REPEAT = 1000  # RE2's own limit on a counted repetition

_META = frozenset("\\.^$|?*+()[]{}")
_ESCAPABLE = _META | {"-"}
_CONTROL_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}
_QUANTIFIERS = frozenset("*+?{")
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is the caller's 400, not a log line


class IdPattern:
    """A checked idPattern; `search(id)` says whether it matches some part of the id."""

    __slots__ = ("_regex", "text")

    def __init__(self, text: str, regex: Any) -> None:
        self.text = text
        self._regex = regex

    def search(self, entity_id: str) -> bool:
        return self._regex.search(entity_id) is not None

    def __repr__(self) -> str:
        return f"IdPattern({self.text!r})"


def compile_id_pattern(text: object, what: str = "idPattern") -> IdPattern:
    """The pattern, or BadRequestData saying why it is refused (`what` names the member)."""
    if not isinstance(text, str):
        raise BadRequestData(f"{what} must be a string")
    return _compile(text, what)


@lru_cache(maxsize=1024)
def _compile(text: str, what: str) -> IdPattern:
    if not text:
        raise BadRequestData(f"{what} is empty; '.*' matches every id")
    if len(text) > MAX_ID_PATTERN_LENGTH:
        raise BadRequestData(
            f"{what} is {len(text)} characters long; the limit is {MAX_ID_PATTERN_LENGTH}"
        )
    problem = _outside_subset(text)
    if problem is not None:
        raise BadRequestData(
            f"{what} {_excerpt(text)} is not accepted as a regular expression: {problem}"
        )
    try:
        regex = re2.compile(text, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        reason = reason.decode(errors="replace") if isinstance(reason, bytes) else reason
        raise BadRequestData(
            f"{what} {_excerpt(text)} is not a valid regular expression: {reason}"
        ) from None
    if not valid_pattern(text):  # e.g. over the size limit of the store's engine
        raise BadRequestData(f"{what} {_excerpt(text)} is too large for the store's engine")
    return IdPattern(text, regex)


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:60] + "…")


def _outside_subset(text: str) -> str | None:
    """Why the pattern leaves the common subset, or None: one left-to-right pass."""
    pos, n = 0, len(text)
    depth = 0
    can_repeat = False  # whether the previous item is an atom a quantifier may follow
    while pos < n:
        char = text[pos]
        at = f"at position {pos}"
        if char == "\\":
            problem = _escape(text, pos)
            if problem:
                return problem
            pos, can_repeat = pos + 2, True
        elif char == "[":
            end_or_problem = _class(text, pos)
            if isinstance(end_or_problem, str):
                return end_or_problem
            pos, can_repeat = end_or_problem, True
        elif char == "(":
            if text.startswith("(?", pos):
                return f"'(?' {at}: no flags, non-capturing groups or look-around"
            depth, pos, can_repeat = depth + 1, pos + 1, False
        elif char == ")":
            if depth == 0:
                return f"')' {at} closes no group"
            depth, pos, can_repeat = depth - 1, pos + 1, True
        elif char in _QUANTIFIERS:
            if not can_repeat:
                return f"{char!r} {at} has nothing to repeat"
            end_or_problem = _quantifier(text, pos)
            if isinstance(end_or_problem, str):
                return end_or_problem
            pos, can_repeat = end_or_problem, False
        elif char in "]}":
            return f"{char!r} {at} must be escaped as '\\{char}'"
        elif char in "|^$":
            pos, can_repeat = pos + 1, False
        else:  # '.' or a literal character
            pos, can_repeat = pos + 1, True
    if depth:
        return "a '(' is not closed"
    return None


def _escape(text: str, pos: int) -> str | None:
    if pos + 1 >= len(text):
        return "a '\\' ends the pattern"
    escaped = text[pos + 1]
    if escaped in _ESCAPABLE or escaped in _CONTROL_ESCAPES:
        return None
    if escaped in "dDwWsSbBpPiIcC":
        return (
            f"'\\{escaped}' at position {pos} means different characters to the engines; "
            "write a class such as [0-9] or [A-Za-z0-9_]"
        )
    if escaped.isdigit():
        return f"'\\{escaped}' at position {pos}: no back-references"
    return f"'\\{escaped}' at position {pos} is not an escape the engines share"


def _quantifier(text: str, pos: int) -> int | str:
    """The end of the quantifier at `pos` (lazy '?' included), or why it is refused."""
    if text[pos] == "{":
        end = text.find("}", pos)
        body = text[pos + 1 : end] if end > 0 else ""
        low, _, high = body.partition(",")
        if end < 0 or not _digits(low) or not (high == "" or _digits(high)):
            return f"'{{' at position {pos} must start {{n}}, {{n,}} or {{n,m}}, or be escaped"
        if int(low) > MAX_REPEAT or (high and int(high) > MAX_REPEAT):
            return f"the repetition at position {pos} is above {MAX_REPEAT}"
        if high and int(high) < int(low):
            return f"the repetition at position {pos} has its maximum below its minimum"
        pos = end + 1
    else:
        pos += 1
    if pos < len(text) and text[pos] == "?":
        pos += 1  # lazy: the same matches for a search
    if pos < len(text) and text[pos] in _QUANTIFIERS:
        return f"{text[pos]!r} at position {pos} repeats a repetition; use a group"
    return pos


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _class(text: str, pos: int) -> int | str:
    """The end of the character class at `pos`, or why it is refused."""
    start, n = pos, len(text)
    pos += 1
    if pos < n and text[pos] == "^":
        pos += 1
    items = 0
    previous: str | None = None  # the last single character, for ranges
    while pos < n and text[pos] != "]":
        char = text[pos]
        if char == "\\":
            problem = _escape(text, pos)
            if problem:
                return problem
            previous = _CONTROL_ESCAPES.get(text[pos + 1], text[pos + 1])
            pos += 2
        elif char == "-":
            if previous is None or pos + 1 >= n or text[pos + 1] in "]-[^":
                return f"'-' at position {pos} must be escaped, or stand between two characters"
            high = text[pos + 1]
            width = 1
            if high == "\\":
                problem = _escape(text, pos + 1)
                if problem:
                    return problem
                high, width = _CONTROL_ESCAPES.get(text[pos + 2], text[pos + 2]), 2
            if ord(high) < ord(previous):
                return f"the range at position {pos - 1} ends before it starts"
            previous, pos = None, pos + 1 + width
        elif char in "[^":
            return f"{char!r} at position {pos} must be escaped inside a class"
        elif text.startswith(char * 2, pos) and char in "&~":
            return f"{char * 2!r} at position {pos} is a set operation to some engines"
        else:
            previous, pos = char, pos + 1
        items += 1
    if pos >= n:
        return f"the class opened at position {start} is not closed"
    if not items:
        return f"the class at position {start} is empty"
    return pos + 1
