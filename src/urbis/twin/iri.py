"""One test of IRI validity, shared by input checks and SPARQL building, so they never disagree."""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


def redact_url(url: str) -> str:
    """`url` fit for a log: no userinfo (user:password@), no query string (it may hold keys)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "..." if parts.query else "", ""))


def redact_in(text: str, url: str) -> str:
    """`text` (e.g. an HTTP client's error) with `url`, its userinfo and query taken out."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return text.replace(url, "(unparseable URL)")
    text = text.replace(url, redact_url(url))
    userinfo = parts.netloc.rpartition("@")[0]
    for secret in (userinfo, parts.query):
        if secret:
            text = text.replace(secret, "***")
    return text


class RedactUrls(logging.Filter):
    """Redacts the URLs in a logger's records: httpx logs every request at INFO with its full
    URL, user:password@ and ?apikey= included."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_url(str(a)) if _is_url(a) else a for a in record.args)
        return True


def _is_url(value: Any) -> bool:
    return type(value).__name__ == "URL" or (isinstance(value, str) and "://" in value)


def redact_client_logs(name: str = "httpx") -> None:
    """Installs RedactUrls on the HTTP client's logger, once."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactUrls) for f in logger.filters):
        logger.addFilter(RedactUrls())
