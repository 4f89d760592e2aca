"""The Anthropic Messages wire (wire-protocol.md §2): validation, replies, SSE and errors.

Field names and framing follow the ``anthropic`` SDK 2.14 types: ``Message``, ``Usage`` (with
``cache_creation``), ``RawMessage*Event`` and the named-event SSE decoder, which needs an ``event:``
line on every event and a ``type`` inside every ``data`` payload.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.simulator.faults import RawReply, injected_fault, malformed_reply
from app.simulator.generate import Job, JsonFormat, Reply, ToolSpec, generate, request_seed
from app.simulator.http import JSONReply, SimRequest, SSEReply, StreamPlan, sse_event
from app.simulator.knobs import Knobs, knobs_for, pause
from app.simulator.prompt_cache import CacheControlError, CacheUsage, analyse_anthropic_prompt
from app.simulator.state import SimulatorState

KNOWN_VERSIONS = frozenset({"2023-01-01", "2023-06-01", "2026-10-21"})
SAMPLING_FREE_VERSION = "2026-10-21"
SAMPLING_FIELDS = ("temperature", "top_p", "top_k")
ROLES = frozenset({"user", "assistant", "system"})
TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
FAULT_MESSAGES = {
    401: "invalid x-api-key",
    429: "Number of request tokens has exceeded your per-minute rate limit (simulated)",
    500: "Internal server error (simulated)",
    503: "Service unavailable (simulated)",
    529: "Overloaded",
}

MODELS = ("claude-haiku-5-5", "claude-sonnet-5-5", "claude-opus-5-5", "claude-haiku-4-5")
MODEL_CREATED_AT = "2026-10-07T00:00:00Z"


def error_type_for(status: int) -> str:
    return ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def has_credential(headers: dict[str, str]) -> bool:
    if headers.get("x-api-key", "").strip():
        return True
    authorization = headers.get("authorization", "")
    return authorization[:7].lower() == "bearer " and bool(authorization[7:].strip())


# ---- Validation ----------------------------------------------------------------------------------


def validate(body: Any, version: str, *, for_count: bool = False) -> str | None:
    """The first problem the real API would report with a 400, or None."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    model = body.get("model")
    if model is None:
        return "model: Field required"
    if not isinstance(model, str) or not model:
        return "model: Input should be a valid string"
    if not for_count:
        if body.get("max_tokens") is None:
            return "max_tokens: Field required"
        max_tokens = body["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return "max_tokens: Input should be a valid integer"
        if max_tokens < 0:
            return "max_tokens: Input should be greater than or equal to 0"
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            return "stream: Input should be a valid boolean"
    if version == SAMPLING_FREE_VERSION:
        for name in SAMPLING_FIELDS:
            if body.get(name) is not None:
                return (
                    f"{name}: Extra inputs are not permitted (not supported with anthropic-version {version})"
                )
    return (
        _validate_messages(body.get("messages"), version)
        or _validate_system(body.get("system"))
        or _validate_stop_sequences(body.get("stop_sequences"))
        or _validate_tools(body.get("tools"), body.get("tool_choice"))
        or _validate_output_config(body.get("output_config"))
    )


def _validate_messages(messages: Any, version: str) -> str | None:
    if messages is None:
        return "messages: Field required"
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{i}: Input should be a valid dictionary"
        role = message.get("role")
        if role not in ROLES:
            return f"messages.{i}.role: Input should be 'user', 'assistant' or 'system'"
        if "content" not in message:
            return f"messages.{i}.content: Field required"
        content = message["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            return f"messages.{i}.content: Input should be a valid string or list"
        for j, block in enumerate(content):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                return f"messages.{i}.content.{j}: Input should be a content block with a type"
            if version != SAMPLING_FREE_VERSION:
                continue
            if role == "assistant" and block["type"] == "document":
                return f"messages.{i}.content.{j}: document blocks are not allowed in assistant messages"
            if role == "user" and block["type"] == "text" and block.get("citations"):
                return f"messages.{i}.content.{j}.citations: citations are not allowed in user text blocks"
    return None


def _validate_system(system: Any) -> str | None:
    if system is None or isinstance(system, str):
        return None
    if not isinstance(system, list):
        return "system: Input should be a valid string or list"
    for i, block in enumerate(system):
        if (
            not isinstance(block, dict)
            or block.get("type") != "text"
            or not isinstance(block.get("text"), str)
        ):
            return f"system.{i}: Input should be a text block"
    return None


def _validate_stop_sequences(stop_sequences: Any) -> str | None:
    if stop_sequences is None:
        return None
    if not isinstance(stop_sequences, list) or not all(isinstance(s, str) for s in stop_sequences):
        return "stop_sequences: Input should be a valid list of strings"
    return None


def _validate_tools(tools: Any, tool_choice: Any) -> str | None:
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                return f"tools.{i}.name: Field required"
            if tool.get("type") in (None, "custom") and not isinstance(tool.get("input_schema"), dict):
                return f"tools.{i}.input_schema: Field required"
            names.add(tool["name"])
    if tool_choice is None:
        return None
    if not isinstance(tool_choice, dict) or tool_choice.get("type") not in TOOL_CHOICES:
        return "tool_choice: Input should be one of 'auto', 'any', 'tool' or 'none'"
    if tool_choice["type"] == "tool" and tool_choice.get("name") not in names:
        return f"tool_choice: Tool '{tool_choice.get('name')}' not found in provided tools"
    if tool_choice["type"] in ("any", "tool") and not names:
        return "tool_choice: tool_choice requires tools to be provided"
    return None


def _validate_output_config(output_config: Any) -> str | None:
    if output_config is None:
        return None
    if not isinstance(output_config, dict):
        return "output_config: Input should be a valid dictionary"
    output_format = output_config.get("format")
    if output_format is None:
        return None
    if (
        not isinstance(output_format, dict)
        or output_format.get("type") != "json_schema"
        or not isinstance(output_format.get("schema"), dict)
    ):
        return "output_config.format: Input should be {'type': 'json_schema', 'schema': {...}}"
    return None


# ---- What to answer ------------------------------------------------------------------------------


def _last_user_message(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((m for m in reversed(messages) if m.get("role") == "user"), None)


def _tool_to_call(body: dict[str, Any], last_user: dict[str, Any] | None) -> ToolSpec | None:
    tools = body.get("tools")
    if not tools:
        return None
    choice = body.get("tool_choice") or {"type": "auto"}
    if choice["type"] == "none":
        return None
    content = last_user.get("content") if last_user else None
    if isinstance(content, list) and any(b.get("type") == "tool_result" for b in content):
        return None  # the model has its tool results: it answers in text
    tool = tools[0]
    if choice["type"] == "tool":
        tool = next(t for t in tools if t["name"] == choice["name"])
    schema = tool.get("input_schema")
    return ToolSpec(tool["name"], schema if isinstance(schema, dict) else {})


def build_job(body: dict[str, Any], knobs: Knobs) -> Job:
    model: str = body["model"]
    last_user = _last_user_message(body["messages"])
    output_format = (body.get("output_config") or {}).get("format")
    return Job(
        model=model,
        seed=request_seed(model, last_user.get("content") if last_user else None),
        output_tokens=knobs.output_tokens,
        max_tokens=body["max_tokens"],
        stop_sequences=body.get("stop_sequences") or [],
        forced_reply=knobs.forced_reply,
        refuse=knobs.refuse,
        tool=_tool_to_call(body, last_user),
        json_format=JsonFormat("json_schema", output_format["schema"]) if output_format else None,
        invalid_json=model in knobs.invalid_json_models,
    )


# ---- Rendering -----------------------------------------------------------------------------------


def _input_usage(total: int, cache: CacheUsage) -> dict[str, Any]:
    return {
        "input_tokens": total - cache.read - cache.written,
        "cache_creation_input_tokens": cache.written,
        "cache_read_input_tokens": cache.read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache.write_5m,
            "ephemeral_1h_input_tokens": cache.write_1h,
        },
    }


def _stop_details(reply: Reply) -> dict[str, Any] | None:
    if reply.stop_reason != "refusal":
        return None
    return {"type": "refusal", "category": None, "explanation": "Simulated refusal (x-sim-refuse)."}


class AnthropicWire:
    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    def error(
        self,
        status: int,
        message: str,
        error_type: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> JSONReply:
        request_id = self.state.new_id("req_")
        payload = {
            "type": "error",
            "error": {"type": error_type or error_type_for(status), "message": message},
            "request_id": request_id,
        }
        return JSONReply(payload, status, [(b"request-id", request_id.encode()), *(headers or [])])

    def _preflight(self, request: SimRequest) -> tuple[JSONReply | None, Any]:
        """Auth, version header, JSON body and injected faults: an error reply, or the parsed body."""
        if not has_credential(request.headers):
            return self.error(401, "x-api-key header is required"), None
        version = request.headers.get("anthropic-version")
        if not version:
            return self.error(400, "anthropic-version: header is required"), None
        if version not in KNOWN_VERSIONS:
            return self.error(400, f"anthropic-version: '{version}' is not a valid version"), None
        try:
            body = request.json()
        except orjson.JSONDecodeError:
            return self.error(400, "There was an error parsing the body of your request: invalid JSON"), None
        model = body.get("model") if isinstance(body, dict) else None
        fault = injected_fault(request, model if isinstance(model, str) else None, self.state)
        if fault is not None:
            message = FAULT_MESSAGES.get(fault.status, f"Simulated error {fault.status}")
            return self.error(fault.status, message, headers=fault.headers), None
        problem = validate(body, version, for_count=request.path.endswith("/count_tokens"))
        if problem is not None:
            return self.error(400, problem), None
        return None, body

    async def count_tokens(self, request: SimRequest) -> JSONReply:
        problem, body = self._preflight(request)
        if problem is not None:
            return problem
        try:
            prompt = analyse_anthropic_prompt(body)
        except CacheControlError as exc:
            return self.error(400, str(exc))
        request_id = self.state.new_id("req_")
        return JSONReply(
            {"input_tokens": prompt.total_tokens}, headers=[(b"request-id", request_id.encode())]
        )

    async def messages(self, request: SimRequest) -> JSONReply | SSEReply | RawReply:
        problem, body = self._preflight(request)
        if problem is not None:
            return problem
        if (bad := malformed_reply(request, "anthropic", body["model"], bool(body.get("stream")))) is not None:
            return bad
        try:
            prompt = analyse_anthropic_prompt(body)
        except CacheControlError as exc:
            return self.error(400, str(exc))
        state = self.state
        knobs = knobs_for(request, state.config)
        model: str = body["model"]
        reply = generate(build_job(body, knobs))
        min_tokens = state.min_cache_tokens(model, knobs.min_cache_tokens)
        cache = state.anthropic_cache.account(model, prompt, min_tokens, state.clock())
        input_usage = _input_usage(prompt.total_tokens, cache)
        request_id = state.new_id("req_")
        headers = [(b"request-id", request_id.encode())]
        message_id = state.new_id("msg_")
        tool_id = state.new_id("toolu_") if reply.kind == "tool_use" else ""
        if body.get("stream"):
            plan = self._stream_plan(message_id, tool_id, model, reply, input_usage, knobs)
            return SSEReply(plan, state, headers)
        await pause(knobs.nonstreaming_delay(reply.output_tokens))
        message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": self._content(reply, tool_id),
            "stop_reason": reply.stop_reason,
            "stop_sequence": reply.stop_sequence,
            "stop_details": _stop_details(reply),
            "usage": {**input_usage, "output_tokens": reply.output_tokens, "service_tier": "standard"},
        }
        return JSONReply(message, headers=headers)

    @staticmethod
    def _content(reply: Reply, tool_id: str) -> list[dict[str, Any]]:
        if reply.kind == "tool_use":
            return [{"type": "tool_use", "id": tool_id, "name": reply.tool_name, "input": reply.tool_input}]
        if not reply.pieces:
            return []
        return [{"type": "text", "text": reply.text}]

    @staticmethod
    def _stream_plan(
        message_id: str, tool_id: str, model: str, reply: Reply, input_usage: dict[str, Any], knobs: Knobs
    ) -> StreamPlan:
        start: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "stop_details": None,
            "usage": {**input_usage, "output_tokens": 1, "service_tier": "standard"},
        }
        head = [sse_event("message_start", {"type": "message_start", "message": start})]
        deltas: list[bytes] = []
        tail: list[bytes] = []
        if reply.kind == "tool_use":
            block: dict[str, Any] | None = {
                "type": "tool_use",
                "id": tool_id,
                "name": reply.tool_name,
                "input": {},
            }
            deltas = [
                sse_event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
                for piece in reply.pieces
            ]
        elif reply.pieces:
            block = {"type": "text", "text": ""}
            deltas = [
                sse_event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
                for piece in reply.pieces
            ]
        else:
            block = None
        if block is not None:
            head.append(
                sse_event(
                    "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}
                )
            )
            tail.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        head.append(sse_event("ping", {"type": "ping"}))
        delta: dict[str, Any] = {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence}
        if (details := _stop_details(reply)) is not None:
            delta["stop_details"] = details
        usage = {key: value for key, value in input_usage.items() if key != "cache_creation"}
        usage["output_tokens"] = reply.output_tokens
        tail.append(sse_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        tail.append(sse_event("message_stop", {"type": "message_stop"}))
        error_event = sse_event(
            "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
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
            return self.error(401, "x-api-key header is required")
        fault = injected_fault(request, model_id, self.state)
        if fault is not None:
            message = FAULT_MESSAGES.get(fault.status, f"Simulated error {fault.status}")
            return self.error(fault.status, message, headers=fault.headers)
        headers = [(b"request-id", self.state.new_id("req_").encode())]
        if model_id is not None:
            return JSONReply(_model_info(model_id), headers=headers)
        data = [_model_info(m) for m in MODELS]
        page = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        return JSONReply(page, headers=headers)


def _model_info(model_id: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": model_id,
        "display_name": "Tollway simulator",
        "created_at": MODEL_CREATED_AT,
        "lifecycle": "active",
    }
