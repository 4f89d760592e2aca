"""The official ``anthropic`` SDK against Tollway on a real socket, the simulator as upstream."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import (
    ANTHROPIC_WEATHER_TOOL,
    PDF_TINY,
    PNG_1PX,
    WEATHER_SCHEMA,
    anthropic_client,
    clear_sim,
    old_sdk_headers,
    only_upstream_request,
    upstream_requests,
)
from tests.gateway import Gateway

MODEL = "claude-haiku-5-5"  # sampling: drop
PASS_MODEL = "claude-haiku-4-5"  # sampling: pass


@pytest.fixture(autouse=True)
def _fresh_sim(gateway: Gateway) -> None:
    clear_sim(gateway)


def test_create(gateway: Gateway) -> None:
    client = anthropic_client(gateway)
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Hello there"}]
    )
    message = raw.parse()
    assert raw.headers["request-id"].startswith("req_")
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == MODEL
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert len(message.content) == 1 and message.content[0].type == "text"
    assert len(message.content[0].text.split()) == message.usage.output_tokens
    assert message.usage.input_tokens > 0
    upstream = only_upstream_request(gateway, "/v1/messages")
    assert upstream["body"]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hello there"}]}
    ]
    assert upstream["body"]["model"] == MODEL and upstream["body"]["max_tokens"] == 100


def test_stream_text_and_final_message(gateway: Gateway) -> None:
    client = anthropic_client(gateway)
    with client.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Stream please"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert final.content[0].type == "text" and final.content[0].text == "".join(pieces)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(pieces)
    assert final.usage.input_tokens > 0
    # the same prompt answered non-streaming gives the same text (the simulator is deterministic)
    again = client.messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Stream please"}]
    )
    assert again.content[0].text == final.content[0].text  # type: ignore[union-attr]
    bodies = [r["body"] for r in upstream_requests(gateway, "/v1/messages")]
    assert [b.get("stream") for b in bodies] == [True, None]


def test_raw_stream_framing(gateway: Gateway) -> None:
    """Every event has an `event:` line and a `type` equal to it; the first is message_start."""
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/messages",
        headers=old_sdk_headers(gateway),
        json={
            "model": MODEL,
            "max_tokens": 20,
            "stream": True,
            "messages": [{"role": "user", "content": "Hi"}],
        },
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["request-id"].startswith("req_")
        body = response.read().decode()
    events = [block for block in body.split("\n\n") if block.strip()]
    names = []
    for block in events:
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        name = lines[0][len("event: ") :]
        assert json.loads(lines[1][len("data: ") :])["type"] == name
        names.append(name)
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert "data: [DONE]" not in body


@pytest.mark.parametrize("stream", [False, True])
def test_system_as_string_and_as_blocks(gateway: Gateway, stream: bool) -> None:
    client = anthropic_client(gateway)
    blocks: list[Any] = [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Answer in English.", "cache_control": {"type": "ephemeral"}},
    ]
    for system in ("You are terse.", blocks):
        clear_sim(gateway)
        kwargs: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": 50,
            "system": system,
            "messages": [{"role": "user", "content": "Hi"}],
        }
        if stream:
            with client.messages.stream(**kwargs) as s:
                s.get_final_message()
        else:
            client.messages.create(**kwargs)
        sent = only_upstream_request(gateway, "/v1/messages")["body"]["system"]
        expected = [{"type": "text", "text": system}] if isinstance(system, str) else blocks
        assert sent == expected


@pytest.mark.parametrize("stream", [False, True])
def test_multi_turn_history(gateway: Gateway, stream: bool) -> None:
    history: list[Any] = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
    ]
    client = anthropic_client(gateway)
    if stream:
        with client.messages.stream(model=MODEL, max_tokens=100, messages=history) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(model=MODEL, max_tokens=100, messages=history)
    assert message.stop_reason == "end_turn"
    assert only_upstream_request(gateway, "/v1/messages")["body"]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "My name is Ada."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Nice to meet you, Ada."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences(gateway: Gateway, stream: bool) -> None:
    client = anthropic_client(gateway)
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Count"}],
        "stop_sequences": ["STOP", "never"],
        "extra_headers": {"x-sim-reply": "one two three STOP four five"},
    }
    if stream:
        with client.messages.stream(**kwargs) as s:
            text = "".join(s.text_stream)
            message = s.get_final_message()
    else:
        message = client.messages.create(**kwargs)
        text = message.content[0].text  # type: ignore[union-attr]
    assert text == "one two three "
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "STOP"
    assert only_upstream_request(gateway, "/v1/messages")["body"]["stop_sequences"] == ["STOP", "never"]


@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_truncation(gateway: Gateway, stream: bool) -> None:
    client = anthropic_client(gateway)
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 3,
        "messages": [{"role": "user", "content": "Write a lot"}],
    }
    if stream:
        with client.messages.stream(**kwargs) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(**kwargs)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3
    assert len(message.content[0].text.split()) == 3  # type: ignore[union-attr]


def test_metadata_reaches_upstream(gateway: Gateway) -> None:
    anthropic_client(gateway).messages.create(
        model=MODEL,
        max_tokens=10,
        metadata={"user_id": "user-1234"},
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert only_upstream_request(gateway, "/v1/messages")["body"]["metadata"] == {"user_id": "user-1234"}


def _check_tool_use(block: Any) -> dict[str, Any]:
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.id.startswith("toolu_")
    assert set(block.input) == set(WEATHER_SCHEMA["required"])
    assert isinstance(block.input["city"], str) and block.input["unit"] == "celsius"
    return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_round_trip(gateway: Gateway, stream: bool) -> None:
    client = anthropic_client(gateway)
    question = {"role": "user", "content": "What's the weather in Paris?"}

    def ask(messages: list[Any]) -> Any:
        kwargs: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": 200,
            "tools": [ANTHROPIC_WEATHER_TOOL],
            "messages": messages,
        }
        if not stream:
            return client.messages.create(**kwargs), []
        with client.messages.stream(**kwargs) as s:
            events = list(s)
            return s.get_final_message(), events

    first, events = ask([question])
    assert first.stop_reason == "tool_use"
    tool_use = _check_tool_use(first.content[-1])
    if stream:
        deltas = [e for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        assert len(deltas) > 1  # streamed in fragments, reassembled by the SDK
        assert json.loads("".join(d.delta.partial_json for d in deltas)) == tool_use["input"]
    result = {"type": "tool_result", "tool_use_id": tool_use["id"], "content": "18 degrees, sunny"}
    second, _ = ask(
        [question, {"role": "assistant", "content": [tool_use]}, {"role": "user", "content": [result]}]
    )
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    bodies = [r["body"] for r in upstream_requests(gateway, "/v1/messages")]
    assert len(bodies) == 2
    assert bodies[0]["tools"] == [ANTHROPIC_WEATHER_TOOL]
    assert bodies[1]["messages"][1:] == [
        {"role": "assistant", "content": [tool_use]},
        {"role": "user", "content": [result]},
    ]


def test_tool_choice_passes_through(gateway: Gateway) -> None:
    message = anthropic_client(gateway).messages.create(
        model=MODEL,
        max_tokens=100,
        tools=[ANTHROPIC_WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "Anything"}],
    )
    assert message.stop_reason == "tool_use"
    body = only_upstream_request(gateway, "/v1/messages")["body"]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}


def test_images_and_documents_pass_through(gateway: Gateway) -> None:
    content: list[Any] = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_TINY},
            "title": "tiny.pdf",
            "citations": {"enabled": True},
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}},
        {"type": "text", "text": "Describe these."},
    ]
    message = anthropic_client(gateway).messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": content}]
    )
    assert message.stop_reason == "end_turn"
    assert only_upstream_request(gateway, "/v1/messages")["body"]["messages"] == [
        {"role": "user", "content": content}
    ]


def test_unknown_fields_pass_through(gateway: Gateway) -> None:
    anthropic_client(gateway).messages.create(
        model=MODEL,
        max_tokens=10,
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"some_new_field": 1, "another": {"nested": [True, None]}},
    )
    body = only_upstream_request(gateway, "/v1/messages")["body"]
    assert body["some_new_field"] == 1 and body["another"] == {"nested": [True, None]}


# ---- API versions and sampling parameters -------------------------------------------------------


def test_current_sdk_sends_bearer_and_2026_version(gateway: Gateway) -> None:
    anthropic_client(gateway).messages.create(
        model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
    )
    upstream = only_upstream_request(gateway, "/v1/messages")
    assert upstream["headers"]["anthropic-version"] == "2026-10-21"
    # the simulator sees Tollway's credential, never the client's Tollway key
    assert gateway.team_key not in json.dumps(upstream["headers"])


def test_old_sdk_with_x_api_key_and_sampling(gateway: Gateway) -> None:
    body = {
        "model": PASS_MODEL,
        "max_tokens": 20,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    response = httpx.post(f"{gateway.url}/v1/messages", headers=old_sdk_headers(gateway), json=body)
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "message"
    assert response.headers["request-id"].startswith("req_")
    upstream = only_upstream_request(gateway, "/v1/messages")
    assert upstream["headers"]["anthropic-version"] == "2023-06-01"
    assert (upstream["body"]["temperature"], upstream["body"]["top_p"], upstream["body"]["top_k"]) == (
        0.2,
        0.9,
        5,
    )


def test_old_sdk_streaming(gateway: Gateway) -> None:
    body = {
        "model": PASS_MODEL,
        "max_tokens": 20,
        "temperature": 0.5,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    with httpx.stream(
        "POST", f"{gateway.url}/v1/messages", headers=old_sdk_headers(gateway), json=body
    ) as response:
        text = response.read().decode()
    assert response.status_code == 200
    assert "event: message_stop" in text
    assert only_upstream_request(gateway, "/v1/messages")["body"]["temperature"] == 0.5


def test_sampling_dropped_for_a_model_that_rejects_it(gateway: Gateway) -> None:
    message = anthropic_client(gateway).messages.create(
        model=MODEL,
        max_tokens=100,
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"temperature": 0.2, "top_k": 3},
    )
    assert message.stop_reason == "end_turn"
    upstream = only_upstream_request(gateway, "/v1/messages")
    assert "temperature" not in upstream["body"] and "top_k" not in upstream["body"]
    assert upstream["headers"]["anthropic-version"] == "2026-10-21"


def test_sampling_forwarded_under_2023_version_for_a_model_that_takes_it(gateway: Gateway) -> None:
    message = anthropic_client(gateway).messages.create(
        model=PASS_MODEL,
        max_tokens=100,
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"temperature": 0.2},
    )
    assert message.stop_reason == "end_turn"
    upstream = only_upstream_request(gateway, "/v1/messages")
    assert upstream["body"]["temperature"] == 0.2
    assert upstream["headers"]["anthropic-version"] == "2023-06-01"


def test_beta_query_string_and_header(gateway: Gateway) -> None:
    headers = {**old_sdk_headers(gateway), "anthropic-beta": "context-1m-2025-08-07"}
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    response = httpx.post(f"{gateway.url}/v1/messages?beta=true", headers=headers, json=body)
    assert response.status_code == 200, response.text
    assert (
        only_upstream_request(gateway, "/v1/messages")["headers"]["anthropic-beta"] == "context-1m-2025-08-07"
    )


# ---- count_tokens and models ------------------------------------------------------------------------


def test_count_tokens(gateway: Gateway) -> None:
    messages: list[Any] = [{"role": "user", "content": "How many tokens is this sentence, roughly?"}]
    counted = anthropic_client(gateway).messages.count_tokens(
        model=MODEL, system="Be brief.", messages=messages, tools=[ANTHROPIC_WEATHER_TOOL]
    )
    upstream = only_upstream_request(gateway, "/v1/messages/count_tokens")
    assert "max_tokens" not in upstream["body"]
    direct = httpx.post(
        gateway.sim("/v1/messages/count_tokens"),
        headers={"x-api-key": "sim", "anthropic-version": "2023-06-01"},
        json=upstream["body"],
    ).json()
    assert counted.input_tokens == direct["input_tokens"] > 0
    assert upstream_requests(gateway, "/v1/messages") == []  # no message was generated


def test_count_tokens_needs_a_key(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/messages/count_tokens",
        headers={"anthropic-version": "2023-06-01"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_models_in_anthropic_shape(gateway: Gateway) -> None:
    page = anthropic_client(gateway).models.list(limit=1000)
    models = {m.id: m for m in page.data}
    assert MODEL in models and PASS_MODEL in models and "gpt-5-mini" in models
    assert all(m.type == "model" for m in models.values())
    assert "simulator" in models[MODEL].display_name.lower()
    assert page.has_more is False
    one = anthropic_client(gateway).models.retrieve(MODEL)
    assert one.id == MODEL and one.type == "model"


def test_count_tokens_for_a_model_without_a_count_endpoint(gateway: Gateway) -> None:
    # OpenAI has no count endpoint: Tollway estimates, and calls no upstream at all.
    short = anthropic_client(gateway).messages.count_tokens(
        model="gpt-5-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    long = anthropic_client(gateway).messages.count_tokens(
        model="gpt-5-mini", messages=[{"role": "user", "content": "Hi " * 400}]
    )
    assert 0 < short.input_tokens < long.input_tokens
    assert upstream_requests(gateway) == []
