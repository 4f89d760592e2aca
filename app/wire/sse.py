"""Server-sent events: an incremental parser for upstream byte streams.

Yields each event as soon as its terminating blank line arrives, keeping the exact bytes so a
same-format stream can be forwarded without re-serialisation. ``SSEParser`` is the synchronous core:
``feed`` takes whatever one network read returned and gives back every event it completed, so a relay
can forward the events of one read in one write instead of one write per event.

The upstream is not trusted: an event may be at most ``max_event_bytes`` long, the work per ``feed`` is
linear in the bytes received (a partial event is never re-scanned from its start), and anything that
is not a usable event stream raises ``SSEError`` — the only exception ``feed`` and ``close`` raise.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

DEFAULT_MAX_EVENT_BYTES = 1 << 20


class SSEError(ValueError):
    """The bytes are not a usable event stream: an event over the size limit, a field name not UTF-8."""


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
            try:
                event = value.decode()
            except UnicodeDecodeError:
                raise SSEError("an event name is not valid UTF-8") from None
    if not data_lines:
        return None  # the SSE spec dispatches nothing for an event without data
    return SSEEvent(
        event=event, data=data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines), raw=block + b"\n\n"
    )


class SSEParser:
    """Bytes in, complete events out; any chunking of the stream gives the same events."""

    __slots__ = ("_buffer", "_held_cr", "_scanned", "max_event_bytes")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()  # the start of an event not yet terminated
        self._held_cr = False  # a chunk ended in "\r": it may be the first half of "\r\n"
        self._scanned = 0  # bytes of _buffer already searched for a blank line
        self.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._held_cr:
            chunk, self._held_cr = b"\r" + chunk, False
        if chunk.endswith(b"\r"):
            chunk, self._held_cr = chunk[:-1], True
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer: bytes | bytearray
        if self._buffer:
            self._buffer += chunk
            buffer, search_from = self._buffer, max(self._scanned - 1, 0)
        else:
            buffer, search_from = chunk, 0  # the usual case: nothing pending, no copy
        events: list[SSEEvent] = []
        start = 0
        end = buffer.find(b"\n\n", search_from)
        while end >= 0:
            if end - start > self.max_event_bytes:
                raise SSEError(f"an event is larger than {self.max_event_bytes} bytes")
            parsed = _parse_block(bytes(buffer[start:end]))
            if parsed is not None:
                events.append(parsed)
            start = end + 2
            end = buffer.find(b"\n\n", start)
        rest = len(buffer) - start
        if rest > self.max_event_bytes:
            raise SSEError(f"an event is larger than {self.max_event_bytes} bytes")
        if buffer is self._buffer:
            del self._buffer[:start]
        else:
            self._buffer = bytearray(buffer[start:])
        self._scanned = rest
        return events

    def close(self) -> list[SSEEvent]:
        """The stream ended: an event the upstream did not terminate with a blank line still counts."""
        buffer = bytes(self._buffer) + (b"\n" if self._held_cr else b"")
        self._buffer, self._held_cr, self._scanned = bytearray(), False, 0
        if buffer.strip():
            parsed = _parse_block(buffer.rstrip(b"\n"))
            if parsed is not None:
                return [parsed]
        return []


async def iter_sse(
    chunks: AsyncIterator[bytes], max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
) -> AsyncIterator[SSEEvent]:
    parser = SSEParser(max_event_bytes)
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
    for event in parser.close():
        yield event
