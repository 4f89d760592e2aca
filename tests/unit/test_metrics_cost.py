"""The per-request and per-write metric calls stay on their cheap path: after a label set's first
use, no prometheus-client ``labels()`` call (which validates and locks) and no lock-free miss; a
disabled tracer hands out one shared no-op. Their cost in microseconds is measured by
``python -m bench.observability_cost``, not asserted here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from app.observability.metrics import Metrics
from app.observability.tracing import configure_tracing, span
from bench.observability_cost import finished_request


@pytest.fixture
def labels_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    calls: list[Any] = []
    original = MetricWrapperBase.labels

    def counting(self: MetricWrapperBase, *args: Any, **kwargs: Any) -> Any:
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MetricWrapperBase, "labels", counting)
    yield calls


def test_hot_path_metric_calls_resolve_labels_once(labels_calls: list[Any]) -> None:
    metrics = Metrics(registry=CollectorRegistry())
    event = finished_request()

    def one_request() -> None:
        metrics.request_started("anthropic")
        for _ in range(5):
            metrics.observe_inter_event(0.004, "anthropic")
        metrics.observe(event, team_name="search", route="auto", upstream_s=0.7, ttft_s=0.2)
        metrics.request_finished("anthropic")

    one_request()
    first = len(labels_calls)
    assert first > 0  # the first request resolves its label sets
    for _ in range(100):
        one_request()
    assert len(labels_calls) == first  # later ones reuse them


def test_disabled_tracing_hands_out_one_shared_no_op() -> None:
    configure_tracing(enabled=False)
    first = span("pipeline.route", model="claude-haiku-4-5")
    second = span("pipeline.admit")
    assert first is second
    with first:
        pass
