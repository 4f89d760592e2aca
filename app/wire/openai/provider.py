"""OpenAI Chat Completions, provider side: canonical → upstream request, upstream reply/chunks → canonical.

Replies and chunks are untrusted: every field read is checked (``app.wire.checks``) and an off-shape
one raises ``MalformedReply``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from app.domain import Block, ChatRequest, ChatResponse, ResponseFormat, StreamEvent, Tool, Usage
from app.wire.checks import MalformedReply, array, index, obj, opt_array, opt_count, opt_obj, opt_string, string

STOP_FROM_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}



# ---- provider side: canonical → OpenAI request ------------------------------------------------------------


def _part_json(block: Block) -> dict[str, Any] | None:
    btype = block.get("type")
    if btype == "text":
        return {"type": "text", "text": block.get("text", "")}
    if btype in ("image", "document"):
        source = block.get("source") or {}
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        elif source.get("type") == "url":
            url = source.get("url", "")
        elif source.get("type") == "file":
            return {"type": "file", "file": {"file_id": source.get("file_id")}}
        elif source.get("type") == "text":
            return {"type": "text", "text": source.get("data", "")}
        else:
            return None
        if btype == "image":
            return {"type": "image_url", "image_url": {"url": url}}
        return {"type": "file", "file": {"file_data": url, "filename": block.get("title") or "document"}}
    return None


def _tool_result_text(block: Block) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def build_request(
    req: ChatRequest, upstream_model: str, *, stream: bool, max_tokens_field: str = "max_completion_tokens"
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": upstream_model, "messages": _messages_json(req)}
    if req.max_tokens is not None:
        body[max_tokens_field] = req.max_tokens
    if stream:
        # Always ask for usage: the ledger needs it even when the client did not ask.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if req.stop_sequences:
        body["stop"] = req.stop_sequences[:4]  # more than 4 are refused before routing (wire/parameters.py)
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.seed is not None:
        body["seed"] = req.seed
    if req.logprobs:
        body["logprobs"] = True
        if req.top_logprobs is not None:
            body["top_logprobs"] = req.top_logprobs
    if req.tools:
        body["tools"] = [_tool_json(t) for t in req.tools]
    if req.tool_choice is not None:
        _add_tool_choice(body, req.tool_choice, has_tools=bool(req.tools))
    if req.response_format is not None:
        body["response_format"] = _response_format_json(req.response_format)
    _add_metadata(body, req)
    if req.client_format == "openai":
        body.update(req.extra)  # unknown fields pass through to the same format
    return body


def _messages_json(req: ChatRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if req.system:
        text = "\n\n".join(b.get("text", "") for b in req.system if b.get("type") == "text")
        messages.append({"role": "system", "content": text})
    for m in req.messages:
        if m.role == "assistant":
            messages.append(_assistant_json(m.content))
        elif m.role == "system":
            messages.append({"role": "system", "content": "".join(b.get("text", "") for b in m.content)})
        else:
            messages.extend(_user_json(m.content))
    return messages


def _assistant_json(content: list[Block]) -> dict[str, Any]:
    text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
    calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {"name": b.get("name"), "arguments": orjson.dumps(b.get("input", {})).decode()},
        }
        for b in content
        if b.get("type") == "tool_use"
    ]
    out: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        out["tool_calls"] = calls
    return out


def _user_json(content: list[Block]) -> list[dict[str, Any]]:
    """One user turn: its tool results become ``tool`` messages, the rest one user message."""
    messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for b in content:
        if b.get("type") == "tool_result":
            messages.append({"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": _tool_result_text(b)})
        else:
            part = _part_json(b)
            if part is not None:
                parts.append(part)
    if parts:
        if len(parts) == 1 and parts[0]["type"] == "text":
            messages.append({"role": "user", "content": parts[0]["text"]})
        else:
            messages.append({"role": "user", "content": parts})
    return messages


def _tool_json(t: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": t.name,
            **({"description": t.description} if t.description else {}),
            "parameters": t.input_schema or {"type": "object", "properties": {}},
            **({"strict": t.extra["strict"]} if "strict" in t.extra else {}),
        },
    }


def _add_tool_choice(body: dict[str, Any], tc: dict[str, Any], *, has_tools: bool) -> None:
    ctype = tc.get("type")
    if ctype == "tool":
        body["tool_choice"] = {"type": "function", "function": {"name": tc.get("name")}}
    elif ctype in ("auto", "none"):
        body["tool_choice"] = ctype
    elif ctype == "any":
        body["tool_choice"] = "required"
    if tc.get("disable_parallel_tool_use") and has_tools:
        body["parallel_tool_calls"] = False


def _response_format_json(rf: ResponseFormat) -> dict[str, Any]:
    if rf.type == "json_object":
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": rf.name or "response", "schema": rf.schema or {"type": "object"}}
    if rf.strict is not None:
        spec["strict"] = rf.strict
    return {"type": "json_schema", "json_schema": spec}


def _add_metadata(body: dict[str, Any], req: ChatRequest) -> None:
    """OpenAI-format clients' metadata passes through; Anthropic's end-user id is OpenAI's ``user``."""
    if not req.metadata:
        return
    if req.client_format in ("openai", "responses"):
        rest = {k: v for k, v in req.metadata.items() if k != "user_id"}
        if rest:
            body["metadata"] = rest
    if isinstance(req.metadata.get("user_id"), str):
        body["user"] = req.metadata["user_id"]


# ---- provider side: OpenAI response → canonical ------------------------------------------------------------


def parse_usage(u: Any, where: str = "usage") -> Usage:
    """An upstream usage object → Usage (Anthropic accounting); MalformedReply for bad counts."""
    if u is None:
        return Usage()
    u = obj(u, where)
    details = opt_obj(u.get("prompt_tokens_details"), where, "prompt_tokens_details") or {}
    cached = opt_count(details.get("cached_tokens"), where, "prompt_tokens_details.cached_tokens") or 0
    written = opt_count(details.get("cache_write_tokens"), where, "prompt_tokens_details.cache_write_tokens") or 0
    prompt = opt_count(u.get("prompt_tokens"), where, "prompt_tokens") or 0
    return Usage(
        input_tokens=max(prompt - cached - written, 0),
        output_tokens=opt_count(u.get("completion_tokens"), where, "completion_tokens") or 0,
        cache_write_5m_tokens=written,
        cache_read_tokens=cached,
    )


def _tool_use(call: Any, where: str) -> Block:
    call = obj(call, where)
    fn = obj(call.get("function"), where, "function")
    arguments = opt_string(fn.get("arguments"), where, "function.arguments")
    try:
        args = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        args = {"_unparsed_arguments": arguments}
    return {
        "type": "tool_use",
        "id": opt_string(call.get("id"), where, "id"),
        "name": string(fn.get("name"), where, "function.name"),
        "input": args,
    }


def parse_response(data: Any) -> ChatResponse:
    """An upstream chat completion → ChatResponse; MalformedReply for anything but a completion."""
    data = obj(data, "the reply")
    if "error" in data:
        raise MalformedReply("an error object came with a success status")
    choices = array(data.get("choices"), "choices")
    if not choices:
        raise MalformedReply("choices must not be empty")
    choice = obj(choices[0], "choices.0")
    message = obj(choice.get("message"), "choices.0.message")
    text = opt_string(message.get("content"), "choices.0.message.content")
    refusal = opt_string(message.get("refusal"), "choices.0.message.refusal")
    content: list[Block] = []
    if text or refusal:
        content.append({"type": "text", "text": text or refusal})
    for call in opt_array(message.get("tool_calls"), "choices.0.message.tool_calls"):
        content.append(_tool_use(call, "choices.0.message.tool_calls[]"))
    finish = opt_string(choice.get("finish_reason"), "choices.0.finish_reason")
    logprobs = opt_obj(choice.get("logprobs"), "choices.0", "logprobs")
    created = data.get("created")
    return ChatResponse(
        id=opt_string(data.get("id"), "id") or "chatcmpl-unknown",
        model=opt_string(data.get("model"), "model") or "",
        content=content,
        stop_reason=STOP_FROM_FINISH.get(finish or "stop", "end_turn"),
        usage=parse_usage(obj(data.get("usage"), "usage")),
        created=created if type(created) is int and created > 0 else int(time.time()),
        logprobs=logprobs,
    )


class ChunkDecoder:
    """OpenAI chunks → canonical (Anthropic-grammar) events, one chunk at a time."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.block_index = -1
        self.open_kind: str | None = None  # "text" | "tool" | None
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool_calls index → content block index
        self.finish: str | None = None
        self.usage = Usage()

    def _start(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        self.started = True
        message: dict[str, Any] = {
            "id": chunk.get("id") or "chatcmpl-stream",
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model") or self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [StreamEvent("message_start", {"type": "message_start", "message": message})]

    def _close(self) -> list[StreamEvent]:
        if self.open_kind is None:
            return []
        self.open_kind = None
        return [StreamEvent("content_block_stop", {"type": "content_block_stop", "index": self.block_index})]

    def _open(self, kind: str, block: Block) -> list[StreamEvent]:
        events = self._close()
        self.block_index += 1
        self.open_kind = kind
        events.append(
            StreamEvent(
                "content_block_start",
                {"type": "content_block_start", "index": self.block_index, "content_block": block},
            )
        )
        return events

    def feed(self, chunk: Any) -> list[StreamEvent]:
        """The canonical events for one upstream chunk; MalformedReply for an off-shape chunk."""
        chunk = obj(chunk, "a chunk")
        opt_string(chunk.get("id"), "chunk.id")
        opt_string(chunk.get("model"), "chunk.model")
        events: list[StreamEvent] = [] if self.started else self._start(chunk)
        if chunk.get("usage") is not None:
            self.usage = parse_usage(chunk["usage"], "chunk.usage")
        for choice in opt_array(chunk.get("choices"), "chunk", "choices"):
            choice = obj(choice, "chunk.choices[]")
            delta = opt_obj(choice.get("delta"), "chunk.choices[]", "delta") or {}
            text = opt_string(delta.get("content"), "chunk.choices[].delta", "content")
            logprobs = opt_obj(choice.get("logprobs"), "chunk.choices[]", "logprobs")
            if text:
                if self.open_kind != "text":
                    events += self._open("text", {"type": "text", "text": ""})
                events.append(
                    StreamEvent(
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": self.block_index,
                            "delta": {"type": "text_delta", "text": text},
                        },
                        logprobs=logprobs,
                    )
                )
            for call in opt_array(delta.get("tool_calls"), "chunk.choices[].delta", "tool_calls"):
                where = "chunk.choices[].delta.tool_calls[]"
                call = obj(call, where)
                oi = index(call.get("index", 0), where, "index")
                fn = opt_obj(call.get("function"), where, "function") or {}
                if oi not in self.tool_blocks:
                    block: Block = {
                        "type": "tool_use",
                        "id": opt_string(call.get("id"), where, "id") or f"call_{oi}",
                        "name": opt_string(fn.get("name"), where, "function.name") or "",
                        "input": {},
                    }
                    events += self._open("tool", block)
                    self.tool_blocks[oi] = self.block_index
                args = opt_string(fn.get("arguments"), where, "function.arguments")
                if args:
                    events.append(
                        StreamEvent(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": self.tool_blocks[oi],
                                "delta": {"type": "input_json_delta", "partial_json": args},
                            },
                        )
                    )
            finish = opt_string(choice.get("finish_reason"), "chunk.choices[]", "finish_reason")
            if finish:
                self.finish = finish
        return events

    def finish_events(self) -> list[StreamEvent]:
        events: list[StreamEvent] = [] if self.started else self._start({})
        events += self._close()
        from app.wire.anthropic import usage_json

        events.append(
            StreamEvent(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": STOP_FROM_FINISH.get(self.finish or "stop", "end_turn"),
                        "stop_sequence": None,
                    },
                    "usage": usage_json(self.usage),
                },
            )
        )
        events.append(StreamEvent("message_stop", {"type": "message_stop"}))
        return events
