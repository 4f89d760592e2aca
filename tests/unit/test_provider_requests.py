"""The exact HTTP requests the adapters send to *real* providers (aioresponses, no simulator), and
how upstream failures become errors a client may see."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aioresponses import aioresponses
from multidict import CIMultiDict
from yarl import URL

from app.config import ProviderConfig
from app.domain import ChatRequest, StreamEvent
from app.providers.anthropic import AnthropicProvider, _translator
from app.providers.base import UpstreamError
from app.providers.http import SSEUpstreamStream
from app.providers.openai_compat import OpenAICompatProvider
from app.providers.openai_compat import _Translator as OpenAITranslator
from app.wire import anthropic as anthropic_wire
from app.wire import openai as openai_wire

ANTHROPIC_BASE = "https://api.anthropic.test"
ANTHROPIC_MESSAGES = f"{ANTHROPIC_BASE}/v1/messages"
OPENAI_BASE = "https://api.openai.test/v1"
OPENAI_COMPLETIONS = f"{OPENAI_BASE}/chat/completions"
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
SSE = "text/event-stream"


class _MockedResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without the ``stream_writer`` that aiohttp 3.14 requires
    (pnuckowski/aioresponses#289, unreleased fix); a mocked request has written nothing."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        if "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters:
            kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class _Upstream(aioresponses):
    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _MockedResponse)
        super().add(*args, **kwargs)


@pytest.fixture
def mock() -> Iterator[aioresponses]:
    # An unmocked URL raises ClientConnectionError, so tests also check what was requested.
    with _Upstream() as router:
        yield router


def anthropic_provider(*, simulator: bool = False, **cfg: Any) -> AnthropicProvider:
    config = ProviderConfig(kind="anthropic", base_url=ANTHROPIC_BASE, **cfg)
    return AnthropicProvider(
        "anthropic", config, base_url=ANTHROPIC_BASE, credential=ANTHROPIC_SECRET, is_simulator=simulator
    )


def openai_provider(**cfg: Any) -> OpenAICompatProvider:
    config = ProviderConfig(kind="openai", base_url=OPENAI_BASE, **cfg)
    return OpenAICompatProvider("openai", config, base_url=OPENAI_BASE, credential=OPENAI_SECRET, is_simulator=False)


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


def sent(mock: aioresponses, url: str) -> tuple[CIMultiDict[str], Any]:
    """The headers (case-insensitive) and JSON body of the last POST to ``url``."""
    calls = mock.requests.get(("POST", URL(url)))
    assert calls, f"nothing was POSTed to {url}; requested: {list(mock.requests)}"
    kwargs = calls[-1].kwargs
    return CIMultiDict(kwargs["headers"]), orjson.loads(kwargs["data"])


def assert_only_requested(mock: aioresponses, url: str) -> None:
    assert list(mock.requests) == [("POST", URL(url))]


def assert_no_client_headers(headers: CIMultiDict[str]) -> None:
    names = {k.lower() for k in headers}
    assert not any(n.startswith("x-sim-") for n in names), names
    assert not any(n.startswith("x-stainless") for n in names)
    assert not any("tw-team-key" in v for v in headers.values())


# ---- Anthropic --------------------------------------------------------------------------------------


async def test_anthropic_complete_request_shape(mock: aioresponses) -> None:
    mock.post(ANTHROPIC_MESSAGES, payload=MESSAGE)
    provider = anthropic_provider(extra_headers={"anthropic-organization": "org-1"})
    try:
        req = anthropic_request(metadata={"user_id": "u1"}, some_new_field=1)
        req.anthropic_beta = "context-1m-2025-08-07"
        answer = await provider.complete(req, "claude-sonnet-5-5-20261001", CLIENT_HEADERS)
    finally:
        await provider.aclose()
    assert answer.content == [{"type": "text", "text": "Hello"}] and answer.usage.input_tokens == 5
    assert_only_requested(mock, ANTHROPIC_MESSAGES)
    headers, body = sent(mock, ANTHROPIC_MESSAGES)
    assert headers["x-api-key"] == ANTHROPIC_SECRET
    assert "authorization" not in headers
    assert headers["anthropic-version"] == "2026-10-21"
    assert headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert headers["anthropic-organization"] == "org-1"
    assert headers["content-type"] == "application/json"
    assert_no_client_headers(headers)
    # a redirect would carry Tollway's credential to wherever the upstream points
    assert mock.requests[("POST", URL(ANTHROPIC_MESSAGES))][-1].kwargs["allow_redirects"] is False
    assert body == {
        "model": "claude-sonnet-5-5-20261001",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "metadata": {"user_id": "u1"},
        "some_new_field": 1,
    }


async def test_anthropic_sampling_goes_out_under_the_version_that_accepts_it(mock: aioresponses) -> None:
    mock.post(ANTHROPIC_MESSAGES, payload=MESSAGE, repeat=True)
    provider = anthropic_provider()
    try:
        await provider.complete(anthropic_request(temperature=0.2), "claude-haiku-4-5", {})
        headers, body = sent(mock, ANTHROPIC_MESSAGES)
        assert headers["anthropic-version"] == "2023-06-01" and body["temperature"] == 0.2
        await provider.complete(anthropic_request(version=None), "claude-haiku-4-5", {})
        headers, body = sent(mock, ANTHROPIC_MESSAGES)
        assert headers["anthropic-version"] == "2023-06-01" and "temperature" not in body
    finally:
        await provider.aclose()
    assert len(mock.requests[("POST", URL(ANTHROPIC_MESSAGES))]) == 2


async def test_anthropic_from_openai_client_defaults_to_2023_version(mock: aioresponses) -> None:
    mock.post(ANTHROPIC_MESSAGES, payload=MESSAGE)
    provider = anthropic_provider()
    try:
        await provider.complete(openai_request(model="claude-haiku-5-5"), "claude-haiku-5-5", CLIENT_HEADERS)
    finally:
        await provider.aclose()
    headers, body = sent(mock, ANTHROPIC_MESSAGES)
    assert headers["anthropic-version"] == "2023-06-01"
    assert_no_client_headers(headers)
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]


async def test_simulator_gets_the_test_directives_but_not_the_client_key(mock: aioresponses) -> None:
    mock.post(ANTHROPIC_MESSAGES, payload=MESSAGE)
    provider = anthropic_provider(simulator=True)
    try:
        await provider.complete(anthropic_request(), "m", CLIENT_HEADERS)
    finally:
        await provider.aclose()
    headers, _ = sent(mock, ANTHROPIC_MESSAGES)
    assert headers["x-sim-error"] == "500" and headers["x-sim-reply"] == "leak?"
    assert headers["x-api-key"] == ANTHROPIC_SECRET
    assert "authorization" not in headers


async def test_anthropic_stream_request_and_events(mock: aioresponses) -> None:
    sse = b"".join(
        anthropic_wire.encode_event(e)
        for e in anthropic_wire.response_to_events(anthropic_wire.parse_response(MESSAGE))
    )
    mock.post(ANTHROPIC_MESSAGES, body=sse, content_type=SSE)
    provider = anthropic_provider()
    try:
        stream = await provider.open_stream(anthropic_request(stream=True), "claude-sonnet-5-5", CLIENT_HEADERS)
        events: list[StreamEvent] = [e async for e in stream]
    finally:
        await provider.aclose()
    headers, body = sent(mock, ANTHROPIC_MESSAGES)
    assert body["stream"] is True
    assert_no_client_headers(headers)
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    # same-format: the exact upstream bytes are kept for forwarding
    assert b"".join(e.raw or b"" for e in events) == sse


async def test_anthropic_count_tokens_request(mock: aioresponses) -> None:
    count_url = f"{ANTHROPIC_BASE}/v1/messages/count_tokens"
    mock.post(count_url, payload={"input_tokens": 14})
    provider = anthropic_provider()
    try:
        tokens = await provider.count_tokens(anthropic_request(stop_sequences=["x"]), "claude-sonnet-5-5")
    finally:
        await provider.aclose()
    assert tokens == 14
    assert_only_requested(mock, count_url)
    headers, body = sent(mock, count_url)
    assert headers["x-api-key"] == ANTHROPIC_SECRET
    assert body == {
        "model": "claude-sonnet-5-5",
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }


# ---- OpenAI-compatible ----------------------------------------------------------------------------------


async def test_openai_complete_request_shape(mock: aioresponses) -> None:
    mock.post(OPENAI_COMPLETIONS, payload=COMPLETION)
    provider = openai_provider()
    try:
        answer = await provider.complete(openai_request(seed=4, user="u1"), "gpt-5-mini-2026", CLIENT_HEADERS)
    finally:
        await provider.aclose()
    assert answer.content == [{"type": "text", "text": "Hello"}] and answer.stop_reason == "end_turn"
    assert_only_requested(mock, OPENAI_COMPLETIONS)
    headers, body = sent(mock, OPENAI_COMPLETIONS)
    assert headers["authorization"] == f"Bearer {OPENAI_SECRET}"
    assert "x-api-key" not in headers and "anthropic-version" not in headers
    assert_no_client_headers(headers)
    assert body == {
        "model": "gpt-5-mini-2026",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_completion_tokens": 64,
        "seed": 4,
        "user": "u1",
    }


async def test_openai_local_server_without_key_and_legacy_max_tokens(mock: aioresponses) -> None:
    url = "http://127.0.0.1:9/v1/chat/completions"
    mock.post(url, payload=COMPLETION)
    config = ProviderConfig(kind="openai", base_url="http://127.0.0.1:9/v1/", max_tokens_field="max_tokens")
    provider = OpenAICompatProvider(
        "vllm", config, base_url="http://127.0.0.1:9/v1/", credential=None, is_simulator=False
    )
    try:
        await provider.complete(openai_request(), "llama", {})
    finally:
        await provider.aclose()
    assert_only_requested(mock, url)
    headers, body = sent(mock, url)
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


async def test_openai_stream_always_asks_for_usage(mock: aioresponses) -> None:
    sse = openai_sse(
        chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}), chunk({}, "stop"), USAGE_CHUNK
    )
    mock.post(OPENAI_COMPLETIONS, body=sse, content_type=SSE)
    provider = openai_provider()
    try:
        stream = await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        events = [e async for e in stream]
    finally:
        await provider.aclose()
    _, body = sent(mock, OPENAI_COMPLETIONS)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert events[-1].type == "message_stop"
    assert events[-2].data["usage"]["input_tokens"] == 9 and events[-2].data["usage"]["output_tokens"] == 2


async def collect(stream: Any) -> list[StreamEvent]:
    return [e async for e in stream]


async def test_openai_mid_stream_error_raises(mock: aioresponses) -> None:
    sse = openai_sse(
        chunk({"content": "Hi"}), {"error": {"message": "boom at https://internal", "type": "server_error"}}
    )
    mock.post(OPENAI_COMPLETIONS, body=sse, content_type=SSE)
    provider = openai_provider()
    try:
        stream = await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        with pytest.raises(UpstreamError) as info:
            await collect(stream)
    finally:
        await provider.aclose()
    assert "https://internal" not in info.value.message


async def test_openai_stream_cut_without_finish_is_an_error_not_a_clean_end(mock: aioresponses) -> None:
    sse = openai_sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}), done=False)
    mock.post(OPENAI_COMPLETIONS, body=sse, content_type=SSE)
    provider = openai_provider()
    try:
        stream = await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        with pytest.raises(UpstreamError):
            await collect(stream)
    finally:
        await provider.aclose()


async def test_openai_stream_with_finish_but_no_done_ends_cleanly(mock: aioresponses) -> None:
    # Some OpenAI-compatible servers close after the finish chunk without [DONE]; that is complete.
    sse = openai_sse(chunk({"content": "Hi"}), chunk({}, "length"), done=False)
    mock.post(OPENAI_COMPLETIONS, body=sse, content_type=SSE)
    provider = openai_provider()
    try:
        stream = await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        events = await collect(stream)
    finally:
        await provider.aclose()
    assert events[-2].data["delta"]["stop_reason"] == "max_tokens"


class _CutBody:
    """A response body whose connection drops after its first chunk (aioresponses always sends a
    complete body, so the cut is staged here)."""

    def __init__(self, first: bytes) -> None:
        self._first = first

    async def iter_any(self) -> AsyncIterator[bytes]:
        yield self._first
        raise aiohttp.ClientPayloadError("Response payload is not completed")

    def at_eof(self) -> bool:
        return False


class _CutResponse:
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
    stream = SSEUpstreamStream(response, _translator("anthropic"), "anthropic")  # type: ignore[arg-type]
    events: list[StreamEvent] = []
    with pytest.raises(UpstreamError) as info:
        async for event in stream:
            events.append(event)
    assert [e.type for e in events] == ["message_start"]
    assert (info.value.status, info.value.kind) == (None, "api_error")
    # a cut stream's connection is closed, never handed back to the pool
    assert response.closed and not response.released


async def test_anthropic_malformed_stream_event_is_an_upstream_error(mock: aioresponses) -> None:
    sse = (
        b'event: message_start\ndata: {"type":"message_start","message":{}}\n\n'
        b"event: content_block_delta\ndata: {oops\n\n"
    )
    mock.post(ANTHROPIC_MESSAGES, body=sse, content_type=SSE)
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
    mock: aioresponses, status: int, headers: dict[str, str], kind: str, retry_after: float | None
) -> None:
    upstream_body = {
        "type": "error",
        "error": {"type": "x", "message": "bad thing"},
        "debug": f"key {ANTHROPIC_SECRET} at {ANTHROPIC_BASE}/internal",
    }
    mock.post(ANTHROPIC_MESSAGES, status=status, payload=upstream_body, headers=headers, repeat=True)
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
    assert len(mock.requests[("POST", URL(ANTHROPIC_MESSAGES))]) == 2


@pytest.mark.parametrize(
    "timed_out",
    [TimeoutError(), aiohttp.ConnectionTimeoutError(), aiohttp.SocketTimeoutError()],
    ids=["total", "connect", "read"],
)
async def test_timeouts_and_connection_errors(mock: aioresponses, timed_out: Exception) -> None:
    mock.post(OPENAI_COMPLETIONS, exception=timed_out)
    mock.post(OPENAI_COMPLETIONS, exception=aiohttp.ClientConnectionError(f"cannot connect to {OPENAI_BASE}"))
    provider = openai_provider()
    try:
        with pytest.raises(UpstreamError) as info:
            await provider.complete(openai_request(), "gpt-5-mini", {})
        assert (info.value.status, info.value.kind) == (None, "timeout")
        with pytest.raises(UpstreamError) as info:
            await provider.open_stream(openai_request(stream=True), "gpt-5-mini", {})
        assert (info.value.status, info.value.kind) == (None, "api_error")
        assert "openai.test" not in info.value.message
    finally:
        await provider.aclose()
    # both failures came from the mocked upstream, not from an unmocked URL
    assert len(mock.requests[("POST", URL(OPENAI_COMPLETIONS))]) == 2


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_malformed_success_body_is_a_502(mock: aioresponses, kind: str) -> None:
    url = ANTHROPIC_MESSAGES if kind == "anthropic" else OPENAI_COMPLETIONS
    mock.post(url, body=b"<html>", content_type="text/html")
    provider = anthropic_provider() if kind == "anthropic" else openai_provider()
    request = anthropic_request() if kind == "anthropic" else openai_request()
    try:
        with pytest.raises(UpstreamError) as info:
            await provider.complete(request, "m", {})
    finally:
        await provider.aclose()
    assert info.value.status == 502
    assert_only_requested(mock, url)


@pytest.mark.parametrize(("status", "body"), [(500, b'{"error":{"message":"down"}}'), (200, b"<html>"), (200, b"[]")])
async def test_anthropic_count_tokens_falls_back_when_the_upstream_cannot_count(
    mock: aioresponses, status: int, body: bytes
) -> None:
    count_url = f"{ANTHROPIC_BASE}/v1/messages/count_tokens"
    mock.post(count_url, status=status, body=body)
    provider = anthropic_provider()
    try:
        tokens = await provider.count_tokens(anthropic_request(), "claude-sonnet-5-5")
    finally:
        await provider.aclose()
    assert tokens is None  # the caller estimates instead
    assert_only_requested(mock, count_url)


async def test_timeouts_and_pool_come_from_config() -> None:
    provider = anthropic_provider(connect_timeout_s=1.5, read_timeout_s=12, max_connections=7)
    try:
        session = provider._client.session
        assert session.timeout.sock_connect == 1.5 and session.timeout.sock_read == 12
        assert session.connector is not None and session.connector.limit == 7
    finally:
        await provider.aclose()
    assert session.closed


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


def _anthropic_sse(*payloads: dict[str, object]) -> bytes:
    return b"".join(b"event: " + str(p["type"]).encode() + b"\ndata: " + orjson.dumps(p) + b"\n\n" for p in payloads)


START = {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3, "output_tokens": 0}}}
DELTAS = [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}} for t in "abc"]
STOP = {"type": "message_stop"}


async def test_events_of_one_read_come_as_one_batch() -> None:
    one_read = _anthropic_sse(START, *DELTAS)
    split = one_read.index(b"event: content_block_delta")
    response = _ChunkedResponse([one_read[:split] + b"eve", one_read[split + 3 :], _anthropic_sse(STOP)])
    stream = SSEUpstreamStream(response, _translator("anthropic"), "anthropic")  # type: ignore[arg-type]
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
    stream = SSEUpstreamStream(response, lambda: OpenAITranslator("openai", "m"), "openai")  # type: ignore[arg-type]
    seen: list[StreamEvent] = []
    with pytest.raises(UpstreamError) as info:
        async for batch in stream.batches():
            seen += batch
    texts = [e.data["delta"]["text"] for e in seen if e.type == "content_block_delta"]
    assert texts == ["x", "y"]
    assert info.value.kind == "overloaded"
