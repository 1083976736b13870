"""One test of IRI validity, shared by input checks and SPARQL building, so they never disagree."""

from __future__ import annotations

import re
from functools import lru_cache

from pyoxigraph import NamedNode

_BAD_IRI = re.compile(r"[\x00-\x20<>\"{}|\\^`]")


@lru_cache(maxsize=65536)
def valid_iri(value: str) -> bool:
    """True when the store holds `value` as an IRI and it is safe inside `<...>` in SPARQL."""
    if not value or len(value) >= 2048 or _BAD_IRI.search(value):
        return False
    try:
        NamedNode(value)  # the store's own IRI parser has the last word
    except ValueError:
        return False
    return True
