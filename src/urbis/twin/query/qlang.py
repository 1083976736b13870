"""The NGSI-LD query language `q` (ETSI GS CIM 009 clause 4.9): text -> small immutable AST.

Grammar (clause 4.9, with the extensions noted):

    Query     = Term *(( ";" / "|" ) Term)         ; ";" (AND) binds tighter than "|" (OR)
    Term      = "(" Query ")" / ["!"] Path [Op Value]   ; "!attr": the attribute does not exist
    Path      = Name *("." Name) *("[" Key *("." Key) "]")
    Op        = "==" / "!=" / ">=" / ">" / "<=" / "<" / "~=" / "!~="

A Name is a term (a letter, then letters, digits, `_`), a compact IRI or URN (`ex:temp`), a full
IRI (`https://x.org/temp`, which runs up to the next operator or bracket and so takes no
`.sub` after it), or any of these as a JSON string (`"https://x.org/t".observedAt`). Names after
the first are sub-attributes, except the metadata members in METADATA, which end a path. Keys
address members of a structured value (`address[city]`, `raw[air.pm10]`, also `[a][b]`) or the
language of a LanguageProperty (`name[fr]`, `name[*]`). Values: JSON numbers, JSON strings,
`true`/`false`, ISO 8601 dateTime/date/time (unquoted), ranges `a..b`, lists `a,b,c`, and, after
`==`/`!=`, unquoted URIs or words (taken as strings). Patterns after `~=` are XPath/SPARQL
regular expressions (the store's linear-time engine), quoted or unquoted.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Literal, NoReturn

from pyoxigraph import Literal as RdfLiteral
from pyoxigraph import QueryBoolean, QuerySolutions, Store

from urbis.ontology import ns
from urbis.twin.errors import BadRequestData, OperationNotSupported, TooComplexQuery
from urbis.twin.query.sparql import string

Op = Literal["==", "!=", ">", ">=", "<", "<=", "~=", "!~="]
TemporalKind = Literal["dateTime", "date", "time"]

EQUALITY_OPS: tuple[Op, ...] = ("==", "!=")
ORDER_OPS: tuple[Op, ...] = (">", ">=", "<", "<=")
PATTERN_OPS: tuple[Op, ...] = ("~=", "!~=")
# Longest first, so that ">=" is not read as ">" followed by "=".
_OPERATORS: tuple[Op, ...] = ("!~=", "==", "!=", ">=", "<=", "~=", ">", "<")

METADATA = frozenset({"observedAt", "unitCode", "datasetId", "createdAt", "modifiedAt"})
TEMPORAL_METADATA = frozenset({"observedAt", "createdAt", "modifiedAt"})
MAX_PATTERN_LENGTH = 256
# The store keeps integers as 64-bit xsd:integer; larger q numbers are read as doubles.
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Temporal:
    """An unquoted ISO 8601 value, kept as written; `instant` gives its comparable form."""

    kind: TemporalKind
    text: str


@dataclass(frozen=True)
class Range:
    """`low..high`, both bounds included."""

    low: Comparable
    high: Comparable


@dataclass(frozen=True)
class ValueList:
    items: tuple[Scalar, ...]


Comparable = int | float | str | Temporal
Scalar = bool | int | float | str | Temporal
QValue = Scalar | Range | ValueList


@dataclass(frozen=True)
class Path:
    """`attr.sub1.sub2.meta[key.key2]`: attribute, sub-attributes, metadata member, keys."""

    attr: str
    subs: tuple[str, ...] = ()
    meta: str | None = None
    keys: tuple[str, ...] = ()

    @property
    def plain(self) -> bool:
        """True when the path names a top-level attribute only."""
        return not self.subs and self.meta is None and not self.keys


@dataclass(frozen=True)
class Exists:
    path: Path
    negated: bool = False


@dataclass(frozen=True)
class Compare:
    """`path op value`; `vocab_value` is `value` expanded as vocabulary (see expand_q)."""

    path: Path
    op: Op
    value: QValue
    vocab_value: QValue | None = None


@dataclass(frozen=True)
class And:
    items: tuple[QExpr, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[QExpr, ...]


QExpr = And | Or | Compare | Exists


# -- temporal values ----------------------------------------------------------------------------

_DATE = r"(\d{4})-(\d{2})-(\d{2})"
_TIME = r"(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?"
_TZ = r"(Z|[+-]\d{2}(?::?\d{2})?)?"
_TEMPORAL_RE: dict[TemporalKind, re.Pattern[str]] = {
    "dateTime": re.compile(_DATE + "T" + _TIME + _TZ),
    "date": re.compile(_DATE + _TZ),
    "time": re.compile(_TIME + _TZ),
}
# XPath compares times as instants of this day (XPath F&O 10.4).
_TIME_REFERENCE_DAY = date(1972, 12, 31).toordinal()


@dataclass(frozen=True)
class _Fields:
    day: int  # proleptic ordinal
    ymd: str
    hms: str
    fraction: str
    seconds: Decimal  # seconds of the day, fraction included
    offset: int | None  # minutes east of UTC, None when naive


@lru_cache(maxsize=4096)
def _fields(kind: TemporalKind, text: str) -> _Fields | None:
    match = _TEMPORAL_RE[kind].fullmatch(text)
    if match is None:
        return None
    groups = match.groups()
    day, ymd = _TIME_REFERENCE_DAY, ""
    if kind != "time":
        try:
            day = date(int(groups[0]), int(groups[1]), int(groups[2])).toordinal()
        except ValueError:
            return None
        ymd, groups = "-".join(groups[:3]), groups[3:]
    if kind == "date":
        groups = ("00", "00", "00", None, groups[0])
    hh, mm, ss, frac, tz = groups
    hours, minutes, secs = int(hh), int(mm), int(ss or 0)
    end_of_day = hours == 24 and minutes == 0 and secs == 0 and not (frac and int(frac[1:]))
    if (hours > 23 and not end_of_day) or minutes > 59 or secs > 59:
        return None
    try:
        offset = _offset(tz)
    except ValueError:
        return None
    seconds = Decimal(hours * 3600 + minutes * 60 + secs) + Decimal("0" + (frac or ""))
    hms = f"{hh}:{mm}:{ss or '00'}"
    return _Fields(day, ymd, hms, frac or "", seconds, offset)


def _offset(tz: str | None) -> int | None:
    """Minutes east of UTC, None when naive; ValueError beyond XSD's +-14:00."""
    if tz is None:
        return None
    if tz == "Z":
        return 0
    digits = tz[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if minutes > 59 or hours * 60 + minutes > 14 * 60:
        raise ValueError(f"timezone {tz} out of range")
    return (hours * 60 + minutes) * (1 if tz[0] == "+" else -1)


def instant(kind: TemporalKind, text: str) -> Decimal | None:
    """Seconds since 0001-01-01T00:00Z (naive values taken as UTC); None if not valid."""
    fields = _fields(kind, text)
    if fields is None:
        return None
    return fields.day * Decimal(86400) + fields.seconds - (fields.offset or 0) * 60


def xsd_lexical(kind: TemporalKind, text: str) -> str:
    """The value in strict XSD form with an explicit timezone (naive -> Z), for SPARQL."""
    fields = _fields(kind, text)
    if fields is None:
        raise ValueError(f"not a valid {kind}: {text!r}")
    offset = fields.offset or 0
    sign = "+" if offset > 0 else "-"
    tz = "Z" if offset == 0 else f"{sign}{abs(offset) // 60:02}:{abs(offset) % 60:02}"
    if kind == "date":
        return fields.ymd + tz
    clock = fields.hms + fields.fraction + tz
    return clock if kind == "time" else f"{fields.ymd}T{clock}"


# -- regular expressions -----------------------------------------------------------------------
# Patterns run on the store's engine (Rust `regex`, linear time) rather than Python `re`, whose
# backtracking makes even short patterns such as `a.*a.*a.*b` hang on a few thousand characters.
# It is also what SPARQL REGEX uses, so the store and the evaluator agree on every pattern.

_regex_engine: Store | None = None


def _engine() -> Store:
    global _regex_engine
    if _regex_engine is None:
        _regex_engine = Store()
    return _regex_engine


@lru_cache(maxsize=1024)
def valid_pattern(pattern: str) -> bool:
    """True when the engine accepts the pattern (XPath/SPARQL REGEX syntax)."""
    query = f'SELECT (COALESCE(REGEX("", {string(pattern)}), "invalid") AS ?r) {{}}'
    result = _engine().query(query)
    assert isinstance(result, QuerySolutions)
    term = next(iter(result))[0]
    return isinstance(term, RdfLiteral) and term.datatype.value == ns.XSD + "boolean"


@lru_cache(maxsize=4096)
def pattern_matches(pattern: str, text: str) -> bool:
    """REGEX(text, pattern) as the store evaluates it (a substring search)."""
    result = _engine().query(f"ASK {{ FILTER(REGEX({string(text)}, {string(pattern)})) }}")
    assert isinstance(result, QueryBoolean)
    return bool(result)


# -- parsing ------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_STOP = set("[]{}()|;=!<>~,\"'") | {" ", "\t", "\n", "\r"}
_VALUE_END = set(";|),") | {" ", "\t", "\n", "\r"}
_SPACE = " \t\r\n"


def _is_letter(char: str) -> bool:
    return unicodedata.category(char).startswith("L")


def _is_term_char(char: str) -> bool:
    return char == "_" or unicodedata.category(char)[0] in "LN"


def _is_term(name: str) -> bool:
    return bool(name) and _is_letter(name[0]) and all(_is_term_char(c) for c in name)


def _is_key_char(char: str) -> bool:
    return char in "_-" or unicodedata.category(char)[0] in "LN"


def parse_q(
    text: str, *, max_length: int = 4096, max_depth: int = 32, max_terms: int = 100
) -> QExpr:
    """Parse a `q` expression; BadRequestData (with the position) when it is not valid.

    Parsing is linear, but the store's cost to plan the SPARQL grows faster than the number of
    terms (800 cost seconds), so more than `max_terms` (each listed value counts) is a
    TooComplexQuery, raised as soon as the parser gets there.
    """
    if len(text) > max_length:
        raise BadRequestData(f"q is {len(text)} characters long; the limit is {max_length}")
    if not text.strip():
        raise BadRequestData("q is empty; expected at least one query term such as temperature>20")
    return _Parser(text, max_depth, max_terms).parse()


class _Parser:
    def __init__(self, text: str, max_depth: int, max_terms: int = 100) -> None:
        self.text = text
        self.pos = 0
        self.max_depth = max_depth
        self.max_terms = max_terms
        self.terms = 0

    # -- helpers

    def fail(self, expected: str, at: int | None = None) -> NoReturn:
        at = self.pos if at is None else at
        found = repr(self.text[at]) if at < len(self.text) else "the end of q"
        raise BadRequestData(
            f"invalid q at position {at}: expected {expected}, found {found} "
            f"(q: {_excerpt(self.text, at)})"
        )

    def peek(self, size: int = 1) -> str:
        return self.text[self.pos : self.pos + size]

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _SPACE:
            self.pos += 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    # -- expressions

    def parse(self) -> QExpr:
        expr = self.disjunction(0)
        self.skip_space()
        if not self.at_end():
            if self.peek() == ")":
                self.fail("';', '|' or the end of q ('(' missing for this ')')")
            self.fail("';', '|' or the end of q")
        return expr

    def disjunction(self, depth: int) -> QExpr:
        items = [self.conjunction(depth)]
        while self.peek() == "|":
            self.pos += 1
            items.append(self.conjunction(depth))
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conjunction(self, depth: int) -> QExpr:
        items = [self.primary(depth)]
        while self.peek() == ";":
            self.pos += 1
            items.append(self.primary(depth))
        return items[0] if len(items) == 1 else And(tuple(items))

    def primary(self, depth: int) -> QExpr:
        self.skip_space()
        if self.peek() == "(":
            if depth >= self.max_depth:
                raise TooComplexQuery(
                    f"q nests parentheses deeper than {self.max_depth} levels "
                    f"(position {self.pos}); flatten the expression"
                )
            self.pos += 1
            inner = self.disjunction(depth + 1)
            self.skip_space()
            if self.peek() != ")":
                self.fail("';', '|' or ')' to close the '('")
            self.pos += 1
            self.end_of_term()
            return inner
        term = self.term()
        self.end_of_term()
        return term

    def end_of_term(self) -> None:
        self.skip_space()
        if not self.at_end() and self.peek() not in ";|)":
            self.fail("';' (and), '|' (or), ')' or the end of q after a query term")

    def term(self) -> QExpr:
        start = self.pos
        negated = self.peek() == "!"
        if negated:
            self.pos += 1
        path = self.path()
        self.skip_space()
        at = self.pos
        op = self.operator()
        if op is None:
            self.count_terms(1, start)
            return Exists(path, negated)
        if negated:
            self.fail("no operator after a '!attribute' (non-existence) term", at)
        self.skip_space()
        value = self.value(op)
        self.count_terms(len(value.items) if isinstance(value, ValueList) else 1, start)
        return Compare(path, op, value)

    def count_terms(self, terms: int, at: int) -> None:
        self.terms += terms
        if self.terms > self.max_terms:
            raise TooComplexQuery(
                f"q has more than {self.max_terms} terms (each listed value counts) at position "
                f"{at}; split the query, or use a range a..b for many values"
            )

    def operator(self) -> Op | None:
        for op in _OPERATORS:
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                return op
        if self.peek() == "=":
            self.fail("'==' (a single '=' is not an operator)")
        return None

    # -- paths

    def path(self) -> Path:
        self.skip_space()
        attr = self.name("an attribute name")
        subs: list[str] = []
        meta: str | None = None
        while self.peek() == ".":
            if meta is not None:
                self.fail(f"nothing after the metadata member {meta!r}")
            self.pos += 1
            name = self.name("a sub-attribute or metadata name after '.'")
            if name in METADATA:
                meta = name
            else:
                subs.append(name)
        keys: list[str] = []
        while self.peek() == "[":
            if meta is not None:
                self.fail(f"no '[' after the metadata member {meta!r}")
            self.pos += 1
            keys.append(self.key())
            while self.peek() == ".":
                self.pos += 1
                keys.append(self.key())
            if self.peek() != "]":
                self.fail("']' or '.' in the key path")
            self.pos += 1
        if self.peek() == "{":
            raise OperationNotSupported(
                f"q at position {self.pos}: linked-entity paths 'attr{{...}}' (clause 4.5.23) are "
                "not supported; query the related entities separately"
            )
        return Path(attr, tuple(subs), meta, tuple(keys))

    def name(self, expected: str) -> str:
        start = self.pos
        if self.peek() == '"':
            name = self.json_string()
            if not name:
                self.fail(expected + " (the quoted name is empty)", start)
            return name
        if self.at_end() or not _is_letter(self.peek()):
            self.fail(expected)
        while not self.at_end() and _is_term_char(self.peek()):
            self.pos += 1
        if self.peek() == ":":
            # Hierarchical IRIs keep their dots (host names); compact IRIs and URNs do not.
            stop = _STOP if self.text.startswith("://", self.pos) else _STOP | {"."}
            self.pos += 1
            rest = self.pos
            while not self.at_end() and self.peek() not in stop:
                self.pos += 1
            if self.pos == rest:
                self.fail("the rest of the compact IRI after ':'")
        return self.text[start : self.pos]

    def key(self) -> str:
        if self.peek() == "*":
            self.pos += 1
            return "*"
        start = self.pos
        while not self.at_end() and _is_key_char(self.peek()):
            self.pos += 1
        if self.pos == start:
            self.fail("a key (letters, digits, '_', '-') or '*' inside '[...]'")
        return self.text[start : self.pos]

    # -- values

    def value(self, op: Op) -> QValue:
        if op in PATTERN_OPS:
            return self.pattern()
        equality = op in EQUALITY_OPS
        start = self.pos
        first = self.scalar(bare=equality)
        if self.text.startswith("..", self.pos):
            if not equality:
                self.fail(f"a single value after {op!r} (ranges only after '==' or '!=')")
            self.pos += 2
            high_at = self.pos
            high = self.scalar(bare=False)
            if isinstance(first, bool):
                self.fail("a number, string or date/time as range start", start)
            if isinstance(high, bool):
                self.fail("a number, string or date/time as range end", high_at)
            return Range(first, high)
        if self.peek() == ",":
            if not equality:
                self.fail(f"a single value after {op!r} (lists only after '==' or '!=')")
            items = [first]
            while self.peek() == ",":
                self.pos += 1
                items.append(self.scalar(bare=True))
            return ValueList(tuple(items))
        if isinstance(first, bool) and not equality:
            self.fail(
                f"a number, string or date/time after {op!r} (true/false need == or !=)", start
            )
        return first

    def scalar(self, *, bare: bool) -> Scalar:
        start = self.pos
        if self.peek() == '"':
            return self.json_string()
        for word, boolean in (("true", True), ("false", False)):
            if self.text.startswith(word, self.pos) and self.value_ends(self.pos + len(word)):
                self.pos += len(word)
                return boolean
        kind: TemporalKind
        for kind in ("dateTime", "date", "time"):
            match = _TEMPORAL_RE[kind].match(self.text, self.pos)
            if match and self.value_ends(match.end()):
                if _fields(kind, match.group()) is None:
                    self.fail(f"a valid {kind} (month, day, hour or timezone out of range)")
                self.pos = match.end()
                return Temporal(kind, match.group())
        match = _NUMBER.match(self.text, self.pos)
        if match and self.value_ends(match.end()):
            self.pos = match.end()
            return self.number(match, start)
        if bare and not self.at_end() and _is_letter(self.peek()):
            while not self.at_end() and self.peek() not in _VALUE_END:
                self.pos += 1
            return self.text[start : self.pos]
        if match or self.peek()[:1].isdigit():
            self.fail("a number or an ISO 8601 date/time (check the characters after it)")
        if bare:
            self.fail('a value (number, "string", true, false, ISO 8601 date/time or URI)')
        self.fail('a number, a "string" or an ISO 8601 date/time')

    def value_ends(self, at: int) -> bool:
        return at >= len(self.text) or self.text[at] in _VALUE_END or self.text.startswith("..", at)

    def number(self, match: re.Match[str], start: int) -> int | float:
        text = match.group()
        if match.group(1) is None and match.group(2) is None:
            whole = int(text)
            if INT64[0] <= whole <= INT64[1]:
                return whole
        try:
            number = float(text)
        except OverflowError:
            number = float("inf")
        if number in (float("inf"), float("-inf")):
            self.fail("a number within the range of a double", start)
        return number

    def json_string(self) -> str:
        start = self.pos
        index = start + 1
        while index < len(self.text) and self.text[index] != '"':
            index += 2 if self.text[index] == "\\" else 1
        if index >= len(self.text):
            self.fail("a closing '\"' for the string opened here", start)
        raw = self.text[start : index + 1]
        try:
            value = json.loads(raw)
            value.encode("utf-8")
        except (ValueError, UnicodeEncodeError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "unpaired surrogate"
            at = start + exc.pos if isinstance(exc, json.JSONDecodeError) else start
            self.fail(f"a JSON string ({reason})", at)
        self.pos = index + 1
        assert isinstance(value, str)
        return value

    def pattern(self) -> str:
        start = self.pos
        pattern = self.json_string() if self.peek() == '"' else self.raw_pattern()
        if not pattern:
            self.fail("a regular expression", start)
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise BadRequestData(
                f"q at position {start}: the regular expression is {len(pattern)} characters "
                f"long; the limit is {MAX_PATTERN_LENGTH}"
            )
        if not valid_pattern(pattern):
            raise BadRequestData(
                f"q at position {start}: {pattern!r} is not a valid regular expression "
                "(XPath/SPARQL syntax; no back-references or look-around)"
            )
        return pattern

    def raw_pattern(self) -> str:
        """An unquoted pattern ends at ';', '|' or ')' outside its own groups and classes."""
        start, depth, in_class = self.pos, 0, False
        while not self.at_end():
            char = self.peek()
            if char == "\\":
                self.pos += 2
                continue
            if in_class:
                in_class = char != "]"
            elif char == "[":
                in_class = True
            elif char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    break
                depth -= 1
            elif char in ";|" and depth == 0:
                break
            self.pos += 1
        self.pos = min(self.pos, len(self.text))
        return self.text[start : self.pos]


def _excerpt(text: str, at: int) -> str:
    """The part of q around a position, with the position marked."""
    lo, hi = max(0, at - 30), at + 30
    head = ("…" if lo else "") + text[lo:at]
    return head + "⟨here⟩" + text[at:hi] + ("…" if hi < len(text) else "")


# -- rendering and expansion ------------------------------------------------------------------


def render(expr: QExpr) -> str:
    """The q text of an AST; `parse_q(render(e)) == e` for every AST parse_q can return."""
    if isinstance(expr, And | Or):
        sep = ";" if isinstance(expr, And) else "|"
        return sep.join(
            f"({render(i)})" if isinstance(i, And | Or) else render(i) for i in expr.items
        )
    if isinstance(expr, Exists):
        return ("!" if expr.negated else "") + _render_path(expr.path)
    return _render_path(expr.path) + expr.op + _render_value(expr.value, expr.op)


def _render_path(path: Path) -> str:
    text = ".".join(_render_name(n) for n in (path.attr, *path.subs))
    if path.meta is not None:
        text += "." + path.meta
    if path.keys:
        text += "[" + ".".join(path.keys) + "]"
    return text


def _render_name(name: str) -> str:
    if _is_term(name):
        return name
    prefix, colon, rest = name.partition(":")
    if rest.startswith("//") or any(c in _STOP or c == "." for c in rest):
        return json.dumps(name, ensure_ascii=False)
    if colon and rest and _is_term(prefix):
        return name
    return json.dumps(name, ensure_ascii=False)


def _render_value(value: QValue, op: Op) -> str:
    if isinstance(value, Range):
        return _render_scalar(value.low) + ".." + _render_scalar(value.high)
    if isinstance(value, ValueList):
        return ",".join(_render_scalar(i) for i in value.items)
    return _render_scalar(value)


def _render_scalar(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Temporal):
        return value.text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def expand_q(
    expr: QExpr,
    expand: Callable[[str], str],
    expand_vocab: Callable[[str], str] | None = None,
) -> QExpr:
    """Expand attribute and sub-attribute names (not metadata nor keys) to IRIs.

    With `expand_vocab`, string values are also expanded into `vocab_value`, which is what a
    VocabProperty target is compared with (clause 4.9: its value is expanded with the @context).
    """
    if isinstance(expr, And):
        return And(tuple(expand_q(i, expand, expand_vocab) for i in expr.items))
    if isinstance(expr, Or):
        return Or(tuple(expand_q(i, expand, expand_vocab) for i in expr.items))
    path = replace(
        expr.path, attr=expand(expr.path.attr), subs=tuple(expand(s) for s in expr.path.subs)
    )
    if isinstance(expr, Exists):
        return replace(expr, path=path)
    vocab = expr.vocab_value
    if expand_vocab is not None and expr.op in EQUALITY_OPS:
        vocab = _expand_values(expr.value, expand_vocab)
    return replace(expr, path=path, vocab_value=vocab)


def _expand_values(value: QValue, expand_vocab: Callable[[str], str]) -> QValue | None:
    if isinstance(value, str):
        return expand_vocab(value)
    if isinstance(value, ValueList):
        return ValueList(tuple(expand_vocab(i) if isinstance(i, str) else i for i in value.items))
    return None
