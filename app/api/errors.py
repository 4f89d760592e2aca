"""Every error a client can see, rendered in that client's own format.

A stage raises ``GatewayError`` with a format-neutral ``kind``; the endpoint renders it as
Anthropic's ``{"type":"error","error":{...}}`` or OpenAI's ``{"error":{...}}`` with the right status.
Upstream credentials, URLs and raw upstream bodies never reach the client: provider errors are
mapped to a kind and a message written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import orjson
from starlette.responses import Response

from app.domain import ClientFormat

ErrorKind = Literal[
    "invalid_request",
    "authentication",
    "permission",
    "not_found",
    "request_too_large",
    "rate_limit",
    "api_error",
    "overloaded",
    "timeout",
    "unavailable",
]

_ANTHROPIC_TYPES: dict[str, str] = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "request_too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "api_error": "api_error",
    "overloaded": "overloaded_error",
    "timeout": "timeout_error",
    "unavailable": "api_error",
}

_OPENAI_TYPES: dict[str, tuple[str, str | None]] = {
    "invalid_request": ("invalid_request_error", None),
    "authentication": ("invalid_request_error", "invalid_api_key"),
    "permission": ("invalid_request_error", "permission_denied"),
    "not_found": ("invalid_request_error", "model_not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit": ("rate_limit_exceeded", "rate_limit_exceeded"),
    "api_error": ("server_error", None),
    "overloaded": ("server_error", "overloaded"),
    "timeout": ("server_error", "timeout"),
    "unavailable": ("server_error", "service_unavailable"),
}

DEFAULT_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "request_too_large": 413,
    "rate_limit": 429,
    "api_error": 502,
    "overloaded": 529,
    "timeout": 504,
    "unavailable": 503,
}


@dataclass
class GatewayError(Exception):
    kind: ErrorKind
    message: str
    status: int = 0
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.status:
            self.status = DEFAULT_STATUS[self.kind]
        super().__init__(self.message)

    def status_for(self, fmt: ClientFormat) -> int:
        # OpenAI has no 529: its overloaded answer is a 503.
        if fmt == "openai" and self.status == 529:
            return 503
        return self.status


def error_body(err: GatewayError, fmt: ClientFormat, request_id: str | None = None) -> dict[str, object]:
    if fmt == "anthropic":
        body: dict[str, object] = {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPES[err.kind], "message": err.message},
        }
        if request_id:
            body["request_id"] = request_id
        return body
    otype, default_code = _OPENAI_TYPES[err.kind]
    return {
        "error": {
            "message": err.message,
            "type": otype,
            "param": err.param,
            "code": err.code or default_code,
        }
    }


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


def sse_error_event(err: GatewayError, fmt: ClientFormat) -> bytes:
    """An error after a stream started: the client format's in-stream error, not a silent cut."""
    if fmt == "anthropic":
        data = orjson.dumps(error_body(err, "anthropic"))
        return b"event: error\ndata: " + data + b"\n\n"
    return b"data: " + orjson.dumps(error_body(err, "openai")) + b"\n\n"


def kind_from_anthropic_type(error_type: str | None) -> ErrorKind:
    """The kind of an Anthropic ``error.type`` (an upstream's in-stream error event)."""
    for kind, name in _ANTHROPIC_TYPES.items():
        if name == error_type:
            return kind  # type: ignore[return-value]
    return "api_error"


def invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError("invalid_request", message, param=param)
