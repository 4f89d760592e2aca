"""Stage 5's mechanics: which candidate models to try, and one model's deployments tried in turn.

The pipeline walks the candidates (``candidates``), adapts the request to each (sampling policy,
output cap, budget re-admission, prompt-cache breakpoints) and hands it here; ``complete`` and
``open_stream`` try the model's deployments, healthiest first, retrying retryable failures (429, 529,
5xx, timeouts, connection errors) with exponential backoff and jitter, honouring ``retry-after``. A
failure retrying cannot fix (a 400 from upstream) ends the call at once. A stream is retried only
before its first byte reached the client: ``open_stream`` returns once the upstream accepted the
request, and nothing after that is retried. Every call is written to the request's ``CallLog``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from app.config import ModelConfig, Settings
from app.context import Attempt, CallLog
from app.domain import ChatRequest, ChatResponse
from app.errors import GatewayError, invalid, retry_after_value
from app.ledger.pricing import cost_of
from app.observability.metrics import Metrics
from app.observability.tracing import span
from app.providers.base import Provider, UpstreamError, UpstreamStream
from app.providers.registry import ProviderRegistry
from app.routing.health import DeploymentHealth, deployment_key
from app.routing.retry import backoff_delay, is_retryable
from app.routing.router import Candidate, Plan

T = TypeVar("T")
Call = Callable[[Provider, ChatRequest, str, Mapping[str, str]], Awaitable[T]]


class Dispatcher:
    def __init__(
        self, settings: Settings, providers: ProviderRegistry, health: DeploymentHealth, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.health = health
        self.metrics = metrics
        self.rng = random.Random()

    def candidates(self, plan: Plan) -> list[Candidate]:
        """The models to try, in order: every adequate one when the route allows fallback."""
        return plan.candidates if plan.fallback else plan.candidates[:1]

    async def complete(
        self, candidate: Candidate, request: ChatRequest, calls: CallLog, headers: Mapping[str, str]
    ) -> ChatResponse:
        response = await self._over_deployments(candidate, request, calls, headers, _complete)
        record_usage(calls.attempts[-1], candidate.model, response)
        return response

    async def open_stream(
        self, candidate: Candidate, request: ChatRequest, calls: CallLog, headers: Mapping[str, str]
    ) -> UpstreamStream:
        return await self._over_deployments(candidate, request, calls, headers, _open_stream)

    async def _over_deployments(
        self,
        candidate: Candidate,
        request: ChatRequest,
        calls: CallLog,
        headers: Mapping[str, str],
        call: Call[T],
    ) -> T:
        model: ModelConfig = candidate.model
        deployments = self.health.order(candidate.name, model.all_deployments(candidate.name))
        if not deployments:
            # Every breaker opened after the router chose this model (a concurrent request's failure):
            # the router's own answer for a model in cooldown, and the next candidate may be tried.
            raise UpstreamError(
                503,
                "unavailable",
                f"model {candidate.name} is temporarily unavailable (upstream failures); retry later",
                retry_after_s=self.health.retry_after_s(candidate.name),
            )
        last_error: UpstreamError | None = None
        for position, dep in enumerate(deployments):
            key = deployment_key(candidate.name, dep)
            another_deployment_left = position < len(deployments) - 1
            provider = self.providers.get(dep.provider)
            upstream_model = dep.upstream_model or candidate.name
            for retry in range(self.settings.retry_attempts + 1):
                attempt = calls.begin(candidate.name, dep.provider, simulated=provider.is_simulator)
                self.health.started(key)
                started = time.perf_counter()
                try:
                    tried = len(calls.attempts)
                    with span("tollway.upstream", provider=dep.provider, model=candidate.name, attempt=tried):
                        result = await call(provider, request, upstream_model, headers)
                except UpstreamError as err:
                    attempt.status, attempt.error = err.status, err.kind
                    # Only failures another try could fix count against the deployment's health.
                    self.health.finished(key, ok=not is_retryable(err.status), retry_after_s=err.retry_after_s)
                    last_error = err
                    if not is_retryable(err.status) or err.kind == "invalid_request":
                        raise
                    if retry == self.settings.retry_attempts:
                        break
                    if another_deployment_left and not self.health.deployment_usable(key):
                        break  # the breaker just opened (or retry-after said so): go elsewhere now
                    delay = backoff_delay(
                        retry,
                        base=self.settings.retry_base_delay_s,
                        cap=self.settings.retry_max_delay_s,
                        retry_after_s=err.retry_after_s,
                        rng=self.rng,
                    )
                    if delay < 0:  # retry-after longer than we are willing to wait: next deployment
                        break
                    self.metrics.retry(dep.provider, candidate.name)
                    await asyncio.sleep(delay)
                    continue
                except BaseException:
                    self.health.finished(key, ok=True)  # cancelled by the client: not the deployment's fault
                    raise
                self.health.finished(key, ok=True)
                attempt.status = 200
                calls.upstream_seconds = time.perf_counter() - started
                return result
        assert last_error is not None
        raise last_error


def record_usage(attempt: Attempt, model: ModelConfig, response: ChatResponse) -> None:
    attempt.usage = response.usage
    cost = cost_of(model, response.usage)
    attempt.cost, attempt.uncached_cost = cost.total, cost.uncached


async def _complete(
    provider: Provider, request: ChatRequest, upstream_model: str, headers: Mapping[str, str]
) -> ChatResponse:
    return await provider.complete(request, upstream_model, headers)


async def _open_stream(
    provider: Provider, request: ChatRequest, upstream_model: str, headers: Mapping[str, str]
) -> UpstreamStream:
    return await provider.open_stream(request, upstream_model, headers)


def worth_another_model(err: UpstreamError) -> bool:
    # A request the upstream rejected as invalid will be rejected by the next model too.
    return err.kind not in ("invalid_request", "request_too_large")


def upstream_failure(err: UpstreamError, *, tried: int) -> GatewayError:
    """The client-facing error for an upstream call that failed ``tried`` times in all."""
    status = {"rate_limit": 429, "overloaded": 529, "timeout": 504}.get(
        err.kind, err.status if err.kind != "api_error" else 502
    )
    headers: dict[str, str] = {"x-should-retry": "false"} if tried > 1 else {}
    if err.retry_after_s is not None and err.kind == "rate_limit":
        headers["retry-after"] = retry_after_value(err.retry_after_s)
    message = err.message if tried <= 1 else f"{err.message} (after {tried} attempts)"
    if err.kind == "invalid_request" or err.kind == "not_found":
        return GatewayError(err.kind, err.message, status=400 if err.kind == "invalid_request" else 404)  # type: ignore[arg-type]
    return GatewayError(err.kind, message, status=status or 502, headers=headers)  # type: ignore[arg-type]


def without_sampling(req: ChatRequest) -> ChatRequest:
    return dataclasses.replace(req, temperature=None, top_p=None, top_k=None)


def reject_sampling(model_name: str) -> GatewayError:
    return invalid(f"model '{model_name}' does not accept temperature, top_p or top_k", "temperature")
