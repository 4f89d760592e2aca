"""The official ``openai`` SDK against Tollway on a real socket, the simulator as upstream."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.helpers import (
    OPENAI_WEATHER_TOOL,
    WEATHER_SCHEMA,
    clear_sim,
    only_upstream_request,
    openai_client,
    upstream_requests,
)
from tests.gateway import Gateway

MODEL = "gpt-5-mini"
PATH = "/v1/chat/completions"


@pytest.fixture(autouse=True)
def _fresh_sim(gateway: Gateway) -> None:
    clear_sim(gateway)


def test_create(gateway: Gateway) -> None:
    raw = openai_client(gateway).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}]
    )
    completion = raw.parse()
    assert raw.headers["x-request-id"].startswith("req_")
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert len(completion.choices) == 1 and choice.index == 0
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content and choice.message.tool_calls is None
    usage = completion.usage
    assert usage is not None and usage.completion_tokens == len(choice.message.content.split())
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens and usage.prompt_tokens > 0
    body = only_upstream_request(gateway, PATH)["body"]
    assert body["model"] == MODEL and body["messages"] == [{"role": "user", "content": "Hello there"}]


def test_stream(gateway: Gateway) -> None:
    stream = openai_client(gateway).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Stream please"}], stream=True
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)  # no usage unless asked for
    same = openai_client(gateway).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Stream please"}]
    )
    assert text == same.choices[0].message.content


def test_raw_stream_framing(gateway: Gateway) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.url}{PATH}",
        headers={"authorization": f"Bearer {gateway.team_key}"},
        json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"].startswith("req_")
        body = response.read().decode()
    events = [block for block in body.split("\n\n") if block.strip() and not block.startswith(":")]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    assert "event:" not in body
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        assert json.loads(event[len("data: ") :])["object"] == "chat.completion.chunk"


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_options_include_usage(gateway: Gateway, include_usage: bool) -> None:
    kwargs: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(
        openai_client(gateway).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Count to five"}], stream=True, **kwargs
        )
    )
    with_usage = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert with_usage == [chunks[-1]] and chunks[-1].choices == []
        usage = chunks[-1].usage
        assert usage is not None and usage.prompt_tokens > 0
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert usage.completion_tokens == len(text.split())
    else:
        assert with_usage == [] and all(c.choices for c in chunks)
    # either way Tollway asked the upstream for usage: the ledger needs it
    body = only_upstream_request(gateway, PATH)["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def _accumulate_tool_calls(chunks: list[Any]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        if not chunk.choices:
            continue
        for call in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] = call.id or entry["id"]
            if call.function is not None:
                entry["name"] = call.function.name or entry["name"]
                entry["arguments"] += call.function.arguments or ""
    return calls


@pytest.mark.parametrize("stream", [False, True])
def test_function_calling_round_trip(gateway: Gateway, stream: bool) -> None:
    client = openai_client(gateway)
    question = {"role": "user", "content": "What's the weather in Paris?"}
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=MODEL, messages=[question], tools=[OPENAI_WEATHER_TOOL], stream=True
            )
        )
        calls = _accumulate_tool_calls(chunks)
        assert list(calls) == [0]
        call = calls[0]
        finish = chunks[-1].choices[0].finish_reason
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls) > 2  # argument fragments
    else:
        first = client.chat.completions.create(model=MODEL, messages=[question], tools=[OPENAI_WEATHER_TOOL])
        message = first.choices[0].message
        assert message.tool_calls is not None and len(message.tool_calls) == 1
        tc = message.tool_calls[0]
        call = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}  # type: ignore[union-attr]
        finish = first.choices[0].finish_reason
    assert finish == "tool_calls"
    assert call["name"] == "get_weather" and call["id"]
    arguments = json.loads(call["arguments"])
    assert set(arguments) == set(WEATHER_SCHEMA["required"])
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": "get_weather", "arguments": call["arguments"]},
            }
        ],
    }
    tool = {"role": "tool", "tool_call_id": call["id"], "content": "18 degrees, sunny"}
    second = client.chat.completions.create(
        model=MODEL, messages=[question, assistant, tool], tools=[OPENAI_WEATHER_TOOL]
    )
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    bodies = [r["body"] for r in upstream_requests(gateway, PATH)]
    assert bodies[0]["tools"] == [OPENAI_WEATHER_TOOL]
    assert bodies[1]["messages"][1:] == [assistant, tool]


def test_tool_choice_and_parallel_tool_calls(gateway: Gateway) -> None:
    completion = openai_client(gateway).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Anything"}],
        tools=[OPENAI_WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
    )
    assert completion.choices[0].finish_reason == "tool_calls"
    body = only_upstream_request(gateway, PATH)["body"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_object(gateway: Gateway, stream: bool) -> None:
    client = openai_client(gateway)
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Reply in JSON"}],
        "response_format": {"type": "json_object"},
    }
    if stream:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(stream=True, **kwargs)
            if c.choices
        )
    else:
        text = client.chat.completions.create(**kwargs).choices[0].message.content or ""
    assert isinstance(json.loads(text), dict)
    assert only_upstream_request(gateway, PATH)["body"]["response_format"] == {"type": "json_object"}


def test_response_format_json_schema(gateway: Gateway) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 18}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    completion = openai_client(gateway).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "A person"}],
        response_format=fmt,  # type: ignore[arg-type]
    )
    value = json.loads(completion.choices[0].message.content or "")
    assert set(value) == {"name", "age"} and isinstance(value["name"], str) and value["age"] >= 18
    assert only_upstream_request(gateway, PATH)["body"]["response_format"] == fmt


def test_n(gateway: Gateway) -> None:
    client = openai_client(gateway)
    completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=1)
    assert len(completion.choices) == 1
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=2)
    assert info.value.status_code == 400
    assert info.value.param == "n" and "n" in info.value.message  # type: ignore[attr-defined]


@pytest.mark.parametrize("stream", [False, True])
def test_stop(gateway: Gateway, stream: bool) -> None:
    client = openai_client(gateway)
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count"}],
        "stop": ["STOP"],
        "extra_headers": {"x-sim-reply": "one two three STOP four"},
    }
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = chunks[-1].choices[0].finish_reason
    else:
        completion = client.chat.completions.create(**kwargs)
        text, finish = completion.choices[0].message.content or "", completion.choices[0].finish_reason
    assert text == "one two three " and finish == "stop"
    assert only_upstream_request(gateway, PATH)["body"]["stop"] == ["STOP"]


def test_stop_as_a_string(gateway: Gateway) -> None:
    openai_client(gateway).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stop="END"
    )
    assert only_upstream_request(gateway, PATH)["body"]["stop"] == ["END"]


def test_seed_and_other_fields_reach_upstream(gateway: Gateway) -> None:
    openai_client(gateway).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "x"}],
        seed=1234,
        user="end-user-9",
        reasoning_effort="low",
        extra_body={"some_new_field": {"a": 1}},
    )
    body = only_upstream_request(gateway, PATH)["body"]
    assert body["seed"] == 1234 and body["user"] == "end-user-9"
    assert body["reasoning_effort"] == "low" and body["some_new_field"] == {"a": 1}


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_fields(gateway: Gateway, field: str, stream: bool) -> None:
    client = openai_client(gateway)
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a lot"}],
        field: 4,
    }
    if stream:
        chunks = list(
            client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
        )
        finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
        usage = chunks[-1].usage
    else:
        completion = client.chat.completions.create(**kwargs)
        finish, usage = completion.choices[0].finish_reason, completion.usage
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 4
    body = only_upstream_request(gateway, PATH)["body"]
    assert body["max_completion_tokens"] == 4  # the provider's configured field
    assert "max_tokens" not in body


def test_developer_role_and_content_parts(gateway: Gateway) -> None:
    openai_client(gateway).chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Hi"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            },
        ],
    )
    assert only_upstream_request(gateway, PATH)["body"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Hi"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        },
    ]


def test_chat_completions_without_v1_prefix(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=gateway.url, api_key=gateway.team_key, max_retries=0)
    completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert completion.choices[0].finish_reason == "stop"


def test_models_in_openai_shape(gateway: Gateway) -> None:
    models = {m.id: m for m in openai_client(gateway).models.list()}
    assert MODEL in models and "claude-haiku-5-5" in models
    assert all(m.object == "model" and isinstance(m.created, int) for m in models.values())
    assert models[MODEL].owned_by == "tollway-simulator"
    response = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {gateway.team_key}"})
    assert response.json()["object"] == "list"
    one = openai_client(gateway).models.retrieve(MODEL)
    assert one.id == MODEL and one.object == "model"
