"""Does an answer pass? The check behind the escalation cascade.

``verify`` returns None when the answer may go to the client, or why it fails:

* ``refusal`` — the model refused: ``stop_reason == "refusal"`` (Anthropic; OpenAI's
  ``content_filter`` is translated to it), a ``stop_details`` of type refusal, an OpenAI ``refusal``
  block, or a short answer that is nothing but a stock refusal ("I'm sorry, but I can't help with
  that."). The phrase check is deliberately narrow: it only fires on short answers that *open* with
  a refusal of the task, so "I can't find that in the document" is not one.
* With structured output requested (``response_format``), on the concatenated text blocks:
  * ``truncated_structured_output`` — ``stop_reason == "max_tokens"`` and the text does not parse:
    the JSON was cut off mid-way (a complete document that happens to end at the limit passes on);
  * ``invalid_json`` — the text is not one JSON document (code fences count as invalid: the client
    asked for JSON and would fail to parse them too);
  * ``schema_mismatch`` — ``json_schema`` was requested and the document does not match it (the full
    standard, through ``jsonschema``: ``app/routing/schema_check.py``); ``json_object`` requires an object.

Verification only looks at the answer; it never calls a model.
"""

from __future__ import annotations

import re

import orjson

from app.domain import ChatRequest, ChatResponse
from app.routing.schema_check import schema_mismatch

_REFUSAL_MAX_CHARS = 400
_REFUSAL = re.compile(
    r"^\s*(?:(?:i'm|i am|i’m)\s+sorry|sorry|unfortunately|apologies)?[,.!]?\s*(?:but\s+)?"
    r"(?:i|we)\s*(?:can't|can’t|cannot|won't|won’t|will not|am unable to|'m unable to|’m unable to|"
    r"am not able to|must decline to)\s+"
    r"(?:help|assist|comply|provide|do that|do this|fulfil|fulfill|answer that|write that|"
    r"create that|generate|engage|support that|continue)",
    re.IGNORECASE,
)


def _text_of(resp: ChatResponse) -> str:
    parts = [b.get("text", "") for b in resp.content if b.get("type") == "text"]
    return "".join(p for p in parts if isinstance(p, str))


def is_refusal(resp: ChatResponse) -> bool:
    if resp.stop_reason == "refusal":
        return True
    details = resp.extra.get("stop_details")
    if isinstance(details, dict) and details.get("type") == "refusal":
        return True
    if any(b.get("type") == "refusal" for b in resp.content):
        return True
    if any(b.get("type") == "tool_use" for b in resp.content):
        return False
    text = _text_of(resp)
    return len(text) <= _REFUSAL_MAX_CHARS and _REFUSAL.match(text) is not None


def verify(req: ChatRequest, resp: ChatResponse) -> str | None:
    """None when ``resp`` passes; else ``refusal``, ``truncated_structured_output``,
    ``invalid_json`` or ``schema_mismatch``."""
    if is_refusal(resp):
        return "refusal"
    fmt = req.response_format
    if fmt is None:
        return None
    text = _text_of(resp)
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "truncated_structured_output" if resp.stop_reason == "max_tokens" else "invalid_json"
    if fmt.type == "json_object":
        return None if isinstance(document, dict) else "schema_mismatch"
    if fmt.schema is not None and schema_mismatch(document, fmt.schema) is not None:
        return "schema_mismatch"
    return None


def mismatch_detail(req: ChatRequest, resp: ChatResponse) -> str | None:
    """The schema validator's description of the first mismatch (for logs), when there is one."""
    fmt = req.response_format
    if fmt is None or fmt.schema is None:
        return None
    try:
        document = orjson.loads(_text_of(resp))
    except orjson.JSONDecodeError:
        return None
    return schema_mismatch(document, fmt.schema)
