"""The exact HTTP requests the adapters send to *real* providers (respx, no simulator), and how
upstream failures become errors a client may see."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import respx

from app.config import ProviderConfig
from app.domain import ChatRequest, StreamEvent
from app.providers.anthropic import AnthropicProvider
from app.providers.base import UpstreamError
from app.providers.openai_compat import OpenAICompatProvider
from app.wire import anthropic as anthropic_wire
from app.wire import openai as openai_wire

ANTHROPIC_BASE = "https://api.anthropic.test"
OPENAI_BASE = "https://api.openai.test/v1"
ANTHROPIC_SECRET = "sk-ant-real-secret-123"
OPENAI_SECRET = "sk-openai-real-secret-456"
CLIENT_HEADERS = {
    "x-sim-error": "500",
    "x-sim-reply": "leak?",
    "authorization": "Bearer tw-team-key",
    "x-api-key": "tw-team-key",
    "anthropic-version": "2026-10-21",
    "x-stainless-lang": "python",
}


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


def anthropic_provider(*, simulator: bool = False, **cfg: Any) -> AnthropicProvider:
    config = ProviderConfig(kind="anthropic", base_url=ANTHROPIC_BASE, **cfg)
    return AnthropicProvider(
        "anthropic", config, base_url=ANTHROPIC_BASE, credential=ANTHROPIC_SECRET, is_simulator=simulator
    )


def openai_provider(**cfg: Any) -> OpenAICompatProvider:
    config = ProviderConfig(kind="openai", base_url=OPENAI_BASE, **cfg)
    return OpenAICompatProvider(
        "openai", config, base_url=OPENAI_BASE, credential=OPENAI_SECRET, is_simulator=False
    )


def anthropic_request(version: str | None = "2026-10-21", **extra: Any) -> ChatRequest:
    body = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}],
        **extra,
    }
    return anthropic_wire.parse_request(body, anthropic_version=version, anthropic_beta=None)


def openai_request(**extra: Any) -> ChatRequest:
    body = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64, **extra}
    return openai_wire.parse_request(body)


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-5-5",
    "content": [{"type": "text", "text": "Hello"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 1},
}
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-5-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}


def sent(route: respx.Route) -> tuple[httpx.Request, Any]:
    request = route.calls.last.request
    return request, orjson.loads(request.content)


def assert_no_client_headers(request: httpx.Request) -> None:
    names = {k.lower() for k in request.headers}
    assert not any(n.startswith("x-sim-") for n in names), names
    assert not any(n.startswith("x-stainless") for n in names)
    assert "tw-team-key" not in str(request.headers)


# ---- Anthropic --------------------------------------------------------------------------------------


async def test_anthropic_complete_request_shape(mock: respx.MockRouter) -> None:
    route = mock.post(f"{ANTHROPIC_BASE}/v1/messages").mock(return_value=httpx.Response(200, json=MESSAGE))
    provider = anthropic_provider(extra_headers={"anthropic-organization": "org-1"})
    try:
        req = anthropic_request(metadata={"user_id": "u1"}, some_new_field=1)
        req.anthropic_beta = "context-1m-2025-08-07"
        answer = await provider.complete(req, "claude-sonnet-5-5-20261001", CLIENT_HEADERS)
    finally:
        await provider.aclose()
    assert answer.content == [{"type": "text", "text": "Hello"}] and answer.usage.input_tokens == 5
    request, body = sent(route)
    assert str(request.url) == f"{ANTHROPIC_BASE}/v1/messages"
    assert request.headers["x-api-key"] == ANTHROPIC_SECRET
    assert "authorization" not in request.headers
    assert request.headers["anthropic-version"] == "2026-10-21"
    assert request.headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert request.headers["anthropic-organization"] == "org-1"
    assert request.headers["content-type"] == "application/json"
    assert_no_client_headers(request)
    assert body == {
        "model": "claude-sonnet-5-5-20261001",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "metadata": {"user_id": "u1"},
        "some_new_field": 1,
    }


async def test_anthropic_sampling_goes_out_under_the_version_that_accepts_it(mock: respx.MockRouter) -> None:
    route = mock.post(f"{ANTHROPIC_BASE}/v1/messages").mock(return_value=httpx.Response(200, json=MESSAGE))
    provider = anthropic_provider()
    try:
        await provider.complete(anthropic_request(temperature=0.2), "claude-haiku-4-5", {})
        request, body = sent(route)
        assert request.headers["anthropic-version"] == "2023-06-01" and body["temperature"] == 0.2
        await provider.complete(anthropic_request(version=None), "claude-haiku-4-5", {})
        request, body = sent(route)
        assert request.headers["anthropic-version"] == "2023-06-01" and "temperature" not in body
    finally:
        await provider.aclose()


async def test_anthropic_from_openai_client_defaults_to_2023_version(mock: respx.MockRouter) -> None:
    route = mock.post(f"{ANTHROPIC_BASE}/v1/messages").mock(return_value=httpx.Response(200, json=MESSAGE))
    provider = anthropic_provider()
    try:
        await provider.complete(openai_request(model="claude-haiku-5-5"), "claude-haiku-5-5", CLIENT_HEADERS)
    finally:
        await provider.aclose()
    request, body = sent(route)
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert_no_client_headers(request)
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


async def test_simulator_gets_the_test_directives_but_not_the_client_key(mock: respx.MockRouter) -> None:
    route = mock.post(f"{ANTHROPIC_BASE}/v1/messages").mock(return_value=httpx.Response(200, json=MESSAGE))
    provider = anthropic_provider(simulator=True)
    try:
        await provider.complete(anthropic_request(), "m", CLIENT_HEADERS)
    finally:
        await provider.aclose()
    request, _ = sent(route)
    assert request.headers["x-sim-error"] == "500" and request.headers["x-sim-reply"] == "leak?"
    assert request.headers["x-api-key"] == ANTHROPIC_SECRET
    assert "authorization" not in request.headers


async def test_anthropic_stream_request_and_events(mock: respx.MockRouter) -> None:
    sse = b"".join(
        anthropic_wire.encode_event(e)
        for e in anthropic_wire.response_to_events(anthropic_wire.parse_response(MESSAGE))
    )
    route = mock.post(f"{ANTHROPIC_BASE}/v1/messages").mock(
        return_value=httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})
    )
    provider = anthropic_provider()
    try:
        stream = await provider.open_stream(
            anthropic_request(stream=True), "claude-sonnet-5-5", CLIENT_HEADERS
        )
        events: list[StreamEvent] = [e async for e in stream]
    finally:
        await provider.aclose()
    request, body = sent(route)
    assert body["stream"] is True
    assert_no_client_headers(request)
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    # same-format: the exact upstream bytes are kept for forwarding
    assert b"".join(e.raw or b"" for e in events) == sse


async def test_anthropic_count_tokens_request(mock: respx.MockRouter) -> None:
    route = mock.post(f"{ANTHROPIC_BASE}/v1/messages/count_tokens").mock(
        return_value=httpx.Response(200, json={"input_tokens": 14})
    )
    provider = anthropic_provider()
    try:
        tokens = await provider.count_tokens(anthropic_request(stop_sequences=["x"]), "claude-sonnet-5-5")
    finally:
        await provider.aclose()
    assert tokens == 14
    request, body = sent(route)
    assert request.headers["x-api-key"] == ANTHROPIC_SECRET
    assert body == {
        "model": "claude-sonnet-5-5",
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }


# ---- OpenAI-compatible ----------------------------------------------------------------------------------


async def test_openai_complete_request_shape(mock: respx.MockRouter) -> None:
    route = mock.post(f"{OPENAI_BASE}/chat/completions").mock(
        return_value=httpx.Response(200, json=COMPLETION)
    )
    provider = openai_provider()
    try:
        answer = await provider.complete(openai_request(seed=4, user="u1"), "gpt-5-mini-2026", CLIENT_HEADERS)
    finally:
        await provider.aclose()
    assert answer.content == [{"type": "text", "text": "Hello"}] and answer.stop_reason == "end_turn"
    request, body = sent(route)
    assert str(request.url) == f"{OPENAI_BASE}/chat/completions"
    assert request.headers["authorization"] == f"Bearer {OPENAI_SECRET}"
    assert "x-api-key" not in request.headers and "anthropic-version" not in request.headers
    assert_no_client_headers(request)
    assert body == {
        "model": "gpt-5-mini-2026",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 64,
        "seed": 4,
        "user": "u1",
    }


async def test_openai_local_server_without_key_and_legacy_max_tokens(mock: respx.MockRouter) -> None:
    route = mock.post("http://127.0.0.1:9/v1/chat/completions").mock(
        return_value=httpx.Response(200, json=COMPLETION)
    )
    config = ProviderConfig(kind="openai", base_url="http://127.0.0.1:9/v1/", max_tokens_field="max_tokens")
    provider = OpenAICompatProvider(
        "vllm", config, base_url="http://127.0.0.1:9/v1/", credential=None, is_simulator=False
    )
    try:
        await provider.complete(openai_request(), "llama", {})
    finally:
        await provider.aclose()
    request, body = sent(route)
    assert "authorization" not in request.headers
    assert body["max_tokens"] == 64 and "max_completion_tokens" not in body


def openai_sse(*chunks: Any, done: bool = True) -> bytes:
    out = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "model": "gpt-5-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE_CHUNK = {
    "id": "chatcmpl-1",
    "choices": [],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}


async def test_openai_stream_always_asks_for_usage(mock: respx.MockRouter) -> None:
    sse = openai_sse(
        chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}), chunk({}, "stop"), USAGE_CHUNK
    )
    route = mock.post(f"{OPENAI_BASE}/chat/completions").mock(return_value=httpx.Response(200, content=sse))
    provider = openai_provider()
    try:
        stream = await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        events = [e async for e in stream]
    finally:
        await provider.aclose()
    _, body = sent(route)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert events[-1].type == "message_stop"
    assert events[-2].data["usage"]["input_tokens"] == 9 and events[-2].data["usage"]["output_tokens"] == 2


async def collect(stream: Any) -> list[StreamEvent]:
    return [e async for e in stream]


async def test_openai_mid_stream_error_raises(mock: respx.MockRouter) -> None:
    sse = openai_sse(
        chunk({"content": "Hi"}), {"error": {"message": "boom at https://internal", "type": "server_error"}}
    )
    mock.post(f"{OPENAI_BASE}/chat/completions").mock(return_value=httpx.Response(200, content=sse))
    provider = openai_provider()
    try:
        stream = await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        with pytest.raises(UpstreamError) as info:
            await collect(stream)
    finally:
        await provider.aclose()
    assert "https://internal" not in info.value.message


async def test_openai_stream_cut_without_finish_is_an_error_not_a_clean_end(mock: respx.MockRouter) -> None:
    sse = openai_sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}), done=False)
    mock.post(f"{OPENAI_BASE}/chat/completions").mock(return_value=httpx.Response(200, content=sse))
    provider = openai_provider()
    try:
        stream = await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        with pytest.raises(UpstreamError):
            await collect(stream)
    finally:
        await provider.aclose()


async def test_openai_stream_with_finish_but_no_done_ends_cleanly(mock: respx.MockRouter) -> None:
    # Some OpenAI-compatible servers close after the finish chunk without [DONE]; that is complete.
    sse = openai_sse(chunk({"content": "Hi"}), chunk({}, "length"), done=False)
    mock.post(f"{OPENAI_BASE}/chat/completions").mock(return_value=httpx.Response(200, content=sse))
    provider = openai_provider()
    try:
        stream = await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        events = await collect(stream)
    finally:
        await provider.aclose()
    assert events[-2].data["delta"]["stop_reason"] == "max_tokens"


async def _broken_body() -> AsyncIterator[bytes]:
    yield b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","usage":{}}}\n\n'
    raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


async def test_anthropic_stream_cut_by_the_network_raises(mock: respx.MockRouter) -> None:
    mock.post(f"{ANTHROPIC_BASE}/v1/messages").mock(return_value=httpx.Response(200, stream=_Body()))
    provider = anthropic_provider()
    try:
        stream = await provider.open_stream(anthropic_request(stream=True), "m", {})
        with pytest.raises(UpstreamError) as info:
            await collect(stream)
    finally:
        await provider.aclose()
    assert info.value.kind == "api_error"


class _Body(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in _broken_body():
            yield part


async def test_anthropic_malformed_stream_event_is_an_upstream_error(mock: respx.MockRouter) -> None:
    sse = (
        b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n'
        b"event: content_block_delta\ndata: {oops\n\n"
    )
    mock.post(f"{ANTHROPIC_BASE}/v1/messages").mock(return_value=httpx.Response(200, content=sse))
    provider = anthropic_provider()
    try:
        stream = await provider.open_stream(anthropic_request(stream=True), "m", {})
        with pytest.raises(UpstreamError):
            await collect(stream)
    finally:
        await provider.aclose()


# ---- upstream failures → errors a client may see ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after"),
    [
        (429, {"retry-after": "7"}, "rate_limit", 7.0),
        (429, {"retry-after-ms": "1500"}, "rate_limit", 1.5),
        (429, {"retry-after": "soon"}, "rate_limit", None),
        (529, {}, "overloaded", None),
        (503, {}, "overloaded", None),
        (500, {}, "api_error", None),
        (504, {}, "timeout", None),
        (401, {}, "api_error", None),
        (403, {}, "api_error", None),
        (404, {}, "not_found", None),
        (400, {}, "invalid_request", None),
        (413, {}, "request_too_large", None),
    ],
)
async def test_status_mapping_never_leaks_upstream_internals(
    mock: respx.MockRouter, status: int, headers: dict[str, str], kind: str, retry_after: float | None
) -> None:
    upstream_body = {
        "type": "error",
        "error": {"type": "x", "message": "bad thing"},
        "debug": f"key {ANTHROPIC_SECRET} at {ANTHROPIC_BASE}/internal",
    }
    mock.post(f"{ANTHROPIC_BASE}/v1/messages").mock(
        return_value=httpx.Response(status, json=upstream_body, headers=headers)
    )
    provider = anthropic_provider()
    try:
        for stream in (False, True):
            with pytest.raises(UpstreamError) as info:
                if stream:
                    await provider.open_stream(anthropic_request(stream=True), "m", {})
                else:
                    await provider.complete(anthropic_request(), "m", {})
            err = info.value
            assert (err.status, err.kind, err.retry_after_s) == (status, kind, retry_after)
            assert ANTHROPIC_SECRET not in err.message and "api.anthropic.test" not in err.message
            assert "debug" not in err.message
    finally:
        await provider.aclose()


async def test_timeouts_and_connection_errors(mock: respx.MockRouter) -> None:
    route = mock.post(f"{OPENAI_BASE}/chat/completions")
    provider = openai_provider()
    try:
        route.side_effect = httpx.ReadTimeout("timed out")
        with pytest.raises(UpstreamError) as info:
            await provider.complete(openai_request(), "gpt-5-mini", {})
        assert (info.value.status, info.value.kind) == (None, "timeout")
        route.side_effect = httpx.ConnectError(f"cannot connect to {OPENAI_BASE}")
        with pytest.raises(UpstreamError) as info:
            await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        assert (info.value.status, info.value.kind) == (None, "api_error")
        assert "openai.test" not in info.value.message
    finally:
        await provider.aclose()


async def test_malformed_success_body_is_a_502(mock: respx.MockRouter) -> None:
    mock.post(f"{ANTHROPIC_BASE}/v1/messages").mock(return_value=httpx.Response(200, content=b"<html>"))
    provider = anthropic_provider()
    try:
        with pytest.raises(UpstreamError) as info:
            await provider.complete(anthropic_request(), "m", {})
    finally:
        await provider.aclose()
    assert info.value.status == 502


def test_timeouts_and_pool_come_from_config() -> None:
    provider = anthropic_provider(connect_timeout_s=1.5, read_timeout_s=12, max_connections=7)
    client = provider._client
    assert client.timeout.connect == 1.5 and client.timeout.read == 12
    pool = client._transport._pool  # type: ignore[attr-defined]
    assert pool._max_connections == 7
