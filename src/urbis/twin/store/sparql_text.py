"""SPARQL text for a remote engine: quads as update data, and graph names moved per tenant.

Every tenant of a remote engine shares its one dataset, so a tenant's graphs are stored under a
prefix (`urn:urbis:tenant:T:<graph>`) and every graph IRI in a query or update is moved into it
before the text leaves Urbis. Graph IRIs only appear after a handful of keywords (GRAPH, FROM,
NAMED, USING, WITH, TO and the graph-management verbs), so a tokenizer that knows strings,
comments, IRIs and prefixed names finds them all without a full SPARQL parser; the dataset of
the query itself is pinned by the protocol's `default-graph-uri`/`named-graph-uri`, so even a
`GRAPH ?g` can only see the tenant's graphs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from pyoxigraph import DefaultGraph, Literal, NamedNode, Quad

from urbis.twin.errors import BadRequestData

TENANT_GRAPH_PREFIX = "urn:urbis:tenant:"
STORE_PREFIX = "urn:urbis:store:"
# Holds which stored graph belongs to which tenant; in no tenant's dataset.
REGISTRY_GRAPH = STORE_PREFIX + "registry"
# Named as the dataset of a tenant without graphs: an empty list would mean "everything".
NO_GRAPH = STORE_PREFIX + "none"

_BEFORE_PNAME = r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<iri><[^<>"{}|^`\\\x00-\x20]*>)
  | (?P<var>[?$][A-Za-z0-9_\u00b7-\uffff]+)
"""
_PNAME = r"""
  | (?P<pname>(?:[A-Za-z\u00c0-\uffff][\w.\-\u00b7-\uffff]*)?:
              (?:[\w\-\u00b7-\uffff:%]|\\.|\.(?=[\w\-:%]))*)
"""
_AFTER_PNAME = r"""
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<other>.)
"""
_TOKEN = re.compile(_BEFORE_PNAME + _PNAME + _AFTER_PNAME, re.VERBOSE | re.DOTALL)
# As in twin/geo/geosparql.py: a failed pname has scanned the whole run of name characters, and
# fails at every later position of it, so it is not tried again there (linear, not quadratic).
_TOKEN_NO_PNAME = re.compile(_BEFORE_PNAME + _AFTER_PNAME, re.VERBOSE | re.DOTALL)
_NAME_RUN = re.compile(r"[A-Za-z\u00c0-\uffff][\w.\-\u00b7-\uffff]*")
# Strings, tried in this order at a quote (nothing else starts with one): the body of each
# form, and the body with its closing quotes. A body is read one way only, so an opener that
# fails to close has scanned to where the body stops; any later opener of the same form
# before that point is an escaped quote of that scan, reads the same rest and fails too: it
# is not tried again (else '\'\'\'... would be quadratic).
_STRINGS = tuple(
    (re.compile(quote + body, re.DOTALL), re.compile(quote + body + quote, re.DOTALL))
    for quote, body in (
        ('"""', r'(?:[^"\\]|\\.|"(?!""))*'),
        ("'''", r"(?:[^'\\]|\\.|'(?!''))*"),
        ('"', r'(?:[^"\\\n]|\\.)*'),
        ("'", r"(?:[^'\\\n]|\\.)*"),
    )
)
_GRAPH_AFTER = frozenset({"GRAPH", "FROM", "NAMED", "USING", "WITH", "TO"})
_COPY_VERBS = frozenset({"ADD", "MOVE", "COPY"})
_DATA_VERBS = frozenset({"INSERT", "DELETE"})
_WHOLE_VERBS = frozenset({"CLEAR", "DROP", "ADD", "MOVE", "COPY", "TO"})


@dataclass
class Rewritten:
    """A query or update with its graph IRIs moved into the tenant, and what was found."""

    text: str
    graphs: set[str] = field(default_factory=set)  # stored names of the graphs it names
    has_dataset: bool = False  # FROM / FROM NAMED / USING / WITH in the text
    default_graph_data: bool = False  # triples outside GRAPH in INSERT/DELETE blocks
    engine_wide: bool = False  # CLEAR/DROP ALL|NAMED|DEFAULT, ADD/MOVE/COPY DEFAULT


def tokens(text: str) -> Iterator[tuple[str, str]]:
    pos, plain_until = 0, 0  # no pname can start before plain_until
    unclosed = [0] * len(_STRINGS)  # no string of form i can close from before unclosed[i]
    while pos < len(text):
        if text[pos] in "\"'":
            kind, value = _string(text, pos, unclosed)
            yield kind, value
            pos += len(value)
            continue
        match = (_TOKEN if pos >= plain_until else _TOKEN_NO_PNAME).match(text, pos)
        assert match is not None and match.lastgroup is not None  # `other` takes any character
        kind = match.lastgroup
        if kind != "pname" and pos >= plain_until and (run := _NAME_RUN.match(text, pos)):
            plain_until = run.end()
        yield kind, match.group()
        pos = match.end()


def _string(text: str, pos: int, unclosed: list[int]) -> tuple[str, str]:
    """The string token at a quote, or the quote alone (`other`) when no form closes."""
    for i, (body, whole) in enumerate(_STRINGS):
        if pos < unclosed[i]:
            continue
        if match := whole.match(text, pos):
            return "string", match.group()
        if scanned := body.match(text, pos):
            unclosed[i] = scanned.end()
    return "other", text[pos]


def rewrite(text: str, to_stored: Callable[[str], str], *, drop_dataset: bool = False) -> Rewritten:
    """Move every IRI in graph position through `to_stored`; optionally drop FROM clauses (the
    caller's default-graph-uri replaces them, as the protocol says, where Virtuoso would merge).
    """
    out: list[str] = []
    prefixes: dict[str, str] = {}
    found = Rewritten("")
    previous: list[str] = []  # significant tokens, upper-cased words
    depth = 0
    block_depth: int | None = None  # brace depth of an INSERT/DELETE data or template block
    pending_prefix: str | None = None
    dropping = False
    for kind, value in tokens(text):
        if kind in ("ws", "comment"):
            out.append(value)
            continue
        upper = value.upper() if kind == "word" else value
        last = previous[-1] if previous else ""
        before = previous[-2] if len(previous) > 1 else ""
        if pending_prefix is not None and kind == "iri":
            prefixes[pending_prefix] = value[1:-1]
            pending_prefix = None
        elif last == "PREFIX" and kind == "pname":
            pending_prefix = value[:-1] if value.endswith(":") else None
        graph_position = (
            last in _GRAPH_AFTER
            or last in _COPY_VERBS
            or (last == "SILENT" and before in _COPY_VERBS)
        )
        if kind in ("iri", "pname") and graph_position and last != "PREFIX":
            iri = value[1:-1] if kind == "iri" else _expand(value, prefixes)
            if iri is not None:
                stored = to_stored(iri)
                found.graphs.add(stored)
                value = f"<{stored}>"
            if last in ("FROM", "NAMED", "USING", "WITH"):
                found.has_dataset = True
            if dropping:
                dropping = False
                previous.append(upper)
                continue
        if kind == "word" and upper == "FROM" and drop_dataset:
            dropping = True
            previous.append(upper)
            continue
        if dropping and upper == "NAMED":
            previous.append(upper)
            continue
        verb = before if last == "SILENT" else last
        if upper in ("ALL", "NAMED", "DEFAULT") and verb in _WHOLE_VERBS:
            found.engine_wide = True
        # Default-graph triples: a data/template block holding anything but GRAPH blocks at
        # its own depth (the remote engine's default graph is no tenant's).
        if kind == "other" and value == "{":
            opens_block = (
                last == "DATA" or last in _DATA_VERBS or (last == "WHERE" and before == "DELETE")
            )
            depth += 1
            if block_depth is None and opens_block:
                block_depth = depth
        elif kind == "other" and value == "}":
            depth -= 1
            if block_depth is not None and depth < block_depth:
                block_depth = None
        elif block_depth == depth and upper not in ("GRAPH", ".") and previous[-1] != "GRAPH":
            found.default_graph_data = True
        out.append(value)
        previous.append(upper)
    if "WITH" in previous:
        found.default_graph_data = False  # WITH names the templates' graph
    found.text = "".join(out)
    return found


def _expand(pname: str, prefixes: dict[str, str]) -> str | None:
    prefix, _, local = pname.partition(":")
    base = prefixes.get(prefix)
    return None if base is None else base + local.replace("\\", "")


class GraphNames:
    """Twin graph names <-> the names stored in the shared engine, for one tenant.

    The default tenant keeps natural names, so a single-tenant city sees its own graph IRIs in
    the engine; it may not name another tenant's (or the registry's) graphs.
    """

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.prefix = f"{TENANT_GRAPH_PREFIX}{tenant}:" if tenant else ""

    def stored(self, graph: str) -> str:
        if self.prefix:
            return self.prefix + graph
        if graph.startswith((TENANT_GRAPH_PREFIX, STORE_PREFIX)):
            raise BadRequestData(
                f"graph {graph!r} is reserved: names under {TENANT_GRAPH_PREFIX} and "
                f"{STORE_PREFIX} are the remote store's own"
            )
        return graph

    def natural(self, stored: str) -> str | None:
        """The twin name of a stored graph, None when it is not this tenant's."""
        if self.prefix:
            return stored[len(self.prefix) :] if stored.startswith(self.prefix) else None
        if stored.startswith((TENANT_GRAPH_PREFIX, STORE_PREFIX)):
            return None
        return stored

    def owns(self, stored: str) -> bool:
        return self.natural(stored) is not None


def quads_text(quads: Iterable[Quad], graphs: GraphNames, encode: LiteralCodec) -> str:
    """Quad data for INSERT DATA / DELETE DATA, graph names moved into the tenant, one GRAPH
    block per graph (Virtuoso 7.2 silently keeps typed literals of unknown datatypes, such as
    rdf:JSON, when one DELETE DATA holds two GRAPH blocks, even of the same graph)."""
    blocks: dict[str, list[str]] = {}
    for quad in quads:
        graph = quad.graph_name
        if isinstance(graph, DefaultGraph) or not isinstance(graph, NamedNode):
            raise BadRequestData("the remote store keeps quads in named graphs only")
        obj = quad.object
        obj_text = str(encode.encode(obj)) if isinstance(obj, Literal) else str(obj)
        blocks.setdefault(graphs.stored(graph.value), []).append(
            f"{quad.subject} {quad.predicate} {obj_text} ."
        )
    return " ".join(f"GRAPH <{g}> {{ {' '.join(lines)} }}" for g, lines in blocks.items())


class LiteralCodec:
    """Literals an engine would change on the way in, and how they come back.

    Virtuoso turns `geo:wktLiteral` into its own geometry type, refuses the CRS IRI prefix and
    keeps coordinates as 32-bit floats (1.123456789012 came back as 1.1234568357468), so there a
    WKT literal is stored exactly under an Urbis datatype and renamed back when read. The same
    for xsd:time, whose timezone-less form ("10:00:00") Virtuoso 7.2 refuses.
    """

    def __init__(self, renames: dict[str, str] | None = None) -> None:
        self.out = {NamedNode(k): NamedNode(v) for k, v in (renames or {}).items()}
        self.back = {v.value: k.value for k, v in self.out.items()}

    def encode(self, literal: Literal) -> Literal:
        stored = self.out.get(literal.datatype)
        return literal if stored is None else Literal(literal.value, datatype=stored)

    def encode_text(self, text: str) -> str:
        """The same renaming for typed literals written in a query (constants, VALUES):
        `"..."^^<natural>` and `"..."^^prefix:name` where the prefix names its namespace."""
        for natural, stored in self.out.items():
            namespace, _, local = _split_iri(natural.value)
            prefixes = re.findall(
                r"PREFIX\s+([\w.-]*):\s*<" + re.escape(namespace) + ">", text, re.IGNORECASE
            )
            names = [re.escape(f"<{natural.value}>")]
            names += [re.escape(f"{p}:{local}") for p in prefixes]
            text = re.sub(r"\^\^\s*(?:" + "|".join(names) + r")(?![\w.-])", f"^^{stored}", text)
        return text

    def restore_bytes(self, data: bytes) -> bytes:
        for stored, natural in self.back.items():
            data = data.replace(stored.encode(), natural.encode())
        return data


def query_form(text: str) -> str:
    """SELECT, ASK, CONSTRUCT or DESCRIBE: the first such keyword after the prologue."""
    for kind, value in tokens(text):
        if kind == "word" and value.upper() in ("SELECT", "ASK", "CONSTRUCT", "DESCRIBE"):
            return value.upper()
    return "SELECT"


def expand_same_term(text: str) -> str:
    """`sameTerm(a, b)` as `(a = b && STR(a) = STR(b))`, for Virtuoso 7.2, whose sameTerm is
    false for two identical plain literals (measured: sameTerm(?o, "broken") matched nothing)."""
    parts = list(tokens(text))
    out: list[str] = []
    i = 0
    while i < len(parts):
        kind, value = parts[i]
        j = i + 1
        while j < len(parts) and parts[j][0] in ("ws", "comment"):
            j += 1
        if kind != "word" or value.upper() != "SAMETERM" or j >= len(parts) or parts[j][1] != "(":
            out.append(value)
            i += 1
            continue
        args: list[list[str]] = [[]]
        depth = 0
        k = j + 1
        while k < len(parts):
            value = parts[k][1]
            if parts[k][0] == "other" and value in "([{":
                depth += 1
            elif parts[k][0] == "other" and value in ")]}":
                if depth == 0:
                    break
                depth -= 1
            elif parts[k][0] == "other" and value == "," and depth == 0:
                args.append([])
                k += 1
                continue
            args[-1].append(value)
            k += 1
        if len(args) != 2 or k >= len(parts):
            out.append(parts[i][1])
            i += 1
            continue
        a, b = (expand_same_term("".join(arg).strip()) for arg in args)
        out.append(f"(({a}) = ({b}) && STR({a}) = STR({b}))")
        i = k + 1
    return "".join(out)


def _split_iri(value: str) -> tuple[str, str, str]:
    """Namespace, separator and local name of an IRI ending in #name or /name."""
    cut = max(value.rfind("#"), value.rfind("/"))
    return value[: cut + 1], value[cut], value[cut + 1 :]
