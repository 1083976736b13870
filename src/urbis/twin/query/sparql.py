"""Safe pieces of SPARQL text built from user input."""

from __future__ import annotations

from urbis.twin.errors import BadRequestData
from urbis.twin.iri import valid_iri


def iri(value: str) -> str:
    """`<value>`, refusing characters that would end the IRI and inject SPARQL."""
    if not valid_iri(value):
        raise BadRequestData(f"{value!r} is not a valid IRI (expanded from a name?)")
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
