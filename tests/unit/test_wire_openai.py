"""OpenAI Chat Completions wire ↔ canonical form, and the translations to and from Anthropic."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.domain import ChatResponse, StreamEvent, Usage
from app.errors import GatewayError
from app.wire import anthropic as anthropic_wire
from app.wire.accumulate import StreamTracker
from app.wire.openai import client, provider

WEATHER_FN = {
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PNG_DATA_URL = "data:image/png;base64,iVBORw0KGgo="


def openai_conversation() -> dict[str, Any]:
    return {
        "model": "claude-sonnet-5-5",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Oslo and Rome? See"},
                    {"type": "image_url", "image_url": {"url": PNG_DATA_URL, "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "18 C"}]},
            {"role": "user", "content": "Thanks. Summarise."},
        ],
        "tools": [{"type": "function", "function": {**WEATHER_FN, "strict": True}}],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_completion_tokens": 300,
        "stop": ["END", "STOP"],
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 11,
        "user": "end-user-1",
        "response_format": {"type": "json_object"},
        "stream": True,
        "stream_options": {"include_usage": True},
    }


# ---- OpenAI request → canonical → Anthropic body ---------------------------------------------------


def test_openai_request_to_anthropic_body() -> None:
    req = client.parse_request(openai_conversation())
    assert req.client_format == "openai" and req.stream and req.include_usage and req.seed == 11
    body = anthropic_wire.build_request(req, "claude-sonnet-5-5", stream=True)
    assert body == {
        "model": "claude-sonnet-5-5",
        "max_tokens": 300,
        "system": [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Answer in English."},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Oslo and Rome? See"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    # consecutive tool messages merge into one user turn, results first
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "-3 C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "18 C"},
                    {"type": "text", "text": "Thanks. Summarise."},
                ],
            },
        ],
        "stop_sequences": ["END", "STOP"],
        "stream": True,
        "temperature": 0.5,
        "top_p": 0.9,
        "tools": [
            {
                **{k: v for k, v in WEATHER_FN.items() if k != "parameters"},
                "input_schema": WEATHER_FN["parameters"],
                "strict": True,
            }
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "end-user-1"},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
    }


def test_tool_choice_mapping() -> None:
    base = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": WEATHER_FN}],
    }
    cases = {
        "auto": {"type": "auto"},
        "none": {"type": "none"},
        "required": {"type": "any"},
    }
    for choice, canonical in cases.items():
        assert client.parse_request({**base, "tool_choice": choice}).tool_choice == canonical
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert client.parse_request({**base, "tool_choice": named}).tool_choice == {
        "type": "tool",
        "name": "get_weather",
    }
    assert client.parse_request(base).tool_choice is None


def test_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    req = client.parse_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "count", "schema": schema, "strict": True},
            },
        }
    )
    req.max_tokens = 5
    assert anthropic_wire.build_request(req, "m", stream=False)["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }
    assert provider.build_request(req, "gpt", stream=False)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "count", "schema": schema, "strict": True},
    }


def test_file_part_becomes_a_document() -> None:
    req = client.parse_request(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "file",
                            "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
                        }
                    ],
                }
            ],
        }
    )
    assert req.messages[0].content == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            "title": "a.pdf",
        }
    ]


def test_max_tokens_fields() -> None:
    msgs = [{"role": "user", "content": "x"}]
    assert client.parse_request({"model": "m", "messages": msgs, "max_tokens": 7}).max_tokens == 7
    assert client.parse_request({"model": "m", "messages": msgs, "max_completion_tokens": 9}).max_tokens == 9
    both = {"model": "m", "messages": msgs, "max_tokens": 7, "max_completion_tokens": 9}
    assert client.parse_request(both).max_tokens == 9
    assert (
        client.parse_request(
            {"model": "m", "messages": msgs, "max_completion_tokens": None, "max_tokens": 7}
        ).max_tokens
        == 7
    )
    assert client.parse_request({"model": "m", "messages": msgs}).max_tokens is None


def test_stop_as_string() -> None:
    req = client.parse_request({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": "END"})
    assert req.stop_sequences == ["END"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model": None}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ({"n": 2}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"stop": 5}, "stop"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        ({"temperature": "warm"}, "temperature"),
        ({"seed": 1.5}, "seed"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_schema_violations_are_400_naming_the_field(changes: dict[str, Any], field: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **changes}
    with pytest.raises(GatewayError) as info:
        client.parse_request(body)
    assert info.value.status == 400 and info.value.kind == "invalid_request"
    assert info.value.param == field


# ---- Anthropic request → canonical → OpenAI body ------------------------------------------------------


def test_anthropic_request_to_openai_body() -> None:
    req = anthropic_wire.parse_request(
        {
            "model": "gpt-5-mini",
            "max_tokens": 200,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Weather?"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Oslo"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "-3 C"}],
                        },
                        {"type": "text", "text": "And?"},
                    ],
                },
            ],
            "stop_sequences": ["END"],
            "temperature": 0.3,
            "top_k": 5,
            "tools": [
                {"name": "get_weather", "description": "Weather", "input_schema": WEATHER_FN["parameters"]}
            ],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            "metadata": {"user_id": "u1"},
            "thinking": {"type": "adaptive"},
        },
        anthropic_version="2023-06-01",
        anthropic_beta=None,
    )
    body = provider.build_request(req, "gpt-5-mini", stream=True)
    assert body == {
        "model": "gpt-5-mini",
        "messages": [
            {"role": "system", "content": "Be brief.\n\nBe kind."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "-3 C"},
            {"role": "user", "content": "And?"},
        ],
        "max_completion_tokens": 200,
        "stream": True,
        # the gateway always asks for usage (the ledger needs it), whatever the client asked
        "stream_options": {"include_usage": True},
        "stop": ["END"],
        "temperature": 0.3,
        "user": "u1",  # metadata.user_id
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather",
                    "parameters": WEATHER_FN["parameters"],
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
    }


def test_legacy_max_tokens_field_for_older_servers() -> None:
    req = client.parse_request(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 5}
    )
    assert provider.build_request(req, "m", stream=False, max_tokens_field="max_tokens")["max_tokens"] == 5


def test_openai_same_format_passes_unknown_fields_and_user() -> None:
    body = {
        "model": "gpt-5-mini",
        "messages": [{"role": "user", "content": "x"}],
        "reasoning_effort": "low",
        "logit_bias": {"42": 1},
        "metadata": {"trace": "t"},
        "user": "u9",
        "seed": 3,
    }
    out = provider.build_request(client.parse_request(body), "gpt-5-mini", stream=False)
    assert out["reasoning_effort"] == "low" and out["logit_bias"] == {"42": 1}
    assert out["metadata"] == {"trace": "t"} and out["user"] == "u9" and out["seed"] == 3


def test_parallel_tool_calls_without_tools_sends_no_tool_choice() -> None:
    # OpenAI rejects tool_choice when no tools are given.
    req = client.parse_request(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "parallel_tool_calls": False}
    )
    out = provider.build_request(req, "m", stream=False)
    assert "tool_choice" not in out and "parallel_tool_calls" not in out


# ---- usage ------------------------------------------------------------------------------------------------


def test_usage_anthropic_to_openai() -> None:
    usage = Usage(
        input_tokens=12,
        output_tokens=30,
        cache_write_5m_tokens=500,
        cache_write_1h_tokens=200,
        cache_read_tokens=3000,
    )
    assert client.usage_json(usage) == {
        "prompt_tokens": 3712,
        "completion_tokens": 30,
        "total_tokens": 3742,
        "prompt_tokens_details": {"cached_tokens": 3000, "cache_write_tokens": 700},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_usage_openai_to_anthropic() -> None:
    usage = provider.parse_usage(
        {
            "prompt_tokens": 2000,
            "completion_tokens": 40,
            "total_tokens": 2040,
            "prompt_tokens_details": {"cached_tokens": 1536, "cache_write_tokens": 100},
        }
    )
    assert usage == Usage(
        input_tokens=364, output_tokens=40, cache_write_5m_tokens=100, cache_read_tokens=1536
    )
    data = anthropic_wire.usage_json(usage)
    assert data["input_tokens"] == 364 and data["cache_read_input_tokens"] == 1536
    assert data["cache_creation_input_tokens"] == 100
    # and back: the prompt total survives the round trip
    assert client.usage_json(usage)["prompt_tokens"] == 2000


# ---- responses ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
def test_stop_reason_to_finish_reason(stop: str, finish: str) -> None:
    resp = ChatResponse(id="msg_1", model="m", content=[], stop_reason=stop, usage=Usage())
    assert client.response_json(resp)["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_finish_reason_to_stop_reason(finish: str, stop: str) -> None:
    data = {
        "id": "chatcmpl-1",
        "model": "m",
        "choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    assert provider.parse_response(data).stop_reason == stop


def test_anthropic_answer_as_openai_completion() -> None:
    resp = ChatResponse(
        id="msg_01",
        model="claude-haiku-5-5",
        content=[
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        stop_reason="tool_use",
        usage=Usage(input_tokens=10, output_tokens=5, cache_read_tokens=90),
        created=1_700_000_000,
    )
    assert client.response_json(resp) == {
        "id": "chatcmpl-msg_01",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "claude-haiku-5-5",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
                "logprobs": None,
            }
        ],
        "usage": client.usage_json(resp.usage),
    }


def test_openai_completion_as_canonical() -> None:
    resp = provider.parse_response(
        {
            "id": "chatcmpl-1",
            "created": 123,
            "model": "gpt-5-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"a": 1}'},
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
        }
    )
    assert resp.content == [{"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}]
    assert resp.stop_reason == "tool_use" and resp.usage == Usage(input_tokens=10, output_tokens=3)
    assert resp.created == 123


# ---- ChunkEncoder: canonical events → OpenAI chunks -------------------------------------------------------


def _decode_chunks(data: bytes) -> list[Any]:
    out: list[Any] = []
    for block in data.split(b"\n\n"):
        if not block:
            continue
        if block.startswith(b":"):
            out.append("comment")
            continue
        assert block.startswith(b"data: "), block
        payload = block[6:]
        out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


def anthropic_tool_stream() -> list[StreamEvent]:
    usage = {
        "input_tokens": 12,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 3000,
        "output_tokens": 1,
    }
    events = [
        (
            "message_start",
            {"type": "message_start", "message": {"id": "msg_01", "model": "claude-x", "usage": usage}},
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": 'ris"}'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 31},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return [StreamEvent(name, data) for name, data in events]


@pytest.mark.parametrize("include_usage", [True, False])
def test_chunk_encoder_tool_stream(include_usage: bool) -> None:
    encoder = client.ChunkEncoder(include_usage=include_usage, model="claude-haiku-5-5")
    chunks = _decode_chunks(b"".join(encoder.encode(e) for e in anthropic_tool_stream()))
    assert chunks[-1] == "[DONE]"
    assert "comment" in chunks  # ping → SSE comment, which the openai SDK ignores
    data = [c for c in chunks if isinstance(c, dict)]
    assert {c["id"] for c in data} == {"chatcmpl-msg_01"}
    assert {c["model"] for c in data} == {"claude-haiku-5-5"}
    assert all(c["object"] == "chat.completion.chunk" for c in data)
    with_choices = [c for c in data if c["choices"]]
    deltas = [c["choices"][0]["delta"] for c in with_choices]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"content": "Hi"}
    assert deltas[2] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "toolu_01",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    args = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[3:5])
    assert orjson.loads(args) == {"city": "Paris"}
    assert deltas[-1] == {} and with_choices[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["choices"][0]["finish_reason"] is None for c in with_choices[:-1])
    if include_usage:
        usage_chunk = data[-1]
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"]["prompt_tokens"] == 3012
        assert usage_chunk["usage"]["completion_tokens"] == 31
        assert usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"] == 3000
        assert all(c["usage"] is None for c in with_choices)
    else:
        assert all("usage" not in c for c in data)


def test_chunk_encoder_second_tool_call_gets_next_index() -> None:
    encoder = client.ChunkEncoder(include_usage=False, model="m")
    events = [
        StreamEvent("message_start", {"type": "message_start", "message": {"id": "msg_1"}}),
        StreamEvent(
            "content_block_start", {"index": 0, "content_block": {"type": "tool_use", "id": "a", "name": "f"}}
        ),
        StreamEvent(
            "content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "b", "name": "g"}}
        ),
        StreamEvent(
            "content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}}
        ),
    ]
    chunks = _decode_chunks(b"".join(encoder.encode(e) for e in events))
    assert chunks[2]["choices"][0]["delta"]["tool_calls"][0]["index"] == 1
    assert chunks[3]["choices"][0]["delta"]["tool_calls"][0] == {"index": 1, "function": {"arguments": "{}"}}


# ---- ChunkDecoder: OpenAI chunks → canonical events ----------------------------------------------------


def openai_chunks() -> list[dict[str, Any]]:
    base = {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-5-mini",
        "usage": None,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Checking"}),
        chunk({"content": " now."}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "f", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "g", "arguments": "{}"},
                    }
                ]
            }
        ),
        chunk({}, "tool_calls"),
        {
            **base,
            "choices": [],
            "usage": {
                "prompt_tokens": 50,
                "completion_tokens": 20,
                "total_tokens": 70,
                "prompt_tokens_details": {"cached_tokens": 32},
            },
        },
    ]


def decode_all(chunks: list[dict[str, Any]]) -> list[StreamEvent]:
    decoder = provider.ChunkDecoder("gpt-5-mini")
    events: list[StreamEvent] = []
    for c in chunks:
        events += decoder.feed(c)
    return events + decoder.finish_events()


def test_chunk_decoder_follows_anthropic_grammar() -> None:
    events = decode_all(openai_chunks())
    names = [e.type for e in events]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    # every delta points at an open block, every event repeats its name in `type`
    open_blocks: set[int] = set()
    for event in events:
        assert event.data["type"] == event.type
        if event.type == "content_block_start":
            open_blocks.add(event.data["index"])
        elif event.type == "content_block_delta":
            assert event.data["index"] in open_blocks
        elif event.type == "content_block_stop":
            open_blocks.remove(event.data["index"])
    assert not open_blocks
    final = events[-2].data
    assert final["delta"]["stop_reason"] == "tool_use"
    assert final["usage"]["input_tokens"] == 18 and final["usage"]["cache_read_input_tokens"] == 32
    assert final["usage"]["output_tokens"] == 20


def test_chunk_decoder_output_accumulates_to_the_answer() -> None:
    tracker = StreamTracker(keep_content=True)
    for event in decode_all(openai_chunks()):
        tracker.see(event)
    answer = tracker.response()
    assert answer.content == [
        {"type": "text", "text": "Checking now."},
        {"type": "tool_use", "id": "call_a", "name": "f", "input": {"x": 1}},
        {"type": "tool_use", "id": "call_b", "name": "g", "input": {}},
    ]
    assert answer.usage == Usage(input_tokens=18, output_tokens=20, cache_read_tokens=32)
    assert tracker.finished


def test_decoder_then_encoder_rebuilds_the_openai_stream() -> None:
    encoder = client.ChunkEncoder(include_usage=True, model="gpt-5-mini")
    out = _decode_chunks(b"".join(encoder.encode(e) for e in decode_all(openai_chunks())))
    data = [c for c in out if isinstance(c, dict)]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in data if c["choices"])
    assert text == "Checking now."
    calls: dict[int, dict[str, str]] = {}
    for c in data:
        for call in (c["choices"][0]["delta"].get("tool_calls") or []) if c["choices"] else []:
            entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
            entry["id"] = call.get("id") or entry["id"]
            entry["name"] = (call.get("function") or {}).get("name") or entry["name"]
            entry["arguments"] += (call.get("function") or {}).get("arguments") or ""
    assert calls == {
        0: {"id": "call_a", "name": "f", "arguments": '{"x": 1}'},
        1: {"id": "call_b", "name": "g", "arguments": "{}"},
    }
    assert (
        data[-1]["usage"]["prompt_tokens"] == 50
        and data[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 32
    )
    assert out[-1] == "[DONE]"


def test_chunk_decoder_on_an_empty_stream_still_starts_and_stops() -> None:
    decoder = provider.ChunkDecoder("m")
    names = [e.type for e in decoder.finish_events()]
    assert names == ["message_start", "message_delta", "message_stop"]


def test_empty_system_and_assistant_turns_send_no_empty_text_blocks() -> None:
    req = client.parse_request(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": ""},
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": "b"},
            ],
            "max_tokens": 5,
        }
    )
    body = anthropic_wire.build_request(req, "m", stream=False)
    assert "system" not in body
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
