"""Fault injection by request header, for the gateway's retry, fallback and stream-error tests.

``x-sim-error: <status>`` fails the request with that status in the wire's error format, unless
``x-sim-error-match`` is set and none of its comma-separated values is the request's model id or its
path tag. ``x-sim-error-times: N`` (with ``x-sim-error-key: K``) fails only the first N matching
requests carrying key K, so a test can make an upstream flaky and then recover.

``x-sim-malformed: <shape>`` answers 200 with a reply no honest provider sends, in the request's wire
and mode (JSON or stream): ``json`` is cut-off JSON, ``types`` has the right fields with the wrong
types (``content: 5``, token counts as strings), ``huge`` has token counts of 10^30. The gateway must
answer such a reply with a well-formed error, settle the reservation and write a ledger row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from app.simulator.http import JSON_CONTENT_TYPE, SSE_HEADERS, Receive, Scope, Send, SimRequest
from app.simulator.state import SimulatorState

DEFAULT_RETRY_AFTER = "1"


@dataclass(slots=True)
class Fault:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def injected_fault(request: SimRequest, model: str | None, state: SimulatorState) -> Fault | None:
    raw_status = request.headers.get("x-sim-error")
    if not raw_status:
        return None
    try:
        status = int(raw_status)
    except ValueError:
        return None
    if not 400 <= status <= 599:
        return None
    match = request.header_list("x-sim-error-match")
    if match:
        targets = request.tag_segments()
        if model:
            targets.add(model)
        if not targets.intersection(match):
            return None
    times = request.header_int("x-sim-error-times")
    if times is not None:
        key = request.headers.get("x-sim-error-key", "")
        seen = state.error_counts.get(key, 0) + 1
        state.error_counts[key] = seen
        if seen > times:
            return None
    headers: list[tuple[bytes, bytes]] = []
    retry_after = request.headers.get("x-sim-retry-after")
    if status == 429 or retry_after is not None:
        headers.append((b"retry-after", (retry_after or DEFAULT_RETRY_AFTER).encode()))
    should_retry = request.headers.get("x-sim-should-retry")
    if should_retry is not None:
        headers.append((b"x-should-retry", should_retry.strip().lower().encode()))
    return Fault(status, headers)


Wire = Literal["anthropic", "openai"]
MALFORMED_SHAPES = ("json", "types", "huge")
_HUGE = 10**30  # beyond 64 bits: stdlib json writes it, orjson would refuse


class RawReply:
    """A 200 with exactly these bytes (the simulator's well-formed replies go through ``JSONReply``)."""

    __slots__ = ("body", "headers")

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.body = body
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [*self.headers, (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def malformed_reply(request: SimRequest, wire: Wire, model: str, stream: bool) -> RawReply | None:
    """The ``x-sim-malformed`` reply for this request, or None when none was asked for."""
    shape = request.headers.get("x-sim-malformed", "").strip().lower()
    if shape not in MALFORMED_SHAPES:
        return None
    if shape == "json":
        body = _cut_off(wire, model, stream)
    elif wire == "anthropic":
        body = _anthropic_stream(model, shape) if stream else _anthropic_json(model, shape)
    else:
        body = _openai_stream(model, shape) if stream else _openai_json(model, shape)
    return RawReply(body, SSE_HEADERS if stream else [JSON_CONTENT_TYPE])


def _count(shape: str) -> object:
    return "ten" if shape == "types" else _HUGE


def _cut_off(wire: Wire, model: str, stream: bool) -> bytes:
    if not stream:
        return b'{"id": "x", "model": "' + model.encode() + b'", "content": [{"type": "te'
    if wire == "anthropic":
        return b'event: message_start\ndata: {"type": "message_start", "message": {"id": "m\n\n'
    return b'data: {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "del\n\n'


def _anthropic_json(model: str, shape: str) -> bytes:
    content: object = 5 if shape == "types" else [{"type": "text", "text": "hi"}]
    usage = {"input_tokens": _count(shape), "output_tokens": _count(shape)}
    message = {
        "id": "msg_bad",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    return json.dumps(message).encode()


def _anthropic_stream(model: str, shape: str) -> bytes:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_bad",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1},
        },
    }
    events = [
        ("message_start", start),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": _count(shape)},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def _openai_json(model: str, shape: str) -> bytes:
    choices: object = (
        5
        if shape == "types"
        else [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]
    )
    usage = {"prompt_tokens": _count(shape), "completion_tokens": _count(shape), "total_tokens": _count(shape)}
    completion = {"id": "chatcmpl-bad", "object": "chat.completion", "created": 0, "model": model}
    return json.dumps({**completion, "choices": choices, "usage": usage}).encode()


def _openai_stream(model: str, shape: str) -> bytes:
    head = {"id": "chatcmpl-bad", "object": "chat.completion.chunk", "created": 0, "model": model}
    delta = {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}]}
    stop = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {"prompt_tokens": 10, "completion_tokens": _count(shape), "total_tokens": _count(shape)}
    chunks = [delta, stop, {**head, "choices": [], "usage": usage}]
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
