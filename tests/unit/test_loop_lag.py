"""The opt-in event-loop lag probe: it reports the largest lag it has seen, and sees a blocked loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.observability.loop_lag import LoopLagProbe
from app.observability.metrics import Metrics


def test_only_a_new_maximum_is_reported() -> None:
    reported: list[float] = []
    probe = LoopLagProbe(0.01, reported.append)
    for lag in (0.002, 0.001, 0.05, 0.02):
        probe.sample(lag)
    assert reported == [0.002, 0.05]
    assert probe.max_lag_s == 0.05


def test_a_non_positive_interval_is_refused() -> None:
    with pytest.raises(ValueError):
        LoopLagProbe(0, lambda _: None)


async def test_a_blocked_loop_shows_in_the_gauge() -> None:
    metrics = Metrics()
    probe = LoopLagProbe(0.005, metrics.event_loop_lag_max.set)
    probe.start()
    await asyncio.sleep(0.02)
    time.sleep(0.3)  # noqa: ASYNC251 - blocking the loop on purpose: the probe must see it
    await asyncio.sleep(0.02)
    await probe.aclose()
    value = metrics.registry.get_sample_value("tollway_event_loop_lag_max_seconds")
    assert value is not None and value >= 0.25
