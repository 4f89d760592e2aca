"""The OpenAI Chat Completions wire (wire-protocol.md §3): validation, replies, SSE and errors.

Field names follow the ``openai`` SDK 3.57 types (``ChatCompletion``, ``ChatCompletionChunk``,
``CompletionUsage``); streams are data-only SSE ending in ``data: [DONE]``, and an in-stream error is
a ``data: {"error": {...}}`` event, which the SDK raises as ``APIError``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from app.simulator.counting import (
    PER_REQUEST_TOKENS,
    json_tokens,
    openai_message_tokens,
    tool_definition_tokens,
)
from app.simulator.faults import RawReply, injected_fault, malformed_reply
from app.simulator.generate import Job, JsonFormat, Reply, ToolSpec, generate, request_seed
from app.simulator.http import JSONReply, SimRequest, SSEReply, StreamPlan, sse_data
from app.simulator.knobs import Knobs, knobs_for, pause
from app.simulator.logprobs import choice_logprobs
from app.simulator.state import SimulatorState

ROLES = ("system", "assistant", "user", "function", "tool", "developer")
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# status -> (error.type, error.code)
ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}
FAULT_MESSAGES = {
    401: "Incorrect API key provided (simulated).",
    404: "The model does not exist or you do not have access to it (simulated).",
    429: "Rate limit reached for requests (simulated).",
    500: "The server had an error while processing your request (simulated).",
    503: "The server is overloaded or not ready yet (simulated).",
}
SYSTEM_FINGERPRINT = "fp_tollway_sim"
MODELS = ("gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1")
REASONING_PREFIXES = ("gpt-5", "o1", "o3", "o4")  # models the real API refuses logprobs for
MODEL_CREATED = 1_767_225_600  # 2026-01-01
DONE = b"data: [DONE]\n\n"

Problem = tuple[str, str | None, str | None]  # message, param, code


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def has_credential(headers: dict[str, str]) -> bool:
    authorization = headers.get("authorization", "")
    return authorization[:7].lower() == "bearer " and bool(authorization[7:].strip())


# ---- Validation ----------------------------------------------------------------------------------


def validate(body: Any) -> Problem | None:
    """The first problem the real API would report with a 400, or None."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request: expected an object.", None, None
    model = body.get("model")
    if model is None:
        return "you must provide a model parameter", None, None
    if not isinstance(model, str) or not model:
        return (
            f"Invalid type for 'model': expected a string, but got {_type_name(model)} instead.",
            "model",
            "invalid_type",
        )
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            return (
                f"Invalid type for '{name}': expected an integer, but got {_type_name(value)} instead.",
                name,
                "invalid_type",
            )
        if value < 1:
            return (
                f"Invalid '{name}': integer below minimum value. "
                f"Expected a value >= 1, but got {value} instead.",
                name,
                "integer_below_min_value",
            )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return (
            f"Invalid type for 'stream': expected a boolean, but got {_type_name(stream)} instead.",
            "stream",
            "invalid_type",
        )
    if body.get("stream_options") is not None and not stream:
        return (
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            None,
        )
    return (
        _validate_messages(body.get("messages"))
        or _validate_logprobs(model, body.get("logprobs"), body.get("top_logprobs"))
        or _validate_stop(body.get("stop"))
        or _validate_tools(body.get("tools"), body.get("tool_choice"))
        or _validate_response_format(body.get("response_format"))
    )


def _validate_messages(messages: Any) -> Problem | None:
    if messages is None:
        return "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
    if not isinstance(messages, list):
        return (
            f"Invalid type for 'messages': expected an array, but got {_type_name(messages)} instead.",
            "messages",
            "invalid_type",
        )
    if not messages:
        return (
            "Invalid 'messages': empty array. "
            "Expected an array with minimum length 1, but got an empty array instead.",
            "messages",
            "empty_array",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"Invalid type for 'messages[{i}]': expected an object.", f"messages[{i}]", "invalid_type"
        role = message.get("role")
        if role not in ROLES:
            return (
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', "
                "'tool', and 'developer'.",
                f"messages[{i}].role",
                "invalid_value",
            )
        content = message.get("content")
        if content is None and role not in ("assistant", "function"):
            return (
                f"Missing required parameter: 'messages[{i}].content'.",
                f"messages[{i}].content",
                "missing_required_parameter",
            )
        if content is not None and not isinstance(content, str | list):
            return (
                f"Invalid type for 'messages[{i}].content': expected one of a string or array of objects, "
                f"but got {_type_name(content)} instead.",
                f"messages[{i}].content",
                "invalid_type",
            )
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            return (
                f"Missing required parameter: 'messages[{i}].tool_call_id'.",
                f"messages[{i}].tool_call_id",
                "missing_required_parameter",
            )
    return None


def _validate_logprobs(model: str, logprobs: Any, top_logprobs: Any) -> Problem | None:
    if logprobs is not None and not isinstance(logprobs, bool):
        return (
            f"Invalid type for 'logprobs': expected a boolean, but got {_type_name(logprobs)} instead.",
            "logprobs",
            "invalid_type",
        )
    if top_logprobs is not None:
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
            return "Invalid 'top_logprobs': expected an integer from 0 to 20.", "top_logprobs", "invalid_value"
        if not logprobs:
            return "Using top_logprobs requires logprobs to be set to true.", "top_logprobs", None
    if logprobs and model.startswith(REASONING_PREFIXES):
        return "logprobs are not supported with reasoning models.", "logprobs", "unsupported_parameter"
    return None


def _requested_logprobs(body: dict[str, Any], reply: Reply) -> dict[str, Any] | None:
    """The non-streamed choice's ``logprobs``: per token for text, no content for tool calls."""
    if not body.get("logprobs"):
        return None
    if reply.kind != "text" or reply.stop_reason == "refusal":
        return {"content": None, "refusal": None}
    return choice_logprobs(reply.pieces, body.get("top_logprobs") or 0)


def _validate_stop(stop: Any) -> Problem | None:
    if stop is None or isinstance(stop, str):
        return None
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        return "Invalid type for 'stop': expected a string or array of strings.", "stop", "invalid_type"
    if len(stop) > 4:
        return (
            f"Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with "
            f"length {len(stop)} instead.",
            "stop",
            "array_above_max_length",
        )
    return None


def _validate_tools(tools: Any, tool_choice: Any) -> Problem | None:
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            return (
                f"Invalid type for 'tools': expected an array, but got {_type_name(tools)} instead.",
                "tools",
                "invalid_type",
            )
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                return f"Invalid type for 'tools[{i}]': expected an object.", f"tools[{i}]", "invalid_type"
            if tool.get("type", "function") == "function":
                function = tool.get("function")
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    return (
                        f"Missing required parameter: 'tools[{i}].function.name'.",
                        f"tools[{i}].function.name",
                        "missing_required_parameter",
                    )
                names.add(function["name"])
    if tool_choice is None:
        return None
    if not tools:
        return (
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            "tool_choice",
            None,
        )
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            return (
                f"Invalid value: '{tool_choice}'. Supported values are: 'none', 'auto', and 'required'.",
                "tool_choice",
                "invalid_value",
            )
        return None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if name not in names:
            return (
                f"Invalid value for 'tool_choice': no function named '{name}' "
                "was specified in the 'tools' parameter.",
                "tool_choice",
                None,
            )
    return None


def _validate_response_format(response_format: Any) -> Problem | None:
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or response_format.get("type") not in (
        "text",
        "json_object",
        "json_schema",
    ):
        return (
            "Invalid value for 'response_format.type': expected 'text', 'json_object' or 'json_schema'.",
            "response_format.type",
            "invalid_value",
        )
    if response_format["type"] == "json_schema":
        json_schema = response_format.get("json_schema")
        if not isinstance(json_schema, dict) or not isinstance(json_schema.get("name"), str):
            return (
                "Missing required parameter: 'response_format.json_schema.name'.",
                "response_format.json_schema.name",
                "missing_required_parameter",
            )
    return None


# ---- What to answer ------------------------------------------------------------------------------


def _tool_to_call(body: dict[str, Any]) -> ToolSpec | None:
    functions = [t["function"] for t in body.get("tools") or () if t.get("type", "function") == "function"]
    if not functions:
        return None
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        return None
    last_turn = next((m for m in reversed(body["messages"]) if m.get("role") != "assistant"), None)
    if last_turn is not None and last_turn.get("role") == "tool":
        return None  # the model has its tool results: it answers in text
    function = functions[0]
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = next(f for f in functions if f["name"] == choice["function"]["name"])
    schema = function.get("parameters")
    return ToolSpec(function["name"], schema if isinstance(schema, dict) else {})


def _json_format(response_format: Any) -> JsonFormat | None:
    if not isinstance(response_format, dict):
        return None
    if response_format["type"] == "json_object":
        return JsonFormat("json_object")
    if response_format["type"] == "json_schema":
        schema = response_format["json_schema"].get("schema")
        return JsonFormat("json_schema", schema) if isinstance(schema, dict) else JsonFormat("json_object")
    return None


def build_job(body: dict[str, Any], knobs: Knobs) -> Job:
    model: str = body["model"]
    last_user = next((m for m in reversed(body["messages"]) if m.get("role") == "user"), None)
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    stop = body.get("stop")
    return Job(
        model=model,
        seed=request_seed(model, last_user.get("content") if last_user else None),
        output_tokens=knobs.output_tokens,
        max_tokens=max_tokens,
        stop_sequences=[stop] if isinstance(stop, str) else stop or [],
        forced_reply=knobs.forced_reply,
        refuse=knobs.refuse,
        tool=_tool_to_call(body),
        json_format=_json_format(body.get("response_format")),
        invalid_json=model in knobs.invalid_json_models,
    )


def prompt_tokens(body: dict[str, Any]) -> tuple[int, list[int]]:
    """Total prompt tokens, and each message's share (for the prefix cache)."""
    message_tokens = [openai_message_tokens(m) for m in body["messages"]]
    total = PER_REQUEST_TOKENS + sum(message_tokens)
    total += sum(tool_definition_tokens(t) for t in body.get("tools") or ())
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = response_format["json_schema"].get("schema")
        if isinstance(schema, dict):
            total += json_tokens(schema)
    return total, message_tokens


# ---- Rendering -----------------------------------------------------------------------------------


def _usage(prompt: int, cached: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class OpenAIWire:
    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    def error(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> JSONReply:
        if status == 529:
            status = 503  # OpenAI has no 529: overload is a 503
        error_type, default_code = ERRORS.get(status) or (
            ("server_error", None) if status >= 500 else ("invalid_request_error", None)
        )
        payload = {
            "error": {"message": message, "type": error_type, "param": param, "code": code or default_code}
        }
        request_id = self.state.new_id("req_")
        return JSONReply(payload, status, [(b"x-request-id", request_id.encode()), *(headers or [])])

    def _fault(self, request: SimRequest, model: str | None) -> JSONReply | None:
        fault = injected_fault(request, model, self.state)
        if fault is None:
            return None
        status = 503 if fault.status == 529 else fault.status
        message = FAULT_MESSAGES.get(status, f"Simulated error {status}")
        return self.error(status, message, headers=fault.headers)

    async def chat_completions(self, request: SimRequest) -> JSONReply | SSEReply | RawReply:
        if not has_credential(request.headers):
            return self.error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code=None,
            )
        try:
            body = request.json()
        except orjson.JSONDecodeError:
            return self.error(400, "We could not parse the JSON body of your request.")
        model = body.get("model") if isinstance(body, dict) else None
        if (fault := self._fault(request, model if isinstance(model, str) else None)) is not None:
            return fault
        if (problem := validate(body)) is not None:
            return self.error(400, *problem)
        if (bad := malformed_reply(request, "openai", body["model"], bool(body.get("stream")))) is not None:
            return bad
        state = self.state
        knobs = knobs_for(request, state.config)
        model = body["model"]
        reply = generate(build_job(body, knobs))
        total, message_tokens = prompt_tokens(body)
        cached = state.openai_cache.account(
            model,
            body.get("tools") or [],
            body["messages"],
            message_tokens,
            total,
            state.min_cache_tokens(model, knobs.min_cache_tokens),
            state.clock(),
        )
        usage = _usage(total, cached, reply.output_tokens)
        headers = [(b"x-request-id", state.new_id("req_").encode())]
        completion_id = state.new_id("chatcmpl-")
        call_id = state.new_id("call_") if reply.kind == "tool_use" else ""
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            top = (body.get("top_logprobs") or 0) if body.get("logprobs") else None
            plan = self._stream_plan(
                completion_id, call_id, model, reply, usage if include_usage else None, knobs, top
            )
            return SSEReply(plan, state, headers)
        await pause(knobs.nonstreaming_delay(reply.output_tokens))
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
        if reply.kind == "tool_use":
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": reply.tool_name, "arguments": reply.text},
                }
            ]
        elif reply.stop_reason != "refusal":
            message["content"] = reply.text
        completion = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": _requested_logprobs(body, reply),
                    "finish_reason": FINISH_REASONS[reply.stop_reason],
                }
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        return JSONReply(completion, headers=headers)

    @staticmethod
    def _stream_plan(
        completion_id: str,
        call_id: str,
        model: str,
        reply: Reply,
        usage: dict[str, Any] | None,
        knobs: Knobs,
        top_logprobs: int | None = None,
    ) -> StreamPlan:
        """``top_logprobs`` is None unless logprobs were asked for: then each text chunk carries its token's."""
        base: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if usage is not None:
            base["usage"] = None  # every chunk but the last carries usage: null

        def chunk(
            delta: dict[str, Any], finish_reason: str | None = None, logprobs: dict[str, Any] | None = None
        ) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            return sse_data({**base, "choices": [choice]})

        head = [
            chunk({"role": "assistant", "content": None if reply.kind == "tool_use" else "", "refusal": None})
        ]
        if reply.kind == "tool_use":
            head.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": reply.tool_name, "arguments": ""},
                            }
                        ]
                    }
                )
            )
            deltas = [
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in reply.pieces
            ]
        else:
            deltas = [
                chunk(
                    {"content": piece},
                    logprobs=None if top_logprobs is None else choice_logprobs([piece], top_logprobs),
                )
                for piece in reply.pieces
            ]
        tail = [chunk({}, FINISH_REASONS[reply.stop_reason])]
        if usage is not None:
            tail.append(sse_data({**base, "choices": [], "usage": usage}))
        tail.append(DONE)
        error_event = sse_data(
            {
                "error": {
                    "message": "The server is overloaded or not ready yet (simulated).",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )
        return StreamPlan(
            head=head,
            deltas=deltas,
            tail=tail,
            error_event=error_event,
            ttft_s=knobs.ttft_s,
            interval_s=knobs.interval_s,
            error_after=knobs.stream_error_after,
            abort_after=knobs.stream_abort_after,
        )

    async def models(self, request: SimRequest, model_id: str | None = None) -> JSONReply:
        if not has_credential(request.headers):
            return self.error(401, "You didn't provide an API key.")
        if (fault := self._fault(request, model_id)) is not None:
            return fault
        headers = [(b"x-request-id", self.state.new_id("req_").encode())]
        if model_id is not None:
            return JSONReply(_model(model_id), headers=headers)
        return JSONReply({"object": "list", "data": [_model(m) for m in MODELS]}, headers=headers)


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "Tollway simulator"}
