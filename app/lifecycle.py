"""The process's serving state: serving, draining (shutdown began), and the in-flight streams.

Shutdown in two steps. ``begin_drain`` (on SIGTERM, before the server stops accepting): readiness
turns 503 on every connection so load balancers move away, while requests in flight go on. After the
grace period ``stop_streams`` ends every stream still open: each relay's current wait times out at
once, it sends the client its format's error event and the request is recorded as ``shutdown``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType
from typing import Any

log = logging.getLogger("tollway.lifecycle")


class StreamWatch:
    """One open stream's current wait on its upstream, so shutdown can interrupt it."""

    __slots__ = ("timeout",)

    def __init__(self) -> None:
        self.timeout: asyncio.Timeout | None = None


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False
        self.stopping = False
        self._streams: set[StreamWatch] = set()
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    def begin_drain(self) -> None:
        if not self.draining:
            log.info("draining: readiness is now 503; %d stream(s) in flight", len(self._streams))
        self.draining = True

    def open_stream(self) -> StreamWatch:
        watch = StreamWatch()
        self._streams.add(watch)
        self._all_closed.clear()
        return watch

    def close_stream(self, watch: StreamWatch) -> None:
        self._streams.discard(watch)
        if not self._streams:
            self._all_closed.set()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def stop_streams(self) -> None:
        """End every open stream now (each relay sees its wait time out and reads ``stopping``)."""
        self.draining = True
        self.stopping = True
        now = asyncio.get_running_loop().time()
        for watch in list(self._streams):
            if watch.timeout is not None:
                watch.timeout.reschedule(now)

    async def drain_streams(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for open streams to finish on their own, then stop the rest."""
        self.begin_drain()
        if await self._wait_all_closed(grace_s):
            return
        log.warning("shutdown: ending %d stream(s) still open after %.0f s", len(self._streams), grace_s)
        self.stop_streams()
        # Give each relay a moment to send its error event and record the request.
        await self._wait_all_closed(2.0)

    async def _wait_all_closed(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._all_closed.wait()
            return True
        except TimeoutError:
            return False


def drain_on_sigterm(lifecycle: Lifecycle, grace_s: float) -> None:
    """On SIGTERM (and SIGINT): turn readiness to 503 at once and start the stream drain, then let
    the server's own handler stop accepting and wait for the requests in flight.

    The server (uvicorn) installs its handlers before the application starts; this wraps them, so
    it must be called from the application's start-up, inside the running loop.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            if not lifecycle.draining:
                lifecycle.begin_drain()
                loop.call_soon_threadsafe(_start_drain, lifecycle, grace_s)
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)


_drain_tasks: set[asyncio.Task[None]] = set()


def _start_drain(lifecycle: Lifecycle, grace_s: float) -> None:
    task = asyncio.get_running_loop().create_task(lifecycle.drain_streams(grace_s))
    _drain_tasks.add(task)
    task.add_done_callback(_drain_tasks.discard)
