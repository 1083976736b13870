"""Domain errors that carry their NGSI-LD problem type (ETSI GS CIM 009, clause 5.5.2).

Every layer below the API raises these; ``api.errors`` renders them once as
``application/problem+json``. The ``detail`` is written for the caller: it says what to fix.
"""

from __future__ import annotations

from typing import Any

ERROR_BASE = "https://uri.etsi.org/ngsi-ld/errors/"


class NgsiLdError(Exception):
    """Base class: an error type URI, an HTTP status and a caller-facing detail."""

    error_type = "InternalError"
    status = 500
    title = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return ERROR_BASE + self.error_type

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type_uri, "title": self.title, "detail": self.detail}
        body.update(self.extra)
        return body


class InvalidRequest(NgsiLdError):
    error_type, status, title = "InvalidRequest", 400, "Invalid request"


class BadRequestData(NgsiLdError):
    error_type, status, title = "BadRequestData", 400, "Bad request data"


class AlreadyExists(NgsiLdError):
    error_type, status, title = "AlreadyExists", 409, "Already exists"


class OperationNotSupported(NgsiLdError):
    error_type, status, title = "OperationNotSupported", 422, "Operation not supported"


class ResourceNotFound(NgsiLdError):
    error_type, status, title = "ResourceNotFound", 404, "Resource not found"


class LdContextNotAvailable(NgsiLdError):
    error_type, status, title = "LdContextNotAvailable", 503, "JSON-LD @context not available"


class TooComplexQuery(NgsiLdError):
    error_type, status, title = "TooComplexQuery", 403, "Too complex query"


class TooManyResults(NgsiLdError):
    error_type, status, title = "TooManyResults", 403, "Too many results"


class NonexistentTenant(NgsiLdError):
    error_type, status, title = "NonexistentTenant", 404, "Nonexistent tenant"


class Unauthorized(NgsiLdError):
    """Not an NGSI-LD error type of its own; 401 with the spec's error base for consistency."""

    error_type, status, title = "Unauthorized", 401, "Authentication required"


class Forbidden(NgsiLdError):
    error_type, status, title = "Forbidden", 403, "Forbidden"


class PayloadTooLarge(NgsiLdError):
    """Oversized bodies are bad request data per NGSI-LD, but 413 tells HTTP clients why."""

    error_type, status, title = "BadRequestData", 413, "Payload too large"


class InternalError(NgsiLdError):
    error_type, status, title = "InternalError", 500, "Internal error"


class QueryTimeout(NgsiLdError):
    """A SPARQL query stopped at its time limit (URBIS_SPARQL_TIMEOUT): the server is fine, the
    query is too costly. Not an NGSI-LD type; 503 so that clients may retry a cheaper query."""

    error_type, status, title = "QueryTimeout", 503, "Query timeout"

    @property
    def type_uri(self) -> str:
        return "https://urbis.city/ns/errors/QueryTimeout"
