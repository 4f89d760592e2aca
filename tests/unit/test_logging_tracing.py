"""Optional OpenTelemetry tracing: a shared no-op when off, real nested spans when on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.observability import tracing
from app.observability.tracing import ENABLED_ENV, configure_tracing, span

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    # The global provider can be set once per process: an in-memory one, before Tollway looks.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    return _exporter


@pytest.fixture(autouse=True)
def tracing_off_afterwards() -> Iterator[None]:
    yield
    configure_tracing(enabled=False)


def test_off_is_one_shared_no_op() -> None:
    assert configure_tracing(enabled=False) is False
    first, second = span("pipeline.route", model="m"), span("upstream.call")
    assert first is second
    with first as inside:
        assert inside is None


def test_environment_decides_on_first_use(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> None:
    monkeypatch.setattr(tracing, "_configured", False)
    monkeypatch.setattr(tracing, "_start_span", None)
    monkeypatch.delenv(ENABLED_ENV, raising=False)
    with span("unused"):
        pass
    assert tracing._configured and tracing._start_span is None

    exporter.clear()
    monkeypatch.setattr(tracing, "_configured", False)
    monkeypatch.setenv(ENABLED_ENV, "1")
    with span("pipeline.admit", team="search"):
        pass
    assert [s.name for s in exporter.get_finished_spans()] == ["pipeline.admit"]


def test_on_spans_nest_and_carry_attributes(exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    assert configure_tracing(enabled=True) is True
    with span("pipeline", client_api="anthropic", team=None):
        with span("upstream.call", provider="anthropic", model="claude-haiku-4-5", attempt=1):
            pass
    inner, outer = exporter.get_finished_spans()
    assert (outer.name, inner.name) == ("pipeline", "upstream.call")
    assert inner.parent is not None and inner.parent.span_id == outer.context.span_id
    assert dict(outer.attributes or {}) == {"client_api": "anthropic"}  # None values are dropped
    assert dict(inner.attributes or {}) == {
        "provider": "anthropic",
        "model": "claude-haiku-4-5",
        "attempt": 1,
    }


async def test_spans_follow_awaits_in_concurrent_requests(exporter: InMemorySpanExporter) -> None:
    exporter.clear()
    configure_tracing(enabled=True)

    async def request(n: int) -> None:
        with span("pipeline", request=n):
            await asyncio.sleep(0)
            with span("upstream.call", request=n):
                await asyncio.sleep(0)

    await asyncio.gather(request(1), request(2))
    spans = exporter.get_finished_spans()
    parents = {s.context.span_id: s for s in spans if s.name == "pipeline"}
    for call in (s for s in spans if s.name == "upstream.call"):
        assert call.parent is not None
        parent = parents[call.parent.span_id]
        assert parent.attributes == call.attributes  # each call under its own request's span
