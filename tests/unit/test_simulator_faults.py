"""Fault injection (x-sim-error*, in-stream errors, aborts), the disconnect counter and the /_sim
inspection endpoints, over a real socket."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from app.simulator import SimulatorConfig, create_simulator_app
from tests.servers import serve

# One plain client for raw calls: httpx.post() would build (and verify-configure) a client per call.
HTTP = httpx.Client(timeout=30)
MODEL = "claude-haiku-5-5"
MESSAGES: Any = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(create_simulator_app()) as url:
        yield url


@pytest.fixture(autouse=True)
def _reset(base_url: str) -> None:
    HTTP.post(base_url + "/_sim/reset").raise_for_status()


# One client per SDK; variants share its connection pool (building a client costs an SSL context).
_CLAUDE = anthropic.Anthropic(base_url="http://127.0.0.1", api_key="x", max_retries=0)
_GPT = openai.OpenAI(base_url="http://127.0.0.1/v1", api_key="x", max_retries=0)


def claude_at(url: str, headers: dict[str, str] | None = None, retries: int = 0) -> anthropic.Anthropic:
    return _CLAUDE.with_options(base_url=url, max_retries=retries, default_headers=headers or {})


def gpt_at(url: str, headers: dict[str, str] | None = None) -> openai.OpenAI:
    return _GPT.with_options(base_url=url + "/v1", default_headers=headers or {})


def stats(base_url: str) -> dict[str, int]:
    return HTTP.get(base_url + "/_sim/stats").json()


# ---- x-sim-error -------------------------------------------------------------------------------------


def test_rate_limit_error_in_both_wires(base_url: str) -> None:
    with pytest.raises(anthropic.RateLimitError) as claude_error:
        claude_at(base_url, {"x-sim-error": "429"}).messages.create(
            model=MODEL, max_tokens=5, messages=MESSAGES
        )
    with pytest.raises(openai.RateLimitError) as gpt_error:
        gpt_at(base_url, {"x-sim-error": "429", "x-sim-retry-after": "7"}).chat.completions.create(
            model="gpt-5", messages=MESSAGES
        )

    response = claude_error.value.response
    assert response.headers["retry-after"] == "1"
    assert response.headers["request-id"].startswith("req_")
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert body["request_id"] == response.headers["request-id"]
    assert gpt_error.value.response.headers["retry-after"] == "7"
    assert gpt_error.value.code == "rate_limit_exceeded"
    assert "x-request-id" in gpt_error.value.response.headers


@pytest.mark.parametrize(
    ("status", "anthropic_status", "anthropic_type", "openai_status", "openai_type"),
    [
        (529, 529, "overloaded_error", 503, "server_error"),
        (500, 500, "api_error", 500, "server_error"),
        (503, 503, "api_error", 503, "server_error"),
        (400, 400, "invalid_request_error", 400, "invalid_request_error"),
        (401, 401, "authentication_error", 401, "invalid_request_error"),
    ],
)
def test_error_statuses(
    base_url: str,
    status: int,
    anthropic_status: int,
    anthropic_type: str,
    openai_status: int,
    openai_type: str,
) -> None:
    headers = {"x-sim-error": str(status)}
    with pytest.raises(anthropic.APIStatusError) as claude_error:
        claude_at(base_url, headers).messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    with pytest.raises(openai.APIStatusError) as gpt_error:
        gpt_at(base_url, headers).chat.completions.create(model="gpt-5", messages=MESSAGES)

    assert claude_error.value.status_code == anthropic_status
    assert claude_error.value.response.json()["error"]["type"] == anthropic_type
    assert gpt_error.value.status_code == openai_status
    assert gpt_error.value.response.json()["error"]["type"] == openai_type
    assert "retry-after" not in claude_error.value.response.headers


def test_overloaded_maps_to_sdk_classes(base_url: str) -> None:
    with pytest.raises(anthropic.OverloadedError):
        claude_at(base_url, {"x-sim-error": "529"}).messages.create(
            model=MODEL, max_tokens=5, messages=MESSAGES
        )
    with pytest.raises(openai.InternalServerError):
        gpt_at(base_url, {"x-sim-error": "529"}).chat.completions.create(model="gpt-5", messages=MESSAGES)


def test_streaming_request_fails_before_the_stream(base_url: str) -> None:
    client = claude_at(base_url, {"x-sim-error": "529"})
    with pytest.raises(anthropic.OverloadedError):
        with client.messages.stream(model=MODEL, max_tokens=5, messages=MESSAGES) as stream:
            stream.get_final_message()
    assert stats(base_url)["streams_started"] == 0


def test_error_match_by_model_and_tag(base_url: str) -> None:
    headers = {"x-sim-error": "500", "x-sim-error-match": "claude-opus-5-5, dep-a"}
    root = claude_at(base_url, headers)
    dep_a = claude_at(base_url + "/dep-a", headers)
    dep_b = claude_at(base_url + "/dep-b", headers)

    with pytest.raises(anthropic.InternalServerError):
        root.messages.create(model="claude-opus-5-5", max_tokens=5, messages=MESSAGES)
    with pytest.raises(anthropic.InternalServerError):
        dep_a.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    assert root.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).stop_reason
    assert dep_b.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).stop_reason
    gpt_dep_a = gpt_at(base_url + "/dep-a", headers)
    with pytest.raises(openai.InternalServerError):
        gpt_dep_a.chat.completions.create(model="gpt-5", messages=MESSAGES)


def test_error_times_then_recovers(base_url: str) -> None:
    flaky = claude_at(base_url, {"x-sim-error": "503", "x-sim-error-times": "2", "x-sim-error-key": "k1"})
    other_key = claude_at(base_url, {"x-sim-error": "503", "x-sim-error-times": "1", "x-sim-error-key": "k2"})

    for _ in range(2):
        with pytest.raises(anthropic.APIStatusError):
            flaky.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    with pytest.raises(anthropic.APIStatusError):
        other_key.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)  # its own counter
    assert flaky.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).stop_reason
    assert other_key.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES).stop_reason


def test_sdk_retry_recovers_from_a_flaky_upstream(base_url: str) -> None:
    headers = {
        "x-sim-error": "529",
        "x-sim-error-times": "1",
        "x-sim-error-key": "retry-test",
        "x-sim-retry-after": "0.01",  # keep the SDK's backoff short
    }
    message = claude_at(base_url, headers, retries=2).messages.create(
        model=MODEL, max_tokens=5, messages=MESSAGES
    )
    recorded = HTTP.get(base_url + "/_sim/requests").json()

    assert message.usage.output_tokens == 5
    assert [r["headers"]["x-stainless-retry-count"] for r in recorded] == ["0", "1"]


def test_should_retry_header(base_url: str) -> None:
    response = HTTP.post(
        base_url + "/v1/chat/completions",
        json={"model": "gpt-5", "messages": MESSAGES},
        headers={"authorization": "Bearer k", "x-sim-error": "503", "x-sim-should-retry": "false"},
    )
    assert response.status_code == 503 and response.headers["x-should-retry"] == "false"


# ---- In-stream faults ----------------------------------------------------------------------------------


def test_anthropic_stream_error_after_n_deltas(base_url: str) -> None:
    client = claude_at(base_url, {"x-sim-stream-error-after": "3"})
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as excinfo:
        with client.messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream:
            for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    received.append(event.delta.text)
    assert len(received) == 3
    assert "overloaded_error" in str(excinfo.value)
    assert stats(base_url)["streams_failed"] == 1
    assert stats(base_url)["streams_completed"] == 0


def test_openai_stream_error_after_n_deltas(base_url: str) -> None:
    client = gpt_at(base_url, {"x-sim-stream-error-after": "2"})
    received: list[str] = []
    with pytest.raises(openai.APIError) as excinfo:
        for chunk in client.chat.completions.create(model="gpt-5", messages=MESSAGES, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert len(received) == 2
    assert "overloaded" in excinfo.value.message


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
def test_stream_abort_after_n_deltas(base_url: str, path: str) -> None:
    headers = {"x-api-key": "k", "authorization": "Bearer k", "anthropic-version": "2026-10-21"}
    headers["x-sim-stream-abort-after"] = "4"
    body = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": MESSAGES}
    lines: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with HTTP.stream("POST", base_url + path, json=body, headers=headers) as response:
            for line in response.iter_lines():
                lines.append(line)
    if path == "/v1/messages":
        deltas = [line for line in lines if line.startswith("event: content_block_delta")]
    else:
        deltas = [line for line in lines if line.startswith("data: ")][1:]  # after the role chunk
    assert len(deltas) == 4
    text = "\n".join(lines)
    assert "message_stop" not in text and "[DONE]" not in text and 'finish_reason":"stop' not in text
    assert stats(base_url)["streams_aborted"] == 1


def test_disconnect_counts_a_cancelled_stream(base_url: str) -> None:
    headers = {
        "x-api-key": "k",
        "anthropic-version": "2026-10-21",
        "x-sim-ttft-ms": "20",
        "x-sim-tokens-per-second": "20",
    }
    body = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": MESSAGES}
    with httpx.Client() as client:
        with client.stream("POST", base_url + "/v1/messages", json=body, headers=headers) as response:
            for line in response.iter_lines():
                if line.startswith("event: content_block_delta"):
                    break  # leave mid-stream: closing the response drops the connection
    deadline = time.monotonic() + 5
    while stats(base_url)["streams_cancelled"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stats(base_url) == {
        "requests": 1,
        "streams_started": 1,
        "streams_completed": 0,
        "streams_cancelled": 1,
        "streams_failed": 0,
        "streams_aborted": 0,
    }


def test_paced_stream_that_finishes_counts_as_completed(base_url: str) -> None:
    client = claude_at(base_url, {"x-sim-tokens-per-second": "1000", "x-sim-output-tokens": "5"})
    with client.messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream:
        assert stream.get_final_message().usage.output_tokens == 5
    assert stats(base_url)["streams_completed"] == 1 and stats(base_url)["streams_cancelled"] == 0


# ---- Inspection ------------------------------------------------------------------------------------------


def test_request_log_is_bounded_newest_last_and_clearable() -> None:
    with serve(create_simulator_app(SimulatorConfig(record_requests=3))) as url:
        client = claude_at(url)
        for i in range(5):
            client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": f"m{i}"}])
        recorded = HTTP.get(url + "/_sim/requests").json()
        assert [r["body"]["messages"][0]["content"] for r in recorded] == ["m2", "m3", "m4"]
        assert set(recorded[0]) >= {"path", "headers", "body"}
        assert HTTP.get(url + "/_sim/stats").json()["requests"] == 5

        HTTP.delete(url + "/_sim/requests").raise_for_status()
        assert HTTP.get(url + "/_sim/requests").json() == []
        assert HTTP.get(url + "/_sim/stats").json()["requests"] == 5  # stats survive a log clear


def test_reset_clears_counters_caches_and_records(base_url: str) -> None:
    long_system: Any = [{"type": "text", "text": "cache me " * 600, "cache_control": {"type": "ephemeral"}}]
    flaky = claude_at(base_url, {"x-sim-error": "500", "x-sim-error-times": "1", "x-sim-error-key": "r"})
    with pytest.raises(anthropic.InternalServerError):
        flaky.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)
    client = claude_at(base_url)
    client.messages.create(model=MODEL, max_tokens=5, system=long_system, messages=MESSAGES)

    HTTP.post(base_url + "/_sim/reset").raise_for_status()

    assert stats(base_url)["requests"] == 0
    assert HTTP.get(base_url + "/_sim/requests").json() == []
    usage = client.messages.create(model=MODEL, max_tokens=5, system=long_system, messages=MESSAGES).usage
    assert usage.cache_read_input_tokens == 0 and (usage.cache_creation_input_tokens or 0) > 0
    with pytest.raises(anthropic.InternalServerError):  # the error counter restarted too
        flaky.messages.create(model=MODEL, max_tokens=5, messages=MESSAGES)


# ---- x-sim-malformed -----------------------------------------------------------------------------------

ANTHROPIC_HEADERS = {"x-api-key": "x", "anthropic-version": "2023-06-01"}
OPENAI_HEADERS = {"authorization": "Bearer x"}


def _malformed(base_url: str, wire: str, shape: str, stream: bool) -> httpx.Response:
    if wire == "anthropic":
        body: dict[str, Any] = {"model": MODEL, "max_tokens": 5, "messages": MESSAGES, "stream": stream}
        return HTTP.post(
            base_url + "/v1/messages", json=body, headers={**ANTHROPIC_HEADERS, "x-sim-malformed": shape}
        )
    body = {"model": "gpt-5", "messages": MESSAGES, "stream": stream}
    return HTTP.post(
        base_url + "/v1/chat/completions", json=body, headers={**OPENAI_HEADERS, "x-sim-malformed": shape}
    )


@pytest.mark.parametrize("wire", ["anthropic", "openai"])
def test_a_malformed_json_reply_is_a_200_that_does_not_parse(base_url: str, wire: str) -> None:
    response = _malformed(base_url, wire, "json", stream=False)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


@pytest.mark.parametrize("wire", ["anthropic", "openai"])
def test_a_wrong_types_reply_has_the_fields_with_the_wrong_types(base_url: str, wire: str) -> None:
    body = _malformed(base_url, wire, "types", stream=False).json()
    if wire == "anthropic":
        assert body["content"] == 5 and body["usage"]["input_tokens"] == "ten"
    else:
        assert body["choices"] == 5 and body["usage"]["prompt_tokens"] == "ten"


@pytest.mark.parametrize("wire", ["anthropic", "openai"])
def test_a_huge_usage_stream_is_complete_but_counts_beyond_64_bits(base_url: str, wire: str) -> None:
    response = _malformed(base_url, wire, "huge", stream=True)
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert payloads[-1] == ("[DONE]" if wire == "openai" else '{"type": "message_stop"}')
    assert str(10**30) in response.text


def test_an_unknown_malformed_shape_is_an_honest_answer(base_url: str) -> None:
    response = _malformed(base_url, "anthropic", "nonsense", stream=False)
    assert response.status_code == 200 and isinstance(response.json()["usage"]["input_tokens"], int)
