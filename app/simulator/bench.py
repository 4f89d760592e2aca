"""Measure the simulator's own cost over real HTTP: ``python -m app.simulator.bench``.

Starts ``python -m app.simulator`` in a child process, drives it with an httpx client over keep-alive
connections, and reports throughput, client-side latency and the server process's CPU time per
request (read with psutil), so gateway benchmarks can subtract what the fake upstream costs.
``--in-process`` times the ASGI app alone (no server, no sockets) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import httpx
import orjson

SCENARIOS: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {
    "anthropic": (
        "/v1/messages",
        {"x-api-key": "k", "anthropic-version": "2026-10-21"},
        {
            "model": "claude-haiku-5-5",
            "max_tokens": 256,
            "system": [
                {"type": "text", "text": "You are helpful. " * 300, "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [{"role": "user", "content": "Hello there, how are you today?"}],
        },
    ),
    "openai": (
        "/v1/chat/completions",
        {"authorization": "Bearer k"},
        {
            "model": "gpt-5",
            "messages": [
                {"role": "system", "content": "Be brief. " * 50},
                {"role": "user", "content": "Hello there, how are you today?"},
            ],
        },
    ),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("simulator did not start")


async def _run(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: bytes, total: int, concurrency: int
) -> list[float]:
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with client.stream("POST", url, content=body, headers=headers) as response:
                async for _ in response.aiter_raw():
                    pass
                if response.status_code != 200:
                    raise RuntimeError(f"status {response.status_code}")
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def _bench(port: int, pid: int, requests: int, concurrency: int) -> None:
    import psutil

    server = psutil.Process(pid)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:
        print(f"{'scenario':28s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'server CPU us/req':>18s}")
        for name, (path, headers, payload) in SCENARIOS.items():
            for stream in (False, True):
                body = orjson.dumps({**payload, "stream": stream})
                await _run(client, path, headers, body, 200, concurrency)  # warm up
                cpu_before = sum(server.cpu_times()[:2])
                started = time.perf_counter()
                latencies = await _run(client, path, headers, body, requests, concurrency)
                elapsed = time.perf_counter() - started
                cpu = sum(server.cpu_times()[:2]) - cpu_before
                latencies.sort()
                label = f"{name} {'stream (40 deltas)' if stream else 'non-stream'}"
                print(
                    f"{label:28s} {requests / elapsed:8.0f} {statistics.median(latencies) * 1e3:8.2f} "
                    f"{latencies[int(len(latencies) * 0.99) - 1] * 1e3:8.2f} {cpu / requests * 1e6:18.0f}"
                )


async def _bench_in_process(requests: int) -> None:
    """The app alone: ASGI calls without sockets or a server, timed by process CPU."""
    from app.simulator import create_simulator_app

    app = create_simulator_app()

    async def call(path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            pass

        await app(scope, receive, send)

    print(f"{'scenario':28s} {'app CPU us/req':>15s}")
    for name, (path, header_map, payload) in SCENARIOS.items():
        headers = [(k.encode(), v.encode()) for k, v in {**header_map, "host": "sim"}.items()]
        for stream in (False, True):
            body = orjson.dumps({**payload, "stream": stream})
            for _ in range(200):
                await call(path, headers, body)
            started = time.process_time()
            for _ in range(requests):
                await call(path, headers, body)
            cpu = time.process_time() - started
            label = f"{name} {'stream (40 deltas)' if stream else 'non-stream'}"
            print(f"{label:28s} {cpu / requests * 1e6:15.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.simulator.bench", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--in-process", action="store_true", help="time the ASGI app alone, no server")
    args = parser.parse_args(argv)
    if args.in_process:
        asyncio.run(_bench_in_process(args.requests))
        return 0

    port = _free_port()
    env = {**os.environ, "TOLLWAY_SIM_TTFT_MS": "0", "TOLLWAY_SIM_TOKENS_PER_SECOND": "0"}
    server = subprocess.Popen([sys.executable, "-m", "app.simulator", "--port", str(port)], env=env)
    try:
        _wait_for(port)
        asyncio.run(_bench(port, server.pid, args.requests, args.concurrency))
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
