"""JSON responses serialised with orjson, in the media type a request negotiated."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


def json_response(
    body: Any,
    *,
    status: int = 200,
    media_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=media_type, headers=headers)
