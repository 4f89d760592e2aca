"""The exact HTTP requests the adapters send to *real* providers, and how upstream failures become
errors a client may see.

The upstream is a scripted HTTP/1.1 server on a loopback socket (``tests/upstream_server.py``), so
these tests see what went over the wire, whichever HTTP client the adapters use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import orjson
import pytest

from app.config import ProviderConfig
from app.domain import ChatRequest, StreamEvent
from app.providers.anthropic import AnthropicProvider, _translator
from app.providers.base import UpstreamError
from app.providers.http import SSEUpstreamStream
from app.providers.openai_compat import OpenAICompatProvider
from app.providers.openai_compat import _Translator as OpenAITranslator
from app.wire import anthropic as anthropic_wire
from app.wire.openai import client as openai_wire
from tests.upstream_server import (
    Framing,
    ReceivedRequest,
    Reply,
    UpstreamServer,
    closed_port,
    unanswered_connects,
    upstream,
)

__all__ = ["upstream"]  # the fixture, imported so that pytest finds it

LIMITS = ProviderConfig(kind="anthropic", base_url="http://127.0.0.1:1")  # the default bounds
MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
COMPLETIONS = "/v1/chat/completions"
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


def anthropic_provider(base_url: str, *, simulator: bool = False, **cfg: Any) -> AnthropicProvider:
    config = ProviderConfig(kind="anthropic", base_url=base_url, **cfg)
    return AnthropicProvider(
        "anthropic", config, base_url=base_url, credential=ANTHROPIC_SECRET, is_simulator=simulator
    )


def openai_provider(base_url: str, **cfg: Any) -> OpenAICompatProvider:
    # OpenAI-style base URLs carry the /v1 prefix themselves
    base_url = f"{base_url}/v1"
    config = ProviderConfig(kind="openai", base_url=base_url, **cfg)
    return OpenAICompatProvider("openai", config, base_url=base_url, credential=OPENAI_SECRET, is_simulator=False)


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


def sent(upstream: UpstreamServer, path: str) -> tuple[dict[str, str], Any]:
    """The headers (names lower-cased) and JSON body of the last POST to ``path``."""
    request = upstream.last(path)
    assert request.method == "POST"
    return request.headers, request.json()


def assert_only_requested(upstream: UpstreamServer, path: str) -> None:
    assert [(r.method, r.path) for r in upstream.requests] == [("POST", path)]


def assert_no_client_headers(request: ReceivedRequest) -> None:
    names = {name.lower() for name, _ in request.raw_headers}
    assert not any(n.startswith("x-sim-") for n in names), names
    assert not any(n.startswith("x-stainless") for n in names)
    assert not any("tw-team-key" in value for _, value in request.raw_headers)


def assert_nothing_revealed(err: UpstreamError, upstream_address: str) -> None:
    """A client may read the message: neither Tollway's credentials nor the upstream's address."""
    assert ANTHROPIC_SECRET not in err.message and OPENAI_SECRET not in err.message
    assert upstream_address not in err.message and "127.0.0.1" not in err.message


def split_into(data: bytes, pieces: int) -> list[bytes]:
    """``data`` cut into ``pieces`` writes at arbitrary offsets (mid-line, mid-event)."""
    size = -(-len(data) // pieces)
    return [data[i : i + size] for i in range(0, len(data), size)]


async def eventually(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.005)


def _anthropic_sse(*payloads: Mapping[str, object]) -> bytes:
    return b"".join(b"event: " + str(p["type"]).encode() + b"\ndata: " + orjson.dumps(p) + b"\n\n" for p in payloads)


START = {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3, "output_tokens": 0}}}
DELTAS = [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}} for t in "abc"]
STOP = {"type": "message_stop"}


# ---- Anthropic --------------------------------------------------------------------------------------


async def test_anthropic_complete_request_shape(upstream: UpstreamServer) -> None:
    upstream.reply(MESSAGES, Reply.json(MESSAGE))
    provider = anthropic_provider(upstream.url, extra_headers={"anthropic-organization": "org-1"})
    try:
        req = anthropic_request(metadata={"user_id": "u1"}, some_new_field=1)
        req.anthropic_beta = "context-1m-2025-08-07"
        answer = await provider.complete(req, "claude-sonnet-5-5-20261001", CLIENT_HEADERS)
    finally:
        await provider.aclose()
    assert answer.content == [{"type": "text", "text": "Hello"}] and answer.usage.input_tokens == 5
    assert_only_requested(upstream, MESSAGES)
    headers, body = sent(upstream, MESSAGES)
    assert upstream.last(MESSAGES).query == {}
    assert headers["x-api-key"] == ANTHROPIC_SECRET
    assert "authorization" not in headers
    assert headers["anthropic-version"] == "2026-10-21"
    assert headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert headers["anthropic-organization"] == "org-1"
    assert headers["content-type"] == "application/json"
    assert_no_client_headers(upstream.last(MESSAGES))
    assert body == {
        "model": "claude-sonnet-5-5-20261001",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "metadata": {"user_id": "u1"},
        "some_new_field": 1,
    }


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_a_redirect_is_not_followed(upstream: UpstreamServer, kind: str) -> None:
    # a followed redirect would carry Tollway's credential to wherever the upstream points
    path = MESSAGES if kind == "anthropic" else COMPLETIONS
    upstream.reply(path, Reply.json({}, status=307, headers={"location": f"{upstream.url}/elsewhere"}))
    upstream.reply("/elsewhere", Reply.json(MESSAGE if kind == "anthropic" else COMPLETION))
    provider = anthropic_provider(upstream.url) if kind == "anthropic" else openai_provider(upstream.url)
    request = anthropic_request() if kind == "anthropic" else openai_request()
    try:
        with pytest.raises(UpstreamError) as info:
            await provider.complete(request, "m", {})
    finally:
        await provider.aclose()
    assert info.value.status == 307
    assert_only_requested(upstream, path)
    assert upstream.received("/elsewhere") == []


async def test_anthropic_sampling_goes_out_under_the_version_that_accepts_it(upstream: UpstreamServer) -> None:
    upstream.reply(MESSAGES, Reply.json(MESSAGE))
    provider = anthropic_provider(upstream.url)
    try:
        await provider.complete(anthropic_request(temperature=0.2), "claude-haiku-4-5", {})
        headers, body = sent(upstream, MESSAGES)
        assert headers["anthropic-version"] == "2023-06-01" and body["temperature"] == 0.2
        await provider.complete(anthropic_request(version=None), "claude-haiku-4-5", {})
        headers, body = sent(upstream, MESSAGES)
        assert headers["anthropic-version"] == "2023-06-01" and "temperature" not in body
    finally:
        await provider.aclose()
    assert len(upstream.received(MESSAGES)) == 2


async def test_anthropic_from_openai_client_defaults_to_2023_version(upstream: UpstreamServer) -> None:
    upstream.reply(MESSAGES, Reply.json(MESSAGE))
    provider = anthropic_provider(upstream.url)
    try:
        await provider.complete(openai_request(model="claude-haiku-5-5"), "claude-haiku-5-5", CLIENT_HEADERS)
    finally:
        await provider.aclose()
    headers, body = sent(upstream, MESSAGES)
    assert headers["anthropic-version"] == "2023-06-01"
    assert_no_client_headers(upstream.last(MESSAGES))
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


async def test_simulator_gets_the_test_directives_but_not_the_client_key(upstream: UpstreamServer) -> None:
    upstream.reply(MESSAGES, Reply.json(MESSAGE))
    provider = anthropic_provider(upstream.url, simulator=True)
    try:
        await provider.complete(anthropic_request(), "m", CLIENT_HEADERS)
    finally:
        await provider.aclose()
    headers, _ = sent(upstream, MESSAGES)
    assert headers["x-sim-error"] == "500" and headers["x-sim-reply"] == "leak?"
    assert headers["x-api-key"] == ANTHROPIC_SECRET
    assert "authorization" not in headers


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
async def test_anthropic_stream_request_and_events(upstream: UpstreamServer, framing: Framing) -> None:
    sse = b"".join(
        anthropic_wire.encode_event(e)
        for e in anthropic_wire.response_to_events(anthropic_wire.parse_response(MESSAGE))
    )
    # several network writes, cut mid-event, as a real upstream's bytes arrive
    upstream.reply(MESSAGES, Reply.sse(*split_into(sse, 4), framing=framing, pause_s=0.005))
    provider = anthropic_provider(upstream.url)
    try:
        stream = await provider.open_stream(anthropic_request(stream=True), "claude-sonnet-5-5", CLIENT_HEADERS)
        events: list[StreamEvent] = [e async for e in stream]
    finally:
        await provider.aclose()
    _, body = sent(upstream, MESSAGES)
    assert body["stream"] is True
    assert_no_client_headers(upstream.last(MESSAGES))
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    # same-format: the exact upstream bytes are kept for forwarding
    assert b"".join(e.raw or b"" for e in events) == sse


async def test_anthropic_count_tokens_request(upstream: UpstreamServer) -> None:
    upstream.reply(COUNT_TOKENS, Reply.json({"input_tokens": 14}))
    provider = anthropic_provider(upstream.url)
    try:
        tokens = await provider.count_tokens(anthropic_request(stop_sequences=["x"]), "claude-sonnet-5-5")
    finally:
        await provider.aclose()
    assert tokens == 14
    assert_only_requested(upstream, COUNT_TOKENS)
    headers, body = sent(upstream, COUNT_TOKENS)
    assert headers["x-api-key"] == ANTHROPIC_SECRET
    assert body == {
        "model": "claude-sonnet-5-5",
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }


# ---- OpenAI-compatible ----------------------------------------------------------------------------------


async def test_openai_complete_request_shape(upstream: UpstreamServer) -> None:
    upstream.reply(COMPLETIONS, Reply.json(COMPLETION))
    provider = openai_provider(upstream.url)
    try:
        answer = await provider.complete(openai_request(seed=4, user="u1"), "gpt-5-mini-2026", CLIENT_HEADERS)
    finally:
        await provider.aclose()
    assert answer.content == [{"type": "text", "text": "Hello"}] and answer.stop_reason == "end_turn"
    assert_only_requested(upstream, COMPLETIONS)
    headers, body = sent(upstream, COMPLETIONS)
    assert upstream.last(COMPLETIONS).query == {}
    assert headers["authorization"] == f"Bearer {OPENAI_SECRET}"
    assert "x-api-key" not in headers and "anthropic-version" not in headers
    assert headers["content-type"] == "application/json"
    assert_no_client_headers(upstream.last(COMPLETIONS))
    assert body == {
        "model": "gpt-5-mini-2026",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 64,
        "seed": 4,
        "user": "u1",
    }


async def test_openai_local_server_without_key_and_legacy_max_tokens(upstream: UpstreamServer) -> None:
    upstream.reply(COMPLETIONS, Reply.json(COMPLETION))
    base_url = f"{upstream.url}/v1/"  # the trailing slash is tolerated
    config = ProviderConfig(kind="openai", base_url=base_url, max_tokens_field="max_tokens")
    provider = OpenAICompatProvider("vllm", config, base_url=base_url, credential=None, is_simulator=False)
    try:
        await provider.complete(openai_request(), "llama", {})
    finally:
        await provider.aclose()
    assert_only_requested(upstream, COMPLETIONS)
    headers, body = sent(upstream, COMPLETIONS)
    assert "authorization" not in headers
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


async def test_openai_stream_always_asks_for_usage(upstream: UpstreamServer) -> None:
    sse = openai_sse(
        chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}), chunk({}, "stop"), USAGE_CHUNK
    )
    upstream.reply(COMPLETIONS, Reply.sse(*split_into(sse, 3), pause_s=0.005))
    provider = openai_provider(upstream.url)
    try:
        stream = await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        events = [e async for e in stream]
    finally:
        await provider.aclose()
    _, body = sent(upstream, COMPLETIONS)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert events[-1].type == "message_stop"
    assert events[-2].data["usage"]["input_tokens"] == 9 and events[-2].data["usage"]["output_tokens"] == 2


async def collect(stream: Any) -> list[StreamEvent]:
    return [e async for e in stream]


async def test_openai_mid_stream_error_raises(upstream: UpstreamServer) -> None:
    sse = openai_sse(
        chunk({"content": "Hi"}), {"error": {"message": "boom at https://internal", "type": "server_error"}}
    )
    upstream.reply(COMPLETIONS, Reply.sse(sse))
    provider = openai_provider(upstream.url)
    try:
        stream = await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        with pytest.raises(UpstreamError) as info:
            await collect(stream)
    finally:
        await provider.aclose()
    assert "https://internal" not in info.value.message


async def test_openai_stream_cut_without_finish_is_an_error_not_a_clean_end(upstream: UpstreamServer) -> None:
    # the upstream ends its response properly, but before any finish_reason or [DONE]
    sse = openai_sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}), done=False)
    upstream.reply(COMPLETIONS, Reply.sse(sse))
    provider = openai_provider(upstream.url)
    try:
        stream = await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        with pytest.raises(UpstreamError):
            await collect(stream)
    finally:
        await provider.aclose()


async def test_openai_stream_with_finish_but_no_done_ends_cleanly(upstream: UpstreamServer) -> None:
    # Some OpenAI-compatible servers close after the finish chunk without [DONE]; that is complete.
    sse = openai_sse(chunk({"content": "Hi"}), chunk({}, "length"), done=False)
    upstream.reply(COMPLETIONS, Reply.sse(sse, framing="close"))
    provider = openai_provider(upstream.url)
    try:
        stream = await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        events = await collect(stream)
    finally:
        await provider.aclose()
    assert events[-2].data["delta"]["stop_reason"] == "max_tokens"


class _CutBody:
    """A response body whose connection drops after its first chunk, as aiohttp reports it (the
    loopback upstream stages real cuts below; this checks the stream closes a cut response)."""

    def __init__(self, first: bytes) -> None:
        self._first = first

    async def iter_any(self) -> AsyncIterator[bytes]:
        yield self._first
        raise aiohttp.ClientPayloadError("Response payload is not completed")

    def at_eof(self) -> bool:
        return False


class _CutResponse:
    content_length = None
    headers: dict[str, str] = {}  # noqa: RUF012 - never mutated

    def __init__(self, first: bytes) -> None:
        self.content = _CutBody(first)
        self.released = False
        self.closed = False

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


async def test_anthropic_stream_cut_by_the_network_raises() -> None:
    response = _CutResponse(b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","usage":{}}}\n\n')
    stream = SSEUpstreamStream(response, _translator("anthropic"), "anthropic", LIMITS)  # type: ignore[arg-type]
    events: list[StreamEvent] = []
    with pytest.raises(UpstreamError) as info:
        async for event in stream:
            events.append(event)
    assert [e.type for e in events] == ["message_start"]
    assert (info.value.status, info.value.kind) == (None, "api_error")
    # a cut stream's connection is closed, never handed back to the pool
    assert response.closed and not response.released


@pytest.mark.parametrize("framing", ["chunked", "length"])
async def test_anthropic_stream_cut_mid_body_by_the_upstream_raises(upstream: UpstreamServer, framing: Framing) -> None:
    start = b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","usage":{}}}\n\n'
    rest = _anthropic_sse(*DELTAS, STOP)
    # the connection closes after the first write: before the declared length, or the last chunk
    upstream.reply(MESSAGES, Reply.sse(start, rest, framing=framing, cut_after=1))
    provider = anthropic_provider(upstream.url)
    events: list[StreamEvent] = []
    try:
        stream = await provider.open_stream(anthropic_request(stream=True), "m", {})
        with pytest.raises(UpstreamError) as info:
            async for event in stream:
                events.append(event)
    finally:
        await provider.aclose()
    assert [e.type for e in events] == ["message_start"]
    assert (info.value.status, info.value.kind) == (None, "api_error")
    assert_nothing_revealed(info.value, upstream.address)


async def test_a_complete_answer_cut_mid_body_raises(upstream: UpstreamServer) -> None:
    body = orjson.dumps(MESSAGE)
    upstream.reply(
        MESSAGES, Reply(headers={"content-type": "application/json"}, writes=split_into(body, 2), cut_after=1)
    )
    provider = anthropic_provider(upstream.url)
    try:
        with pytest.raises(UpstreamError) as info:
            await provider.complete(anthropic_request(), "m", {})
    finally:
        await provider.aclose()
    assert (info.value.status, info.value.kind) == (None, "api_error")
    assert_nothing_revealed(info.value, upstream.address)


async def test_anthropic_malformed_stream_event_is_an_upstream_error(upstream: UpstreamServer) -> None:
    sse = (
        b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n'
        b"event: content_block_delta\ndata: {oops\n\n"
    )
    upstream.reply(MESSAGES, Reply.sse(sse))
    provider = anthropic_provider(upstream.url)
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
    upstream: UpstreamServer, status: int, headers: dict[str, str], kind: str, retry_after: float | None
) -> None:
    upstream_body = {
        "type": "error",
        "error": {"type": "x", "message": "bad thing"},
        "debug": f"key {ANTHROPIC_SECRET} at {upstream.url}/internal",
    }
    upstream.reply(MESSAGES, Reply.json(upstream_body, status=status, headers=headers))
    provider = anthropic_provider(upstream.url)
    try:
        for stream in (False, True):
            with pytest.raises(UpstreamError) as info:
                if stream:
                    await provider.open_stream(anthropic_request(stream=True), "m", {})
                else:
                    await provider.complete(anthropic_request(), "m", {})
            err = info.value
            assert (err.status, err.kind, err.retry_after_s) == (status, kind, retry_after)
            assert_nothing_revealed(err, upstream.address)
            assert "debug" not in err.message
    finally:
        await provider.aclose()
    assert len(upstream.received(MESSAGES)) == 2


async def complete_then_stream(provider: OpenAICompatProvider) -> list[UpstreamError]:
    """The errors of one answer and of one stream (raised on opening it, or while reading it)."""
    errors: list[UpstreamError] = []
    with pytest.raises(UpstreamError) as info:
        await provider.complete(openai_request(), "gpt-5-mini", {})
    errors.append(info.value)
    with pytest.raises(UpstreamError) as info:
        await collect(await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {}))
    errors.append(info.value)
    return errors


async def failures_and_time(provider: OpenAICompatProvider) -> tuple[list[UpstreamError], float]:
    started = time.monotonic()
    try:
        errors = await complete_then_stream(provider)
    finally:
        await provider.aclose()
    return errors, time.monotonic() - started


@pytest.mark.parametrize("where", ["connect", "response head", "response body"])
async def test_an_upstream_that_stops_answering_times_out_after_the_configured_time(
    upstream: UpstreamServer, where: str
) -> None:
    # the timeout under test is short, the other one long: only the configured one can fire in time
    short, long = 0.1, 30.0
    if where == "connect":
        with unanswered_connects() as address:
            provider = openai_provider(f"http://{address}", connect_timeout_s=short, read_timeout_s=long)
            errors, elapsed = await failures_and_time(provider)
    else:
        address = upstream.address
        if where == "response head":
            upstream.reply(COMPLETIONS, Reply(silent=True))
        else:
            # the head arrives, then the body stops coming: an answer's JSON, a stream's next event
            stalled_answer = Reply(
                headers={"content-type": "application/json"}, writes=[orjson.dumps(COMPLETION)], stall_after=0
            )
            stalled_stream = Reply.sse(openai_sse(chunk({"content": "Hi"}), done=False), b"never sent", stall_after=1)
            upstream.reply(COMPLETIONS, stalled_answer, stalled_stream)
        provider = openai_provider(upstream.url, connect_timeout_s=long, read_timeout_s=short)
        errors, elapsed = await failures_and_time(provider)
    assert [(e.status, e.kind) for e in errors] == [(None, "timeout")] * 2
    assert elapsed < 5  # the short timeout fired, twice
    for err in errors:
        assert_nothing_revealed(err, address)
    # the requests reached the upstream, unless they could not connect
    assert len(upstream.received(COMPLETIONS)) == (0 if where == "connect" else 2)


@pytest.mark.parametrize("failure", ["refused", "closed without an answer"])
async def test_an_unreachable_upstream_is_an_api_error(upstream: UpstreamServer, failure: str) -> None:
    if failure == "refused":
        address = closed_port()
    else:
        upstream.reply(COMPLETIONS, Reply(hang_up=True))
        address = upstream.address
    provider = openai_provider(f"http://{address}")
    try:
        errors = await complete_then_stream(provider)
    finally:
        await provider.aclose()
    assert [(e.status, e.kind) for e in errors] == [(None, "api_error")] * 2
    for err in errors:
        assert_nothing_revealed(err, address)
    assert len(upstream.received(COMPLETIONS)) == (0 if failure == "refused" else 2)


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_malformed_success_body_is_a_502(upstream: UpstreamServer, kind: str) -> None:
    path = MESSAGES if kind == "anthropic" else COMPLETIONS
    upstream.reply(path, Reply.raw(b"<html>", content_type="text/html"))
    provider = anthropic_provider(upstream.url) if kind == "anthropic" else openai_provider(upstream.url)
    request = anthropic_request() if kind == "anthropic" else openai_request()
    try:
        with pytest.raises(UpstreamError) as info:
            await provider.complete(request, "m", {})
    finally:
        await provider.aclose()
    assert info.value.status == 502
    assert_only_requested(upstream, path)


@pytest.mark.parametrize(("status", "body"), [(500, b'{"error":{"message":"down"}}'), (200, b"<html>"), (200, b"[]")])
async def test_anthropic_count_tokens_falls_back_when_the_upstream_cannot_count(
    upstream: UpstreamServer, status: int, body: bytes
) -> None:
    upstream.reply(COUNT_TOKENS, Reply.raw(body, status=status))
    provider = anthropic_provider(upstream.url)
    try:
        tokens = await provider.count_tokens(anthropic_request(), "claude-sonnet-5-5")
    finally:
        await provider.aclose()
    assert tokens is None  # the caller estimates instead
    assert_only_requested(upstream, COUNT_TOKENS)


async def test_the_pool_keeps_connections_alive_holds_at_most_max_connections_and_closes(
    upstream: UpstreamServer,
) -> None:
    held = Reply.sse(_anthropic_sse(START), _anthropic_sse(STOP), stall_after=1)  # a stream still generating
    upstream.reply(MESSAGES, Reply.json(MESSAGE), Reply.json(MESSAGE), held, held, Reply.json(MESSAGE))
    provider = anthropic_provider(upstream.url, max_connections=2, read_timeout_s=30)
    try:
        await provider.complete(anthropic_request(), "m", {})
        await provider.complete(anthropic_request(), "m", {})
        first, second = upstream.received(MESSAGES)
        assert first.connection == second.connection  # kept alive and reused
        streams = [await provider.open_stream(anthropic_request(stream=True), "m", {}) for _ in range(2)]
        assert upstream.open_connections == 2
        third = asyncio.create_task(provider.complete(anthropic_request(), "m", {}))
        await asyncio.sleep(0.05)
        # both connections are busy: the third request waits for one instead of opening a third
        assert not third.done() and len(upstream.requests) == 4 and upstream.peak_connections == 2
        await streams[0].aclose()  # cut short: its connection closes, which frees a place
        assert (await asyncio.wait_for(third, 5)).content == MESSAGE["content"]
        # on a new connection: the cut stream's was closed, never handed back to the pool
        assert upstream.requests[-1].connection not in {r.connection for r in upstream.requests[:-1]}
        await eventually(lambda: upstream.open_connections == 2)
        await streams[1].aclose()
    finally:
        await provider.aclose()
    await eventually(lambda: upstream.open_connections == 0)


def test_the_environment_proxy_is_resolved_once_and_honours_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.providers.http import environment_proxy

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost,.corp")
    assert environment_proxy("https://api.anthropic.com") == "http://proxy.internal:3128"
    assert environment_proxy("http://127.0.0.1:8080/simulator") is None
    assert environment_proxy("https://llm.corp/v1") is None
    monkeypatch.delenv("HTTPS_PROXY")
    assert environment_proxy("https://api.anthropic.com") is None


class _ChunkedBody:
    """A complete response body delivered in the given network reads."""

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = reads
        self._done = False

    async def iter_any(self) -> AsyncIterator[bytes]:
        for read in self._reads:
            yield read
        self._done = True

    def at_eof(self) -> bool:
        return self._done


class _ChunkedResponse(_CutResponse):
    def __init__(self, reads: list[bytes]) -> None:
        super().__init__(b"")
        self.content = _ChunkedBody(reads)  # type: ignore[assignment]


async def test_events_of_one_read_come_as_one_batch() -> None:
    one_read = _anthropic_sse(START, *DELTAS)
    split = one_read.index(b"event: content_block_delta")
    response = _ChunkedResponse([one_read[:split] + b"eve", one_read[split + 3 :], _anthropic_sse(STOP)])
    stream = SSEUpstreamStream(response, _translator("anthropic"), "anthropic", LIMITS)  # type: ignore[arg-type]
    batches = [[e.type for e in batch] async for batch in stream.batches()]
    # the first read completes message_start only (the next event is cut after "eve"); the second
    # completes the three deltas; the third the stop: one batch per read, nothing held back
    assert batches == [["message_start"], ["content_block_delta"] * 3, ["message_stop"]]
    assert response.released and not response.closed  # read to the end: back to the pool


async def test_openai_events_before_an_error_in_the_same_read_are_delivered() -> None:
    chunks = [
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": t}}]}
        for t in ("x", "y")
    ]
    body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
    body += b'data: {"error": {"message": "overloaded"}}\n\n'
    response = _ChunkedResponse([body])
    stream = SSEUpstreamStream(
        response,  # type: ignore[arg-type]
        lambda: OpenAITranslator("openai", "m"),
        "openai",
        LIMITS,
    )
    seen: list[StreamEvent] = []
    with pytest.raises(UpstreamError) as info:
        async for batch in stream.batches():
            seen += batch
    texts = [e.data["delta"]["text"] for e in seen if e.type == "content_block_delta"]
    assert texts == ["x", "y"]
    assert info.value.kind == "overloaded"
