"""Any client format reaches any model: OpenAI-format requests for a Claude model and Anthropic-format
requests for an OpenAI model, checked on both sides (what the client got, what the upstream got)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.e2e.helpers import (
    ANTHROPIC_WEATHER_TOOL,
    OPENAI_WEATHER_TOOL,
    PNG_1PX,
    WEATHER_SCHEMA,
    anthropic_client,
    clear_sim,
    only_upstream_request,
    openai_client,
    upstream_requests,
)
from tests.gateway import Gateway

CLAUDE = "claude-haiku-5-5"  # min_cache_tokens 2048 in the shipped catalog
GPT = "gpt-5-mini"
MESSAGES = "/v1/messages"
COMPLETIONS = "/v1/chat/completions"


@pytest.fixture(autouse=True)
def _fresh_sim(gateway: Gateway) -> None:
    clear_sim(gateway)


def long_prompt(tokens: int = 3000) -> str:
    """A prompt well over the caching minimums, unique per call (so no other test warmed it)."""
    words = " ".join(f"word{i % 97}" for i in range(tokens))
    return f"[{uuid.uuid4().hex}] Reference material follows. {words}"


def openai_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ---- OpenAI client → Claude model ----------------------------------------------------------------------


def test_openai_request_for_claude_exact_upstream_body(gateway: Gateway) -> None:
    completion = openai_client(gateway).chat.completions.create(
        model=CLAUDE,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": "Answer in English."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
                ],
            },
            {"role": "assistant", "content": "A pixel."},
            {"role": "user", "content": "And now?"},
        ],
        max_completion_tokens=200,
        stop=["END"],
        seed=7,
        user="end-user-3",
        temperature=0.4,
    )
    assert completion.object == "chat.completion" and completion.model == CLAUDE
    assert completion.choices[0].finish_reason == "stop"
    upstream = only_upstream_request(gateway, MESSAGES)
    assert upstream["headers"]["anthropic-version"] == "2023-06-01"
    assert upstream["body"] == {
        "model": CLAUDE,
        "max_tokens": 200,
        "system": [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Answer in English."},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX},
                    },
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "A pixel."}]},
            {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
        ],
        "stop_sequences": ["END"],
        "metadata": {"user_id": "end-user-3"},
        # temperature dropped (claude-haiku-5-5 has sampling: drop); seed has no Anthropic
        # equivalent and is not sent (logit_bias is refused: tests/e2e/test_parameters.py)
    }


def test_openai_request_for_claude_gets_a_default_max_tokens(gateway: Gateway) -> None:
    openai_client(gateway).chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "x"}])
    max_tokens = only_upstream_request(gateway, MESSAGES)["body"]["max_tokens"]
    assert isinstance(max_tokens, int) and max_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_openai_tool_round_trip_on_claude(gateway: Gateway, stream: bool) -> None:
    client = openai_client(gateway)
    question = {"role": "user", "content": "Weather in Oslo?"}
    if stream:
        chunks = list(
            client.chat.completions.create(
                model=CLAUDE, messages=[question], tools=[OPENAI_WEATHER_TOOL], stream=True, max_tokens=300
            )
        )
        calls: dict[int, dict[str, str]] = {}
        for chunk in chunks:
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = call.id or entry["id"]
                entry["name"] = (call.function.name if call.function else None) or entry["name"]
                entry["arguments"] += (call.function.arguments if call.function else None) or ""
        assert list(calls) == [0]
        call_id, name, arguments = calls[0]["id"], calls[0]["name"], calls[0]["arguments"]
        finish = chunks[-1].choices[0].finish_reason
    else:
        completion = client.chat.completions.create(
            model=CLAUDE, messages=[question], tools=[OPENAI_WEATHER_TOOL], max_tokens=300
        )
        tool_calls = completion.choices[0].message.tool_calls
        assert tool_calls is not None and len(tool_calls) == 1
        call_id = tool_calls[0].id
        name, arguments = tool_calls[0].function.name, tool_calls[0].function.arguments  # type: ignore[union-attr]
        finish = completion.choices[0].finish_reason
    assert finish == "tool_calls"
    assert name == "get_weather" and call_id.startswith("toolu_")
    parsed = json.loads(arguments)
    assert set(parsed) == set(WEATHER_SCHEMA["required"])
    first_body = upstream_requests(gateway, MESSAGES)[0]["body"]
    assert first_body["tools"] == [ANTHROPIC_WEATHER_TOOL]

    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        ],
    }
    followup = [
        question,
        assistant,
        {"role": "tool", "tool_call_id": call_id, "content": "-3 C"},
        {"role": "tool", "tool_call_id": call_id + "-b", "content": "(second result)"},
    ]
    clear_sim(gateway)
    second = client.chat.completions.create(
        model=CLAUDE, messages=followup, tools=[OPENAI_WEATHER_TOOL], max_tokens=300
    )
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    assert only_upstream_request(gateway, MESSAGES)["body"]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": call_id, "name": name, "input": parsed}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call_id, "content": "-3 C"},
                {"type": "tool_result", "tool_use_id": call_id + "-b", "content": "(second result)"},
            ],
        },
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_claude_stop_reasons_as_finish_reasons(gateway: Gateway, stream: bool) -> None:
    client = openai_client(gateway)
    cases = [
        ({"max_tokens": 300}, {}, "stop"),  # end_turn
        ({"max_tokens": 300, "stop": ["STOP"]}, {"x-sim-reply": "a b STOP c"}, "stop"),  # stop_sequence
        ({"max_tokens": 2}, {}, "length"),  # max_tokens
        ({"max_tokens": 300}, {"x-sim-refuse": "1"}, "content_filter"),  # refusal
    ]
    for kwargs, headers, expected in cases:
        request: dict[str, Any] = {"model": CLAUDE, "messages": [{"role": "user", "content": "x"}], **kwargs}
        if stream:
            chunks = list(client.chat.completions.create(stream=True, extra_headers=headers, **request))
            finish = chunks[-1].choices[0].finish_reason
        else:
            finish = client.chat.completions.create(extra_headers=headers, **request).choices[0].finish_reason
        assert finish == expected, (kwargs, headers)


def test_claude_prompt_cache_usage_as_openai_usage(gateway: Gateway) -> None:
    client = openai_client(gateway)
    messages: list[Any] = [
        {"role": "system", "content": long_prompt()},
        {"role": "user", "content": "Summarise."},
    ]
    first = client.chat.completions.create(model=CLAUDE, messages=messages, max_tokens=300)
    second = client.chat.completions.create(model=CLAUDE, messages=messages, max_tokens=300)
    u1, u2 = first.usage, second.usage
    assert u1 is not None and u2 is not None
    assert u1.prompt_tokens_details is not None and u2.prompt_tokens_details is not None
    # Tollway placed a breakpoint: the first call wrote the prefix, the second read it
    assert u1.prompt_tokens_details.cache_write_tokens > 2048  # type: ignore[operator]
    assert u1.prompt_tokens_details.cached_tokens == 0
    assert u2.prompt_tokens_details.cached_tokens == u1.prompt_tokens_details.cache_write_tokens
    # prompt_tokens counts everything read, cached or not, so it does not change between the calls
    assert u1.prompt_tokens == u2.prompt_tokens >= u2.prompt_tokens_details.cached_tokens  # type: ignore[operator]
    assert u1.total_tokens == u1.prompt_tokens + u1.completion_tokens
    system = upstream_requests(gateway, MESSAGES)[0]["body"]["system"]
    assert system[-1]["cache_control"]["type"] == "ephemeral"

    # streamed, with include_usage: the same numbers in the final usage chunk
    chunks = list(
        client.chat.completions.create(
            model=CLAUDE,
            messages=messages,
            max_tokens=300,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.prompt_tokens == u1.prompt_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == u2.prompt_tokens_details.cached_tokens
    assert usage.completion_tokens == len(openai_text(chunks).split())


def test_openai_stream_from_claude_matches_non_stream(gateway: Gateway) -> None:
    client = openai_client(gateway)
    request: dict[str, Any] = {
        "model": CLAUDE,
        "messages": [{"role": "user", "content": "Tell me"}],
        "max_tokens": 300,
    }
    chunks = list(client.chat.completions.create(stream=True, **request))
    whole = client.chat.completions.create(**request)
    assert openai_text(chunks) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.model == CLAUDE for c in chunks)
    assert all(c.usage is None for c in chunks)
    bodies = [r["body"] for r in upstream_requests(gateway, MESSAGES)]
    assert bodies[0]["stream"] is True and "stream" not in bodies[1]


# ---- Anthropic client → OpenAI model --------------------------------------------------------------------


def test_anthropic_request_for_gpt_exact_upstream_body(gateway: Gateway) -> None:
    message = anthropic_client(gateway).messages.create(
        model=GPT,
        max_tokens=150,
        system=[{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in English."}],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX},
                    },
                ],
            },
            {"role": "assistant", "content": "A pixel."},
            {"role": "user", "content": "Sure?"},
        ],
        stop_sequences=["END"],
        metadata={"user_id": "u-5"},
        extra_body={"temperature": 0.3, "thinking": {"type": "adaptive"}},
    )
    assert message.type == "message" and message.model == GPT and message.stop_reason == "end_turn"
    assert message.id.startswith("msg_")
    upstream = only_upstream_request(gateway, COMPLETIONS)
    assert "anthropic-version" not in upstream["headers"] and "x-api-key" not in upstream["headers"]
    assert upstream["body"] == {
        "model": GPT,
        "messages": [
            {"role": "system", "content": "You are terse.\n\nAnswer in English."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_1PX}"}},
                ],
            },
            {"role": "assistant", "content": "A pixel."},
            {"role": "user", "content": "Sure?"},
        ],
        "max_completion_tokens": 150,
        "stop": ["END"],
        "user": "u-5",
        # temperature dropped (gpt-5-mini has sampling: drop); thinking is not sent (docs/parameters.md)
    }


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_tool_round_trip_on_gpt(gateway: Gateway, stream: bool) -> None:
    client = anthropic_client(gateway)
    question = {"role": "user", "content": "Weather in Oslo?"}

    def ask(messages: list[Any]) -> tuple[Any, list[Any]]:
        kwargs: dict[str, Any] = {
            "model": GPT,
            "max_tokens": 300,
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
    block = first.content[-1]
    assert block.type == "tool_use" and block.name == "get_weather" and block.id.startswith("call_")
    assert set(block.input) == set(WEATHER_SCHEMA["required"])
    if stream:
        fragments = [
            e.delta.partial_json
            for e in events
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        ]
        assert len(fragments) > 1 and json.loads("".join(fragments)) == block.input
    first_body = upstream_requests(gateway, COMPLETIONS)[0]["body"]
    assert first_body["tools"] == [OPENAI_WEATHER_TOOL]

    tool_use = {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    result = {"type": "tool_result", "tool_use_id": block.id, "content": [{"type": "text", "text": "-3 C"}]}
    clear_sim(gateway)
    second, _ = ask(
        [question, {"role": "assistant", "content": [tool_use]}, {"role": "user", "content": [result]}]
    )
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    assert only_upstream_request(gateway, COMPLETIONS)["body"]["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": block.id,
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": json.dumps(block.input, separators=(",", ":")),
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": block.id, "content": "-3 C"},
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_gpt_finish_reasons_as_stop_reasons(gateway: Gateway, stream: bool) -> None:
    client = anthropic_client(gateway)
    cases = [
        (300, {}, "end_turn"),
        (2, {}, "max_tokens"),
        (300, {"x-sim-refuse": "1"}, "refusal"),
    ]
    for max_tokens, headers, expected in cases:
        kwargs: dict[str, Any] = {
            "model": GPT,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "x"}],
        }
        if stream:
            with client.messages.stream(extra_headers=headers, **kwargs) as s:
                message = s.get_final_message()
        else:
            message = client.messages.create(extra_headers=headers, **kwargs)
        assert message.stop_reason == expected, (max_tokens, headers)


@pytest.mark.parametrize("stream", [False, True])
def test_gpt_cached_usage_as_anthropic_usage(gateway: Gateway, stream: bool) -> None:
    client = anthropic_client(gateway)
    kwargs: dict[str, Any] = {
        "model": GPT,
        "max_tokens": 300,
        "system": long_prompt(),
        "messages": [{"role": "user", "content": "Summarise."}],
    }

    def usage() -> Any:
        if not stream:
            return client.messages.create(**kwargs).usage
        with client.messages.stream(**kwargs) as s:
            return s.get_final_message().usage

    first, second = usage(), usage()
    assert first.cache_read_input_tokens == 0 and first.input_tokens > 1024
    # OpenAI caches long prefixes by itself; its cached_tokens become Anthropic's cache reads, and
    # input_tokens excludes them (Anthropic's accounting)
    assert second.cache_read_input_tokens > 0
    assert second.input_tokens + second.cache_read_input_tokens == first.input_tokens
    assert second.output_tokens == first.output_tokens > 0


def test_anthropic_stream_from_gpt(gateway: Gateway) -> None:
    client = anthropic_client(gateway)
    kwargs: dict[str, Any] = {
        "model": GPT,
        "max_tokens": 300,
        "messages": [{"role": "user", "content": "Tell me"}],
    }
    with client.messages.stream(**kwargs) as s:
        events = list(s)
        final = s.get_final_message()
    whole = client.messages.create(**kwargs)
    assert final.content[0].text == whole.content[0].text  # type: ignore[union-attr]
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens > 0
    names = [e.type for e in events]
    assert names[0] == "message_start" and "content_block_start" in names and "message_delta" in names
    bodies = [r["body"] for r in upstream_requests(gateway, COMPLETIONS)]
    # the gateway asks the OpenAI upstream for usage, which the Anthropic client gets in message_delta
    assert bodies[0]["stream_options"] == {"include_usage": True}
