"""Errors as Starlette responses: the wire body (``app/wire/errors.py``) with its status and headers."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from app.domain import ClientFormat
from app.errors import GatewayError
from app.wire.errors import error_body


def error_response(err: GatewayError, fmt: ClientFormat, request_id: str | None = None) -> Response:
    headers = dict(err.headers)
    if request_id:
        headers.setdefault("request-id", request_id)
        headers.setdefault("x-request-id", request_id)
    return Response(
        orjson.dumps(error_body(err, fmt, request_id)),
        status_code=err.status_for(fmt),
        media_type="application/json",
        headers=headers,
    )
