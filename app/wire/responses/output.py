"""Canonical answer → the Responses API ``Response`` object (shapes from the openai SDK's ``Response``).

Shared by the complete answer and the stream (whose lifecycle events carry the same object), so both
name items the same way: a run of text blocks is one ``message`` item with one ``output_text`` part
per block, and each ``tool_use`` block is one ``function_call`` item.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.domain import Block, ChatRequest, ChatResponse, Usage

# Anthropic stop reasons that make a response "incomplete", and the reason the SDK knows them by.
INCOMPLETE_REASONS = {
    "max_tokens": "max_output_tokens",
    "model_context_window_exceeded": "max_output_tokens",
    "refusal": "content_filter",
}
_ID_PREFIXES = ("resp_", "msg_", "chatcmpl-")


def id_base(source_id: str) -> str:
    """The distinctive part of an upstream id, reused for the response and its items."""
    for prefix in _ID_PREFIXES:
        if source_id.startswith(prefix):
            return source_id[len(prefix) :] or "0"
    return source_id or "0"


def message_item_id(base: str, output_index: int) -> str:
    return f"msg_{base}_{output_index}"


def function_item_id(base: str, output_index: int) -> str:
    return f"fc_{base}_{output_index}"


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": parts}


def function_call_item(item_id: str, block: Block, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": block.get("id") or item_id,
        "name": block.get("name") or "",
        "arguments": arguments,
        "status": status,
    }


def output_items(content: list[Block], base: str, *, message_status: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    open_message: dict[str, Any] | None = None
    for block in content:
        btype = block.get("type")
        if btype == "text":
            if open_message is None:
                open_message = message_item(message_item_id(base, len(items)), [], message_status)
                items.append(open_message)
            open_message["content"].append(output_text_part(block.get("text", "")))
        elif btype == "tool_use":
            open_message = None
            arguments = orjson.dumps(block.get("input") or {}).decode()
            items.append(function_call_item(function_item_id(base, len(items)), block, arguments, "completed"))
        # Thinking and other provider-specific blocks have no Responses item Tollway can vouch for.
    return items


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def status_of(stop_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    """(status, incomplete_details) for a canonical stop reason."""
    reason = INCOMPLETE_REASONS.get(stop_reason or "")
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def response_object(
    req: ChatRequest,
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    incomplete_details: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    completed_at: int | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": incomplete_details,
        "model": model,
        "output": output,
        "usage": usage_json(usage) if usage is not None else None,
        "previous_response_id": None,
        "store": False,  # stateless: nothing can be retrieved later
        "background": False,
        "completed_at": completed_at,
    }
    body.update(request_echo(req))
    return body


def request_echo(req: ChatRequest) -> dict[str, Any]:
    """The request parameters a ``Response`` repeats back, rebuilt from the canonical request."""
    metadata = dict(req.metadata or {})
    user = metadata.pop("user_id", None)
    choice = req.tool_choice or {}
    return {
        "instructions": "\n\n".join(b.get("text", "") for b in req.system if b.get("type") == "text") or None,
        "tools": [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": t.input_schema,
                "strict": t.extra.get("strict"),
            }
            for t in req.tools
        ],
        "tool_choice": _tool_choice_echo(choice),
        "parallel_tool_calls": not choice.get("disable_parallel_tool_use", False),
        "text": {"format": _format_echo(req)},
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_output_tokens": req.max_tokens,
        "metadata": metadata,
        "user": user if isinstance(user, str) else None,
    }


def _tool_choice_echo(choice: dict[str, Any]) -> Any:
    ctype = choice.get("type")
    if ctype == "tool":
        return {"type": "function", "name": choice.get("name")}
    if ctype == "any":
        return "required"
    return "none" if ctype == "none" else "auto"


def _format_echo(req: ChatRequest) -> dict[str, Any]:
    rf = req.response_format
    if rf is None:
        return {"type": "text"}
    if rf.type == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "name": rf.name or "response", "schema": rf.schema or {}, "strict": rf.strict}


def response_json(resp: ChatResponse, req: ChatRequest) -> dict[str, Any]:
    """The complete ``Response`` for a finished canonical answer."""
    base = id_base(resp.id)
    status, incomplete = status_of(resp.stop_reason)
    return response_object(
        req,
        response_id=f"resp_{base}",
        created_at=resp.created,
        model=resp.model,
        status=status,
        output=output_items(resp.content, base, message_status=status),
        usage=resp.usage,
        incomplete_details=incomplete,
        completed_at=resp.created,
    )
