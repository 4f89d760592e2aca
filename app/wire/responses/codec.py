"""The Responses API as a ``ClientCodec`` (see app/wire/codec.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from app.domain import ChatRequest, ChatResponse, ClientFormat
from app.errors import GatewayError
from app.wire import errors
from app.wire.responses.output import response_json
from app.wire.responses.request import parse_request
from app.wire.responses.stream import ResponsesStreamEncoder

if TYPE_CHECKING:
    from app.domain import EventEncoder


class ResponsesCodec:
    name: ClientFormat = "responses"
    native_provider: str | None = None  # no upstream speaks it: always translated from canonical

    def parse_request(self, body: Any, headers: Mapping[str, str]) -> ChatRequest:
        return parse_request(body)

    def encode_response(self, resp: ChatResponse, req: ChatRequest, *, same_format: bool) -> bytes:
        return orjson.dumps(response_json(resp, req))

    def stream_encoder(self, req: ChatRequest, model: str) -> ResponsesStreamEncoder:
        return ResponsesStreamEncoder(req, model)

    def error_body(self, err: GatewayError, request_id: str | None) -> bytes:
        return errors.encode_error(err, self.name, request_id)

    def stream_error(self, err: GatewayError, encoder: EventEncoder | None = None) -> bytes:
        """Mid-stream, pass the stream's encoder: the error then carries the next sequence number
        and follows a ``response.failed`` holding what was streamed so far."""
        if isinstance(encoder, ResponsesStreamEncoder):
            return encoder.error(err)
        return errors.sse_error_event(err, self.name)
