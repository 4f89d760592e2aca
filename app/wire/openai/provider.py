"""OpenAI Chat Completions, provider side: canonical → upstream request, upstream reply/chunks → canonical."""

from __future__ import annotations

import time
from typing import Any

import orjson

from app.domain import Block, ChatRequest, ChatResponse, StreamEvent, Usage

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
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append(
            {
                "role": "system",
                "content": "\n\n".join(b.get("text", "") for b in req.system if b.get("type") == "text"),
            }
        )
    for m in req.messages:
        if m.role == "assistant":
            text = "".join(b.get("text", "") for b in m.content if b.get("type") == "text")
            calls = [
                {
                    "id": b.get("id"),
                    "type": "function",
                    "function": {
                        "name": b.get("name"),
                        "arguments": orjson.dumps(b.get("input", {})).decode(),
                    },
                }
                for b in m.content
                if b.get("type") == "tool_use"
            ]
            out: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                out["tool_calls"] = calls
            messages.append(out)
            continue
        if m.role == "system":
            messages.append({"role": "system", "content": "".join(b.get("text", "") for b in m.content)})
            continue
        parts: list[dict[str, Any]] = []
        for b in m.content:
            if b.get("type") == "tool_result":
                messages.append(
                    {"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": _tool_result_text(b)}
                )
            else:
                part = _part_json(b)
                if part is not None:
                    parts.append(part)
        if parts:
            if len(parts) == 1 and parts[0]["type"] == "text":
                messages.append({"role": "user", "content": parts[0]["text"]})
            else:
                messages.append({"role": "user", "content": parts})

    body: dict[str, Any] = {"model": upstream_model, "messages": messages}
    if req.max_tokens is not None:
        body[max_tokens_field] = req.max_tokens
    if stream:
        # Always ask for usage: the ledger needs it even when the client did not ask.
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if req.stop_sequences:
        body["stop"] = req.stop_sequences[:4]
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.seed is not None:
        body["seed"] = req.seed
    if req.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "parameters": t.input_schema or {"type": "object", "properties": {}},
                    **({"strict": t.extra["strict"]} if "strict" in t.extra else {}),
                },
            }
            for t in req.tools
        ]
    if req.tool_choice is not None:
        tc = req.tool_choice
        ctype = tc.get("type")
        if ctype == "tool":
            body["tool_choice"] = {"type": "function", "function": {"name": tc.get("name")}}
        elif ctype in ("auto", "none"):
            body["tool_choice"] = ctype
        elif ctype == "any":
            body["tool_choice"] = "required"
        if tc.get("disable_parallel_tool_use") and req.tools:
            body["parallel_tool_calls"] = False
    if req.response_format is not None:
        rf = req.response_format
        if rf.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        else:
            spec: dict[str, Any] = {"name": rf.name or "response", "schema": rf.schema or {"type": "object"}}
            if rf.strict is not None:
                spec["strict"] = rf.strict
            body["response_format"] = {"type": "json_schema", "json_schema": spec}
    if req.metadata and req.client_format in ("openai", "responses"):
        body["metadata"] = {k: v for k, v in req.metadata.items() if k != "user_id"} or None
        if body["metadata"] is None:
            del body["metadata"]
        if isinstance(req.metadata.get("user_id"), str):
            body["user"] = req.metadata["user_id"]
    if req.client_format == "openai":
        body.update(req.extra)  # unknown fields pass through to the same format
    return body


# ---- provider side: OpenAI response → canonical ------------------------------------------------------------


def parse_usage(u: dict[str, Any] | None) -> Usage:
    if not u:
        return Usage()
    details = u.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_write_tokens") or 0
    prompt = u.get("prompt_tokens") or 0
    return Usage(
        input_tokens=max(prompt - cached - written, 0),
        output_tokens=u.get("completion_tokens") or 0,
        cache_write_5m_tokens=written,
        cache_read_tokens=cached,
    )


def parse_response(data: dict[str, Any]) -> ChatResponse:
    choices = data.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[Block] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    elif message.get("refusal"):
        content.append({"type": "text", "text": message["refusal"]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {"_unparsed_arguments": fn.get("arguments")}
        content.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": args})
    finish = choice.get("finish_reason")
    return ChatResponse(
        id=data.get("id") or "chatcmpl-unknown",
        model=data.get("model") or "",
        content=content,
        stop_reason=STOP_FROM_FINISH.get(finish or "stop", "end_turn"),
        usage=parse_usage(data.get("usage")),
        created=data.get("created") or int(time.time()),
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

    def feed(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = [] if self.started else self._start(chunk)
        if chunk.get("usage"):
            self.usage = parse_usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
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
                    )
                )
            for call in delta.get("tool_calls") or []:
                oi = call.get("index", 0)
                fn = call.get("function") or {}
                if oi not in self.tool_blocks:
                    block: Block = {
                        "type": "tool_use",
                        "id": call.get("id") or f"call_{oi}",
                        "name": fn.get("name") or "",
                        "input": {},
                    }
                    events += self._open("tool", block)
                    self.tool_blocks[oi] = self.block_index
                args = fn.get("arguments")
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
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
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
