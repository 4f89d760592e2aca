"""Anthropic Messages wire ↔ canonical form: requests, responses, usage and events."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from app.domain import ChatResponse, StreamEvent, Usage
from app.errors import GatewayError
from app.wire import anthropic as wire
from app.wire.accumulate import StreamTracker
from app.wire.checks import MalformedReply

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
DOCUMENT = {
    "type": "document",
    "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
    "title": "spec.pdf",
    "citations": {"enabled": True},
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def full_body() -> dict[str, Any]:
    """A request using most of the Messages API, as a current client would send it."""
    return {
        "model": "claude-sonnet-5-5",
        "max_tokens": 512,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Look at these"}, IMAGE, DOCUMENT]},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3 C", "is_error": False}
                ],
            },
        ],
        "stop_sequences": ["\n\nHuman:"],
        "tools": [{**WEATHER_TOOL, "cache_control": {"type": "ephemeral"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "u-42"},
        "thinking": {"type": "adaptive"},
        "service_tier": "auto",
        "some_new_field": {"nested": [1, 2]},
        "output_config": {"effort": "low"},
    }


def parse(body: Any, version: str | None = "2026-10-21", beta: str | None = None) -> Any:
    return wire.parse_request(body, anthropic_version=version, anthropic_beta=beta)


# ---- parse_request ----------------------------------------------------------------------------------


def test_same_format_round_trip_is_lossless() -> None:
    body = full_body()
    req = parse(copy.deepcopy(body), beta="context-1m-2025-08-07")
    assert req.client_format == "anthropic"
    assert req.anthropic_version == "2026-10-21" and req.anthropic_beta == "context-1m-2025-08-07"
    rebuilt = wire.build_request(req, "claude-sonnet-5-5-upstream", stream=False)
    assert rebuilt == {**body, "model": "claude-sonnet-5-5-upstream"}


def test_stream_flag_is_set_by_the_adapter_not_the_client_body() -> None:
    req = parse({**full_body(), "stream": True})
    assert req.stream is True
    assert "stream" not in wire.build_request(req, "m", stream=False)
    assert wire.build_request(req, "m", stream=True)["stream"] is True


def test_system_string_becomes_one_text_block() -> None:
    req = parse({"model": "m", "max_tokens": 5, "system": "Be brief.", "messages": []})
    assert req.system == [{"type": "text", "text": "Be brief."}]
    assert wire.build_request(req, "m", stream=False)["system"] == [{"type": "text", "text": "Be brief."}]


def test_string_content_becomes_a_text_block() -> None:
    req = parse({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]})
    assert req.messages[0].role == "user"
    assert req.messages[0].content == [{"type": "text", "text": "Hi"}]


def test_sampling_parameters_are_parsed_and_forwarded() -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [], "temperature": 0.2, "top_p": 0.9, "top_k": 40}
    req = parse(body, version="2023-06-01")
    assert (req.temperature, req.top_p, req.top_k) == (0.2, 0.9, 40)
    built = wire.build_request(req, "m", stream=False)
    assert (built["temperature"], built["top_p"], built["top_k"]) == (0.2, 0.9, 40)


def test_structured_output_is_canonical_and_other_output_config_passes_through() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [],
        "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": schema}},
    }
    req = parse(body)
    assert req.response_format is not None and req.response_format.schema == schema
    assert wire.build_request(req, "m", stream=False)["output_config"] == body["output_config"]


def test_unknown_output_format_is_passed_through_not_dropped() -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [], "output_config": {"format": {"type": "future"}}}
    req = parse(body)
    assert req.response_format is None
    assert wire.build_request(req, "m", stream=False)["output_config"] == {"format": {"type": "future"}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": 5, "messages": []}, "model"),
        ({"model": 3, "max_tokens": 5, "messages": []}, "model"),
        ({"model": "m", "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": None, "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": "5", "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": True, "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": 5}, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": "hi"}, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]}, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 3}]}, "messages"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "messages",
        ),
        ({"model": "m", "max_tokens": 5, "messages": [], "system": 7}, "system"),
        ({"model": "m", "max_tokens": 5, "messages": [], "stop_sequences": "x"}, "stop_sequences"),
        ({"model": "m", "max_tokens": 5, "messages": [], "tools": [{"description": "x"}]}, "tools"),
        ({"model": "m", "max_tokens": 5, "messages": [], "tool_choice": "auto"}, "tool_choice"),
        ({"model": "m", "max_tokens": 5, "messages": [], "temperature": "hot"}, "temperature"),
        ({"model": "m", "max_tokens": 5, "messages": [], "stream": "yes"}, "stream"),
        ({"model": "m", "max_tokens": 5, "messages": [], "metadata": "x"}, "metadata"),
    ],
)
def test_schema_violations_are_400_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(GatewayError) as info:
        parse(body)
    assert info.value.kind == "invalid_request" and info.value.status == 400
    assert field in info.value.message
    assert info.value.param is not None and info.value.param.startswith(field)


def test_body_must_be_an_object() -> None:
    with pytest.raises(GatewayError) as info:
        parse([1, 2])
    assert info.value.status == 400


# ---- build_request from an OpenAI-format client -----------------------------------------------------


def test_openai_extras_never_reach_an_anthropic_upstream() -> None:
    from app.wire.openai import client as oai

    req = oai.parse_request(
        {
            "model": "claude-haiku-5-5",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 10,
            "logit_bias": {"1": 2},
            "reasoning_effort": "low",
            "seed": 3,
        }
    )
    body = wire.build_request(req, "claude-haiku-5-5", stream=False)
    assert body == {
        "model": "claude-haiku-5-5",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }


def test_metadata_keeps_only_user_id_for_anthropic() -> None:
    from app.wire.openai import client as oai

    req = oai.parse_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "Hi"}],
            "metadata": {"trace": "t1"},
            "user": "end-user-7",
        }
    )
    req.max_tokens = 5
    assert wire.build_request(req, "m", stream=False)["metadata"] == {"user_id": "end-user-7"}


# ---- usage --------------------------------------------------------------------------------------------


def test_parse_usage_with_cache_split() -> None:
    usage = wire.parse_usage(
        {
            "input_tokens": 12,
            "output_tokens": 30,
            "cache_creation_input_tokens": 700,
            "cache_read_input_tokens": 3000,
            "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 200},
        }
    )
    assert usage == Usage(
        input_tokens=12,
        output_tokens=30,
        cache_write_5m_tokens=500,
        cache_write_1h_tokens=200,
        cache_read_tokens=3000,
    )
    assert usage.prompt_tokens == 3712 and usage.total_tokens == 3742


def test_parse_usage_without_split_counts_writes_as_5m() -> None:
    usage = wire.parse_usage({"input_tokens": 1, "output_tokens": 2, "cache_creation_input_tokens": 40})
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (40, 0)
    assert wire.parse_usage(None) == Usage()


def test_usage_json_round_trip() -> None:
    usage = Usage(5, 6, 7, 8, 9)
    data = wire.usage_json(usage)
    assert data["cache_creation_input_tokens"] == 15
    assert data["cache_creation"] == {"ephemeral_5m_input_tokens": 7, "ephemeral_1h_input_tokens": 8}
    assert wire.parse_usage(data) == usage


def test_stream_usage_is_cumulative_and_replaces_only_present_fields() -> None:
    usage = wire.parse_usage(
        {
            "input_tokens": 10,
            "output_tokens": 1,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 0,
        }
    )
    wire.merge_stream_usage(usage, {"output_tokens": 5})
    wire.merge_stream_usage(usage, {"output_tokens": 9})  # running total, not an increment
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (10, 9, 100)
    wire.merge_stream_usage(
        usage, {"output_tokens": 12, "input_tokens": 11, "cache_creation_input_tokens": 50}
    )
    assert (usage.input_tokens, usage.output_tokens, usage.cache_write_tokens) == (11, 12, 50)


# ---- responses ------------------------------------------------------------------------------------------


def test_response_round_trip_keeps_unknown_fields_for_the_same_format() -> None:
    upstream = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-5-5",
        "content": [{"type": "text", "text": "Hi", "citations": None}],
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
        "stop_details": None,
        "container": {"id": "c1"},
        "usage": {
            "input_tokens": 3,
            "output_tokens": 2,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        },
    }
    resp = wire.parse_response(upstream)
    assert resp.stop_reason == "stop_sequence" and resp.stop_sequence == "END"
    assert orjson.loads(wire.encode_response(resp, same_format=True)) == upstream
    cross = orjson.loads(wire.encode_response(resp, same_format=False))
    assert "container" not in cross and "stop_details" not in cross


def test_response_json_of_a_translated_answer() -> None:
    resp = ChatResponse(
        id="chatcmpl-9",
        model="gpt-5-mini",
        content=[{"type": "text", "text": "ok"}],
        stop_reason=None,
        usage=Usage(1, 2),
    )
    body = wire.response_json(resp, same_format=False)
    assert body["id"] == "msg_chatcmpl-9"
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    assert body["usage"]["input_tokens"] == 1 and body["usage"]["output_tokens"] == 2


# ---- events ---------------------------------------------------------------------------------------------


def test_encode_event_forwards_raw_bytes_untouched() -> None:
    raw = b'event: ping\ndata: {"type": "ping"}\n\n'
    assert wire.encode_event(StreamEvent("ping", {"type": "ping"}, raw)) == raw


def test_encode_event_serialises_with_event_line_and_type() -> None:
    out = wire.encode_event(StreamEvent("message_stop", {"type": "message_stop"}))
    assert out == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def test_parse_event_takes_name_from_payload_when_event_line_missing() -> None:
    event = wire.parse_event(None, b'{"type":"ping"}', b"raw")
    assert (event.type, event.data, event.raw) == ("ping", {"type": "ping"}, b"raw")
    with pytest.raises(MalformedReply):
        wire.parse_event("x", b"{not json", b"")


def test_response_to_events_rebuilds_the_same_answer() -> None:
    resp = ChatResponse(
        id="msg_7",
        model="claude-haiku-5-5",
        content=[
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Calling a tool."},
            {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        stop_reason="tool_use",
        usage=Usage(input_tokens=10, output_tokens=20, cache_read_tokens=5),
    )
    events = wire.response_to_events(resp)
    names = [e.type for e in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert all(e.data["type"] == e.type for e in events)
    tracker = StreamTracker(keep_content=True)
    for event in events:
        tracker.see(event)
    rebuilt = tracker.response()
    assert rebuilt.content == resp.content
    assert rebuilt.stop_reason == "tool_use"
    assert rebuilt.usage == resp.usage
    assert tracker.finished


def test_openai_temperature_above_anthropics_range_is_clamped() -> None:
    from app.wire.openai import client as oai

    hot = oai.parse_request(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1.7}
    )
    hot.max_tokens = 5
    assert wire.build_request(hot, "m", stream=False)["temperature"] == 1.0
    mild = oai.parse_request(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0.7}
    )
    mild.max_tokens = 5
    assert wire.build_request(mild, "m", stream=False)["temperature"] == 0.7
