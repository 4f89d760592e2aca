"""OpenAI Chat Completions, client side: an OpenAI-format request → canonical, canonical → response/chunks."""

from __future__ import annotations

import time
from typing import Any

import orjson

from app.domain import Block, ChatRequest, ChatResponse, Message, ResponseFormat, StreamEvent, Tool, Usage
from app.errors import invalid

_KNOWN_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "stream",
        "stream_options",
        "stop",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "metadata",
        "seed",
        "n",
        "user",
        "logprobs",
        "top_logprobs",
    }
)
MAX_TOP_LOGPROBS = 20  # OpenAI's documented range is 0-20

FINISH_FROM_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}

# ---- client side: OpenAI request → canonical ----------------------------------------------------------


def data_url_source(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0] or "application/octet-stream"
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": url}


def _user_parts(content: Any, where: str) -> list[Block]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list):
        raise invalid(f"{where}: content must be a string or an array of content parts", where)
    blocks: list[Block] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            raise invalid(f"{where}[{i}]: content parts must be objects", where)
        ptype = part.get("type")
        if ptype == "text":
            if not isinstance(part.get("text"), str):
                raise invalid(f"{where}[{i}].text: must be a string", where)
            blocks.append({"type": "text", "text": part["text"]})
        elif ptype == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str):
                raise invalid(f"{where}[{i}].image_url.url: must be a string", where)
            blocks.append({"type": "image", "source": data_url_source(url)})
        elif ptype == "file":
            file: dict[str, Any] = part["file"] if isinstance(part.get("file"), dict) else {}
            if isinstance(file.get("file_data"), str):
                source = data_url_source(file["file_data"])
            elif isinstance(file.get("file_id"), str):
                source = {"type": "file", "file_id": file["file_id"]}
            else:
                raise invalid(f"{where}[{i}].file: needs file_data or file_id", where)
            doc: Block = {"type": "document", "source": source}
            if isinstance(file.get("filename"), str):
                doc["title"] = file["filename"]
            blocks.append(doc)
        else:
            raise invalid(f"{where}[{i}].type: content part type '{ptype}' is not supported", where)
    return blocks


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in _user_parts(content, where) if b["type"] == "text")
    if content is None:
        return ""
    raise invalid(f"{where}: content must be a string or an array of text parts", where)


def _append(messages: list[Message], role: str, blocks: list[Block]) -> None:
    # Consecutive same-role turns merge (the Messages API requires alternation); tool results first.
    if messages and messages[-1].role == role:
        messages[-1].content.extend(blocks)
    else:
        messages.append(Message(role=role, content=blocks))  # type: ignore[arg-type]


def _conversation(raw_messages: list[Any]) -> tuple[list[Block], list[Message]]:
    """OpenAI messages → the canonical system prompt and turns (tool messages become tool_result
    blocks in a user turn, tool_calls become tool_use blocks)."""
    system: list[Block] = []
    messages: list[Message] = []
    for i, m in enumerate(raw_messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"{where}: must be an object", "messages")
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            text = _text_of(content, f"{where}.content")
            if text:  # the Messages API rejects empty text blocks
                system.append({"type": "text", "text": text})
        elif role == "user":
            _append(messages, "user", _user_parts(content, f"{where}.content"))
        elif role == "assistant":
            blocks: list[Block] = []
            text = _text_of(content, f"{where}.content")
            if text:
                blocks.append({"type": "text", "text": text})
            for j, call in enumerate(m.get("tool_calls") or []):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise invalid(f"{where}.tool_calls[{j}]: needs function.name", "messages")
                try:
                    args = orjson.loads(fn.get("arguments") or "{}")
                except orjson.JSONDecodeError as exc:
                    raise invalid(
                        f"{where}.tool_calls[{j}].function.arguments: not valid JSON", "messages"
                    ) from exc
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id") or f"call_{i}_{j}",
                        "name": fn["name"],
                        "input": args,
                    }
                )
            if blocks:  # an empty assistant turn says nothing, and an empty text block is a 400
                _append(messages, "assistant", blocks)
        elif role in ("tool", "function"):
            tool_call_id = m.get("tool_call_id") or m.get("name")
            if not isinstance(tool_call_id, str):
                raise invalid(f"{where}.tool_call_id: required for tool messages", "messages")
            result: Block = {
                "type": "tool_result",
                "tool_use_id": tool_call_id,
                "content": _text_of(content, f"{where}.content"),
            }
            _append(messages, "user", [result])
        else:
            raise invalid(f"{where}.role: '{role}' is not a valid role", "messages")
    return system, messages


def _tools(raw: Any) -> list[Tool]:
    tools: list[Tool] = []
    if not isinstance(raw, list):
        raise invalid("tools: must be an array", "tools")
    for i, t in enumerate(raw):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid(f"tools[{i}]: needs type 'function' and function.name", "tools")
        extra = {"strict": fn["strict"]} if fn.get("strict") is not None else {}
        tools.append(
            Tool(
                name=fn["name"],
                description=fn.get("description"),
                input_schema=fn.get("parameters") or {"type": "object", "properties": {}},
                extra=extra,
            )
        )
    return tools


def _stop_sequences(stop: Any) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if stop is None:
        return []
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise invalid("stop: must be a string or an array of strings", "stop")


def parse_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("you must provide a model parameter", "model")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise invalid("messages: must be a non-empty array", "messages")
    n = body.get("n")
    if n not in (None, 1):
        raise invalid("n: only n=1 is supported by Tollway", "n")

    system, messages = _conversation(raw_messages)

    max_tokens_name = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    max_tokens = body.get(max_tokens_name)
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise invalid(f"{max_tokens_name}: must be a positive integer", max_tokens_name)

    stop_sequences = _stop_sequences(body.get("stop"))

    tools = _tools(body.get("tools") or [])
    tool_choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"), bool(tools))
    response_format = _response_format(body.get("response_format"))

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream: must be a boolean", "stream")
    stream_options = body.get("stream_options") or {}
    include_usage = bool(stream_options.get("include_usage")) if isinstance(stream_options, dict) else False

    temperature = body.get("temperature")
    top_p = body.get("top_p")
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise invalid(f"{name}: must be a number", name)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise invalid("seed: must be an integer", "seed")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise invalid("metadata: must be an object", "metadata")
    if isinstance(body.get("user"), str):
        metadata = {**(metadata or {}), "user_id": body["user"]}

    logprobs, top_logprobs = _logprobs(body.get("logprobs"), body.get("top_logprobs"))
    extra = {k: v for k, v in body.items() if k not in _KNOWN_FIELDS}
    return ChatRequest(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        client_format="openai",
        system=system,
        stream=stream,
        stop_sequences=stop_sequences,
        temperature=float(temperature) if temperature is not None else None,
        top_p=float(top_p) if top_p is not None else None,
        tools=tools,
        tool_choice=tool_choice,
        response_format=response_format,
        metadata=metadata,
        seed=seed,
        include_usage=include_usage,
        extra=extra,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def _logprobs(logprobs: Any, top_logprobs: Any) -> tuple[bool, int | None]:
    """``logprobs``/``top_logprobs``, checked as OpenAI checks them (whether the model can return
    them is the router's question)."""
    if logprobs is not None and not isinstance(logprobs, bool):
        raise invalid("logprobs: must be a boolean", "logprobs")
    if top_logprobs is None:
        return bool(logprobs), None
    if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise invalid(f"top_logprobs: must be an integer from 0 to {MAX_TOP_LOGPROBS}", "top_logprobs")
    if not logprobs:
        raise invalid("top_logprobs: requires logprobs: true", "top_logprobs")
    return True, top_logprobs


def _tool_choice(choice: Any, parallel: Any, has_tools: bool) -> dict[str, Any] | None:
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif choice == "none":
        result = {"type": "none"}
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        result = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise invalid(
            "tool_choice: must be 'none', 'auto', 'required' or {type: 'function', function: {name}}",
            "tool_choice",
        )
    # Without tools there is nothing to parallelise, and upstreams reject a lone tool_choice.
    if parallel is False and (result is not None or has_tools):
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
    return result


def _response_format(fmt: Any) -> ResponseFormat | None:
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise invalid("response_format: must be an object", "response_format")
    ftype = fmt.get("type")
    if ftype == "text":
        return None
    if ftype == "json_object":
        return ResponseFormat(type="json_object")
    if ftype == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise invalid("response_format.json_schema: needs a 'name'", "response_format")
        return ResponseFormat(
            type="json_schema", schema=spec.get("schema"), name=spec["name"], strict=spec.get("strict")
        )
    raise invalid(f"response_format.type: '{ftype}' is not supported", "response_format")


# ---- client side: canonical → OpenAI response -----------------------------------------------------------


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _chat_id(resp_id: str) -> str:
    return resp_id if resp_id.startswith("chatcmpl-") else f"chatcmpl-{resp_id}"


def response_json(resp: ChatResponse) -> dict[str, Any]:
    texts = [b.get("text", "") for b in resp.content if b.get("type") == "text"]
    tool_calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {"name": b.get("name"), "arguments": orjson.dumps(b.get("input", {})).decode()},
        }
        for b in resp.content
        if b.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": _chat_id(resp.id),
        "object": "chat.completion",
        "created": resp.created,
        "model": resp.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": FINISH_FROM_STOP.get(resp.stop_reason or "end_turn", "stop"),
                "logprobs": resp.logprobs,
            }
        ],
        "usage": usage_json(resp.usage),
    }


def encode_response(resp: ChatResponse) -> bytes:
    return orjson.dumps(response_json(resp))


class ChunkEncoder:
    """Canonical stream events → OpenAI ``chat.completion.chunk`` SSE lines, one event at a time."""

    def __init__(self, *, include_usage: bool, model: str) -> None:
        self.include_usage = include_usage
        self.model = model
        self.id = "chatcmpl-stream"
        self.created = int(time.time())
        self.usage = Usage()
        self.stop_reason: str | None = None
        self._tool_index: dict[int, int] = {}  # content block index → tool_calls index

    def _chunk(
        self, delta: dict[str, Any], finish: str | None = None, logprobs: dict[str, Any] | None = None
    ) -> bytes:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def encode(self, event: StreamEvent) -> bytes:
        data = event.data
        etype = event.type
        if etype == "content_block_delta":
            delta = data.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return self._chunk({"content": delta.get("text", "")}, logprobs=event.logprobs)
            if dtype == "input_json_delta":
                idx = self._tool_index.get(data.get("index", -1))
                if idx is None:
                    return b""
                return self._chunk(
                    {"tool_calls": [{"index": idx, "function": {"arguments": delta.get("partial_json", "")}}]}
                )
            return b""
        if etype == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                idx = len(self._tool_index)
                self._tool_index[data.get("index", 0)] = idx
                call = {
                    "index": idx,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return self._chunk({"tool_calls": [call]})
            return b""
        if etype == "message_start":
            message = data.get("message") or {}
            if message.get("id"):
                self.id = _chat_id(message["id"])
            from app.wire.anthropic import parse_usage

            self.usage = parse_usage(message.get("usage"))
            return self._chunk({"role": "assistant", "content": ""})
        if etype == "message_delta":
            from app.wire.anthropic import merge_stream_usage

            self.stop_reason = (data.get("delta") or {}).get("stop_reason") or self.stop_reason
            if data.get("usage"):
                merge_stream_usage(self.usage, data["usage"])
            return b""
        if etype == "message_stop":
            out = self._chunk({}, FINISH_FROM_STOP.get(self.stop_reason or "end_turn", "stop"))
            if self.include_usage:
                usage_chunk = {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": usage_json(self.usage),
                }
                out += b"data: " + orjson.dumps(usage_chunk) + b"\n\n"
            return out + b"data: [DONE]\n\n"
        if etype == "ping":
            return b": ping\n\n"
        return b""


