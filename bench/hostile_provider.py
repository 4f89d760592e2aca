"""A hostile provider on raw asyncio sockets, for the fault matrix (``bench/fault_matrix.py``).

It answers honestly (both wires, JSON and streams, 3 input + 1 output tokens) unless the request
carries ``x-sim-hostile`` — which the gateway forwards, like every ``x-sim-*`` header — naming one of:

* ``huge-headers``: a 200 with 200,000 header lines (1.4 MB of head);
* ``gzip-bomb``: a 200, ``content-encoding: gzip``, 1 MB that inflates to 1 GiB;
* ``silent``: reads the request and never answers (the connection stays open until the client leaves).

The replies are the ones ``tests/unit/test_hostile_upstream.py`` uses against the adapters alone;
here they go through a whole gateway process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import struct
import zlib
from typing import Any

import orjson

HOSTILE_HEADER = "x-sim-hostile"
BEHAVIOURS = ("huge-headers", "gzip-bomb", "silent")


@functools.cache
def gzip_bomb(decoded_mib: int) -> bytes:
    """A valid gzip body of ``decoded_mib`` MiB of zeros (1 GiB from about 1 MB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(decoded_mib):
        crc = zlib.crc32(zeros, crc)
    trailer = b"\x03\x00" + struct.pack("<II", crc, (decoded_mib << 20) & 0xFFFFFFFF)
    return first + repeated * (decoded_mib - 1) + trailer


def _honest_json(anthropic: bool) -> bytes:
    if anthropic:
        return orjson.dumps(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [{"type": "text", "text": "ok"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 1},
            }
        )
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )


def _honest_sse(anthropic: bool) -> bytes:
    if anthropic:
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 1},
        }
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": message}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}},
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 1},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        return b"".join(b"event: " + n.encode() + b"\ndata: " + orjson.dumps(d) + b"\n\n" for n, d in events)
    head = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}},
    ]
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def _head(sse: bool, length: int, extra: bytes = b"") -> bytes:
    kind = b"text/event-stream" if sse else b"application/json"
    return b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\n" + extra + b"content-length: %d\r\n\r\n" % length


class HostileProvider:
    """The server; ``counts`` tells how many requests got each behaviour (``honest`` included)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        gzip_bomb(1024)  # built before the first request, not while one waits
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
                body = orjson.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
                anthropic = b"/messages" in lines[0]
                behaviour = headers.get(HOSTILE_HEADER, "honest")
                self.counts[behaviour] = self.counts.get(behaviour, 0) + 1
                if not await self._answer(behaviour, anthropic, bool(body.get("stream")), reader, writer):
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _answer(
        self, behaviour: str, anthropic: bool, sse: bool, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Write the reply; whether the connection may carry another request."""
        if behaviour == "silent":
            with contextlib.suppress(ConnectionError):
                await reader.read()  # until the client leaves
            return False
        if behaviour == "huge-headers":
            writer.write(b"HTTP/1.1 200 OK\r\n" + b"x-h: v\r\n" * 200_000 + b"content-length: 2\r\n\r\n{}")
        elif behaviour == "gzip-bomb":
            bomb = gzip_bomb(1024)
            writer.write(_head(sse, len(bomb), b"content-encoding: gzip\r\n") + bomb)
        else:
            body = _honest_sse(anthropic) if sse else _honest_json(anthropic)
            writer.write(_head(sse, len(body)) + body)
        await writer.drain()
        return behaviour not in BEHAVIOURS
