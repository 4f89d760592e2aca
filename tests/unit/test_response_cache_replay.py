"""A cached answer replayed as a stream is well-formed: the official SDK rebuilds the same message.

The pipeline answers a streaming request from the response cache by decoding the entry and turning
it into canonical events (``app.wire.anthropic.response_to_events``); this checks that path end to end.
"""

from __future__ import annotations

from typing import Any

from anthropic.lib.streaming._messages import accumulate_event

from app.caching.response_cache import decode_response, encode_response
from app.domain import ChatResponse, StreamEvent, Usage
from app.wire.anthropic import response_to_events

RESPONSE = ChatResponse(
    id="msg_cached",
    model="claude-sonnet-5-5",
    content=[
        {"type": "thinking", "thinking": "Two and two.", "signature": "sig=="},
        {"type": "text", "text": "It is 4, naïvely ✓."},
        {"type": "tool_use", "id": "toolu_1", "name": "calc", "input": {"expr": "2+2", "n": {"a": [1, 2]}}},
        {"type": "redacted_thinking", "data": "opaque"},
    ],
    stop_reason="tool_use",
    usage=Usage(
        input_tokens=12,
        output_tokens=34,
        cache_write_5m_tokens=5,
        cache_write_1h_tokens=6,
        cache_read_tokens=78,
    ),
)


def replayed() -> list[StreamEvent]:
    return response_to_events(decode_response(encode_response(RESPONSE)))


def rebuild(events: list[StreamEvent]) -> Any:
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for event in events:
        # accumulate_event builds the typed event from the raw dict, as the SDK does off the wire.
        snapshot = accumulate_event(event=event.data, current_snapshot=snapshot, json_bufs=json_bufs)  # type: ignore[arg-type]
    return snapshot


def test_event_grammar() -> None:
    events = replayed()
    names = [e.type for e in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert all(e.data["type"] == e.type for e in events)
    for index in range(len(RESPONSE.content)):
        block_events = [e for e in events[1:-2] if e.data["index"] == index]
        assert block_events[0].type == "content_block_start"
        assert block_events[-1].type == "content_block_stop"
        assert all(e.type == "content_block_delta" for e in block_events[1:-1])


def test_the_sdk_rebuilds_the_cached_message() -> None:
    message = rebuild(replayed())

    assert message.id == RESPONSE.id and message.model == RESPONSE.model
    assert [b.to_dict() for b in message.content] == RESPONSE.content
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 12
    assert message.usage.output_tokens == 34
    assert message.usage.cache_read_input_tokens == 78
    assert message.usage.cache_creation_input_tokens == 11
