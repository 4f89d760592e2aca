"""Watch a canonical event stream go by and learn what the ledger, budgets and caches need.

``StreamTracker.see`` is called for every event on the hot path, so it only reads the few fields
that carry usage and the stop reason; with ``keep_content`` it also rebuilds the full answer (for the
response cache and escalation checks).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from app.domain import Block, ChatResponse, StreamEvent, Usage
from app.wire.anthropic import merge_stream_usage, parse_usage


class StreamTracker:
    def __init__(self, *, keep_content: bool, clock: Any = time.perf_counter) -> None:
        self.usage = Usage()
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.message_id = ""
        self.model = ""
        self.first_token_at: float | None = None
        self.finished = False  # message_stop seen
        self.error: dict[str, Any] | None = None
        self.keep_content = keep_content
        self.deltas = 0  # content deltas seen: a floor on output tokens when a stream is cut
        self._clock = clock
        self._blocks: dict[int, Block] = {}
        self._partial_json: dict[int, list[str]] = {}

    def see(self, event: StreamEvent) -> None:
        etype = event.type
        if etype == "content_block_delta":
            self.deltas += 1
            if self.first_token_at is None:
                self.first_token_at = self._clock()
            if self.keep_content:
                self._delta(event.data)
        elif etype == "message_start":
            message = event.data.get("message") or {}
            self.usage = parse_usage(message.get("usage"))
            self.message_id = message.get("id") or ""
            self.model = message.get("model") or ""
        elif etype == "message_delta":
            delta = event.data.get("delta") or {}
            self.stop_reason = delta.get("stop_reason") or self.stop_reason
            self.stop_sequence = delta.get("stop_sequence") or self.stop_sequence
            if event.data.get("usage"):
                merge_stream_usage(self.usage, event.data["usage"])
        elif etype == "content_block_start":
            if self.keep_content:
                block = dict(event.data.get("content_block") or {})
                self._blocks[event.data.get("index", len(self._blocks))] = block
        elif etype == "content_block_stop":
            if self.keep_content:
                self._close(event.data.get("index", -1))
        elif etype == "message_stop":
            self.finished = True
        elif etype == "error":
            self.error = event.data.get("error") or {"type": "api_error", "message": "stream error"}

    def _delta(self, data: dict[str, Any]) -> None:
        index = data.get("index", -1)
        block = self._blocks.get(index)
        delta = data.get("delta") or {}
        if block is None:
            return
        dtype = delta.get("type")
        if dtype == "text_delta":
            block["text"] = block.get("text", "") + delta.get("text", "")
        elif dtype == "input_json_delta":
            self._partial_json.setdefault(index, []).append(delta.get("partial_json", ""))
        elif dtype == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
        elif dtype == "signature_delta":
            block["signature"] = delta.get("signature", "")

    def _close(self, index: int) -> None:
        parts = self._partial_json.pop(index, None)
        if parts is not None and index in self._blocks:
            text = "".join(parts)
            try:
                self._blocks[index]["input"] = orjson.loads(text) if text else {}
            except orjson.JSONDecodeError:
                self._blocks[index]["input"] = {}

    def usage_so_far(self, estimated_input_tokens: int) -> Usage:
        """Usage for billing and budgets, also when the stream ended early.

        A stream cut before its final usage (client abort, upstream failure) has been charged by the
        provider for what it generated: at least one token per content delta sent, and the whole
        prompt. OpenAI-style upstreams report usage only at the end, so the prompt is estimated.
        """
        if self.finished:
            return self.usage
        usage = Usage(
            input_tokens=self.usage.input_tokens,
            output_tokens=max(self.usage.output_tokens, self.deltas),
            cache_write_5m_tokens=self.usage.cache_write_5m_tokens,
            cache_write_1h_tokens=self.usage.cache_write_1h_tokens,
            cache_read_tokens=self.usage.cache_read_tokens,
        )
        if usage.prompt_tokens == 0:
            usage.input_tokens = estimated_input_tokens
        return usage

    def response(self) -> ChatResponse:
        content = [self._blocks[i] for i in sorted(self._blocks)]
        return ChatResponse(
            id=self.message_id or "msg_stream",
            model=self.model,
            content=content,
            stop_reason=self.stop_reason,
            stop_sequence=self.stop_sequence,
            usage=self.usage,
        )
