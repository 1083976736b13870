"""Safe pieces of SPARQL text built from user input."""

from __future__ import annotations

import re

from pyoxigraph import NamedNode

from twin.errors import BadRequestData

_BAD_IRI = re.compile(r"[\x00-\x20<>\"{}|\\^`]")


def iri(value: str) -> str:
    """`<value>`, refusing characters that would end the IRI and inject SPARQL."""
    if not value or _BAD_IRI.search(value):
        raise BadRequestData(f"{value!r} is not a valid IRI")
    try:
        NamedNode(value)  # the store's own IRI parser has the last word
    except ValueError:
        raise BadRequestData(f"{value!r} is not a valid IRI (expanded from a name?)") from None
    return f"<{value}>"


def string(value: str) -> str:
    """A double-quoted SPARQL string literal with every special character escaped."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'
