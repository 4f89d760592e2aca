"""The Responses API codec: request parsing (every input shape, every refusal) and the complete ``Response``.

Bodies are validated against the openai SDK's own pydantic types, the authority on the wire format.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.responses import Response

from app.domain import ChatRequest, ChatResponse, ResponseFormat, Tool, Usage
from app.errors import GatewayError
from app.wire.codec import CODECS, codec_for
from app.wire.errors import encode_error, sse_error_event
from app.wire.responses import ResponsesCodec, parse_request, response_json

PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


def _parse(**fields: Any) -> ChatRequest:
    return parse_request({"model": "gpt-5-mini", "input": "hi", **fields})


def _refused(body: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        parse_request(body)
    assert info.value.kind == "invalid_request" and info.value.status == 400
    return info.value


# ---- parsing: input shapes -----------------------------------------------------------------------------


def test_codec_is_registered() -> None:
    codec = codec_for("responses")
    assert isinstance(codec, ResponsesCodec) and CODECS["responses"] is codec
    assert codec.name == "responses" and codec.native_provider is None
    req = codec.parse_request({"model": "m", "input": "x"}, {})
    assert req.client_format == "responses"


def test_string_input_and_instructions() -> None:
    req = _parse(instructions="Be terse", max_output_tokens=64, temperature=0.2, top_p=0.9, stream=True)
    assert req.system == [{"type": "text", "text": "Be terse"}]
    assert [(m.role, m.content) for m in req.messages] == [("user", [{"type": "text", "text": "hi"}])]
    assert (req.max_tokens, req.temperature, req.top_p, req.stream) == (64, 0.2, 0.9, True)
    assert req.tools == [] and req.tool_choice is None and req.response_format is None


def test_message_items_with_text_image_and_file_parts() -> None:
    req = parse_request(
        {
            "model": "m",
            "input": [
                {"role": "developer", "content": "Rules"},
                {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "More rules"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Look"},
                        {"type": "input_image", "image_url": PNG, "detail": "auto"},
                        {"type": "input_image", "image_url": "https://example.test/a.png", "detail": "low"},
                        {"type": "input_image", "file_id": "file_1", "detail": "high"},
                        {"type": "input_file", "file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
                        {"type": "input_file", "file_url": "https://example.test/b.pdf"},
                        {"type": "input_file", "file_id": "file_2"},
                    ],
                },
            ],
        }
    )
    assert req.system == [{"type": "text", "text": "Rules"}, {"type": "text", "text": "More rules"}]
    (user,) = req.messages
    assert user.role == "user"
    assert user.content == [
        {"type": "text", "text": "Look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.test/a.png"}},
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            "title": "a.pdf",
        },
        {"type": "document", "source": {"type": "url", "url": "https://example.test/b.pdf"}},
        {"type": "document", "source": {"type": "file", "file_id": "file_2"}},
    ]


def test_tool_loop_items_become_tool_use_and_tool_result() -> None:
    req = parse_request(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_1",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
                },
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
                {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": ""},
                {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "noon"}, {"type": "input_image", "image_url": PNG}],
                },
                {"role": "user", "content": "Thanks"},
            ],
        }
    )
    assert [m.role for m in req.messages] == ["user", "assistant", "user"]
    assert req.messages[1].content == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
    ]
    results = req.messages[2].content
    assert results[0] == {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"}
    assert results[1]["tool_use_id"] == "call_2" and results[1]["content"][0] == {"type": "text", "text": "noon"}
    assert results[1]["content"][1]["type"] == "image"
    assert results[2] == {"type": "text", "text": "Thanks"}


def test_empty_text_parts_are_dropped_not_sent_as_empty_blocks() -> None:
    req = parse_request(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "output_text", "text": ""}]},
                {"role": "user", "content": "again"},
            ],
        }
    )
    # The empty assistant turn says nothing: the two user turns merge instead of alternating around it.
    assert [(m.role, [b["text"] for b in m.content]) for m in req.messages] == [("user", ["hi", "again"])]


def test_function_tools_tool_choice_and_parallel_flag() -> None:
    req = _parse(tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False)
    assert req.tools == [
        Tool(
            name="get_weather",
            description="Weather for a city",
            input_schema=WEATHER["parameters"],
            extra={"strict": True},
        )
    ]
    assert req.tool_choice == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    assert _parse(tools=[WEATHER], tool_choice="required").tool_choice == {"type": "any"}
    assert _parse(tools=[WEATHER], tool_choice="none").tool_choice == {"type": "none"}
    assert _parse(tools=[WEATHER], tool_choice="auto").tool_choice == {"type": "auto"}
    assert _parse(tools=[WEATHER], parallel_tool_calls=False).tool_choice == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert _parse(parallel_tool_calls=False).tool_choice is None  # no tools: nothing to parallelise


def test_text_format_becomes_the_canonical_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    assert _parse(text={"format": fmt}).response_format == ResponseFormat("json_schema", schema, "thing", True)
    assert _parse(text={"format": {"type": "json_object"}}).response_format == ResponseFormat("json_object")
    assert _parse(text={"format": {"type": "text"}, "verbosity": "low"}).response_format is None


def test_user_metadata_and_ignored_fields() -> None:
    req = _parse(
        metadata={"job": "42"},
        user="end-user-7",
        store=True,
        reasoning={"effort": "low", "summary": "auto"},
        include=["reasoning.encrypted_content"],
        truncation="disabled",
        service_tier="auto",
        prompt_cache_key="k",
        stream_options={"include_obfuscation": False},
        max_tool_calls=3,
        previous_response_id=None,
        top_logprobs=0,
        background=False,
    )
    assert req.metadata == {"job": "42", "user_id": "end-user-7"}
    assert _parse(safety_identifier="hash-1").metadata == {"user_id": "hash-1"}


# ---- parsing: every refusal ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "needle", "param"),
    [
        ({"previous_response_id": "resp_1"}, "Tollway is stateless; send the full input", "previous_response_id"),
        ({"conversation": "conv_1"}, "Tollway is stateless", "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt templates", "prompt"),
        ({"background": True}, "background responses are not supported", "background"),
        ({"top_logprobs": 5}, "logprobs are not available", "top_logprobs"),
        ({"include": ["message.output_text.logprobs"]}, "logprobs are not available", "include"),
        ({"include": "x"}, "include: must be an array", "include"),
        ({"frequency_penalty": 1}, "frequency_penalty: unknown parameter", "frequency_penalty"),
        ({"tools": [{"type": "web_search"}, {"type": "file_search"}, WEATHER]}, "file_search, web_search", "tools"),
        ({"tools": [{"type": "function", "parameters": {}}]}, "tools[0].name: required", "tools"),
        ({"tools": [{"type": "function", "name": "f", "parameters": []}]}, "JSON Schema object", "tools"),
        ({"tools": {"type": "function"}}, "tools: must be an array", "tools"),
        ({"tools": ["x"]}, "each tool must be an object", "tools"),
        ({"tool_choice": "sometimes"}, "tool_choice: must be", "tool_choice"),
        ({"tool_choice": {"type": "web_search_preview"}}, "'web_search_preview' is not supported", None),
        ({"tool_choice": "auto", "parallel_tool_calls": "no"}, "parallel_tool_calls: must be a boolean", None),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "needs a 'name'", "text"),
        ({"text": {"format": {"type": "yaml"}}}, "'yaml' is not supported", "text"),
        ({"text": "json"}, "text: must be an object", "text"),
        ({"text": {"format": "json"}}, "text.format: must be an object", "text"),
        ({"max_output_tokens": 0}, "max_output_tokens: must be a positive integer", "max_output_tokens"),
        ({"max_output_tokens": True}, "max_output_tokens: must be a positive integer", "max_output_tokens"),
        ({"temperature": "hot"}, "temperature: must be a number", "temperature"),
        ({"top_p": False}, "top_p: must be a number", "top_p"),
        ({"stream": "yes"}, "stream: must be a boolean", "stream"),
        ({"metadata": ["a"]}, "metadata: must be an object", "metadata"),
        ({"user": 7}, "user: must be a string", "user"),
        ({"reasoning": "high"}, "reasoning: must be an object", "reasoning"),
        ({"reasoning": {"effort": "huge"}}, "reasoning.effort: must be one of", "reasoning"),
        ({"instructions": ["x"]}, "instructions: must be a string", "instructions"),
        ({"model": ""}, "you must provide a model parameter", "model"),
        ({"input": ""}, "input: must not be empty", "input"),
        ({"input": []}, "input: must be a non-empty string", "input"),
        ({"input": {"role": "user"}}, "input: must be a non-empty string", "input"),
        ({"input": ["hi"]}, "input[0]: must be an object", "input"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "item references are not supported", "input"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "'web_search_call' items are not supported", "input"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role: must be", "input"),
        ({"input": [{"role": "user", "content": 5}]}, "must be a string or an array of content parts", "input"),
        ({"input": [{"role": "user", "content": ["x"]}]}, "content parts must be objects", "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "'input_audio' is not supported", None),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, ".text: must be a string", "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "needs image_url or file_id", "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "needs file_data, file_url", "input"),
        (
            {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": PNG}]}]},
            "system messages may hold text only",
            "input",
        ),
        ({"input": [{"role": "system", "content": "only rules"}]}, "at least one user, assistant or tool", "input"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "needs call_id and name", "input"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]}, "not valid JSON", None),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]}, "JSON object", None),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "needs call_id", "input"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "output: must be", "input"),
    ],
)
def test_refusals_are_clear_400s(fields: dict[str, Any], needle: str, param: str | None) -> None:
    err = _refused({"model": "m", "input": "hi", **fields})
    assert needle in err.message
    if param is not None:
        assert err.param == param


def test_body_must_be_an_object() -> None:
    assert "JSON object" in _refused([1, 2]).message  # type: ignore[arg-type]


# ---- encoding: the complete Response ---------------------------------------------------------------------


def _answer(content: list[dict[str, Any]], stop: str = "end_turn", **usage: int) -> ChatResponse:
    return ChatResponse(
        id="msg_abc",
        model="claude-haiku-5-5",
        content=content,
        stop_reason=stop,
        usage=Usage(**{"input_tokens": 10, "output_tokens": 5, **usage}),
        created=1_700_000_000,
    )


def _encode(resp: ChatResponse, req: ChatRequest) -> Response:
    body = ResponsesCodec().encode_response(resp, req, same_format=False)
    return Response.model_validate(orjson.loads(body))


def test_text_answer_is_a_valid_sdk_response() -> None:
    req = _parse(instructions="Be terse", metadata={"job": "1"}, user="u1", max_output_tokens=99, temperature=0.5)
    resp = _encode(
        _answer([{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}], cache_read_tokens=4), req
    )
    assert resp.id == "resp_abc" and resp.object == "response" and resp.status == "completed"
    assert resp.created_at == 1_700_000_000 and resp.model == "claude-haiku-5-5"
    assert resp.output_text == "Hello world" and resp.incomplete_details is None and resp.error is None
    (message,) = resp.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id.startswith("msg_") and [c.text for c in message.content] == ["Hello ", "world"]  # type: ignore[union-attr]
    usage = resp.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (14, 5, 19)
    assert usage.input_tokens_details.cached_tokens == 4 and usage.output_tokens_details.reasoning_tokens == 0
    assert resp.instructions == "Be terse" and resp.metadata == {"job": "1"} and resp.user == "u1"
    assert resp.max_output_tokens == 99 and resp.temperature == 0.5 and resp.tool_choice == "auto"
    assert resp.parallel_tool_calls is True and resp.tools == []
    assert resp.text is not None and resp.text.format is not None and resp.text.format.type == "text"


def test_tool_calls_become_function_call_items() -> None:
    req = _parse(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    resp = _encode(
        _answer(
            [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
                {"type": "thinking", "thinking": "hidden", "signature": "s"},
            ],
            stop="tool_use",
        ),
        req,
    )
    assert [o.type for o in resp.output] == ["message", "function_call", "function_call"]
    call = resp.output[1]
    assert call.type == "function_call" and call.call_id == "toolu_1" and call.name == "get_weather"
    assert orjson.loads(call.arguments) == {"city": "Paris"} and call.id and call.id.startswith("fc_")
    assert resp.output[2].arguments == "{}"  # type: ignore[union-attr]
    assert len({o.id for o in resp.output}) == 3
    assert resp.status == "completed" and resp.tool_choice == "required" and resp.parallel_tool_calls is False
    (tool,) = resp.tools
    assert tool.type == "function" and tool.name == "get_weather" and tool.strict is True


def test_json_schema_output_echoes_the_format() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    req = _parse(text={"format": {"type": "json_schema", "name": "num", "schema": schema, "strict": True}})
    resp = _encode(_answer([{"type": "text", "text": '{"n": 3}'}]), req)
    assert orjson.loads(resp.output_text) == {"n": 3}
    fmt = resp.text.format if resp.text else None
    assert fmt is not None and fmt.type == "json_schema" and fmt.name == "num" and fmt.schema_ == schema  # type: ignore[union-attr]


@pytest.mark.parametrize(("stop", "reason"), [("max_tokens", "max_output_tokens"), ("refusal", "content_filter")])
def test_cut_answers_are_incomplete_with_a_reason(stop: str, reason: str) -> None:
    resp = _encode(_answer([{"type": "text", "text": "Once upon"}], stop=stop), _parse())
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None and resp.incomplete_details.reason == reason
    assert resp.output[0].status == "incomplete"  # type: ignore[union-attr]


def test_ids_from_openai_upstreams_keep_one_prefix() -> None:
    resp = ChatResponse(id="chatcmpl-xyz", model="gpt-5-mini", content=[], stop_reason="end_turn", usage=Usage())
    assert response_json(resp, _parse())["id"] == "resp_xyz"


# ---- errors --------------------------------------------------------------------------------------------


def test_error_body_is_openais_envelope() -> None:
    codec = ResponsesCodec()
    body = orjson.loads(codec.error_body(GatewayError("invalid_request", "bad", param="input"), "req_1"))
    assert body == {"error": {"message": "bad", "type": "invalid_request_error", "param": "input", "code": None}}
    assert orjson.loads(encode_error(GatewayError("rate_limit", "slow down"), "responses"))["error"]["code"] == (
        "rate_limit_exceeded"
    )


def test_stream_error_without_an_encoder_is_a_first_error_event() -> None:
    raw = ResponsesCodec().stream_error(GatewayError("api_error", "upstream broke"))
    assert raw == sse_error_event(GatewayError("api_error", "upstream broke"), "responses")
    head, data = raw.decode().rstrip("\n").split("\n")
    assert head == "event: error"
    event = orjson.loads(data[len("data: ") :])
    assert event["type"] == "error" and event["sequence_number"] == 0
    assert event["message"] == "upstream broke" and event["code"] == "server_error"
    assert event["error"]["type"] == "server_error"
