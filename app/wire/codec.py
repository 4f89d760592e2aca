"""One client format, as the pipeline sees it: parse a request, encode an answer, a stream, an error.

Each API Tollway speaks (Anthropic Messages, OpenAI Chat Completions, OpenAI Responses) is one
``ClientCodec``. The pipeline never branches on the format: it asks the request's codec. Codecs are
pure (bytes and canonical types in, bytes out) and know nothing of the web framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from app.domain import ChatRequest, ChatResponse, ClientFormat, EventEncoder
from app.errors import GatewayError
from app.wire import anthropic, errors
from app.wire.openai import client as openai_client
from app.wire.responses import ResponsesCodec


class ClientCodec(Protocol):
    name: ClientFormat
    # The provider kind whose replies this format can forward untouched (None: always translate).
    native_provider: str | None

    def parse_request(self, body: Any, headers: Mapping[str, str]) -> ChatRequest:
        """The client's JSON body → canonical request; a ``GatewayError`` (invalid_request) if malformed."""
        ...

    def encode_response(self, resp: ChatResponse, req: ChatRequest, *, same_format: bool) -> bytes:
        """A complete canonical answer → the client's JSON body."""
        ...

    def stream_encoder(self, req: ChatRequest, model: str) -> EventEncoder:
        """A fresh per-stream encoder: canonical events → the client's SSE bytes (b"" to send nothing)."""
        ...

    def error_body(self, err: GatewayError, request_id: str | None) -> bytes:
        """The client's JSON error body."""
        ...

    def stream_error(self, err: GatewayError, encoder: EventEncoder | None = None) -> bytes:
        """The client's in-stream error event, once a stream has started; given the stream's encoder,
        a stateful format (Responses: sequence numbers, ``response.failed``) continues its sequence."""
        ...


class AnthropicCodec:
    name: ClientFormat = "anthropic"
    native_provider: str | None = "anthropic"

    def parse_request(self, body: Any, headers: Mapping[str, str]) -> ChatRequest:
        return anthropic.parse_request(
            body,
            anthropic_version=headers.get("anthropic-version"),
            anthropic_beta=headers.get("anthropic-beta"),
        )

    def encode_response(self, resp: ChatResponse, req: ChatRequest, *, same_format: bool) -> bytes:
        return anthropic.encode_response(resp, same_format=same_format)

    def stream_encoder(self, req: ChatRequest, model: str) -> EventEncoder:
        return anthropic.encode_event

    def error_body(self, err: GatewayError, request_id: str | None) -> bytes:
        return errors.encode_error(err, self.name, request_id)

    def stream_error(self, err: GatewayError, encoder: EventEncoder | None = None) -> bytes:
        return errors.sse_error_event(err, self.name)


class OpenAIChatCodec:
    name: ClientFormat = "openai"
    native_provider: str | None = None  # chunks are always re-encoded (ids, model name, usage chunk)

    def parse_request(self, body: Any, headers: Mapping[str, str]) -> ChatRequest:
        return openai_client.parse_request(body)

    def encode_response(self, resp: ChatResponse, req: ChatRequest, *, same_format: bool) -> bytes:
        return openai_client.encode_response(resp)

    def stream_encoder(self, req: ChatRequest, model: str) -> EventEncoder:
        return openai_client.ChunkEncoder(include_usage=req.include_usage, model=model).encode

    def error_body(self, err: GatewayError, request_id: str | None) -> bytes:
        return errors.encode_error(err, self.name, request_id)

    def stream_error(self, err: GatewayError, encoder: EventEncoder | None = None) -> bytes:
        return errors.sse_error_event(err, self.name)


CODECS: dict[str, ClientCodec] = {
    "anthropic": AnthropicCodec(),
    "openai": OpenAIChatCodec(),
    "responses": ResponsesCodec(),
}


def codec_for(fmt: ClientFormat) -> ClientCodec:
    return CODECS[fmt]
