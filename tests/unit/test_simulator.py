"""The provider simulator, driven over a real socket by the official SDKs (and raw HTTP where the
wire itself is the subject): replies, streaming framing, tools, stop rules, structured output,
auth, validation, models and the mounted/tagged paths."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from app.domain import ChatRequest, Message, Tool
from app.simulator import SimulatorConfig, create_simulator_app
from app.tokens import request_bytes
from tests.servers import serve

# One plain client for raw calls: httpx.post() would build (and verify-configure) a client per call.
HTTP = httpx.Client(timeout=30)
MODEL = "claude-haiku-5-5"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 3},
            "units": {"type": "string", "enum": ["metric", "imperial"]},
            "detailed": {"type": "boolean"},
        },
        "required": ["city", "days", "units"],
    },
}
LOOKUP_TOOL = {
    "name": "lookup",
    "input_schema": {
        "type": "object",
        "properties": {"ids": {"type": "array", "items": {"type": "integer"}, "minItems": 2}},
        "required": ["ids"],
    },
}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(create_simulator_app()) as url:
        yield url


@pytest.fixture(autouse=True)
def _reset(base_url: str) -> None:
    HTTP.post(base_url + "/_sim/reset").raise_for_status()


@pytest.fixture(scope="module")
def claude(base_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def gpt(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def sse_events(raw: str) -> list[tuple[str | None, Any]]:
    """Parse an SSE body into (event name, parsed data) pairs."""
    events = []
    for chunk in raw.split("\n\n"):
        if not chunk.strip():
            continue
        name, data = None, None
        for line in chunk.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                payload = line[len("data: ") :]
                data = payload if payload == "[DONE]" else json.loads(payload)
        events.append((name, data))
    return events


def anthropic_headers(version: str = "2026-10-21") -> dict[str, str]:
    return {"x-api-key": "k", "anthropic-version": version}


# ---- Anthropic: text ------------------------------------------------------------------------------


def test_anthropic_reply_is_deterministic_per_request(claude: anthropic.Anthropic) -> None:
    raw = claude.messages.with_raw_response.create(model=MODEL, max_tokens=100, messages=user("hello"))
    first = raw.parse()
    second = claude.messages.create(model=MODEL, max_tokens=100, messages=user("hello"))
    other = claude.messages.create(model=MODEL, max_tokens=100, messages=user("something else"))

    assert raw.headers["request-id"].startswith("req_")
    assert first.id.startswith("msg_") and first.id != second.id
    assert first.content[0].type == "text"
    assert first.content[0].text == second.content[0].text
    assert first.content[0].text != other.content[0].text
    assert first.stop_reason == "end_turn" and first.stop_sequence is None
    assert first.usage.output_tokens == len(first.content[0].text.split()) == 40


def test_anthropic_stream_matches_create(claude: anthropic.Anthropic) -> None:
    created = claude.messages.create(model=MODEL, max_tokens=100, messages=user("stream me"))
    with claude.messages.stream(model=MODEL, max_tokens=100, messages=user("stream me")) as stream:
        deltas = [event.delta.text for event in stream if event.type == "content_block_delta"]
        final = stream.get_final_message()

    assert final.content[0].text == created.content[0].text == "".join(deltas)
    assert len(deltas) == 40  # one delta per token
    assert final.usage.output_tokens == created.usage.output_tokens
    assert final.usage.input_tokens == created.usage.input_tokens
    assert final.stop_reason == "end_turn"


def test_anthropic_sse_framing(base_url: str) -> None:
    body = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": user("frame")}
    response = HTTP.post(
        base_url + "/v1/messages", json=body, headers={**anthropic_headers(), "x-sim-output-tokens": "3"}
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"].startswith("req_")
    events = sse_events(response.text)

    for name, data in events:
        assert name is not None and data["type"] == name  # SDK 2.x needs both
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["output_tokens"] == 1 and start["usage"]["input_tokens"] > 0
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    message_delta = events[7][1]
    assert message_delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert message_delta["usage"]["output_tokens"] == 3
    assert message_delta["usage"]["input_tokens"] == start["usage"]["input_tokens"]


def test_output_length_header_and_max_tokens_truncation(claude: anthropic.Anthropic) -> None:
    short = claude.messages.create(
        model=MODEL, max_tokens=100, messages=user("x"), extra_headers={"x-sim-output-tokens": "7"}
    )
    truncated = claude.messages.create(model=MODEL, max_tokens=4, messages=user("x"))
    full = claude.messages.create(model=MODEL, max_tokens=100, messages=user("x"))

    assert short.usage.output_tokens == 7 and short.stop_reason == "end_turn"
    assert truncated.stop_reason == "max_tokens"
    assert truncated.usage.output_tokens == 4
    assert full.content[0].text.startswith(truncated.content[0].text)


def test_forced_reply_and_stop_sequences(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    headers = {"x-sim-reply": "alpha beta STOP gamma delta"}
    plain = claude.messages.create(model=MODEL, max_tokens=100, messages=user("x"), extra_headers=headers)
    stopped = claude.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=user("x"),
        stop_sequences=["nope", "STOP"],
        extra_headers=headers,
    )
    with claude.messages.stream(
        model=MODEL, max_tokens=100, messages=user("x"), stop_sequences=["STOP"], extra_headers=headers
    ) as stream:
        streamed = stream.get_final_message()
    # the stop sequence lies beyond max_tokens: max_tokens wins
    capped = claude.messages.create(
        model=MODEL, max_tokens=1, messages=user("x"), stop_sequences=["STOP"], extra_headers=headers
    )
    completion = gpt.chat.completions.create(
        model="gpt-5", messages=user("x"), stop="STOP", extra_headers=headers
    )

    assert plain.content[0].text == "alpha beta STOP gamma delta"
    assert plain.usage.output_tokens == 5
    assert stopped.content[0].text == "alpha beta "
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "STOP")
    assert (streamed.content[0].text, streamed.stop_reason, streamed.stop_sequence) == (
        "alpha beta ",
        "stop_sequence",
        "STOP",
    )
    assert (capped.content[0].text, capped.stop_reason, capped.stop_sequence) == ("alpha", "max_tokens", None)
    assert completion.choices[0].message.content == "alpha beta "
    assert completion.choices[0].finish_reason == "stop"


def test_forced_reply_may_be_utf8(base_url: str) -> None:
    response = HTTP.post(
        base_url + "/v1/messages",
        json={"model": MODEL, "max_tokens": 10, "messages": user("x")},
        headers=[*anthropic_headers().items(), ("x-sim-reply", "déjà vu 🎉".encode())],
    )
    assert response.json()["content"] == [{"type": "text", "text": "déjà vu 🎉"}]
    assert response.json()["usage"]["output_tokens"] == 3


# ---- Tools ----------------------------------------------------------------------------------------


def test_anthropic_tool_call(claude: anthropic.Anthropic) -> None:
    tools: Any = [WEATHER_TOOL, LOOKUP_TOOL]
    message = claude.messages.create(model=MODEL, max_tokens=200, messages=user("weather?"), tools=tools)

    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.id.startswith("toolu_")
    assert set(block.input) == {"city", "days", "units"}  # required properties only
    assert isinstance(block.input["city"], str) and block.input["city"]
    assert isinstance(block.input["days"], int) and block.input["days"] >= 3
    assert block.input["units"] in ("metric", "imperial")
    arguments = json.dumps(block.input, separators=(",", ":"))
    assert message.usage.output_tokens == math.ceil(len(arguments) / 4) + 5

    forced = claude.messages.create(
        model=MODEL,
        max_tokens=200,
        messages=user("weather?"),
        tools=tools,
        tool_choice={"type": "tool", "name": "lookup"},
    )
    assert forced.content[0].type == "tool_use" and forced.content[0].name == "lookup"
    assert len(forced.content[0].input["ids"]) >= 2
    assert all(isinstance(i, int) for i in forced.content[0].input["ids"])

    none = claude.messages.create(
        model=MODEL, max_tokens=200, messages=user("weather?"), tools=tools, tool_choice={"type": "none"}
    )
    assert none.content[0].type == "text" and none.stop_reason == "end_turn"

    answered = claude.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=tools,
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [block.model_dump(include={"type", "id", "name", "input"})]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}],
            },
        ],
    )
    assert answered.content[0].type == "text" and answered.stop_reason == "end_turn"


def test_anthropic_tool_call_stream(claude: anthropic.Anthropic, base_url: str) -> None:
    tools: Any = [WEATHER_TOOL]
    created = claude.messages.create(model=MODEL, max_tokens=200, messages=user("weather?"), tools=tools)
    with claude.messages.stream(
        model=MODEL, max_tokens=200, messages=user("weather?"), tools=tools
    ) as stream:
        final = stream.get_final_message()
    raw = HTTP.post(
        base_url + "/v1/messages",
        headers=anthropic_headers(),
        json={
            "model": MODEL,
            "max_tokens": 200,
            "stream": True,
            "messages": user("weather?"),
            "tools": tools,
        },
    )
    events = sse_events(raw.text)

    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == created.content[0].input
    start = next(data for name, data in events if name == "content_block_start")
    assert start["content_block"]["input"] == {} and start["content_block"]["name"] == "get_weather"
    fragments = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert len(fragments) > 1
    assert json.loads("".join(fragments)) == created.content[0].input


def test_openai_tool_call_and_stream(gpt: openai.OpenAI) -> None:
    tools: Any = [
        {"type": "function", "function": {"name": "lookup", "parameters": LOOKUP_TOOL["input_schema"]}},
        {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL["input_schema"]}},
    ]
    completion = gpt.chat.completions.create(
        model="gpt-5",
        messages=user("weather?"),
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "days", "units"}
    assert completion.usage is not None
    assert completion.usage.completion_tokens == math.ceil(len(call.function.arguments) / 4) + 5

    chunks = list(
        gpt.chat.completions.create(
            model="gpt-5",
            messages=user("weather?"),
            tools=tools,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=True,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    fragments = [
        c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls
    ]
    first, rest = fragments[0], fragments[1:]
    assert first.index == 0 and first.id and first.type == "function" and first.function
    assert first.function.name == "get_weather"
    assert rest and all(f.id is None and f.function and f.function.name is None for f in rest)
    streamed_arguments = "".join((f.function.arguments or "") for f in fragments if f.function)
    assert json.loads(streamed_arguments) == arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage is None  # no include_usage: no usage anywhere

    followed_up = gpt.chat.completions.create(
        model="gpt-5",
        tools=tools,
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert followed_up.choices[0].finish_reason == "stop"
    assert followed_up.choices[0].message.content


# ---- Structured output and refusal -----------------------------------------------------------------

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 3},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}},
        "address": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/address"}]},
    },
    "required": ["name", "age", "email", "tags", "address"],
    "additionalProperties": False,
    "$defs": {
        "tag": {"type": "string", "enum": ["a", "b"]},
        "address": {"type": "object", "properties": {"zip": {"type": "string"}}, "required": ["zip"]},
    },
}


def assert_person(value: Any) -> None:
    assert set(value) == {"name", "age", "email", "tags", "address"}
    assert isinstance(value["name"], str) and len(value["name"]) >= 3
    assert isinstance(value["age"], int) and 18 <= value["age"] <= 99
    assert "@" in value["email"]
    assert value["tags"] and all(t in ("a", "b") for t in value["tags"])
    assert isinstance(value["address"]["zip"], str)


def test_structured_output(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    schema_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
    }
    completion = gpt.chat.completions.create(
        model="gpt-5", messages=user("who?"), response_format=schema_format
    )
    assert_person(json.loads(completion.choices[0].message.content or ""))

    json_object = gpt.chat.completions.create(
        model="gpt-5", messages=user("who?"), response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(json_object.choices[0].message.content or "")["result"], str)

    message = claude.messages.create(
        model=MODEL,
        max_tokens=500,
        messages=user("who?"),
        output_config={"format": {"type": "json_schema", "schema": PERSON_SCHEMA}},
    )
    assert message.content[0].type == "text"
    assert_person(json.loads(message.content[0].text))
    with claude.messages.stream(
        model=MODEL,
        max_tokens=500,
        messages=user("who?"),
        output_config={"format": {"type": "json_schema", "schema": PERSON_SCHEMA}},
    ) as stream:
        streamed = stream.get_final_message()
    assert streamed.content[0].type == "text"
    assert json.loads(streamed.content[0].text) == json.loads(message.content[0].text)


def test_invalid_json_models(gpt: openai.OpenAI) -> None:
    headers = {"x-sim-invalid-json-models": "gpt-5-nano, other"}
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON_SCHEMA}}
    broken = gpt.chat.completions.create(
        model="gpt-5-nano", messages=user("who?"), response_format=response_format, extra_headers=headers
    )
    fine = gpt.chat.completions.create(
        model="gpt-5", messages=user("who?"), response_format=response_format, extra_headers=headers
    )

    with pytest.raises(json.JSONDecodeError):
        json.loads(broken.choices[0].message.content or "")
    assert_person(json.loads(fine.choices[0].message.content or ""))


def test_refusal(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    headers = {"x-sim-refuse": "true"}
    message = claude.messages.create(model=MODEL, max_tokens=100, messages=user("x"), extra_headers=headers)
    with claude.messages.stream(
        model=MODEL, max_tokens=100, messages=user("x"), extra_headers=headers
    ) as stream:
        streamed = stream.get_final_message()
    completion = gpt.chat.completions.create(model="gpt-5", messages=user("x"), extra_headers=headers)

    assert message.stop_reason == "refusal" and message.stop_details is not None
    assert message.stop_details.type == "refusal"
    assert streamed.stop_reason == "refusal"
    assert completion.choices[0].finish_reason == "content_filter"


# ---- OpenAI: text -----------------------------------------------------------------------------------


def test_openai_create_and_stream(gpt: openai.OpenAI) -> None:
    raw = gpt.chat.completions.with_raw_response.create(model="gpt-5", messages=user("hello"), max_tokens=100)
    completion = raw.parse()
    chunks = list(
        gpt.chat.completions.create(
            model="gpt-5",
            messages=user("hello"),
            max_tokens=100,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    capped = gpt.chat.completions.create(model="gpt-5", messages=user("hello"), max_completion_tokens=5)

    assert raw.headers["x-request-id"].startswith("req_")
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    text = completion.choices[0].message.content or ""
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == len(text.split()) == 40
    usage = completion.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0

    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-2].usage is None
    assert chunks[-1].choices == [] and chunks[-1].usage == completion.usage

    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None and capped.usage.completion_tokens == 5


def test_openai_stream_ends_with_done(base_url: str) -> None:
    response = HTTP.post(
        base_url + "/v1/chat/completions",
        headers={"authorization": "Bearer k", "x-sim-output-tokens": "2"},
        json={"model": "gpt-5", "stream": True, "messages": user("x")},
    )
    events = sse_events(response.text)
    assert all(name is None for name, _ in events)  # data-only SSE
    assert events[-1][1] == "[DONE]"
    chunks = [data for _, data in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [set(c["choices"][0]["delta"]) for c in chunks[1:3]] == [{"content"}, {"content"}]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert all("usage" not in c for c in chunks)  # only include_usage adds the usage field


# ---- Models, auth, validation ----------------------------------------------------------------------


def test_models_endpoint_has_both_shapes(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    claude_models = list(claude.models.list())
    gpt_models = list(gpt.models.list())
    one = claude.models.retrieve("claude-opus-5-5")

    assert claude_models and all(m.type == "model" for m in claude_models)
    assert {m.display_name for m in claude_models} == {"Tollway simulator"}
    assert gpt_models and {m.owned_by for m in gpt_models} == {"Tollway simulator"}
    assert one.id == "claude-opus-5-5"


def test_auth_accepts_both_anthropic_headers_and_records_them(base_url: str) -> None:
    body = {"model": MODEL, "max_tokens": 5, "messages": user("x")}
    with_key = HTTP.post(base_url + "/v1/messages", json=body, headers=anthropic_headers())
    with_bearer = HTTP.post(
        base_url + "/v1/messages",
        json=body,
        headers={"authorization": "Bearer tok-1", "anthropic-version": "2026-10-21"},
    )
    missing = HTTP.post(base_url + "/v1/messages", json=body, headers={"anthropic-version": "2026-10-21"})
    empty_bearer = HTTP.post(
        base_url + "/v1/messages",
        json=body,
        headers={"authorization": "Bearer", "anthropic-version": "2026-10-21"},
    )
    openai_missing = HTTP.post(base_url + "/v1/chat/completions", json={"model": "m", "messages": user("x")})
    openai_key_only = HTTP.post(
        base_url + "/v1/chat/completions",
        json={"model": "m", "messages": user("x")},
        headers={"x-api-key": "k"},
    )
    recorded = HTTP.get(base_url + "/_sim/requests").json()

    assert with_key.status_code == 200 and with_bearer.status_code == 200
    assert missing.status_code == 401 and empty_bearer.status_code == 401
    assert missing.json()["type"] == "error"
    assert missing.json()["error"]["type"] == "authentication_error"
    assert missing.json()["request_id"] == missing.headers["request-id"]
    assert openai_missing.status_code == 401 and openai_key_only.status_code == 401
    assert set(openai_missing.json()["error"]) == {"message", "type", "param", "code"}
    assert "x-request-id" in openai_missing.headers
    assert recorded[0]["headers"]["x-api-key"] == "k"
    assert recorded[1]["headers"]["authorization"] == "Bearer tok-1"
    assert recorded[1]["body"] == body and recorded[1]["path"] == "/v1/messages"


def test_sdk_credential_is_visible_in_records(claude: anthropic.Anthropic, base_url: str) -> None:
    claude.messages.create(model=MODEL, max_tokens=5, messages=user("x"))
    (record,) = HTTP.get(base_url + "/_sim/requests").json()
    assert record["headers"]["authorization"] == "Bearer x"  # SDK 2.x sends the key as a bearer token
    assert record["headers"]["anthropic-version"] == "2026-10-21"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"max_tokens": 5, "messages": user("x")}, "model"),
        ({"model": 5, "max_tokens": 5, "messages": user("x")}, "model"),
        ({"model": MODEL, "messages": user("x")}, "max_tokens"),
        ({"model": MODEL, "max_tokens": "5", "messages": user("x")}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 5}, "messages"),
        ({"model": MODEL, "max_tokens": 5, "messages": "hi"}, "messages"),
        ({"model": MODEL, "max_tokens": 5, "messages": []}, "messages"),
        ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]}, "role"),
        ({"model": MODEL, "max_tokens": 5, "messages": user("x"), "temperature": 0.5}, "temperature"),
        ({"model": MODEL, "max_tokens": 5, "messages": user("x"), "top_k": 5}, "top_k"),
        (
            {
                "model": MODEL,
                "max_tokens": 5,
                "messages": user("x"),
                "tools": [WEATHER_TOOL],
                "tool_choice": {"type": "tool", "name": "nope"},
            },
            "nope",
        ),
    ],
)
def test_anthropic_validation(base_url: str, body: dict[str, Any], fragment: str) -> None:
    response = HTTP.post(base_url + "/v1/messages", json=body, headers=anthropic_headers())
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]
    assert error["request_id"] == response.headers["request-id"]


def test_sampling_parameters_depend_on_api_version(base_url: str, claude: anthropic.Anthropic) -> None:
    body = {"model": MODEL, "max_tokens": 5, "messages": user("x"), "temperature": 0.2, "top_p": 0.9}
    old = HTTP.post(base_url + "/v1/messages", json=body, headers=anthropic_headers("2023-06-01"))
    assert old.status_code == 200

    with pytest.raises(anthropic.BadRequestError) as excinfo:
        claude.messages.create(model=MODEL, max_tokens=5, messages=user("x"), extra_body={"temperature": 1.0})
    assert excinfo.value.status_code == 400 and "temperature" in str(excinfo.value)

    missing_version = HTTP.post(base_url + "/v1/messages", json=body, headers={"x-api-key": "k"})
    unknown_version = HTTP.post(base_url + "/v1/messages", json=body, headers=anthropic_headers("1999-01-01"))
    assert missing_version.status_code == 400 and unknown_version.status_code == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-5"}, "messages"),
        ({"model": "gpt-5", "messages": []}, "messages"),
        ({"model": "gpt-5", "messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        ({"model": "gpt-5", "messages": user("x"), "max_tokens": 0}, "max_tokens"),
        (
            {"model": "gpt-5", "messages": user("x"), "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        ({"model": "gpt-5", "messages": user("x"), "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "gpt-5", "messages": user("x"), "tool_choice": "auto"}, "tool_choice"),
    ],
)
def test_openai_validation(base_url: str, body: dict[str, Any], param: str) -> None:
    response = HTTP.post(base_url + "/v1/chat/completions", json=body, headers={"authorization": "Bearer k"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_openai_requires_model(gpt: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        gpt.chat.completions.create(model="", messages=user("x"))
    assert excinfo.value.status_code == 400


def test_count_tokens_matches_message_usage(claude: anthropic.Anthropic) -> None:
    kwargs: Any = {
        "model": MODEL,
        "system": "You are a careful assistant.",
        "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "none"},
    }
    counted = claude.messages.count_tokens(**kwargs)
    usage = claude.messages.create(max_tokens=10, **kwargs).usage
    assert counted.input_tokens == usage.input_tokens > 0


# ---- Usage invariant --------------------------------------------------------------------------------

TEXTS = [
    "Hi",
    "plain ascii text " * 40,
    "naïve café déjà vu — ünïcödé " * 30,
    "日本語のテキストです。" * 50,
    "emoji 🎉🚀✨ and more " * 25,
    "x" * 4097,
]


@pytest.mark.parametrize("text", TEXTS)
def test_input_tokens_never_exceed_the_bytes_budget(claude: anthropic.Anthropic, text: str) -> None:
    system = "System: " + text[:100]
    messages: Any = [
        {"role": "user", "content": text},
        {"role": "assistant", "content": text[:50] or "ok"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/" + "p" * 500}},
            ],
        },
    ]
    usage = claude.messages.create(model=MODEL, max_tokens=5, system=system, messages=messages).usage
    counted = (
        usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
    )

    canonical = ChatRequest(
        model=MODEL,
        messages=[
            Message(role="user", content=[{"type": "text", "text": text}]),
            Message(role="assistant", content=[{"type": "text", "text": text[:50] or "ok"}]),
            Message(role="user", content=messages[2]["content"]),
        ],
        max_tokens=5,
        client_format="anthropic",
        system=[{"type": "text", "text": system}],
    )
    assert 0 < counted <= request_bytes(canonical)
    if len(text.encode()) >= 100:
        # a single long text piece alone stays within its own UTF-8 size
        alone = claude.messages.create(model=MODEL, max_tokens=5, messages=user(text)).usage.input_tokens
        assert alone <= len(text.encode())


def test_tiny_tools_stay_within_the_bytes_budget(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    # Degenerate definitions, where the JSON envelope outweighs what the model reads.
    names = [chr(ord("a") + i) for i in range(12)]
    anthropic_tools: Any = [{"name": n, "input_schema": {}} for n in names]
    openai_tools: Any = [{"type": "function", "function": {"name": n, "parameters": {}}} for n in names]
    canonical = ChatRequest(
        model=MODEL,
        messages=[Message(role="user", content=[{"type": "text", "text": "x"}])],
        max_tokens=5,
        client_format="anthropic",
        tools=[Tool(name=n, description=None, input_schema={}) for n in names],
    )
    claude_usage = claude.messages.create(
        model=MODEL, max_tokens=5, messages=user("x"), tools=anthropic_tools, tool_choice={"type": "none"}
    ).usage
    gpt_usage = gpt.chat.completions.create(
        model="gpt-5", messages=user("x"), tools=openai_tools, tool_choice="none"
    ).usage

    assert gpt_usage is not None
    assert claude_usage.input_tokens <= request_bytes(canonical)
    assert gpt_usage.prompt_tokens <= request_bytes(canonical)


# ---- Paths -----------------------------------------------------------------------------------------


def test_mounted_and_tagged_paths(claude: anthropic.Anthropic, gpt: openai.OpenAI) -> None:
    parent = Starlette(routes=[Mount("/simulator", app=create_simulator_app())])
    with serve(parent) as url:
        root = claude.with_options(base_url=url + "/simulator")
        dep_a = claude.with_options(base_url=url + "/simulator/dep-a")
        dep_b = gpt.with_options(base_url=url + "/simulator/dep-b/v1")
        nested = claude.with_options(base_url=url + "/simulator/region/dep-c")

        assert root.messages.create(model=MODEL, max_tokens=5, messages=user("x")).stop_reason
        assert dep_a.messages.create(model=MODEL, max_tokens=5, messages=user("x")).stop_reason
        assert dep_b.chat.completions.create(model="gpt-5", messages=user("x")).choices
        with nested.messages.stream(model=MODEL, max_tokens=5, messages=user("x")) as stream:
            assert stream.get_final_message().usage.output_tokens == 5
        beta = HTTP.post(
            url + "/simulator/dep-a/v1/messages?beta=true",
            json={"model": MODEL, "max_tokens": 5, "messages": user("x")},
            headers=anthropic_headers(),
        )
        assert beta.status_code == 200
        paths = [(r["path"], r["query"]) for r in HTTP.get(url + "/simulator/_sim/requests").json()]

    assert paths == [
        ("/v1/messages", ""),
        ("/dep-a/v1/messages", ""),
        ("/dep-b/v1/chat/completions", ""),
        ("/region/dep-c/v1/messages", ""),
        ("/dep-a/v1/messages", "beta=true"),
    ]


# ---- Cadence and config ----------------------------------------------------------------------------


def test_stream_cadence_from_headers(base_url: str) -> None:
    headers = {
        **anthropic_headers(),
        "x-sim-ttft-ms": "150",
        "x-sim-tokens-per-second": "50",
        "x-sim-output-tokens": "6",
    }
    body = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": user("x")}
    arrivals: list[float] = []
    started = time.monotonic()
    with HTTP.stream("POST", base_url + "/v1/messages", json=body, headers=headers) as response:
        for line in response.iter_lines():
            if line.startswith("event: content_block_delta"):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 6
    assert arrivals[0] >= 0.15
    assert arrivals[-1] - arrivals[0] >= 5 * 0.02 * 0.7  # 20 ms apart; the margin absorbs read jitter


def test_nonstreaming_latency_header(claude: anthropic.Anthropic) -> None:
    started = time.monotonic()
    claude.messages.create(
        model=MODEL, max_tokens=5, messages=user("x"), extra_headers={"x-sim-latency-ms": "200"}
    )
    assert time.monotonic() - started >= 0.2


def test_config_defaults_and_env() -> None:
    config = SimulatorConfig.from_env(
        {
            "TOLLWAY_SIM_TTFT_MS": "120",
            "TOLLWAY_SIM_TOKENS_PER_SECOND": "80",
            "TOLLWAY_SIM_OUTPUT_TOKENS": "12",
        }
    )
    assert (config.ttft_ms, config.tokens_per_second, config.default_output_tokens) == (120.0, 80.0, 12)
    assert SimulatorConfig.from_env({}).default_output_tokens == 40
    assert SimulatorConfig().min_cache_tokens_for("anything") == 1024
    assert SimulatorConfig(min_cache_tokens=lambda m: 7).min_cache_tokens_for("m") == 7


def test_configured_reply_length(claude: anthropic.Anthropic) -> None:
    with serve(create_simulator_app(SimulatorConfig(default_output_tokens=3))) as url:
        client = claude.with_options(base_url=url)
        message = client.messages.create(model=MODEL, max_tokens=50, messages=user("x"))
    assert message.usage.output_tokens == 3
