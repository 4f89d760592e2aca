"""EventStreamResponse: streams chunks as they come, and a client that leaves stops the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.background import BackgroundTask

from app.api.event_stream import EventStreamResponse

SCOPE: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}


class Client:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.leave = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


async def test_chunks_then_end_of_body_then_background() -> None:
    client = Client()
    done: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b"event: a\n\n"
        yield b"event: b\n\n"

    response = EventStreamResponse(
        chunks(), headers={"x-request-id": "r1"}, background=BackgroundTask(done.append, "finished")
    )
    await response(SCOPE, client.receive, client.send)
    start = client.sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert (b"x-request-id", b"r1") in start["headers"]
    assert client.bodies() == [b"event: a\n\n", b"event: b\n\n", b""]
    assert client.sent[-1]["more_body"] is False
    assert done == ["finished"]


async def test_client_leaving_stops_the_stream_and_runs_its_cleanup() -> None:
    client = Client()
    cleaned_up = asyncio.Event()
    done: list[str] = []

    async def slow_upstream() -> AsyncIterator[bytes]:
        try:
            yield b"event: first\n\n"
            client.leave.set()  # the client goes away while the upstream is still generating
            await asyncio.sleep(30)
            yield b"event: never\n\n"
        finally:
            cleaned_up.set()  # the relay closes its upstream connection and settles here

    response = EventStreamResponse(slow_upstream(), background=BackgroundTask(done.append, "recorded"))
    await asyncio.wait_for(response(SCOPE, client.receive, client.send), timeout=5)
    assert cleaned_up.is_set()
    assert client.bodies() == [b"event: first\n\n"]  # no end-of-body to a client that left
    assert done == ["recorded"]  # what was served is still recorded
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the cancellation did not leak to the caller


async def test_a_cancellation_from_elsewhere_propagates() -> None:
    client = Client()

    async def forever() -> AsyncIterator[bytes]:
        yield b"x"
        await asyncio.sleep(30)
        yield b"y"

    task = asyncio.create_task(EventStreamResponse(forever())(SCOPE, client.receive, client.send))
    await asyncio.sleep(0.01)
    task.cancel()  # server shutdown, not the client
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert task.cancelled()
