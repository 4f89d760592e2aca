"""Stage 5, calling the provider: retries with backoff, deployment fallback, model fallback, escalation.

For each adequate candidate model, cheapest first (only the first when the route forbids fallback):
for each of its deployments, healthiest first: try, retrying retryable failures (429, 529, 5xx,
timeouts, connection errors) with exponential backoff and jitter, honouring ``retry-after``. A
failure retrying cannot fix (a 400 from upstream) ends the request at once. A stream is retried only
before its first byte reached the client: ``open_stream`` returns once the upstream accepted the
request, and nothing after that is retried.

Escalation (non-streaming requests on routes with ``escalate``): an answer that fails verification
(invalid JSON, schema mismatch, truncated structured output, refusal) is retried one tier up; the
caller receives the first answer that passes (or the last one when no higher tier is left).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.config import Catalog, ModelConfig, Settings
from app.context import Attempt, RequestContext
from app.domain import ChatRequest, ChatResponse
from app.errors import GatewayError, invalid
from app.ledger.pricing import cost_of
from app.observability.metrics import Metrics
from app.observability.tracing import span
from app.providers.base import Provider, UpstreamError, UpstreamStream
from app.providers.registry import ProviderRegistry
from app.routing.health import DeploymentHealth, deployment_key
from app.routing.retry import backoff_delay, is_retryable
from app.routing.router import Candidate, Router
from app.routing.verify import verify

T = TypeVar("T")


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        providers: ProviderRegistry,
        router: Router,
        health: DeploymentHealth,
        metrics: Metrics,
        prepare: Callable[[RequestContext, ChatRequest, Candidate], Awaitable[ChatRequest]],
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.providers = providers
        self.router = router
        self.health = health
        self.metrics = metrics
        # Adapts the request to a candidate model (sampling policy, prompt-cache breakpoints, budget
        # re-admission for a pricier model): the pipeline owns it.
        self.prepare = prepare
        self.rng = random.Random()

    # ---- public ----------------------------------------------------------------------------------

    async def complete(self, ctx: RequestContext) -> ChatResponse:
        assert ctx.plan is not None and ctx.chat is not None
        response, candidate = await self._over_candidates(ctx, self._candidates(ctx), _complete)
        if not ctx.plan.escalate:
            return response
        # Escalation cascade: verify, and go one tier up while the answer fails.
        while (failure := verify(ctx.chat, response)) is not None:
            higher = self.router.next_tier_candidates(ctx.plan, candidate.name)
            if not higher:
                break
            ctx.escalations += 1
            self.metrics.escalation(candidate.name, higher[0].name)
            response, candidate = await self._over_candidates(ctx, higher, _complete, reason=failure)
        return response

    async def open_stream(self, ctx: RequestContext) -> UpstreamStream:
        stream, _ = await self._over_candidates(ctx, self._candidates(ctx), _open_stream)
        return stream

    # ---- the loop --------------------------------------------------------------------------------

    def _candidates(self, ctx: RequestContext) -> list[Candidate]:
        assert ctx.plan is not None
        return ctx.plan.candidates if ctx.plan.fallback else ctx.plan.candidates[:1]

    async def _over_candidates(
        self,
        ctx: RequestContext,
        candidates: list[Candidate],
        call: Callable[[Provider, ChatRequest, str, RequestContext], Awaitable[T]],
        reason: str | None = None,
    ) -> tuple[T, Candidate]:
        assert ctx.chat is not None
        last_error: UpstreamError | None = None
        previous: str | None = None
        for candidate in candidates:
            if previous is not None:
                self.metrics.fallback(previous, candidate.name)
            previous = candidate.name
            request = await self.prepare(ctx, ctx.chat, candidate)
            try:
                return await self._over_deployments(ctx, candidate, request, call), candidate
            except UpstreamError as err:
                last_error = err
                if not _worth_another_model(err):
                    break
        assert last_error is not None
        raise _to_gateway_error(last_error, tried=len(ctx.attempts))

    async def _over_deployments(
        self,
        ctx: RequestContext,
        candidate: Candidate,
        request: ChatRequest,
        call: Callable[[Provider, ChatRequest, str, RequestContext], Awaitable[T]],
    ) -> T:
        model: ModelConfig = candidate.model
        deployments = self.health.order(candidate.name, model.all_deployments(candidate.name))
        last_error: UpstreamError | None = None
        for position, dep in enumerate(deployments):
            key = deployment_key(candidate.name, dep)
            another_deployment_left = position < len(deployments) - 1
            provider = self.providers.get(dep.provider)
            upstream_model = dep.upstream_model or candidate.name
            for retry in range(self.settings.retry_attempts + 1):
                attempt = Attempt(model=candidate.name, provider=dep.provider)
                ctx.attempts.append(attempt)
                ctx.served_model, ctx.provider = candidate.name, dep.provider
                self.health.started(key)
                started = time.perf_counter()
                ctx.upstream_started = started
                try:
                    with span(
                        "tollway.upstream",
                        provider=dep.provider,
                        model=candidate.name,
                        attempt=len(ctx.attempts),
                    ):
                        result = await call(provider, request, upstream_model, ctx)
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
                ctx.upstream_seconds = time.perf_counter() - started
                if isinstance(result, ChatResponse):
                    record_usage(attempt, model, result)
                return result
        assert last_error is not None
        raise last_error


def record_usage(attempt: Attempt, model: ModelConfig, response: ChatResponse) -> None:
    attempt.usage = response.usage
    cost = cost_of(model, response.usage)
    attempt.cost, attempt.uncached_cost = cost.total, cost.uncached


async def _complete(provider: Provider, request: ChatRequest, upstream_model: str, ctx: RequestContext) -> ChatResponse:
    return await provider.complete(request, upstream_model, ctx.headers)


async def _open_stream(
    provider: Provider, request: ChatRequest, upstream_model: str, ctx: RequestContext
) -> UpstreamStream:
    return await provider.open_stream(request, upstream_model, ctx.headers)


def _worth_another_model(err: UpstreamError) -> bool:
    # A request the upstream rejected as invalid will be rejected by the next model too.
    return err.kind not in ("invalid_request", "request_too_large")


def _to_gateway_error(err: UpstreamError, *, tried: int) -> GatewayError:
    status = {"rate_limit": 429, "overloaded": 529, "timeout": 504}.get(
        err.kind, err.status if err.kind != "api_error" else 502
    )
    headers: dict[str, str] = {"x-should-retry": "false"} if tried > 1 else {}
    if err.retry_after_s is not None and err.kind == "rate_limit":
        headers["retry-after"] = str(max(1, int(err.retry_after_s + 0.999)))
    message = err.message if tried <= 1 else f"{err.message} (after {tried} attempts)"
    if err.kind == "invalid_request" or err.kind == "not_found":
        return GatewayError(err.kind, err.message, status=400 if err.kind == "invalid_request" else 404)  # type: ignore[arg-type]
    return GatewayError(err.kind, message, status=status or 502, headers=headers)  # type: ignore[arg-type]


def without_sampling(req: ChatRequest) -> ChatRequest:
    return dataclasses.replace(req, temperature=None, top_p=None, top_k=None)


def reject_sampling(model_name: str) -> GatewayError:
    return invalid(f"model '{model_name}' does not accept temperature, top_p or top_k", "temperature")
