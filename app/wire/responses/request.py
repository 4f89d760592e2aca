"""A Responses API request body → the canonical ``ChatRequest``.

Field names and item shapes follow the openai SDK's ``ResponseCreateParams``. No provider speaks this
format natively, so nothing can pass through untouched: a field is either translated, accepted and
ignored (listed in ``IGNORED_FIELDS``, documented in docs/responses.md), or refused with a 400.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.domain import Block, ChatRequest, Message, ResponseFormat, Tool
from app.errors import invalid
from app.wire.openai.client import data_url_source

STATELESS = "Tollway is stateless; send the full input"

# Accepted and ignored: they change nothing about the answer Tollway can give (see docs/responses.md).
IGNORED_FIELDS = frozenset(
    {
        "store",  # nothing is stored either way
        "include",  # only extra output of built-in tools and reasoning; logprobs are refused below
        "truncation",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "stream_options",
        "max_tool_calls",  # counts built-in tool calls, and built-in tools are refused
        "reasoning",
    }
)
_TRANSLATED_FIELDS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "max_output_tokens",
        "temperature",
        "top_p",
        "stream",
        "metadata",
        "user",
        "safety_identifier",
        "top_logprobs",
        "background",
    }
)
# Fields whose any non-empty value is refused, with the reason.
_REFUSED_FIELDS = {
    "previous_response_id": f"previous_response_id is not supported: {STATELESS}",
    "conversation": f"conversation is not supported: {STATELESS}",
    "prompt": "prompt (stored prompt templates) is not supported: send instructions and input instead",
    "context_management": "context_management (server-side compaction) is not supported by Tollway",
}
_REASONING_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh", "max"})
_LOGPROBS = "logprobs are not available through Tollway's /v1/responses"


def parse_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    _refuse_unsupported(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("you must provide a model parameter", "model")

    system: list[Block] = []
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise invalid("instructions: must be a string", "instructions")
    if instructions:
        system.append({"type": "text", "text": instructions})
    messages = _input(body.get("input"), system)

    tools = _tools(body.get("tools"))
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise invalid("max_output_tokens: must be a positive integer", "max_output_tokens")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream: must be a boolean", "stream")
    temperature, top_p = _number(body, "temperature"), _number(body, "top_p")
    _check_reasoning(body.get("reasoning"))
    return ChatRequest(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        client_format="responses",
        system=system,
        stream=bool(stream),
        temperature=temperature,
        top_p=top_p,
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"), bool(tools)),
        response_format=_text_format(body.get("text")),
        metadata=_metadata(body),
    )


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name in body:
        if name not in _TRANSLATED_FIELDS and name not in IGNORED_FIELDS and name not in _REFUSED_FIELDS:
            raise invalid(f"{name}: unknown parameter for /v1/responses", name)
    for name, reason in _REFUSED_FIELDS.items():
        if body.get(name) not in (None, "", [], {}):
            raise invalid(reason, name)
    if body.get("background"):
        raise invalid("background responses are not supported: Tollway does not store responses", "background")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs not in (None, 0):
        raise invalid(f"top_logprobs: {_LOGPROBS}", "top_logprobs")
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list) or not all(isinstance(i, str) for i in include):
            raise invalid("include: must be an array of strings", "include")
        if "message.output_text.logprobs" in include:
            raise invalid(f"include: {_LOGPROBS}", "include")


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(f"{name}: must be a number", name)
    return float(value)


def _check_reasoning(reasoning: Any) -> None:
    """``reasoning`` is accepted and ignored (docs/responses.md), but a malformed one is still a 400."""
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        raise invalid("reasoning: must be an object", "reasoning")
    effort = reasoning.get("effort")
    if effort is not None and effort not in _REASONING_EFFORTS:
        raise invalid(f"reasoning.effort: must be one of {', '.join(sorted(_REASONING_EFFORTS))}", "reasoning")


def _metadata(body: dict[str, Any]) -> dict[str, Any] | None:
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise invalid("metadata: must be an object", "metadata")
    # The end-user id travels as metadata.user_id, the canonical place both upstream kinds read it from.
    for name in ("user", "safety_identifier"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise invalid(f"{name}: must be a string", name)
        if value and "user_id" not in (metadata or {}):
            metadata = {**(metadata or {}), "user_id": value}
    return metadata


# ---- input items ---------------------------------------------------------------------------------------


def _input(raw: Any, system: list[Block]) -> list[Message]:
    if isinstance(raw, str):
        if not raw:
            raise invalid("input: must not be empty", "input")
        return [Message(role="user", content=[{"type": "text", "text": raw}])]
    if not isinstance(raw, list) or not raw:
        raise invalid("input: must be a non-empty string or a non-empty array of input items", "input")
    messages: list[Message] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"{where}: must be an object", "input")
        itype = item.get("type") or "message"
        if itype == "message":
            _message(item, where, system, messages)
        elif itype == "function_call":
            _append(messages, "assistant", [_function_call(item, where)])
        elif itype == "function_call_output":
            _append(messages, "user", [_function_call_output(item, where)])
        elif itype == "reasoning":
            continue  # opaque to any model but the one that wrote it; see docs/responses.md
        elif itype == "item_reference":
            raise invalid(f"{where}: item references are not supported: {STATELESS}", "input")
        else:
            raise invalid(
                f"{where}.type: '{itype}' items are not supported (Tollway serves function tools only)", "input"
            )
    if not messages:
        raise invalid("input: must contain at least one user, assistant or tool item", "input")
    return messages


def _append(messages: list[Message], role: str, blocks: list[Block]) -> None:
    # Consecutive same-role turns merge: the Messages API requires roles to alternate.
    if not blocks:
        return
    if messages and messages[-1].role == role:
        messages[-1].content.extend(blocks)
    else:
        messages.append(Message(role=role, content=blocks))  # type: ignore[arg-type]


def _message(item: dict[str, Any], where: str, system: list[Block], messages: list[Message]) -> None:
    role = item.get("role")
    content = item.get("content")
    if role in ("system", "developer"):
        parts = _parts(content, f"{where}.content")
        if any(b["type"] != "text" for b in parts):
            raise invalid(f"{where}.content: {role} messages may hold text only", "input")
        system.extend(b for b in parts if b["text"])
    elif role == "user":
        _append(messages, "user", [b for b in _parts(content, f"{where}.content") if _non_empty(b)])
    elif role == "assistant":
        _append(messages, "assistant", [b for b in _parts(content, f"{where}.content") if _non_empty(b)])
    else:
        raise invalid(f"{where}.role: must be 'user', 'assistant', 'system' or 'developer'", "input")


def _non_empty(block: Block) -> bool:
    return block["type"] != "text" or bool(block["text"])  # the Messages API rejects empty text blocks


def _parts(content: Any, where: str) -> list[Block]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise invalid(f"{where}: must be a string or an array of content parts", "input")
    return [_part(part, f"{where}[{j}]") for j, part in enumerate(content)]


def _part(part: Any, where: str) -> Block:
    if not isinstance(part, dict):
        raise invalid(f"{where}: content parts must be objects", "input")
    ptype = part.get("type")
    if ptype in ("input_text", "output_text", "text"):
        if not isinstance(part.get("text"), str):
            raise invalid(f"{where}.text: must be a string", "input")
        return {"type": "text", "text": part["text"]}
    if ptype == "refusal":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if ptype == "input_image":
        if isinstance(part.get("image_url"), str):
            return {"type": "image", "source": data_url_source(part["image_url"])}
        if isinstance(part.get("file_id"), str):
            return {"type": "image", "source": {"type": "file", "file_id": part["file_id"]}}
        raise invalid(f"{where}: input_image needs image_url or file_id", "input")
    if ptype == "input_file":
        return _file(part, where)
    raise invalid(f"{where}.type: content part type '{ptype}' is not supported", "input")


def _file(part: dict[str, Any], where: str) -> Block:
    data = part.get("file_data")
    if isinstance(data, str):
        source = (
            data_url_source(data)
            if data.startswith("data:")
            else {
                "type": "base64",
                "media_type": "application/pdf",
                "data": data,
            }
        )
    elif isinstance(part.get("file_url"), str):
        source = {"type": "url", "url": part["file_url"]}
    elif isinstance(part.get("file_id"), str):
        source = {"type": "file", "file_id": part["file_id"]}
    else:
        raise invalid(f"{where}: input_file needs file_data, file_url or file_id", "input")
    doc: Block = {"type": "document", "source": source}
    if isinstance(part.get("filename"), str):
        doc["title"] = part["filename"]
    return doc


def _function_call(item: dict[str, Any], where: str) -> Block:
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise invalid(f"{where}: a function_call item needs call_id and name", "input")
    arguments = item.get("arguments")
    try:
        args = orjson.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except orjson.JSONDecodeError as exc:
        raise invalid(f"{where}.arguments: not valid JSON", "input") from exc
    if not isinstance(args, dict):
        raise invalid(f"{where}.arguments: must encode a JSON object", "input")
    return {"type": "tool_use", "id": call_id, "name": name, "input": args}


def _function_call_output(item: dict[str, Any], where: str) -> Block:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid(f"{where}: a function_call_output item needs call_id", "input")
    output = item.get("output")
    content: str | list[Block]
    if isinstance(output, str):
        content = output
    elif isinstance(output, list):
        content = [b for b in _parts(output, f"{where}.output") if _non_empty(b)]
    else:
        raise invalid(f"{where}.output: must be a string or an array of content parts", "input")
    return {"type": "tool_result", "tool_use_id": call_id, "content": content}


# ---- tools and output format ---------------------------------------------------------------------------


def _tools(raw: Any) -> list[Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid("tools: must be an array", "tools")
    if not all(isinstance(t, dict) for t in raw):
        raise invalid("tools: each tool must be an object", "tools")
    built_in = sorted({str(t.get("type")) for t in raw if t.get("type") != "function"})
    if built_in:
        raise invalid(
            f"tools: built-in tools are not supported by Tollway (only type 'function'): {', '.join(built_in)}",
            "tools",
        )
    tools: list[Tool] = []
    for i, t in enumerate(raw):
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise invalid(f"tools[{i}].name: required", "tools")
        parameters = t.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise invalid(f"tools[{i}].parameters: must be a JSON Schema object", "tools")
        description = t.get("description")
        tools.append(
            Tool(
                name=t["name"],
                description=description if isinstance(description, str) else None,
                input_schema=parameters or {"type": "object", "properties": {}},
                extra={"strict": t["strict"]} if isinstance(t.get("strict"), bool) else {},
            )
        )
    return tools


def _tool_choice(choice: Any, parallel: Any, has_tools: bool) -> dict[str, Any] | None:
    result: dict[str, Any] | None
    if choice is None:
        result = None
    elif choice in ("none", "auto"):
        result = {"type": choice}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        result = {"type": "tool", "name": choice["name"]}
    elif isinstance(choice, dict) and isinstance(choice.get("type"), str):
        raise invalid(f"tool_choice: type '{choice['type']}' is not supported (Tollway serves function tools only)")
    else:
        raise invalid("tool_choice: must be 'none', 'auto', 'required' or {type: 'function', name}", "tool_choice")
    if parallel is not None and not isinstance(parallel, bool):
        raise invalid("parallel_tool_calls: must be a boolean", "parallel_tool_calls")
    # Without tools there is nothing to parallelise, and upstreams reject a lone tool_choice.
    if parallel is False and (result is not None or has_tools):
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
    return result


def _text_format(text: Any) -> ResponseFormat | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise invalid("text: must be an object", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise invalid("text.format: must be an object", "text")
    ftype = fmt.get("type")
    if ftype == "text":
        return None
    if ftype == "json_object":
        return ResponseFormat(type="json_object")
    if ftype == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise invalid("text.format: json_schema needs a 'name' and a 'schema' object", "text")
        strict = fmt.get("strict")
        return ResponseFormat(
            type="json_schema",
            schema=fmt["schema"],
            name=fmt["name"],
            strict=strict if isinstance(strict, bool) else None,
        )
    raise invalid(f"text.format.type: '{ftype}' is not supported (text, json_object or json_schema)", "text")
