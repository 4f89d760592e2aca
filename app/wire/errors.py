"""A ``GatewayError`` in each client's wire format: the JSON error body and the in-stream SSE error event."""

from __future__ import annotations

import orjson

from app.domain import ClientFormat
from app.errors import ErrorKind, GatewayError

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


def error_body(err: GatewayError, fmt: ClientFormat, request_id: str | None = None) -> dict[str, object]:
    """Anthropic's envelope, or OpenAI's (shared by Chat Completions and Responses)."""
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


def sse_error_event(err: GatewayError, fmt: ClientFormat) -> bytes:
    """An error after a stream started: the client format's in-stream error, not a silent cut."""
    if fmt == "anthropic":
        data = orjson.dumps(error_body(err, "anthropic"))
        return b"event: error\ndata: " + data + b"\n\n"
    if fmt == "responses":
        # Without the stream's encoder the position is unknown: this is for a stream with no event yet.
        # Mid-stream, ResponsesStreamEncoder.error numbers it and sends response.failed first.
        data = orjson.dumps({"type": "error", "sequence_number": 0, **responses_error_fields(err)})
        return b"event: error\ndata: " + data + b"\n\n"
    return b"data: " + orjson.dumps(error_body(err, "openai")) + b"\n\n"


def responses_error_fields(err: GatewayError) -> dict[str, object]:
    """A Responses ``error`` event's fields (the SDK's ``ResponseErrorEvent``), with the Chat
    Completions ``error`` object beside them so the openai SDKs raise it as an APIError."""
    inner = error_body(err, "openai")["error"]
    assert isinstance(inner, dict)
    return {"code": inner["code"] or inner["type"], "message": err.message, "param": err.param, "error": inner}


def responses_failure(err: GatewayError) -> dict[str, object]:
    """``Response.error`` of a failed response; the SDK allows only a fixed set of codes."""
    code = "rate_limit_exceeded" if err.kind == "rate_limit" else "server_error"
    return {"code": code, "message": err.message}


def kind_from_anthropic_type(error_type: str | None) -> ErrorKind:
    """The kind of an Anthropic ``error.type`` (an upstream's in-stream error event)."""
    for kind, name in _ANTHROPIC_TYPES.items():
        if name == error_type:
            return kind  # type: ignore[return-value]
    return "api_error"


def encode_error(err: GatewayError, fmt: ClientFormat, request_id: str | None = None) -> bytes:
    return orjson.dumps(error_body(err, fmt, request_id))
