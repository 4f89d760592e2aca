"""Client-side cost of the upstream call, side by side: ``python -m bench.provider_bench``.

Starts the simulator (``python -m app.simulator``, zero latency, 50-token replies) in its own process
and measures, in this process only (``time.process_time``, so the simulator's CPU is not counted):

* CPU per non-streamed request: a bare ``aiohttp`` POST + read (the floor), then each provider
  adapter's ``complete`` (build the body, bounded read, strict checks, parse);
* CPU per 50-event stream through each adapter's ``open_stream`` (bounded SSE decode, checks, events);
* the strict checks alone, as a micro-benchmark: the checked readers against the same reads without
  checks, per reply and per stream;
* the longest event-loop stall while hostile responses arrive (a gzip bomb, 200,000 header lines, an
  endless body, an endless event), served from a thread with its own loop so only the client's work
  is measured.

Options: ``--requests N`` (default 2000), ``--streams N`` (default 500).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from app.config import ProviderConfig
from app.domain import ChatRequest, ChatResponse, StreamEvent, Usage
from app.providers.anthropic import AnthropicProvider
from app.providers.base import UpstreamError
from app.providers.openai_compat import OpenAICompatProvider
from app.wire import anthropic as anthropic_wire
from app.wire.openai import provider as openai_provider
from app.wire.sse import SSEParser
from bench.procs import ProcessGroup, free_port, python_argv, wait_http


def _request(stream: bool) -> ChatRequest:
    body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "Hello there"}]}
    return anthropic_wire.parse_request({**body, "stream": stream}, anthropic_version=None, anthropic_beta=None)


async def _cpu_per_call(call: Callable[[], Awaitable[Any]], n: int) -> float:
    """Microseconds of this process's CPU per call (after a warm-up), median of three runs."""
    for _ in range(min(n, 200)):
        await call()
    runs = []
    for _ in range(3):
        start = time.process_time()
        for _ in range(n):
            await call()
        runs.append((time.process_time() - start) / n * 1e6)
    return statistics.median(runs)


async def upstream_cpu(base: str, requests: int, streams: int) -> dict[str, float]:
    anthropic = AnthropicProvider(
        "sim", ProviderConfig(kind="anthropic", base_url=base), base_url=base, credential="k", is_simulator=True
    )
    openai_base = f"{base}/v1"
    openai = OpenAICompatProvider(
        "sim", ProviderConfig(kind="openai", base_url=openai_base), base_url=openai_base, credential="k",
        is_simulator=True,
    )
    plain, streamed = _request(False), _request(True)
    body = orjson.dumps(anthropic_wire.build_request(plain, "claude-haiku-4-5", stream=False))
    headers = {"content-type": "application/json", "x-api-key": "k", "anthropic-version": "2023-06-01"}
    results: dict[str, float] = {}
    async with aiohttp.ClientSession(skip_auto_headers=("Accept-Encoding",)) as session:

        async def bare() -> None:
            async with session.post(f"{base}/v1/messages", data=body, headers=headers) as response:
                await response.read()

        results["bare aiohttp POST + read (floor)"] = await _cpu_per_call(bare, requests)

    async def anthropic_complete() -> None:
        await anthropic.complete(plain, "claude-haiku-4-5", {})

    async def openai_complete() -> None:
        await openai.complete(plain, "gpt-5-mini", {})

    async def anthropic_stream() -> None:
        events = [e async for e in await anthropic.open_stream(streamed, "claude-haiku-4-5", {})]
        assert len(events) >= 50, len(events)

    async def openai_stream() -> None:
        events = [e async for e in await openai.open_stream(streamed, "gpt-5-mini", {})]
        assert len(events) >= 50, len(events)

    results["Anthropic adapter complete()"] = await _cpu_per_call(anthropic_complete, requests)
    results["OpenAI adapter complete()"] = await _cpu_per_call(openai_complete, requests)
    results["Anthropic adapter stream (50 tokens)"] = await _cpu_per_call(anthropic_stream, streams)
    results["OpenAI adapter stream (50 tokens)"] = await _cpu_per_call(openai_stream, streams)
    await anthropic.aclose()
    await openai.aclose()
    return results


# ---- the checks alone ------------------------------------------------------------------------------------


def _unchecked_anthropic(data: dict[str, Any]) -> ChatResponse:
    """The reply read the way it was before the checks (commit d3add6b), for comparison."""
    u = data.get("usage") or {}
    return ChatResponse(
        id=data.get("id") or "msg_unknown",
        model=data.get("model") or "",
        content=data.get("content") or [],
        stop_reason=data.get("stop_reason"),
        usage=Usage(input_tokens=u.get("input_tokens") or 0, output_tokens=u.get("output_tokens") or 0),
    )


def _time_us(fn: Callable[[], Any], n: int = 20000) -> float:
    for _ in range(1000):
        fn()
    runs = []
    for _ in range(3):
        start = time.process_time()  # CPU, not wall: the bench machine is shared
        for _ in range(n):
            fn()
        runs.append((time.process_time() - start) / n * 1e6)
    return min(runs)


def check_cost() -> dict[str, float]:
    reply = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [
            {"type": "text", "text": "word " * 50},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        ],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 50, "cache_read_input_tokens": 0},
    }
    sse = b"".join(
        anthropic_wire.encode_event(e)
        for e in anthropic_wire.response_to_events(anthropic_wire.parse_response(reply))
    )
    deltas = [
        StreamEvent("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": "word "}})
        for _ in range(50)
    ]
    sse50 = sse + b"".join(anthropic_wire.encode_event(e) for e in deltas)
    items = SSEParser().feed(sse50)

    def checked_stream() -> None:
        for item in items:
            anthropic_wire.parse_event(item.event, item.data, item.raw)

    def unchecked_stream() -> None:
        for item in items:
            orjson.loads(item.data)

    chunk = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}]}

    def openai_chunks() -> None:
        decoder = openai_provider.ChunkDecoder("m")
        for _ in range(50):
            decoder.feed(chunk)

    return {
        "Anthropic reply: checked parse_response": _time_us(lambda: anthropic_wire.parse_response(reply)),
        "Anthropic reply: unchecked read (before)": _time_us(lambda: _unchecked_anthropic(reply)),
        f"Anthropic stream ({len(items)} events): checked parse_event": _time_us(checked_stream, 2000),
        f"Anthropic stream ({len(items)} events): orjson.loads only": _time_us(unchecked_stream, 2000),
        "OpenAI stream (50 chunks): checked ChunkDecoder.feed": _time_us(openai_chunks, 2000),
    }


# ---- event-loop stalls under hostile responses ---------------------------------------------------------


async def _bomb(writer: asyncio.StreamWriter) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)  # the same for every MiB
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n")
    writer.write(b"%x\r\n%s\r\n" % (len(first), first))
    for _ in range(1023):  # 1 GiB decoded
        writer.write(b"%x\r\n%s\r\n" % (len(repeated), repeated))
        await writer.drain()


async def _many_headers(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n" + b"x-h: v\r\n" * 200_000 + b"content-length: 2\r\n\r\n{}")
    await writer.drain()


async def _endless_body(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    piece = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    for _ in range(300 * 16):  # 300 MiB
        writer.write(piece)
        await writer.drain()


async def _endless_event(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    piece = b"data: " + b"x" * 4096
    for _ in range(300 * 256):
        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await writer.drain()


HOSTILE = {
    "gzip bomb (1 GiB of zeros)": _bomb,
    "200,000 header lines": _many_headers,
    "300 MiB body": _endless_body,
    "one endless SSE event": _endless_event,
}


def _hostile_server(name: str, port: int, ready: Any) -> None:
    """In a child process (so its CPU and GIL are not the measured loop's): answer with one reply."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await HOSTILE[name](writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


async def _stall_while(call: Awaitable[Any]) -> tuple[float, float, str]:
    """While ``call`` runs, a task asks to wake every millisecond. Returns the longest wall time it
    waited beyond that (includes other processes taking the core: this machine is shared) and the
    most CPU this thread spent in one such wait (the loop's own work: what the response cost), in ms,
    and how the call ended."""
    lags: list[float] = []
    cpu: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            before, before_cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - before - 0.001)
            cpu.append(time.thread_time() - before_cpu)

    probing = asyncio.create_task(probe())
    await asyncio.sleep(0.01)
    outcome = "no error"
    try:
        await asyncio.wait_for(call, 30)
    except UpstreamError as exc:
        outcome = f"UpstreamError({exc.status}, {exc.kind})"
    done.set()
    await probing
    return max(lags) * 1000, max(cpu) * 1000, outcome


async def loop_stalls() -> dict[str, tuple[float, float, str]]:
    # the noise floor: the same probe while the loop has nothing to do (other processes, GC)
    results = {"(baseline: idle loop, 1 s)": await _stall_while(asyncio.sleep(1))}
    context = multiprocessing.get_context("fork")
    for name in HOSTILE:
        port = free_port()
        ready = context.Event()
        server = context.Process(target=_hostile_server, args=(name, port, ready), daemon=True)
        server.start()
        ready.wait(10)
        base = f"http://127.0.0.1:{port}"
        cfg = ProviderConfig(kind="anthropic", base_url=base)
        provider = AnthropicProvider("hostile", cfg, base_url=base, credential="k", is_simulator=False)
        try:
            if "SSE" in name:
                stream = await provider.open_stream(_request(True), "m", {})
                results[name] = await _stall_while(_drain(stream))
            else:
                results[name] = await _stall_while(provider.complete(_request(False), "m", {}))
        finally:
            await provider.aclose()
            server.terminate()
            server.join(5)
    return results


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


# ---- main ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=500)
    args = parser.parse_args()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    with tempfile.TemporaryDirectory() as logs, ProcessGroup(Path(logs)) as group:
        argv = python_argv("-m", "app.simulator", "--port", str(port), "--ttft-ms", "0")
        argv += ["--tokens-per-second", "0", "--output-tokens", "50", "--log-level", "warning"]
        simulator = group.start("simulator", argv, env=env, cores=None)
        wait_http(port, "/healthz", simulator)
        cpu = asyncio.run(upstream_cpu(f"http://127.0.0.1:{port}", args.requests, args.streams))
    print(f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}")
    print("\nclient CPU per upstream call (µs, this process only, median of 3 runs)")
    for name, value in cpu.items():
        print(f"  {name:<45} {value:8.1f}")
    print("\nstrict checks alone (µs of CPU, best of 3)")
    for name, value in check_cost().items():
        print(f"  {name:<60} {value:8.2f}")
    print("\nlongest event-loop stall while a hostile response arrives (ms: wall, and the loop's own CPU)")
    for name, (wall, cpu_ms, outcome) in asyncio.run(loop_stalls()).items():
        print(f"  {name:<30} {wall:7.2f} {cpu_ms:7.2f}   {outcome}")


if __name__ == "__main__":
    main()
