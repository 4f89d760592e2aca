"""Server-sent events: an incremental parser for upstream byte streams.

Yields each event as soon as its terminating blank line arrives, keeping the exact bytes so a
same-format stream can be forwarded without re-serialisation. ``SSEParser`` is the synchronous core:
``feed`` takes whatever one network read returned and gives back every event it completed, so a relay
can forward the events of one read in one write instead of one write per event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    event: str | None  # the `event:` field, None when absent (OpenAI streams)
    data: bytes  # the `data:` lines joined by b"\n"
    raw: bytes  # the exact bytes of the event, including the terminating blank line


def _parse_block(block: bytes) -> SSEEvent | None:
    event: str | None = None
    data_lines: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue  # blank or comment (keep-alive)
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data_lines.append(value)
        elif name == b"event":
            event = value.decode()
    if not data_lines:
        return None  # the SSE spec dispatches nothing for an event without data
    return SSEEvent(
        event=event, data=data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines), raw=block + b"\n\n"
    )


class SSEParser:
    """Bytes in, complete events out; any chunking of the stream gives the same events."""

    __slots__ = ("_buffer", "_held_cr")

    def __init__(self) -> None:
        self._buffer = b""
        self._held_cr = False  # a chunk ended in "\r": it may be the first half of "\r\n"

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._held_cr:
            chunk, self._held_cr = b"\r" + chunk, False
        if chunk.endswith(b"\r"):
            chunk, self._held_cr = chunk[:-1], True
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            parsed = _parse_block(buffer[start:end])
            if parsed is not None:
                events.append(parsed)
            start = end + 2
        self._buffer = buffer[start:] if start else buffer
        return events

    def close(self) -> list[SSEEvent]:
        """The stream ended: an event the upstream did not terminate with a blank line still counts."""
        buffer = self._buffer + (b"\n" if self._held_cr else b"")
        self._buffer, self._held_cr = b"", False
        if buffer.strip():
            parsed = _parse_block(buffer.rstrip(b"\n"))
            if parsed is not None:
                return [parsed]
        return []


async def iter_sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[SSEEvent]:
    parser = SSEParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
    for event in parser.close():
        yield event
