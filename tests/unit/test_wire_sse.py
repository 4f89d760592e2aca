"""The incremental SSE parser: events survive any chunking of the byte stream."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from app.wire.sse import SSEError, SSEEvent, SSEParser, iter_sse

ANTHROPIC_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1"}}\n\n'
    b": keep-alive comment\n\n"
    b"event: ping\n"
    b'data: {"type":"ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"h\xc3\xa9llo"}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)
OPENAI_STREAM = (
    b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n'
    b"data: [DONE]\n\n"
)


async def _chunks(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    position = 0
    for size in sizes:
        if position >= len(data):
            break
        yield data[position : position + size]
        position += size
    if position < len(data):
        yield data[position:]


async def parse(data: bytes, sizes: list[int] | None = None) -> list[SSEEvent]:
    return [event async for event in iter_sse(_chunks(data, sizes or [len(data)]))]


def _summary(events: list[SSEEvent]) -> list[tuple[str | None, bytes]]:
    return [(e.event, e.data) for e in events]


async def test_named_events_and_comments() -> None:
    events = await parse(ANTHROPIC_STREAM)
    assert [e.event for e in events] == ["message_start", "ping", "content_block_delta", "message_stop"]
    assert events[0].data == b'{"type":"message_start","message":{"id":"msg_1"}}'
    # raw keeps the exact bytes of the event, terminating blank line included (same-format passthrough)
    assert events[1].raw == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert b"".join(e.raw for e in events) == ANTHROPIC_STREAM.replace(b": keep-alive comment\n\n", b"")


async def test_data_only_events() -> None:
    events = await parse(OPENAI_STREAM)
    assert [e.event for e in events] == [None, None, None]
    assert [e.data for e in events] == [
        b'{"choices":[{"delta":{"content":"a"}}]}',
        b'{"choices":[{"delta":{"content":"b"}}]}',
        b"[DONE]",
    ]


@pytest.mark.parametrize("stream", [ANTHROPIC_STREAM, OPENAI_STREAM], ids=["anthropic", "openai"])
async def test_every_split_point_gives_the_same_events(stream: bytes) -> None:
    whole = _summary(await parse(stream))
    for cut in range(1, len(stream)):
        assert _summary(await parse(stream, [cut])) == whole, f"split at byte {cut}"


@pytest.mark.parametrize("stream", [ANTHROPIC_STREAM, OPENAI_STREAM], ids=["anthropic", "openai"])
async def test_byte_at_a_time_and_random_chunking(stream: bytes) -> None:
    whole = _summary(await parse(stream))
    assert _summary(await parse(stream, [1] * len(stream))) == whole
    rng = random.Random(7)
    for _ in range(50):
        sizes = [rng.randint(1, 40) for _ in range(len(stream))]
        assert _summary(await parse(stream, sizes)) == whole


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"], ids=["crlf", "cr"])
async def test_other_line_endings_at_every_split_point(newline: bytes) -> None:
    stream = ANTHROPIC_STREAM.replace(b"\n", newline)
    expected = _summary(await parse(ANTHROPIC_STREAM))
    assert _summary(await parse(stream)) == expected
    for cut in range(1, len(stream)):
        assert _summary(await parse(stream, [cut])) == expected, f"split at byte {cut}"


async def test_multi_line_data_is_joined_with_newlines() -> None:
    events = await parse(b"event: x\ndata: first\ndata: second\n\n")
    assert events[0].data == b"first\nsecond"


async def test_multi_line_data_with_crlf_split_between_cr_and_lf() -> None:
    # "\r" at the end of one chunk and "\n" at the start of the next is ONE line ending, not two.
    stream = b"data: a\r\ndata: b\r\n\r\n"
    for cut in range(1, len(stream)):
        events = await parse(stream, [cut])
        assert _summary(events) == [(None, b"a\nb")], f"split at byte {cut}"


async def test_event_without_data_is_not_dispatched() -> None:
    # The SSE spec dispatches nothing for an event whose data buffer is empty.
    events = await parse(b"event: orphan\n\ndata: {}\n\n")
    assert _summary(events) == [(None, b"{}")]


async def test_field_without_space_and_trailing_event_without_blank_line() -> None:
    events = await parse(b"event:ping\ndata:{}\n\nevent: last\ndata: 1")
    assert _summary(events) == [("ping", b"{}"), ("last", b"1")]


def test_an_event_over_the_size_limit_is_an_sse_error_whether_terminated_or_not() -> None:
    parser = SSEParser(max_event_bytes=64)
    assert parser.feed(b"data: " + b"x" * 50 + b"\n\n") != []  # within the limit
    with pytest.raises(SSEError, match="larger than 64 bytes"):
        SSEParser(max_event_bytes=64).feed(b"data: " + b"x" * 100 + b"\n\n")
    growing = SSEParser(max_event_bytes=64)
    growing.feed(b"data: " + b"x" * 40)
    with pytest.raises(SSEError):
        growing.feed(b"x" * 40)  # never terminated: refused once the pending part passes the limit


def test_an_event_name_that_is_not_utf8_is_an_sse_error() -> None:
    with pytest.raises(SSEError, match="UTF-8"):
        SSEParser().feed(b"event: \xff\ndata: {}\n\n")


def test_a_long_event_in_one_byte_pieces_is_parsed_once() -> None:
    # the pending part is searched only where new bytes arrived: 200 KB a byte at a time stays linear
    payload = b"data: " + b"y" * 200_000 + b"\n\n"
    parser = SSEParser()
    events = [e for i in range(len(payload)) for e in parser.feed(payload[i : i + 1])]
    assert [len(e.data) for e in events] == [200_000]
