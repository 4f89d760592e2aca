"""Canonical (Anthropic-shaped) stream events → the Responses API's SSE event sequence.

One encoder per stream. It emits, with ``event:`` lines and a ``sequence_number`` counting from 0:
``response.created``, ``response.in_progress``, then per output item ``response.output_item.added``,
for text ``response.content_part.added`` / ``response.output_text.delta`` / ``.done`` /
``response.content_part.done``, for a function call ``response.function_call_arguments.delta`` /
``.done``, then ``response.output_item.done``, and finally ``response.completed`` (or
``response.incomplete`` when the output was cut). Event shapes follow the openai SDK's
``ResponseStreamEvent`` union.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.domain import ChatRequest, StreamEvent, Usage
from app.errors import GatewayError
from app.wire.anthropic import merge_stream_usage, parse_usage
from app.wire.errors import kind_from_anthropic_type, responses_error_fields, responses_failure
from app.wire.responses.output import (
    function_call_item,
    function_item_id,
    id_base,
    message_item,
    message_item_id,
    output_text_part,
    response_object,
    status_of,
)


@dataclass(slots=True)
class _OpenBlock:
    """A canonical content block in progress and where it lives in the Responses output."""

    kind: str  # "text" or "tool"
    output_index: int
    content_index: int = 0
    parts: list[str] = field(default_factory=list)


class ResponsesStreamEncoder:
    def __init__(self, req: ChatRequest, model: str, *, clock: Callable[[], float] = time.time) -> None:
        self.req = req
        self.model = model
        self.clock = clock
        self.sequence = 0
        self.base = "stream"
        self.created_at = int(clock())
        self.usage = Usage()
        self.stop_reason: str | None = None
        self.started = False
        self.finished = False
        self.output: list[dict[str, Any]] = []  # items as they stand now (the final response's output)
        self._blocks: dict[int, _OpenBlock] = {}
        self._open_message: int | None = None  # output index of the message item still taking parts

    # ---- framing -----------------------------------------------------------------------------------

    def _event(self, etype: str, payload: dict[str, Any]) -> bytes:
        data = {"type": etype, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return b"event: " + etype.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        return response_object(
            self.req,
            response_id=f"resp_{self.base}",
            created_at=self.created_at,
            model=self.model,
            status=status,
            output=self.output,
            usage=self.usage if status != "in_progress" else None,
            **fields,
        )

    # ---- canonical events --------------------------------------------------------------------------

    def __call__(self, event: StreamEvent) -> bytes:
        etype, data = event.type, event.data
        if etype == "content_block_delta":
            return self._delta(data)
        if etype == "content_block_start":
            return self._start_if_needed() + self._block_start(data)
        if etype == "content_block_stop":
            return self._block_stop(data.get("index", -1))
        if etype == "message_start":
            message = data.get("message") or {}
            self.base = id_base(str(message.get("id") or "stream"))
            self.usage = parse_usage(message.get("usage"))
            return self._start_if_needed()
        if etype == "message_delta":
            self.stop_reason = (data.get("delta") or {}).get("stop_reason") or self.stop_reason
            if data.get("usage"):
                merge_stream_usage(self.usage, data["usage"])
            return b""
        if etype == "message_stop":
            return self._finish()
        if etype == "error":
            upstream = (data.get("error") or {}).get("type")
            return self.error(
                GatewayError(kind_from_anthropic_type(upstream), "the upstream provider failed mid-stream")
            )
        if etype == "ping":
            return b": ping\n\n"
        return b""

    def _start_if_needed(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        created = self._event("response.created", {"response": self._response("in_progress")})
        return created + self._event("response.in_progress", {"response": self._response("in_progress")})

    def _block_start(self, data: dict[str, Any]) -> bytes:
        block = data.get("content_block") or {}
        index = data.get("index", len(self._blocks))
        btype = block.get("type")
        if btype == "text":
            out = b""
            if self._open_message is None:
                self._open_message = len(self.output)
                item = message_item(message_item_id(self.base, self._open_message), [], "in_progress")
                self.output.append(item)
                out += self._event("response.output_item.added", {"output_index": self._open_message, "item": item})
            item = self.output[self._open_message]
            part = output_text_part("")
            opened = _OpenBlock("text", self._open_message, content_index=len(item["content"]))
            item["content"].append(part)
            self._blocks[index] = opened
            return out + self._event(
                "response.content_part.added",
                {**self._where(opened), "part": part},
            )
        if btype == "tool_use":
            out = self._close_message("completed")
            output_index = len(self.output)
            item = function_call_item(function_item_id(self.base, output_index), block, "", "in_progress")
            self.output.append(item)
            self._blocks[index] = _OpenBlock("tool", output_index)
            return out + self._event("response.output_item.added", {"output_index": output_index, "item": item})
        return b""  # thinking and other blocks have no Responses item (see output.py)

    def _where(self, block: _OpenBlock) -> dict[str, Any]:
        where: dict[str, Any] = {"item_id": self.output[block.output_index]["id"], "output_index": block.output_index}
        if block.kind == "text":
            where["content_index"] = block.content_index
        return where

    def _delta(self, data: dict[str, Any]) -> bytes:
        block = self._blocks.get(data.get("index", -1))
        delta = data.get("delta") or {}
        if block is None:
            return b""
        dtype = delta.get("type")
        if block.kind == "text" and dtype == "text_delta":
            text = delta.get("text", "")
            block.parts.append(text)
            return self._event("response.output_text.delta", {**self._where(block), "delta": text, "logprobs": []})
        if block.kind == "tool" and dtype == "input_json_delta":
            partial = delta.get("partial_json", "")
            block.parts.append(partial)
            return self._event("response.function_call_arguments.delta", {**self._where(block), "delta": partial})
        return b""

    def _block_stop(self, index: int) -> bytes:
        block = self._blocks.pop(index, None)
        if block is None:
            return b""
        item = self.output[block.output_index]
        if block.kind == "text":
            text = "".join(block.parts)
            part = item["content"][block.content_index]
            part["text"] = text
            done = self._event("response.output_text.done", {**self._where(block), "text": text, "logprobs": []})
            return done + self._event("response.content_part.done", {**self._where(block), "part": part})
        arguments = "".join(block.parts) or "{}"
        item["arguments"], item["status"] = arguments, "completed"
        done = self._event("response.function_call_arguments.done", {**self._where(block), "arguments": arguments})
        return done + self._event("response.output_item.done", {"output_index": block.output_index, "item": item})

    def _close_message(self, status: str) -> bytes:
        if self._open_message is None:
            return b""
        index, self._open_message = self._open_message, None
        item = self.output[index]
        item["status"] = status
        return self._event("response.output_item.done", {"output_index": index, "item": item})

    def _finish(self) -> bytes:
        if self.finished:
            return b""
        out = self._start_if_needed()
        for index in sorted(self._blocks):  # blocks the upstream never closed still end cleanly
            out += self._block_stop(index)
        status, incomplete = status_of(self.stop_reason)
        out += self._close_message(status)
        self.finished = True
        done = "response.completed" if status == "completed" else "response.incomplete"
        response = self._response(status, incomplete_details=incomplete, completed_at=int(self.clock()))
        return out + self._event(done, {"response": response})

    # ---- errors ------------------------------------------------------------------------------------

    def error(self, err: GatewayError) -> bytes:
        """The stream failed: ``response.failed`` (once one was announced), then an ``error`` event."""
        if self.finished:
            return b""
        self.finished = True
        self._keep_partial_output()
        out = b""
        if self.started:
            out = self._event("response.failed", {"response": self._response("failed", error=responses_failure(err))})
        return out + self._event("error", responses_error_fields(err))

    def _keep_partial_output(self) -> None:
        """Write what the unfinished blocks received into their items, so the failed response holds
        everything the client was sent; those items are marked incomplete."""
        for block in self._blocks.values():
            item = self.output[block.output_index]
            if block.kind == "text":
                item["content"][block.content_index]["text"] = "".join(block.parts)
            else:
                item["arguments"] = "".join(block.parts)
            item["status"] = "incomplete"
        if self._open_message is not None:
            self.output[self._open_message]["status"] = "incomplete"
