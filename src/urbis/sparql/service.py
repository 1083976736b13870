"""Federated SPARQL `SERVICE`: refused unless the operator lists endpoints, then admins only.

pyoxigraph evaluates SERVICE itself, with its own HTTP client (past twin/outbound.py), and a
remote store's engine would too: an anonymous query could make the broker call any address.
So what a query may call is decided from its parsed form before any backend sees it.

The check fails closed. Oxigraph's keywords are ASCII and case-insensitive and need no word
boundary (`SERVICESILENT<...>` parses), and it expands `\\u` escapes only inside strings and
IRIs; so a text without the ASCII letters "service" in any case cannot call out, and only texts
with them are parsed (rdflib's parser, as sparql/update.py does: prefixes, BASE,
subqueries, EXISTS, comments and strings are the grammar's business, not a regex's). rdflib
would expand escapes everywhere, which could move a string's end: they are replaced by U+FFFD
first (and such an endpoint matches no allowed one). A text rdflib cannot parse is refused.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from rdflib.plugins.sparql.algebra import translateQuery, translateUpdate
from rdflib.plugins.sparql.parser import parseQuery, parseUpdate
from rdflib.plugins.sparql.parserutils import CompValue
from rdflib.term import URIRef

from urbis.twin.errors import BadRequestData, Forbidden

DISABLED = "federated SERVICE queries are disabled on this server"
# Characters: rdflib's parser is slow (~0.45 ms a character at worst, holding the GIL) and
# recursive, and anyone may send a query: 4,000 bound one check to about 2 s of CPU.
MAX_CHECKED = 4_000
_MENTION = re.compile("service", re.IGNORECASE | re.ASCII)
_ESCAPE = re.compile(r"\\u[0-9A-Fa-f]{4}|\\U[0-9A-Fa-f]{8}")


def mentions_service(text: str) -> bool:
    """False when the text cannot hold a SERVICE clause (the common case: no parse needed)."""
    return _MENTION.search(text) is not None


def service_endpoints(text: str, *, update: bool = False) -> list[str | None]:
    """The endpoint of every SERVICE clause in a query (or update): its IRI, None for a
    variable. BadRequestData when the text mentions "service" but cannot be checked."""
    if not mentions_service(text):
        return []
    if len(text) > MAX_CHECKED:
        raise BadRequestData(
            f"a query that mentions 'service' is checked for SERVICE clauses, which is done "
            f"for queries of at most {MAX_CHECKED} characters"
        )
    neutral = _ESCAPE.sub("\ufffd", text).replace("\r", "\n")  # oxigraph ends comments at \r
    try:
        tree: Any = (
            translateUpdate(parseUpdate(neutral)).algebra
            if update
            else translateQuery(parseQuery(neutral)).algebra
        )
        found: list[str | None] = []
        _collect(tree, found)
    except Exception as error:  # pyparsing's errors, RecursionError, undefined prefixes
        raise BadRequestData(
            f"the query mentions 'service' and could not be checked for federated SERVICE "
            f"clauses: {str(error)[:300]}"
        ) from None
    return found


def _collect(node: Any, found: list[str | None]) -> None:
    if isinstance(node, CompValue) and node.name == "ServiceGraphPattern":
        term = node.get("term")
        found.append(str(term) if isinstance(term, URIRef) else None)
    if isinstance(node, dict):
        for value in node.values():
            _collect(value, found)
    elif isinstance(node, list | tuple):
        for value in node:
            _collect(value, found)


def check_service(text: str, *, allow: Collection[str], admin: bool, update: bool = False) -> None:
    """Refuse SERVICE unless every endpoint is allowed and the caller is an admin."""
    endpoints = service_endpoints(text, update=update)
    if not endpoints:
        return
    if not allow:
        raise BadRequestData(DISABLED)
    if not admin:
        raise Forbidden("federated SERVICE queries need the admin token")
    for endpoint in endpoints:
        if endpoint is None:
            raise BadRequestData("a SERVICE endpoint must be an IRI, not a variable")
        if endpoint not in allow:
            raise BadRequestData(
                f"SERVICE <{endpoint}> is not an allowed endpoint (URBIS_SPARQL_SERVICE_ALLOW)"
            )
