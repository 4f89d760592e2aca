"""A thin ASGI layer: requests in, JSON or SSE out, with no framework objects on the hot path.

Endpoints are plain ``async def handler(request: SimRequest) -> Reply`` functions wrapped in
``Endpoint``, which Starlette routes to as an ASGI app (so no Request/Response objects, no per-request
middleware). ``SSEReply`` streams pre-rendered events one write each, applies the cadence and the
stream faults, and notices a client disconnect to count cancelled streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

Scope = dict[str, Any]
Message = dict[str, Any]


class SimulatorSink(Protocol):
    """What the HTTP layer needs of the simulator's state: counters and the request log."""

    stats: Any

    def record(self, request: SimRequest) -> None: ...
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_CONTENT_TYPE = (b"content-type", b"application/json")
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_UNPARSED = object()


def route_path(scope: Scope) -> str:
    """The path below the simulator's mount point (Starlette's rule for mounted apps)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        return path[len(root_path) :] or "/"
    return path


@dataclass(slots=True)
class SimRequest:
    method: str
    path: str
    query: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes
    _json: Any = field(default=_UNPARSED, repr=False)

    @property
    def tag(self) -> str | None:
        """The path segment(s) before ``/v1`` that name a simulated deployment, if any."""
        return self.params.get("tag")

    def json(self) -> Any:
        """The body parsed as JSON (raises orjson.JSONDecodeError), parsed once."""
        if self._json is _UNPARSED:
            self._json = orjson.loads(self.body) if self.body else None
        return self._json

    def recorded_body(self) -> Any:
        if self._json is not _UNPARSED:
            return self._json
        try:
            return self.json()
        except orjson.JSONDecodeError:
            return self.body.decode("utf-8", "replace")

    def tag_segments(self) -> set[str]:
        if not self.tag:
            return set()
        return {self.tag, *self.tag.split("/")}

    def header_float(self, name: str) -> float | None:
        value = self.headers.get(name)
        if value is None or not value.strip():
            return None
        try:
            return float(value)
        except ValueError:
            return None

    def header_int(self, name: str) -> int | None:
        value = self.header_float(name)
        return None if value is None else int(value)

    def header_flag(self, name: str) -> bool:
        return self.headers.get(name, "").strip().lower() in ("1", "true", "yes", "on")

    def header_list(self, name: str) -> list[str]:
        value = self.headers.get(name)
        if not value:
            return []
        return [item.strip() for item in value.split(",") if item.strip()]


async def read_request(scope: Scope, receive: Receive) -> SimRequest:
    chunks: list[bytes] = []
    more_body = True
    while more_body:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more_body = message.get("more_body", False)
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    query: bytes = scope.get("query_string", b"")
    return SimRequest(
        method=scope["method"],
        path=route_path(scope),
        query=query.decode("latin-1"),
        params=scope.get("path_params", {}),
        headers=headers,
        body=b"".join(chunks),
    )


class Reply(Protocol):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class JSONReply:
    __slots__ = ("body", "headers", "status")

    def __init__(self, payload: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None):
        self.status = status
        self.body = orjson.dumps(payload)
        self.headers = headers or []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [
                    JSON_CONTENT_TYPE,
                    (b"content-length", str(len(self.body)).encode()),
                    *self.headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.body})


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One Anthropic-style named event (the JSON repeats the name in ``type``)."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def sse_data(data: Any) -> bytes:
    """One OpenAI-style data-only event."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


@dataclass(slots=True)
class StreamPlan:
    """A whole stream, pre-rendered: events before the first delta, the deltas, the terminal events,
    and the wire's in-stream error event (used by ``x-sim-stream-error-after``)."""

    head: list[bytes]
    deltas: list[bytes]
    tail: list[bytes]
    error_event: bytes
    ttft_s: float = 0.0
    interval_s: float = 0.0
    error_after: int | None = None
    abort_after: int | None = None


class SSEReply:
    __slots__ = ("headers", "plan", "state")

    def __init__(self, plan: StreamPlan, state: SimulatorSink, headers: list[tuple[bytes, bytes]]):
        self.plan = plan
        self.state = state
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stats = self.state.stats
        plan = self.plan
        await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *self.headers]})
        stats.streams_started += 1
        # A zero-delay stream finishes within one loop turn: no watcher needed (nor useful).
        if plan.ttft_s <= 0 and plan.interval_s <= 0:
            await self._play(send)
            return
        stream_task = asyncio.current_task()
        assert stream_task is not None
        disconnected = False

        async def watch_for_disconnect() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            stream_task.cancel()

        watcher = asyncio.create_task(watch_for_disconnect())
        try:
            await self._play(send, before_last_write=watcher.cancel)
        except asyncio.CancelledError:
            if not disconnected:
                raise
            stream_task.uncancel()
            stats.streams_cancelled += 1
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _play(self, send: Send, before_last_write: Callable[[], Any] | None = None) -> None:
        plan = self.plan
        stats = self.state.stats
        loop = asyncio.get_running_loop()
        for event in plan.head:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if plan.ttft_s > 0:
            await asyncio.sleep(plan.ttft_s)
        started = loop.time()
        for index, event in enumerate(plan.deltas):
            if index == plan.abort_after:
                stats.streams_aborted += 1
                return  # no terminal events and no end of body: the server closes the connection
            if index == plan.error_after:
                stats.streams_failed += 1
                await self._finish(send, [plan.error_event], before_last_write)
                return
            if index and plan.interval_s > 0:
                # Pace against the start time so that sleep overshoot does not accumulate.
                delay = started + index * plan.interval_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        count = len(plan.deltas)
        if count == plan.abort_after:
            stats.streams_aborted += 1
            return
        if count == plan.error_after:
            stats.streams_failed += 1
            await self._finish(send, [plan.error_event], before_last_write)
            return
        await self._finish(send, plan.tail, before_last_write)
        stats.streams_completed += 1

    async def _finish(
        self, send: Send, events: list[bytes], before_last_write: Callable[[], Any] | None
    ) -> None:
        for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        if before_last_write is not None:
            before_last_write()  # the server signals completion to receive(): not a disconnect
        await send({"type": "http.response.body", "body": b"", "more_body": False})


Handler = Callable[[SimRequest], Awaitable[Reply]]


class Endpoint:
    """An ASGI app around a handler: read the request, record it, answer."""

    __slots__ = ("handler", "record", "state")

    def __init__(self, handler: Handler, state: SimulatorSink, record: bool = True) -> None:
        self.handler = handler
        self.state = state
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = await read_request(scope, receive)
        if self.record:
            self.state.record(request)
        reply = await self.handler(request)
        await reply(scope, receive, send)
