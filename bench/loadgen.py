"""The load generator: a lean HTTP/1.1 keep-alive client on raw asyncio streams, in its own process.

Each virtual user holds one keep-alive connection and sends prebuilt request bytes, back to back
(closed loop), until the cell's request count or time limit is reached. Per request it records:

* ``latency``: from writing the request to reading its last byte;
* ``ttft`` (streams): to the first *content* event (an Anthropic ``content_block_delta``, an OpenAI
  chunk whose ``delta.content`` is non-empty) — the moment a user sees the first token;
* ``gaps`` (streams): the time between consecutive SSE events as they were read off the socket.

Responses are parsed just enough to find their end (``content-length`` or chunked transfer coding)
and to time SSE events; nothing is JSON-decoded. The process pins itself to the cores it is given
and reports its own CPU time per cell, so a run can show that the client was not the bottleneck.

``run_cell`` is the whole protocol; ``LoadgenProcess`` runs it in a child process driven over a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import random
import resource
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

CRLF = b"\r\n"
HEADER_END = b"\r\n\r\n"


@dataclass(frozen=True)
class CellSpec:
    """What one measured run sends: ``count`` requests (or ``max_seconds``) at ``concurrency``."""

    host: str
    port: int
    path: str
    headers: dict[str, str]
    body: bytes
    stream: bool
    concurrency: int
    count: int
    max_seconds: float
    warmup: int = 0  # requests sent (and discarded) before measuring, spread over the users
    rate: float | None = None  # open loop: Poisson arrivals at this rate, at most `concurrency` in flight
    keep_gaps: bool = True
    stagger_s: float = 0.0  # users start spread over this long (long streams: no thundering herd)


@dataclass
class CellResult:
    requests: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    latency: array = field(default_factory=lambda: array("d"))
    ttft: array = field(default_factory=lambda: array("d"))
    gaps: array = field(default_factory=lambda: array("d"))
    events: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_samples": self.error_samples[:5],
            "wall_s": self.wall_s,
            "client_cpu_s": self.client_cpu_s,
            "latency": self.latency.tobytes(),
            "ttft": self.ttft.tobytes(),
            "gaps": self.gaps.tobytes(),
            "events": self.events,
            "status_counts": self.status_counts,
        }


def _request_bytes(spec: CellSpec) -> bytes:
    lines = [
        f"POST {spec.path} HTTP/1.1",
        f"host: {spec.host}:{spec.port}",
        "content-type: application/json",
        f"content-length: {len(spec.body)}",
        *(f"{k}: {v}" for k, v in spec.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + spec.body


class ResponseError(Exception):
    pass


def _is_content_event(chunk: bytes) -> bool:
    """Whether an SSE chunk carries generated text (not the role/empty first chunk, not metadata)."""
    if b"content_block_delta" in chunk:
        return True
    at = chunk.find(b'"content":"')
    while at >= 0:
        if chunk[at + 11 : at + 12] not in (b'"', b""):
            return True
        at = chunk.find(b'"content":"', at + 11)
    return False


async def _read_response(
    reader: asyncio.StreamReader, started: float, result: CellResult, measure: bool, keep_gaps: bool
) -> tuple[int, bool]:
    """Read one response; return (status, keep_alive). Records TTFT and event gaps when measuring."""
    head = await reader.readuntil(HEADER_END)
    status = int(head[9:12])
    lower = head.lower()
    keep_alive = b"connection: close" not in lower
    if b"transfer-encoding: chunked" not in lower:
        at = lower.find(b"content-length:")
        if at < 0:
            raise ResponseError(f"status {status}: neither content-length nor chunked")
        end = lower.find(CRLF, at)
        length = int(lower[at + 15 : end])
        body = await reader.readexactly(length) if length else b""
        if status != 200:
            raise ResponseError(f"status {status}: {body[:200]!r}")
        return status, keep_alive
    # Chunked: one chunk per ASGI body message, which is one SSE event or a few.
    first_content = False
    last_event: float | None = None
    finished = False
    error_text = b""
    while True:
        size_line = await reader.readuntil(CRLF)
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(CRLF)  # the empty trailer
            break
        data = await reader.readexactly(size + 2)
        now = time.perf_counter()
        n_events = data.count(b"\n\n")
        if status != 200:
            error_text += data[:200]
            continue
        if b"message_stop" in data or b"[DONE]" in data:
            finished = True
        if b"event: error" in data or data.startswith(b'data: {"error"'):
            error_text += data[:200]
        if not measure or n_events == 0:
            continue
        result.events += n_events
        if not first_content and _is_content_event(data):
            first_content = True
            result.ttft.append(now - started)
        if keep_gaps:
            if last_event is not None:
                result.gaps.append(now - last_event)
            for _ in range(n_events - 1):
                result.gaps.append(0.0)
        last_event = now
    if status != 200:
        raise ResponseError(f"status {status}: {error_text!r}")
    if error_text:
        raise ResponseError(f"stream error event: {error_text!r}")
    if not finished:
        raise ResponseError("stream ended without its terminal event")
    return status, keep_alive


async def run_cell(spec: CellSpec) -> CellResult:
    request = _request_bytes(spec)
    result = CellResult()
    measured = 0
    warmup_left = spec.warmup
    deadline = 0.0
    arrivals: asyncio.Queue[float] | None = asyncio.Queue() if spec.rate else None

    def take() -> bool | None:
        """Claim the next request: True = measured, False = warm-up, None = stop."""
        nonlocal measured, warmup_left
        if warmup_left > 0:
            warmup_left -= 1
            return False
        if measured >= spec.count or (deadline and time.perf_counter() > deadline):
            return None
        measured += 1
        return True

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(spec.host, spec.port, limit=1 << 20)
        return reader, writer

    async def user(index: int) -> None:
        if spec.stagger_s:
            await asyncio.sleep(spec.stagger_s * index / spec.concurrency)
        reader, writer = await connect()
        try:
            while True:
                if arrivals is not None:
                    scheduled = await arrivals.get()
                    if scheduled < 0:
                        return
                claim = take()
                if claim is None:
                    return
                started = time.perf_counter() if arrivals is None else scheduled
                try:
                    writer.write(request)
                    status, keep_alive = await _read_response(reader, started, result, claim, spec.keep_gaps)
                    if claim:
                        result.latency.append(time.perf_counter() - started)
                        result.status_counts[status] = result.status_counts.get(status, 0) + 1
                    if not keep_alive:
                        writer.close()
                        reader, writer = await connect()
                except (ResponseError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    if claim:
                        result.errors += 1
                        if len(result.error_samples) < 5:
                            result.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])
                    writer.close()
                    reader, writer = await connect()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def pace() -> None:
        assert arrivals is not None and spec.rate
        rng = random.Random(1234)
        next_at = time.perf_counter()
        total = spec.count + spec.warmup
        for _ in range(total):
            next_at += rng.expovariate(spec.rate)
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if deadline and time.perf_counter() > deadline:
                break
            arrivals.put_nowait(next_at)
        for _ in range(spec.concurrency):
            arrivals.put_nowait(-1.0)

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    deadline = t0 + spec.max_seconds
    tasks = [asyncio.ensure_future(user(i)) for i in range(spec.concurrency)]
    if arrivals is not None:
        tasks.append(asyncio.ensure_future(pace()))
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=spec.max_seconds + 60)
    except TimeoutError:
        for task in tasks:
            task.cancel()
        result.errors += 1
        result.error_samples.append("cell did not finish within its time limit + 60 s")
    result.wall_s = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result.client_cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    result.requests = len(result.latency)
    return result


# ---- the child process ----------------------------------------------------------------------------


def _child_main(conn: multiprocessing.connection.Connection, cores: list[int] | None) -> None:
    if cores:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, set(cores))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        try:
            if isinstance(message, list):  # several cells at once (a mixed load)
                results = loop.run_until_complete(asyncio.gather(*(run_cell(spec) for spec in message)))
                conn.send(("ok", [r.to_dict() for r in results]))
            else:
                conn.send(("ok", loop.run_until_complete(run_cell(message)).to_dict()))
        except Exception as exc:  # report, keep serving
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _decoded(payload: dict[str, Any]) -> dict[str, Any]:
    for name in ("latency", "ttft", "gaps"):
        values = array("d")
        values.frombytes(payload[name])
        payload[name] = values
    return payload


class LoadgenProcess:
    """A long-lived load-generator process; ``run`` sends one cell and waits for its result."""

    def __init__(self, cores: list[int] | None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(child, cores), daemon=True, name="loadgen")
        self._proc.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self._proc.pid is not None
        return self._proc.pid

    def run(self, spec: CellSpec) -> dict[str, Any]:
        self.start(spec)
        result = self.wait()
        assert isinstance(result, dict)
        return result

    def start(self, spec: CellSpec | list[CellSpec]) -> None:
        """Send a cell (or several, run together) without waiting for it; then ``wait``."""
        self._conn.send(spec)

    def poll(self, timeout: float) -> bool:
        return self._conn.poll(timeout)

    def wait(self) -> dict[str, Any] | list[dict[str, Any]]:
        status, payload = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"load generator failed: {payload}")
        if isinstance(payload, list):
            return [_decoded(p) for p in payload]
        return _decoded(payload)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.send(None)
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
