"""The dispatcher when every deployment's breaker opened between routing and the call (a concurrent
request's failure tripped it): a well-formed 503 ``unavailable`` the pipeline can fall back from,
never an AssertionError (a 500) — found by the fault matrix (bench/fault_matrix.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.config import Settings, load_catalog
from app.context import CallLog
from app.domain import ChatRequest
from app.observability.metrics import Metrics
from app.providers.base import UpstreamError
from app.providers.dispatch import Dispatcher, upstream_failure, worth_another_model
from app.providers.registry import ProviderRegistry
from app.routing.health import DeploymentHealth, deployment_key
from app.routing.router import Candidate

MODEL = "claude-haiku-5-5"


async def test_a_model_whose_breakers_all_opened_is_unavailable_not_a_crash() -> None:
    settings = Settings(simulator="always", simulator_url="http://127.0.0.1:9")
    catalog = load_catalog(None)
    health = DeploymentHealth(failures_to_trip=1, cooldown_s=30.0)
    model = catalog.models[MODEL]
    for dep in model.all_deployments(MODEL):
        key = deployment_key(MODEL, dep)
        health.register(MODEL, model.all_deployments(MODEL))
        health.started(key)
        health.finished(key, ok=False)
    dispatcher = Dispatcher(settings, ProviderRegistry(settings, catalog), health, Metrics())
    candidate = Candidate(MODEL, model, Decimal(0), {})
    request = ChatRequest(model=MODEL, messages=[], max_tokens=5, client_format="anthropic")
    calls = CallLog()

    with pytest.raises(UpstreamError) as caught:
        await dispatcher.complete(candidate, request, calls, {})

    err = caught.value
    assert (err.status, err.kind) == (503, "unavailable")
    assert err.retry_after_s is not None and 0 < err.retry_after_s <= 30
    assert calls.attempts == []  # nothing was sent upstream
    assert worth_another_model(err)  # the pipeline goes on to the next candidate
    assert upstream_failure(err, tried=0).status == 503
