"""An opt-in event-loop lag probe: how late a short sleep wakes up is how long something blocked the loop.

``TOLLWAY_LOOP_LAG_PROBE_S`` (seconds between samples; 0, the default, leaves the probe off) starts
one background task per process. Each sample sleeps for the interval and records the overshoot; the
largest overshoot since start-up is the gauge ``tollway_event_loop_lag_max_seconds``. It touches no
request: the cost is one timer per interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class LoopLagProbe:
    """Samples the running loop's lag every ``interval_s`` and reports the maximum seen."""

    def __init__(self, interval_s: float, report: Callable[[float], None]) -> None:
        if interval_s <= 0:
            raise ValueError("the probe interval must be positive")
        self.interval_s = interval_s
        self.report = report
        self.max_lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag-probe")

    def sample(self, lag_s: float) -> None:
        if lag_s > self.max_lag_s:
            self.max_lag_s = lag_s
            self.report(lag_s)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval_s)
            self.sample(max(0.0, loop.time() - before - self.interval_s))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
