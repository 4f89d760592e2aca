"""The lean upstream HTTP client against scripted loopback servers: keep-alive, streaming, limits,
timeouts and the failures it must turn into errors (never hang, never mix up answers)."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from app.providers.transport import HttpPool, UpstreamConnectionError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0].encode(), headers, body


def answer(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 " + status.encode() + b"\r\ncontent-length: %d\r\n" % len(body) + extra + b"\r\n" + body


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Server:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            task = asyncio.current_task()
            assert task is not None
            self.handlers.add(task)
            self.writers.append(writer)
            try:
                await self.handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:  # handlers waiting on a read see the end and return
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self.handlers, return_exceptions=True), 5)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/messages"


def pool_for(server: Server, **overrides: float) -> HttpPool:
    options = {"max_connections": 4, "connect_timeout_s": 1.0, "read_timeout_s": 2.0, **overrides}
    return HttpPool(server.url, **options)  # type: ignore[arg-type]


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        line, headers, body = await read_request(reader)
        writer.write(answer(line + b"|" + headers["host"].encode() + b"|" + body))
        await writer.drain()


async def test_requests_share_a_keep_alive_connection_and_answers_match() -> None:
    async with Server(echo_forever) as server:
        pool = pool_for(server)
        for n in range(3):
            response = await pool.post(server.url, b'{"n": %d}' % n, {"content-type": "application/json"})
            assert response.status == 200
            assert await response.read() == b'POST /v1/messages HTTP/1.1|127.0.0.1:%d|{"n": %d}' % (
                pool.port,
                n,
            )
            response.release()
        assert server.connections == 1
        await pool.aclose()


async def test_a_stream_arrives_piece_by_piece_chunked() -> None:
    release = asyncio.Event()

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n")
        writer.write(b"6\r\nfirst\n\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"7\r\nsecond\n\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with Server(stream) as server:
        pool = pool_for(server)
        response = await pool.post(server.url, b"{}", {})
        assert response.headers["content-type"] == "text/event-stream"
        chunks = response.content.iter_any()
        assert await chunks.__anext__() == b"first\n"  # before the server sent the rest
        assert not response.at_eof()
        release.set()
        assert [c async for c in chunks] == [b"second\n"]
        assert response.at_eof()
        response.release()
        assert pool.open == 1  # complete: back in the pool
        await pool.aclose()


async def test_error_statuses_and_gzip_bodies_are_read() -> None:
    async def overloaded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(gzip.compress(b'{"error": "busy"}'), "529 Overloaded", b"content-encoding: gzip\r\n"))
        await reader.read()

    async with Server(overloaded) as server:
        pool = pool_for(server)
        response = await pool.post(server.url, b"{}", {})
        assert response.status == 529
        assert await response.read() == b'{"error": "busy"}'
        response.release()
        await pool.aclose()


async def test_a_keep_alive_connection_closed_by_the_server_is_retried_once_on_a_new_one() -> None:
    async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"ok"))  # says keep-alive, then closes while the client holds it idle
        await writer.drain()

    async with Server(one_answer_per_connection) as server:
        pool = pool_for(server)
        first = await pool.post(server.url, b"{}", {})
        assert await first.read() == b"ok"
        first.release()
        await asyncio.sleep(0.05)  # the server's close reaches the idle connection
        second = await pool.post(server.url, b"{}", {})
        assert await second.read() == b"ok"
        second.release()
        assert server.connections == 2
        await pool.aclose()


async def test_a_connection_cut_mid_answer_is_an_error_not_a_retry() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()

    async with Server(cut) as server:
        pool = pool_for(server)
        response = await pool.post(server.url, b"{}", {})
        with pytest.raises(UpstreamConnectionError):
            await response.read()
        response.close()
        assert server.connections == 1 and pool.open == 0
        await pool.aclose()


async def test_a_body_without_length_ends_when_the_server_closes() -> None:
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await writer.drain()

    async with Server(close_delimited) as server:
        pool = pool_for(server)
        response = await pool.post(server.url, b"{}", {})
        assert await response.read() == b"all of it"
        response.release()
        assert pool.open == 0  # not reusable
        await pool.aclose()


async def test_silence_after_the_headers_is_a_read_timeout() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        await reader.read()  # silent until the client gives up

    async with Server(stall) as server:
        pool = pool_for(server, read_timeout_s=0.2)
        response = await pool.post(server.url, b"{}", {})
        with pytest.raises(asyncio.TimeoutError):
            await response.read()
        response.close()
        await pool.aclose()


async def test_refused_connections_and_header_injection_are_errors() -> None:
    pool = HttpPool("http://127.0.0.1:1/v1", max_connections=2, connect_timeout_s=1.0, read_timeout_s=1.0)
    with pytest.raises(UpstreamConnectionError):
        await pool.post("http://127.0.0.1:1/v1/messages", b"{}", {})
    assert pool.open == 0
    with pytest.raises(ValueError):
        await pool.post("http://127.0.0.1:1/v1/messages", b"{}", {"anthropic-beta": "x\r\nx-injected: 1"})


async def test_the_connection_limit_queues_requests_until_one_is_released() -> None:
    async with Server(echo_forever) as server:
        pool = pool_for(server, max_connections=1)
        first = await pool.post(server.url, b"1", {})
        waiting = asyncio.ensure_future(pool.post(server.url, b"2", {}))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # no second connection is opened
        assert (await first.read()).endswith(b"|1")
        first.release()
        second = await asyncio.wait_for(waiting, 1)
        assert (await second.read()).endswith(b"|2")
        second.release()
        assert server.connections == 1
        await pool.aclose()


async def test_closing_an_unfinished_stream_closes_its_connection() -> None:
    saw_eof = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        if await reader.read() == b"":
            saw_eof.set()  # the client hung up: a real provider stops generating here

    async with Server(endless) as server:
        pool = pool_for(server)
        response = await pool.post(server.url, b"{}", {})
        chunks: AsyncIterator[bytes] = response.content.iter_any()
        assert await chunks.__anext__() == b"hello"
        response.close()
        await asyncio.wait_for(saw_eof.wait(), 1)
        assert pool.open == 0
        await pool.aclose()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made with the openssl command line)."""
    if shutil.which("openssl") is None:
        message = "the openssl command is needed to make a test certificate"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: fails rather than skips)")
        pytest.skip(message)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
    command += ["-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_upstreams_are_verified_and_kept_alive(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = await asyncio.start_server(echo_forever, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    url = f"https://127.0.0.1:{port}/v1/messages"
    try:
        trusting = HttpPool(
            url,
            max_connections=2,
            connect_timeout_s=2.0,
            read_timeout_s=2.0,
            ssl_context=ssl.create_default_context(cafile=str(cert)),
        )
        for n in range(2):
            response = await trusting.post(url, b"%d" % n, {})
            assert (await response.read()).endswith(b"|%d" % n)
            response.release()
        assert trusting.open == 1  # one TLS connection, reused
        await trusting.aclose()

        # The system's trust store does not know this certificate: refused, not silently accepted.
        default = HttpPool(url, max_connections=2, connect_timeout_s=2.0, read_timeout_s=2.0)
        with pytest.raises(UpstreamConnectionError, match="certificate"):
            await default.post(url, b"{}", {})
        await default.aclose()
    finally:
        server.close()
