"""A lean HTTP/1.1 client for the upstream call: asyncio protocol, httptools parser, keep-alive pool.

The upstream call is the largest single cost on the request path. Measured on the 2-core bench
machine against the simulator (``bench/experiments.py``-style micro-benchmark, client CPU only):
aiohttp's ``ClientSession.post`` + ``read`` costs ~190 µs of CPU per request, a request written
straight to a pooled connection and parsed by httptools (the C parser uvicorn uses) ~70 µs. The
gateway only ever POSTs JSON to a handful of provider origins and reads a JSON or SSE answer, so
that is all this client does:

* one pool per origin (scheme, host, port), at most ``max_connections`` open, idle connections kept
  ``KEEPALIVE_S``; TLS through the ``ssl`` module's default context (system CAs, hostname checked);
* request: ``POST`` with ``Content-Length``; header values with CR or LF are refused (no header
  injection from a client-supplied ``anthropic-beta``);
* response: status and headers, then the body as it arrives (``iter_any``, flow-controlled: reading
  pauses above ``HIGH_WATER`` buffered bytes), chunked or sized, gzip/deflate decoded if a server
  sends them unasked (no ``Accept-Encoding`` is sent);
* timeouts: connect (``connect_timeout_s``) and read (``read_timeout_s`` without a byte arriving,
  also while waiting for a free connection); errors are ``ConnectionError`` / ``asyncio.TimeoutError``,
  which ``app.providers.http`` maps to the client's error;
* a keep-alive connection the server closed while idle is retried once on a fresh one, only when not a
  byte of the answer had arrived (the usual race with a server's idle timeout);
* ``close()`` on an unfinished response closes its connection: that is how a client that went away
  cancels the upstream generation.

Proxies are not handled here: a provider reached through HTTP(S)_PROXY keeps aiohttp.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Mapping

import httptools

KEEPALIVE_S = 30.0
_NOTHING_RECEIVED = "nothing received"  # marks a failure before the first byte of the answer
HIGH_WATER = 1 << 20  # buffered body bytes above which the socket stops being read


class UpstreamConnectionError(ConnectionError):
    """The connection failed, or closed before the answer was complete."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.exchange: Response | None = None
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.close()  # bytes nobody asked for: the connection cannot be trusted any more
            return
        exchange.received = True
        try:
            exchange.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            exchange.fail(UpstreamConnectionError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            exchange.fail(UpstreamConnectionError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self.exchange
        if exchange is not None and not exchange.complete and exchange.delimited_by_close():
            exchange.on_message_complete()  # a body without length or chunks ends when the server closes
        if self.exchange is not None and not self.exchange.complete:
            reason = f"connection closed before the answer was complete ({exc or 'EOF'})"
            self.exchange.fail(UpstreamConnectionError(reason))

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    """One exchange's answer: ``status`` and ``headers`` (lower-case names) once ``HttpPool.post``
    returns, then the body through ``read()`` or ``content.iter_any()``; end with ``release()``
    (back to the pool when complete) or ``close()`` (drops the connection)."""

    def __init__(self, connection: _Connection, read_timeout_s: float) -> None:
        self.connection = connection
        self.read_timeout_s = read_timeout_s
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.received = False  # any byte of the answer arrived
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: zlib._Decompress | None = None
        self._finished = False

    @property
    def content(self) -> Response:  # aiohttp's shape: ``response.content.iter_any()``
        return self

    # ---- httptools callbacks (in data_received) ------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        encoding = self.headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._decoder is not None:
            body = self._decoder.decompress(body)
            if not body:
                return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self.connection.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        # Read here: once the message is complete the parser has reset and no longer knows.
        self.keep_alive = self.parser.should_keep_alive() and not self.connection.closed
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
        self.complete = True
        self._wake()

    # ---- state --------------------------------------------------------------------------------

    def delimited_by_close(self) -> bool:
        return (
            self.headers_done
            and "content-length" not in self.headers
            and "chunked" not in self.headers.get("transfer-encoding", "").lower()
        )

    def fail(self, exc: Exception) -> None:
        if self.error is None and not self.complete:
            self.error = exc
        self.connection.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until something happens on the connection, or ``read_timeout_s`` passes without it."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self.read_timeout_s, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def wait_for_headers(self) -> None:
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    # ---- body ---------------------------------------------------------------------------------

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives: every call yields what has been received since the last."""
        while True:
            if self._chunks:
                data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks.clear()
                self._buffered = 0
                if self._paused:
                    self._paused = False
                    self.connection.resume_reading()
                yield data
                continue
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            await self._wait()

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.iter_any()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def at_eof(self) -> bool:
        return self.complete and not self._chunks

    def release(self) -> None:
        """Done with the answer: a complete one hands its connection back, anything else closes it."""
        if self._finished:
            return
        self._finished = True
        connection = self.connection
        connection.exchange = None
        if self.complete and self.error is None and self.keep_alive and not connection.closed:
            connection.pool.put_back(connection)
        else:
            connection.close()
            connection.pool.discard()

    def close(self) -> None:
        if self._finished:
            return
        self.connection.close()
        self.release()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class HttpPool:
    """Connections to one origin (``base_url``'s scheme, host and port)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (host if default_port else f"{host}:{self.port}").encode("idna")
        self.ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.open = 0  # connections open or being opened (idle ones included)
        self._idle: list[_Connection] = []
        self._slot_freed: collections.deque[asyncio.Future[None]] = collections.deque()
        self._paths: dict[str, bytes] = {}
        self._closed = False

    def owns(self, url: str) -> bool:
        parts = urllib.parse.urlsplit(url)
        return (
            parts.scheme == self.scheme
            and parts.hostname == self.host
            and (parts.port or (443 if parts.scheme == "https" else 80)) == self.port
        )

    def _path(self, url: str) -> bytes:
        path = self._paths.get(url)
        if path is None:
            parts = urllib.parse.urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            path = self._paths[url] = target.encode("ascii")
        return path

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Response:
        """Send the request; return once the status line and headers arrived."""
        request = self._encode(self._path(url), body, headers)
        connection, reused = await self._checkout()
        try:
            return await self._exchange(connection, request)
        except UpstreamConnectionError as exc:
            if not (reused and exc.args[-1] == _NOTHING_RECEIVED):
                raise
        # A pooled connection the server had already closed: once more, on a new connection.
        connection, _ = await self._checkout(fresh=True)
        return await self._exchange(connection, request)

    def _encode(self, path: bytes, body: bytes, headers: Mapping[str, str]) -> bytes:
        lines = [b"POST ", path, b" HTTP/1.1\r\nhost: ", self.host_header, b"\r\ncontent-length: ", b"%d" % len(body)]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} has a line break in it")
            lines += (b"\r\n", name.encode("latin-1"), b": ", value.encode("latin-1"))
        lines += (b"\r\n\r\n", body)
        return b"".join(lines)

    async def _exchange(self, connection: _Connection, request: bytes) -> Response:
        if connection.closed or connection.transport is None or connection.transport.is_closing():
            connection.close()
            self.discard()
            raise UpstreamConnectionError("connection closed before the request was sent", _NOTHING_RECEIVED)
        response = Response(connection, self.read_timeout_s)
        connection.exchange = response
        connection.transport.write(request)
        try:
            await response.wait_for_headers()
        except UpstreamConnectionError as exc:
            response.close()
            if not response.received:
                raise UpstreamConnectionError(str(exc), _NOTHING_RECEIVED) from exc
            raise
        except BaseException:
            response.close()
            raise
        return response

    # ---- the pool -------------------------------------------------------------------------------

    async def _checkout(self, *, fresh: bool = False) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self._idle and not fresh:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE_S:
                return connection, True
            connection.close()
            self.open -= 1
        while self.open >= self.max_connections:
            await self._wait_for_slot()
            if self._idle and not fresh:
                return await self._checkout()
        self.open += 1
        try:
            return await self._connect(), False
        except BaseException:
            self.discard()
            raise

    async def _wait_for_slot(self) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._slot_freed.append(waiter)
        timer = loop.call_later(self.read_timeout_s, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if not waiter.done():
                waiter.cancel()

    def _notify_slot(self) -> None:
        while self._slot_freed:
            waiter = self._slot_freed.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                ),
                self.connect_timeout_s,
            )
        except TimeoutError:
            raise  # a connect timeout is a timeout, not a refused connection (TimeoutError is an OSError)
        except OSError as exc:
            raise UpstreamConnectionError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return connection

    def put_back(self, connection: _Connection) -> None:
        if self._closed:
            connection.close()
            self.discard()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        self._notify_slot()

    def discard(self) -> None:
        """A connection was closed: its slot is free."""
        self.open -= 1
        self._notify_slot()

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
            self.open -= 1
