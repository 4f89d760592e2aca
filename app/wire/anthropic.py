"""Anthropic Messages wire format ↔ canonical form, in both directions.

Client side: ``parse_request`` (JSON body → ChatRequest), ``encode_response`` (ChatResponse → JSON),
``encode_event`` (StreamEvent → SSE bytes). Provider side: ``build_request`` (ChatRequest → JSON body),
``parse_response`` (JSON → ChatResponse), ``parse_usage`` (usage object → Usage), ``parse_event``
(SSE event → StreamEvent). The provider side trusts nothing: every reply and event is checked
(``app.wire.checks``) and anything off-shape raises ``MalformedReply``.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.domain import Block, ChatRequest, ChatResponse, Message, ResponseFormat, StreamEvent, Tool, Usage
from app.errors import invalid
from app.wire import checks
from app.wire.checks import MalformedReply, array, obj, opt_count, opt_obj, opt_string, string

# Fields of the request body Tollway interprets; everything else is passed through in `extra`.
_KNOWN_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "metadata",
        "cache_control",
        "output_config",
    }
)
_ROLES = frozenset({"user", "assistant", "system"})


def _content_blocks(content: Any, where: str) -> list[Block]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise invalid(f"{where}: content must be a string or an array of content blocks", where)
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise invalid(f"{where}.{i}: each content block must be an object with a string 'type'", where)
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            raise invalid(f"{where}.{i}.text: text blocks need a string 'text'", where)
    return content


def _int_field(body: dict[str, Any], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid(f"{name}: must be an integer ≥ {minimum}", name)
    return value


def _number_field(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(f"{name}: must be a number", name)
    return float(value)


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list):
        raise invalid("messages: field required (an array of messages)", "messages")
    messages: list[Message] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise invalid(f"messages.{i}: must be an object", "messages")
        role = m.get("role")
        if role not in _ROLES:
            raise invalid(f"messages.{i}.role: must be 'user', 'assistant' or 'system'", "messages")
        messages.append(Message(role=role, content=_content_blocks(m.get("content"), f"messages.{i}.content")))
    return messages


def _tools(raw: Any) -> list[Tool]:
    if not isinstance(raw, list):
        raise invalid("tools: must be an array", "tools")
    tools: list[Tool] = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise invalid(f"tools.{i}: each tool needs a string 'name'", "tools")
        schema = t.get("input_schema")
        if schema is not None and not isinstance(schema, dict):
            raise invalid(f"tools.{i}.input_schema: must be a JSON Schema object", "tools")
        extra = {k: v for k, v in t.items() if k not in ("name", "description", "input_schema")}
        tools.append(Tool(name=t["name"], description=t.get("description"), input_schema=schema or {}, extra=extra))
    return tools


def _output_format(output_config: Any, extra: dict[str, Any]) -> ResponseFormat | None:
    """``output_config.format`` as a canonical response format; what Tollway does not understand
    passes through (into ``extra``) like any unknown field."""
    if not isinstance(output_config, dict):
        return None
    fmt = output_config.get("format")
    understood = isinstance(fmt, dict) and fmt.get("type") == "json_schema"
    rest = {k: v for k, v in output_config.items() if k != "format" or not understood}
    if rest:
        extra["output_config"] = rest
    return ResponseFormat(type="json_schema", schema=fmt.get("schema")) if understood else None  # type: ignore[union-attr]


def parse_request(body: Any, *, anthropic_version: str | None, anthropic_beta: str | None) -> ChatRequest:
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model: field required (a model id or a Tollway route)", "model")
    if body.get("max_tokens") is None:
        raise invalid("max_tokens: field required", "max_tokens")
    max_tokens = _int_field(body, "max_tokens", minimum=1)
    messages = _messages(body.get("messages"))
    system_raw = body.get("system")
    system = [] if system_raw is None else _content_blocks(system_raw, "system")

    stop = body.get("stop_sequences") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise invalid("stop_sequences: must be an array of strings", "stop_sequences")

    tools = _tools(body.get("tools") or [])
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and (not isinstance(tool_choice, dict) or "type" not in tool_choice):
        raise invalid("tool_choice: must be an object with a 'type'", "tool_choice")

    extra = {k: v for k, v in body.items() if k not in _KNOWN_FIELDS}
    response_format = _output_format(body.get("output_config"), extra)

    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise invalid("metadata: must be an object", "metadata")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream: must be a boolean", "stream")
    cache_control = body.get("cache_control")
    if cache_control is not None and not isinstance(cache_control, dict):
        raise invalid("cache_control: must be an object", "cache_control")

    return ChatRequest(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        client_format="anthropic",
        system=system,
        stream=stream,
        stop_sequences=stop,
        temperature=_number_field(body, "temperature"),
        top_p=_number_field(body, "top_p"),
        top_k=_int_field(body, "top_k", minimum=0),
        tools=tools,
        tool_choice=tool_choice,
        response_format=response_format,
        metadata=metadata,
        cache_control=cache_control,
        extra=extra,
        anthropic_version=anthropic_version,
        anthropic_beta=anthropic_beta,
    )


# ---- provider side: canonical → Anthropic request -------------------------------------------------


def build_request(req: ChatRequest, upstream_model: str, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": req.max_tokens,
        "messages": [{"role": m.role, "content": m.content} for m in req.messages],
    }
    if req.system:
        body["system"] = req.system
    if req.stop_sequences:
        body["stop_sequences"] = req.stop_sequences
    if stream:
        body["stream"] = True
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if req.client_format in ("openai", "responses") and req.temperature is not None and req.temperature > 1:
        body["temperature"] = 1.0  # OpenAI's range is 0–2, Anthropic's 0–1: clamp rather than a 400
    if req.tools:
        body["tools"] = [_tool_json(t) for t in req.tools]
    if req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice
    if req.metadata:
        # Anthropic accepts only user_id in metadata.
        user_id = req.metadata.get("user_id")
        if isinstance(user_id, str):
            body["metadata"] = {"user_id": user_id}
    if req.cache_control is not None:
        body["cache_control"] = req.cache_control
    if req.client_format == "anthropic":
        body.update(req.extra)  # unknown fields pass through to the same format
    if req.response_format is not None:
        output_config = dict(body.get("output_config") or {})
        schema = req.response_format.schema or {"type": "object"}
        output_config["format"] = {"type": "json_schema", "schema": schema}
        body["output_config"] = output_config
    return body


def _tool_json(tool: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    server_tool = tool.extra.get("type") not in (None, "custom")
    if tool.input_schema or not server_tool:
        out["input_schema"] = tool.input_schema or {"type": "object", "properties": {}}
    out.update(tool.extra)
    return out


# ---- responses ---------------------------------------------------------------------------------------


def parse_usage(u: Any, where: str = "usage") -> Usage:
    """An upstream usage object → Usage; MalformedReply unless every count is an integer in range."""
    if u is None:
        return Usage()
    u = obj(u, where)
    write_total = opt_count(u.get("cache_creation_input_tokens"), where, "cache_creation_input_tokens") or 0
    split = opt_obj(u.get("cache_creation"), where, "cache_creation") or {}
    w1h = opt_count(split.get("ephemeral_1h_input_tokens"), where, "cache_creation.ephemeral_1h_input_tokens")
    w5m = opt_count(split.get("ephemeral_5m_input_tokens"), where, "cache_creation.ephemeral_5m_input_tokens")
    if w5m is None:
        w5m = max(write_total - (w1h or 0), 0)
    return Usage(
        input_tokens=opt_count(u.get("input_tokens"), where, "input_tokens") or 0,
        output_tokens=opt_count(u.get("output_tokens"), where, "output_tokens") or 0,
        cache_write_5m_tokens=w5m,
        cache_write_1h_tokens=w1h or 0,
        cache_read_tokens=opt_count(u.get("cache_read_input_tokens"), where, "cache_read_input_tokens") or 0,
    )


def merge_stream_usage(usage: Usage, u: Any) -> None:
    """Apply a message_delta usage object: cumulative values that replace, only where present."""
    fresh = parse_usage(u, "message_delta.usage")  # checks every field before any is applied
    if u.get("output_tokens") is not None:
        usage.output_tokens = fresh.output_tokens
    if u.get("input_tokens") is not None:
        usage.input_tokens = fresh.input_tokens
    if u.get("cache_read_input_tokens") is not None:
        usage.cache_read_tokens = fresh.cache_read_tokens
    if u.get("cache_creation_input_tokens") is not None:
        usage.cache_write_5m_tokens = fresh.cache_write_5m_tokens
        usage.cache_write_1h_tokens = fresh.cache_write_1h_tokens


_RESPONSE_KNOWN = frozenset(
    {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}
)


def check_block(block: Any, where: str) -> Block:
    """One upstream content block: the fields Tollway reads have their types (unknown types pass)."""
    block = obj(block, where)
    btype = string(block.get("type"), where, "type")
    if btype == "text":
        string(block.get("text"), where, "text")
    elif btype in ("tool_use", "server_tool_use"):
        string(block.get("id"), where, "id")
        string(block.get("name"), where, "name")
        obj(block.get("input"), where, "input")
    elif btype == "thinking":
        string(block.get("thinking"), where, "thinking")
        opt_string(block.get("signature"), where, "signature")
    elif btype == "redacted_thinking":
        string(block.get("data"), where, "data")
    return block


def parse_response(data: Any) -> ChatResponse:
    """An upstream Messages reply → ChatResponse; MalformedReply for anything but a message."""
    data = obj(data, "the reply")
    if data.get("type") == "error" or "error" in data:
        raise MalformedReply("an error object came with a success status")
    if data.get("type", "message") != "message":
        raise MalformedReply("type must be 'message'")
    content = array(data.get("content"), "content")
    for block in content:
        check_block(block, "content[]")
    usage = parse_usage(obj(data.get("usage"), "usage"))
    if "input_tokens" not in data["usage"] or "output_tokens" not in data["usage"]:
        raise MalformedReply("usage must have input_tokens and output_tokens")
    return ChatResponse(
        id=opt_string(data.get("id"), "id") or "msg_unknown",
        model=opt_string(data.get("model"), "model") or "",
        content=content,
        stop_reason=opt_string(data.get("stop_reason"), "stop_reason"),
        stop_sequence=opt_string(data.get("stop_sequence"), "stop_sequence"),
        usage=usage,
        extra={k: v for k, v in data.items() if k not in _RESPONSE_KNOWN},
    )


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_5m_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
        },
        "output_tokens": usage.output_tokens,
    }


def response_json(resp: ChatResponse, *, same_format: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": resp.id if resp.id.startswith("msg_") else f"msg_{resp.id}",
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": resp.content,
        "stop_reason": resp.stop_reason or "end_turn",
        "stop_sequence": resp.stop_sequence,
        "usage": usage_json(resp.usage),
    }
    if same_format:
        body.update(resp.extra)
    return body


def encode_response(resp: ChatResponse, *, same_format: bool) -> bytes:
    return orjson.dumps(response_json(resp, same_format=same_format))


# ---- streaming ---------------------------------------------------------------------------------------


def encode_event(event: StreamEvent) -> bytes:
    if event.raw is not None:
        return event.raw
    return b"event: " + event.type.encode() + b"\ndata: " + orjson.dumps(event.data) + b"\n\n"


def response_to_events(resp: ChatResponse) -> list[StreamEvent]:
    """A complete answer as a well-formed Anthropic event stream (response-cache replay, translation)."""
    start_usage = usage_json(resp.usage)
    start_usage["output_tokens"] = 0
    events = [
        StreamEvent(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": resp.id if resp.id.startswith("msg_") else f"msg_{resp.id}",
                    "type": "message",
                    "role": "assistant",
                    "model": resp.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        )
    ]
    for index, block in enumerate(resp.content):
        btype = block.get("type")
        if btype == "text":
            events.append(_block_start(index, {"type": "text", "text": ""}))
            events.append(_delta(index, {"type": "text_delta", "text": block.get("text", "")}))
        elif btype == "tool_use":
            empty: Block = {"type": "tool_use", "id": block.get("id"), "name": block.get("name"), "input": {}}
            events.append(_block_start(index, empty))
            partial = orjson.dumps(block.get("input", {})).decode()
            events.append(_delta(index, {"type": "input_json_delta", "partial_json": partial}))
        elif btype == "thinking":
            events.append(_block_start(index, {"type": "thinking", "thinking": ""}))
            events.append(_delta(index, {"type": "thinking_delta", "thinking": block.get("thinking", "")}))
            if block.get("signature"):
                events.append(_delta(index, {"type": "signature_delta", "signature": block["signature"]}))
        else:
            events.append(_block_start(index, block))
        events.append(StreamEvent("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        StreamEvent(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": resp.stop_reason or "end_turn", "stop_sequence": resp.stop_sequence},
                "usage": usage_json(resp.usage),
            },
        )
    )
    events.append(StreamEvent("message_stop", {"type": "message_stop"}))
    return events


def _block_start(index: int, block: Block) -> StreamEvent:
    return StreamEvent(
        "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
    )


def _delta(index: int, delta: dict[str, Any]) -> StreamEvent:
    return StreamEvent("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _check_delta(delta: Any, where: str) -> None:
    delta = obj(delta, where)
    dtype = string(delta.get("type"), where, "type")
    field = _DELTA_TEXT_FIELDS.get(dtype)
    if field is not None:
        string(delta.get(field), where, field)
    elif dtype == "citations_delta":
        obj(delta.get("citation"), where, "citation")


_DELTA_TEXT_FIELDS = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
    "signature_delta": "signature",
}


def _check_event(etype: str, payload: dict[str, Any]) -> None:
    """The fields of one event that Tollway reads (usage, stop reason, blocks) have their types."""
    if etype == "content_block_delta":
        checks.index(payload.get("index"), "content_block_delta")
        _check_delta(payload.get("delta"), "content_block_delta.delta")
    elif etype == "content_block_start":
        checks.index(payload.get("index"), "content_block_start")
        check_block(payload.get("content_block"), "content_block_start.content_block")
    elif etype == "content_block_stop":
        checks.index(payload.get("index"), "content_block_stop")
    elif etype == "message_start":
        message = obj(payload.get("message"), "message_start.message")
        opt_string(message.get("id"), "message_start.message.id")
        opt_string(message.get("model"), "message_start.message.model")
        parse_usage(message.get("usage"), "message_start.message.usage")
    elif etype == "message_delta":
        delta = opt_obj(payload.get("delta"), "message_delta.delta") or {}
        opt_string(delta.get("stop_reason"), "message_delta.delta.stop_reason")
        opt_string(delta.get("stop_sequence"), "message_delta.delta.stop_sequence")
        parse_usage(payload.get("usage"), "message_delta.usage")
    elif etype == "error":
        error = obj(payload.get("error"), "error.error")
        opt_string(error.get("type"), "error.error.type")


def _plain_text_delta(payload: dict[str, Any]) -> bool:
    """The commonest event, checked inline: a text delta with a string text and an index in range."""
    delta = payload.get("delta")
    position = payload.get("index")
    return (
        type(delta) is dict
        and delta.get("type") == "text_delta"
        and type(delta.get("text")) is str
        and type(position) is int
        and 0 <= position <= checks.MAX_INDEX
    )


def parse_event(event_name: str | None, data: bytes, raw: bytes) -> StreamEvent:
    """One upstream SSE event → StreamEvent; MalformedReply unless it is a well-typed Messages event."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise MalformedReply("an event's data is not JSON (or not UTF-8)") from None
    payload = obj(payload, "an event's data")
    etype = string(payload.get("type"), "an event's type")
    if event_name is not None and event_name != etype:
        raise MalformedReply("an event's name and its data's type differ")
    if etype != "content_block_delta" or not _plain_text_delta(payload):
        _check_event(etype, payload)
    return StreamEvent(etype, payload, raw)
