"""What recording costs per call: ``observe`` once per request, ``observe_inter_event`` once per
write to a stream, ``span`` (tracing off) once per stage.

    python -m bench.observability_cost

prints microseconds per call, best of five runs (docs/observability.md quotes them). Set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory for the multiprocess column.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

from prometheus_client import CollectorRegistry

from app.ledger.events import UsageEvent
from app.observability.metrics import Metrics
from app.observability.tracing import configure_tracing, span


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """Best of five runs of ``n`` calls, in microseconds per call (best: least disturbed by the OS)."""
    for _ in range(min(n, 1000)):
        fn()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


def finished_request() -> UsageEvent:
    return UsageEvent(
        request_id="req",
        team_id="team",
        key_id="key",
        client_format="anthropic",
        requested_model="auto",
        served_model="claude-haiku-4-5",
        input_tokens=1200,
        output_tokens=300,
        cache_write_5m_tokens=100,
        cache_read_tokens=4000,
        cost_usd=Decimal("0.0031"),
        uncached_cost_usd=Decimal("0.0102"),
        latency_ms=812.0,
        ttft_ms=200.0,
        streamed=True,
    )


def measure_metrics() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    event = finished_request()

    observe_us = per_call_us(
        lambda: metrics.observe(event, team_name="search", route="auto", upstream_s=0.7, ttft_s=0.2), 5_000
    )
    inter_event_us = per_call_us(lambda: metrics.observe_inter_event(0.004, "anthropic"), 20_000)
    in_flight_us = per_call_us(
        lambda: (metrics.request_started("anthropic"), metrics.request_finished("anthropic")), 20_000
    )
    print(f"\nobserve {observe_us:.1f} µs, observe_inter_event {inter_event_us:.2f} µs,", end=" ")
    print(f"request_started + request_finished {in_flight_us:.2f} µs")


def measure_tracing() -> None:
    configure_tracing(enabled=False)
    span_us = per_call_us(lambda: span("pipeline.route", model="claude-haiku-4-5"), 50_000)
    print(f"\nspan (tracing off) {span_us:.3f} µs")


if __name__ == "__main__":
    measure_metrics()
    measure_tracing()
    print()
