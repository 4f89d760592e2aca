"""One adapter for every OpenAI-compatible upstream: OpenAI, vLLM, Ollama, llama.cpp server, others."""

from __future__ import annotations

from collections.abc import Mapping

from app.config import ProviderConfig
from app.domain import ChatRequest, ChatResponse, StreamEvent
from app.providers.base import UpstreamError
from app.providers.http import (
    EventTranslator,
    SSEUpstreamStream,
    forwarded_headers,
    make_client,
    malformed,
    open_sse,
    parse_json,
    send,
)
from app.wire.checks import MalformedReply
from app.wire.openai import provider as wire
from app.wire.sse import SSEEvent


class OpenAICompatProvider:
    kind = "openai"

    def __init__(
        self, name: str, cfg: ProviderConfig, *, base_url: str, credential: str | None, is_simulator: bool
    ) -> None:
        self.name = name
        self.is_simulator = is_simulator
        self._client = make_client(cfg, base_url)
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._max_tokens_field = cfg.max_tokens_field
        self._headers = {"content-type": "application/json", **cfg.extra_headers}
        if credential:
            self._headers["authorization"] = f"Bearer {credential}"

    def _request_headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        return {**self._headers, **forwarded_headers(client_headers, is_simulator=self.is_simulator)}

    async def complete(self, req: ChatRequest, upstream_model: str, headers: Mapping[str, str]) -> ChatResponse:
        body = wire.build_request(req, upstream_model, stream=False, max_tokens_field=self._max_tokens_field)
        response = await send(self._client, self._url, body, self._request_headers(headers), provider=self.name)
        try:
            return wire.parse_response(parse_json(response.content))
        except MalformedReply as exc:
            raise malformed(exc) from None

    async def open_stream(self, req: ChatRequest, upstream_model: str, headers: Mapping[str, str]) -> SSEUpstreamStream:
        body = wire.build_request(req, upstream_model, stream=True, max_tokens_field=self._max_tokens_field)
        provider = self.name
        return await open_sse(
            self._client,
            self._url,
            body,
            self._request_headers(headers),
            lambda: _Translator(provider, upstream_model),
            provider=self.name,
        )

    async def count_tokens(self, req: ChatRequest, upstream_model: str) -> int | None:
        return None  # OpenAI has no count endpoint: the caller estimates

    async def aclose(self) -> None:
        await self._client.aclose()


class _Translator(EventTranslator):
    """OpenAI chunks → canonical (Anthropic-shaped) events; ``[DONE]`` ends the stream."""

    def __init__(self, provider: str, upstream_model: str) -> None:
        self._decoder = wire.ChunkDecoder(upstream_model)
        self._provider = provider

    def translate(self, item: SSEEvent) -> list[StreamEvent]:
        if item.data == b"[DONE]":
            self.done = True
            return self._decoder.finish_events()
        chunk = parse_json(item.data)  # MalformedReply becomes an in-stream error (EventTranslator.feed)
        if isinstance(chunk, dict) and "error" in chunk:
            raise UpstreamError(502, "overloaded", f"the upstream provider '{self._provider}' failed mid-stream")
        return self._decoder.feed(chunk)

    def end(self) -> list[StreamEvent]:
        if self._decoder.finish is None:
            # Closed before a finish_reason or [DONE]: a cut stream, not a complete answer.
            raise UpstreamError(502, "api_error", f"the upstream provider '{self._provider}' ended the stream early")
        return self._decoder.finish_events()
