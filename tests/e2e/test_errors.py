"""Every error in the client's own format with the right status, never leaking upstream internals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from app.config import Catalog, load_catalog
from tests.e2e.helpers import anthropic_client, clear_sim, old_sdk_headers, openai_client, upstream_requests
from tests.gateway import Gateway, run_gateway

READ_TIMEOUT_S = 0.5
MAX_BODY_BYTES = 64_000
SIMULATOR_CREDENTIAL = "tollway-simulator"


def short_timeout_catalog() -> Catalog:
    catalog = load_catalog(None)
    providers = {
        name: provider.model_copy(update={"read_timeout_s": READ_TIMEOUT_S})
        for name, provider in catalog.providers.items()
    }
    return catalog.model_copy(update={"providers": providers})


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp: Path = tmp_path_factory.mktemp("errors")
    # A breaker that never trips, so one test's injected failures do not close a model for the next.
    with run_gateway(
        tmp, catalog=short_timeout_catalog(), max_body_bytes=MAX_BODY_BYTES, cooldown_failures=1_000_000
    ) as gw:
        yield gw


@pytest.fixture(autouse=True)
def _fresh_sim(gateway: Gateway) -> None:
    clear_sim(gateway)


def anthropic_post(
    gw: Gateway, body: Any, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/messages",
        headers={**old_sdk_headers(gw), **(headers or {})},
        **({"json": body} | kwargs),
    )


def openai_post(
    gw: Gateway, body: Any, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Response:
    base = {"authorization": f"Bearer {gw.team_key}", "content-type": "application/json"}
    return httpx.post(
        f"{gw.url}/v1/chat/completions", headers={**base, **(headers or {})}, **({"json": body} | kwargs)
    )


def assert_anthropic_error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert response.headers.get("request-id", "").startswith("req_"), dict(response.headers)
    if "request_id" in body:  # one id per request: the body's must be the header's
        assert body["request_id"] == response.headers["request-id"]
    return str(body["error"]["message"])


def assert_openai_error(response: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == error_type and error["message"]
    assert response.headers.get("x-request-id", "").startswith("req_"), dict(response.headers)
    return dict(error)


def assert_nothing_leaked(gw: Gateway, text: str) -> None:
    """No upstream credential, URL or raw upstream error text in what the client sees."""
    lowered = text.lower()
    assert SIMULATOR_CREDENTIAL not in lowered
    assert "/simulator" not in lowered and gw.url.split("//")[1] not in lowered
    assert "(simulated)" not in lowered  # the simulator's own error messages


VALID_ANTHROPIC = {
    "model": "claude-haiku-5-5",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "Hi"}],
}
VALID_OPENAI = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "Hi"}]}


# ---- request errors ------------------------------------------------------------------------------------


def test_malformed_json(gateway: Gateway) -> None:
    message = assert_anthropic_error(
        anthropic_post(gateway, None, content=b'{"model": "claude-haiku-5-5", '), 400, "invalid_request_error"
    )
    assert "json" in message.lower()
    error = assert_openai_error(openai_post(gateway, None, content=b"{nope"), 400, "invalid_request_error")
    assert "json" in error["message"].lower()
    assert_anthropic_error(anthropic_post(gateway, None, content=b""), 400, "invalid_request_error")
    assert upstream_requests(gateway) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({k: v for k, v in VALID_ANTHROPIC.items() if k != "model"}, "model"),
        ({k: v for k, v in VALID_ANTHROPIC.items() if k != "max_tokens"}, "max_tokens"),
        ({k: v for k, v in VALID_ANTHROPIC.items() if k != "messages"}, "messages"),
        ({**VALID_ANTHROPIC, "max_tokens": "many"}, "max_tokens"),
        ({**VALID_ANTHROPIC, "messages": "Hi"}, "messages"),
        ({**VALID_ANTHROPIC, "messages": [{"role": "robot", "content": "Hi"}]}, "messages"),
        ({**VALID_ANTHROPIC, "stop_sequences": "END"}, "stop_sequences"),
        ({**VALID_ANTHROPIC, "stream": "yes"}, "stream"),
        ([1, 2, 3], "object"),
    ],
)
def test_anthropic_schema_violations(gateway: Gateway, body: Any, field: str) -> None:
    message = assert_anthropic_error(anthropic_post(gateway, body), 400, "invalid_request_error")
    assert field in message
    assert upstream_requests(gateway) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({k: v for k, v in VALID_OPENAI.items() if k != "model"}, "model"),
        ({k: v for k, v in VALID_OPENAI.items() if k != "messages"}, "messages"),
        ({**VALID_OPENAI, "messages": []}, "messages"),
        ({**VALID_OPENAI, "max_tokens": -1}, "max_tokens"),
        ({**VALID_OPENAI, "max_completion_tokens": "ten"}, "max_completion_tokens"),
        ({**VALID_OPENAI, "temperature": "hot"}, "temperature"),
        ({**VALID_OPENAI, "n": 3}, "n"),
        ({**VALID_OPENAI, "tools": [{"type": "function"}]}, "tools"),
    ],
)
def test_openai_schema_violations(gateway: Gateway, body: Any, field: str) -> None:
    error = assert_openai_error(openai_post(gateway, body), 400, "invalid_request_error")
    assert error["param"] == field and field in error["message"]
    assert upstream_requests(gateway) == []


def test_schema_violation_through_the_sdks(gateway: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as a_info:
        anthropic_client(gateway).messages.create(
            model="claude-haiku-5-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"max_tokens": "x"},
        )
    assert a_info.value.status_code == 400 and "max_tokens" in a_info.value.message
    assert a_info.value.request_id and a_info.value.request_id.startswith("req_")
    with pytest.raises(openai.BadRequestError) as o_info:
        openai_client(gateway).chat.completions.create(model="gpt-5-mini", messages=[], max_tokens=5)
    assert o_info.value.status_code == 400 and o_info.value.param == "messages"


def test_missing_key(gateway: Gateway) -> None:
    headers = {k: v for k, v in old_sdk_headers(gateway).items() if k != "x-api-key"}
    response = httpx.post(f"{gateway.url}/v1/messages", headers=headers, json=VALID_ANTHROPIC)
    assert_anthropic_error(response, 401, "authentication_error")
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=VALID_OPENAI)
    error = assert_openai_error(response, 401, "invalid_request_error")
    assert error["code"] == "invalid_api_key"
    assert upstream_requests(gateway) == []


def test_unknown_key(gateway: Gateway) -> None:
    with pytest.raises(anthropic.AuthenticationError) as a_info:
        anthropic.Anthropic(base_url=gateway.url, api_key="tw-not-a-real-key", max_retries=0).messages.create(
            model="claude-haiku-5-5", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert a_info.value.status_code == 401
    assert "tw-not-a-real-key" not in a_info.value.message
    with pytest.raises(openai.AuthenticationError) as o_info:
        openai.OpenAI(
            base_url=gateway.url + "/v1", api_key="tw-not-a-real-key", max_retries=0
        ).chat.completions.create(model="gpt-5-mini", messages=[{"role": "user", "content": "x"}])
    assert o_info.value.status_code == 401
    response = anthropic_post(gateway, VALID_ANTHROPIC, headers={"x-api-key": "tw-wrong"})
    assert_anthropic_error(response, 401, "authentication_error")
    assert upstream_requests(gateway) == []


def test_unknown_model(gateway: Gateway) -> None:
    message = assert_anthropic_error(
        anthropic_post(gateway, {**VALID_ANTHROPIC, "model": "claude-nonexistent-9"}), 404, "not_found_error"
    )
    assert "claude-nonexistent-9" in message
    with pytest.raises(openai.NotFoundError) as info:
        openai_client(gateway).chat.completions.create(
            model="gpt-nonexistent", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 404 and "gpt-nonexistent" in info.value.message
    assert upstream_requests(gateway) == []


def test_body_too_large(gateway: Gateway) -> None:
    big = {**VALID_ANTHROPIC, "messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 1000)}]}
    message = assert_anthropic_error(anthropic_post(gateway, big), 413, "request_too_large")
    assert str(MAX_BODY_BYTES) in message
    big_openai = {**VALID_OPENAI, "messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 1000)}]}
    assert_openai_error(openai_post(gateway, big_openai), 413, "invalid_request_error")
    with pytest.raises(anthropic.APIStatusError) as info:
        anthropic_client(gateway).messages.create(
            model="claude-haiku-5-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "y" * (MAX_BODY_BYTES * 2)}],
        )
    assert info.value.status_code == 413
    assert upstream_requests(gateway) == []


def test_unknown_endpoint_in_client_format(gateway: Gateway) -> None:
    response = httpx.post(f"{gateway.url}/v1/messages/nope", headers=old_sdk_headers(gateway), json={})
    assert response.status_code in (404, 405)
    assert response.json()["type"] == "error"
    assert response.headers.get("request-id", "").startswith("req_"), dict(response.headers)


# ---- upstream errors --------------------------------------------------------------------------------------


def test_upstream_429_with_retry_after(gateway: Gateway) -> None:
    headers = {"x-sim-error": "429", "x-sim-retry-after": "3"}
    response = anthropic_post(gateway, {**VALID_ANTHROPIC, "model": "claude-opus-4-5"}, headers=headers)
    message = assert_anthropic_error(response, 429, "rate_limit_error")
    assert response.headers["retry-after"] == "3"
    assert_nothing_leaked(gateway, response.text)
    assert "rate limit" in message.lower()

    with pytest.raises(openai.RateLimitError) as info:
        openai_client(gateway).chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": "x"}], extra_headers=headers
        )
    assert info.value.status_code == 429 and info.value.response.headers["retry-after"] == "3"
    assert_nothing_leaked(gateway, info.value.response.text)


def test_upstream_529_overloaded(gateway: Gateway) -> None:
    headers = {"x-sim-error": "529"}
    with pytest.raises(anthropic.OverloadedError) as a_info:
        anthropic_client(gateway).messages.create(
            model="claude-opus-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            extra_headers=headers,
        )
    assert a_info.value.status_code == 529 and "overloaded" in a_info.value.message.lower()
    assert_nothing_leaked(gateway, a_info.value.response.text)
    # OpenAI has no 529: an overloaded upstream is a 503 to OpenAI clients
    response = openai_post(gateway, {**VALID_OPENAI, "model": "claude-opus-5"}, headers=headers)
    error = assert_openai_error(response, 503, "server_error")
    assert "overloaded" in error["message"].lower()
    assert_nothing_leaked(gateway, response.text)
    # the gateway retried the upstream before giving up, and says so to stop client retries piling up
    attempts = upstream_requests(gateway, "/v1/messages")
    assert len(attempts) == 2 * (gateway.services.settings.retry_attempts + 1)
    assert response.headers.get("x-should-retry") == "false"


def test_upstream_500(gateway: Gateway) -> None:
    headers = {"x-sim-error": "500"}
    response = anthropic_post(gateway, {**VALID_ANTHROPIC, "model": "claude-sonnet-4-6"}, headers=headers)
    message = assert_anthropic_error(response, 502, "api_error")
    assert "upstream" in message
    assert_nothing_leaked(gateway, response.text)
    response = openai_post(gateway, {**VALID_OPENAI, "model": "gpt-5"}, headers=headers)
    assert_openai_error(response, 502, "server_error")
    assert_nothing_leaked(gateway, response.text)


def test_upstream_refuses_tollways_credential(gateway: Gateway) -> None:
    response = anthropic_post(
        gateway, {**VALID_ANTHROPIC, "model": "claude-opus-4-6"}, headers={"x-sim-error": "401"}
    )
    message = assert_anthropic_error(response, 502, "api_error")
    assert "credential" in message
    assert_nothing_leaked(gateway, response.text)


def test_upstream_400_is_a_400(gateway: Gateway) -> None:
    # The simulator (like the real API) rejects an empty message list; Tollway does not pre-check it.
    response = anthropic_post(gateway, {**VALID_ANTHROPIC, "messages": []})
    message = assert_anthropic_error(response, 400, "invalid_request_error")
    assert "messages" in message
    assert_nothing_leaked(gateway, response.text)
    assert len(upstream_requests(gateway, "/v1/messages")) == 1  # a 400 is not retried


def test_upstream_timeout(gateway: Gateway) -> None:
    headers = {"x-sim-latency-ms": str(int(READ_TIMEOUT_S * 1000 * 4))}
    response = anthropic_post(gateway, {**VALID_ANTHROPIC, "model": "claude-opus-4-7"}, headers=headers)
    message = assert_anthropic_error(response, 504, "timeout_error")
    assert "timed out" in message
    assert_nothing_leaked(gateway, response.text)
    response = openai_post(gateway, {**VALID_OPENAI, "model": "gpt-5-nano"}, headers=headers)
    assert_openai_error(response, 504, "server_error")


def test_upstream_error_before_a_stream_starts_is_a_plain_http_error(gateway: Gateway) -> None:
    headers = {"x-sim-error": "529"}
    with (
        pytest.raises(anthropic.OverloadedError),
        anthropic_client(gateway).messages.stream(
            model="claude-sonnet-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            extra_headers=headers,
        ) as stream,
    ):
        stream.get_final_message()
    with pytest.raises(openai.InternalServerError) as info:
        openai_client(gateway).chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "x"}], stream=True, extra_headers=headers
        )
    assert info.value.status_code == 503


# ---- errors after a stream started -----------------------------------------------------------------------


def read_sse(response: httpx.Response) -> list[str]:
    return [block for block in response.read().decode().split("\n\n") if block.strip()]


@pytest.mark.parametrize("model", ["claude-haiku-5-5", "gpt-5-mini"])
def test_anthropic_stream_error_after_start(gateway: Gateway, model: str) -> None:
    headers = {"x-sim-stream-error-after": "3"}
    client = anthropic_client(gateway)
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(
            model=model, max_tokens=100, messages=[{"role": "user", "content": "x"}], extra_headers=headers
        ) as stream:
            for text in stream.text_stream:
                received.append(text)
    assert len(received) == 3  # what arrived before the failure was delivered
    assert "overloaded" in str(info.value).lower()
    # on the wire: a named `error` event, after HTTP 200
    body = {"model": model, "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/messages", headers={**old_sdk_headers(gateway), **headers}, json=body
    ) as response:
        assert response.status_code == 200
        events = read_sse(response)
    assert events[-1].startswith("event: error\ndata: ")
    error = json.loads(events[-1].split("data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] == "overloaded_error"
    assert_nothing_leaked(gateway, events[-1])
    assert not any(e.startswith("event: message_stop") for e in events)


@pytest.mark.parametrize("model", ["gpt-5-mini", "claude-haiku-5-5"])
def test_openai_stream_error_after_start(gateway: Gateway, model: str) -> None:
    headers = {"x-sim-stream-error-after": "3"}
    stream = openai_client(gateway).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        max_tokens=100,
        extra_headers=headers,
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert len(received) == 3
    assert "fail" in info.value.message.lower() or "overloaded" in info.value.message.lower()
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {gateway.team_key}", **headers},
        json={
            "model": model,
            "stream": True,
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "x"}],
        },
    ) as response:
        assert response.status_code == 200
        events = read_sse(response)
    assert events[-1].startswith('data: {"error":')
    assert "[DONE]" not in events[-1]
    assert_nothing_leaked(gateway, events[-1])


@pytest.mark.parametrize("model", ["claude-haiku-5-5", "gpt-5-mini"])
def test_upstream_cut_stream_is_not_silently_truncated(gateway: Gateway, model: str) -> None:
    headers = {"x-sim-stream-abort-after": "2"}
    aborted_before = gateway.sim_stats()["streams_aborted"]
    with pytest.raises(anthropic.APIStatusError):
        with anthropic_client(gateway).messages.stream(
            model=model, max_tokens=100, messages=[{"role": "user", "content": "x"}], extra_headers=headers
        ) as stream:
            stream.get_final_message()
    with pytest.raises(openai.APIError):
        for _ in openai_client(gateway).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            max_tokens=100,
            extra_headers=headers,
        ):
            pass
    assert gateway.sim_stats()["streams_aborted"] == aborted_before + 2  # the upstream really cut them


def test_success_responses_carry_a_request_id(gateway: Gateway) -> None:
    ok = anthropic_post(gateway, VALID_ANTHROPIC)
    assert ok.status_code == 200 and ok.headers["request-id"].startswith("req_")
    ok = openai_post(gateway, VALID_OPENAI)
    assert ok.status_code == 200 and ok.headers["x-request-id"].startswith("req_")
    for path, headers in (
        ("/v1/models", old_sdk_headers(gateway)),
        ("/v1/models", {"authorization": f"Bearer {gateway.team_key}"}),
        ("/v1/models/claude-haiku-5-5", old_sdk_headers(gateway)),
    ):
        response = httpx.get(f"{gateway.url}{path}", headers=headers)
        assert response.status_code == 200
        assert response.headers.get("request-id", "").startswith("req_"), (path, dict(response.headers))
    counted = httpx.post(
        f"{gateway.url}/v1/messages/count_tokens",
        headers=old_sdk_headers(gateway),
        json={"model": "claude-haiku-5-5", "messages": [{"role": "user", "content": "x"}]},
    )
    assert counted.status_code == 200 and counted.headers["request-id"].startswith("req_")


def test_models_error_carries_a_request_id(gateway: Gateway) -> None:
    no_key = httpx.get(f"{gateway.url}/v1/models", headers={"anthropic-version": "2023-06-01"})
    assert_anthropic_error(no_key, 401, "authentication_error")


def test_count_tokens_error_carries_a_request_id(gateway: Gateway) -> None:
    count_bad = httpx.post(
        f"{gateway.url}/v1/messages/count_tokens",
        headers=old_sdk_headers(gateway),
        json={"model": "nope-model", "messages": []},
    )
    assert_anthropic_error(count_bad, 404, "not_found_error")
