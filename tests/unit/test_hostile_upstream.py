"""A hostile upstream on raw asyncio sockets: the provider adapters and their HTTP layer against
replies no honest provider sends.

For every case the call ends in a well-formed ``UpstreamError`` (never another exception type, never
a hang: each call is bounded by ``asyncio.wait_for``), and the requests that follow on the *same*
provider get their own answers — never a byte of the hostile reply or of another request's.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import struct
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from app.config import ProviderConfig
from app.domain import ChatRequest, StreamEvent
from app.errors import ErrorKind
from app.providers.anthropic import AnthropicProvider
from app.providers.base import UpstreamError
from app.providers.openai_compat import OpenAICompatProvider
from app.routing.health import DeploymentHealth
from app.routing.retry_after import RETRY_AFTER_CAP_S
from app.wire import anthropic as anthropic_wire

Provider = AnthropicProvider | OpenAICompatProvider
# (request number on this server, request JSON, reader, writer) → keep the connection open?
Handler = Callable[[int, Any, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]

HOSTILE = b"HOSTILE-BYTES"  # in every hostile reply: must never reach a later answer
CALL_BOUND_S = 10.0  # no call may take longer than this (the limits under test are far shorter)
KINDS = ("anthropic", "openai")
ERROR_KINDS = set(ErrorKind.__args__)  # type: ignore[attr-defined]


# ---- the raw server ------------------------------------------------------------------------------------


class RawServer:
    """Reads HTTP/1.1 requests (Content-Length bodies) and lets a handler write any bytes back.

    Request 1 goes to ``hostile``; every later request gets an honest answer that repeats the
    request's own prompt, so a test sees whose bytes an answer carries."""

    def __init__(self, hostile: Handler) -> None:
        self.hostile = hostile
        self.requests = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = orjson.loads(await reader.readexactly(length))
                self.requests += 1
                handler = self.hostile if self.requests == 1 else honest
                if not await handler(self.requests, body, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()


def prompt_of(body: Any) -> str:
    """The text of the request's last message, whichever wire format carried it."""
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else content[0]["text"]


def answer_json(body: Any, text: str) -> bytes:
    if "max_tokens" in body:  # Anthropic Messages
        return orjson.dumps(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 1},
            }
        )
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
    )


def answer_sse(body: Any, text: str) -> bytes:
    if "max_tokens" in body:
        response = anthropic_wire.parse_response(orjson.loads(answer_json(body, text)))
        return b"".join(anthropic_wire.encode_event(e) for e in anthropic_wire.response_to_events(response))
    chunks = [
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]},
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"id": "c", "model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
    ]
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def response(body: bytes, *, status: str = "200 OK", headers: bytes = b"", sse: bool = False) -> bytes:
    kind = b"text/event-stream" if sse else b"application/json"
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + kind + b"\r\n" + headers
        + b"content-length: %d\r\n\r\n" % len(body) + body
    )


async def honest(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    text = prompt_of(body)
    if body.get("stream"):
        writer.write(response(answer_sse(body, text), sse=True))
    else:
        writer.write(response(answer_json(body, text)))
    await writer.drain()
    return True


# ---- the provider under test -------------------------------------------------------------------------


def make_provider(kind: str, url: str, **limits: Any) -> Provider:
    options = {"connect_timeout_s": 2.0, "read_timeout_s": 5.0, **limits}
    if kind == "anthropic":
        cfg = ProviderConfig(kind="anthropic", base_url=url, **options)
        return AnthropicProvider("hostile", cfg, base_url=url, credential="k", is_simulator=False)
    cfg = ProviderConfig(kind="openai", base_url=f"{url}/v1", **options)
    return OpenAICompatProvider("hostile", cfg, base_url=f"{url}/v1", credential="k", is_simulator=False)


def request(kind: str, text: str, *, stream: bool) -> ChatRequest:
    from app.wire.openai import client as openai_client

    if kind == "anthropic":
        body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": text}], "stream": stream}
        return anthropic_wire.parse_request(body, anthropic_version=None, anthropic_beta=None)
    return openai_client.parse_request({"model": "m", "messages": [{"role": "user", "content": text}]})


async def call(provider: Provider, kind: str, text: str, *, stream: bool) -> str:
    """One request's answer text (UpstreamError if it fails), bounded in time."""

    async def run() -> str:
        if not stream:
            answer = await provider.complete(request(kind, text, stream=False), "m", {})
            return "".join(b.get("text", "") for b in answer.content)
        upstream = await provider.open_stream(request(kind, text, stream=True), "m", {})
        events: list[StreamEvent] = [e async for e in upstream]
        return "".join(
            e.data["delta"].get("text", "") for e in events if e.type == "content_block_delta"
        )

    return await asyncio.wait_for(run(), CALL_BOUND_S)


def assert_well_formed(err: UpstreamError) -> None:
    assert err.status is None or 400 <= err.status <= 599
    assert err.kind in ERROR_KINDS
    assert isinstance(err.message, str) and err.message
    assert HOSTILE.decode() not in err.message and "127.0.0.1" not in err.message
    assert err.retry_after_s is None or 0 <= err.retry_after_s <= RETRY_AFTER_CAP_S


async def hostile_case(
    kind: str, hostile: Handler, *, stream: bool, expect_error: bool = True, **limits: Any
) -> UpstreamError | None:
    """The hostile first call, then three honest ones on the same provider, streamed and not."""
    async with RawServer(hostile) as server:
        provider = make_provider(kind, server.url, **limits)
        try:
            error: UpstreamError | None = None
            try:
                first = await call(provider, kind, "first", stream=stream)
                assert first == "first", "the first answer carries someone else's bytes"
            except UpstreamError as exc:
                error = exc
            assert (error is not None) == expect_error, error
            if error is not None:
                assert_well_formed(error)
            for n, follow_stream in enumerate((False, True, False)):
                text = f"follow-up {n}"
                assert await call(provider, kind, text, stream=follow_stream) == text
        finally:
            await provider.aclose()
        assert server.requests == 4
        return error


# ---- the cases ------------------------------------------------------------------------------------------


def writes(data: bytes, *, keep_open: bool = False) -> Handler:
    """A handler that writes ``data`` (bytes, or a function of the request body) and hangs up."""

    async def handler(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        if keep_open:
            await reader.read()  # until the client leaves
        return False

    return handler


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_a_second_response_in_the_same_write_is_never_spliced_in(kind: str, stream: bool) -> None:
    async def splice(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        honest_reply = answer_sse(body, "first") if stream else answer_json(body, "first")
        spliced = answer_sse(body, HOSTILE.decode()) if stream else answer_json(body, HOSTILE.decode())
        writer.write(response(honest_reply, sse=stream) + response(spliced, sse=stream))
        await writer.drain()
        return True  # and keep serving on this connection, as if the splice were a real answer

    # the first answer is the honest one; the spliced one must reach nobody (hostile_case checks both)
    await hostile_case(kind, splice, stream=stream, expect_error=False)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_second_chunked_response_after_the_last_chunk_is_never_spliced_in(kind: str) -> None:
    async def splice(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        payload = answer_json(body, "first")
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
        writer.write(head + chunked + response(answer_json(body, HOSTILE.decode())))
        await writer.drain()
        return True

    await hostile_case(kind, splice, stream=False, expect_error=False)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (1 << 20) + b"\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\n" + b"x-h: v\r\n" * 200_000 + b"content-length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 " + b"O" * (1 << 20) + b"\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nno colon here\r\ncontent-length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 5\r\n\r\n{}",
        b"HTTP/9.9 200 OK\r\ncontent-length: 2\r\n\r\n{}",
        b"GARBAGE\r\n\r\n",
    ],
    ids=["1MiB header line", "200k header lines", "1MiB status line", "no colon", "two lengths", "bad version", "junk"],
)
async def test_a_malformed_response_head_is_an_error(kind: str, head: bytes) -> None:
    err = await hostile_case(kind, writes(head), stream=False)
    assert err is not None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "chunks",
    [b"zz\r\n{}\r\n0\r\n\r\n", b"-2\r\n{}\r\n0\r\n\r\n", b"fffffffffffffffffffffff\r\n{}", b"9\r\n{}\r\n0\r\n\r\n"],
    ids=["not hex", "negative", "overflowing", "larger than sent"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_bad_chunk_sizes_are_an_error(kind: str, chunks: bytes, stream: bool) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    err = await hostile_case(kind, writes(head + chunks + HOSTILE), stream=stream)
    assert err is not None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_a_short_body_is_an_error(kind: str, stream: bool) -> None:
    async def short(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        whole = answer_sse(body, "first") if stream else answer_json(body, "first")
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % (len(whole) + 500)
        writer.write(head + whole[: len(whole) // 2])  # fewer bytes than announced, then the close
        await writer.drain()
        return False

    err = await hostile_case(kind, short, stream=stream)
    assert err is not None and (err.status, err.kind) == (None, "api_error")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_a_server_that_never_answers_times_out(kind: str, stream: bool) -> None:
    async def silent(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await reader.read()
        return False

    err = await hostile_case(kind, silent, stream=stream, read_timeout_s=0.3)
    assert err is not None and (err.status, err.kind) == (None, "timeout")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stream_trickling_blank_lines_is_cut(kind: str) -> None:
    async def trickle(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:  # a blank line (or a comment) every 50 ms: each read beats read_timeout_s
            writer.write(b"1\r\n\n\r\n" if kind == "anthropic" else b"4\r\n: \n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    err = await hostile_case(kind, trickle, stream=True, event_timeout_s=0.3)
    assert err is not None and (err.status, err.kind) == (None, "timeout")


@pytest.mark.parametrize("kind", KINDS)
async def test_an_answer_trickled_a_byte_at_a_time_is_cut_at_the_response_timeout(kind: str) -> None:
    async def trickle(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n")
        while True:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)

    err = await hostile_case(kind, trickle, stream=False, response_timeout_s=0.4)
    assert err is not None and (err.status, err.kind) == (None, "timeout")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_response_head_trickled_a_byte_at_a_time_is_cut_at_the_response_timeout(kind: str) -> None:
    async def trickle(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while True:
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    for stream in (False, True):
        err = await hostile_case(kind, trickle, stream=stream, response_timeout_s=0.4)
        assert err is not None and (err.status, err.kind) == (None, "timeout")


@pytest.mark.parametrize(
    "sse",
    [
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"\xff\xfe"}}\n\n',
        b'event: \xff\xfe\ndata: {"type":"ping"}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":"\xc3\x28"}}]}\n\n',
    ],
    ids=["in data", "in the event name", "in an OpenAI chunk"],
)
@pytest.mark.parametrize("kind", KINDS)
async def test_invalid_utf8_inside_sse_is_a_malformed_reply(kind: str, sse: bytes) -> None:
    async def bad(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        start = answer_sse(body, "x").split(b"\n\n")[0] + b"\n\n"  # one honest first event
        writer.write(response(start + sse + HOSTILE, sse=True))
        await writer.drain()
        return True

    err = await hostile_case(kind, bad, stream=True)
    assert err is not None and (err.status, err.kind) == (502, "api_error")
    assert err.message.startswith("the upstream provider sent a malformed reply")


@functools.cache
def gzip_bomb(decoded_mib: int) -> list[bytes]:
    """A valid gzip body of ``decoded_mib`` MiB of zeros, as pieces of about 1 KB each (1 GiB ≈ 1 MB).

    Each MiB is compressed after a full flush, so every piece after the first is the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(decoded_mib):
        crc = zlib.crc32(zeros, crc)
    trailer = b"\x03\x00" + struct.pack("<II", crc, (decoded_mib << 20) & 0xFFFFFFFF)  # empty last block
    return [first, *[repeated] * (decoded_mib - 1), trailer]


def test_the_gzip_bomb_is_what_it_claims() -> None:
    body = b"".join(gzip_bomb(8))
    assert zlib.decompress(body, 31) == bytes(8 << 20)
    assert sum(map(len, gzip_bomb(1024))) < 1_100_000  # 1 GiB decoded from about 1 MB


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_a_gzip_bomb_is_refused_without_inflating_it(kind: str, stream: bool) -> None:
    sent: list[int] = []

    async def bomb(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        content_type = b"text/event-stream" if stream else b"application/json"
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type
            + b"\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for piece in gzip_bomb(1024):  # 1 GiB decoded
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            sent.append(len(piece))
            await asyncio.sleep(0)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return False

    err = await hostile_case(kind, bomb, stream=stream)
    assert err is not None and (err.status, err.kind) == (502, "api_error")
    assert "decompresses more than" in err.message or "larger than" in err.message


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "x-gzip"])
async def test_an_honest_compressed_answer_unasked_for_is_decoded(kind: str, stream: bool, encoding: str) -> None:
    async def compressed(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        plain = answer_sse(body, "first") if stream else answer_json(body, "first")
        packed = zlib.compress(plain) if encoding == "deflate" else gzip.compress(plain)
        writer.write(response(packed, sse=stream, headers=b"content-encoding: " + encoding.encode() + b"\r\n"))
        await writer.drain()
        return True

    await hostile_case(kind, compressed, stream=stream, expect_error=False)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("encoding", "payload"), [("br", b"\x0b\x02\x80{}\x03"), ("gzip", b"not gzip at all")])
async def test_an_undecodable_encoding_is_a_malformed_reply(kind: str, encoding: str, payload: bytes) -> None:
    head = b"content-encoding: " + encoding.encode() + b"\r\n"
    err = await hostile_case(kind, writes(response(payload, headers=head)), stream=False)
    assert err is not None and (err.status, err.kind) == (502, "api_error")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_300_mb_body_is_refused_from_its_length_without_reading_it(kind: str) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (300 << 20)
    err = await hostile_case(kind, writes(head + HOSTILE, keep_open=True), stream=False)
    assert err is not None and "larger than the configured limit" in err.message


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_a_300_mb_chunked_body_is_cut_at_the_limit(kind: str, stream: bool) -> None:
    async def endless(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        event = b'data: {"type":"ping"}\n\n' if kind == "anthropic" else b": keep-alive\n\ndata: {}\n\n"
        piece = (HOSTILE + b"\n\n") if not stream else event * 2000
        for _ in range((300 << 20) // len(piece)):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        return False

    limits = {"max_stream_bytes": 2 << 20} if stream else {"max_response_bytes": 2 << 20}
    err = await hostile_case(kind, endless, stream=stream, **limits)
    assert err is not None and (err.status, err.kind) == (502, "api_error")


@pytest.mark.parametrize("kind", KINDS)
async def test_one_oversized_sse_event_is_refused(kind: str) -> None:
    async def huge(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        piece = b"data: " + b"x" * 65536
        for _ in range(64):  # 4 MiB without a blank line
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        await reader.read()
        return False

    err = await hostile_case(kind, huge, stream=True, max_event_bytes=256 << 10)
    assert err is not None and "an event is larger than" in err.message


@pytest.mark.parametrize("kind", KINDS)
async def test_a_huge_error_body_is_not_read_whole(kind: str) -> None:
    head = b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    err = await hostile_case(kind, writes(head % (300 << 20) + HOSTILE, keep_open=True), stream=False)
    assert err is not None and err.status == 500


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e309", "99999999999", "-inf", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_a_hostile_retry_after_is_absent_or_capped_and_the_breaker_reopens(value: str) -> None:
    head = b"HTTP/1.1 429 Too Many Requests\r\nretry-after: " + value.encode() + b"\r\ncontent-length: 2\r\n\r\n{}"
    err = await hostile_case("anthropic", writes(head), stream=False)
    assert err is not None and (err.status, err.kind) == (429, "rate_limit")
    assert err.retry_after_s is None or err.retry_after_s == RETRY_AFTER_CAP_S
    now = [0.0]
    health = DeploymentHealth(failures_to_trip=1, cooldown_s=30.0, clock=lambda: now[0])
    health.started("hostile/m")
    health.finished("hostile/m", ok=False, retry_after_s=err.retry_after_s)
    assert not health.deployment_usable("hostile/m")
    now[0] = health.max_cooldown_s + 0.001
    assert health.deployment_usable("hostile/m")  # never open past the cap


# ---- malformed JSON shapes inside a 200 (issue 16) ----------------------------------------------------------

ANTHROPIC_BAD = [
    {},
    {"type": "error", "error": {"type": "overloaded_error", "message": "HOSTILE-BYTES"}},
    {"type": "message", "content": 5, "usage": {"input_tokens": 1, "output_tokens": 1}},
    {"type": "message", "content": [{"type": "text", "text": 5}], "usage": {"input_tokens": 1, "output_tokens": 1}},
    {"type": "message", "content": [], "usage": {"input_tokens": "ten", "output_tokens": 1}},
    {"type": "message", "content": [], "usage": {"input_tokens": 10**30, "output_tokens": 1}},
    {"type": "message", "content": [], "usage": {"input_tokens": -5, "output_tokens": 1}},
    {"type": "message", "content": [], "usage": {"input_tokens": 1.5, "output_tokens": 1}},
    {"type": "message", "content": [], "usage": {"input_tokens": True, "output_tokens": 1}},
    {"type": "message", "content": []},
    {"type": "message", "content": [{"type": "tool_use", "id": "t", "name": 3, "input": {}}], "usage": {}},
    [1, 2, 3],
]
OPENAI_BAD = [
    {},
    {"error": {"message": "HOSTILE-BYTES", "type": "server_error"}},
    {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
    {"choices": [{"message": {"content": 5}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
    {"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "ten", "completion_tokens": 1}},
    {"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": 10**30, "completion_tokens": 1}},
    {"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": 1, "completion_tokens": -1}},
    {"choices": [{"message": {"content": "x"}}]},
    {"choices": [{"message": {"tool_calls": [{"function": {"name": 1}}]}}], "usage": {}},
    "a string",
]


@pytest.mark.parametrize(
    ("kind", "payload"),
    [("anthropic", p) for p in ANTHROPIC_BAD] + [("openai", p) for p in OPENAI_BAD],
)
async def test_a_200_with_the_wrong_shape_is_a_malformed_reply(kind: str, payload: Any) -> None:
    err = await hostile_case(kind, writes(response(json.dumps(payload).encode())), stream=False)
    assert err is not None and (err.status, err.kind) == (502, "api_error")
    assert err.message.startswith("the upstream provider sent a malformed reply: ")


ANTHROPIC_BAD_EVENTS = [
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": "ten"}},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 10**30}},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": -3}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 5}},
    {"type": "content_block_delta", "index": "0", "delta": {"type": "text_delta", "text": "x"}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": 5}},
    {"type": "message_start", "message": {"usage": {"input_tokens": "ten"}}},
    {"type": 7},
    [1],
]
OPENAI_BAD_CHUNKS = [
    {"choices": [{"delta": {"content": 5}}]},
    {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": "two"}},
    {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 10**30}},
    {"choices": [{"delta": {"tool_calls": [{"index": -1, "function": {"arguments": "{}"}}]}}]},
    {"choices": 5},
    [1],
]


@pytest.mark.parametrize(
    ("kind", "payload"),
    [("anthropic", p) for p in ANTHROPIC_BAD_EVENTS] + [("openai", p) for p in OPENAI_BAD_CHUNKS],
)
async def test_a_stream_event_with_the_wrong_shape_is_a_malformed_reply(kind: str, payload: Any) -> None:
    async def bad(_: int, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        start = answer_sse(body, "x").split(b"\n\n")[0] + b"\n\n"
        name = b"event: " + str(payload.get("type")).encode() + b"\n" if isinstance(payload, dict) else b""
        writer.write(response(start + name + b"data: " + json.dumps(payload).encode() + b"\n\n", sse=True))
        await writer.drain()
        return True

    err = await hostile_case(kind, bad, stream=True)
    assert err is not None and (err.status, err.kind) == (502, "api_error")
    assert err.message.startswith("the upstream provider sent a malformed reply: ")

