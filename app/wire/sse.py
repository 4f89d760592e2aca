"""Server-sent events: an incremental parser for upstream byte streams.

Yields each event as soon as its terminating blank line arrives, keeping the exact bytes so a
same-format stream can be forwarded without re-serialisation.
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
    return SSEEvent(event=event, data=b"\n".join(data_lines), raw=block + b"\n\n")


async def iter_sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[SSEEvent]:
    buffer = b""
    held_cr = False  # a chunk ended in "\r": it may be the first half of "\r\n"
    async for chunk in chunks:
        if held_cr:
            chunk, held_cr = b"\r" + chunk, False
        if chunk.endswith(b"\r"):
            chunk, held_cr = chunk[:-1], True
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer += chunk
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            block, buffer = buffer[:end], buffer[end + 2 :]
            parsed = _parse_block(block)
            if parsed is not None:
                yield parsed
    if held_cr:
        buffer += b"\n"
    if buffer.strip():
        parsed = _parse_block(buffer.rstrip(b"\n"))
        if parsed is not None:
            yield parsed
