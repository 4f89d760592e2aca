"""Token estimates without a tokenizer.

Two numbers, for two purposes:

* ``request_bytes`` — an upper bound. A byte-level BPE tokenizer emits at most one token per byte of
  UTF-8 text, so the byte length of everything the model reads, plus a small per-message and per-block
  overhead for the chat template, bounds the input tokens. Strict budgets reserve this.
* ``estimate_tokens`` — a calibrated guess (bytes / 3.5, the newer Claude tokenizer's ratio on English
  and code with margin) for routing's expected cost and for non-strict budgets.

Images and documents are counted by the size of their JSON (base64 data is longer than the token
count providers bill for an image), which keeps the bound an upper bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from app.domain import Block, ChatRequest

PER_MESSAGE_OVERHEAD = 8
PER_BLOCK_OVERHEAD = 4
PER_REQUEST_OVERHEAD = 16
BYTES_PER_TOKEN_ESTIMATE = 3.5


def block_bytes(block: Block) -> int:
    btype = block.get("type")
    if btype == "text":
        return len(block.get("text", "").encode()) + PER_BLOCK_OVERHEAD
    if btype == "tool_result":
        content = block.get("content")
        if isinstance(content, str):
            return len(content.encode()) + PER_BLOCK_OVERHEAD + 16
        if isinstance(content, list):
            return sum(block_bytes(b) for b in content) + PER_BLOCK_OVERHEAD + 16
        return PER_BLOCK_OVERHEAD + 16
    if btype == "tool_use":
        return len(orjson.dumps(block.get("input", {}))) + len(block.get("name", "")) + 24
    if btype == "thinking":
        return len(block.get("thinking", "").encode()) + PER_BLOCK_OVERHEAD
    # image, document, unknown: their serialized size bounds what the provider can bill.
    return len(orjson.dumps(_strip_cache_control(block))) + PER_BLOCK_OVERHEAD


def _strip_cache_control(block: Block) -> dict[str, Any]:
    if "cache_control" not in block:
        return block
    return {k: v for k, v in block.items() if k != "cache_control"}


def request_bytes(req: ChatRequest) -> int:
    """An upper bound on the input tokens of ``req`` (see module docstring)."""
    total = PER_REQUEST_OVERHEAD
    for block in req.system:
        total += block_bytes(block)
    for msg in req.messages:
        total += PER_MESSAGE_OVERHEAD
        for block in msg.content:
            total += block_bytes(block)
    for tool in req.tools:
        total += (
            len(tool.name) + len((tool.description or "").encode()) + len(orjson.dumps(tool.input_schema))
        )
        total += PER_BLOCK_OVERHEAD
    if req.response_format and req.response_format.schema:
        total += len(orjson.dumps(req.response_format.schema))
    return total


def estimate_tokens(req: ChatRequest) -> int:
    """A calibrated estimate of the input tokens of ``req``."""
    return int(request_bytes(req) / BYTES_PER_TOKEN_ESTIMATE) + 1


def estimate_text_tokens(text: str) -> int:
    return int(len(text.encode()) / BYTES_PER_TOKEN_ESTIMATE) + 1
