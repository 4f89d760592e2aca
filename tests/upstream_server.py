"""A scripted upstream provider on a real loopback socket, for testing the adapters' HTTP traffic.

The server speaks just enough HTTP/1.1 to stand in for a provider: keep-alive connections,
``Content-Length`` or chunked request bodies, and canned replies per path, framed by length, by
chunks or by closing the connection. A reply may arrive in several writes with pauses between them,
stop mid-body (a network cut) or stall (a stuck upstream). Every request is recorded as received
(method, path, query, headers, body bytes), so a test asserts on what went over the wire, whichever
HTTP client the adapters use.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import socket
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

Framing = Literal["length", "chunked", "close"]


@dataclass(frozen=True)
class Reply:
    """One canned response.

    ``writes`` are the body's pieces, each sent in its own write (and, when chunked, its own chunk).
    ``cut_after=n`` closes the connection after ``n`` writes, before the body is complete;
    ``stall_after=n`` sends nothing more after ``n`` writes and keeps the connection open until the
    client leaves. ``silent`` reads the request and never answers at all; ``hang_up`` reads it and
    closes the connection without a word.
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    writes: Sequence[bytes] = ()
    framing: Framing = "length"
    pause_s: float = 0.0
    cut_after: int | None = None
    stall_after: int | None = None
    silent: bool = False
    hang_up: bool = False

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
        return cls.raw(orjson.dumps(payload), status=status, content_type="application/json", headers=headers)

    @classmethod
    def raw(
        cls, body: bytes, status: int = 200, content_type: str | None = None, headers: Mapping[str, str] | None = None
    ) -> Reply:
        all_headers = dict(headers or {})
        if content_type:
            all_headers["content-type"] = content_type
        return cls(status=status, headers=all_headers, writes=(body,) if body else ())

    @classmethod
    def sse(
        cls,
        *writes: bytes,
        framing: Framing = "chunked",
        pause_s: float = 0.0,
        cut_after: int | None = None,
        stall_after: int | None = None,
    ) -> Reply:
        return cls(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
            writes=writes,
            framing=framing,
            pause_s=pause_s,
            cut_after=cut_after,
            stall_after=stall_after,
        )


NOT_SCRIPTED = Reply.json({"error": {"message": "no reply scripted for this path"}}, status=404)


@dataclass
class ReceivedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased; a repeated header's values joined by ", "
    raw_headers: list[tuple[str, str]]  # as sent, in order
    body: bytes
    connection: int  # which connection carried it (the same number: a reused keep-alive connection)

    def json(self) -> Any:
        return orjson.loads(self.body)


class UpstreamServer:
    """An HTTP/1.1 server on 127.0.0.1 answering each path from a script of replies."""

    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self.open_connections = 0
        self.peak_connections = 0
        self.connections_made = 0
        self._scripts: dict[str, list[Reply]] = {}
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ids = itertools.count(1)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reply(self, path: str, *replies: Reply) -> None:
        """Answer ``path`` with these replies in turn; the last one repeats."""
        assert replies, "at least one reply"
        self._scripts[path] = list(replies)

    def received(self, path: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path == path]

    def last(self, path: str) -> ReceivedRequest:
        requests = self.received(path)
        assert requests, f"nothing was requested at {path}; requested: {[(r.method, r.path) for r in self.requests]}"
        return requests[-1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Dropping the connections ends their handlers (a stalled one sees the client leave).
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            _, stuck = await asyncio.wait(set(self._handlers), timeout=2)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)

    def _next_reply(self, path: str) -> Reply:
        script = self._scripts.get(path)
        if not script:
            return NOT_SCRIPTED
        return script.pop(0) if len(script) > 1 else script[0]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        connection = next(self._ids)
        self.connections_made += 1
        self.open_connections += 1
        self.peak_connections = max(self.peak_connections, self.open_connections)
        try:
            while True:
                request = await _read_request(reader, connection)
                if request is None:
                    break
                self.requests.append(request)
                keep_alive = await self._answer(reader, writer, self._next_reply(request.path))
                if not keep_alive or request.headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the client hung up mid-request, or sent something this server does not parse
        except asyncio.CancelledError:
            pass  # stopped: a cancelled handler would be logged as an error by asyncio's server
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: Reply) -> bool:
        """Send ``reply``; whether the connection may carry another request."""
        if reply.silent:
            await _until_the_client_leaves(reader)
            return False
        if reply.hang_up:
            return False
        writer.write(_head(reply))
        await writer.drain()
        for sent, piece in enumerate(reply.writes):
            if sent == reply.stall_after:
                await _until_the_client_leaves(reader)
                return False
            if sent == reply.cut_after:
                return False
            if sent and reply.pause_s:
                await asyncio.sleep(reply.pause_s)
            writer.write(_framed(piece, reply.framing))
            await writer.drain()
        if reply.stall_after is not None and reply.stall_after >= len(reply.writes):
            await _until_the_client_leaves(reader)
            return False
        if reply.cut_after is not None and reply.cut_after >= len(reply.writes) and reply.framing != "close":
            return False  # everything written, but the chunked terminator never comes
        if reply.framing == "chunked":
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return reply.framing != "close"


def _head(reply: Reply) -> bytes:
    try:
        phrase = http.HTTPStatus(reply.status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {reply.status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in reply.headers.items()]
    if reply.framing == "length":
        lines.append(f"content-length: {sum(len(piece) for piece in reply.writes)}")
    elif reply.framing == "chunked":
        lines.append("transfer-encoding: chunked")
    else:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _framed(piece: bytes, framing: Framing) -> bytes:
    if framing != "chunked" or not piece:
        return piece
    return b"%x\r\n%s\r\n" % (len(piece), piece)


async def _until_the_client_leaves(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def _read_request(reader: asyncio.StreamReader, connection: int) -> ReceivedRequest | None:
    """The next request on the connection, or None when the client closed it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise
        return None
    request_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, _version = request_line.split(" ", 2)
    raw_headers: list[tuple[str, str]] = []
    for line in header_lines:
        name, _, value = line.partition(":")
        raw_headers.append((name.strip(), value.strip()))
    headers: dict[str, str] = {}
    for name, value in raw_headers:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    parts = urlsplit(target)
    return ReceivedRequest(
        method=method,
        path=parts.path,
        query=dict(parse_qsl(parts.query, keep_blank_values=True)),
        headers=headers,
        raw_headers=raw_headers,
        body=body,
        connection=connection,
    )


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


@pytest.fixture
async def upstream() -> AsyncIterator[UpstreamServer]:
    server = UpstreamServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.contextmanager
def unanswered_connects() -> Iterator[str]:
    """A loopback address where connecting hangs: a listener whose accept queue is full and that
    never accepts, so the kernel drops new connection attempts (a connect timeout, on loopback)."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        for _ in range(2):  # the first fills the queue; the second makes sure of it
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        yield address
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def closed_port() -> str:
    """A loopback address nothing listens on (connecting is refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"
