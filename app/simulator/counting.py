"""Deterministic token counts for simulated requests and replies.

The rules (documented in docs/simulator.md) are chosen so that a count never exceeds the UTF-8 byte
length of what the model reads plus the gateway's per-message/per-request overheads in
``app/tokens.py``: every text piece counts ``ceil(bytes / 4)`` (at most its byte length), a message
adds 3 (the gateway budgets 8), a request adds 5 (the gateway budgets 16), and images/documents
count ``min(85, ceil(json / 4))`` (the gateway budgets their full JSON size).
"""

from __future__ import annotations

from typing import Any

import orjson

PER_MESSAGE_TOKENS = 3
PER_REQUEST_TOKENS = 5
MAX_MEDIA_TOKENS = 85
TOOL_CALL_OVERHEAD_TOKENS = 5


def quarter(n_bytes: int) -> int:
    """``ceil(n_bytes / 4)``: the simulator's bytes-to-tokens rule."""
    return (n_bytes + 3) // 4


def text_tokens(text: str) -> int:
    return quarter(len(text) if text.isascii() else len(text.encode()))


def json_tokens(value: Any) -> int:
    return quarter(len(orjson.dumps(value)))


def without_cache_control(obj: dict[str, Any]) -> dict[str, Any]:
    if "cache_control" not in obj:
        return obj
    return {k: v for k, v in obj.items() if k != "cache_control"}


def media_tokens(block: dict[str, Any]) -> int:
    return min(MAX_MEDIA_TOKENS, json_tokens(without_cache_control(block)))


def _utf8_length(value: Any) -> int:
    return len(value.encode()) if isinstance(value, str) else 0


def tool_definition_tokens(tool: dict[str, Any]) -> int:
    """``ceil(json / 4)`` of the definition, capped at the bytes of what the model reads of it (name,
    description, schema): only degenerate one-letter tools ever hit the cap, and it keeps the count
    within the gateway's byte budget whatever the JSON envelope costs (OpenAI's is ~30 bytes)."""
    function = tool.get("function")
    definition = function if isinstance(function, dict) else tool
    schema = definition.get("input_schema", definition.get("parameters"))
    readable = (
        _utf8_length(definition.get("name"))
        + _utf8_length(definition.get("description"))
        + (len(orjson.dumps(schema)) if schema is not None else 2)
    )
    return min(json_tokens(without_cache_control(tool)), readable)


def tool_call_output_tokens(arguments_json: str) -> int:
    return quarter(len(arguments_json)) + TOOL_CALL_OVERHEAD_TOKENS


# ---- Anthropic content ------------------------------------------------------------------------------


def anthropic_block_tokens(block: Any) -> int:
    if not isinstance(block, dict):
        return 0
    btype = block.get("type")
    if btype == "text":
        text = block.get("text")
        return text_tokens(text) if isinstance(text, str) else 0
    if btype in ("image", "document"):
        return media_tokens(block)
    if btype == "tool_use":
        name = block.get("name")
        return (text_tokens(name) if isinstance(name, str) else 0) + json_tokens(block.get("input", {}))
    if btype == "tool_result":
        return anthropic_content_tokens(block.get("content"))
    if btype == "thinking":
        thinking = block.get("thinking")
        return text_tokens(thinking) if isinstance(thinking, str) else 0
    # redacted_thinking, search_result, server tool blocks, unknown blocks: their JSON size.
    return json_tokens(without_cache_control(block))


def anthropic_content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        return sum(anthropic_block_tokens(b) for b in content)
    return 0


# ---- OpenAI content ---------------------------------------------------------------------------------


def openai_part_tokens(part: Any) -> int:
    if not isinstance(part, dict):
        return 0
    ptype = part.get("type")
    if ptype == "text":
        text = part.get("text")
        return text_tokens(text) if isinstance(text, str) else 0
    if ptype == "refusal":
        refusal = part.get("refusal")
        return text_tokens(refusal) if isinstance(refusal, str) else 0
    # image_url, input_audio, file and unknown parts.
    return media_tokens(part)


def openai_message_tokens(message: dict[str, Any]) -> int:
    total = PER_MESSAGE_TOKENS
    content = message.get("content")
    if isinstance(content, str):
        total += text_tokens(content)
    elif isinstance(content, list):
        total += sum(openai_part_tokens(p) for p in content)
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                for key in ("name", "arguments"):
                    value = function.get(key)
                    if isinstance(value, str):
                        total += text_tokens(value)
    return total
