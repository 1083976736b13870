"""The connectors' family of errors (a branch of twin.errors.UrbisError).

Most of them never reach a client: a bad record is quarantined, an unreachable source fails its
sync report. Those that do (a bad definition, a sync already running) render like any other
error, through the API's one status table.
"""

from __future__ import annotations

from urbis.twin.errors import ERROR_BASE, UrbisError


class ConnectorError(UrbisError):
    """A connector, a source or a definition failed; `detail` is safe to show an admin."""

    error_type, status, title = "ConnectorError", 500, "Connector error"


class NotSynced(ConnectorError):
    """A source asked for its report before its first sync (or a live source before its first
    run)."""

    type_base = ERROR_BASE
    error_type, status, title = "ResourceNotFound", 404, "No sync report yet"
