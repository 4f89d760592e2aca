"""``GET /metrics``: bearer-token protection, gauge refresh before a scrape, the separate port."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.api.metrics import router, start_metrics_server
from app.config import Settings
from app.observability.metrics import Metrics
from tests.unit.test_metrics import scrape, value


def gateway(metrics: Metrics, token: str | None, refresh: Any = None) -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    services = SimpleNamespace(metrics=metrics, settings=Settings(metrics_token=token))
    if refresh is not None:
        services.refresh_gauges = refresh
    app.state.services = services
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


async def test_token_protects_the_endpoint() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    metrics.response_cache(hit=True)
    async with client(gateway(metrics, token="s3cret-token")) as c:
        missing = await c.get("/metrics")
        wrong = await c.get("/metrics", headers={"Authorization": "Bearer s3cret-tokeN"})
        wrong_scheme = await c.get("/metrics", headers={"Authorization": "Basic s3cret-token"})
        good = await c.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        lower = await c.get("/metrics", headers={"Authorization": "bearer s3cret-token"})
    for denied in (missing, wrong, wrong_scheme):
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"].startswith("Bearer")
        assert "tollway_" not in denied.text
    assert good.status_code == 200 and lower.status_code == 200
    assert good.headers["content-type"].startswith("text/plain; version=")
    assert 'tollway_response_cache_lookups_total{result="hit"} 1.0' in good.text


async def test_open_without_a_token() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    async with client(gateway(metrics, token=None)) as c:
        response = await c.get("/metrics")
    assert response.status_code == 200
    assert "# TYPE tollway_requests_total counter" in response.text


async def test_pull_gauges_are_refreshed_before_rendering() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    calls: list[str] = []

    async def refresh() -> None:  # e.g. remaining budgets read from Redis
        calls.append("async")
        metrics.set_ledger(queue_depth=len(calls) * 10, spool_size=0)
        metrics.set_budget_remaining("search", "tokens_per_day", 42.0, limit=100.0)

    async with client(gateway(metrics, token=None, refresh=refresh)) as c:
        await c.get("/metrics")
        second = await c.get("/metrics")
    assert calls == ["async", "async"]
    assert "tollway_ledger_queue_depth 20.0" in second.text
    assert 'tollway_budget_remaining_tokens{team="search",window="tokens_per_day"} 42.0' in second.text

    def sync_refresh() -> None:
        metrics.set_ledger(queue_depth=7, spool_size=1)

    async with client(gateway(metrics, token=None, refresh=sync_refresh)) as c:
        response = await c.get("/metrics")
    assert "tollway_ledger_queue_depth 7.0" in response.text


async def test_a_failing_refresh_does_not_fail_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(registry=CollectorRegistry())
    metrics.retry("anthropic", "claude-haiku-4-5")

    async def refresh() -> None:
        raise ConnectionError("redis is down")

    async with client(gateway(metrics, token=None, refresh=refresh)) as c:
        response = await c.get("/metrics")
    assert response.status_code == 200
    assert 'tollway_retries_total{model="claude-haiku-4-5",provider="anthropic"} 1.0' in response.text
    assert "refreshing gauges" in caplog.text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_with_retry(url: str, **kwargs: Any) -> httpx.Response:
    deadline = time.monotonic() + 5
    while True:
        try:
            return httpx.get(url, timeout=5, **kwargs)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_separate_port_serves_the_same_metrics_behind_the_token() -> None:
    metrics = Metrics(registry=CollectorRegistry())
    metrics.set_ledger(queue_depth=3, spool_size=0)
    port = free_port()
    start_metrics_server(metrics, port, "127.0.0.1", token="port-token")
    url = f"http://127.0.0.1:{port}/metrics"

    assert get_with_retry(url).status_code == 401
    response = get_with_retry(url, headers={"Authorization": "Bearer port-token"})
    assert response.status_code == 200
    assert "tollway_ledger_queue_depth 3.0" in response.text
    metrics.set_ledger(queue_depth=5, spool_size=0)
    again = httpx.get(url, headers={"Authorization": "Bearer port-token"}, timeout=5)
    assert "tollway_ledger_queue_depth 5.0" in again.text
    assert value(scrape(metrics), "tollway_ledger_queue_depth") == 5
