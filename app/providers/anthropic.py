"""The Anthropic Messages adapter (the real API, or anything speaking its wire format)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

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
from app.wire import anthropic as wire
from app.wire.checks import MalformedReply, count, obj
from app.wire.sse import SSEEvent

LEGACY_VERSION = "2023-06-01"


class AnthropicProvider:
    kind = "anthropic"

    def __init__(
        self, name: str, cfg: ProviderConfig, *, base_url: str, credential: str | None, is_simulator: bool
    ) -> None:
        self.name = name
        self.is_simulator = is_simulator
        self._client = make_client(cfg, base_url)
        root = base_url.rstrip("/")
        self._messages_url = f"{root}/v1/messages"
        self._count_url = f"{root}/v1/messages/count_tokens"
        self._headers = {"content-type": "application/json", **cfg.extra_headers}
        if credential:
            self._headers["x-api-key"] = credential

    def _request_headers(self, req: ChatRequest, client_headers: Mapping[str, str]) -> dict[str, str]:
        headers = dict(self._headers)
        # API version 2026-10-21 rejects sampling parameters; a request that still carries them (the
        # model's config allows them) is sent under the version that accepts them.
        has_sampling = req.temperature is not None or req.top_p is not None or req.top_k is not None
        headers["anthropic-version"] = LEGACY_VERSION if has_sampling else (req.anthropic_version or LEGACY_VERSION)
        if req.anthropic_beta:
            headers["anthropic-beta"] = req.anthropic_beta
        headers.update(forwarded_headers(client_headers, is_simulator=self.is_simulator))
        return headers

    async def complete(self, req: ChatRequest, upstream_model: str, headers: Mapping[str, str]) -> ChatResponse:
        body = wire.build_request(req, upstream_model, stream=False)
        response = await send(
            self._client, self._messages_url, body, self._request_headers(req, headers), provider=self.name
        )
        try:
            return wire.parse_response(parse_json(response.content))
        except MalformedReply as exc:
            raise malformed(exc) from None

    async def open_stream(self, req: ChatRequest, upstream_model: str, headers: Mapping[str, str]) -> SSEUpstreamStream:
        body = wire.build_request(req, upstream_model, stream=True)
        return await open_sse(
            self._client,
            self._messages_url,
            body,
            self._request_headers(req, headers),
            _translator(self.name),
            provider=self.name,
        )

    async def count_tokens(self, req: ChatRequest, upstream_model: str) -> int | None:
        body = wire.build_request(req, upstream_model, stream=False)
        body.pop("max_tokens", None)
        body.pop("stop_sequences", None)
        body.pop("metadata", None)
        try:
            response = await send(
                self._client, self._count_url, body, self._request_headers(req, {}), provider=self.name
            )
        except UpstreamError:
            return None
        try:
            return count(obj(parse_json(response.content), "the reply").get("input_tokens"), "input_tokens")
        except MalformedReply:
            return None  # not a count: the caller estimates, as when the upstream refuses

    async def aclose(self) -> None:
        await self._client.aclose()


class _Translator(EventTranslator):
    """Anthropic SSE → canonical events: the same events, parsed (the raw bytes ride along).

    An Anthropic stream ends with message_stop, which the relay checks: ``done`` is never set here."""

    def __init__(self, provider: str) -> None:
        self._provider = provider

    def translate(self, item: SSEEvent) -> list[StreamEvent]:
        # MalformedReply becomes the client's in-stream error event (EventTranslator.feed).
        return [wire.parse_event(item.event, item.data, item.raw)]


def _translator(provider: str) -> Callable[[], _Translator]:
    return lambda: _Translator(provider)
