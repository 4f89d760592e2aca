"""The official ``openai`` SDK's Responses API against Tollway on a real socket, the simulator upstream.

Each behaviour runs against an Anthropic-backed and an OpenAI-backed model: the request is translated
once into the canonical form and once out to the upstream's format, and the answer back again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.e2e.helpers import WEATHER_SCHEMA, clear_sim, openai_client, upstream_requests
from tests.gateway import Gateway

MODELS = ["claude-haiku-5-5", "gpt-5-mini"]
UPSTREAM_PATH = {"claude-haiku-5-5": "/v1/messages", "gpt-5-mini": "/v1/chat/completions"}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": WEATHER_SCHEMA,
    "strict": True,
}
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 18}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture(autouse=True)
def _fresh_sim(gateway: Gateway) -> None:
    clear_sim(gateway)


def _upstream_bodies(gw: Gateway, model: str) -> list[dict[str, Any]]:
    return [r["body"] for r in upstream_requests(gw, UPSTREAM_PATH[model])]


@pytest.mark.parametrize("model", MODELS)
def test_create_text(gateway: Gateway, model: str) -> None:
    raw = openai_client(gateway).responses.with_raw_response.create(
        model=model, input="Hello there", instructions="Answer briefly", max_output_tokens=200
    )
    resp = raw.parse()
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-tollway-served-model"] == model
    assert resp.object == "response" and resp.id.startswith("resp_") and resp.status == "completed"
    assert resp.model == model and resp.instructions == "Answer briefly" and resp.max_output_tokens == 200
    assert resp.output_text and [o.type for o in resp.output] == ["message"]
    usage = resp.usage
    assert usage is not None and usage.input_tokens > 0
    assert usage.output_tokens == len(resp.output_text.split())
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    (body,) = _upstream_bodies(gateway, model)
    if model.startswith("claude"):
        assert body["system"] == [{"type": "text", "text": "Answer briefly"}]
        assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
        assert body["max_tokens"] == 200
    else:
        assert body["messages"] == [
            {"role": "system", "content": "Answer briefly"},
            {"role": "user", "content": "Hello there"},
        ]
        assert body["max_completion_tokens"] == 200


@pytest.mark.parametrize("model", MODELS)
def test_stream_text(gateway: Gateway, model: str) -> None:
    with openai_client(gateway).responses.stream(model=model, input="Stream please") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 2 and "".join(deltas) == final.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.status == "completed" and final.usage is not None
    assert final.usage.output_tokens == len(final.output_text.split()) and final.usage.input_tokens > 0


def test_raw_stream_framing(gateway: Gateway) -> None:
    """Every event has an `event:` line equal to its data's type; there is no `[DONE]` sentinel."""
    body = {"model": "claude-haiku-5-5", "input": "Hi", "stream": True}
    headers = {"authorization": f"Bearer {gateway.team_key}"}
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    blocks = [b for b in raw.split("\n\n") if b and not b.startswith(":")]
    assert "[DONE]" not in raw
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert event_line == f"event: {json.loads(data_line.removeprefix('data: '))['type']}"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", MODELS)
def test_function_tool_round_trip(gateway: Gateway, model: str, stream: bool) -> None:
    client = openai_client(gateway)
    question = {"role": "user", "content": "What's the weather in Paris?"}
    if stream:
        with client.responses.stream(model=model, input=[question], tools=[WEATHER_TOOL]) as s:  # type: ignore[list-item]
            events = list(s)
            first = s.get_final_response()
        assert any(e.type == "response.function_call_arguments.delta" for e in events)
    else:
        first = client.responses.create(model=model, input=[question], tools=[WEATHER_TOOL])  # type: ignore[list-item]
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and set(json.loads(call.arguments)) == {"city", "unit"}
    second = client.responses.create(
        model=model,
        input=[
            question,
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees, sunny"},
        ],  # type: ignore[list-item]
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
    )
    assert second.status == "completed" and second.output_text
    assert not [o for o in second.output if o.type == "function_call"]
    bodies = _upstream_bodies(gateway, model)
    assert len(bodies) == 2
    if model.startswith("claude"):
        tool = bodies[0]["tools"][0]
        assert tool["name"] == "get_weather" and tool["input_schema"] == WEATHER_SCHEMA
        assistant, result = bodies[1]["messages"][1:]
        assert assistant["content"] == [
            {"type": "tool_use", "id": call.call_id, "name": "get_weather", "input": json.loads(call.arguments)}
        ]
        assert result["content"] == [
            {"type": "tool_result", "tool_use_id": call.call_id, "content": "18 degrees, sunny"}
        ]
    else:
        assert bodies[0]["tools"][0]["function"]["parameters"] == WEATHER_SCHEMA
        assert bodies[1]["messages"][1]["tool_calls"][0]["id"] == call.call_id
        assert bodies[1]["messages"][2] == {
            "role": "tool",
            "tool_call_id": call.call_id,
            "content": "18 degrees, sunny",
        }


@pytest.mark.parametrize("model", MODELS)
def test_tool_choice_and_parallel_tool_calls(gateway: Gateway, model: str) -> None:
    resp = openai_client(gateway).responses.create(
        model=model,
        input="Anything",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
    )
    assert resp.output[-1].type == "function_call"
    assert resp.tool_choice.type == "function" and resp.parallel_tool_calls is False  # type: ignore[union-attr]
    (body,) = _upstream_bodies(gateway, model)
    if model.startswith("claude"):
        assert body["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    else:
        assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        assert body["parallel_tool_calls"] is False


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", MODELS)
def test_json_schema_output(gateway: Gateway, model: str, stream: bool) -> None:
    client = openai_client(gateway)
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON_SCHEMA, "strict": True}
    if stream:
        with client.responses.stream(model=model, input="A person", text={"format": fmt}) as s:  # type: ignore[typeddict-item]
            text = s.get_final_response().output_text
    else:
        text = client.responses.create(model=model, input="A person", text={"format": fmt}).output_text  # type: ignore[typeddict-item]
    value = json.loads(text)
    assert set(value) == {"name", "age"} and isinstance(value["name"], str) and value["age"] >= 18
    (body,) = _upstream_bodies(gateway, model)
    if model.startswith("claude"):
        assert body["output_config"]["format"] == {"type": "json_schema", "schema": PERSON_SCHEMA}
    else:
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
        }


@pytest.mark.parametrize("model", MODELS)
def test_parse_into_a_pydantic_model(gateway: Gateway, model: str) -> None:
    client = openai_client(gateway)
    parsed = client.responses.parse(model=model, input="A person", text_format=Person)
    assert isinstance(parsed.output_parsed, Person) and parsed.output_parsed.name
    with client.responses.stream(model=model, input="A person", text_format=Person) as s:
        streamed = s.get_final_response()
    assert isinstance(streamed.output_parsed, Person)


@pytest.mark.parametrize("model", MODELS)
def test_max_output_tokens_makes_an_incomplete_response(gateway: Gateway, model: str) -> None:
    resp = openai_client(gateway).responses.create(model=model, input="Write a long story", max_output_tokens=16)
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None and resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage is not None and resp.usage.output_tokens == 16


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"previous_response_id": "resp_123"}, "Tollway is stateless; send the full input"),
        (
            {"tools": [{"type": "web_search"}]},
            "built-in tools are not supported by Tollway (only type 'function'): web_search",
        ),
        ({"extra_body": {"frequency_penalty": 1}}, "frequency_penalty: unknown parameter"),
        ({"top_logprobs": 3}, "logprobs are not available"),
    ],
)
def test_refused_parameters_are_clear_400s(gateway: Gateway, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(gateway).responses.create(model="claude-haiku-5-5", input="Hi", **kwargs)
    assert info.value.status_code == 400 and needle in info.value.message
    assert info.value.type == "invalid_request_error"
    assert upstream_requests(gateway) == []


def test_unknown_model_and_unknown_path(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        openai_client(gateway).responses.create(model="no-such-model", input="Hi")
    assert info.value.code == "model_not_found"
    headers = {"authorization": f"Bearer {gateway.team_key}"}
    for path in ("/v1/responses/resp_123", "/v1/nonexistent", "/v2/responses"):
        r = httpx.post(gateway.url + path, json={}, headers=headers)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found", path


def _ledger_row(gateway: Gateway, request_id: str) -> dict[str, Any]:
    database = str(gateway.services.settings.database_url).split("///", 1)[1]
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(Path(database)) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM usage_events WHERE request_id = ?", (request_id,)).fetchone()
        if row is not None:
            return dict(row)
        assert time.monotonic() < deadline, "no ledger row for the request"
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [False, True])
def test_ledger_and_metrics_record_the_responses_format(gateway: Gateway, stream: bool) -> None:
    client = openai_client(gateway)
    if stream:
        with client.responses.with_streaming_response.create(model="gpt-5-mini", input="Count me", stream=True) as r:
            request_id = r.headers["x-request-id"]
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        final = json.loads(events[-1].removeprefix("data: "))["response"]
    else:
        raw = client.responses.with_raw_response.create(model="gpt-5-mini", input="Count me")
        request_id = raw.headers["x-request-id"]
        final = raw.parse().model_dump()
    row = _ledger_row(gateway, request_id)
    assert row["client_format"] == "responses" and row["status"] == 200
    assert row["served_model"] == "gpt-5-mini" and bool(row["streamed"]) is stream
    usage = final["usage"]
    assert row["input_tokens"] + row["cache_read_tokens"] == usage["input_tokens"]
    assert row["output_tokens"] == usage["output_tokens"] and float(row["cost_usd"]) > 0
    metrics = httpx.get(gateway.url + "/metrics").text
    assert any('api="responses"' in line and line.startswith("tollway_requests") for line in metrics.splitlines())


def test_upstream_failure_mid_stream_is_response_failed_then_error(gateway: Gateway) -> None:
    body = {"model": "claude-haiku-5-5", "input": "Hi", "stream": True}
    headers = {"authorization": f"Bearer {gateway.team_key}", "x-sim-stream-error-after": "3"}
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body, headers=headers, timeout=30) as r:
        raw = r.read().decode()
    events = [json.loads(b.split("\n")[1].removeprefix("data: ")) for b in raw.split("\n\n") if b.startswith("event:")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    failed, error = events[-2:]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "server_error"
    assert failed["response"]["output"][0]["content"][0]["text"]  # what was streamed before the failure
    assert error["type"] == "error" and error["message"] == "the upstream provider failed mid-stream"
    # The SDK surfaces it as an exception instead of a silently short answer.
    client = openai_client(gateway, default_headers={"x-sim-stream-error-after": "3"})
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        with client.responses.stream(model="claude-haiku-5-5", input="Hi") as stream:
            list(stream)


@pytest.mark.parametrize("model", MODELS)
def test_refusal_is_incomplete_with_content_filter(gateway: Gateway, model: str) -> None:
    client = openai_client(gateway, default_headers={"x-sim-refuse": "true"})
    resp = client.responses.create(model=model, input="Something bad")
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None and resp.incomplete_details.reason == "content_filter"
