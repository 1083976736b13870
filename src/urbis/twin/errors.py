"""The errors of Urbis: one root type, `UrbisError`, and its families.

Every error carries what a client may see: an HTTP status, a problem type URI, a title and a
`detail` written for the caller (it says what to fix, and never holds a secret, a path of the
server or a stack trace). The API renders them once as ``application/problem+json`` (RFC 9457,
NGSI-LD clause 5.5.2) through a class-to-status table that a deployer can override
(docs/errors.md); below the API they are ordinary exceptions.

The families, each a subclass to catch and a home for a package's errors:

- `NgsiLdError`: the NGSI-LD problem types (ETSI GS CIM 009, clause 5.5.2), raised by the
  twin, the NGSI-LD features and the HTTP layer alike;
- `SparqlError`: what the SPARQL endpoint reports that NGSI-LD has no type for;
- `ConfigError`: a deployment that cannot start (settings, plugins, durable state);
- `connectors.errors.ConnectorError`: definitions, kinds, sources and records;
- `twin.outbound.OutboundRefused`: a destination the outbound guard refused.
"""

from __future__ import annotations

from typing import Any, ClassVar

ERROR_BASE = "https://uri.etsi.org/ngsi-ld/errors/"
URBIS_ERRORS = "https://urbis.city/ns/errors/"


class UrbisError(Exception):
    """The root: a status, a problem type (`type_base` + `error_type`), a title, a detail.

    Subclasses set the class attributes; `extra` members are added to the problem body (for
    example a list of the mistakes of a definition)."""

    type_base: ClassVar[str] = URBIS_ERRORS
    error_type: ClassVar[str] = "InternalError"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return self.type_base + self.error_type

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type_uri, "title": self.title, "detail": self.detail}
        body.update(self.extra)
        return body


# -- NGSI-LD problem types -------------------------------------------------------------------


class NgsiLdError(UrbisError):
    """The family of the NGSI-LD problem types (clause 5.5.2)."""

    type_base = ERROR_BASE


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


class UnsupportedMediaType(NgsiLdError):
    error_type, status, title = "UnsupportedMediaType", 415, "Unsupported media type"


class NotAcceptable(NgsiLdError):
    error_type, status, title = "NotAcceptable", 406, "Not acceptable"


class InternalError(NgsiLdError):
    error_type, status, title = "InternalError", 500, "Internal error"


# -- SPARQL ----------------------------------------------------------------------------------


class SparqlError(UrbisError):
    """The family of what the SPARQL endpoint reports beyond the NGSI-LD types (a malformed
    query is still a BadRequestData)."""

    error_type, status, title = "SparqlError", 500, "SPARQL error"


class QueryTimeout(SparqlError):
    """A SPARQL query stopped at its time limit (URBIS_SPARQL_TIMEOUT): the server is fine, the
    query is too costly. 503 so that clients may retry a cheaper query."""

    error_type, status, title = "QueryTimeout", 503, "Query timeout"


# -- state and configuration -----------------------------------------------------------------


class StateError(UrbisError):
    """The family of the durable state store's own refusals (twin/state) met by the operator:
    a state file that is cut or altered, a restore into a store that already holds state.
    What a request causes there is an NGSI-LD type (a key too long is a BadRequestData)."""

    error_type, status, title = "StateError", 500, "State store error"


class ConfigError(UrbisError, ValueError):
    """The family of a deployment that cannot start as configured: an unknown store backend,
    a plugin that does not load, a malformed setting. Raised at start-up, before any request;
    a ValueError too, as settings validation errors are."""

    error_type, status, title = "ConfigError", 500, "Configuration error"
